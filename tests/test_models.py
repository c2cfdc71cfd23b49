"""Model registry, shapes, and normalisation inside the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rsjax import models


@pytest.mark.parametrize(
    "name,shape",
    [
        ("linear", (28, 28, 1)),
        ("lenet", (28, 28, 1)),
        ("lenet_bn", (28, 28, 1)),
        ("resnet20", (32, 32, 3)),
    ],
)
def test_logits_shape_and_eval_mode(name, shape):
    model = models.make_model(name, num_classes=10)
    variables = models.init_variables(model, jax.random.key(0), shape)
    logits = models.make_logits_fn(model)(variables, jnp.zeros((3, *shape)))
    assert logits.shape == (3, 10) and logits.dtype == jnp.float32
    assert ("batch_stats" in variables) == (name == "lenet_bn" or name.startswith("resnet"))


def test_resnet_depths():
    def count_convs(depth):
        model = models.make_model(f"resnet{depth}", num_classes=10)
        params = models.init_variables(model, jax.random.key(0), (32, 32, 3))["params"]
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
        return sum("Conv" in p and "kernel" in p for p in paths)

    # 6m + 1 3x3 convolutions plus 2 projection shortcuts.
    assert count_convs(20) == 19 + 2
    assert count_convs(110) == 109 + 2


def test_normalisation_is_inside_the_model():
    plain = models.make_model("linear", num_classes=2)
    normed = models.make_model("linear", num_classes=2, dataset="mnist")
    variables = models.init_variables(plain, jax.random.key(0), (4, 4, 1))
    x = jnp.full((1, 4, 4, 1), 0.1307)  # the MNIST mean: normalises to zero
    expected = plain.apply(variables, jnp.zeros_like(x))
    np.testing.assert_allclose(normed.apply(variables, x), expected, atol=1e-6)


def test_unknown_model_and_bad_classes():
    with pytest.raises(ValueError, match="unknown model 'vgg'.*lenet"):
        models.make_model("vgg", num_classes=10)
    with pytest.raises(ValueError, match="num_classes"):
        models.make_model("lenet", num_classes=1)
