"""rsjax.monitor: held-out votes and the collapse verdict (fit's use of them: tests/test_train.py)."""

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import models, monitor


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = rng.uniform(0, 1, (n, 16, 16, 1)).astype(np.float32)
    return images, labels


def test_collapse_reason_thresholds():
    summary = monitor.VoteSummary
    assert monitor.collapse_reason(summary(0.8, 3, 0.3), num_classes=10) is None
    assert "class 3" in monitor.collapse_reason(summary(0.8, 3, 0.95), num_classes=10)
    assert "chance" in monitor.collapse_reason(summary(0.115, 3, 0.3), num_classes=10)
    assert monitor.collapse_reason(summary(0.125, 3, 0.3), num_classes=10) is None
    assert monitor.collapse_reason(summary(0.1, 3, 0.3), num_classes=10, after_warmup=False) is None


def test_vote_summary_counts_every_noisy_copy():
    """A logits_fn that always says class 2: accuracy is the share of label 2, fraction 1."""

    def logits_fn(params, x):
        return jnp.zeros((x.shape[0], 4)).at[:, 2].set(1.0)

    images, labels = _data(20)
    got = monitor.vote_summary(
        jax.random.key(0), logits_fn, {}, images, labels, sigma=0.25, num_classes=4, num_noise=4
    )
    assert got == monitor.VoteSummary(float(np.mean(labels == 2)), 2, 1.0)


def test_smoothed_accuracy_is_the_vote_summary_of_the_models_logits_in_any_batch_size():
    """smoothed_accuracy (a flax model and its variables) and vote_accuracy (any logits_fn) are the
    accuracy of the same votes, and example i's noise comes from its index: batch_size (5, which
    leaves a ragged last batch, or all 12 at once) changes nothing."""
    images, labels = _data(12)
    model = models.make_model("lenet", num_classes=4)
    variables = models.init_variables(model, jax.random.key(0), images.shape[1:])
    logits_fn = models.make_logits_fn(model)
    options = dict(sigma=0.5, num_classes=4, num_noise=6)
    key = jax.random.key(3)
    summary = monitor.vote_summary(key, logits_fn, variables, images, labels, **options)
    assert 0.0 <= summary.accuracy <= 1.0 and 0.25 <= summary.top_class_fraction <= 1.0
    for batch_size in (5, 12):
        options["batch_size"] = batch_size
        got = monitor.smoothed_summary(key, model, variables, images, labels, **options)
        assert got == summary
        assert monitor.smoothed_accuracy(key, model, variables, images, labels, **options) == (
            summary.accuracy
        )
        assert monitor.vote_accuracy(key, logits_fn, variables, images, labels, **options) == (
            summary.accuracy
        )
