"""Certification runs over a dataset: counts once per example batch, every requested certifier on the
host, rows appended to one resumable TSV per method (see rsjax.records: one writer per TSV, every row
checked on a resume, repairs by truncation only), progress with throughput.

The selection and estimation counts are drawn once and shared by the methods: each method's
certificate is valid on its own (its guarantee is per method, as for separate runs with the same
noise), which halves the cost of comparing CERTIFY with T-CERTIFY.
"""

import contextlib
import sys
import time
from typing import Any, Callable, Mapping, Sequence, Sized

import jax
import numpy as np

from rsjax import bounds, progress, records, sequential, sharding, votes
from rsjax.certify import (
    METHODS,
    certify_from_counts,
    check_batch_size,
    check_images,
    check_samples,
)


def certify_dataset(
    key: jax.Array,
    logits_fn: Callable,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int],
    *,
    outputs: Mapping[str, str],
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    chunk_size: int | None = None,
    batch_size: int = 8,
    settings: dict | None = None,
    sidecar: dict | None = None,
    index_settings: Sequence[str] = (),
    alpha_split: str = "selection",
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = True,
) -> dict[str, str]:
    """Certifies images[indices] and writes one TSV per method; resumes files already started.

    Each TSV is locked for the whole run (a second process raises locks.OutputLockedError at once) and
    every row already there is checked before the run continues after the last one (a bad row, a
    damaged sidecar or other settings raise records.RunRecordError, touching nothing). A rerun whose
    indices extend the recorded ones (the old list a prefix of the new) continues the file.

    Args:
      key: certification root key; example i's noise comes from (key, i), i its dataset index.
      logits_fn, params: the base classifier logits_fn(params, x).
      images, labels: the whole split (N, H, W, C) float32 in [0,1] and (N,) int.
      indices: dataset indices to certify, in order: at least one, distinct, in [0, N).
      outputs: {method: tsv path}, methods from rsjax.certify.METHODS.
      settings: extra JSON-able settings that must match for a resume (dataset, checkpoint hash, ...).
      sidecar: extra JSON-able facts recorded in each sidecar (environment, checkpoint path, ...).
      index_settings: names of `settings` that only choose the indices (a script's --max): they may
        change when the indices extend the recorded ones.
    Returns:
      {method: path of its TSV}.
    """
    sigma = bounds.check_sigma(sigma)
    alpha = bounds.check_alpha(alpha)
    n0 = check_samples("n0", n0)
    n = check_samples("n", n)
    batch_size = check_batch_size(batch_size)
    bounds.warn_if_never_certifies(n, alpha)
    indices = check_indices(indices, images, labels)
    base = dict(settings or {}, sigma=sigma, n0=n0, n=n, alpha=alpha)
    for method in outputs:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    with contextlib.ExitStack() as held:
        # Files are written (and locked) by process 0 alone; the others follow its resume point.
        tsvs = {}
        if sharding.is_primary():
            for method, path in outputs.items():
                extra = {"alpha_split": alpha_split} if method == "tcertify" else {}
                tsvs[method] = held.enter_context(
                    records.CertificationTSV(
                        path,
                        dict(base, method=method, **extra),
                        indices=indices,
                        num_classes=num_classes,
                        index_settings=index_settings,
                    )
                )
        done = _consistent_prefix(tsvs) if tsvs else 0
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
        if show_progress:
            _report_resume(tsvs.values(), done)
        todo = indices[done:]

        bar = (
            progress.Progress(len(indices), "certify", unit="img", done=done)
            if show_progress and tsvs
            else None
        )
        t_start = time.perf_counter()
        samples = 0
        for start in range(0, len(todo), batch_size):
            rows = np.asarray(todo[start : start + batch_size])
            x = check_images(images[rows])
            t0 = time.perf_counter()
            common = dict(sigma=sigma, num_classes=num_classes, chunk_size=chunk_size, mesh=mesh)
            counts0 = votes.count_votes(
                key, logits_fn, params, x, rows, num_samples=n0, stream=votes.SELECTION, **common
            )
            counts = votes.count_votes(
                key, logits_fn, params, x, rows, num_samples=n, stream=votes.ESTIMATION, **common
            )
            certs = {
                method: certify_from_counts(
                    counts0,
                    counts,
                    sigma=sigma,
                    alpha=alpha,
                    method=method,
                    alpha_split=alpha_split,
                )
                for method in outputs
            }
            per_example = (time.perf_counter() - t0) / len(rows)
            for method, tsv in tsvs.items():
                cert = certs[method]
                tsv.append(
                    (int(i), int(labels[i]), int(p), float(r), int(p == labels[i]), per_example)
                    for i, p, r in zip(rows, cert.prediction, cert.radius, strict=True)
                )
            samples += len(rows) * (n0 + n)
            if bar:
                rate = samples / (time.perf_counter() - t_start)
                bar.update(len(rows), extra=f"{rate:,.0f} noise samples/s")
        wall = time.perf_counter() - t_start
        for tsv in tsvs.values():
            tsv.write_sidecar(
                dict(
                    sidecar or {},
                    examples_done=len(tsv.done),
                    complete=len(tsv.done) == len(indices),
                    last_session_wall_s=wall,
                    last_session_noise_samples_per_s=samples / wall if wall else None,
                )
            )
    return {method: str(path) for method, path in outputs.items()}


