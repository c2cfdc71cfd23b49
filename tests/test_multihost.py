"""Multi-host: 2 processes on 127.0.0.1 (jax.distributed, gloo collectives on CPU) train a few steps
and certify a few examples with the same results as 1 process on the same 4 devices.

Loopback only, each process bounded to 240 s.
"""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
REPO = WORKER.parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(num_processes, workdir):
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(i), str(num_processes), port, str(workdir)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(num_processes)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=240)[0])
    finally:
        for proc in procs:
            proc.kill()
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-4000:]
    return json.loads((workdir / "result.json").read_text())


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    one = _run(1, tmp_path_factory.mktemp("one"))
    two = _run(2, tmp_path_factory.mktemp("two"))
    return one, two


def test_two_processes_train_like_one(results):
    one, two = results
    assert one["steps"] == two["steps"] == list(range(1, 9))
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-4, atol=1e-5)
    for a, b in zip(one["params"], two["params"], strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert one["losses"][-1] < one["losses"][0]  # it trained


def test_two_processes_certify_like_one(results):
    one, two = results
    assert two["prediction"] == one["prediction"]
    np.testing.assert_array_equal(two["radius"], one["radius"])
    assert two["tsv"] == one["tsv"] and len(one["tsv"]) == 1 + 6
