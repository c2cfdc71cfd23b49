"""Checkpoints: round trip, retention, and clear errors for missing or corrupted ones."""

import pathlib
import shutil

import jax
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
    with pytest.raises(checkpoint.CorruptedCheckpointError, match="corrupted") as refused:
        checkpoint.restore(tmp_path, 1, model_like=MODEL)
    # The message is ours, on one line; orbax's and TensorStore's (pages long) is the chained cause.
    message = str(refused.value)
    assert message == (
        f"checkpoint {tmp_path} step 1 is corrupted or does not match the model (cannot be read: "
        f"orbax fails on 'model' with {type(refused.value.__cause__).__name__}); "
        "no intact step remains"
    )
    assert refused.value.__cause__ is not None


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


BIG = {"params": {"w": jnp.arange(600.0).reshape(30, 20)}, "batch_stats": {}}  # arrays of ~2 kB
BIG_TRAIN = {"step": jnp.int32(3), "opt_state": (jnp.linspace(0.0, 1.0, 600),)}


def flip_one_bit(step_dir: pathlib.Path, item: str = "model") -> pathlib.Path:
    """Flips one bit in the middle of the largest array data file of a saved item (orbax writes
    the arrays as zarr chunks in an OCDBT store: the files of `ITEM/ocdbt.process_*/d/`)."""
    data = [p for p in (step_dir / item).glob("ocdbt.process_*/d/*") if p.is_file()]
    path = max(data, key=lambda p: p.stat().st_size)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    return path


def _save_big(directory, step):
    model = jax.tree.map(lambda a: a + step, BIG)
    checkpoint.save(
        directory, step, model=model, train=BIG_TRAIN, meta={"model": "x"}, max_to_keep=3
    )
    return model


def test_a_flipped_bit_is_refused_naming_the_intact_steps(tmp_path):
    """Without the digest, orbax restores the flipped bit silently as other weights."""
    saved = {step: _save_big(tmp_path, step) for step in (10, 20, 30)}
    flip_one_bit(tmp_path / "30")
    with pytest.raises(checkpoint.CorruptedCheckpointError) as refused:
        checkpoint.restore(
            tmp_path, None, model_like=BIG, hint="pass --step {step} to certify an older one"
        )
    assert str(refused.value) == (
        f"checkpoint {tmp_path} step 30 is corrupted (digest mismatch in 'model'); "
        "intact steps: [10, 20]; pass --step 20 to certify an older one"
    )
    assert (refused.value.step, refused.value.intact_steps) == (30, [10, 20])
    step, model, _ = checkpoint.restore(tmp_path, 20, model_like=BIG)
    assert step == 20 and checkpoint.digest(model) == checkpoint.digest(saved[20])
    # Resuming training takes the newest intact step and reports the one it skipped.
    resumed = checkpoint.restore_newest_intact(tmp_path, model_like=BIG, train_like=BIG_TRAIN)
    assert (resumed.step, resumed.meta) == (20, {"model": "x"})
    assert checkpoint.digest(resumed.model) == checkpoint.digest(saved[20])
    assert resumed.skipped == {30: "is corrupted (digest mismatch in 'model')"}
    # Set aside, the step is no longer a step, and it can be saved again.
    assert checkpoint.set_aside(tmp_path, 30) == tmp_path / "30.corrupted"
    assert checkpoint.all_steps(tmp_path) == [10, 20]
    _save_big(tmp_path, 30)
    assert checkpoint.restore(tmp_path, None, model_like=BIG)[0] == 30


def test_train_item_and_meta_are_checked(tmp_path):
    _save_big(tmp_path, 1)
    _save_big(tmp_path, 2)
    flip_one_bit(tmp_path / "2", "train")
    with pytest.raises(checkpoint.CorruptedCheckpointError, match=r"mismatch in 'train'.*\[1\]"):
        checkpoint.restore(tmp_path, 2, model_like=BIG, train_like=BIG_TRAIN)
    assert checkpoint.restore(tmp_path, 2, model_like=BIG)[0] == 2  # certification needs no train
    meta_file = tmp_path / "2" / "meta" / "metadata"
    assert b'"x"' in meta_file.read_bytes()
    meta_file.write_bytes(meta_file.read_bytes().replace(b'"x"', b'"y"'))  # 0x78 -> 0x79: one bit
    with pytest.raises(checkpoint.CorruptedCheckpointError, match=r"mismatch in 'meta'.*\[1\]"):
        checkpoint.restore_meta(tmp_path, 2)
    with pytest.raises(checkpoint.CorruptedCheckpointError, match="mismatch in 'meta'"):
        checkpoint.restore(tmp_path, 2, model_like=BIG)  # the meta says how to rebuild the model


def test_checkpoints_without_digests_restore_unchecked(tmp_path):
    """A checkpoint saved before digests were recorded restores (only shapes and finiteness are
    checked, as the module docstring says)."""
    _save_big(tmp_path, 1)
    shutil.rmtree(tmp_path / "1" / "digests")
    assert checkpoint.restore_meta(tmp_path) == (1, {"model": "x"})
    step, model, train = checkpoint.restore(tmp_path, None, model_like=BIG, train_like=BIG_TRAIN)
    assert step == 1 and int(train["step"]) == 3
    np.testing.assert_array_equal(model["params"]["w"], BIG["params"]["w"] + 1)


def test_resuming_refuses_when_no_step_is_intact_and_checks_the_meta_first(tmp_path):
    for step in (1, 2):
        _save_big(tmp_path, step)
        flip_one_bit(tmp_path / str(step))
    with pytest.raises(checkpoint.CorruptedCheckpointError, match="no intact step remains"):
        checkpoint.restore_newest_intact(tmp_path, model_like=BIG, train_like=BIG_TRAIN)

    def other_run(meta):
        raise ValueError(f"a different run: {meta}")

    # Another model's structure would fail to read every step: the meta check speaks first.
    wrong = {"params": {"v": jnp.zeros(3)}, "batch_stats": {}}
    with pytest.raises(ValueError, match="a different run: {'model': 'x'}"):
        checkpoint.restore_newest_intact(
            tmp_path, model_like=wrong, train_like=BIG_TRAIN, check_meta=other_run
        )
