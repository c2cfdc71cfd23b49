"""How far certified radii reach beyond a linear classifier's own margin, image by image.

  python experiments/linear_margin.py --workdir runs/eb_mnist/linear \
      --tsv runs/eb_mnist/sigma_0.5/eb_linear/cohen.tsv [--tsv ...] [--labels ...] \
      --dataset mnist --data-source-dir ../shared/data/mnist-test [--json margins.json]

A linear classifier f(x) = argmax_j (A x + c)_j (rsjax.models.LinearClassifier: its normalisation is
affine too) is robust at x exactly within its margin, the l2 distance to its nearest decision
boundary, min_{j != f(x)} (z_f - z_j) / ||A_f - A_j||. That is f's own exact certificate, no
smoothing. For each TSV (rows of rsjax certification: idx, label, predict, radius, correct) this
prints (rsjax.analysis.affine_margins, compare_to_margins), over the TSV's images: f's clean accuracy and mean margin (radius 0 where f is wrong), the
TSV's certified accuracy and mean certified radius (its ACR), and among the images that both classify
correctly, the share whose certified radius exceeds f's margin and the median of the two. REFERENCE
section 4: the empirical Bayes smoothed linear classifier should reach beyond the margin of f.
"""

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import analysis, data, train


def linear_logits_and_jacobian(model, variables, images) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, K) of an affine Flax classifier on images (N, H, W, C), and its Jacobian (K, d)."""
    shape = images.shape[1:]
    one = lambda v: model.apply(variables, v.reshape((1, *shape)))[0]  # noqa: E731
    jacobian = jax.jacfwd(one)(jnp.zeros(int(np.prod(shape)), jnp.float32))
    logits = jax.jit(lambda x: model.apply(variables, x))(jnp.asarray(images))
    return np.asarray(logits), np.asarray(jacobian)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="the linear classifier's run directory")
    p.add_argument("--tsv", nargs="+", required=True, help="certification TSVs to compare")
    p.add_argument("--labels", nargs="+", default=None, help="names of the TSVs (default: paths)")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--split", default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--data-source-dir", default=None)
    p.add_argument("--json", default=None, help="write the summaries here")
    args = p.parse_args(argv)
    labels = args.labels or args.tsv
    if len(labels) != len(args.tsv):
        p.error(f"{len(args.tsv)} TSVs but {len(labels)} labels")
    model, variables, meta, _ = train.load_for_eval(pathlib.Path(args.workdir) / "checkpoints")
    if meta["model"] != "linear":
        raise SystemExit(f"{args.workdir} holds a {meta['model']!r} model; margins need 'linear'")
    dataset = data.load(
        args.dataset, args.split, data_dir=args.data_dir, source_dir=args.data_source_dir
    )
    pred, margin = analysis.affine_margins(
        *linear_logits_and_jacobian(model, variables, dataset.images)
    )
    summaries = {}
    print(
        "| run | images | linear acc | linear mean margin | cert acc | ACR | beyond margin"
        " | median margin | median radius |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, path in zip(labels, args.tsv, strict=True):
        results = analysis.read_tsv(path)
        s = summaries[label] = analysis.compare_to_margins(pred, margin, dataset.labels, results)
        share = "-" if s["beyond_margin"] is None else f"{s['beyond_margin']:.3f}"
        med_m = "-" if s["median_margin_both"] is None else f"{s['median_margin_both']:.3f}"
        med_r = "-" if s["median_radius_both"] is None else f"{s['median_radius_both']:.3f}"
        print(
            f"| {label} | {s['images']} | {s['linear_accuracy']:.3f} | {s['linear_mean_margin']:.3f}"
            f" | {s['certified_accuracy']:.3f} | {s['acr']:.3f} | {share} | {med_m} | {med_r} |"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summaries, indent=2) + "\n")


if __name__ == "__main__":
    main()
