"""Certify a dataset split with a trained checkpoint; writes the standard TSV per method + JSON sidecar.

  python experiments/certify.py --workdir runs/mnist_lenet --dataset mnist --split test \
      --data-source-dir ../shared/data/mnist-test --skip 20 --n 10000 --outdir runs/mnist_lenet/cert

--skip K certifies every K-th example (idx % K == 0) and --max M stops before index M (-1: all), as in
Cohen et al.'s certify.py. Killed and rerun with the same arguments, it continues where it stopped,
after checking every row already written; rerun with a larger --max (all else the same), it extends the
run. A second run on the same --outdir stops at once (rsjax.locks.OutputLockedError).

A published PyTorch model (Cohen et al.'s checkpoint format) in one command, same indices as his
certify.py --skip 100:

  python experiments/certify.py --torch-checkpoint models/imagenet/resnet50/noise_0.25/checkpoint.pth.tar \
      --dataset imagenet --data-source-dir $IMAGENET_DIR --skip 100 --outdir runs/cohen_in_025

Empirical Bayes classifiers (rsjax.empirical_bayes): `--denoiser DIR` certifies the classifier composed
with that denoiser's xhat, at the denoiser's sigma; an XHAT run's --workdir holds both already;
`--walk-jump K` adds K Langevin steps before the jump (walk-jump classification).
"""

import argparse
import pathlib

import cli
import jax
import numpy as np

