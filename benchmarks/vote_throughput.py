"""Vote counting throughput against the raw jitted forward pass and against the machine's peak FLOP/s.

  python benchmarks/vote_throughput.py [--models lenet resnet20] [--n 10000] [--batch 8 [...]]
      [--chunk C [...]] [--peak-size 4096] [--no-peak] [--repeats 5] [--quick]

For each model and each (--batch, --chunk) pair (several values of each make a sweep): `raw` runs
jit(logits_fn) on pre-drawn (batch * chunk) noisy inputs already on the device, n / chunk times;
`votes` runs rsjax.votes.count_votes for `batch` examples at n noise samples each (noise drawn on the
device, argmax, one-hot counts, transfer of the counts). Both process batch * n inputs; they alternate
for --repeats rounds and the median throughputs and their ratio (target >= 0.9) are reported.

Against the limit: the FLOPs of one noisy input are XLA's cost analysis of the compiled forward pass on
the (batch * chunk) batch, divided by its size; achieved FLOP/s = that times the vote-counting samples/s.
The peak is measured in the same run: a --peak-size square float32 matmul, jitted, median of
--repeats (2 n^3 FLOPs each). Peak memory of a configuration is XLA's memory analysis of the compiled
vote-counting step (arguments, outputs and temporaries: the batch * chunk noisy inputs and the
network's activations on them).

Rows are printed as a markdown table and appended as JSON lines to --out (with --quick, nowhere unless
--out is given).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import models, records, votes

DEFAULT_OUT = "benchmarks/results/vote_throughput.jsonl"
SHAPES = {
    "linear": (28, 28, 1),
    "lenet": (28, 28, 1),
    "resnet20": (32, 32, 3),
    "resnet110": (32, 32, 3),
}


def peak_matmul(size: int, repeats: int) -> dict:
    """Median FLOP/s of a jitted (size x size) @ (size x size) float32 matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    jax.block_until_ready(matmul(a, b))
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        jax.block_until_ready(matmul(a, b))
        times.append(time.perf_counter() - t0)
    return {
        "benchmark": "peak_matmul",
        "size": size,
        "flops_per_s": 2 * size**3 / statistics.median(times),
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

    flops_per_input = forward.lower(variables, noisy).compile().cost_analysis()["flops"] / len(
        noisy
    )
    count = votes._count.lower(  # the step count_votes runs; its static arguments as it passes them
        key,
        variables,
        jnp.asarray(x),
        jnp.asarray(idx, jnp.uint32),
        0.25,
        logits_fn=logits_fn,
        num_classes=num_classes,
        num_samples=n,
        chunk_size=chunk,
        stream=votes.ESTIMATION,
    ).compile()
    # XLA:CPU leaves peak_memory_in_bytes at the argument size; the sum is what the step holds at once.
    stats = count.memory_analysis()
    peak_bytes = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        + stats.temp_size_in_bytes
        - stats.alias_size_in_bytes
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
        "flops_per_input": flops_per_input,
        "votes_flops_per_s": flops_per_input * vote_med,
        "peak_memory_bytes": peak_bytes,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"])
    p.add_argument("--batch", type=int, nargs="+", default=[8], help="examples per call")
    p.add_argument("--n", type=int, default=10_000, help="noise samples per example")
    p.add_argument(
        "--chunk",
        type=int,
        nargs="+",
        default=None,
        help="noise samples per example per step (default: rsjax's platform default)",
    )
    p.add_argument("--peak-size", type=int, default=4096, help="side of the peak-FLOP/s matmul")
    p.add_argument("--no-peak", action="store_true", help="skip the peak matmul")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None, help=f"JSON lines file (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    args.chunk = [votes.default_chunk_size()] if args.chunk is None else args.chunk
    if args.quick:
        args.batch, args.n, args.chunk, args.repeats = [2], 64, [32], 1
        args.peak_size = min(args.peak_size, 256)
    out = args.out if args.out is not None else ("" if args.quick else DEFAULT_OUT)
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    peak = None
    if not args.no_peak:
        row = peak_matmul(args.peak_size, args.repeats)
        records.append_result(out, dict(row, quick=args.quick), env)  # no file when out is ""
        peak = row["flops_per_s"]
        print(f"peak: {args.peak_size}^2 float32 matmul {peak / 1e9:,.1f} GFLOP/s")
    print(
        "| model | examples x n | chunk | raw forward inputs/s | vote counting samples/s | ratio"
        " | MFLOP/input | GFLOP/s | of peak | peak memory MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for batch in args.batch:
            for chunk in args.chunk:
                row = measure(name, batch=batch, n=args.n, chunk=chunk, repeats=args.repeats)
                row = dict(row, quick=args.quick, peak_flops_per_s=peak)
                row = records.append_result(out, row, env)
                share = "-" if peak is None else f"{row['votes_flops_per_s'] / peak:.2f}"
                print(
                    f"| {name} | {batch} x {args.n} | {chunk} | {row['raw_inputs_per_s']:,.0f}"
                    f" | {row['votes_samples_per_s']:,.0f} | {row['ratio']:.3f}"
                    f" | {row['flops_per_input'] / 1e6:.2f} | {row['votes_flops_per_s'] / 1e9:.1f}"
                    f" | {share} | {row['peak_memory_bytes'] / 2**20:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
