"""rsjax.score: energy networks' scores are -grad phi, shapes and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from rsjax import score


@pytest.mark.parametrize("name", ["energy_mlp", "energy_mnist", "energy_mnist_mlp"])
def test_energy_score_is_minus_the_gradient_of_phi(name):
    model = score.make_score_model(name)
    shape = (3,) if name == "energy_mlp" else (28, 28, 1)
    params = score.init_params(model, jax.random.key(0), shape)
    energy_fn = score.make_energy_fn(model)
    score_fn = score.make_score_fn(model)
    batch = 3 if name == "energy_mlp" else 2
    y = jax.random.uniform(jax.random.key(1), (batch, *shape))
    # phi is smooth: its derivatives (2nd order too for the MLP) check against finite differences ...
    order = 2 if name == "energy_mlp" else 1
    total = jax.jit(lambda y: energy_fn(params, y).sum())
    check_grads(total, (y,), order=order, modes=["rev"], atol=1e-2)
    # ... and the score is, example by example, minus the gradient of that example's energy.
    one_grad = jax.jit(jax.grad(lambda yi: energy_fn(params, yi[None])[0]))
    psi = score_fn(params, y)
    for i in range(batch):
        np.testing.assert_allclose(psi[i], -one_grad(y[i]), rtol=1e-5, atol=1e-7)


def test_an_examples_score_depends_on_that_example_alone():
    model = score.make_score_model("energy_mnist")
    params = score.init_params(model, jax.random.key(0), (28, 28, 1))
    score_fn = score.make_score_fn(model)
    y = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    alone = score_fn(params, y[:1])
    changed = y.at[1:].set(0.0)
    np.testing.assert_allclose(score_fn(params, changed)[:1], alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("energy_mnist", (28, 28, 1)),
        ("energy_mnist_mlp", (28, 28, 1)),
        ("score_mnist", (28, 28, 1)),
        ("energy_cifar", (32, 32, 3)),
        ("score_cifar", (32, 32, 3)),
        ("energy_mlp", (2,)),
        ("score_mlp", (2,)),
    ],
)
def test_scores_have_the_input_shape_and_are_finite(name, shape):
    model = score.make_score_model(name)
    params = score.init_params(model, jax.random.key(0), shape)
    y = jax.random.normal(jax.random.key(1), (2, *shape))
    psi = score.make_score_fn(model)(params, y)
    assert psi.shape == y.shape and bool(jnp.all(jnp.isfinite(psi)))


def test_registry_and_kind_errors():
    with pytest.raises(ValueError, match="unknown score model"):
        score.make_score_model("energy_imagenet")
    with pytest.raises(ValueError, match="outputs a score"):
        score.make_energy_fn(score.make_score_model("score_mlp"))


def test_the_quadratic_mlp_energy_starts_as_a_gaussian_plus_a_correction():
    # With the MLP's output layer zeroed, phi is the diagonal Gaussian energy alone: score = -(y - 1/2)
    # times softplus(0) = log 2 at initialisation.
    model = score.make_score_model("energy_mnist_mlp")
    params = score.init_params(model, jax.random.key(0), (28, 28, 1))
    last = sorted(k for k in params if k.startswith("Dense"))[-1]
    params = {**params, last: jax.tree.map(jnp.zeros_like, params[last])}
    y = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
    psi = score.make_score_fn(model)(params, y)
    np.testing.assert_allclose(psi, -np.log(2.0) * (y - 0.5), rtol=1e-5, atol=1e-6)
