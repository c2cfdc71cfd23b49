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

References: benchmarks/README.md ("GPU suite"); Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY).
"""

import argparse
import concurrent.futures
import math
import os
import pathlib
import shlex
import statistics
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# The checkout's rsjax and the sibling benchmark scripts, also where rsjax is not pip-installed (a
# lent accelerator machine gets a copy of the tree and its own Python with jax).
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import eb_throughput  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import train_throughput  # noqa: E402
import vote_throughput  # noqa: E402

import rsjax  # noqa: E402
from rsjax import empirical_bayes, models, records, votes  # noqa: E402

DEFAULT_OUT = "benchmarks/results/gpu_suite.jsonl"
SECTIONS = ("peak", "votes", "certify", "sequential", "train", "eb")
# Shares of --budget-s; a section may also use what earlier sections left.
SHARES = {  # CERTIFY's seconds per image is the headline: it gets the largest inference share
    "peak": 0.02,
    "votes": 0.22,
    "certify": 0.25,
    "sequential": 0.12,
    "train": 0.32,
    "eb": 0.07,
}
VOTE_N = {"linear": 100_000, "lenet": 100_000, "resnet20": 20_000, "resnet110": 4_000}
NUM_CLASSES = 10
SIGMA = 0.25
NAMES = {"lenet": "LeNet", "resnet20": "ResNet-20", "resnet110": "ResNet-110", "linear": "linear"}
COLUMNS = (
    "section",
    "model",
    "settings",
    "throughput",
    "per item",
    "ratio",
    "TFLOP/s",
    "compile s",
    "timed",
    "note",
)


class Budget:
    """Wall-clock budget: a total, shared by sections in order (a section's deadline is the end of
    its cumulative share, or half its own share from when it opens if that is later, never past
    the total)."""

    def __init__(self, total_s: float, shares: dict, clock=time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.total_s = float(total_s)
        self.shares = shares
        self.end = self.start + self.total_s
        self.deadline = self.end
        self.cumulative = 0.0

    def open(self, section: str) -> float:
        """Starts `section`; returns its seconds left."""
        share = self.shares.get(section, 0.0)
        self.cumulative += share
        planned = self.start + self.total_s * self.cumulative
        self.deadline = min(self.end, max(planned, self.clock() + 0.5 * share * self.total_s))
        return self.left()

    def left(self) -> float:
        """Seconds left in the current section."""
        return self.deadline - self.clock()

    def total_left(self) -> float:
        return self.end - self.clock()

    def allows(self, seconds: float, first: bool = False) -> bool:
        """Whether a step expected to take `seconds` fits: in the section, or, for a configuration's
        first timed repeat, in the total budget."""
        return seconds <= (self.total_left() if first else self.left())


class Suite:
    """The rows measured so far: JSON lines to `out`, table cells for the final table."""

    def __init__(self, out: str, env: dict, *, quick: bool, command: str):
        self.out, self.env, self.quick, self.command = out, env, quick, command
        self.rows, self.cells = [], []
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        device = jax.devices()[0]
        self.device = str(device)
        self.platform = device.platform

    def add(self, row: dict, cells: dict) -> dict:
        row = dict(
            {"benchmark": "gpu_suite", "status": "ok"},
            **row,
            quick=self.quick,
            command=self.command,
            date=time.strftime("%Y-%m-%d"),
            platform_name=self.platform,
            device=self.device,
            jax_version=jax.__version__,
            device_peak_bytes=device_peak_bytes(),
        )
        row = records.append_result(self.out, row, self.env)
        cells = dict(cells, section=row["section"], note=cells.get("note", ""))
        with self.lock:
            self.rows.append(row)
            self.cells.append(cells)
        print(
            f"  [{row['section']}] "
            + ", ".join(f"{k}: {v}" for k, v in cells.items() if v and k != "section"),
            flush=True,
        )
        return row

    def skip(self, section, model, settings, reason, **fields):
        return self.add(
            dict(
                section=section, model=model, status=reason.split(":")[0], reason=reason, **fields
            ),
            {"model": model, "settings": settings, "note": reason},
        )

    def table(self) -> str:
        with self.lock:
            lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            for cells in self.cells:
                lines.append(
                    "| " + " | ".join(str(cells.get(c, "") or "-") for c in COLUMNS) + " |"
                )
        return "\n".join(lines)

    def print_table(self, note: str = ""):
        elapsed = time.perf_counter() - self.start
        print()
        print(
            f"GPU suite: {self.env['device_kind']} ({self.platform}, {self.env['device_count']}"
            f" device(s)), jax {jax.__version__}, {time.strftime('%Y-%m-%d')}"
            + (", --quick (a smoke test, not a measure)" if self.quick else "")
        )
        print()
        print(self.table())
        print()
        print(f"time: {elapsed:.0f} s{note}", flush=True)


def device_peak_bytes():
    """The default device's peak memory in use so far (None where the backend does not say)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # optional, backend-dependent
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def fmt(x, digits=0):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def error_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"error: {type(e).__name__}: {text[:120]}"


