"""Base classifiers as pure Flax (linen) modules, with input normalisation inside the model.

Every model takes NHWC float32 images in [0,1] (the units of sigma) and returns (B, K) logits; the
per-channel (x - mean) / std normalisation is the model's first operation, so noise is always added
in pixel units. One registry by name (`MODELS`), no dynamic imports.

The functional forms used everywhere else, for these models and for any Flax linen module (one
whose __call__ has no `train` argument is called without it, `takes_train`):
  variables = init_variables(model, key, input_shape)        {"params": ..., maybe "batch_stats": ...}
  logits = model.apply(variables, x, train=False)
  make_logits_fn(model)(variables, x)                        the evaluation form passed to certify

The ResNets come in two paddings. rsjax's own `resnet20`/`resnet110` use Flax's "SAME" padding,
which for a stride-2 3x3 convolution on an even size pads 0 pixels before and 1 after; the field's
PyTorch models pad 1 pixel on every side (`padding=1`), which gives other outputs from the same
weights. `cifar_resnet20`/`cifar_resnet110` (Cohen et al.'s `code/archs/cifar_resnet.py`) and
`resnet50` (torchvision's ImageNet ResNet-50, "v1.5") pad as PyTorch does ("SYMMETRIC"), so that
rsjax.torch_import can load their released checkpoints; `resnet20`/`resnet110` are unchanged, so
the checkpoints rsjax trained before restore to the same models. Batch norm uses PyTorch's epsilon
1e-5 (Flax's default) everywhere; the running statistics are used in evaluation.

Normalisation constants come from the dataset (`NORMALIZATION`), except for the architectures of
Cohen et al., which normalise with the constants of his `code/datasets.py` (`COHEN_NORMALIZATION`:
his CIFAR-10 standard deviations differ from rsjax's), as his checkpoints were trained with them;
`normalization(name, dataset)` says which constants a registered model uses.

References: LeCun et al. 1998 (LeNet; the conv20-conv50-fc500 variant used by Jeong & Shin 2020 for
MNIST smoothing); He et al., CVPR 2016 (CIFAR ResNet-20/110, as in Cohen et al. 2019; ResNet-50 for
ImageNet); Cohen, Rosenfeld & Kolter, ICML 2019 (github.com/locuslab/smoothing).
"""

import inspect
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
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# The constants of Cohen et al.'s NormalizeLayer (locuslab/smoothing `code/datasets.py`), which his
# released checkpoints were trained with: his CIFAR-10 standard deviations are not NORMALIZATION's
# (his ImageNet constants are the same).
COHEN_NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
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


PADDINGS = ("SAME", "SYMMETRIC")


