"""The train section of the GPU suite: train steps of Gaussian augmentation and ADRE, built by
train_throughput.make_config, timed in rounds of about --round-s under the section's budget.

References: benchmarks/train_throughput.py (the steps: rsjax.train.make_train_step, SGD with
momentum, one fixed batch of random images).
"""

import math
import statistics
import time

import jax
import train_throughput  # a sibling script: gpu_suite.py puts benchmarks/ on sys.path

from .harness import error_text, fmt, warm_up
from .workloads import SIGMA, cost_flops, label, tflops


def lowered_flops_step(c):
    """FLOPs of one train step of a train_throughput config (lowering is cached after the call)."""
    try:
        lowered = c["step"].lower(c["state"], c["batch"], c["key"])
    except Exception:  # optional
        return None
    return cost_flops(lowered)


def section_train(suite, budget, args):
    name = args.train_model or args.resnet
    keys = [(loss, k, b) for b in args.train_batches for loss, k in args.train_configs]
    jobs = {
        (loss, k, b): (
            lambda loss=loss, k=k, b=b: train_throughput.make_config(
                name, loss, k, batch=b, lam=args.lam, sigma=SIGMA
            )
        )
        for loss, k, b in keys
    }
    prepared = warm_up(jobs, args.compile_workers)
    plan, times, cut = {}, {key: [] for key in keys}, set()
    for key in keys:  # one calibration step each: steps per round of about --round-s
        seconds, c = prepared[key]
        if isinstance(c, Exception) or not budget.allows(0.0, first=True):
            continue
        t0 = time.perf_counter()
        try:
            state, _ = c["step"](c["state"], c["batch"], c["key"])
            jax.block_until_ready(state)
        except Exception as e:  # an error row; the other configurations go on
            prepared[key] = (seconds, e)
            continue
        c["state"] = state
        step_s = time.perf_counter() - t0
        plan[key] = max(1, min(args.max_steps, math.ceil(args.round_s / max(step_s, 1e-6))))
        c["calibration_step_s"] = step_s
    for _ in range(args.repeats):
        for key, steps in plan.items():
            c = prepared[key][1]
            if isinstance(c, Exception):
                continue
            expected = steps * (
                statistics.median(times[key]) if times[key] else c["calibration_step_s"]
            )
            if not budget.allows(expected, first=not times[key]):
                cut.add(key)
                continue
            state = c["state"]
            t0 = time.perf_counter()
            try:
                for _ in range(steps):
                    state, _ = c["step"](state, c["batch"], c["key"])
                jax.block_until_ready(state)
            except Exception as e:  # an error row; the other configurations go on
                prepared[key] = (prepared[key][0], e)
                continue
            times[key].append((time.perf_counter() - t0) / steps)
            c["state"] = state
    for loss, k, b in keys:
        key = (loss, k, b)
        settings = f"{'Gaussian' if loss == 'gaussian' else 'ADRE'} k={k}, B={b}" + (
            f", lam {args.lam}" if loss == "adre" else ""
        )
        seconds, c = prepared[key]
        if isinstance(c, Exception):
            suite.skip("train", name, settings, error_text(c), loss=loss, k=k, batch=b)
            continue
        if not times[key]:
            suite.skip("train", name, settings, "skipped: budget", loss=loss, k=k, batch=b)
            continue
        step_s = statistics.median(times[key])
        flops = lowered_flops_step(c)
        suite.add(
            dict(
                section="train",
                model=name,
                loss=loss,
                k=k,
                lam=args.lam if loss == "adre" else None,
                sigma=SIGMA,
                batch=b,
                steps_per_round=plan[key],
                repeats=len(times[key]),
                step_s=step_s,
                step_s_repeats=times[key],
                steps_per_s=1 / step_s,
                images_per_s=b / step_s,
                noisy_inputs_per_s=b * k / step_s,
                first_step_s=c["compile_s"],
                compile_s=max(c["compile_s"] - step_s, 0.0),
                warm_up_wall_s=seconds,
                compile_workers=args.compile_workers,
                flops_per_step=flops,
                tflops_per_s=tflops(flops, 1 / step_s),
                units={
                    "*_s": "s",
                    "steps_per_s": "steps/s",
                    "images_per_s": "clean examples/s",
                    "noisy_inputs_per_s": "noisy inputs/s",
                    "flops_per_step": "FLOP",
                },
            ),
            {
                "model": label(name),
                "settings": settings,
                "throughput": f"{1 / step_s:,.2f} steps/s, {fmt(b / step_s)} images/s",
                "per item": f"{1e3 * step_s:,.1f} ms/step",
                "TFLOP/s": fmt(tflops(flops, 1 / step_s), 2),
                "compile s": f"{max(c['compile_s'] - step_s, 0.0):.1f}",
                "timed": f"{len(times[key])} x {plan[key]} steps",
                "note": "repeats cut: budget" if key in cut else "",
            },
        )
