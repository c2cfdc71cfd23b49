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