def check_indices(indices: Sequence[int], images: Sized, labels: Sized) -> list[int]:
    """Validates the dataset indices of a run: at least one, distinct integers in [0, N), with N
    images and N labels. Returns them as a list of ints."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    values = np.asarray(list(indices))
    if values.size == 0:
        raise ValueError("no images to certify: indices is empty (a --max of 0?)")
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
        raise TypeError(
            f"indices must be a sequence of integers, got {values.dtype} {values.shape}"
        )
    if values.min() < 0 or values.max() >= len(labels):
        raise ValueError(f"indices must lie in [0, {len(labels)}), the images of the split")
    if len(np.unique(values)) != len(values):
        raise ValueError("indices has duplicates: an image would be certified, and written, twice")
    return [int(i) for i in values]


def _report_resume(tsvs, done: int) -> None:
    """'resuming: N of M rows done (PATH)' on stderr for each TSV that had rows."""
    for tsv in tsvs:
        if done or tsv.extended_from is not None:
            extended = (
                f"; the run grows from {tsv.extended_from} to {len(tsv.indices)} images"
                if tsv.extended_from is not None
                else ""
            )
            print(
                f"resuming: {done} of {len(tsv.indices)} rows done ({tsv.path}{extended})",
                file=sys.stderr,
                flush=True,
            )


def _consistent_prefix(tsvs) -> int:
    """Number of leading indices every TSV has; longer files are cut back to it, by truncation at the
    byte after its last row kept (the rows kept are never rewritten, nor reordered)."""
    done = min(len(tsv.done) for tsv in tsvs.values())
    for tsv in tsvs.values():
        tsv.keep(done)
    return done


def certify_dataset_sequential(
    key: jax.Array,
    logits_fn: Callable,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Sequence[int],
    *,
    output: str,
    sigma: float,
    n0: int,
    n_max: int,
    alpha: float,
    num_classes: int,
    radii: Sequence[float] | None = None,
    radius_tol: float | None = None,
    bound: str = "union",
    chunk_size: int | None = None,
    batch_size: int = 8,
    settings: dict | None = None,
    sidecar: dict | None = None,
    index_settings: Sequence[str] = (),
    mesh: jax.sharding.Mesh | None = None,
    show_progress: bool = True,
) -> str:
    """Sequential CERTIFY (rsjax.sequential) of images[indices] into one resumable TSV.

    The TSV has Cohen's six columns and `num_samples` (noise draws used, n0 included) as a seventh;
    `time` is the example's share of the device time (its seconds in a slot / batch_size). Images
    stop in any order; rows are written in the order of `indices` as soon as every earlier image has
    stopped, so a killed run resumes after its last written row and, since each draw's noise depends
    only on (key, index, draw), finishes with the rows of an uninterrupted run. The sidecar records
    the procedure (bound, looks, their levels, the goal); a resume with other settings is refused,
    one that extends the indices continues the file. The TSV is locked and resumed as in
    `certify_dataset`.

    Args as `certify_dataset`, with n_max, radii / radius_tol and bound as in
    rsjax.sequential.make_plan, and one output path. Returns the TSV's path.
    """
    n0 = check_samples("n0", n0)
    n_max = check_samples("n_max", n_max)
    batch_size = check_batch_size(batch_size)
    plan = sequential.make_plan(
        sigma=sigma,
        alpha=alpha,
        n0=n0,
        n_max=n_max,
        radii=radii,
        radius_tol=radius_tol,
        bound=bound,
    )
    indices = check_indices(indices, images, labels)
    with contextlib.ExitStack() as held:
        tsv = None
        if sharding.is_primary():  # files are written (and locked) by process 0 alone
            meta = dict(settings or {}, sigma=plan.sigma, n0=plan.n0, alpha=plan.alpha)
            meta.update(method="cohen", **plan.describe())
            tsv = held.enter_context(
                records.CertificationTSV(
                    output,
                    meta,
                    indices=indices,
                    header=records.SEQUENTIAL_HEADER,
                    num_classes=num_classes,
                    index_settings=index_settings,
                )
            )
        done = len(tsv.done) if tsv else 0
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            done = int(multihost_utils.broadcast_one_to_all(np.int32(done)))
        if show_progress:
            _report_resume([tsv] if tsv else [], done)
        _run_sequential(
            key,
            logits_fn,
            params,
            images,
            labels,
            np.asarray(indices[done:], dtype=np.int64),
            tsv,
            plan,
            num_classes=num_classes,
            chunk_size=chunk_size,
            batch_size=batch_size,
            sidecar=sidecar,
            mesh=mesh,
            bar=(
                progress.Progress(len(indices), "certify", unit="img", done=done)
                if show_progress and tsv
                else None
            ),
        )
    return str(output)


def _run_sequential(
    key,
    logits_fn,
    params,
    images,
    labels,
    todo,
    tsv,
    plan,
    *,
    num_classes,
    chunk_size,
    batch_size,
    sidecar,
    mesh,
    bar,
):
    """Certifies images[todo] with the slot scheduler, appending rows to `tsv` (None on processes
    other than 0) in the order of `todo`, then writes the sidecar."""
    stopped: dict[int, tuple] = {}
    written = 0
    finished = 0
    used = 0
    t_start = time.perf_counter()

    def on_stop(position, cert, seconds):
        nonlocal written, used, finished
        i = int(todo[position])
        label = int(labels[i])
        stopped[position] = (
            i,
            label,
            cert.prediction,
            cert.radius,
            int(cert.prediction == label),
            seconds / batch_size,
            cert.num_samples,
        )
        used += cert.num_samples
        finished += 1
        ready = []
        while written in stopped:
            ready.append(stopped.pop(written))
            written += 1
        if tsv and ready:
            tsv.append(ready)
        if bar:
            rate = used / (time.perf_counter() - t_start)
            bar.update(1, extra=f"{rate:,.0f} noise samples/s, {used / finished:,.0f} per img")

    sequential.run_slots(
        key,
        logits_fn,
        params,
        _Selected(images, todo),
        votes.check_indices(todo, len(todo)),
        plan,
        num_classes=num_classes,
        chunk_size=chunk_size,
        batch_size=batch_size,
        mesh=mesh,
        on_stop=on_stop,
    )
    wall = time.perf_counter() - t_start
    if tsv:
        tsv.write_sidecar(
            dict(
                sidecar or {},
                examples_done=len(tsv.done),
                complete=len(tsv.done) == len(tsv.indices),
                last_session_wall_s=wall,
                last_session_noise_samples=used,
                last_session_noise_samples_per_s=used / wall if wall else None,
            )
        )


class _Selected:
    """images[todo] read on access, so that a lazy dataset (rsjax.imagefolder.FolderImages) is
    decoded a batch at a time, never whole: x[a:b] is check_images(images[todo[a:b]])."""

    def __init__(self, images, todo):
        self.images, self.todo = images, np.asarray(todo, np.int64)
        self.shape = (len(self.todo), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, rows) -> np.ndarray:
        return check_images(self.images[self.todo[rows]])
