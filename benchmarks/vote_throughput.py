"""Vote counting throughput against the raw jitted forward pass of the same model on as many inputs.

  python benchmarks/vote_throughput.py [--models lenet resnet20] [--n 10000] [--quick]

For each model: `raw` runs jit(logits_fn) on pre-drawn (batch * chunk) noisy inputs already on the
device, n / chunk times; `votes` runs rsjax.votes.count_votes for `batch` examples at n noise samples
each (noise drawn on the device, argmax, one-hot counts, transfer of the counts). Both process
batch * n inputs; they alternate for --repeats rounds and the median throughputs and their ratio
(target >= 0.9) are printed and appended as JSON lines to --out.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import models, records, votes

SHAPES = {
    "linear": (28, 28, 1),
    "lenet": (28, 28, 1),
    "resnet20": (32, 32, 3),
    "resnet110": (32, 32, 3),
}


def measure(model_name, *, batch, n, chunk, repeats, num_classes=10):
    model = models.make_model(model_name, num_classes=num_classes)
    shape = SHAPES[model_name]
    variables = models.init_variables(model, jax.random.key(0), shape)
    logits_fn = models.make_logits_fn(model)
    key = jax.random.key(1)
    x = np.asarray(jax.random.uniform(key, (batch, *shape)))
    idx = np.arange(batch)
    forward = jax.jit(logits_fn)
    noisy = jax.device_put(jax.random.uniform(key, (batch * chunk, *shape)))
    calls = -(-n // chunk)

    def run_raw():
        out = None
        for _ in range(calls):
            out = forward(variables, noisy)
        jax.block_until_ready(out)

    def run_votes():
        votes.count_votes(
            key,
            logits_fn,
            variables,
            x,
            idx,
            sigma=0.25,
            num_classes=num_classes,
            num_samples=n,
            chunk_size=chunk,
            stream=votes.ESTIMATION,
        )

    run_raw(), run_votes()  # compile
    raw, vote = [], []
    for _ in range(repeats):
        for fn, out in ((run_raw, raw), (run_votes, vote)):
            t0 = time.perf_counter()
            fn()
            out.append(batch * calls * chunk / (time.perf_counter() - t0))
    raw_med, vote_med = statistics.median(raw), statistics.median(vote)
    return {
        "benchmark": "vote_throughput",
        "model": model_name,
        "batch": batch,
        "n": n,
        "chunk": chunk,
        "repeats": repeats,
        "raw_inputs_per_s": raw_med,
        "votes_samples_per_s": vote_med,
        "ratio": vote_med / raw_med,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"])
    p.add_argument("--batch", type=int, default=8, help="examples per call")
    p.add_argument("--n", type=int, default=10_000, help="noise samples per example")
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="noise samples per example per step (default: rsjax's platform default)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default="benchmarks/results/vote_throughput.jsonl")
    args = p.parse_args(argv)
    args.chunk = votes.default_chunk_size() if args.chunk is None else args.chunk
    if args.quick:
        args.batch, args.n, args.chunk, args.repeats = 2, 64, 32, 1
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    print(
        "| model | examples x n | chunk | raw forward inputs/s | vote counting samples/s | ratio |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.models:
        row = measure(name, batch=args.batch, n=args.n, chunk=args.chunk, repeats=args.repeats)
        row = records.append_result(args.out, dict(row, quick=args.quick), env)
        print(
            f"| {name} | {args.batch} x {args.n} | {args.chunk} | {row['raw_inputs_per_s']:,.0f}"
            f" | {row['votes_samples_per_s']:,.0f} | {row['ratio']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