# ------------------------------------------------------------------------------------ the models

_MODELS: dict = {}
_FLOPS: dict = {}


def get_model(name: str) -> dict:
    """{"logits_fn", "variables", "shape"} of a registered model, built once per process (the same
    logits_fn object everywhere, so rsjax's compiled steps are shared between sections).

    The random weights come from an "rbg" key: XLA:CPU compiles the default (partitionable
    threefry) normal in 1-2 s per parameter shape, which made initialising ResNet-20 cost 13 s of
    the quick run; the weights' bits do not change the speed. The noise of the measured steps stays
    rsjax's own (threefry, from threefry keys)."""
    if name not in _MODELS:
        model = models.make_model(name, num_classes=NUM_CLASSES)
        shape = vote_throughput.SHAPES[name]
        variables = models.init_variables(model, jax.random.key(0, impl="rbg"), shape)
        _MODELS[name] = {
            "logits_fn": models.make_logits_fn(model),
            "variables": variables,
            "shape": shape,
        }
    return _MODELS[name]


def lowered_flops(fn, *args, per: int = 1):
    """XLA's FLOP count of jit(fn) lowered on args (no compile), divided by `per`; None if the
    backend gives none."""
    try:
        cost = jax.jit(fn).lower(*args).cost_analysis()
    except Exception:  # optional
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"] / per if cost and cost.get("flops") else None


def forward_flops(name: str):
    """FLOPs per input of the model's forward pass (cost analysis on a batch of 64)."""
    if name not in _FLOPS:
        m = get_model(name)
        x = jnp.zeros((64, *m["shape"]), jnp.float32)
        _FLOPS[name] = lowered_flops(m["logits_fn"], m["variables"], x, per=64)
    return _FLOPS[name]


def shape_text(name):
    return "x".join(map(str, vote_throughput.SHAPES[name]))


def tflops(flops_per_item, rate):
    return None if flops_per_item is None or rate is None else flops_per_item * rate / 1e12


