"""Smoke runs of the scripts that the other test files do not already run end to end."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args, timeout=300):
    out = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_quickstart_smoke(tmp_path):
    out = _run("experiments/quickstart.py", "--smoke", "--outdir", str(tmp_path))
    assert "| CERTIFY |" in out.stdout and "| T-CERTIFY |" in out.stdout
    for name in ("cohen.tsv", "tcertify.tsv", "report.md", "run.json", "certified_accuracy.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["results"]["CERTIFY"]["n"] == 10
    assert run["versions"]["jax"] and run["device_kind"]
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
