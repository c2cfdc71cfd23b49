"""Walk-jump sampling and walk-jump classification on a learned smoothed density.

Walk: underdamped Langevin dynamics on p_Y, Y = X + N(0, sigma^2 I), with the learned score
psi(y) = grad log p_Y(y) (rsjax.score). With step delta, friction gamma, inverse mass u and fresh
xi ~ N(0, I) each step (REFERENCE section 4):

    y += delta/2 v;  v += u delta/2 psi(y);
    v = exp(-gamma delta) v + u delta/2 psi(y) + sqrt(u (1 - exp(-2 gamma delta))) xi;  y += delta/2 v.

Jump: xhat(y) = y + sigma^2 psi(y) (rsjax.tweedie), the Bayes estimate of the clean sample. The walk
stays in the smooth Y-space, where mixing is easy; the jumps land near the data manifold.

Walk-jump classification: start at y0 = x + sigma eps, walk K steps, jump, classify: the base
classifier h(y0) = f(xhat(walk_K(y0))). Certification: the walk's noise is seeded from a fingerprint of
the bits of y0 itself, so h is a deterministic function of the noisy input and CERTIFY / PREDICT apply
to it unchanged, at sigma, with the usual guarantee (nothing about the walk needs to be trusted: any
fixed base classifier is covered). This also satisfies REFERENCE section 4's condition that the walk's
randomness be independent of x.

Speed: the walk's steps are a lax.scan; `unroll` (lax.scan's) traces several per loop trip, True all
of them. On XLA:CPU with a convolutional energy the score psi = -grad phi puts backward convolutions
in the loop body, which XLA:CPU runs more slowly inside a loop than unrolled: the walk is 1.3-1.4x
faster unrolled at 4 and 10 steps (energy_mnist, 64 inputs), and no faster with the MLP energy
(benchmarks/README.md, "The Langevin walk's steps"). Full unrolling traces every step, so its
compile time grows with the number of steps (2.4 s against 1.6 s at 10): the default stays the
loop. Not measured on an accelerator.

References: Saremi & Hyvarinen, JMLR 2019 (walk-jump sampling); Saremi & Srivastava 2020 (walk-jump
classification); Cheng et al. 2018 (underdamped Langevin splitting); rsjax REFERENCE section 4.
"""

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from rsjax import score as score_lib


class WalkState(NamedTuple):
    """Position y and velocity v of the chain, both of the samples' shape (B, *example_shape)."""

    y: jax.Array
    v: jax.Array


class WalkJumpSamples(NamedTuple):
    """jumps: (num_jumps, B, *shape) xhat after each walk segment; state: the chain at the end."""

    jumps: jax.Array
    state: WalkState


def _check(delta, gamma, u, num_steps):
    if not delta > 0 or not u > 0 or not gamma >= 0:
        raise ValueError(f"need delta > 0, u > 0, gamma >= 0; got {delta}, {u}, {gamma}")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps}")


def _walk(noise_fn, score_fn, state: WalkState, *, delta, gamma, u, num_steps, offset=0, unroll=1):
    """num_steps Langevin steps; noise_fn(t) is xi of step t (t counts from `offset`); unroll is
    lax.scan's (True: the steps traced one after another)."""
    decay = math.exp(-gamma * delta)
    kick = u * delta / 2
    diffusion = math.sqrt(u * (1.0 - math.exp(-2.0 * gamma * delta)))

    def step(carry, t):
        y, v = carry
        y = y + delta / 2 * v
        psi = score_fn(y)
        v = v + kick * psi
        v = decay * v + kick * psi + diffusion * noise_fn(t)
        y = y + delta / 2 * v
        return WalkState(y, v), None

    steps = offset + jnp.arange(num_steps, dtype=jnp.uint32)
    final, _ = jax.lax.scan(step, state, steps, unroll=unroll)
    return final


@functools.partial(
    jax.jit, static_argnames=("score_fn", "num_steps", "delta", "gamma", "u", "unroll")
)
def walk(
    key: jax.Array,
    score_fn: Callable[[jax.Array], jax.Array],
    state: WalkState,
    *,
    delta: float,
    gamma: float = 0.5,
    u: float = 1.0,
    num_steps: int,
    unroll: int | bool = 1,
) -> WalkState:
    """num_steps underdamped Langevin steps (a lax.scan) from `state`; step t's xi from
    fold_in(key, t). score_fn: y -> psi(y) (e.g. functools.partial(score_fn, params)); delta,
    gamma, u are Python floats (static: each new value compiles once). unroll: lax.scan's, the
    steps traced per loop trip (True: all of them, no loop; module docstring, Speed)."""
    _check(delta, gamma, u, num_steps)

    def noise_fn(t):
        return jax.random.normal(jax.random.fold_in(key, t), state.y.shape, state.y.dtype)

    return _walk(
        noise_fn,
        score_fn,
        state,
        delta=delta,
        gamma=gamma,
        u=u,
        num_steps=num_steps,
        unroll=unroll,
    )


