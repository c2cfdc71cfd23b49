"""Orbax checkpoints of the train state, with a digest of every item checked at restore and clear
errors.

Layout of a run's `checkpoints/` directory (one orbax step directory per saved step):
  model:   {"params", "batch_stats"}    what certification needs
  train:   {"step", "opt_state"}        what resuming training needs as well
  meta:    JSON {model, num_classes, dataset, input_shape, ...}  how to rebuild the model
  digests: JSON {"model", "train", "meta"}: the sha256 of each item as saved (`digest`; for meta,
           of its sorted JSON text)
  N.corrupted/  a step N that failed its check, set aside (`set_aside`) when training resumed from
           an older one; orbax does not count it as a step
Saving is synchronous, so a checkpoint that `latest_step` reports is complete; orbax writes into a
temporary directory and renames it, so a run killed while saving leaves the previous checkpoint
intact.

Integrity: orbax keeps no checksum, so a flipped bit in an array file would restore silently as
other weights. `restore` and `restore_meta` recompute the digest of every item they read and raise
CorruptedCheckpointError on a mismatch (or on a file orbax cannot read), naming the step and the
intact steps that remain; `restore_newest_intact` (resuming training) falls back to the newest
intact step instead. Checkpoints saved before digests were recorded (no `digests` item) restore
without the check: only their shapes and finiteness are checked.
"""

import hashlib
import json
import os
import pathlib
from typing import Any, Callable, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("model", "train", "meta", "digests")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted or does not match the expected structure."""


class CorruptedCheckpointError(CheckpointError):
    """A saved step fails its integrity check: an item's digest differs from the one recorded at
    save time, or orbax cannot read it. `directory`, `step`, `problem` (what failed) and
    `intact_steps` (the saved steps that pass the same check, oldest first)."""

    def __init__(
        self,
        directory: str | os.PathLike,
        step: int,
        problem: str,
        intact_steps: list[int],
        advice: str,
    ):
        self.directory, self.step, self.problem = str(directory), step, problem
        self.intact_steps = list(intact_steps)
        super().__init__(f"checkpoint {directory} step {step} {problem}; {advice}")


class CorruptedCheckpointWarning(UserWarning):
    """Training skipped a corrupted step and resumed from an older intact one."""


class _Damaged(Exception):
    """Internal: a step failed its check; args[0] says how (see CorruptedCheckpointError)."""


class Restored(NamedTuple):
    """A step restored for resuming training; `skipped` maps each newer, corrupted step to what
    failed (see `restore_newest_intact`)."""

    step: int
    meta: dict
    model: Any
    train: Any
    skipped: dict[int, str]


def _manager(directory, *, max_to_keep: int | None = None, read_only: bool = False):
    directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=not read_only
    )
    return ocp.CheckpointManager(directory, options=options, item_names=ITEMS)


def save(
    directory: str | os.PathLike,
    step: int,
    *,
    model: Any,
    train: Any,
    meta: dict,
    max_to_keep: int | None = 3,
) -> None:
    """Saves one step (synchronously) with the digests of its items; keeps the newest
    `max_to_keep` steps."""
    meta = json.loads(json.dumps(meta))  # as it reads back (tuples become lists)
    digests = {"model": digest(model), "train": digest(train), "meta": _meta_digest(meta)}
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
                digests=ocp.args.JsonSave(digests),
            ),
            force=True,
        )
        manager.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step in `directory`, or None when there is none (not checked)."""
    steps = all_steps(directory)
    return max(steps) if steps else None


def all_steps(directory: str | os.PathLike) -> list[int]:
    """The complete steps saved in `directory`, oldest first ([] when there is no directory)."""
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        return []
    with _manager(directory, read_only=True) as manager:
        return sorted(manager.all_steps())


def _resolve_step(directory, step):
    directory = pathlib.Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint directory at {directory}")
    steps = all_steps(directory)
    if not steps:
        raise CheckpointError(f"no checkpoint found in {directory}")
    if step is None:
        return max(steps)
    if step not in steps:
        raise CheckpointError(f"no checkpoint for step {step} in {directory}; saved steps: {steps}")
    return step


def restore_meta(
    directory: str | os.PathLike,
    step: int | None = None,
    *,
    hint: str = "pass step={step} to read an older one",
) -> tuple[int, dict]:
    """(step, meta JSON) of the newest (or given) checkpoint.

    Raises CorruptedCheckpointError when the meta is unreadable or differs from its digest; its
    message lists the steps whose meta is intact and ends with `hint`, formatted with the newest
    of them as `step`.
    """
    step = _resolve_step(directory, step)
    try:
        meta = _read(directory, step, {"meta": None})["meta"]
    except _Damaged as e:
        intact = [s for s in all_steps(directory) if s != step and _passes(directory, s, {})]
        raise CorruptedCheckpointError(
            directory, step, e.args[0], intact, _advice(intact, hint)
        ) from e.__cause__
    return step, meta