def _padding(padding: str, size: int):
    """Flax's "SAME", or `size // 2` pixels on every side as PyTorch's Conv2d(padding=size // 2)."""
    if padding == "SAME":
        return "SAME"
    if padding == "SYMMETRIC":
        return ((size // 2, size // 2), (size // 2, size // 2))
    raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    features: int
    strides: int = 1
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        pad3, pad1 = _padding(self.padding, 3), _padding(self.padding, 1)
        strides = (self.strides, self.strides)
        y = nn.Conv(self.features, (3, 3), strides, padding=pad3, use_bias=False)(x)
        y = nn.relu(norm()(y))
        y = nn.Conv(self.features, (3, 3), padding=pad3, use_bias=False)(y)
        y = norm()(y)
        if x.shape != y.shape:
            x = nn.Conv(self.features, (1, 1), strides, padding=pad1, use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + y)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6m + 2 (20: m = 3, 110: m = 18), widths 16-32-64.

    padding: "SAME" (Flax's; rsjax's `resnet20`/`resnet110`) or "SYMMETRIC" (PyTorch's padding=1;
    `cifar_resnet20`/`cifar_resnet110`, the layout of Cohen et al.'s checkpoints). The global
    average pool equals his AvgPool2d(8) on the 8x8 features of a 32x32 image.
    """

    num_classes: int
    depth: int = 20
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x, train: bool = False):
        if (self.depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6m + 2, got {self.depth}")
        blocks = (self.depth - 2) // 6
        x = Normalize(self.mean, self.std)(x)
        x = nn.Conv(16, (3, 3), padding=_padding(self.padding, 3), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(features, strides, self.padding)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


class Bottleneck(nn.Module):
    """1x1 (features) - 3x3 (features, strides) - 1x1 (4 features) convolutions with batch norm and
    an identity (or strided 1x1 projection) shortcut; the stride on the 3x3 ("ResNet v1.5", as in
    torchvision), PyTorch's padding."""

    features: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)  # noqa: E731
        strides = (self.strides, self.strides)
        pad3 = _padding("SYMMETRIC", 3)
        y = nn.relu(norm()(nn.Conv(self.features, (1, 1), padding="VALID", use_bias=False)(x)))
        y = nn.Conv(self.features, (3, 3), strides, padding=pad3, use_bias=False)(y)
        y = nn.relu(norm()(y))
        y = norm()(nn.Conv(4 * self.features, (1, 1), padding="VALID", use_bias=False)(y))
        if x.shape != y.shape:
            x = nn.Conv(4 * self.features, (1, 1), strides, padding="VALID", use_bias=False)(x)
            x = norm()(x)
        return nn.relu(x + y)


class ImageNetResNet(nn.Module):
    """torchvision's ImageNet ResNet (50: stage_sizes 3-4-6-3): conv 7x7/2 (padding 3) - BN - ReLU -
    max pool 3x3/2 (padding 1) - bottleneck stages of widths 64, 128, 256, 512 (strides 1, 2, 2, 2)
    - global average pool - dense. Fully convolutional up to the pool: any H, W >= 32 work."""

    num_classes: int
    stage_sizes: Sequence[int] = (3, 4, 6, 3)
    mean: Sequence[float] = (0.0, 0.0, 0.0)
    std: Sequence[float] = (1.0, 1.0, 1.0)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = Normalize(self.mean, self.std)(x)
        x = nn.Conv(64, (7, 7), (2, 2), padding=_padding("SYMMETRIC", 7), use_bias=False)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=_padding("SYMMETRIC", 3))  # pads with -inf
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                strides = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(64 * 2**stage, strides)(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearClassifier,
    "lenet": LeNet,
    "lenet_bn": LeNetBN,
    "resnet20": lambda **kw: CifarResNet(depth=20, **kw),
    "resnet110": lambda **kw: CifarResNet(depth=110, **kw),
    # The architectures of Cohen et al.'s checkpoints (rsjax.torch_import), PyTorch's padding.
    "cifar_resnet20": lambda **kw: CifarResNet(depth=20, padding="SYMMETRIC", **kw),
    "cifar_resnet110": lambda **kw: CifarResNet(depth=110, padding="SYMMETRIC", **kw),
    "resnet50": ImageNetResNet,
}

# Models whose normalisation constants are not the dataset's NORMALIZATION (per dataset; datasets
# not listed fall back to NORMALIZATION).
MODEL_NORMALIZATION = {
    "cifar_resnet20": COHEN_NORMALIZATION,
    "cifar_resnet110": COHEN_NORMALIZATION,
    "resnet50": COHEN_NORMALIZATION,
}


def normalization(name: str, dataset: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel that model `name` normalises `dataset`'s images with."""
    stats = MODEL_NORMALIZATION.get(name, {}).get(dataset, NORMALIZATION.get(dataset))
    if stats is None:
        known = sorted(set(NORMALIZATION) | set(MODEL_NORMALIZATION.get(name, {})))
        raise ValueError(
            f"no normalisation statistics for dataset {dataset!r} (model {name!r}); known: {known}"
        )
    return stats


def make_model(name: str, *, num_classes: int, dataset: str | None = None) -> nn.Module:
    """The registered model `name` with the normalisation of `dataset` (none when None): the
    constants `normalization(name, dataset)`, so a checkpoint's meta {model, dataset} rebuilds an
    imported model with the constants it was trained with."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    kw: dict[str, Any] = {"num_classes": num_classes}
    if dataset is not None:
        kw["mean"], kw["std"] = normalization(name, dataset)
    return MODELS[name](**kw)


def takes_train(model: nn.Module) -> bool:
    """Whether the module's __call__ has a `train` argument (rsjax's models do: batch norm uses
    the batch's statistics when train is True). A user's module without one is called without it."""
    return "train" in inspect.signature(model.__call__).parameters


def check_batch_norm(model: nn.Module, variables: dict) -> None:
    """ValueError when the module has batch statistics but its __call__ takes no `train` argument:
    nothing would say when to use (and update) the batch's statistics rather than the running ones."""
    if variables.get("batch_stats") and not takes_train(model):
        raise ValueError(
            f"{type(model).__name__} has batch statistics (batch_stats) but its __call__ takes no "
            "`train` argument, so training cannot switch its batch norm between the batch's "
            "statistics (training, updated) and the running ones (evaluation): add "
            "`train: bool = False` to __call__ and use nn.BatchNorm(use_running_average=not train)"
        )


def _train_kw(model: nn.Module, train: bool) -> dict:
    return {"train": train} if takes_train(model) else {}


def init_variables(model: nn.Module, key: jax.Array, input_shape: Sequence[int]) -> dict:
    """Initial variables {"params", and "batch_stats" for models with batch norm} for (H, W, C)
    inputs (any example shape), of any Flax linen module: called with train=False when its
    __call__ takes `train`, without it otherwise."""
    x = jnp.zeros((1, *input_shape), jnp.float32)
    return dict(model.init(key, x, **_train_kw(model, False)))


def num_outputs(model: nn.Module, variables: dict, input_shape: Sequence[int]) -> int:
    """The size of the model's last output axis for (H, W, C) inputs (its number of classes), from
    jax.eval_shape: nothing is computed."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, **_train_kw(model, False)), variables, x)
    return int(out.shape[-1])


def make_logits_fn(model: nn.Module) -> Callable[[Any, jax.Array], jax.Array]:
    """Evaluation-mode logits_fn(variables, x) -> logits of any Flax linen module (train=False when
    its __call__ takes `train`); one object per model (reuse it: jit caches on it)."""
    kw = _train_kw(model, False)

    def logits_fn(variables, x):
        return model.apply(variables, x, **kw)

    return logits_fn
