"""Smoke run of benchmarks/eb_throughput.py (--quick: 2 examples x 64 samples, batch 4, one round);
no speed asserted."""

import os
from importlib import util

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_eb_throughput_benchmark_quick(run_quick):
    stdout, rows = run_quick("benchmarks/eb_throughput.py", timeout=300)
    table = [line for line in stdout.splitlines() if line.startswith("| LeNet")]
    assert len(table) == 5, stdout  # plain and three EB certify rows, the LeNet train row
    certify = [r for r in rows if r["part"] == "certify"]
    steps = [r for r in rows if r["part"] == "train"]
    assert [r["score_model"] for r in certify] == [
        None,
        "energy_mnist_mlp",
        "energy_mnist",
        "score_mnist",
    ]
    assert [r["model"] for r in steps] == [
        "lenet",
        "energy_mnist_mlp",
        "energy_mnist",
        "score_mnist",
    ]
    for r in rows:
        assert r["benchmark"] == "eb_throughput" and r["quick"] is True
        assert r["versions"]["jax"] and r["device_kind"] and "--quick" in r["command"]
        assert r["ratio"] > 0
    for r in certify:
        assert (r["examples"], r["n"], r["sigma"]) == (2, 64, 0.5)
        assert r["samples_per_s"] > 0 and r["call_s"] > 0
    assert certify[0]["ratio"] == 1.0
    for r in steps:
        assert r["batch"] == 4 and r["step_s"] > 0 and r["images_per_s"] > 0
    assert steps[0]["ratio"] == 1.0 and steps[0]["loss"] == "gaussian"
    assert {r["loss"] for r in steps[1:]} == {"denoising"}


def test_eb_throughput_quick_writes_no_result_unless_asked():
    spec = util.spec_from_file_location("eb_throughput", f"{REPO}/benchmarks/eb_throughput.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.parse_args(["--quick"]).out == ""
    assert module.parse_args(["--quick", "--out", "x.jsonl"]).out == "x.jsonl"
    assert module.parse_args([]).out == "benchmarks/results/eb_throughput.jsonl"
