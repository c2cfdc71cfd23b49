"""The accelerator suite: one command that measures rsjax on whatever device JAX sees.

  bash benchmarks/gpu_suite.sh [--quick] [--budget-s 420] [--sections ...] [--out PATH] [...]
  python benchmarks/gpu_suite.py [the same flags]      (what the shell script runs)

Synthetic inputs (uniform random images) and random-init weights only: no downloads, datasets or
checkpoints. Speed does not depend on the weights; the certification outcomes do, and are reported
as what they are (random weights: votes nearly all for one class, or spread).

Sections (--sections, in this order):
  peak        a --peak-size square float32 matmul at the default precision (the reference rate;
              vote_throughput.peak_matmul).
  votes       rsjax.votes.count_votes against jit(logits_fn) on pre-drawn noisy inputs (the
              method of benchmarks/vote_throughput.py) for LeNet (28x28x1), ResNet-20 and
              ResNet-110 (32x32x3), 8 examples per call, at the platform default chunk
              (votes.default_chunk_size: 1,000 on accelerators) and 4x that; samples/s of each,
              their ratio, TFLOP/s.
  certify     rsjax.certify (CERTIFY, fixed n) of --certify-images images of CIFAR shape with
              ResNet-110: n0 = 100, n = 100,000, alpha = 0.001, sigma = 0.25; seconds per image.
  sequential  rsjax.certify(..., sampling="sequential", n_max=100,000, radii=(0, 0.25, ..., 2.0))
              on the same images: seconds per image and mean draws (n0 included).
  train       rsjax.train.make_train_step of Gaussian augmentation (k = 1) and ADRE (k = 8,
              lam 0.5) for ResNet-110 at B = 64 and 256 (train_throughput.make_config; SGD with
              momentum): steps/s, images/s (clean examples), noisy inputs/s, TFLOP/s.
  eb          the empirical-Bayes classifier LeNet(xhat(y)) with the convolutional energy
              `energy_mnist` against plain LeNet (eb_throughput.measure_certify): samples/s.
  resnet50    (only when named: --sections resnet50) rsjax.certify with torchvision's ImageNet
              ResNet-50 (rsjax.models "resnet50") on --resnet50-images random 224x224x3 images,
              n0 = 100, n = 100,000: seconds per image, against the ~110 s per ImageNet image
              reported for Cohen et al.'s code on their GPU. About 820 TFLOP per image: 30-60 s
              per call on one H100 in float32, two calls plus the compile, so it is not in the
              default run (whose estimate is below); run it alone.

Timing. Every configuration is compiled and run once first ("warm-up"); with --compile-workers > 1
the warm-ups of a section (votes, train) run in that many threads at once, so that their compiles
overlap. Then the configurations of a section alternate for --repeats rounds and the median is
reported. Compilation is reported apart: "compile s" is XLA's compile of the raw forward pass
(timed exactly) and, for every call through rsjax, first call minus the median steady call
(compile plus tracing). CERTIFY and sequential CERTIFY run twice (first call, steady call); the
steady call is skipped when the budget has no room for it, and then the row says so and reports
the first call. TFLOP/s = XLA's cost analysis of the lowered forward pass (or train step) times
the measured rate.

Budget. --budget-s (default 420 s) is split between the sections (SHARES; time a section leaves
unused goes to the next). A repeat that would run past its section's share is skipped (the first
repeat of a configuration only needs the total budget to have room); a section that finds the
total spent is skipped whole. Rows say "skipped: budget" where that happened. A watchdog prints the
table of what has been measured and exits with status 124 at --hard-limit-s (default budget + 50
s), even when a single compile or call runs long. An error in one configuration (out of memory,
say) becomes a row of its own and the suite goes on.

Output: progress lines, then one markdown table; JSON lines (one per measurement, with the device
kind, jax version, date, settings and units) appended to --out (default
benchmarks/results/gpu_suite.jsonl; with --quick, nowhere unless --out is given). --quick: tiny
sizes (vote counting on LeNet at one chunk, ResNet-20 for ResNet-110, LeNet for the train steps,
n = 500, B = 4, one repeat): a smoke test for CI, not a measure (it also draws with threefry's
non-partitionable form, which compiles faster on XLA:CPU).

Time estimate of the full suite on one H100/H200 (not measured: no GPU was available when this was
written). Work, from XLA's cost analysis (CPU, jax 0.10.2): forward pass 4.63 MFLOP per input
(LeNet), 75.8 (ResNet-20), 486 (ResNet-110); ResNet-110 train step 1.40 GFLOP per noisy input
(89.5 GFLOP per Gaussian B = 64 step, 2.86 TFLOP per ADRE k = 8, B = 256 step); LeNet(xhat
energy_mnist) 39.3 MFLOP per sample. Calls: votes 8 per configuration (2 warm-up, 3 x 2 timed) of
8 x n samples (n = 100,000 / 20,000 / 4,000), 6 configurations: about 500 TFLOP; CERTIFY 2 runs
of 8 x 100,100 ResNet-110 samples: 780 TFLOP; sequential 2 runs: about 125 TFLOP if every image
stops at 16,100 draws (one class everywhere: the r = 0.75 look at about 12,900 draws, rounds of
4,000), at most 780 if every image runs to n_max; train: 2 warm-up steps and 3 rounds of about
0.5 s (--round-s) per configuration, about 8 s; eb 28 TFLOP. In all about 1,440 TFLOP (2,100 at
worst). At an assumed float32 rate of 50 TFLOP/s at 30-50% utilisation, 15-25 TFLOP/s (the bf16
figure of about 400 TFLOP/s does not apply: the suite runs float32, which XLA:GPU may run on TF32
tensor cores at the default precision, only faster): 60-100 s of compute (85-140 s at worst),
plus the train rounds' 8 s.
Compilation, the larger and less certain part, from XLA:CPU on this repository's 2-core machine
(shared, jax 0.10.2): ResNet-110's forward pass compiles in 5 s, its count_votes step in 5-10 s,
sequential CERTIFY's round step in 11 s, its Gaussian train step in 41 s. Assuming XLA:GPU takes
1-2x that (conv autotuning included): the 7 ResNet-110 inference programs (votes: 2 forward and
2 count steps, whose compiles overlap; CERTIFY 2; sequential 1) 30-85 s; the 4 train steps
160-320 s one after another, about 50-120 s with the default --compile-workers 4; the 12 small
ones (LeNet, ResNet-20, the energy model, the matmul) 10-25 s. Start-up (two Python processes,
the backend, eager initialisation): 15-30 s.
Total: about 170-410 s, under the 8 minutes; the budget (420 s) and the watchdog (470 s) keep it
there if compilation runs longer than assumed, at the price of cut repeats or skipped
configurations, which the table then names.

Layout: this file parses the flags and runs the sections in order under the budget and the
watchdog; the sections live in benchmarks/gpu_sections/ (harness: Budget, Suite and the table;
workloads: the models and their FLOPs; votes: peak, votes; certify: certify, sequential; train;
eb), each reusing the functions of the benchmark script it follows.

References: benchmarks/README.md ("GPU suite"); Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY).
"""

