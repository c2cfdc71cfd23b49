"""The table of experiments/sequential_evidence.sh: fixed-n against sequential CERTIFY per model.

    python experiments/sequential_report.py RUNS_DIR [--out report.md] [--json summary.json]

Reads RUNS_DIR/NAME/fixed/cohen.tsv and RUNS_DIR/NAME/sequential/sequential.tsv for every NAME that
has both, and the wall times of RUNS_DIR/wall_times.log (whole commands, start-up and compiles
included) when present.
"""

import argparse
import json
import pathlib
import re

from rsjax import analysis

RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs")
    p.add_argument("--out")
    p.add_argument("--json")
    args = p.parse_args(argv)
    runs = pathlib.Path(args.runs)
    walls = {}
    log = runs / "wall_times.log"
    if log.exists():
        for line in log.read_text().splitlines():
            m = re.match(r"(\S+) (fixed|sequential) wall ([\d.]+) s", line)
            if m:
                walls[(m[1], m[2])] = float(m[3])
    rows, summary = [], {}
    for fixed_tsv in sorted(runs.glob("*/fixed/cohen.tsv")):
        name = fixed_tsv.parent.parent.name
        seq_tsv = runs / name / "sequential" / "sequential.tsv"
        if not seq_tsv.exists():
            continue
        settings = json.loads((fixed_tsv.parent / "cohen.tsv.json").read_text())["settings"]
        cmp = analysis.compare_sequential(
            analysis.read_tsv(fixed_tsv),
            analysis.read_tsv(seq_tsv),
            RADII,
            fixed_samples=settings["n0"] + settings["n"],
        )
        cmp["wall_s"] = {k: walls.get((name, k)) for k in ("fixed", "sequential")}
        summary[name] = cmp
        acc = cmp["certified_accuracy"]
        curve = " / ".join(f"{acc['fixed'][r]:.2f}:{acc['sequential'][r]:.2f}" for r in RADII)
        wall = cmp["wall_s"]
        wall_ratio = f"{wall['fixed'] / wall['sequential']:.1f}x" if all(wall.values()) else "-"
        rows.append(
            f"| {name} | {cmp['n']} | {curve} | {100 * cmp['worst_gap']:+.0f} | "
            f"{cmp['mean_samples']:,.0f} / {cmp['median_samples']:,.0f} | "
            f"{cmp['sample_ratio']:.1f}x | {cmp['time_ratio']:.1f}x | "
            f"{wall['fixed'] or 0:,.0f} / {wall['sequential'] or 0:,.0f} | {wall_ratio} |"
        )
    head = (
        "| model | images | certified accuracy fixed:sequential at r = "
        + ", ".join(f"{r:g}" for r in RADII)
        + " | worst gap (points) | sequential samples mean / median | sample saving "
        "| device-time saving | wall s fixed / sequential | wall saving |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|---:|\n"
    )
    table = head + "\n".join(rows) + "\n"
    print(table, end="")
    if args.out:
        pathlib.Path(args.out).write_text(table)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
