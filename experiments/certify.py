"""Certify a dataset split with a trained checkpoint; writes the standard TSV per method + JSON sidecar.

  python experiments/certify.py --workdir runs/mnist_lenet --dataset mnist --split test \
      --data-source-dir ../shared/data/mnist-test --skip 20 --n 10000 --outdir runs/mnist_lenet/cert

--skip K certifies every K-th example (idx % K == 0) and --max M stops before index M (-1: all), as in
Cohen et al.'s certify.py. Killed and rerun with the same arguments, it continues where it stopped.
"""

import argparse
import pathlib

import cli
import jax
import numpy as np

from rsjax import checkpoint, data, models, records, runs, train, votes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="training run directory (holds checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: newest)")
    p.add_argument("--dataset", default=None, help="default: the checkpoint's training dataset")
    p.add_argument("--split", default="test")
    p.add_argument(
        "--holdout-every",
        type=int,
        default=10,
        help="mnist5k only: the split 'test' is every k-th image held out in training",
    )
    p.add_argument("--sigma", type=float, default=None, help="default: the checkpoint's sigma")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument(
        "--methods", nargs="+", default=["cohen", "tcertify"], choices=["cohen", "tcertify"]
    )
    p.add_argument("--alpha-split", default="selection", choices=["selection", "union"])
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th example")
    p.add_argument("--max", type=int, default=-1, help="stop before this index (-1: no limit)")
    p.add_argument("--seed", type=int, default=0, help="certification noise seed")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="noise samples per example per device step (default: 125 on CPU, 1000 on accelerators)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="examples per device call")
    p.add_argument("--outdir", required=True)
    cli.add_data_flags(p)
    args = p.parse_args(argv)
    if args.skip < 1:
        p.error("--skip must be >= 1")

    ckpt_dir = pathlib.Path(args.workdir) / "checkpoints"
    model, variables, meta, step = train.load_for_eval(ckpt_dir, args.step)
    dataset = args.dataset or meta["dataset"]
    sigma = meta["sigma"] if args.sigma is None else args.sigma
    if dataset == "mnist5k":
        _, split = data.holdout(
            data.load("mnist5k", "train", data_dir=args.data_dir), every=args.holdout_every
        )
    else:
        split = data.load(
            dataset,
            args.split,
            data_dir=args.data_dir,
            source_dir=args.data_source_dir,
            download=args.download,
        )
    stop = len(split.labels) if args.max < 0 else min(args.max, len(split.labels))
    indices = np.arange(0, stop, args.skip)
    digest = checkpoint.digest(variables)
    outdir = pathlib.Path(args.outdir)
    runs.certify_dataset(
        jax.random.key(args.seed),
        models.make_logits_fn(model),
        variables,
        split.images,
        split.labels,
        indices,
        outputs={m: outdir / f"{m}.tsv" for m in args.methods},
        sigma=sigma,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        num_classes=meta["num_classes"],
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        alpha_split=args.alpha_split,
        settings={
            "dataset": dataset,
            "split": args.split,
            "skip": args.skip,
            "max": args.max,
            "seed": args.seed,
            "params_sha256": digest,
        },
        sidecar={
            "checkpoint": str(ckpt_dir.resolve()),
            "checkpoint_step": step,
            "chunk_size": args.chunk_size or votes.default_chunk_size(),
            "batch_size": args.batch_size,
            **records.environment(),
        },
    )
    print(f"wrote {', '.join(str(outdir / f'{m}.tsv') for m in args.methods)}")


if __name__ == "__main__":
    main()
