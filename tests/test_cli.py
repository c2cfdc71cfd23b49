"""Tests for experiments/cli.py's error handling: a known rsjax error is one line on stderr (exit
status 1) naming what to fix, --debug gives the traceback; both through a real script process."""

import subprocess
import sys

from conftest import REPO


def _certify(tmp_path, *extra):
    return subprocess.run(
        [
            sys.executable,
            "experiments/certify.py",
            "--workdir",
            str(tmp_path / "no_such_run"),
            "--outdir",
            str(tmp_path / "out"),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_known_error_is_one_line_and_debug_shows_the_traceback(tmp_path):
    out = _certify(tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("certify.py: error: no checkpoint directory at ")
    assert "no_such_run" in lines[0] and "--debug shows the traceback" in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()  # nothing written

    debug = _certify(tmp_path, "--debug")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "CheckpointError: no checkpoint directory at " in debug.stderr


def test_train_rerun_with_other_settings_is_one_line(tmp_path, mnist_test_dir):
    """A refused training rerun (another sigma in the same workdir): one line naming the workdir
    and the differing setting, exit 1, and the run's files unchanged."""
    config = "experiments/configs/mnist5k_lenet.py"
    workdir = tmp_path / "run"

    def train(spec):
        return subprocess.run(
            [sys.executable, "experiments/train.py", "--config", spec, "--workdir", str(workdir)]
            + ["--smoke", "--stop-after-step", "2", "--data-source-dir", str(mnist_test_dir)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = train(config)
    assert first.returncode == 0, first.stderr[-2000:]

    def files():  # the lock file is rewritten with each holder's process id
        return {
            p: p.read_bytes() for p in workdir.rglob("*") if p.is_file() and p.suffix != ".lock"
        }

    before = files()
    again = train(config + ":sigma=0.25")
    assert again.returncode == 1
    lines = again.stderr.strip().splitlines()
    assert lines[-1].startswith("train.py: error: ") and "holds a different run" in lines[-1]
    assert "'sigma': (0.5, 0.25)" in lines[-1] and "Traceback" not in again.stderr
    assert files() == before
