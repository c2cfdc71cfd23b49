"""Smoke run of benchmarks/attack_loop.py (--quick: LeNet, 4 images, T in {1, 2}); no speed asserted."""

import pytest


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_attack_loop_benchmark_quick(run_quick):
    stdout, rows = run_quick("benchmarks/attack_loop.py", timeout=120)
    table = [line for line in stdout.splitlines() if line.startswith("| lenet |")]
    assert len(table) == 2, stdout
    assert [r["num_steps"] for r in rows] == [1, 2]
    for r in rows:
        assert r["quick"] is True and r["batch"] == 4 and r["num_noise"] == 2
        assert r["loop_s"] > 0 and r["unrolled_s"] > 0
        assert r["speedup"] == pytest.approx(r["loop_s"] / r["unrolled_s"])
        # The two forms compute the same attack: only float rounding may differ.
        assert r["max_abs_difference"] < 1e-4
