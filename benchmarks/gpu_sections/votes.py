"""The peak and votes sections of the GPU suite: a large matmul's rate, then rsjax's vote counting
against the raw jitted forward pass on the same number of noisy inputs.

References: benchmarks/vote_throughput.py (the method: peak_matmul, measure).
"""

import statistics
import time

import jax
import numpy as np
import vote_throughput  # a sibling script: gpu_suite.py puts benchmarks/ on sys.path

from rsjax import votes

from .harness import error_text, fmt, warm_up
from .workloads import NUM_CLASSES, SIGMA, forward_flops, get_model, label, tflops

VOTE_N = {"linear": 100_000, "lenet": 100_000, "resnet20": 20_000, "resnet110": 4_000}


def section_peak(suite, budget, args):
    row = vote_throughput.peak_matmul(args.peak_size, 3)
    rate = row["flops_per_s"]
    suite.add(
        dict(
            section="peak",
            model=None,
            size=args.peak_size,
            flops_per_s=rate,
            units={"flops_per_s": "FLOP/s"},
        ),
        {
            "model": f"{args.peak_size}^2 float32 matmul",
            "settings": "jnp.matmul, default precision, median of 3",
            "TFLOP/s": fmt(rate / 1e12, 2),
        },
    )


def make_vote_config(name, *, batch, n, chunk):
    """A closure pair (run_raw, run_votes) over batch * n noisy inputs, and what they process.

    vote_throughput.measure's two runs, on the suite's shared model (get_model) and rbg-drawn
    synthetic images, with the raw compile timed apart and no timing loop of its own (the section
    alternates the configurations under the budget)."""
    m = get_model(name)
    key = jax.random.key(1)
    data_key = jax.random.key(1, impl="rbg")  # synthetic images: see get_model
    x = np.asarray(jax.random.uniform(data_key, (batch, *m["shape"])))
    idx = np.arange(batch)
    forward = jax.jit(m["logits_fn"])
    noisy = jax.device_put(jax.random.uniform(data_key, (batch * chunk, *m["shape"])))
    calls = -(-n // chunk)

    def run_raw():
        out = None
        for _ in range(calls):
            out = forward(m["variables"], noisy)
        jax.block_until_ready(out)

    def run_votes():
        votes.count_votes(
            key,
            m["logits_fn"],
            m["variables"],
            x,
            idx,
            sigma=SIGMA,
            num_classes=NUM_CLASSES,
            num_samples=n,
            chunk_size=chunk,
            stream=votes.ESTIMATION,
        )

    def prepare():
        """Compiles the raw forward pass (timed), runs each side once; returns the timings."""
        t0 = time.perf_counter()
        compiled = forward.lower(m["variables"], noisy).compile()
        raw_compile = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        t0 = time.perf_counter()
        run_raw()
        raw_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_votes()
        votes_first = time.perf_counter() - t0
        return {
            "raw_compile_s": raw_compile,
            "raw_first_s": raw_first,
            "votes_first_s": votes_first,
            "compiled_flops_per_input": (cost or {}).get("flops", 0) / len(noisy) or None,
        }

    return {
        "run_raw": run_raw,
        "run_votes": run_votes,
        "prepare": prepare,
        "samples": batch * calls * chunk,
    }


def section_votes(suite, budget, args):
    configs = {}
    for name in args.votes_models:
        for chunk in args.votes_chunks:
            n = VOTE_N[name] if args.votes_n is None else args.votes_n
            n = -(-n // max(args.votes_chunks)) * max(
                args.votes_chunks
            )  # whole chunks for every chunk
            configs[name, chunk] = dict(
                make_vote_config(name, batch=args.votes_batch, n=n, chunk=chunk), n=n
            )
    prepared = warm_up({k: c["prepare"] for k, c in configs.items()}, args.compile_workers)
    raw, vote = {k: [] for k in configs}, {k: [] for k in configs}
    cut = set()
    for _ in range(args.repeats):
        for k, c in configs.items():
            seconds, info = prepared[k]
            if isinstance(info, Exception):
                continue
            last = (raw[k][-1] + vote[k][-1]) if raw[k] else 2.2 * info["raw_first_s"]
            if not budget.allows(last, first=not raw[k]):
                cut.add(k)
                continue
            try:
                for fn, out in ((c["run_raw"], raw[k]), (c["run_votes"], vote[k])):
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
            except Exception as e:  # this configuration becomes an error row; the others go on
                prepared[k] = (prepared[k][0], e)
    for (name, chunk), c in configs.items():
        settings = f"{args.votes_batch} x {c['n']:,}, chunk {chunk:,}"
        seconds, info = prepared[name, chunk]
        if isinstance(info, Exception):
            suite.skip("votes", name, settings, error_text(info), chunk=chunk, n=c["n"])
            continue
        if not raw[name, chunk]:
            suite.skip("votes", name, settings, "skipped: budget", chunk=chunk, n=c["n"])
            continue
        raw_rate = c["samples"] / statistics.median(raw[name, chunk])
        vote_s = statistics.median(vote[name, chunk])
        votes_compile = max(info["votes_first_s"] - vote_s, 0.0)
        vote_rate = c["samples"] / vote_s
        flops = forward_flops(name)
        suite.add(
            dict(
                section="votes",
                model=name,
                shape=list(get_model(name)["shape"]),
                examples=args.votes_batch,
                n=c["n"],
                chunk=chunk,
                default_chunk=chunk == votes.default_chunk_size(),
                repeats=len(raw[name, chunk]),
                raw_inputs_per_s=raw_rate,
                votes_samples_per_s=vote_rate,
                ratio=vote_rate / raw_rate,
                raw_s_repeats=raw[name, chunk],
                votes_s_repeats=vote[name, chunk],
                raw_compile_s=info["raw_compile_s"],
                votes_compile_s=votes_compile,
                votes_first_call_s=info["votes_first_s"],
                warm_up_wall_s=seconds,
                compile_workers=args.compile_workers,
                flops_per_input=flops,
                compiled_flops_per_input=info["compiled_flops_per_input"],
                votes_tflops_per_s=tflops(flops, vote_rate),
                units={
                    "raw_inputs_per_s": "noisy inputs/s",
                    "votes_samples_per_s": "noise samples/s",
                    "flops_per_input": "FLOP",
                    "votes_tflops_per_s": "TFLOP/s",
                    "*_s": "s",
                },
            ),
            {
                "model": label(name),
                "settings": settings
                + (" (default)" if chunk == votes.default_chunk_size() else ""),
                "throughput": f"{fmt(vote_rate)} samples/s (raw {fmt(raw_rate)} inputs/s)",
                "ratio": f"{vote_rate / raw_rate:.3f}",
                "TFLOP/s": fmt(tflops(flops, vote_rate), 2),
                "compile s": f"{info['raw_compile_s']:.1f} + {votes_compile:.1f}",
                "timed": len(raw[name, chunk]),
                "note": "repeats cut: budget" if (name, chunk) in cut else "",
            },
        )
