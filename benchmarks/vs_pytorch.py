"""rsjax certification against the PyTorch reference loop, side by side on the same model and inputs.

  python benchmarks/vs_pytorch.py [--models lenet resnet20] [--images 20] [--n0 100] [--n 10000]
      [--batch 1000] [--repeats 3] [--threads 2] [--workdir RUN] [--quick]
  python benchmarks/vs_pytorch.py --imported cifar_resnet110 --images 1 --n 1000 --repeats 2
  python benchmarks/vs_pytorch.py --imported resnet50 --images 1 --n 200 --batch 100 --chunk 100 \
      --repeats 1

Needs the benchmark extra (pip install -e ".[bench]": PyTorch). For each model: random-init Flax
variables (or the checkpoint of --workdir, through rsjax.train.load_for_eval), copied into the PyTorch
twin by benchmarks/torch_reference.py's from_flax; the same --images random images in [0,1] for both.

--imported ARCH goes the other way, as a user with a PyTorch checkpoint would: a PyTorch model in
the layout of Cohen et al.'s checkpoints (benchmarks/torch_twins.py: cifar_resnet20/110, torchvision's
resnet50), random weights with batch-norm statistics of random images, is saved in his checkpoint
format and read back by rsjax.torch_import.load_checkpoint; the reference runs the PyTorch model
itself, rsjax the imported one. The row records the largest logit difference of the two on the
benchmark's images (same weights: float32 rounding only).

- rsjax: one call of rsjax.certify (rsjax/certify.py) on all the images (n0 selection and n estimation draws per
  image, default chunk size and example batch of 8, counts on the device, Clopper-Pearson on the host).
- reference: torch_reference.reference_certify one image at a time (--batch noisy copies per forward
  pass, counts on the host, Clopper-Pearson through scipy), as Cohen et al.'s released code runs.

Both sides run in one process with --threads (2) cores: torch.set_num_threads, and the process is pinned
to that many CPUs (os.sched_setaffinity) before JAX starts, because XLA:CPU sizes its thread pool by the
CPUs it may use. Each side is compiled and run once first (rsjax on batch shapes covering a full round,
the reference on one image); then the two alternate for --repeats rounds. noise samples/s =
images * (n0 + n) / t of a round; ratio = rsjax / reference within a round, and the median over rounds
is reported against the target (LeNet >= 1.5, ResNet-20 >= 1.0). Rows are printed as a markdown table
and appended as JSON lines to --out (default benchmarks/results/vs_pytorch.jsonl; with --quick, nowhere
unless --out is given).
"""

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_reference  # benchmarks/ is on the path when this file runs as a script
import torch_twins

import rsjax
from rsjax import models, records, torch_import, train, votes

DEFAULT_OUT = "benchmarks/results/vs_pytorch.jsonl"
SHAPES = {"lenet": (28, 28, 1), "resnet20": (32, 32, 3), "resnet110": (32, 32, 3)}
DATASETS = {"lenet": "mnist", "resnet20": "cifar10", "resnet110": "cifar10"}
TARGETS = {"lenet": 1.5, "resnet20": 1.0}
NUM_CLASSES = 10
RSJAX_BATCH = 8  # rsjax.certify.certify's default example batch


def parse_args(argv):
    """The flags, with --quick's sizes applied and args.out resolved ("" for no file)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"], choices=sorted(SHAPES))
    p.add_argument("--images", type=int, default=20, help="images certified per round")
    p.add_argument("--n0", type=int, default=100, help="selection draws per image")
    p.add_argument("--n", type=int, default=10_000, help="estimation draws per image")
    p.add_argument("--batch", type=int, default=1000, help="reference: noisy copies per forward")
    p.add_argument(
        "--chunk", type=int, default=None, help="rsjax chunk size (default: its platform default)"
    )
    p.add_argument(
        "--rsjax-batch", type=int, default=RSJAX_BATCH, help="rsjax: examples per device call"
    )
    p.add_argument(
        "--imported",
        nargs="+",
        default=None,
        choices=sorted(torch_twins.INPUT_SHAPES),
        help="PyTorch models with random weights in Cohen et al.'s checkpoint layout, imported "
        "through rsjax.torch_import (instead of --models)",
    )
    p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's, or 0.25")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--repeats", type=int, default=3, help="rounds; the median ratio is reported")
    p.add_argument("--threads", type=int, default=2, help="CPU cores for each side")
    p.add_argument(
        "--workdir",
        default=None,
        help="a training run (holds checkpoints/): its model and weights, instead of --models",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None, help=f"JSON lines (default {DEFAULT_OUT}; --quick: none)")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.n0, args.n, args.repeats = 2, 8, 64, 1
    if args.out is None:
        args.out = "" if args.quick else DEFAULT_OUT
    return args


def pin_cpus(threads: int) -> list[int]:
    """Restricts this process to `threads` of its CPUs (before JAX starts); returns the CPUs kept."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) > threads:
        cpus = cpus[:threads]
        os.sched_setaffinity(0, cpus)
    return cpus


def load_model(name, workdir, sigma):
    """(model_name, flax model, variables, input_shape, dataset, sigma, weights description).

    Random-init weights for `name`, or the newest checkpoint of `workdir` (then `name` is unused)."""
    if workdir is None:
        model = models.make_model(name, num_classes=NUM_CLASSES, dataset=DATASETS[name])
        variables = models.init_variables(model, jax.random.key(0), SHAPES[name])
        return name, model, variables, SHAPES[name], DATASETS[name], sigma or 0.25, "random-init"
    ckpt = os.path.join(workdir, "checkpoints")
    model, variables, meta, step = train.load_for_eval(ckpt, None)
    sigma = sigma or meta.get("sigma", 0.25)
    shape = tuple(meta["input_shape"])
    return meta["model"], model, variables, shape, meta["dataset"], sigma, f"{ckpt} step {step}"