import argparse
import os
import pathlib
import shlex
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The checkout's rsjax and the sibling benchmark scripts, also where rsjax is not pip-installed (a
# lent accelerator machine gets a copy of the tree and its own Python with jax). The sections
# (benchmarks/gpu_sections/) import those scripts by name too.
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import vote_throughput  # noqa: E402
from gpu_sections.certify import section_certify, section_sequential  # noqa: E402
from gpu_sections.eb import section_eb  # noqa: E402
from gpu_sections.harness import (  # noqa: E402
    COLUMNS,  # noqa: F401  (the table header, which its readers take from here)
    Budget,
    Suite,
    error_text,
)
from gpu_sections.resnet50 import section_resnet50  # noqa: E402
from gpu_sections.train import section_train  # noqa: E402
from gpu_sections.votes import section_peak, section_votes  # noqa: E402

from rsjax import records, votes  # noqa: E402

DEFAULT_OUT = "benchmarks/results/gpu_suite.jsonl"
SECTIONS = ("peak", "votes", "certify", "sequential", "train", "eb", "resnet50")
DEFAULT_SECTIONS = SECTIONS[:-1]  # resnet50 runs when named (its own budget: see the docstring)
# Shares of --budget-s; a section may also use what earlier sections left.
SHARES = {  # CERTIFY's seconds per image is the headline: it gets the largest inference share
    "peak": 0.02,
    "votes": 0.22,
    "certify": 0.25,
    "sequential": 0.12,
    "train": 0.32,
    "eb": 0.07,
    "resnet50": 0.30,  # normalised over the sections run; alone it has the whole budget
}
RUN = {
    "peak": section_peak,
    "votes": section_votes,
    "certify": section_certify,
    "sequential": section_sequential,
    "train": section_train,
    "eb": section_eb,
    "resnet50": section_resnet50,
}


