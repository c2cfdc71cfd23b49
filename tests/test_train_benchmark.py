"""Smoke run of benchmarks/train_throughput.py (--quick: LeNet, k in {1, 2}, 2 steps); no speed asserted."""

import pytest


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_train_throughput_benchmark_quick(run_quick):
    stdout, rows = run_quick("benchmarks/train_throughput.py", timeout=120)
    table = [line for line in stdout.splitlines() if line.startswith("| lenet |")]
    assert len(table) == 4, stdout  # gaussian and adre at k = 1, 2
    assert [(r["loss"], r["k"]) for r in rows] == [
        ("gaussian", 1),
        ("gaussian", 2),
        ("adre", 1),
        ("adre", 2),
    ]
    for r in rows:
        assert r["quick"] is True and r["model"] == "lenet" and r["batch"] == 8
        assert r["step_s"] > 0 and r["versions"]["jax"] and r["device_kind"]
        assert r["noisy_inputs_per_s"] == pytest.approx(r["images_per_s"] * r["k"])
        assert r["scaling"] > 0
    assert {r["lam"] for r in rows if r["loss"] == "adre"} == {0.5}
    assert all(r["scaling"] == 1.0 for r in rows if r["k"] == 1)