def load_imported(arch, sigma):
    """(arch, flax model, variables, input_shape, dataset, sigma, weights description, torch model,
    logits_fn, num_classes): a torch_twins model with random weights, saved in Cohen et al.'s format
    and read back by rsjax.torch_import.load_checkpoint."""
    twin = torch_twins.make_twin(arch)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "checkpoint.pth.tar")
        torch_twins.save_cohen_checkpoint(twin, path, arch)
        imported = torch_import.load_checkpoint(path)
    weights = (
        f"random (torch_twins.make_twin seed 0), imported from {imported.source['serialization']}"
    )
    return (
        arch,
        imported.model,
        imported.variables,
        imported.input_shape,
        imported.dataset,
        sigma or 0.25,
        weights,
        twin,
        imported.logits_fn,
        imported.num_classes,
    )


def measure(name, args):
    """Times rsjax and the reference on the same model and images; one JSON-able row."""
    logit_gap = None
    if args.imported:
        name, model, variables, shape, dataset, sigma, weights, torch_model, logits_fn, k = (
            load_imported(name, args.sigma)
        )
        num_classes = k
    else:
        name, model, variables, shape, dataset, sigma, weights = load_model(
            name, args.workdir, args.sigma
        )
        num_classes = int(model.num_classes)
        torch_model = torch_reference.from_flax(name, variables, input_shape=shape, dataset=dataset)
        logits_fn = models.make_logits_fn(model)
    x = np.asarray(jax.random.uniform(jax.random.key(1), (args.images, *shape)), np.float32)
    x_chw = torch_reference.to_nchw(x)
    if args.imported:  # same weights: the two forward passes agree to float32 rounding
        with torch.inference_mode():
            theirs = torch_model(x_chw).numpy()
        ours = np.asarray(logits_fn(variables, x))
        logit_gap = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
    key = jax.random.key(2)
    generator = torch.Generator().manual_seed(3)
    common = dict(sigma=sigma, n0=args.n0, n=args.n, alpha=args.alpha, num_classes=num_classes)

    def run_rsjax(images=x):
        return rsjax.certify(
            key,
            logits_fn,
            images,
            params=variables,
            chunk_size=args.chunk,
            batch_size=args.rsjax_batch,
            **common,
        )

    def run_reference(images=x_chw):
        return [
            torch_reference.reference_certify(
                torch_model, image, batch=args.batch, generator=generator, **common
            )
            for image in images
        ]

    # Compile and warm up: rsjax on one full example batch and on the ragged last one (the shapes of a
    # round), the reference on one image.
    run_rsjax(x[: args.rsjax_batch])
    if args.images > args.rsjax_batch and args.images % args.rsjax_batch:
        run_rsjax(x[: args.images % args.rsjax_batch])
    run_reference(x_chw[:1])

    samples = args.images * (args.n0 + args.n)
    seconds = {"rsjax": [], "reference": []}
    agree = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = run_rsjax()
        seconds["rsjax"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        theirs = run_reference()
        seconds["reference"].append(time.perf_counter() - t0)
        agree.append(
            int(sum(int(p) == r.prediction for p, r in zip(ours.prediction, theirs, strict=True)))
        )
    ratios = [r / o for o, r in zip(seconds["rsjax"], seconds["reference"], strict=True)]
    return {
        "benchmark": "vs_pytorch",
        "model": name,
        "dataset": dataset,
        "weights": weights,
        "images": args.images,
        "n0": args.n0,
        "n": args.n,
        "sigma": sigma,
        "alpha": args.alpha,
        "reference_batch": args.batch,
        "rsjax_chunk": args.chunk,
        "rsjax_batch": args.rsjax_batch,
        "threads": args.threads,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "repeats": args.repeats,
        "rsjax_s": seconds["rsjax"],
        "reference_s": seconds["reference"],
        "rsjax_samples_per_s": samples / statistics.median(seconds["rsjax"]),
        "reference_samples_per_s": samples / statistics.median(seconds["reference"]),
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "target": TARGETS.get(name),
        # Same model, independent noise: predictions agree except near the abstain boundary.
        "predictions_agree": agree,
        **(
            {"imported": True, "max_logit_gap_relative": logit_gap, "load_average": os.getloadavg()}
            if args.imported
            else {}
        ),
    }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    cpus = pin_cpus(args.threads)  # before JAX starts its CPU thread pool
    torch.set_num_threads(args.threads)
    jnp.zeros(())  # start the backend before timing anything
    args.chunk = votes.default_chunk_size() if args.chunk is None else args.chunk
    command = shlex.join(["python", "benchmarks/vs_pytorch.py", *argv])
    env = records.environment()
    print(
        f"device: {env['device_kind']} x{env['device_count']}, CPUs {cpus}, "
        f"jax {env['versions']['jax']}, torch {torch.__version__}"
    )
    print(
        "| model | images x (n0 + n) | rsjax samples/s | reference samples/s | ratio (median) "
        "| target | ratios by round |"
    )
    print("|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name in [None] if args.workdir else (args.imported or args.models):
        row = measure(name, args)
        row = records.append_result(
            args.out, dict(row, quick=args.quick, command=command, cpus=cpus), env
        )
        target = "-" if row["target"] is None else f">= {row['target']}"
        print(
            f"| {row['model']} | {row['images']} x ({row['n0']} + {row['n']})"
            f" | {row['rsjax_samples_per_s']:,.0f} | {row['reference_samples_per_s']:,.0f}"
            f" | {row['ratio']:.2f} | {target} | {', '.join(f'{r:.2f}' for r in row['ratios'])} |",
            flush=True,
        )
    print(f"time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