def parse_configs(specs):
    configs = []
    for spec in specs:
        loss, _, k = spec.partition(":")
        if loss not in ("gaussian", "adre") or not k.isdigit() or int(k) < 1:
            raise SystemExit(
                f"--train-configs takes LOSS:K (gaussian or adre, K >= 1), got {spec!r}"
            )
        configs.append((loss, int(k)))
    return configs


# ------------------------------------------------------------------------------------------ main


def parse_args(argv):
    """The flags, with --quick's sizes applied and args.out resolved ("" for no file)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument(
        "--sections",
        nargs="+",
        default=list(DEFAULT_SECTIONS),
        choices=SECTIONS,
        help="default: all but resnet50",
    )
    p.add_argument(
        "--budget-s", type=float, default=None, help="total seconds (default 420; quick 240)"
    )
    p.add_argument(
        "--hard-limit-s", type=float, default=None, help="watchdog (default budget + 50)"
    )
    p.add_argument("--repeats", type=int, default=3, help="timed rounds; the median is reported")
    p.add_argument(
        "--compile-workers", type=int, default=4, help="threads for a section's warm-ups"
    )
    p.add_argument(
        "--resnet",
        default="resnet110",
        choices=["resnet20", "resnet110"],
        help="model of certify, sequential, train",
    )
    p.add_argument(
        "--votes-models",
        nargs="+",
        default=["lenet", "resnet20", "resnet110"],
        choices=sorted(vote_throughput.SHAPES),
    )
    p.add_argument(
        "--votes-chunks", type=int, nargs="+", default=None, help="default: rsjax's chunk and 4x"
    )
    p.add_argument("--votes-batch", type=int, default=8, help="examples per count_votes call")
    p.add_argument(
        "--votes-n", type=int, default=None, help="samples per example (default per model: VOTE_N)"
    )
    p.add_argument("--peak-size", type=int, default=4096)
    p.add_argument("--certify-images", type=int, default=8)
    p.add_argument(
        "--certify-chunk", type=int, default=None, help="default: rsjax's platform default"
    )
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--certify-n", type=int, default=100_000)
    p.add_argument("--n-max", type=int, default=100_000, help="sequential CERTIFY's n_max")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument(
        "--train-model",
        default=None,
        choices=sorted(vote_throughput.SHAPES),
        help="default: --resnet",
    )
    p.add_argument("--train-configs", nargs="+", default=["gaussian:1", "adre:8"], help="LOSS:K")
    p.add_argument("--train-batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--lam", type=float, default=0.5, help="ADRE's lam")
    p.add_argument(
        "--round-s", type=float, default=0.5, help="seconds of train steps per timed round"
    )
    p.add_argument("--max-steps", type=int, default=50, help="most train steps per round")
    p.add_argument("--eb-examples", type=int, default=8)
    p.add_argument("--eb-n", type=int, default=20_000)
    p.add_argument("--eb-chunk", type=int, default=None, help="default: rsjax's platform default")
    p.add_argument("--resnet50-images", type=int, default=1)
    p.add_argument("--resnet50-n0", type=int, default=100)
    p.add_argument("--resnet50-n", type=int, default=100_000)
    p.add_argument(
        "--resnet50-chunk", type=int, default=None, help="default: rsjax's platform default"
    )
    p.add_argument("--out", default=None, help=f"JSON lines (default {DEFAULT_OUT}; --quick: none)")
    args = p.parse_args(argv)
    if args.quick:
        args.resnet = "resnet20"
        args.votes_models = ["lenet"]  # certify, sequential and train cover ResNet-20
        args.votes_chunks, args.votes_batch, args.votes_n = [32], 2, 128
        args.peak_size, args.repeats = 256, 1
        args.certify_images, args.certify_chunk, args.n0 = 1, 64, 50
        args.certify_n = args.n_max = 500
        args.train_model = args.train_model or "lenet"  # a ResNet-20 train step compiles in 11 s
        args.train_configs, args.train_batches = ["gaussian:1", "adre:2"], [4]
        args.round_s, args.max_steps = 0.0, 1
        args.eb_examples, args.eb_n, args.eb_chunk = 2, 64, 32
        args.resnet50_images, args.resnet50_n0, args.resnet50_n, args.resnet50_chunk = 1, 8, 16, 8
    if args.votes_chunks is None:
        args.votes_chunks = [votes.default_chunk_size(), 4 * votes.default_chunk_size()]
    args.train_configs = parse_configs(args.train_configs)
    if args.budget_s is None:
        args.budget_s = 240.0 if args.quick else 420.0
    if args.hard_limit_s is None:
        args.hard_limit_s = args.budget_s + 50.0
    if args.out is None:
        args.out = "" if args.quick else DEFAULT_OUT
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.quick:
        # Threefry in its non-partitionable form compiles about 4x faster on XLA:CPU (the random
        # initialisers, images and training noise of the reused benchmark functions); a smoke test
        # may change it, a measure keeps JAX's default.
        jax.config.update("jax_threefry_partitionable", False)
    env = records.environment()
    command = shlex.join(["python", "benchmarks/gpu_suite.py", *argv])
    suite = Suite(args.out, env, quick=args.quick, command=command)
    print(
        f"device: {env['device_kind']} x{env['device_count']} ({suite.platform}),"
        f" jax {jax.__version__};"
        f" default chunk {votes.default_chunk_size()}; budget {args.budget_s:.0f} s,"
        f" watchdog {args.hard_limit_s:.0f} s",
        flush=True,
    )

    def on_hard_limit():
        print(
            f"\nwatchdog: {args.hard_limit_s:.0f} s reached; the table holds what was measured",
            flush=True,
        )
        suite.print_table(" (stopped by the watchdog)")
        os._exit(124)

    watchdog = threading.Timer(args.hard_limit_s, on_hard_limit)
    watchdog.daemon = True
    watchdog.start()
    total_share = sum(SHARES[s] for s in args.sections)
    budget = Budget(args.budget_s, {s: SHARES[s] / total_share for s in args.sections})
    for section in SECTIONS:
        if section not in args.sections:
            continue
        left = budget.open(section)
        if budget.total_left() <= 0:
            suite.skip(section, None, "", "skipped: budget")
            continue
        print(
            f"{section} (section budget {left:.0f} s, total left {budget.total_left():.0f} s)",
            flush=True,
        )
        t0, cpu0 = time.perf_counter(), time.process_time()
        try:
            RUN[section](suite, budget, args)
        except Exception as e:  # the suite goes on and prints what it has
            suite.skip(section, None, "", error_text(e))
        print(
            f"  {section}: {time.perf_counter() - t0:.0f} s wall,"
            f" {time.process_time() - cpu0:.0f} s CPU (host, all threads)",
            flush=True,
        )
    watchdog.cancel()
    suite.print_table()
    return suite


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
