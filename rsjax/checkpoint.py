"""Orbax checkpoints of the train state, with clear errors and a content digest.

Layout of a run's `checkpoints/` directory (one orbax step directory per saved step):
  model: {"params", "batch_stats"}    what certification needs
  train: {"step", "opt_state"}        what resuming training needs as well
  meta:  JSON {model, num_classes, dataset, input_shape, ...}  how to rebuild the model
Saving is synchronous, so a checkpoint that `latest_step` reports is complete; orbax writes into a
temporary directory and renames it, so a run killed while saving leaves the previous checkpoint intact.
"""

import hashlib
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not match the expected structure."""


def _manager(directory, *, max_to_keep: int | None = None, read_only: bool = False):
    directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=not read_only
    )
    return ocp.CheckpointManager(directory, options=options, item_names=("model", "train", "meta"))


def save(directory, step: int, *, model: Any, train: Any, meta: dict, max_to_keep: int | None = 3):
    """Saves one step (synchronously); keeps the newest `max_to_keep` steps."""
    try:
        manager = _manager(directory, max_to_keep=max_to_keep)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints to {directory}: {e}") from e
    with manager:
        manager.save(
            int(step),
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(model),
                train=ocp.args.StandardSave(train),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )
        manager.wait_until_finished()


def latest_step(directory) -> int | None:
    """The newest complete step in `directory`, or None when there is none."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return None
    with _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def _resolve_step(directory, step):
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint directory at {directory}")
    with _manager(directory, read_only=True) as manager:
        steps = manager.all_steps()
    if not steps:
        raise CheckpointError(f"no checkpoint found in {directory}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; saved steps: {steps}")
    return step


def restore_meta(directory, step: int | None = None) -> tuple[int, dict]:
    """(step, meta JSON) of the newest (or given) checkpoint."""
    step = _resolve_step(directory, step)
    try:
        with _manager(directory, read_only=True) as manager:
            meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
                "meta"
            ]
    except Exception as e:  # orbax raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {directory} step {step}: metadata is unreadable ({e})"
        ) from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {directory} step {step}: metadata is not a JSON object")
    return step, meta


def restore(directory, step: int | None, *, model_like: Any, train_like: Any | None = None):
    """Restores {"model"} (and {"train"} when train_like is given) shaped like the given pytrees.

    Raises CheckpointError for a missing step, a damaged file or a structure/shape mismatch.
    """
    step = _resolve_step(directory, step)
    items = {"model": ocp.args.StandardRestore(_abstract(model_like))}
    if train_like is not None:
        items["train"] = ocp.args.StandardRestore(_abstract(train_like))
    try:
        with _manager(directory, read_only=True) as manager:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {directory} step {step} is corrupted or does not match the model "
            f"({type(e).__name__}: {str(e)[:400]})"
        ) from e
    _check_finite_and_shapes(restored["model"], model_like, f"{directory} step {step}")
    return step, restored["model"], restored.get("train")


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _check_finite_and_shapes(tree, like, where):
    for (path, got), want in zip(
        jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(like), strict=True
    ):
        if np.shape(got) != np.shape(want):
            raise CheckpointError(
                f"checkpoint {where}: {jax.tree_util.keystr(path)} has shape "
                f"{np.shape(got)}, expected {np.shape(want)}"
            )
        if not np.all(np.isfinite(np.asarray(got))):
            raise CheckpointError(f"checkpoint {where}: {jax.tree_util.keystr(path)} holds NaN/inf")


def digest(tree: Any) -> str:
    """sha256 of a pytree's leaves (paths, dtypes, shapes and bytes): names the exact weights."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        leaf = np.asarray(jax.device_get(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|".encode())
        h.update(np.ascontiguousarray(leaf).tobytes())
    return h.hexdigest()