from rsjax import checkpoint, data, empirical_bayes, records, runs, torch_import, votes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="training run directory (holds checkpoints/)")
    source.add_argument(
        "--torch-checkpoint",
        metavar="CKPT",
        help="a PyTorch checkpoint (Cohen et al.'s format, or an rsjax architecture's state_dict "
        "with --arch): certified directly, needs the torch extra (experiments/import_torch.py "
        "writes a copy that certifies without torch)",
    )
    p.add_argument(
        "--arch", default=None, help="--torch-checkpoint: its architecture, if the file names none"
    )
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
        "--methods",
        nargs="+",
        default=None,
        choices=["cohen", "tcertify"],
        help="default: cohen and tcertify (fixed n), cohen (--sequential)",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="sequential CERTIFY (rsjax.sequential): stop each image once --radii (or --radius-tol) "
        "is decided, at most --n-max draws; writes sequential.tsv with a num_samples column",
    )
    p.add_argument("--n-max", type=int, default=100_000, help="--sequential: most estimation draws")
    p.add_argument(
        "--radii",
        type=float,
        nargs="+",
        default=None,
        help="--sequential goal: the radii to decide (default 0 0.25 ... 2.0)",
    )
    p.add_argument(
        "--radius-tol", type=float, default=None, help="--sequential goal instead of --radii"
    )
    p.add_argument("--bound", default="union", choices=["union", "mixture"])
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
    p.add_argument(
        "--denoiser",
        default=None,
        help="denoiser run directory: certify the classifier on its xhat (empirical Bayes), at its sigma",
    )
    p.add_argument(
        "--walk-jump",
        type=int,
        default=0,
        metavar="K",
        help="walk-jump classification: K Langevin steps from x + sigma eps, jump, classify "
        "(needs an empirical Bayes classifier: --denoiser or an XHAT run)",
    )
    p.add_argument("--walk-delta", type=float, default=None, help="walk step (default 0.5 sigma)")
    p.add_argument("--walk-gamma", type=float, default=0.5, help="walk friction")
    p.add_argument("--walk-u", type=float, default=1.0, help="walk inverse mass")
    p.add_argument("--outdir", required=True)
    cli.add_data_flags(p)
    cli.add_debug_flag(p)
    args = p.parse_args(argv)
    if args.skip < 1:
        p.error("--skip must be >= 1")
    if args.max == 0:
        p.error("--max 0 leaves no image to certify (-1: no limit)")
    if args.sequential:
        if args.methods not in (None, ["cohen"]):
            p.error("--sequential implements CERTIFY only (--methods cohen)")
        if args.radii is None and args.radius_tol is None:
            args.radii = [0.25 * i for i in range(9)]
    elif args.radii is not None or args.radius_tol is not None:
        p.error("--radii and --radius-tol belong to --sequential")
    args.methods = args.methods or ["cohen", "tcertify"]

    if args.torch_checkpoint:
        if args.denoiser or args.walk_jump or args.step is not None:
            p.error("--denoiser, --walk-jump and --step need an rsjax --workdir")
        imported = torch_import.load_checkpoint(
            args.torch_checkpoint, arch=args.arch, dataset=args.dataset
        )
        logits_fn, variables, step = imported.logits_fn, imported.variables, None
        meta = torch_import.to_meta(
            imported, sigma=torch_import.sigma_from_path(args.torch_checkpoint)
        )
        ckpt_dir = pathlib.Path(args.torch_checkpoint)
    elif args.denoiser:
        ckpt_dir = pathlib.Path(args.workdir) / "checkpoints"
        logits_fn, variables, meta = empirical_bayes.compose(
            args.workdir, args.denoiser, classifier_step=args.step
        )
        step = meta["classifier_step"]
        if args.sigma is not None and args.sigma != meta["sigma"]:
            p.error(f"--sigma {args.sigma} differs from the denoiser's sigma {meta['sigma']}")
    else:
        ckpt_dir = pathlib.Path(args.workdir) / "checkpoints"
        logits_fn, variables, meta, step = empirical_bayes.load_for_eval(ckpt_dir, args.step)
    dataset = args.dataset or meta["dataset"]
    if args.sigma is None and "sigma" not in meta:
        p.error(
            "the checkpoint records no sigma (an imported model whose path names no noise_S): "
            "pass --sigma"
        )
    sigma = meta["sigma"] if args.sigma is None else args.sigma
    walk = {}
    if args.walk_jump:
        if meta.get("kind") != "eb_classifier":
            p.error("--walk-jump needs a denoiser: pass --denoiser or an XHAT run's --workdir")
        walk = dict(
            num_steps=args.walk_jump,
            delta=args.walk_delta or 0.5 * sigma,
            gamma=args.walk_gamma,
            u=args.walk_u,
        )
        logits_fn = empirical_bayes.walk_jump_logits_fn_for(
            meta["model"],
            meta["dataset"],
            meta["num_classes"],
            meta["score_model"],
            sigma,
            walk["num_steps"],
            walk["delta"],
            walk["gamma"],
            walk["u"],
        )
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
    common = dict(
        sigma=sigma,
        n0=args.n0,
        alpha=args.alpha,
        num_classes=meta["num_classes"],
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
        settings=settings(args, dataset, digest, meta, walk),
        index_settings=("max",),  # a larger --max extends the run (its indices grow)
        sidecar={
            "checkpoint": str(ckpt_dir.resolve()),
            "checkpoint_step": step,
            **({"imported_from": meta["imported_from"]} if "imported_from" in meta else {}),
            "chunk_size": args.chunk_size or votes.default_chunk_size(),
            "batch_size": args.batch_size,
            **records.environment(),
        },
    )
    data_args = (
        jax.random.key(args.seed),
        logits_fn,
        variables,
        split.images,
        split.labels,
        indices,
    )
    if args.sequential:
        path = runs.certify_dataset_sequential(
            *data_args,
            output=outdir / "sequential.tsv",
            n_max=args.n_max,
            radii=args.radii,
            radius_tol=args.radius_tol,
            bound=args.bound,
            **common,
        )
        print(f"wrote {path}")
        return
    runs.certify_dataset(
        *data_args,
        outputs={m: outdir / f"{m}.tsv" for m in args.methods},
        n=args.n,
        alpha_split=args.alpha_split,
        **common,
    )
    print(f"wrote {', '.join(str(outdir / f'{m}.tsv') for m in args.methods)}")


def settings(args, dataset, digest, meta, walk) -> dict:
    """What must match for a resume (but --max, which may grow with the indices it selects)."""
    return {
        "dataset": dataset,
        "split": args.split,
        "skip": args.skip,
        "max": args.max,
        "seed": args.seed,
        "params_sha256": digest,
        # only when used, so runs certified before these options existed still resume
        **({"denoiser": meta["denoiser"]} if meta.get("denoiser") else {}),
        **({"walk_jump": walk} if walk else {}),
    }


if __name__ == "__main__":
    cli.run(main)