def warm_up(jobs: dict, workers: int) -> dict:
    """Runs each job() once, in `workers` threads: {name: (seconds, result or the exception)}."""

    def timed(job):
        t0 = time.perf_counter()
        try:
            result = job()
        except Exception as e:  # reported as a row
            result = e
        return time.perf_counter() - t0, result

    if workers <= 1:
        return {name: timed(job) for name, job in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(timed, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


# ------------------------------------------------------------------------------------- sections


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
    """A closure pair (run_raw, run_votes) over batch * n noisy inputs, and what they process."""
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
                "model": f"{NAMES.get(name, name)} ({shape_text(name)})",
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


def vote_rate_of(suite, name, chunk):
    """The votes section's samples/s for (model, chunk) if measured, else None."""
    for row in suite.rows:
        if (
            row["section"] == "votes"
            and row["model"] == name
            and row.get("chunk") == chunk
            and row["status"] == "ok"
        ):
            return row["votes_samples_per_s"]
    return None


def twice(budget, call, estimate):
    """(first seconds, steady seconds or None, result): the steady call runs if `estimate` (or the
    first call's time, when there is none) fits in the section."""
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    if not budget.allows(estimate if estimate is not None else first):
        return first, None, result
    t0 = time.perf_counter()
    result = call()
    return first, time.perf_counter() - t0, result


def certify_images(args, shape):
    key = jax.random.key(5, impl="rbg")  # synthetic images: see get_model
    return np.asarray(jax.random.uniform(key, (args.certify_images, *shape)))


def certify_call(args, m, x, chunk, **sampling):
    """A no-argument call of rsjax.certify on model `m` and images `x` with the suite's settings
    (same key, sigma, n0, alpha, chunk and batch for fixed-n and sequential); `sampling` adds n= or
    sampling="sequential", n_max=, radii=."""

    def call():
        return rsjax.certify(
            jax.random.key(7),
            m["logits_fn"],
            x,
            sigma=SIGMA,
            n0=args.n0,
            alpha=args.alpha,
            num_classes=NUM_CLASSES,
            chunk_size=chunk,
            batch_size=min(8, len(x)),
            params=m["variables"],
            **sampling,
        )

    return call


def section_certify(suite, budget, args):
    name, images, n0, n = args.resnet, args.certify_images, args.n0, args.certify_n
    settings = f"{images} images, n0 {n0}, n {n:,}, alpha {args.alpha}, sigma {SIGMA}"
    m = get_model(name)
    x = certify_images(args, m["shape"])
    chunk = args.certify_chunk or votes.default_chunk_size()
    call = certify_call(args, m, x, chunk, n=n)
    rate = vote_rate_of(suite, name, chunk)
    estimate = None if rate is None else images * (n0 + n) / rate
    try:
        first, steady, cert = twice(budget, call, estimate)
    except Exception as e:  # reported as a row
        suite.skip("certify", name, settings, error_text(e))
        return
    t = steady if steady is not None else first
    samples_per_s = images * (n0 + n) / t
    flops = forward_flops(name)
    abstain = int((cert.prediction == rsjax.ABSTAIN).sum())
    suite.add(
        dict(
            section="certify",
            model=name,
            images=images,
            n0=n0,
            n=n,
            alpha=args.alpha,
            sigma=SIGMA,
            chunk=chunk,
            batch_size=min(8, images),
            first_call_s=first,
            steady_call_s=steady,
            per_image_s=t / images,
            per_image_includes_compile=steady is None,
            compile_s=None if steady is None else max(first - steady, 0.0),
            samples_per_s=samples_per_s,
            tflops_per_s=tflops(flops, samples_per_s),
            abstained=abstain,
            predictions=cert.prediction.tolist(),
            mean_radius=float(cert.radius.mean()),
            units={
                "*_s": "s",
                "samples_per_s": "noise samples/s (n0 + n per image)",
                "mean_radius": "l2, [0,1] pixels",
            },
        ),
        {
            "model": f"{NAMES.get(name, name)} ({shape_text(name)})",
            "settings": settings,
            "throughput": f"{fmt(samples_per_s)} samples/s",
            "per item": f"{t / images:.3f} s/image"
            + (" (incl. compile)" if steady is None else ""),
            "TFLOP/s": fmt(tflops(flops, samples_per_s), 2),
            "compile s": "-" if steady is None else f"{max(first - steady, 0.0):.1f}",
            "timed": 1,
            "note": f"random weights: {images - abstain}/{images} certified,"
            f" mean radius {cert.radius.mean():.3f}"
            + ("; steady call skipped: budget" if steady is None else ""),
        },
    )


def section_sequential(suite, budget, args):
    name, images, n0, n_max = args.resnet, args.certify_images, args.n0, args.n_max
    radii = tuple(0.25 * i for i in range(9))
    settings = f"{images} images, n0 {n0}, n_max {n_max:,}, radii 0-2.0 by 0.25, alpha {args.alpha}"
    m = get_model(name)
    x = certify_images(args, m["shape"])
    chunk = args.certify_chunk or votes.default_chunk_size()
    call = certify_call(args, m, x, chunk, sampling="sequential", n_max=n_max, radii=radii)
    try:
        t0 = time.perf_counter()
        cert = call()
        first = time.perf_counter() - t0
        rate = vote_rate_of(suite, name, chunk)
        estimate = None if rate is None else float(np.sum(cert.num_samples)) / rate
        steady = None
        if budget.allows(estimate if estimate is not None else first):
            t0 = time.perf_counter()
            cert = call()
            steady = time.perf_counter() - t0
    except Exception as e:  # reported as a row
        suite.skip("sequential", name, settings, error_text(e))
        return
    t = steady if steady is not None else first
    draws = np.asarray(cert.num_samples)
    abstain = int((np.asarray(cert.prediction) == rsjax.ABSTAIN).sum())
    to_max = int((draws >= n0 + n_max).sum())
    classes = sorted({int(c) for c in np.asarray(cert.prediction) if c != rsjax.ABSTAIN})
    samples_per_s = float(draws.sum()) / t
    flops = forward_flops(name)
    suite.add(
        dict(
            section="sequential",
            model=name,
            images=images,
            n0=n0,
            n_max=n_max,
            radii=list(radii),
            alpha=args.alpha,
            sigma=SIGMA,
            chunk=chunk,
            bound="union",
            batch_size=min(8, images),
            first_call_s=first,
            steady_call_s=steady,
            per_image_s=t / images,
            per_image_includes_compile=steady is None,
            compile_s=None if steady is None else max(first - steady, 0.0),
            mean_draws=float(draws.mean()),
            median_draws=float(np.median(draws)),
            draws=draws.tolist(),
            ran_to_n_max=to_max,
            abstained=abstain,
            predicted_classes=classes,
            mean_radius=float(np.mean(cert.radius)),
            samples_per_s=samples_per_s,
            tflops_per_s=tflops(flops, samples_per_s),
            units={
                "*_s": "s",
                "*draws": "noise draws per image, n0 included",
                "samples_per_s": "draws/s",
            },
        ),
        {
            "model": f"{NAMES.get(name, name)} ({shape_text(name)})",
            "settings": settings,
            "throughput": f"{fmt(samples_per_s)} draws/s",
            "per item": f"{t / images:.3f} s/image, {fmt(draws.mean())} draws"
            + (" (incl. compile)" if steady is None else ""),
            "ratio": f"{(n0 + n_max) / draws.mean():.1f}x fewer draws",
            "TFLOP/s": fmt(tflops(flops, samples_per_s), 2),
            "compile s": "-" if steady is None else f"{max(first - steady, 0.0):.1f}",
            "timed": 1,
            "note": f"random weights: {images - abstain}/{images} certified, classes {classes}, "
            f"{to_max} ran to n_max, mean radius {np.mean(cert.radius):.3f}"
            + ("; steady call skipped: budget" if steady is None else ""),
        },
    )


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
                "model": f"{NAMES.get(name, name)} ({shape_text(name)})",
                "settings": settings,
                "throughput": f"{1 / step_s:,.2f} steps/s, {fmt(b / step_s)} images/s",
                "per item": f"{1e3 * step_s:,.1f} ms/step",
                "TFLOP/s": fmt(tflops(flops, 1 / step_s), 2),
                "compile s": f"{max(c['compile_s'] - step_s, 0.0):.1f}",
                "timed": f"{len(times[key])} x {plan[key]} steps",
                "note": "repeats cut: budget" if key in cut else "",
            },
        )


