"""Smoke run of benchmarks/gpu_suite.sh --quick (every section at tiny sizes on the CPU, through the
shell entry point), its budget guard, and its flags; no speed asserted."""

import json
import os
import re
import subprocess
import sys
from importlib import util

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["peak", "votes", "certify", "sequential", "train", "train", "eb", "eb"]


def load_suite():
    spec = util.spec_from_file_location("gpu_suite", f"{REPO}/benchmarks/gpu_suite.py")
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def suite_env():
    """This Python, the CPU, and one device (conftest's four would pad each example batch to 4)."""
    env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
    flags = env.get("XLA_FLAGS", "").split()
    env["XLA_FLAGS"] = " ".join(f for f in flags if "host_platform_device_count" not in f)
    return env


def run_suite(*args, timeout):
    out = subprocess.run(
        ["bash", "benchmarks/gpu_suite.sh", *args],
        cwd=REPO,
        env=suite_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def table_rows(stdout):
    lines = stdout.splitlines()
    header = lines.index("| " + " | ".join(load_suite().COLUMNS) + " |")
    rows = []
    for line in lines[header + 2 :]:
        if not line.startswith("| "):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow  # 40-45 s on 2 CPU cores; the budget guard below runs the same entry point in CI
def test_gpu_suite_quick(tmp_path):
    out_file = tmp_path / "r.jsonl"
    stdout = run_suite("--quick", "--out", str(out_file), timeout=300)
    lines = stdout.splitlines()
    assert lines[0].startswith("python: ")  # the shell's device information comes first
    devices = next(i for i, line in enumerate(lines) if line.startswith("devices: "))
    assert "Cpu" in lines[devices] and "device_kind: cpu" in lines[devices + 1]
    assert devices < next(i for i, line in enumerate(lines) if line.startswith("device: cpu"))

    table = table_rows(stdout)
    assert [row[0] for row in table] == SECTIONS, stdout
    assert all("skipped" not in row[-1] and "error" not in row[-1] for row in table), stdout
    assert re.match(r"time: \d+ s$", lines[-1])

    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["section"] for r in rows] == SECTIONS
    for r in rows:
        assert r["benchmark"] == "gpu_suite" and r["status"] == "ok" and r["quick"] is True
        assert r["device_kind"] == "cpu" and r["platform_name"] == "cpu" and r["device_count"] == 1
        assert r["jax_version"] == r["versions"]["jax"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["date"]) and r["time"].startswith(r["date"])
        assert "--quick" in r["command"]
        assert r["section"] == "peak" or r["units"]
    by = {}
    for r in rows:
        by.setdefault(r["section"], []).append(r)

    (v,) = by["votes"]
    assert (v["model"], v["examples"], v["n"], v["chunk"]) == ("lenet", 2, 128, 32)
    assert v["ratio"] == pytest.approx(v["votes_samples_per_s"] / v["raw_inputs_per_s"])
    assert v["flops_per_input"] == pytest.approx(4.63e6, rel=0.05)  # LeNet's forward pass
    assert v["raw_compile_s"] > 0 and v["votes_compile_s"] >= 0

    (c,) = by["certify"]
    assert (c["model"], c["images"], c["n0"], c["n"], c["alpha"]) == ("resnet20", 1, 50, 500, 0.001)
    assert c["steady_call_s"] is not None and not c["per_image_includes_compile"]
    assert c["per_image_s"] == pytest.approx(c["steady_call_s"])
    assert c["samples_per_s"] == pytest.approx(550 / c["steady_call_s"])
    assert 0 <= c["abstained"] <= 1 and len(c["predictions"]) == 1

    (s,) = by["sequential"]
    assert (s["model"], s["n_max"], s["radii"]) == ("resnet20", 500, [0.25 * i for i in range(9)])
    assert 50 < s["mean_draws"] <= 550 and len(s["draws"]) == 1
    assert s["ran_to_n_max"] in (0, 1) and s["steady_call_s"] is not None

    assert [(r["loss"], r["k"]) for r in by["train"]] == [("gaussian", 1), ("adre", 2)]
    for r in by["train"]:
        assert r["model"] == "lenet" and r["batch"] == 4 and r["step_s"] > 0
        assert r["images_per_s"] == pytest.approx(4 / r["step_s"])
        assert r["noisy_inputs_per_s"] == pytest.approx(r["images_per_s"] * r["k"])
        assert r["flops_per_step"] > 0 and r["compile_s"] >= 0
    assert by["train"][1]["lam"] == 0.5

    assert [r["score_model"] for r in by["eb"]] == [None, "energy_mnist"]
    assert by["eb"][0]["ratio_to_plain"] == 1.0 and by["eb"][1]["samples_per_s"] > 0


def test_gpu_suite_spent_budget_skips_every_section_and_still_prints_the_table(tmp_path):
    out_file = tmp_path / "r.jsonl"
    stdout = run_suite("--quick", "--budget-s", "0", "--out", str(out_file), timeout=120)
    assert [row[-1] for row in table_rows(stdout)] == ["skipped: budget"] * 6
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["section"] for r in rows] == ["peak", "votes", "certify", "sequential", "train", "eb"]
    assert {r["status"] for r in rows} == {"skipped"}


def test_gpu_suite_flags():
    suite = load_suite()
    assert suite.parse_args(["--quick"]).out == ""
    assert suite.parse_args(["--quick", "--out", "x.jsonl"]).out == "x.jsonl"
    full = suite.parse_args([])
    assert full.out == "benchmarks/results/gpu_suite.jsonl"
    assert (full.budget_s, full.hard_limit_s) == (420.0, 470.0)
    assert full.train_configs == [("gaussian", 1), ("adre", 8)] and full.train_batches == [64, 256]
    assert full.resnet == "resnet110" and full.votes_models == ["lenet", "resnet20", "resnet110"]
    chunk = suite.votes.default_chunk_size()
    assert full.votes_chunks == [chunk, 4 * chunk]
    assert (full.certify_n, full.n_max, full.n0, full.alpha) == (100_000, 100_000, 100, 0.001)
    with pytest.raises(SystemExit):
        suite.parse_args(["--train-configs", "macer:2"])


def test_budget_shares_and_guard():
    suite = load_suite()
    now = [0.0]
    budget = suite.Budget(100.0, {"a": 0.25, "b": 0.75}, clock=lambda: now[0])
    assert budget.open("a") == 25.0
    now[0] = 10.0  # a leaves 15 s unused: b may use them
    assert budget.open("b") == 90.0
    assert budget.allows(90.0) and not budget.allows(91.0)
    now[0] = 0.0
    budget = suite.Budget(100.0, {"a": 0.25, "b": 0.5, "c": 0.25}, clock=lambda: now[0])
    budget.open("a")
    now[0] = 70.0  # a ran long: b still gets half its share, c the rest of the total
    assert budget.open("b") == 25.0
    assert budget.allows(28.0, first=True) and not budget.allows(28.0)
    now[0] = 99.0
    assert budget.open("c") == pytest.approx(1.0) and budget.total_left() == pytest.approx(1.0)
