"""Training losses as pure functions of (params, model_state, batch, key) with keyword options.

Every loss draws k noisy copies x_ij = x_i + sigma * eps_ij of each example, runs them through the
model as ONE batch of B * k inputs, and returns (loss, (new_model_state, metrics)). model_state holds
batch-norm statistics ({} for models without them). Noise is in [0,1] pixel units.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (Gaussian augmentation); rsjax REFERENCE section 3.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

# apply_fn(params, model_state, x, train) -> (logits, new_model_state)
TrainApplyFn = Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, Any]]


def make_train_apply(model) -> TrainApplyFn:
    """The (params, model_state, x, train) -> (logits, model_state) form of a Flax model."""

    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **({"batch_stats": model_state} if model_state else {})}
        if train and model_state:
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return model.apply(variables, x, train=train), model_state

    return apply_fn


def noisy_copies(key: jax.Array, x: jax.Array, *, sigma: float, k: int) -> jax.Array:
    """(B, H, W, C) -> (B * k, H, W, C): k copies of each image plus N(0, sigma^2) noise.

    Copies of one example are adjacent: row i * k + j is x_i + sigma * eps_ij.
    """
    repeated = jnp.repeat(x, k, axis=0)
    return repeated + sigma * jax.random.normal(key, repeated.shape, repeated.dtype)


def gaussian_augmentation_loss(
    params, model_state, batch, key, *, apply_fn: TrainApplyFn, sigma: float, k: int = 1
):
    """Cohen et al.'s noise-augmented cross-entropy: mean over i, j of CE(f(x_i + sigma eps_ij), y_i).

    Args:
      batch: {"image": (B, H, W, C) float32 in [0,1], "label": (B,) int}.
      k: noisy copies per example (one vmapped batch of B * k inputs).
    Returns:
      (loss, (new_model_state, {"loss", "ce", "accuracy"})), accuracy on the noisy copies.
    """
    images, labels = batch["image"], batch["label"]
    logits, model_state = apply_fn(
        params, model_state, noisy_copies(key, images, sigma=sigma, k=k), True
    )
    labels_k = jnp.repeat(labels, k)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_k).mean()
    accuracy = (logits.argmax(-1) == labels_k).mean()
    return ce, (model_state, {"loss": ce, "ce": ce, "accuracy": accuracy})


LOSSES = {"gaussian": gaussian_augmentation_loss}