def lowered_flops_step(c):
    """FLOPs of one train step of a train_throughput config (lowering is cached after the call)."""
    try:
        cost = c["step"].lower(c["state"], c["batch"], c["key"]).cost_analysis()
    except Exception:  # optional
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost.get("flops") if cost else None


def section_eb(suite, budget, args):
    chunk = args.eb_chunk or votes.default_chunk_size()
    settings = f"{args.eb_examples} x {args.eb_n:,}, chunk {chunk:,}, sigma {eb_throughput.SIGMA}"
    try:
        rows = eb_throughput.measure_certify(
            ["energy_mnist"],
            examples=args.eb_examples,
            n=args.eb_n,
            chunk=chunk,
            repeats=args.repeats,
        )
    except Exception as e:  # reported as a row
        suite.skip("eb", "lenet", settings, error_text(e))
        return
    model, variables = eb_throughput.classifier()
    plain_fn = models.make_logits_fn(model)
    score_fn, score_params = eb_throughput.score_model("energy_mnist")
    eb_fn = empirical_bayes.make_eb_logits_fn(plain_fn, score_fn, sigma=eb_throughput.SIGMA)
    y = jnp.zeros((64, *eb_throughput.SHAPE), jnp.float32)
    flops = {
        None: lowered_flops(plain_fn, variables, y, per=64),
        "energy_mnist": lowered_flops(
            eb_fn, {"classifier": variables, "score": score_params}, y, per=64
        ),
    }
    for row in rows:
        score_model = row["score_model"]
        label = "LeNet (28x28x1)" if score_model is None else f"LeNet(xhat {score_model}) (28x28x1)"
        rate = row["samples_per_s"]
        suite.add(
            dict(
                section="eb",
                model="lenet",
                score_model=score_model,
                examples=row["examples"],
                n=row["n"],
                chunk=row["chunk"],
                sigma=row["sigma"],
                repeats=row["repeats"],
                call_s=row["call_s"],
                call_s_repeats=row["call_s_repeats"],
                first_call_s=row["first_call_s"],
                compile_s=max(row["first_call_s"] - row["call_s"], 0.0),
                samples_per_s=rate,
                ratio_to_plain=row["ratio"],
                flops_per_sample=flops[score_model],
                tflops_per_s=tflops(flops[score_model], rate),
                units={"*_s": "s", "samples_per_s": "noise samples/s", "flops_per_sample": "FLOP"},
            ),
            {
                "model": label,
                "settings": settings,
                "throughput": f"{fmt(rate)} samples/s",
                "ratio": f"{row['ratio']:.3f} of plain",
                "TFLOP/s": fmt(tflops(flops[score_model], rate), 2),
                "compile s": f"{max(row['first_call_s'] - row['call_s'], 0.0):.1f}",
                "timed": row["repeats"],
            },
        )


RUN = {
    "peak": section_peak,
    "votes": section_votes,
    "certify": section_certify,
    "sequential": section_sequential,
    "train": section_train,
    "eb": section_eb,
}


# ------------------------------------------------------------------------------------------ main


def parse_args(argv):
    """The flags, with --quick's sizes applied and args.out resolved ("" for no file)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
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
