"""rsjax.walkjump: the Langevin step against a naive numpy loop, finite chains, jumps near the data
of the two-point prior, and walk-jump classification certified by the unchanged engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import tweedie, walkjump

MU = jnp.array([0.6, -0.4])
SIGMA = 0.3


def two_point_psi(y):
    return tweedie.two_point_score(y, mu=MU, sigma=SIGMA)


def test_walk_matches_a_naive_loop_of_the_reference_step():
    delta, gamma, u, steps = 0.15, 0.5, 1.0, 7
    key = jax.random.key(0)
    y0 = jax.random.normal(jax.random.key(1), (3, 2))
    state = walkjump.walk(
        key,
        two_point_psi,
        walkjump.WalkState(y0, jnp.zeros_like(y0)),
        delta=delta,
        gamma=gamma,
        u=u,
        num_steps=steps,
    )
    y, v = np.asarray(y0, np.float64), np.zeros((3, 2))
    for t in range(steps):  # REFERENCE section 4, line by line
        xi = np.asarray(jax.random.normal(jax.random.fold_in(key, t), (3, 2)))
        y = y + delta / 2 * v
        v = v + u * delta / 2 * np.asarray(two_point_psi(jnp.asarray(y, jnp.float32)))
        psi = np.asarray(two_point_psi(jnp.asarray(y, jnp.float32)))
        v = np.exp(-gamma * delta) * v + u * delta / 2 * psi
        v = v + np.sqrt(u * (1 - np.exp(-2 * gamma * delta))) * xi
        y = y + delta / 2 * v
    np.testing.assert_allclose(state.y, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.v, v, rtol=1e-4, atol=1e-5)


def test_walk_jump_stays_finite_and_jumps_land_near_the_data():
    y0 = jax.random.normal(jax.random.key(2), (64, 2))
    out = walkjump.walk_jump_sample(
        jax.random.key(3),
        two_point_psi,
        y0,
        sigma=SIGMA,
        num_jumps=20,
        steps_per_jump=10,
        delta=0.5 * SIGMA,
    )
    assert out.jumps.shape == (20, 64, 2)
    assert bool(jnp.all(jnp.isfinite(out.jumps))) and bool(jnp.all(jnp.isfinite(out.state.y)))
    # Posterior means lie on the segment [-mu, mu]; most jumps are within 0.1 ||mu|| of an end.
    dist = jnp.minimum(
        jnp.linalg.norm(out.jumps - MU, axis=-1), jnp.linalg.norm(out.jumps + MU, axis=-1)
    )
    assert float(jnp.mean(dist < 0.1 * jnp.linalg.norm(MU))) > 0.8
    # The chain visits both modes (the walk mixes in Y-space).
    sides = jnp.sign(out.jumps[-1] @ MU)
    assert 0.2 < float(jnp.mean(sides > 0)) < 0.8


def test_unrolling_changes_the_speed_not_the_walk():
    """unroll (lax.scan's) traces the same steps with the same noise: equal to float rounding."""
    y0 = jax.random.normal(jax.random.key(5), (8, 2))
    start = walkjump.WalkState(y0, jnp.zeros_like(y0))
    for unroll in (True, 3):
        options = dict(delta=0.15, num_steps=7, unroll=unroll)
        looped = walkjump.walk(jax.random.key(0), two_point_psi, start, **dict(options, unroll=1))
        unrolled = walkjump.walk(jax.random.key(0), two_point_psi, start, **options)
        np.testing.assert_allclose(unrolled.y, looped.y, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(unrolled.v, looped.v, rtol=1e-5, atol=1e-6)
    sample = dict(sigma=SIGMA, num_jumps=3, steps_per_jump=4, delta=0.5 * SIGMA)
    np.testing.assert_allclose(
        walkjump.walk_jump_sample(
            jax.random.key(3), two_point_psi, y0, unroll=True, **sample
        ).jumps,
        walkjump.walk_jump_sample(jax.random.key(3), two_point_psi, y0, **sample).jumps,
        rtol=1e-5,
        atol=1e-6,
    )
    params = {"classifier": {"w": jnp.array([1.0, 0.0])}, "score": {"mu": MU}}
    logits = [
        walkjump.make_walk_jump_logits_fn(
            _linear_classifier, _score_fn, sigma=SIGMA, num_steps=5, delta=0.5 * SIGMA, unroll=u
        )(params, y0)
        for u in (1, True)
    ]
    np.testing.assert_allclose(logits[1], logits[0], rtol=1e-5, atol=1e-6)


def test_walk_rejects_bad_settings():
    state = walkjump.WalkState(jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="delta > 0"):
        walkjump.walk(jax.random.key(0), two_point_psi, state, delta=0.0, num_steps=3)
    with pytest.raises(ValueError, match="num_steps"):
        walkjump.walk(jax.random.key(0), two_point_psi, state, delta=0.1, num_steps=0)


def _linear_classifier(params, z):
    score = z.reshape(z.shape[0], -1) @ params["w"]
    return jnp.stack([-score, score], axis=-1)


def _score_fn(params, y):
    return tweedie.two_point_score(y, mu=params["mu"], sigma=SIGMA)


def test_walk_jump_classifier_is_a_deterministic_function_of_its_input():
    logits_fn = walkjump.make_walk_jump_logits_fn(
        _linear_classifier, _score_fn, sigma=SIGMA, num_steps=5, delta=0.5 * SIGMA
    )
    params = {"classifier": {"w": jnp.array([1.0, 0.0])}, "score": {"mu": MU}}
    y = jax.random.normal(jax.random.key(4), (16, 2))
    first = logits_fn(params, y)
    np.testing.assert_array_equal(first, logits_fn(params, y))  # same input, same walk
    np.testing.assert_array_equal(first[3:4], logits_fn(params, y[3:4]))  # batch-independent
    fingerprints = walkjump.input_fingerprint(y)
    assert len(np.unique(np.asarray(fingerprints))) == 16


def test_walk_jump_classification_certifies_with_the_engine():
    """Images (B, 1, 1, 2) from the two-point prior's +mu side: the walk-jump classifier votes for
    the mode of the nearest jump; certified, with a positive radius, by rsjax.certify (toy vectors,
    not images: input_range=None)."""
    logits_fn = walkjump.make_walk_jump_logits_fn(
        lambda p, z: _linear_classifier(p, z.reshape(z.shape[0], -1)),
        lambda p, y: _score_fn(p, y.reshape(y.shape[0], -1)).reshape(y.shape),
        sigma=SIGMA,
        num_steps=3,
        delta=0.5 * SIGMA,
    )
    params = {"classifier": {"w": MU}, "score": {"mu": MU}}
    x = (
        np.asarray(MU, np.float32).reshape(1, 1, 1, 2)
        * np.array([1.0, 0.8], np.float32)[:, None, None, None]
    )
    cert = rsjax.certify(
        jax.random.key(5),
        logits_fn,
        x,
        params=params,
        sigma=SIGMA,
        n0=64,
        n=2000,
        alpha=0.001,
        num_classes=2,
        input_range=None,
    )
    assert list(cert.prediction) == [1, 1]
    assert np.all(cert.radius > 0)
