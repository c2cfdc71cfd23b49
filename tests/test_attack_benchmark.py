"""Smoke run of benchmarks/attack_loop.py (--quick: LeNet, 4 images, T in {1, 2}); no speed asserted."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_attack_loop_benchmark_quick(tmp_path):
    out_file = tmp_path / "r.jsonl"
    out = subprocess.run(
        [sys.executable, "benchmarks/attack_loop.py", "--quick", "--out", str(out_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith("| lenet |")]
    assert len(table) == 2, out.stdout
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["num_steps"] for r in rows] == [1, 2]
    for r in rows:
        assert r["quick"] is True and r["batch"] == 4 and r["num_noise"] == 2
        assert r["loop_s"] > 0 and r["unrolled_s"] > 0
        assert r["speedup"] == pytest.approx(r["loop_s"] / r["unrolled_s"])
        # The two forms compute the same attack: only float rounding may differ.
        assert r["max_abs_difference"] < 1e-4
