"""The Bayes (Tweedie / Miyasawa) estimator xhat, its denoising loss, and closed-form priors.

Y = X + N(0, sigma^2 I). The least-squares estimate of X from Y is

    xhat(y) = E[X | Y = y] = y + sigma^2 * grad_y log p_Y(y) = y + sigma^2 * psi(y),

so a learned score psi_theta (rsjax.score) gives a denoiser without ever sampling X. theta is learned by
minimising E_{x, eps} || x - xhat_theta(x + sigma eps) ||^2 (sum over pixels, mean over the batch), which
equals sigma^4 times denoising score matching; with an energy network it differentiates through
grad_y phi (a gradient of a gradient).

Closed forms (the oracles of the tests):
  Gaussian prior X ~ N(m, s^2 I):   psi(y) = (m - y) / (s^2 + sigma^2),
                                    xhat(y) = m + s^2 / (s^2 + sigma^2) (y - m).
  Two points X uniform on {-mu, mu}: xhat(y) = mu tanh(mu . y / sigma^2),
                                    psi(y) = (xhat(y) - y) / sigma^2.

References: Robbins 1956; Miyasawa 1961; Saremi & Hyvarinen, JMLR 2019 (DEEN); Saremi & Srivastava
2020; rsjax REFERENCE section 4.
"""

import functools
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnums=0)
def xhat(
    score_fn: Callable[..., jax.Array], y: jax.Array, sigma: float | jax.Array, params: Any = None
) -> jax.Array:
    """Tweedie's estimate y + sigma^2 psi(y), jitted (score_fn static) and vmappable.

    score_fn: score_fn(params, y) (rsjax.score.make_score_fn) with `params` traced, so one
    compilation serves every checkpoint; or a one-argument score_fn(y) when params is None (a
    closed-form score, or a partial over fixed parameters). Pass the same function object each call.
    sigma: the noise level the score was learned at, in [0,1] pixel units; may be traced.
    """
    psi = score_fn(y) if params is None else score_fn(params, y)
    return y + jnp.asarray(sigma, y.dtype) ** 2 * psi


def denoising_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    score_fn: Callable[[Any, jax.Array], jax.Array],
    sigma: float,
) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """E || x - xhat_theta(x + sigma eps) ||^2: sum over pixels, mean over the batch.

    Args:
      params: the score model's parameters (what is differentiated).
      model_state: passed through unchanged (score models have no batch norm); {}.
      batch: {"image": (B, *shape) float32 clean data in [0,1]} (a "label" is ignored).
      key: draws eps ~ N(0, I) of the batch's shape.
      score_fn: score_fn(params, y) (rsjax.score.make_score_fn).
    Returns:
      (loss, (model_state, {"loss", "mse", "psnr"})): mse per pixel and the PSNR in dB of the
      denoised batch (peak 1).
    """
    x = batch["image"]
    y = x + sigma * jax.random.normal(key, x.shape, x.dtype)
    denoised = y + sigma**2 * score_fn(params, y)
    per_example = jnp.sum((x - denoised).reshape(x.shape[0], -1) ** 2, axis=1)
    loss = per_example.mean()
    mse = loss / x[0].size
    return loss, (model_state, {"loss": loss, "mse": mse, "psnr": psnr(mse)})


def psnr(mse: float | jax.Array) -> jax.Array:
    """Peak signal-to-noise ratio in dB for images in [0,1]: 10 log10(1 / mse)."""
    return -10.0 * jnp.log10(mse)


def gaussian_prior_score(
    y: jax.Array,
    *,
    mean: float | jax.Array,
    prior_std: float | jax.Array,
    sigma: float | jax.Array,
) -> jax.Array:
    """psi(y) = (m - y) / (s^2 + sigma^2) of Y = X + sigma N(0, I), X ~ N(m, s^2 I)."""
    return (mean - y) / (prior_std**2 + sigma**2)


def gaussian_prior_xhat(
    y: jax.Array,
    *,
    mean: float | jax.Array,
    prior_std: float | jax.Array,
    sigma: float | jax.Array,
) -> jax.Array:
    """E[X | Y = y] = m + s^2 / (s^2 + sigma^2) (y - m) for X ~ N(m, s^2 I)."""
    return mean + prior_std**2 / (prior_std**2 + sigma**2) * (y - mean)


def two_point_xhat(y: jax.Array, *, mu: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """E[X | Y = y] = mu tanh(mu . y / sigma^2) for X uniform on {-mu, mu}; y (B, *mu.shape)."""
    axes = tuple(range(1, y.ndim))
    t = jnp.tanh(jnp.sum(y * mu, axis=axes) / sigma**2)
    return t.reshape((-1,) + (1,) * mu.ndim) * mu


def two_point_score(y: jax.Array, *, mu: jax.Array, sigma: float | jax.Array) -> jax.Array:
    """psi(y) = (mu tanh(mu . y / sigma^2) - y) / sigma^2 for X uniform on {-mu, mu}."""
    return (two_point_xhat(y, mu=mu, sigma=sigma) - y) / sigma**2


def denoise_metrics(
    key: jax.Array,
    score_fn: Callable[[Any, jax.Array], jax.Array],
    params: Any,
    images: np.ndarray | jax.Array,
    *,
    sigma: float,
    batch_size: int = 256,
) -> dict[str, float]:
    """Held-out denoising quality: {"mse", "psnr", "noisy_psnr"}, mse per pixel of xhat(x + sigma eps)
    over `images` (noise from `key`, batch b from fold_in(key, b)), and the PSNR of y itself."""
    total, count = 0.0, 0
    step = _denoise_eval_step(score_fn)
    for b, start in enumerate(range(0, len(images), batch_size)):
        x = jnp.asarray(images[start : start + batch_size])
        total += float(step(params, x, jax.random.fold_in(key, b), sigma))
        count += x.size
    mse = total / count
    return {
        "mse": mse,
        "psnr": float(psnr(mse)),
        "noisy_psnr": float(psnr(sigma**2)),
    }


_EVAL_STEPS: dict = {}


def _denoise_eval_step(score_fn):
    """A jitted (params, x, key, sigma) -> summed squared error, one per score_fn object."""
    if score_fn not in _EVAL_STEPS:

        @jax.jit
        def step(params, x, key, sigma):
            y = x + sigma * jax.random.normal(key, x.shape, x.dtype)
            return jnp.sum((x - (y + sigma**2 * score_fn(params, y))) ** 2)

        _EVAL_STEPS[score_fn] = step
    return _EVAL_STEPS[score_fn]
