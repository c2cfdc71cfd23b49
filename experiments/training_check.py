"""Does every shipped classifier config train? Each config x method x sigma for E epochs of its own
schedule (train.py --stop-after-epochs E), then one table of the held-out votes after each run.

  python experiments/training_check.py [--runs runs/training_check] [--epochs 1] [--only fashion]
  python experiments/training_check.py --report-only --export experiments/results/training_check

--export copies each run's config.json and metrics.jsonl and the wall times to a folder that is
committed (runs/ is not) and writes its table.md; `--report-only --runs` that folder redraws the
table, and copying it back to runs/training_check lets a later session add the specs not yet run.

A run stops at the end of epoch E with that epoch's held-out evaluation (smoothed accuracy of the
majority vote over noisy copies, the most common class's share of the votes, and rsjax.train's
collapse verdict), so the learning-rate warm-up (one epoch) is behind it. Runs resume: rerun to
continue, or with a larger --epochs to go further. Cheap specs run first, and MACER (once collapsed)
right after Gaussian; the configs whose data is not on this machine (full MNIST, CIFAR-10) are listed
as not run, with the reason.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = REPO / "experiments" / "configs"
METHODS = ("gaussian", "macer", "smoothadv", "adre", "adre_adv")  # MACER (was collapsed) early
SIGMAS = (0.25, 0.5, 1.0)
MNIST_TEST = ["--data-source-dir", str(REPO.parent / "shared" / "data" / "mnist-test")]


def specs():
    """(name, config argument, extra train.py flags, reason not run or None), cheapest first."""
    out = [("mnist5k_lenet_gaussian", "mnist5k_lenet_gaussian.py", [], None)]
    out += [(f"mnist5k_lenet_{s}", f"mnist5k_lenet.py:sigma={s}", MNIST_TEST, None) for s in SIGMAS]
    out += [
        (f"fashion_{m}_{s}", f"fashion_mnist_lenet.py:method={m},sigma={s}", [], None)
        for m in METHODS
        for s in SIGMAS
    ]
    out += [
        (
            f"mnist_{m}_{s}",
            f"mnist_lenet.py:method={m},sigma={s}",
            [],
            "needs the MNIST training set (--download)",
        )
        for m in METHODS
        for s in SIGMAS
    ]
    out += [
        (
            f"cifar10_{m}_{s}",
            f"cifar10_resnet110.py:method={m},sigma={s}",
            [],
            "needs CIFAR-10 (--download) and an accelerator",
        )
        for m in METHODS
        for s in SIGMAS
    ]
    return out


def run(name, config, flags, runs, epochs):
    workdir = runs / name
    log = runs / f"{name}.log"
    command = [
        sys.executable,
        str(REPO / "experiments" / "train.py"),
        "--config",
        str(CONFIGS / config),
        "--workdir",
        str(workdir),
        "--stop-after-epochs",
        str(epochs),
        *flags,
    ]
    print(f"== {name}: {config}, {epochs} epoch(s)", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    wall = time.perf_counter() - t0
    with open(runs / "wall_times.jsonl", "a") as f:
        f.write(json.dumps({"name": name, "epochs": epochs, "wall_s": wall, "rc": done.returncode}))
        f.write("\n")
    if done.returncode:
        print(f"   {name} exited {done.returncode}; see {log}", flush=True)


def summary(workdir: pathlib.Path):
    """The run's settings, last training window and last held-out evaluation, or None."""
    if not (workdir / "metrics.jsonl").exists():
        return None
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl") if line.strip()]
    config = json.load(open(workdir / "config.json"))["config"]
    windows = [r for r in records if "loss" in r]
    evals = [r for r in records if "smoothed_accuracy" in r]
    return config, (windows[-1] if windows else None), (evals[-1] if evals else None)


def walls(runs: pathlib.Path):
    """Total wall seconds per run name over every invocation."""
    total = {}
    if (runs / "wall_times.jsonl").exists():
        for line in open(runs / "wall_times.jsonl"):
            row = json.loads(line)
            total[row["name"]] = total.get(row["name"], 0.0) + row["wall_s"]
    return total


def table(runs: pathlib.Path) -> str:
    lines = [
        "| run | config | k | steps (epochs) | train noisy-copy acc. (last log window) "
        "| held-out smoothed acc. | top class share | verdict | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    wall = walls(runs)
    for name, config, _, reason in specs():
        got = summary(runs / name)
        if got is None:
            status = f"not run here: {reason}" if reason else "not run yet"
            lines.append(f"| {name} | `{config}` | | | | | | {status} | |")
            continue
        cfg, window, evaluation = got
        steps = window["step"] if window else 0
        acc = f"{window['accuracy']:.3f}" if window and "accuracy" in window else "-"
        if evaluation is None:
            lines.append(
                f"| {name} | `{config}` | {cfg['k']} | {steps} | {acc} | - | - | no epoch done | "
                f"{wall.get(name, 0):.0f} |"
            )
            continue
        verdict = (
            f"COLLAPSED: {evaluation['collapse_reason']}"
            if evaluation.get("collapsed")
            else "trains"
        )
        lines.append(
            f"| {name} | `{config}` | {cfg['k']} | {evaluation['step']} ({evaluation['epoch']}) | "
            f"{acc} | {evaluation['smoothed_accuracy']:.3f} | "
            f"{evaluation.get('top_class_fraction', float('nan')):.3f} | {verdict} | "
            f"{wall.get(name, 0):.0f} |"
        )
    return "\n".join(lines) + "\n"


def export(runs: pathlib.Path, dest: pathlib.Path) -> list[str]:
    """Copy every run's config.json and metrics.jsonl (not its checkpoints) and wall_times.jsonl
    from `runs` to `dest`, then write dest/table.md; returns the names copied."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name, *_ in specs():
        if summary(runs / name) is None:
            continue
        (dest / name).mkdir(exist_ok=True)
        for file in ("config.json", "metrics.jsonl"):
            shutil.copyfile(runs / name / file, dest / name / file)
        copied.append(name)
    if (runs / "wall_times.jsonl").exists():
        shutil.copyfile(runs / "wall_times.jsonl", dest / "wall_times.jsonl")
    (dest / "table.md").write_text(table(dest))
    return copied


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="runs/training_check", help="one workdir per spec here")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each config's schedule")
    parser.add_argument("--only", default="", help="run only the specs whose name contains this")
    parser.add_argument("--report-only", action="store_true", help="write the table, train nothing")
    parser.add_argument("--table", default=None, help="also write the markdown table here")
    parser.add_argument(
        "--export", default=None, help="copy configs, metrics and wall times here, with table.md"
    )
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    runs = pathlib.Path(args.runs)
    if args.export and pathlib.Path(args.export).resolve() == runs.resolve():
        parser.error("--export must name a folder other than --runs")
    runs.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        for name, config, flags, reason in specs():
            if reason is None and args.only in name:
                run(name, config, flags, runs, args.epochs)
    text = table(runs)
    print(text)
    if args.table:
        pathlib.Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.table).write_text(text)
    if args.export:
        names = export(runs, pathlib.Path(args.export))
        print(f"exported {len(names)} runs to {args.export}")


if __name__ == "__main__":
    main()
