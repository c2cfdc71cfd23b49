"""Model registry, shapes, and normalisation inside the model."""

import flax.linen as nn
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


def test_pytorch_architectures_shapes_and_parameter_counts():
    def count(name, shape):
        model = models.make_model(name, num_classes=1000 if name == "resnet50" else 10)
        variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), shape))
        logits = jax.eval_shape(models.make_logits_fn(model), variables, jnp.zeros((2, *shape)))
        assert logits.shape == (2, 1000 if name == "resnet50" else 10)
        return sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(variables["params"]))

    assert count("resnet50", (224, 224, 3)) == 25_557_032  # torchvision's resnet50()
    assert count("resnet50", (64, 64, 3)) == 25_557_032  # fully convolutional up to the pool
    # his CIFAR ResNets have rsjax's layout, only the padding differs
    assert count("cifar_resnet20", (32, 32, 3)) == count("resnet20", (32, 32, 3)) == 272_474
    assert count("cifar_resnet110", (32, 32, 3)) == count("resnet110", (32, 32, 3))


def test_rsjax_resnets_keep_flax_padding_and_cohen_resnets_pad_as_pytorch():
    """resnet20/resnet110 (the checkpoints rsjax trained) keep Flax's "SAME" padding; the CIFAR
    ResNets of Cohen et al. have the same variables (names, shapes, initial values), and their
    padding changes the logits (tests/test_torch_import.py checks them against PyTorch)."""
    for depth in (20, 110):
        ours = models.make_model(f"resnet{depth}", num_classes=10)
        cohen = models.make_model(f"cifar_resnet{depth}", num_classes=10)
        assert (ours.padding, cohen.padding) == ("SAME", "SYMMETRIC")
    ours, cohen = (models.make_model(n, num_classes=10) for n in ("resnet20", "cifar_resnet20"))
    variables = models.init_variables(ours, jax.random.key(0), (32, 32, 3))
    cohen_init = models.init_variables(cohen, jax.random.key(0), (32, 32, 3))
    jax.tree.map(np.testing.assert_array_equal, variables, cohen_init)
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    assert not np.allclose(ours.apply(variables, x), cohen.apply(variables, x), rtol=1e-3)
    with pytest.raises(ValueError, match="padding must be one of"):
        models.CifarResNet(num_classes=10, padding="REFLECT").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )


def test_cohen_architectures_normalise_with_his_constants():
    # his datasets.py: CIFAR-10 std (0.2023, 0.1994, 0.2010), not rsjax's (0.2470, ...)
    cohen = models.make_model("cifar_resnet20", num_classes=10, dataset="cifar10")
    ours = models.make_model("resnet20", num_classes=10, dataset="cifar10")
    assert tuple(cohen.std) == (0.2023, 0.1994, 0.2010) and tuple(ours.std) == (
        0.2470,
        0.2435,
        0.2616,
    )
    assert tuple(cohen.mean) == tuple(ours.mean) == (0.4914, 0.4822, 0.4465)
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert models.normalization("resnet50", "imagenet") == imagenet
    assert models.normalization("lenet", "imagenet") == imagenet
    # datasets he did not use fall back to rsjax's constants
    assert models.normalization("resnet50", "mnist") == models.NORMALIZATION["mnist"]
    with pytest.raises(ValueError, match="no normalisation statistics for dataset 'svhn'"):
        models.make_model("cifar_resnet20", num_classes=10, dataset="svhn")


class _PlainMLP(nn.Module):
    """A user's module: no `train` argument."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))


class _BatchNormNoTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=True)(x.reshape(x.shape[0], -1))
        return nn.Dense(3)(x)


def test_functional_forms_call_a_module_without_train_without_it():
    model = _PlainMLP()
    assert not models.takes_train(model)
    assert models.takes_train(models.make_model("lenet", num_classes=10))
    variables = models.init_variables(model, jax.random.key(0), (4, 4, 1))
    assert set(variables) == {"params"}
    x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 1))
    np.testing.assert_array_equal(
        models.make_logits_fn(model)(variables, x), model.apply(variables, x)
    )
    assert models.num_outputs(model, variables, (4, 4, 1)) == 3
    lenet = models.make_model("lenet", num_classes=7)
    lenet_vars = models.init_variables(lenet, jax.random.key(0), (28, 28, 1))
    assert models.num_outputs(lenet, lenet_vars, (28, 28, 1)) == 7
    models.check_batch_norm(model, variables)  # no statistics: fine
    bn = _BatchNormNoTrain()
    with pytest.raises(ValueError, match="takes no `train` argument"):
        models.check_batch_norm(bn, models.init_variables(bn, jax.random.key(0), (4, 4, 1)))
