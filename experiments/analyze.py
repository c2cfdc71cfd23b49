"""Certified accuracy and ACR of certification runs: a markdown table, optionally a plot and JSON.

    python experiments/analyze.py RUN.tsv [RUN2.tsv ...] [--labels a b] \
        [--radii 0 0.25 0.5 0.75 1.0] [--markdown out.md] [--plot out.png] [--json out.json]

Reads TSVs written by rsjax or by Cohen et al.'s PyTorch code; prints the table to stdout.
"""

import argparse
import json

from rsjax import analysis


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tsv", nargs="+", help="certification TSV files")
    parser.add_argument("--labels", nargs="+", help="one name per file (default: file stems)")
    parser.add_argument(
        "--radii", nargs="+", type=float, default=list(analysis.DEFAULT_RADII), help="l2 radii"
    )
    parser.add_argument("--markdown", help="write the markdown table here")
    parser.add_argument("--plot", help="write a PNG of certified accuracy against radius here")
    parser.add_argument("--title", help="plot title")
    parser.add_argument("--max-radius", type=float, help="x range of the plot")
    parser.add_argument("--json", help="write the summaries here")
    args = parser.parse_args(argv)

    labels = args.labels or analysis.default_labels(args.tsv)
    if len(labels) != len(args.tsv):
        parser.error(f"got {len(labels)} labels for {len(args.tsv)} files")
    if len(set(labels)) != len(labels):
        parser.error(f"labels must be distinct: {labels}")
    runs = {label: analysis.read_tsv(path) for label, path in zip(labels, args.tsv, strict=True)}

    table = analysis.markdown_table(runs, args.radii)
    print(table, end="")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.plot:
        analysis.plot_certified_accuracy(
            runs, args.plot, title=args.title, max_radius=args.max_radius
        )
    if args.json:
        summaries = {
            label: {"path": path, **analysis.summarize(runs[label], args.radii)}
            for label, path in zip(labels, args.tsv, strict=True)
        }
        with open(args.json, "w") as f:
            json.dump(summaries, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
