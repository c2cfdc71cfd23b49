"""rsjax.tweedie: the Bayes estimator against closed forms, the denoising loss against a naive loop,
and a tiny energy network that learns the analytic score of a 2-D Gaussian."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import score, train, tweedie


def test_xhat_of_the_gaussian_prior_score_is_the_posterior_mean():
    m, s, sigma = jnp.array([0.3, -0.2, 0.5]), 0.7, 0.4
    y = jax.random.normal(jax.random.key(0), (16, 3))
    psi = functools.partial(tweedie.gaussian_prior_score, mean=m, prior_std=s, sigma=sigma)
    expected = m + s**2 / (s**2 + sigma**2) * (y - m)  # written out, not through the library
    np.testing.assert_allclose(tweedie.xhat(psi, y, sigma), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        tweedie.gaussian_prior_xhat(y, mean=m, prior_std=s, sigma=sigma), expected, rtol=1e-6
    )


def test_two_point_xhat_is_the_posterior_mean_computed_by_bayes_rule():
    mu, sigma = jnp.array([0.8, -0.3]), 0.5
    y = jax.random.normal(jax.random.key(1), (32, 2))
    # Bayes' rule by hand: weights of +mu and -mu proportional to exp(-||y -+ mu||^2 / 2 sigma^2).
    log_plus = -np.sum((np.asarray(y) - np.asarray(mu)) ** 2, axis=1) / (2 * sigma**2)
    log_minus = -np.sum((np.asarray(y) + np.asarray(mu)) ** 2, axis=1) / (2 * sigma**2)
    w_plus = 1 / (1 + np.exp(log_minus - log_plus))
    expected = (2 * w_plus - 1)[:, None] * np.asarray(mu)
    np.testing.assert_allclose(tweedie.two_point_xhat(y, mu=mu, sigma=sigma), expected, atol=1e-5)
    psi = functools.partial(tweedie.two_point_score, mu=mu, sigma=sigma)
    np.testing.assert_allclose(tweedie.xhat(psi, y, sigma), expected, atol=1e-5)


def test_xhat_is_vmappable_and_takes_traced_sigma():
    psi = functools.partial(tweedie.gaussian_prior_score, mean=0.0, prior_std=1.0, sigma=0.5)
    y = jax.random.normal(jax.random.key(2), (5, 4, 3))
    per_row = jax.vmap(lambda row: tweedie.xhat(psi, row, 0.5))(y)
    np.testing.assert_allclose(per_row, tweedie.xhat(psi, y, 0.5), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(lambda s: tweedie.xhat(psi, y, s))(0.5), per_row, rtol=1e-6)


def test_denoising_loss_matches_a_naive_loop():
    model = score.make_score_model("energy_mlp")
    params = score.init_params(model, jax.random.key(0), (3,))
    score_fn = score.make_score_fn(model)
    x = np.asarray(jax.random.uniform(jax.random.key(1), (6, 3)))
    key, sigma = jax.random.key(2), 0.3
    loss, (_, metrics) = tweedie.denoising_loss(
        params, {}, {"image": jnp.asarray(x)}, key, score_fn=score_fn, sigma=sigma
    )
    eps = np.asarray(jax.random.normal(key, x.shape))
    energy = score.make_energy_fn(model)
    total = 0.0
    for i in range(len(x)):  # one example at a time, the score by central differences of phi
        y = x[i] + sigma * eps[i]
        grad = np.zeros(3)
        for d in range(3):
            step = np.zeros(3)
            step[d] = 1e-3
            up = float(energy(params, jnp.asarray((y + step)[None]))[0])
            down = float(energy(params, jnp.asarray((y - step)[None]))[0])
            grad[d] = (up - down) / 2e-3
        total += np.sum((x[i] - (y - sigma**2 * grad)) ** 2)
    naive = total / len(x)
    np.testing.assert_allclose(float(loss), naive, rtol=1e-3)
    np.testing.assert_allclose(float(metrics["mse"]), naive / 3, rtol=1e-3)
    np.testing.assert_allclose(float(metrics["psnr"]), -10 * np.log10(naive / 3), rtol=1e-3)
    y = jnp.asarray(x + sigma * eps)
    denoised = tweedie.xhat(score_fn, y, sigma, params)  # params traced
    np.testing.assert_allclose(
        float(jnp.sum((jnp.asarray(x) - denoised) ** 2) / len(x)), naive, rtol=1e-3
    )


def test_denoising_loss_differentiates_through_the_score():
    model = score.make_score_model("energy_mlp")
    params = score.init_params(model, jax.random.key(0), (2,))
    fn = functools.partial(tweedie.denoising_loss, score_fn=score.make_score_fn(model), sigma=0.5)
    batch = {"image": jax.random.normal(jax.random.key(1), (8, 2))}
    grads = jax.grad(lambda p: fn(p, {}, batch, jax.random.key(2))[0])(params)
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(norms) > 0
    # The last layer's bias does not change the energy's gradient: its gradient is exactly 0.
    assert float(jnp.abs(grads["Dense_2"]["bias"]).max()) == 0.0


def test_psnr():
    assert float(tweedie.psnr(0.01)) == pytest.approx(20.0)
    assert float(tweedie.psnr(1.0)) == pytest.approx(0.0)


def test_a_tiny_energy_network_learns_the_gaussian_score():
    """Denoising on samples of X ~ N(m, s^2 I) in 2-D recovers psi(y) = (m - y) / (s^2 + sigma^2).

    Tolerance: the relative l2 error of the learned score over 512 draws of Y must be below 0.1
    (measured 0.024 with these settings); the data, init and noise keys are fixed.
    """
    m, s, sigma = jnp.array([0.5, -0.3]), 0.5, 0.5
    model = score.make_score_model("energy_mlp")
    score_fn = score.make_score_fn(model)
    params = score.init_params(model, jax.random.key(0), (2,))
    steps = 1500
    optimizer = train.make_optimizer(
        learning_rate=1e-2, total_steps=steps, optimizer="adam", schedule="cosine"
    )
    state = train.TrainState(jnp.zeros((), jnp.int32), params, {}, optimizer.init(params))
    loss_fn = functools.partial(tweedie.denoising_loss, score_fn=score_fn, sigma=sigma)
    step = train.make_train_step(loss_fn, optimizer)
    data_key = jax.random.key(1)
    for t in range(steps):
        x = m + s * jax.random.normal(jax.random.fold_in(data_key, t), (256, 2))
        state, _ = step(state, {"image": x}, jax.random.key(2))
    y = m + jnp.sqrt(s**2 + sigma**2) * jax.random.normal(jax.random.key(3), (512, 2))
    learned = score_fn(state.params, y)
    true = tweedie.gaussian_prior_score(y, mean=m, prior_std=s, sigma=sigma)
    error = float(jnp.linalg.norm(learned - true) / jnp.linalg.norm(true))
    print(f"relative score error {error:.4f}")
    assert error < 0.1, f"relative score error {error:.3f}"
