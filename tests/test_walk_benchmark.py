"""Smoke run of benchmarks/walk_loop.py (--quick: 2 inputs, T in {1, 2}); no speed asserted."""

import pytest


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_walk_loop_benchmark_quick(run_quick):
    stdout, rows = run_quick("benchmarks/walk_loop.py", timeout=240)
    assert len([line for line in stdout.splitlines() if line.startswith("| energy_")]) == 4, stdout
    assert [(r["model"], r["num_steps"]) for r in rows] == [
        ("energy_mnist", 1),
        ("energy_mnist", 2),
        ("energy_mnist_mlp", 1),
        ("energy_mnist_mlp", 2),
    ]
    for r in rows:
        assert r["quick"] is True and r["batch"] == 2
        assert r["scan_s"] > 0 and r["unrolled_s"] > 0
        assert r["speedup"] == pytest.approx(r["scan_s"] / r["unrolled_s"])
        # The two forms take the same steps: only float rounding may differ.
        assert r["max_abs_difference"] < 1e-4
