"""Held-out monitoring of training: the smoothed accuracy of noisy-copy majority votes, and the
verdict on whether a classifier has collapsed (one class, or chance accuracy).

These are cheap training-time estimates, with no abstention and no confidence bound; certify with
rsjax.certify for guarantees. rsjax.train.fit and rsjax.empirical_bayes log `evaluation_record` after
every epoch and warn (CollapseWarning) or stop (CollapseError) on a collapse.
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import numpy as np

from rsjax import models, votes


class CollapseError(RuntimeError):
    """rsjax.train.fit(..., fail_on_collapse=True): the held-out votes show a collapsed classifier (see
    `collapse_reason`); the checkpoint of that epoch was saved before raising."""


class CollapseWarning(RuntimeWarning):
    """The held-out votes after an epoch show a collapsed classifier (see `collapse_reason`)."""


class VoteSummary(NamedTuple):
    """One pass of held-out votes: accuracy (fraction of examples whose majority vote is the label),
    top_class (the class that received the most votes over all examples and noisy copies) and
    top_class_fraction (its share of all num_examples * num_noise votes)."""

    accuracy: float
    top_class: int
    top_class_fraction: float


def smoothed_accuracy(
    key: jax.Array,
    model: nn.Module,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    **options: Any,
) -> float:
    """Fraction of examples whose majority vote over `num_noise` noisy copies is the label.

    A cheap training-time estimate of the smoothed classifier's clean accuracy (no abstention, no
    confidence bound): certify with rsjax.certify for guarantees. `options` are vote_summary's
    (sigma, num_classes, num_noise, mesh=None, batch_size=64).
    """
    return smoothed_summary(key, model, variables, images, labels, **options).accuracy


def smoothed_summary(
    key: jax.Array,
    model: nn.Module,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    **options: Any,
) -> VoteSummary:
    """`smoothed_accuracy` and the most common predicted class from the same votes (VoteSummary)."""
    return vote_summary(key, _eval_logits_fn(model), variables, images, labels, **options)


def vote_accuracy(
    key: jax.Array,
    logits_fn: votes.ApplyFn,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    **options: Any,
) -> float:
    """`smoothed_accuracy` of any logits_fn(params, x) (e.g. an empirical Bayes classifier)."""
    return vote_summary(key, logits_fn, params, images, labels, **options).accuracy


def vote_summary(
    key: jax.Array,
    logits_fn: votes.ApplyFn,
    params: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    sigma: float,
    num_classes: int,
    num_noise: int,
    mesh: jax.sharding.Mesh | None = None,
    batch_size: int = 64,
) -> VoteSummary:
    """VoteSummary of any logits_fn(params, x) from counts of `num_noise` noisy copies per example
    (example i's noise from its index i, as in certification: batch_size changes nothing).

    images: (N, H, W, C) float32 in [0, 1]; labels: (N,) int."""
    correct = 0
    totals = np.zeros(num_classes, np.int64)
    for start in range(0, len(labels), batch_size):
        stop = min(start + batch_size, len(labels))
        counts = votes.count_votes(
            key,
            logits_fn,
            params,
            images[start:stop],
            np.arange(start, stop),
            sigma=sigma,
            num_classes=num_classes,
            num_samples=num_noise,
            stream=votes.ESTIMATION,
            mesh=mesh,
        )
        counts = np.asarray(counts)
        correct += int((counts.argmax(axis=1) == labels[start:stop]).sum())
        totals += counts.sum(axis=0).astype(np.int64)
    top = int(totals.argmax())
    return VoteSummary(correct / len(labels), top, float(totals[top] / max(totals.sum(), 1)))


_EVAL_FNS: dict = {}


def _eval_logits_fn(model):
    """One logits_fn object per model, so that vote counting compiles once per shape."""
    if model not in _EVAL_FNS:
        _EVAL_FNS[model] = models.make_logits_fn(model)
    return _EVAL_FNS[model]


def collapse_reason(
    summary: VoteSummary, *, num_classes: int, after_warmup: bool = True
) -> str | None:
    """Why the held-out votes of an epoch look like a collapsed classifier, or None.

    Collapse: top_class_fraction > 0.9 (more than 90% of all noisy-copy predictions on one class;
    meant for roughly balanced held-out sets, where a working classifier spreads its votes), or,
    when after_warmup, smoothed accuracy <= 1/num_classes + 0.02 (within 2 points of chance or
    below it: a network that died, e.g. the mnist5k LeNet at sigma 1.0 with lr 0.02).
    """
    reasons = []
    if summary.top_class_fraction > 0.9:
        reasons.append(
            f"{summary.top_class_fraction:.1%} of the held-out noisy-copy predictions are class "
            f"{summary.top_class} (> 90%)"
        )
    chance = 1.0 / num_classes
    if after_warmup and summary.accuracy <= chance + 0.02:
        reasons.append(
            f"smoothed accuracy {summary.accuracy:.3f} is within 2 points of chance {chance:.3f}"
        )
    return "; ".join(reasons) or None


def evaluation_record(
    summary: VoteSummary,
    *,
    num_classes: int,
    after_warmup: bool,
    eval_examples: int,
    eval_noise: int,
) -> dict:
    """The metrics record of one held-out evaluation (a VoteSummary) with its collapse verdict:
    smoothed_accuracy, top_class_fraction, top_class, eval_examples, eval_noise, collapsed and,
    when collapsed, collapse_reason (see collapse_reason)."""
    reason = collapse_reason(summary, num_classes=num_classes, after_warmup=after_warmup)
    return {
        "smoothed_accuracy": summary.accuracy,
        "top_class_fraction": summary.top_class_fraction,
        "top_class": summary.top_class,
        "eval_examples": eval_examples,
        "eval_noise": eval_noise,
        "collapsed": reason is not None,
        **({"collapse_reason": reason} if reason else {}),
    }


def held_out_votes(
    key: jax.Array,
    logits_fn: Callable,
    variables: Any,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    sigma: float,
    num_classes: int,
    num_noise: int = 32,
    max_examples: int = 500,
    mesh: jax.sharding.Mesh | None = None,
    after_warmup: bool = True,
) -> dict:
    """rsjax.train.fit's held-out evaluation record: the votes of logits_fn(variables, x) on `num_noise` noisy
    copies of each of the first `max_examples` examples (vote_summary: smoothed
    accuracy, top_class, top_class_fraction) with the collapse verdict
    (evaluation_record; chance accuracy counts only when after_warmup)."""
    summary = vote_summary(
        key,
        logits_fn,
        variables,
        images[:max_examples],
        labels[:max_examples],
        sigma=sigma,
        num_classes=num_classes,
        num_noise=num_noise,
        mesh=mesh,
    )
    return evaluation_record(
        summary,
        num_classes=num_classes,
        after_warmup=after_warmup,
        eval_examples=min(max_examples, len(labels)),
        eval_noise=num_noise,
    )
