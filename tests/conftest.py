"""Test set-up: four host (CPU) devices, forced before JAX initialises its backend.

Invariance tests compare one device with four; everything else simply runs on the CPU.
"""

import json
import os
import subprocess
import sys
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session's processes (pytest-xdist workers and the scripts
# the smoke tests start, which inherit the environment): the same train and vote-counting steps are
# compiled by many of them. The cache key covers the program, the flags and the versions.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"rsjax-tests-jax-cache-{os.getuid()}"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def mnist_test_dir():
    """The real MNIST test set beside the checkout (../shared/data/mnist-test)."""
    path = SHARED / "data" / "mnist-test"
    if not (path / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST test set not found at {path}")
    return path


@pytest.fixture
def run_quick(tmp_path):
    """run_quick("benchmarks/X.py", timeout=S) -> (stdout, rows): the script's --quick mode run from
    the repository root with --out in tmp_path, and the JSON rows it wrote there; a non-zero exit
    fails the test with the end of its stderr."""

    def run(script, *, timeout):
        out_file = tmp_path / "quick.jsonl"
        out = subprocess.run(
            [sys.executable, script, "--quick", "--out", str(out_file)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout, [json.loads(line) for line in out_file.read_text().splitlines()]

    return run


@pytest.fixture
def check_certification_tsv():
    """check(path, *, key, logits_fn, params, images, labels, rows=3, **certify_kwargs): reads a
    certification TSV that a script wrote and asserts what every row must satisfy (radius exactly 0
    where predict is -1 and > 0 elsewhere; correct = predict == label; label = labels[idx]), then that
    its first `rows` rows (none with rows=0) equal rsjax.certify on the same key and dataset indices:
    the same prediction, and the radius rounded down to 3 significant digits. Returns the rows."""
    import math

    import numpy as np

    import rsjax

    def check(path, *, key, logits_fn, params, images, labels, rows=3, **certify_kwargs):
        lines = pathlib.Path(path).read_text().splitlines()
        assert lines[0].split("\t")[:6] == ["idx", "label", "predict", "radius", "correct", "time"]
        table = [line.split("\t") for line in lines[1:] if line]
        for row in table:
            idx, label, predict, radius = int(row[0]), int(row[1]), int(row[2]), float(row[3])
            assert label == int(labels[idx]), row
            assert (radius == 0.0) == (predict == rsjax.ABSTAIN), row
            assert radius >= 0.0 and int(row[4]) == int(predict == label), row
        if rows == 0:
            return table
        idx = np.array([int(row[0]) for row in table[:rows]])
        cert = rsjax.certify(key, logits_fn, images[idx], params=params, idx=idx, **certify_kwargs)
        for row, prediction, radius in zip(table, cert.prediction, cert.radius, strict=False):
            assert int(row[2]) == prediction, (row, prediction)
            written = float(row[3])
            if radius == 0.0:
                assert written == 0.0, (row, radius)
            else:
                unit = 10.0 ** (math.floor(math.log10(radius)) - 2)
                assert written <= radius < written + unit * (1 + 1e-9), (row, radius)
        return table

    return check
