"""Certified accuracy and ACR of certification runs: a markdown table, optionally a plot and JSON.

    python experiments/analyze.py RUN.tsv [RUN2.tsv ...] [--labels a b] \
        [--radii 0 0.25 0.5 0.75 1.0] [--markdown out.md] [--plot out.png] [--json out.json]
    python experiments/analyze.py --seeds RUNS_DIR [--radii ...] [--markdown ...] [--json ...]
    python experiments/analyze.py ... --paired A B [--paired C D ...]

--paired A B adds a table of run A minus run B on the same images (rsjax.analysis.paired_difference):
the certified-accuracy and ACR differences with the paired SE; A and B are labels, or with --seeds
NAME/METHOD, paired within each seed that has both.

--seeds reads RUNS_DIR/seed*/NAME/certify/METHOD.tsv and gives one row per NAME/METHOD: the mean over
seeds and half the range (rsjax.analysis.seeds_table); the plot shows the first seed's curves.

Reads TSVs written by rsjax or by Cohen et al.'s PyTorch code; prints the table to stdout.
"""

import argparse
import json
import pathlib

from rsjax import analysis, plots


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", nargs="*", help="certification TSV files")
    parser.add_argument("--seeds", help="a folder of seed*/NAME/certify/*.tsv runs (see above)")
    parser.add_argument("--labels", nargs="+", help="one name per file (default: file stems)")
    parser.add_argument(
        "--radii", nargs="+", type=float, default=list(analysis.DEFAULT_RADII), help="l2 radii"
    )
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--plot", help="write a PNG of certified accuracy against radius here")
    parser.add_argument("--title", help="plot title")
    parser.add_argument("--max-radius", type=float, help="x range of the plot")
    parser.add_argument("--json", help="write the summaries here")
    parser.add_argument(
        "--paired",
        nargs=2,
        action="append",
        default=[],
        metavar=("A", "B"),
        help="also tabulate run A minus run B, image by image (repeatable)",
    )
    args = parser.parse_args(argv)

    if args.seeds:
        if args.tsv or args.labels:
            parser.error("--seeds takes no TSV files or labels")
        return seeds_report(args, parser)
    if not args.tsv:
        parser.error("give certification TSV files, or --seeds RUNS_DIR")
    labels = args.labels or analysis.default_labels(args.tsv)
    if len(labels) != len(args.tsv):
        parser.error(f"got {len(labels)} labels for {len(args.tsv)} files")
    if len(set(labels)) != len(labels):
        parser.error(f"labels must be distinct: {labels}")
    runs = {label: analysis.read_tsv(path) for label, path in zip(labels, args.tsv, strict=True)}

    table = analysis.markdown_table(runs, args.radii)
    pairs = {}
    for a, b in args.paired:
        for label in (a, b):
            if label not in runs:
                parser.error(f"--paired: no run labelled {label!r} (labels: {', '.join(runs)})")
        pairs[f"{a} - {b}"] = analysis.paired_difference(runs[a], runs[b], args.radii)
    if pairs:
        table += "\n" + analysis.paired_table(pairs, args.radii)
    print(table, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.plot:
        plots.plot_certified_accuracy(runs, args.plot, title=args.title, max_radius=args.max_radius)
    if args.json:
        summaries = {
            label: {"path": path, **analysis.summarize(runs[label], args.radii)}
            for label, path in zip(labels, args.tsv, strict=True)
        }
        with open(args.json, "w") as f:
            json.dump(summaries, f, indent=2)
            f.write("\n")


def seeds_report(args, parser):
    root = pathlib.Path(args.seeds)
    seed_dirs = sorted(root.glob("seed*"), key=lambda p: p.name)
    paths = {}  # "NAME/METHOD" -> {seed folder: tsv path}
    for seed_dir in seed_dirs:
        for tsv in sorted(seed_dir.glob("*/certify/*.tsv")):
            label = f"{tsv.parent.parent.name}/{tsv.stem}"
            paths.setdefault(label, {})[seed_dir.name] = tsv
    if not paths:
        parser.error(f"no {root}/seed*/NAME/certify/*.tsv files")
    read = {  # "NAME/METHOD" -> {seed folder: results}, each file read once
        label: {seed: analysis.read_tsv(p) for seed, p in by_seed.items()}
        for label, by_seed in paths.items()
    }
    runs = {label: list(by_seed.values()) for label, by_seed in read.items()}
    table = analysis.seeds_table(runs, args.radii)
    pairs = {}
    for a, b in args.paired:
        for label in (a, b):
            if label not in paths:
                parser.error(f"--paired: no run {label!r} (runs: {', '.join(paths)})")
        shared = [seed for seed in paths[a] if seed in paths[b]]
        if not shared:
            parser.error(f"--paired: {a} and {b} have no seed in common")
        for seed in shared:
            pairs[f"{a} - {b} ({seed})"] = analysis.paired_difference(
                read[a][seed], read[b][seed], args.radii
            )
    if pairs:
        table += "\n" + analysis.paired_table(pairs, args.radii)
    print(table, end="")
    if args.markdown:
        pathlib.Path(args.markdown).write_text(table)
    if args.plot:
        first = seed_dirs[0].name
        shown = {label: by_seed[first] for label, by_seed in read.items() if first in by_seed}
        title = f"{args.title or ''} ({first})".strip()
        plots.plot_certified_accuracy(shown, args.plot, title=title, max_radius=args.max_radius)
    if args.json:
        summaries = {
            label: {
                seed: {"path": str(path), **analysis.summarize(read[label][seed], args.radii)}
                for seed, path in by_seed.items()
            }
            for label, by_seed in paths.items()
        }
        with open(args.json, "w") as f:
            json.dump(summaries, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
