"""Smoke runs of the scripts that the other test files do not already run end to end."""

import argparse
import json
import os
import subprocess
import sys

import jax
import pytest

from rsjax import models, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_quickstart_smoke(tmp_path, check_certification_tsv):
    """The main job end to end (the one MNIST 5k LeNet training of the default selection), then what
    it wrote: every TSV row consistent, and the first rows equal to rsjax.certify with the script's
    certification key on the checkpoint it trained."""
    out = _run("experiments/quickstart.py", "--smoke", "--outdir", str(tmp_path))
    assert "| CERTIFY |" in out.stdout and "| T-CERTIFY |" in out.stdout
    for name in ("cohen.tsv", "tcertify.tsv", "report.md", "run.json", "certified_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["results"]["CERTIFY"]["n"] == 10
    assert run["versions"]["jax"] and run["device_kind"]

    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import cli
        import quickstart
    finally:
        sys.path.pop(0)
    config = cli.load_config(quickstart.CONFIG, smoke=True)
    no_flags = argparse.Namespace(data_dir=None, data_source_dir=None, download=False)
    _, test_set = cli.train_and_test(config, no_flags)
    model, variables, meta, _ = train.load_for_eval(tmp_path / "train" / "checkpoints")
    certify_key = jax.random.split(jax.random.key(config["seed"]))[1]  # as the script splits it
    logits_fn = models.make_logits_fn(model)
    for method in ("cohen", "tcertify"):
        rows = check_certification_tsv(
            tmp_path / f"{method}.tsv",
            key=certify_key,
            logits_fn=logits_fn,
            params=variables,
            images=test_set.images,
            labels=test_set.labels,
            sigma=config["sigma"],
            n0=config["n0"],
            n=config["n"],
            alpha=config["alpha"],
            num_classes=meta["num_classes"],
            chunk_size=config["chunk_size"],
            method=method,
        )
        assert [int(r[0]) for r in rows] == list(
            range(0, 10 * config["certify_every"], config["certify_every"])
        )
    # Rerun: training and certification are complete and are not redone.
    again = _run("experiments/quickstart.py", "--smoke", "--outdir", str(tmp_path))
    assert again.stdout.split("time:")[0] == out.stdout.split("time:")[0]


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_vote_throughput_benchmark_quick(tmp_path):
    out = _run(
        "benchmarks/vote_throughput.py",
        "--quick",
        "--models",
        "lenet",
        "--out",
        str(tmp_path / "r.jsonl"),
    )
    assert "| lenet |" in out.stdout and "GFLOP/s" in out.stdout
    peak, row = map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())
    assert peak["benchmark"] == "peak_matmul" and peak["flops_per_s"] > 0
    assert row["ratio"] > 0 and row["quick"] is True
    # LeNet (conv20-conv50-fc500) is about 2.3 MFLOP multiply-adds per 28x28 input: 4-5 MFLOP.
    assert 3e6 < row["flops_per_input"] < 6e6
    # The step holds at least its batch * chunk noisy float32 inputs at once.
    assert row["peak_memory_bytes"] >= row["batch"] * row["chunk"] * 28 * 28 * 4


def test_train_script_rejects_missing_config(tmp_path):
    out = subprocess.run(
        [sys.executable, "experiments/train.py", "--config", "nope.py", "--workdir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "config file not found" in out.stderr


def _fake_run(folder, config, records):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": config}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_training_check_table_reads_the_runs(tmp_path):
    """experiments/training_check.py's table: a run that trains, a collapsed one, one stopped before
    its first evaluation, one not started and the configs whose data is not here."""
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    try:
        import training_check
    finally:
        sys.path.pop(0)
    window = {"loss": 0.5, "accuracy": 0.81, "step": 468, "epoch": 0, "images_per_s": 1.0}
    healthy = {"step": 468, "epoch": 1, "smoothed_accuracy": 0.783, "top_class_fraction": 0.14}
    _fake_run(
        tmp_path / "fashion_gaussian_0.5", {"k": 1}, [window, {**healthy, "collapsed": False}]
    )
    dead = dict(healthy, smoothed_accuracy=0.1, top_class_fraction=1.0, collapsed=True)
    dead["collapse_reason"] = "100.0% of the held-out noisy-copy predictions are class 3 (> 90%)"
    _fake_run(tmp_path / "fashion_macer_0.5", {"k": 16}, [window, dead])
    _fake_run(tmp_path / "fashion_adre_0.5", {"k": 8}, [dict(window, step=50)])
    (tmp_path / "wall_times.jsonl").write_text(
        json.dumps({"name": "fashion_gaussian_0.5", "epochs": 1, "wall_s": 40.4, "rc": 0}) + "\n"
    )
    rows = {line.split(" | ")[0][2:]: line for line in training_check.table(tmp_path).splitlines()}
    assert "| 1 | 468 (1) | 0.810 | 0.783 | 0.140 | trains | 40 |" in rows["fashion_gaussian_0.5"]
    assert "COLLAPSED: 100.0% of the held-out" in rows["fashion_macer_0.5"]
    assert "| 8 | 50 | 0.810 | - | - | no epoch done |" in rows["fashion_adre_0.5"]
    assert "not run yet" in rows["fashion_gaussian_1.0"]
    assert (
        "needs CIFAR-10" in rows["cifar10_macer_0.5"]
        and "needs the MNIST" in rows["mnist_adre_1.0"]
    )
    (tmp_path / "fashion_macer_0.5" / "checkpoints").mkdir()
    copied = training_check.export(tmp_path, tmp_path / "exported")
    assert copied == ["fashion_gaussian_0.5", "fashion_macer_0.5", "fashion_adre_0.5"]
    assert not (tmp_path / "exported" / "fashion_macer_0.5" / "checkpoints").exists()
    assert (tmp_path / "exported" / "table.md").read_text() == training_check.table(tmp_path)


def test_train_script_rejects_zero_epochs(tmp_path):
    config = "experiments/configs/mnist5k_lenet_gaussian.py"
    out = subprocess.run(
        [sys.executable, "experiments/train.py", "--config", config, "--workdir", str(tmp_path)]
        + ["--stop-after-epochs", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--stop-after-epochs must be >= 1, got 0" in out.stderr