def restore(
    directory: str | os.PathLike,
    step: int | None,
    *,
    model_like: Any,
    train_like: Any | None = None,
    hint: str = "pass step={step} to restore an older one",
) -> tuple[int, Any, Any | None]:
    """Restores {"model"} (and {"train"} when train_like is given) shaped like the given pytrees,
    after checking each against the digest recorded at save time.

    Returns (step, model, train or None).
    Raises:
      CorruptedCheckpointError: a digest mismatch (any changed bit of the saved arrays or the meta)
        or an item orbax cannot read; the message names the step and the saved steps that pass the
        same check, and ends with `hint` formatted with the newest of them as `step`.
      CheckpointError: a missing step, a shape mismatch or NaN/inf weights.
    """
    step = _resolve_step(directory, step)
    likes = {"model": model_like} | ({} if train_like is None else {"train": train_like})
    try:
        restored = _read(directory, step, {"meta": None, **likes})
    except _Damaged as e:
        intact = [s for s in all_steps(directory) if s != step and _passes(directory, s, likes)]
        raise CorruptedCheckpointError(
            directory, step, e.args[0], intact, _advice(intact, hint)
        ) from e.__cause__
    _check_finite_and_shapes(restored["model"], model_like, f"{directory} step {step}")
    return step, restored["model"], restored.get("train")


def restore_newest_intact(
    directory: str | os.PathLike,
    *,
    model_like: Any,
    train_like: Any,
    check_meta: Callable[[dict], None] = lambda meta: None,
) -> Restored | None:
    """For resuming training: the newest saved step whose meta, model and train items all pass
    their digests, or None when no step is saved.

    `check_meta` is called with the first intact meta (newest first) before any array is read, so a
    different run is refused before its arrays are read against the wrong structure. The newer steps
    that fail are listed in `skipped` (step -> what failed); nothing is moved or deleted here (see
    `set_aside`).
    Raises CorruptedCheckpointError when steps are saved but none is intact.
    """
    skipped, checked = {}, False
    for step in sorted(all_steps(directory), reverse=True):
        try:
            meta = _read(directory, step, {"meta": None})["meta"]
            if not checked:
                check_meta(meta)
                checked = True
            restored = _read(directory, step, {"model": model_like, "train": train_like})
        except _Damaged as e:
            skipped[step] = e.args[0]
            continue
        _check_finite_and_shapes(restored["model"], model_like, f"{directory} step {step}")
        return Restored(step, meta, restored["model"], restored["train"], skipped)
    if not skipped:
        return None
    newest = max(skipped)
    raise CorruptedCheckpointError(
        directory,
        newest,
        skipped[newest],
        [],
        f"no intact step remains (all of {sorted(skipped)} fail); to train from scratch, move "
        f"{directory} aside",
    )


def set_aside(directory: str | os.PathLike, step: int) -> pathlib.Path:
    """Renames the step directory to `N.corrupted` (`N.corrupted.1`, ... if taken), where orbax
    no longer sees it as a step, so that the step can be saved again; returns the new path."""
    source = pathlib.Path(directory) / str(step)
    target, n = source.with_name(f"{step}.corrupted"), 0
    while target.exists():
        n += 1
        target = source.with_name(f"{step}.corrupted.{n}")
    source.rename(target)
    return target


def _advice(intact, hint):
    if not intact:
        return "no intact step remains"
    return f"intact steps: {intact}; {hint.format(step=intact[-1])}"


def _passes(directory, step, likes) -> bool:
    try:
        _read(directory, step, {"meta": None, **likes})
    except _Damaged:
        return False
    return True


def _read(directory, step, likes: dict) -> dict:
    """The items named in `likes` (None: a JSON item; else the pytree to restore like), each
    checked against the step's digests when it has them; raises _Damaged naming what failed."""
    directory = pathlib.Path(directory)
    has_digests = (directory / str(step) / "digests").is_dir()
    names = list(likes) + (["digests"] if has_digests else [])
    restored = {}
    with _manager(directory, read_only=True) as manager:
        for name in names:
            like = likes.get(name)
            if like is None:
                args = ocp.args.JsonRestore()
            else:
                args = ocp.args.StandardRestore(_abstract(like))
            try:
                restored[name] = manager.restore(step, args=ocp.args.Composite(**{name: args}))[
                    name
                ]
            except Exception as e:  # orbax raises many types for a damaged file
                problem = f"cannot be read: orbax fails on {name!r} with {type(e).__name__}"
                if like is not None:
                    problem = f"is corrupted or does not match the model ({problem})"
                else:
                    problem = f"is corrupted ({problem})"
                raise _Damaged(problem) from e
    if "meta" in restored and not isinstance(restored["meta"], dict):
        raise _Damaged("is corrupted (its meta is not a JSON object)")
    digests = restored.pop("digests", None)
    if digests is not None:
        if not isinstance(digests, dict):
            raise _Damaged("is corrupted (its digests are not a JSON object)")
        bad = [
            name
            for name, value in restored.items()
            if digests.get(name) != (_meta_digest(value) if name == "meta" else digest(value))
        ]
        if bad:
            raise _Damaged(f"is corrupted (digest mismatch in {', '.join(map(repr, bad))})")
    return restored


def _meta_digest(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


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
