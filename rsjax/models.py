"""Base classifiers as pure Flax (linen) modules, with input normalisation inside the model.

Every model takes NHWC float32 images in [0,1] (the units of sigma) and returns (B, K) logits; the
per-channel (x - mean) / std normalisation is the model's first operation, so noise is always added
in pixel units. One registry by name (`MODELS`), no dynamic imports.

The functional forms used everywhere else:
  variables = init_variables(model, key, input_shape)        {"params": ..., maybe "batch_stats": ...}
  logits = model.apply(variables, x, train=False)
  make_logits_fn(model)(variables, x)                        the evaluation form passed to certify

References: LeCun et al. 1998 (LeNet; the conv20-conv50-fc500 variant used by Jeong & Shin 2020 for
MNIST smoothing); He et al., CVPR 2016 (CIFAR ResNet-20/110, as in Cohen et al. 2019).
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Dataset statistics for the normalisation layer, in [0,1] pixel units.
NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class Normalize(nn.Module):
    """(x - mean) / std per channel; constants, not parameters."""

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x):
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)


class LinearClassifier(nn.Module):
    """Logits = W vec(normalise(x)) + b."""

    num_classes: int
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class LeNet(nn.Module):
    """conv(20, 5x5) - relu - maxpool - conv(50, 5x5) - relu - maxpool - fc(500) - relu - fc(K)."""

    num_classes: int
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        x = nn.max_pool(nn.relu(nn.Conv(20, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.max_pool(nn.relu(nn.Conv(50, (5, 5), padding="VALID")(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(500)(x.reshape(x.shape[0], -1)))
        return nn.Dense(self.num_classes)(x)


class LeNetBN(nn.Module):
    """LeNet with batch norm after both convolutions and the hidden dense layer (before each relu):
    the batch-norm variant for losses that train unstably on plain LeNet (MACER's hinge)."""

    num_classes: int
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)

    @nn.compact
    def __call__(self, x, train: bool = False):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        x = Normalize(self.mean, self.std)(x)
        x = nn.Conv(20, (5, 5), padding="VALID", use_bias=False)(x)
        x = nn.max_pool(nn.relu(norm()(x)), (2, 2), (2, 2))
        x = nn.Conv(50, (5, 5), padding="VALID", use_bias=False)(x)
        x = nn.max_pool(nn.relu(norm()(x)), (2, 2), (2, 2))
        x = nn.relu(norm()(nn.Dense(500, use_bias=False)(x.reshape(x.shape[0], -1))))
        return nn.Dense(self.num_classes)(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        y = nn.Conv(self.features, (3, 3), (self.strides, self.strides), use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = norm()(y)
        if x.shape != y.shape:
            x = nn.Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6m + 2 (20: m = 3, 110: m = 18), widths 16-32-64."""

    num_classes: int
    depth: int = 20
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6m + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        x = Normalize(self.mean, self.std)(x)
        x = nn.Conv(16, (3, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, strides)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearClassifier,
    "lenet": LeNet,
    "lenet_bn": LeNetBN,
    "resnet20": lambda **kw: CifarResNet(depth=20, **kw),
    "resnet110": lambda **kw: CifarResNet(depth=110, **kw),
}


def make_model(name: str, *, num_classes: int, dataset: str | None = None) -> nn.Module:
    """The registered model `name` with the normalisation of `dataset` (none when None)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    kw: dict[str, Any] = {"num_classes": num_classes}
    if dataset is not None:
        if dataset not in NORMALIZATION:
            raise ValueError(f"no normalisation statistics for dataset {dataset!r}")
        kw["mean"], kw["std"] = NORMALIZATION[dataset]
    return MODELS[name](**kw)


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initial variables {"params", and "batch_stats" for models with batch norm} for (H, W, C)."""
    return dict(model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False))


def make_logits_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """Evaluation-mode logits_fn(variables, x) -> logits; one object per model (reuse it: jit caches
    on it)."""

    def logits_fn(variables, x):
        return model.apply(variables, x, train=False)

    return logits_fn
