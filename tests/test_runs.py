"""Certification runs: TSV format, resume after a kill (no row lost or duplicated), settings guard,
one writer per output (two real processes), growing indices, and bad input (unwritable output,
mismatched resume, bad rows)."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import locks, records, runs
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


def test_resume_reports_and_refuses_a_bad_row(tmp_path, capsys):
    _run(tmp_path, range(8))
    for name in ("cohen.tsv", "tcertify.tsv"):  # 5 of 8 rows kept
        lines = (tmp_path / name).read_text().split("\n")
        (tmp_path / name).write_text("\n".join(lines[:6]) + "\n")
    _run(tmp_path, range(8), show_progress=True)
    err = capsys.readouterr().err
    assert f"resuming: 5 of 8 rows done ({tmp_path / 'cohen.tsv'})" in err
    assert f"resuming: 5 of 8 rows done ({tmp_path / 'tcertify.tsv'})" in err
    assert [int(r[0]) for r in _rows(tmp_path / "cohen.tsv")] == list(range(8))
    lines = (tmp_path / "cohen.tsv").read_text().split("\n")
    lines[3] = "\t".join(lines[3].split("\t")[:3] + ["nan"] + lines[3].split("\t")[4:])
    (tmp_path / "cohen.tsv").write_text("\n".join(lines))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(records.RunRecordError, match="cohen.tsv, line 4: radius 'nan'"):
        _run(tmp_path, range(8))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_cutting_back_a_longer_file_never_rewrites_it(tmp_path, monkeypatch):
    """TSVs of one run at different lengths are cut to the shortest by truncation: a failure there
    (here a full disk) leaves both files whole."""
    _run(tmp_path, range(10))
    lines = (tmp_path / "tcertify.tsv").read_text().split("\n")
    (tmp_path / "tcertify.tsv").write_text("\n".join(lines[:5]) + "\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd, size):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records.os, "ftruncate", full_disk)
    with pytest.raises(OSError, match="No space left"):
        _run(tmp_path, range(10))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    _run(tmp_path, range(10))
    for name in ("cohen.tsv", "tcertify.tsv"):
        four_rows = b"\n".join(before[name].split(b"\n")[:5]) + b"\n"
        assert (tmp_path / name).read_bytes().startswith(four_rows)
        assert [int(r[0]) for r in _rows(tmp_path / name)] == list(range(10))


def test_indices_that_extend_the_saved_ones_continue_the_run(tmp_path):
    full = _run(tmp_path / "full", range(0, 24, 2))
    part = tmp_path / "part"
    _run(part, range(0, 12, 2))
    first = {name: (part / name).read_bytes() for name in ("cohen.tsv", "tcertify.tsv")}
    _run(part, range(0, 24, 2))
    for name in ("cohen.tsv", "tcertify.tsv"):
        assert (part / name).read_bytes().startswith(first[name])  # the old rows as they were
        assert _rows(part / name) == _rows(full[name.split(".")[0]])
        sidecar = json.loads((part / f"{name}.json").read_text())
        assert sidecar["settings"]["indices"] == list(range(0, 24, 2)) and sidecar["complete"]
    grown = (part / "cohen.tsv").read_bytes()
    for indices in (range(0, 12, 2), range(2, 26, 2)):  # shrinking, or another start
        with pytest.raises(records.RunRecordError, match="other settings"):
            _run(part, indices)
    assert (part / "cohen.tsv").read_bytes() == grown


def _hold_lock(path):
    """A second process holding the lock of `path` (until killed), importing rsjax/locks.py alone."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('locks', {os.path.join(REPO, 'rsjax', 'locks.py')!r})\n"
        "locks = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(locks)\n"
        "with locks.exclusive(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_an_output_held_by_another_process_is_refused_until_it_dies(tmp_path):
    holder = _hold_lock(tmp_path / "tcertify.tsv")
    try:
        message = f"tcertify.tsv is in use by another process \\(process id {holder.pid} on "
        with pytest.raises(locks.OutputLockedError, match=message):
            _run(tmp_path, range(4))
        assert not (tmp_path / "tcertify.tsv").exists()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs; the kernel drops the lock with the process
        holder.wait()
    _run(tmp_path, range(4))
    assert [int(r[0]) for r in _rows(tmp_path / "tcertify.tsv")] == list(range(4))