@functools.partial(
    jax.jit,
    static_argnames=("score_fn", "num_jumps", "steps_per_jump", "delta", "gamma", "u", "unroll"),
)
def walk_jump_sample(
    key: jax.Array,
    score_fn: Callable[[jax.Array], jax.Array],
    y0: jax.Array,
    *,
    sigma: float | jax.Array,
    num_jumps: int,
    steps_per_jump: int,
    delta: float,
    gamma: float = 0.5,
    u: float = 1.0,
    unroll: int | bool = 1,
) -> WalkJumpSamples:
    """Walk-jump sampling from y0 (B, *shape), velocity starting at 0: num_jumps segments of
    steps_per_jump walk steps, each followed by a jump xhat(y). Typical on MNIST: delta = 0.5 sigma,
    gamma = 0.5, u = 1, 10 steps per jump. unroll applies to each segment's steps (as in `walk`);
    the segments stay a loop. Returns the jumps (num_jumps, B, *shape) and the chain."""
    _check(delta, gamma, u, steps_per_jump)
    if int(num_jumps) != num_jumps or num_jumps < 1:
        raise ValueError(f"num_jumps must be an integer >= 1, got {num_jumps}")

    def noise_fn(t):
        return jax.random.normal(jax.random.fold_in(key, t), y0.shape, y0.dtype)

    def segment(state, j):
        state = _walk(
            noise_fn,
            score_fn,
            state,
            delta=delta,
            gamma=gamma,
            u=u,
            num_steps=steps_per_jump,
            offset=j * steps_per_jump,
            unroll=unroll,
        )
        return state, state.y + jnp.asarray(sigma, y0.dtype) ** 2 * score_fn(state.y)

    state, jumps = jax.lax.scan(
        segment, WalkState(y0, jnp.zeros_like(y0)), jnp.arange(num_jumps, dtype=jnp.uint32)
    )
    return WalkJumpSamples(jumps, state)


def input_fingerprint(y: jax.Array) -> jax.Array:
    """(B,) uint32 hash of each example's float32 bits: a fixed function of the input alone."""
    bits = jax.lax.bitcast_convert_type(y.reshape(y.shape[0], -1).astype(jnp.float32), jnp.uint32)
    positions = jnp.arange(bits.shape[1], dtype=jnp.uint32)
    mixed = (bits ^ (bits >> 15)) * jnp.uint32(0x2C1B3C6D) + positions * jnp.uint32(0x9E3779B1)
    mixed = mixed ^ (mixed >> 13)
    return jnp.sum(mixed * jnp.uint32(0x297A2D39), axis=1, dtype=jnp.uint32)


def make_walk_jump_logits_fn(
    classifier_logits_fn: Callable,
    score_fn: score_lib.ScoreFn,
    *,
    sigma: float,
    num_steps: int,
    delta: float,
    gamma: float = 0.5,
    u: float = 1.0,
    seed: int = 0,
    unroll: int | bool = 1,
) -> Callable:
    """Walk-jump classification as a logits_fn(params, y0) for rsjax.certify / predict.

    From each noisy input y0 (B, H, W, C): velocity 0, num_steps walk steps whose noise comes from
    fold_in(key(seed), input_fingerprint(y0)), a jump xhat, then classifier_logits_fn(
    params["classifier"], jump). params = {"classifier", "score"} as in rsjax.empirical_bayes.
    Certify at the denoiser's sigma; see the module docstring for why the certificate is valid.
    unroll: as in `walk` (it changes the speed, not the walk: the same steps, to float rounding).
    """
    _check(delta, gamma, u, num_steps)
    sigma = float(sigma)

    def walk_jump_logits_fn(params, y0):
        base = jax.random.key(seed)
        keys = jax.vmap(lambda h: jax.random.fold_in(base, h))(input_fingerprint(y0))

        def noise_fn(t):
            return jax.vmap(
                lambda k: jax.random.normal(jax.random.fold_in(k, t), y0.shape[1:], y0.dtype)
            )(keys)

        psi = functools.partial(score_fn, params["score"])
        state = _walk(
            noise_fn,
            psi,
            WalkState(y0, jnp.zeros_like(y0)),
            delta=delta,
            gamma=gamma,
            u=u,
            num_steps=num_steps,
            unroll=unroll,
        )
        jump = state.y + sigma**2 * psi(state.y)
        return classifier_logits_fn(params["classifier"], jump)

    return walk_jump_logits_fn
