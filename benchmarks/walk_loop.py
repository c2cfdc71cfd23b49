"""The Langevin walk's steps in a lax.scan (rsjax.walkjump) against the same steps unrolled.

  python benchmarks/walk_loop.py [--models energy_mnist energy_mnist_mlp] [--batch 64]
      [--steps 1 4 10] [--repeats 5] [--quick]

XLA:CPU runs the backward convolutions of a loop body far slower than the same convolutions
unrolled (benchmarks/README.md: SmoothAdv's steps, ADRE's per-copy scan). The walk's step takes the
score psi(y) = -grad phi(y) of an energy network, so a convolutional energy has backward
convolutions in its scan body. For each score model and number of steps T, `scan` is
rsjax.walkjump.walk with its default (a jax.lax.scan over the T steps) and `unrolled` the same walk
with unroll=True (the T steps traced one after another); both jitted, on random-init weights, --batch
MNIST-shaped inputs, delta 0.25, gamma 0.5, u 1. They alternate for --repeats rounds; the median
times, their ratio, the compile times (the first call's seconds) and the largest difference between
the two end points are reported. Rows are printed as a markdown table and appended as JSON lines to
--out (with --quick, nowhere unless --out is given).
"""

import argparse
import functools
import statistics

import jax
import jax.numpy as jnp
from eb_throughput import time_alternating  # a sibling script: benchmarks/ is on sys.path

from rsjax import records, score, walkjump

DEFAULT_OUT = "benchmarks/results/walk_loop.jsonl"
SHAPE = (28, 28, 1)
DELTA, GAMMA, U = 0.25, 0.5, 1.0


def _run(fn, y0):
    return jax.block_until_ready(fn(y0))


def measure(model_name, *, batch, num_steps, repeats):
    model = score.make_score_model(model_name)
    psi = functools.partial(
        score.make_score_fn(model), score.init_params(model, jax.random.key(0), SHAPE)
    )
    y0 = jax.random.uniform(jax.random.key(1), (batch, *SHAPE))

    def form(unroll):
        def end_point(y0):
            start = walkjump.WalkState(y0, jnp.zeros_like(y0))
            options = dict(delta=DELTA, gamma=GAMMA, u=U, num_steps=num_steps, unroll=unroll)
            return walkjump.walk(jax.random.key(2), psi, start, **options).y

        return end_point

    forms = {"scan": jax.jit(form(1)), "unrolled": jax.jit(form(True))}
    first, rounds = time_alternating(
        {name: functools.partial(_run, fn, y0) for name, fn in forms.items()}, repeats
    )
    scan_s, unrolled_s = (statistics.median(rounds[name]) for name in forms)
    outputs = [fn(y0) for fn in forms.values()]
    return {
        "benchmark": "walk_loop",
        "model": model_name,
        "batch": batch,
        "num_steps": num_steps,
        "repeats": repeats,
        "scan_s": scan_s,
        "unrolled_s": unrolled_s,
        "speedup": scan_s / unrolled_s,
        "scan_compile_s": first["scan"],
        "unrolled_compile_s": first["unrolled"],
        "max_abs_difference": float(jnp.max(jnp.abs(outputs[0] - outputs[1]))),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models",
        nargs="+",
        default=["energy_mnist", "energy_mnist_mlp"],
        choices=["energy_mnist", "energy_mnist_mlp", "score_mnist"],
    )
    p.add_argument(
        "--batch", type=int, default=64, help="inputs per walk (a chunk of noisy copies)"
    )
    p.add_argument("--steps", type=int, nargs="+", default=[1, 4, 10], help="T values")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None, help=f"JSON lines file (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.repeats = 2, [1, 2], 1
    out = args.out if args.out is not None else ("" if args.quick else DEFAULT_OUT)
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    print(
        "| score model | batch | T | scan s | unrolled s | speedup | compile s (scan / unrolled)"
        " | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for num_steps in args.steps:
            row = measure(name, batch=args.batch, num_steps=num_steps, repeats=args.repeats)
            row = records.append_result(out, dict(row, quick=args.quick), env)
            print(
                f"| {name} | {args.batch} | {num_steps} | {row['scan_s']:.3f}"
                f" | {row['unrolled_s']:.3f} | {row['speedup']:.2f}"
                f" | {row['scan_compile_s']:.1f} / {row['unrolled_compile_s']:.1f}"
                f" | {row['max_abs_difference']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
