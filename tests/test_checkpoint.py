"""Checkpoints: round trip, retention, and clear errors for missing or corrupted ones."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import checkpoint

MODEL = {"params": {"w": jnp.arange(6.0).reshape(3, 2)}, "batch_stats": {}}
TRAIN = {"step": jnp.int32(3), "opt_state": (jnp.zeros(2),)}


def _save(directory, step, model=MODEL):
    checkpoint.save(directory, step, model=model, train=TRAIN, meta={"model": "x"}, max_to_keep=2)


def test_round_trip_and_retention(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    assert checkpoint.latest_step(tmp_path) == 3
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 3]
    step, model, train = checkpoint.restore(tmp_path, None, model_like=MODEL, train_like=TRAIN)
    assert step == 3
    np.testing.assert_array_equal(model["params"]["w"], MODEL["params"]["w"])
    assert int(train["step"]) == 3
    assert checkpoint.restore_meta(tmp_path) == (3, {"model": "x"})


def test_digest_names_the_weights():
    other = {"params": {"w": MODEL["params"]["w"].at[0, 0].set(1e-7)}, "batch_stats": {}}
    assert checkpoint.digest(MODEL) == checkpoint.digest(MODEL)
    assert checkpoint.digest(MODEL) != checkpoint.digest(other)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint directory"):
        checkpoint.restore(tmp_path / "nope", None, model_like=MODEL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint found"):
        checkpoint.restore_meta(tmp_path / "empty")
    _save(tmp_path / "one", 1)
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint for step 5"):
        checkpoint.restore(tmp_path / "one", 5, model_like=MODEL)


def test_corrupted_checkpoint(tmp_path):
    _save(tmp_path, 1)
    damaged = 0
    for path in pathlib.Path(tmp_path, "1", "model").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage" * 3)
            damaged += 1
    assert damaged
    with pytest.raises(checkpoint.CheckpointError, match="corrupted"):
        checkpoint.restore(tmp_path, 1, model_like=MODEL)


def test_shape_mismatch_is_reported(tmp_path):
    _save(tmp_path, 1)
    wrong = {"params": {"w": jnp.zeros((4, 2))}, "batch_stats": {}}
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(tmp_path, 1, model_like=wrong)


def test_unwritable_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(checkpoint.CheckpointError, match="cannot write"):
        _save(blocker / "ckpt", 1)