# A run of `_run(argv[1], range(30))` that stops before its first row, holding its locks, until the
# file argv[3] exists; argv[2] says it got there.
OVERLAPPING_RUN = """
import pathlib, sys, time
sys.path.insert(0, {tests!r})
import test_runs
from rsjax import records

ready, go = pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
append = records.CertificationTSV.append

def waiting_append(self, rows):
    rows = list(rows)
    if not ready.exists():
        ready.write_text("")
        while not go.exists():
            time.sleep(0.02)
    append(self, rows)

records.CertificationTSV.append = waiting_append
test_runs._run(pathlib.Path(sys.argv[1]), range(30))
"""


def test_two_overlapping_runs_cannot_double_rows(tmp_path):
    full = _run(tmp_path / "full", range(30))
    out, ready, go = tmp_path / "out", tmp_path / "ready", tmp_path / "go"
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            OVERLAPPING_RUN.format(tests=os.path.join(REPO, "tests")),
            str(out),
            str(ready),
            str(go),
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while not ready.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), first.stderr.read() if first.poll() is not None else "timed out"
        with pytest.raises(locks.OutputLockedError, match=f"process id {first.pid} on"):
            _run(out, range(30))
    finally:
        go.write_text("")
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    _run(out, range(30))  # after it: a complete file, nothing to add
    for name in ("cohen.tsv", "tcertify.tsv"):
        assert _rows(out / name) == _rows(full[name.split(".")[0]])
        assert [int(r[0]) for r in _rows(out / name)] == list(range(30))
        sidecar = json.loads((out / f"{name}.json").read_text())
        assert sidecar["examples_done"] == 30 and sidecar["complete"]


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
    with pytest.raises(ValueError, match="n = 2,147,483,648 exceeds"):
        _run(tmp_path, range(3), n=2**31)
    with pytest.raises(ValueError, match="batch_size"):
        _run(tmp_path, range(3), batch_size=0)
    with pytest.raises(ValueError, match="no images to certify"):
        _run(tmp_path, [])
    with pytest.raises(ValueError, match="duplicates"):
        _run(tmp_path, [0, 3, 0])
    with pytest.raises(ValueError, match=r"\[0, 30\)"):
        _run(tmp_path, [0, 30])
    with pytest.raises(ValueError, match="n_max"):
        _run_sequential(tmp_path / "s.tsv", range(3), n_max=0)
    with pytest.raises(ValueError, match="no images to certify"):
        _run_sequential(tmp_path / "s.tsv", range(0))
    assert not any(tmp_path.iterdir())  # refused before any file was made
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


def _certify_main(monkeypatch):
    """experiments/certify.py's main, imported into this process (no interpreter or JAX start-up)."""
    monkeypatch.syspath_prepend(os.path.join(REPO, "experiments"))  # for its `import cli`
    spec = importlib.util.spec_from_file_location(
        "certify_script", os.path.join(REPO, "experiments", "certify.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_script_max_may_grow_and_not_shrink(trained_workdir, tmp_path, monkeypatch, capsys):
    main = _certify_main(monkeypatch)

    def certify(outdir, max_index):
        args = ["--workdir", str(trained_workdir), "--outdir", str(outdir), "--n0", "20"]
        args += ["--n", "200", "--skip", "5", "--max", str(max_index), "--batch-size", "2"]
        main([*args, "--methods", "cohen"])
        return outdir / "cohen.tsv"

    grown = certify(tmp_path / "grown", 10)
    first = grown.read_bytes()
    assert [int(r[0]) for r in _rows(grown)] == [0, 5]
    capsys.readouterr()
    certify(tmp_path / "grown", 20)
    err = capsys.readouterr().err
    assert f"resuming: 2 of 4 rows done ({grown}; the run grows from 2 to 4 images)" in err
    assert grown.read_bytes().startswith(first)
    assert _rows(grown) == _rows(certify(tmp_path / "whole", 20))
    sidecar = json.loads((tmp_path / "grown" / "cohen.tsv.json").read_text())
    assert sidecar["settings"]["max"] == 20 and sidecar["settings"]["indices"] == [0, 5, 10, 15]
    assert sidecar["complete"] and sidecar["examples_done"] == 4
    done = grown.read_bytes()
    with pytest.raises(records.RunRecordError, match="max: 20 vs 10.*may only grow"):
        certify(tmp_path / "grown", 10)
    assert grown.read_bytes() == done
    with pytest.raises(SystemExit):
        certify(tmp_path / "none", 0)
    assert "--max 0 leaves no image to certify" in capsys.readouterr().err


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
