"""SmoothAdv: an l2 PGD attack on the soft smoothed classifier, for adversarial training (ADRE-ADV).

The soft smoothed classifier of a base classifier f with noise level sigma is

    G(x) = E_eta[ softmax(f(x + eta)) ],   eta ~ N(0, sigma^2 I),

estimated with m noise draws eta_1..eta_m. SmoothAdv finds, for each example (x, y),

    x' = argmax_{||x' - x||_2 <= eps, x' in [0,1]^d}  L(x'),
    L(x') = -log( (1/m) sum_j softmax(f(x' + eta_j))_y ),

by projected gradient ascent: the noise eta_j is drawn ONCE per attack and kept fixed over the T steps,
x' starts at x, and each step moves 2 eps / T along the per-example l2-normalised gradient of L, then
projects. The log of the mean (not the mean of the logs) is what makes this an attack on the smoothed
classifier rather than on f under Gaussian augmentation.

Projection: after every step, first onto the eps-ball around x (scale delta = x' - x to norm eps when
it is longer), then onto the box (clip x' to [0,1]). In that order the result lies in both sets:
the clip is last, so 0 <= x' <= 1 holds exactly in float; and because x itself lies in the box,
clipping only moves each coordinate of x' towards x_k, so |x'_k - x_k| can only shrink and the ball
constraint survives the clip (up to float rounding of the scaling, ~1e-7 relative). Neither order is the
exact Euclidean projection onto the intersection; Salman et al.'s code clips first and then renorms,
which is also feasible (renorming is a convex combination of x and a box point), but leaves the box
constraint to rounding rather than to an exact clip.

A zero gradient (a saturated softmax, or a model that ignores its input) gives a zero step, never NaN:
the normalisation divides by the norm only where it is positive (and rescales by the largest entry
first, so a tiny gradient's squared norm does not underflow to 0). Salman et al.'s code draws a random
direction instead; a zero step keeps the attack deterministic given its noise.

Models with batch norm: the attack runs the model in EVALUATION mode. The caller passes the eval-form
`logits_fn(variables, images)` (e.g. `models.make_logits_fn(model)` with the current variables), so
the attack neither reads batch statistics of the noisy batch nor updates the running averages, and each
example's gradient is independent of the others (which is what lets one gradient of the summed loss
give every example's gradient).

Gradients: the attacked point is a constant for the caller. The inputs are wrapped in stop_gradient, so
a training loss evaluated at x' differentiates only through its own forward pass, never through the
attack (and no second-order derivative is traced through the attack loop).

Shapes: x (B, H, W, C) float32 in [0,1]; y (B,) int; noise (B, m, H, W, C); the m noisy copies of
every example go through the model as ONE batch of B * m inputs, rows i * m + j (the layout of
`losses.noisy_copies`).

References: Salman, Li, Razenshteyn, Zhang, Zhang, Bubeck & Yang, "Provably robust deep learning via
adversarially trained smoothed classifiers", NeurIPS 2019 (SmoothAdv, eps warm-up); rsjax REFERENCE
section 3.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

# logits_fn(params, images): (batch, H, W, C) float32 in [0,1] -> (batch, K) logits, evaluation mode.
LogitsFn = Callable[[Any, jax.Array], jax.Array]


def attack_noise(
    key: jax.Array, x: jax.Array, *, sigma: float | jax.Array, num_noise: int
) -> jax.Array:
    """The fixed noise of one attack: eta_ij ~ N(0, sigma^2 I), shape (B, num_noise, H, W, C)."""
    shape = (x.shape[0], num_noise) + x.shape[1:]
    return sigma * jax.random.normal(key, shape, x.dtype)


def soft_smoothed_ce(
    logits_fn: LogitsFn, params: Any, x: jax.Array, y: jax.Array, noise: jax.Array
) -> jax.Array:
    """Per-example cross-entropy of the soft smoothed classifier, (B,):

        -log( (1/m) sum_j softmax(f(x_i + noise_ij))_{y_i} ),

    computed stably as -(logsumexp_j log_softmax(f(x_i + noise_ij))_{y_i} - log m).

    Args:
      x: (B, H, W, C); y: (B,) int; noise: (B, m, H, W, C), already scaled by sigma.
    """
    batch, m = noise.shape[:2]
    if noise.shape[2:] != x.shape[1:] or noise.shape[0] != x.shape[0]:
        raise ValueError(f"noise of shape {noise.shape} does not fit images of shape {x.shape}")
    noisy = (x[:, None] + noise).reshape((batch * m,) + x.shape[1:])
    log_probs = jax.nn.log_softmax(logits_fn(params, noisy).reshape(batch, m, -1), axis=-1)
    log_p_y = jnp.take_along_axis(log_probs, y.reshape(batch, 1, 1), axis=-1)[..., 0]
    return -(jax.nn.logsumexp(log_p_y, axis=1) - jnp.log(m).astype(log_p_y.dtype))


def l2_normalize(g: jax.Array) -> jax.Array:
    """g_i / ||g_i||_2 for every example i (leading axis); rows that are exactly 0 stay 0 (no NaN)."""
    flat = g.reshape(g.shape[0], -1)
    scale = jnp.max(jnp.abs(flat), axis=1, keepdims=True)
    flat = flat / jnp.where(scale > 0, scale, 1)  # entries in [-1, 1]: the squares cannot underflow
    norm = jnp.linalg.norm(flat, axis=1, keepdims=True)  # >= 1 where scale > 0
    return (flat / jnp.where(norm > 0, norm, 1)).reshape(g.shape)


def project(x_adv: jax.Array, x: jax.Array, eps: float | jax.Array) -> jax.Array:
    """Onto the l2 ball of radius eps around x (per example), then clipped to [0,1]^d.

    The result is in the box exactly and in the ball up to float rounding (see the module docstring).
    """
    delta = (x_adv - x).reshape(x.shape[0], -1)
    norm = jnp.linalg.norm(delta, axis=1, keepdims=True)
    factor = jnp.where(norm > eps, eps / jnp.where(norm > eps, norm, 1), 1)
    return jnp.clip(x + (factor * delta).reshape(x.shape), 0.0, 1.0)


def smoothadv_from_noise(
    logits_fn: LogitsFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    noise: jax.Array,
    *,
    eps: float | jax.Array,
    num_steps: int,
) -> jax.Array:
    """SmoothAdv with given fixed noise (B, m, H, W, C) (from `attack_noise`); returns x' (B, H, W, C).

    For a training step that wants to reuse the attack's noise at x' (as Salman et al.'s code does),
    or for a test that needs to know eta. eps may be traced; eps == 0 returns x (for x in [0,1]).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    # The attacked point is a constant for any outer differentiation (see the module docstring).
    params, x, y, noise, eps = jax.lax.stop_gradient((params, x, y, noise, eps))
    eps = jnp.asarray(eps, x.dtype)
    step_size = 2 * eps / num_steps

    def total_loss(x_adv):
        # Each example's loss depends only on its own input (eval mode), so the gradient of the
        # sum is every example's own gradient.
        return soft_smoothed_ce(logits_fn, params, x_adv, y, noise).sum()

    # A Python loop: the T steps are unrolled into the trace. Inside a lax.fori_loop XLA:CPU ran the
    # convolutions' backward pass about 3x slower (benchmarks/attack_loop.py); T is small (1-10).
    x_adv = x
    for _ in range(num_steps):
        direction = l2_normalize(jax.grad(total_loss)(x_adv))
        x_adv = project(x_adv + step_size * direction, x, eps)
    return x_adv


def smoothadv_attack(
    key: jax.Array,
    logits_fn: LogitsFn,
    params: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    eps: float | jax.Array,
    sigma: float | jax.Array,
    num_steps: int,
    num_noise: int,
) -> jax.Array:
    """SmoothAdv (Salman et al. 2019) against the soft smoothed classifier; see the module docstring.

    Args:
      key: draws the fixed noise eta (B, num_noise, H, W, C) once for the whole attack.
      logits_fn: evaluation-mode (params, images) -> logits; batch-norm models use running averages.
      params: pytree (variables) passed to logits_fn; traced, treated as a constant.
      x: (B, H, W, C) float32 images in [0,1]; y: (B,) int labels.
      eps: l2 radius in [0,1] pixel units, >= 0; may be a traced scalar (eps warm-up).
      sigma: noise standard deviation in pixel units; may be traced.
      num_steps: T, steps of size 2 eps / T. num_noise: m, noise draws per example.
    Returns:
      x' (B, H, W, C) with ||x'_i - x_i||_2 <= eps and 0 <= x' <= 1; no gradient flows through it.
      Not jitted here (it traces inside a caller's jit); `make_smoothadv_attack` gives a jitted one.
    """
    if num_noise < 1:
        raise ValueError(f"num_noise must be >= 1, got {num_noise}")
    noise = attack_noise(key, x, sigma=sigma, num_noise=num_noise)
    return smoothadv_from_noise(logits_fn, params, x, y, noise, eps=eps, num_steps=num_steps)


def make_smoothadv_attack(
    logits_fn: LogitsFn, *, num_steps: int, num_noise: int
) -> Callable[..., jax.Array]:
    """A jitted attack_fn(key, params, x, y, *, eps, sigma) -> x' running `smoothadv_attack`.

    logits_fn, num_steps and num_noise are fixed (static); params, x, y, eps and sigma are traced, so
    one compilation serves every checkpoint and every eps of a warm-up schedule. eps and sigma are
    cast to float32 arrays before the jitted call, so Python floats and arrays share that compilation.
    """
    if num_steps < 1 or num_noise < 1:
        raise ValueError(f"num_steps and num_noise must be >= 1, got {num_steps}, {num_noise}")

    @jax.jit
    def jitted(key, params, x, y, eps, sigma):
        return smoothadv_attack(
            key,
            logits_fn,
            params,
            x,
            y,
            eps=eps,
            sigma=sigma,
            num_steps=num_steps,
            num_noise=num_noise,
        )

    def attack_fn(key, params, x, y, *, eps, sigma):
        eps, sigma = jnp.asarray(eps, jnp.float32), jnp.asarray(sigma, jnp.float32)
        return jitted(key, params, x, y, eps, sigma)

    return attack_fn


def eps_schedule(step: int | jax.Array, *, eps: float | jax.Array, warmup_steps: int) -> jax.Array:
    """Linear warm-up: eps * min(1, step / warmup_steps) (0 at step 0), then eps; a float32 scalar.

    `step` counts whatever unit the caller warms up over (Salman et al. warm up over epochs); it may be
    traced. warmup_steps <= 0 means no warm-up.
    """
    eps = jnp.asarray(eps, jnp.float32)
    if warmup_steps <= 0:
        return eps
    return eps * jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
