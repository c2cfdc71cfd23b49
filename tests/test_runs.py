"""Certification runs: TSV format, resume after a kill (no row lost or duplicated), settings guard,
and bad input (unwritable output, mismatched resume)."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import records, runs
from rsjax.analysis import read_tsv

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _logits_fn(params, x):
    flat = x.reshape(x.shape[0], -1)
    return jnp.stack([flat @ params["w"], -(flat @ params["w"])], axis=-1)


PARAMS = {"w": jnp.linspace(-1.0, 1.0, 16)}
IMAGES = np.asarray(jax.random.uniform(jax.random.key(0), (30, 4, 4, 1)))
LABELS = (np.asarray(_logits_fn(PARAMS, IMAGES)).argmax(-1)).astype(np.int32)
COMMON = dict(
    sigma=0.25,
    n0=20,
    n=200,
    alpha=0.01,
    num_classes=2,
    chunk_size=64,
    batch_size=4,
    show_progress=False,
)


def _run(outdir, indices, **kw):
    return runs.certify_dataset(
        jax.random.key(7),
        _logits_fn,
        PARAMS,
        IMAGES,
        LABELS,
        indices,
        outputs={"cohen": outdir / "cohen.tsv", "tcertify": outdir / "tcertify.tsv"},
        **{**COMMON, **kw},
    )


def _rows(path):
    """Every column but `time` (a wall-clock measurement that differs between any two runs)."""
    lines = open(path).read().split("\n")
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime"
    return [line.split("\t")[:5] for line in lines[1:] if line]


def test_tsv_format_and_sidecar(tmp_path):
    paths = _run(tmp_path, range(0, 30, 3))
    results = read_tsv(paths["cohen"])
    assert list(results.idx) == list(range(0, 30, 3))
    assert set(results.predict) <= {-1, 0, 1}
    np.testing.assert_array_equal(results.correct, results.predict == results.label)
    sidecar = records.json.loads(open(str(paths["cohen"]) + ".json").read())
    assert sidecar["settings"]["method"] == "cohen"
    assert sidecar["settings"]["indices"] == list(range(0, 30, 3))
    assert sidecar["complete"] and sidecar["examples_done"] == 10


def test_resume_after_torn_write_equals_uninterrupted(tmp_path):
    full = _run(tmp_path / "full", range(30))
    # A run killed mid-write: 9 complete rows in one file, 7 in the other, a torn last line.
    cut = tmp_path / "cut"
    _run(cut, range(30))
    for name, keep in (("cohen.tsv", 9), ("tcertify.tsv", 7)):
        lines = open(cut / name).read().split("\n")
        open(cut / name, "w").write("\n".join(lines[: 1 + keep]) + "\n" + lines[1 + keep][:5])
    _run(cut, range(30))
    for name in ("cohen.tsv", "tcertify.tsv"):
        assert _rows(cut / name) == _rows(full[name.split(".")[0]])
        assert len(_rows(cut / name)) == 30


def test_resume_with_other_settings_leaves_the_file_alone(tmp_path):
    _run(tmp_path, range(10))
    before = open(tmp_path / "cohen.tsv").read()
    with pytest.raises(ValueError, match="other settings"):
        _run(tmp_path, range(10), n=400)
    assert open(tmp_path / "cohen.tsv").read() == before


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match="cannot write output"):
        _run(blocker / "sub", range(3))


def test_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="sigma"):
        _run(tmp_path, range(3), sigma=0.0)
    with pytest.raises(ValueError, match="alpha"):
        _run(tmp_path, range(3), alpha=1.5)
    with pytest.raises(ValueError, match="n0"):
        _run(tmp_path, range(3), n0=0)
    with pytest.raises(ValueError, match="unknown method"):
        runs.certify_dataset(
            jax.random.key(0),
            _logits_fn,
            PARAMS,
            IMAGES,
            LABELS,
            [0],
            outputs={"bogus": tmp_path / "b.tsv"},
            **COMMON,
        )
    images = IMAGES.copy()
    images[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        runs.certify_dataset(
            jax.random.key(0),
            _logits_fn,
            PARAMS,
            images,
            LABELS,
            [2],
            outputs={"cohen": tmp_path / "nan.tsv"},
            **COMMON,
        )


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A LeNet trained for a few steps on mnist5k by the training script (smoke config)."""
    workdir = tmp_path_factory.mktemp("train")
    subprocess.run(
        [
            sys.executable,
            "experiments/train.py",
            "--config",
            "experiments/configs/mnist5k_lenet_gaussian.py",
            "--smoke",
            "--stop-after-step",
            "20",
            "--workdir",
            str(workdir),
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return workdir


def _certify_cmd(workdir, outdir, *extra):
    return [
        sys.executable,
        "experiments/certify.py",
        "--workdir",
        str(workdir),
        "--outdir",
        str(outdir),
        "--n0",
        "50",
        "--n",
        "2000",
        "--skip",
        "5",
        "--max",
        "200",
        "--batch-size",
        "2",
        *extra,
    ]


def test_script_killed_and_rerun_equals_uninterrupted(trained_workdir, tmp_path):
    subprocess.run(
        _certify_cmd(trained_workdir, tmp_path / "full"),
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=300,
    )
    cut = tmp_path / "cut"
    proc = subprocess.Popen(
        _certify_cmd(trained_workdir, cut),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline:  # kill once some, but not all, rows are written
        if (cut / "cohen.tsv").exists() and len(_rows(cut / "cohen.tsv")) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(_rows(cut / "cohen.tsv"))
    assert 4 <= written < 40, written
    subprocess.run(
        _certify_cmd(trained_workdir, cut), cwd=REPO, check=True, capture_output=True, timeout=300
    )
    for name in ("cohen.tsv", "tcertify.tsv"):
        rows = _rows(cut / name)
        assert rows == _rows(tmp_path / "full" / name)
        assert [int(r[0]) for r in rows] == list(range(0, 200, 5))  # --skip 5 --max 200
    sidecar = records.json.loads(open(cut / "cohen.tsv.json").read())
    assert sidecar["settings"]["params_sha256"] and sidecar["device_kind"]
    assert sidecar["versions"]["jax"] == jax.__version__


def test_script_missing_checkpoint(tmp_path):
    out = subprocess.run(
        _certify_cmd(tmp_path / "nothing", tmp_path / "o"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "no checkpoint directory" in out.stderr


# --------------------------------------------------------------------------------------------------
# Sequential certification runs (rsjax.runs.certify_dataset_sequential)

SEQ = dict(
    sigma=0.25,
    n0=20,
    n_max=600,
    alpha=0.01,
    num_classes=2,
    radii=(0.0, 0.1, 0.2, 0.3),
    chunk_size=32,
    batch_size=4,
    show_progress=False,
)


def _run_sequential(path, indices, **kw):
    return runs.certify_dataset_sequential(
        jax.random.key(7),
        _logits_fn,
        PARAMS,
        IMAGES,
        LABELS,
        indices,
        output=path,
        **{**SEQ, **kw},
    )


def _seq_rows(path):
    lines = open(path).read().split("\n")
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tnum_samples"
    return [line.split("\t")[:5] + line.split("\t")[6:] for line in lines[1:] if line]


def test_sequential_tsv_has_num_samples_and_the_procedure(tmp_path):
    indices = list(range(0, 30, 2))
    path = _run_sequential(tmp_path / "seq.tsv", indices)
    rows = _seq_rows(path)
    assert [int(r[0]) for r in rows] == indices  # in the order asked, whatever the stopping order
    used = [int(r[5]) for r in rows]
    assert all(20 < u <= 620 for u in used) and len(set(used)) > 1
    results = read_tsv(path)
    assert list(results.num_samples) == used
    sidecar = records.json.loads(open(str(path) + ".json").read())
    settings = sidecar["settings"]
    assert settings["procedure"] == "sequential" and settings["bound"] == "union"
    assert settings["looks"][-1] == 600 and sum(settings["alphas"]) == pytest.approx(0.01)
    assert settings["radii"] == [0.0, 0.1, 0.2, 0.3] and sidecar["complete"]
    assert sidecar["last_session_noise_samples"] == sum(used)


def test_sequential_resume_equals_uninterrupted_and_refuses_other_settings(tmp_path):
    indices = list(range(0, 30, 2))
    full = _seq_rows(_run_sequential(tmp_path / "full.tsv", indices))
    part = tmp_path / "part.tsv"
    _run_sequential(part, indices)
    lines = part.read_text().split("\n")
    part.write_text("\n".join(lines[:6]) + "\n" + lines[6][:5])  # 5 rows and a torn one
    assert len(_seq_rows(part)) == 6  # the torn line counts as a row until the resume drops it
    _run_sequential(part, indices, batch_size=3, chunk_size=50)  # the noise does not depend on them
    assert _seq_rows(part) == full
    before = part.read_text()
    for other in (dict(n_max=700), dict(radii=(0.0, 0.2)), dict(bound="mixture")):
        with pytest.raises(ValueError, match="other settings"):
            _run_sequential(part, indices, **other)
        assert part.read_text() == before


def test_sequential_run_rejects_bad_goals(tmp_path):
    with pytest.raises(ValueError, match="exactly one stopping goal"):
        _run_sequential(tmp_path / "x.tsv", [0], radius_tol=0.1)
    with pytest.raises(ValueError, match="n_max = 10 must be >= n0 = 20"):
        _run_sequential(tmp_path / "x.tsv", [0], n_max=10)
    assert not (tmp_path / "x.tsv").exists()


def test_sequential_script(trained_workdir, tmp_path):
    cmd = _certify_cmd(trained_workdir, tmp_path / "s")
    cmd = [c for c in cmd if c not in ("--n", "2000")]
    out = subprocess.run(
        [*cmd, "--sequential", "--n-max", "2000", "--radii", "0", "0.25", "0.5"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    results = read_tsv(tmp_path / "s" / "sequential.tsv")
    assert list(results.idx) == list(range(0, 200, 5))
    assert results.num_samples.max() <= 2050 and results.num_samples.min() >= 150
    bad = subprocess.run(
        [*cmd, "--sequential", "--methods", "tcertify"], cwd=REPO, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "CERTIFY only" in bad.stderr
    bad = subprocess.run([*cmd, "--radius-tol", "0.1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "belong to --sequential" in bad.stderr


def test_radius_is_written_rounded_down():
    assert records.format_radius(0.2496) == "0.249"
    assert records.format_radius(0.25) == "0.25"
    assert records.format_radius(0.99961) == "0.999"
    assert records.format_radius(1.2345) == "1.23"
    assert records.format_radius(0.0) == "0"
    rng = np.random.default_rng(0)
    for r in np.concatenate([rng.uniform(0, 4, 2000), 10.0 ** rng.uniform(-4, 1, 2000)]):
        written = float(records.format_radius(float(r)))
        assert written <= r
        assert r - written < 10.0 ** (np.floor(np.log10(r)) - 2) * 1.000001
