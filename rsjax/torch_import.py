"""PyTorch checkpoints of the field (Cohen et al.'s released models, or a state_dict of an rsjax
architecture trained in PyTorch) as rsjax classifiers, without running any code from the file.

  imported = load_checkpoint("models/cifar10/resnet110/noise_0.25/checkpoint.pth.tar")
  logits = imported.logits_fn(imported.variables, x)     x: (B, H, W, C) float32 in [0, 1]
  write_checkpoint(imported, "runs/cohen_c10_025", sigma=0.25)   for experiments/certify.py

`logits_fn` returns the logits the PyTorch model returns on the same images in NCHW: the
normalisation is inside, with the constants the checkpoint was trained with (Cohen et al.'s
NormalizeLayer keeps them outside the state_dict; they are rsjax.models.COHEN_NORMALIZATION), and
the architectures pad, pool and batch-normalise as PyTorch does (see rsjax.models).

Files read: Cohen et al.'s `{"epoch", "arch", "state_dict", "optimizer"}` (his `code/train.py`; the
model is `Sequential(NormalizeLayer, net)`, so keys start with `1.`, and `1.module.` for the
ImageNet ResNet-50 in DataParallel), or a bare state_dict (then `arch` must be given); in the zip
serialisation of PyTorch >= 1.6 or the legacy one of PyTorch 1.0-1.5 (the 2019 releases).

Untrusted files: the file is read with `torch.load(weights_only=True)`, whose unpickler builds only
tensors and plain containers; a pickle that would call anything else (a function, a pickled
nn.Module) is refused with CheckpointImportError, and nothing from it runs. torch is imported here
only, when a file is read; install it with `pip install -e ".[torch]"`. A converted copy
(`write_checkpoint`) is an ordinary rsjax checkpoint, certified without torch.

Architectures (`ARCHITECTURES`) and the PyTorch module names their state_dicts use:
  cifar_resnet20, cifar_resnet110   conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2},
                                    layer{2,3}.0.downsample.{0,1}, fc       (dataset: cifar10)
  resnet50 (torchvision)            conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2,conv3,bn3},
                                    layer{1..4}.0.downsample.{0,1}, fc      (dataset: imagenet)
  lenet                             conv1, conv2, fc1, fc2                  (dataset: give it)
  lenet_bn                          conv1, bn1, conv2, bn2, fc1 (no bias), bn3 (BatchNorm1d), fc2
  linear                            fc
each optionally under one of the prefixes `1.module.`, `module.1.`, `1.`, `module.`. A dense layer
after a flatten reads PyTorch's (C, H, W) order. rsjax's own models normalise with the dataset's
rsjax.models.NORMALIZATION: a PyTorch twin must normalise its input with those constants first.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (github.com/locuslab/smoothing, `code/train.py`,
`code/architectures.py`, `code/datasets.py`); torchvision's `models/resnet.py`.
"""

import hashlib
import os
import pathlib
import re
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import checkpoint, models

# The dataset each of Cohen et al.'s architectures was trained on (his `get_architecture`).
DEFAULT_DATASET = {
    "cifar_resnet20": "cifar10",
    "cifar_resnet110": "cifar10",
    "resnet50": "imagenet",
}
ARCHITECTURES = ("cifar_resnet20", "cifar_resnet110", "resnet50", "lenet", "lenet_bn", "linear")
PREFIXES = ("1.module.", "module.1.", "1.", "module.", "")
INSTALL = 'pip install -e ".[torch]"'

# Legacy serialisation: a pickled magic number first (torch/serialization.py's MAGIC_NUMBER).
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_IMAGENET_SHAPE = (224, 224, 3)
_SHOWN = 8  # keys listed in an error message


class CheckpointImportError(ValueError):
    """A PyTorch checkpoint cannot be imported: the message names the file and the problem (not a
    PyTorch checkpoint, a refused pickle, an unknown architecture, missing, unexpected or misshapen
    keys, torch not installed)."""


class ImportedClassifier(NamedTuple):
    """A PyTorch classifier as an rsjax one.

    logits_fn(variables, x): x (B, H, W, C) float32 in [0, 1] -> (B, num_classes) logits, those of
      the PyTorch model on the same images in NCHW (normalisation inside).
    variables: {"params", and "batch_stats" when the model has batch norm}, float32.
    model: the Flax module, models.make_model(arch, num_classes=..., dataset=dataset).
    input_shape: (H, W, C) of the dataset's images.
    source: {"path", "sha256", "serialization" ("zip" or "legacy"), and "arch", "epoch" when the
      file records them}.
    """

    logits_fn: Callable[[Any, jax.Array], jax.Array]
    variables: dict
    arch: str
    dataset: str
    num_classes: int
    input_shape: tuple[int, int, int]
    model: Any
    source: dict


def load_checkpoint(
    path: str | os.PathLike, *, arch: str | None = None, dataset: str | None = None
) -> ImportedClassifier:
    """Reads a PyTorch checkpoint as an ImportedClassifier.

    Args:
      path: a file written by torch.save: Cohen et al.'s dict (with "arch" and "state_dict") or a
        bare state_dict, zip or legacy serialisation.
      arch: one of ARCHITECTURES; default the file's "arch" (required for a bare state_dict).
      dataset: default DEFAULT_DATASET[arch] (required for rsjax's own architectures); chooses the
        normalisation constants (rsjax.models.normalization) and the input shape.

    Raises:
      CheckpointImportError: naming the problem (see the class).
    """
    path = pathlib.Path(path)
    serialization = _serialization(path)
    loaded = _torch_load(path)
    state_dict, file_arch, epoch = _unpack(loaded, path)
    if arch is None:
        if file_arch is None:
            raise CheckpointImportError(
                f"{path} holds a bare state_dict, which does not say its architecture: pass "
                f"arch= (--arch), one of {', '.join(ARCHITECTURES)}"
            )
        arch = file_arch
    elif file_arch is not None and file_arch != arch:
        raise CheckpointImportError(
            f"{path} records arch {file_arch!r}, but arch {arch!r} was given; leave arch out to "
            "use the file's"
        )
    _check_arch(arch)
    dataset = dataset or DEFAULT_DATASET.get(arch)
    if dataset is None:
        raise CheckpointImportError(
            f"{arch} is trained on any dataset: pass dataset= (--dataset), which chooses the "
            f"normalisation, one of {sorted(models.NORMALIZATION)}"
        )
    try:
        models.normalization(arch, dataset)
    except ValueError as e:
        raise CheckpointImportError(f"{path}: {e}") from None
    input_shape = _input_shape(dataset)
    arrays = {key: _to_numpy(value) for key, value in state_dict.items()}
    variables, num_classes, model = _convert(arrays, arch, dataset, input_shape, path)
    source = {"path": str(path.resolve()), "sha256": _sha256(path), "serialization": serialization}
    if file_arch is not None:
        source["arch"] = file_arch
    if epoch is not None:
        source["epoch"] = epoch
    return ImportedClassifier(
        models.make_logits_fn(model),
        variables,
        arch,
        dataset,
        num_classes,
        input_shape,
        model,
        source,
    )


def to_meta(imported: ImportedClassifier, *, sigma: float | None = None) -> dict:
    """The rsjax checkpoint meta of an imported classifier: {model, dataset, num_classes,
    input_shape, normalization {mean, std}, imported_from (its `source`), and sigma when given}.
    rsjax.train.load_for_eval rebuilds the model from {model, num_classes, dataset, input_shape}."""
    mean, std = models.normalization(imported.arch, imported.dataset)
    meta = {
        "model": imported.arch,
        "dataset": imported.dataset,
        "num_classes": imported.num_classes,
        "input_shape": list(imported.input_shape),
        "normalization": {"mean": list(mean), "std": list(std)},
        "imported_from": dict(imported.source),
    }
    if sigma is not None:
        meta["sigma"] = float(sigma)
    return meta


def write_checkpoint(
    imported: ImportedClassifier, workdir: str | os.PathLike, *, sigma: float | None = None
) -> pathlib.Path:
    """Saves `imported` as step 0 of an rsjax checkpoint in `workdir/checkpoints` (what
    experiments/certify.py --workdir reads, without torch); returns that directory."""
    ckpt_dir = pathlib.Path(workdir) / "checkpoints"
    if checkpoint.all_steps(ckpt_dir):
        raise CheckpointImportError(f"{ckpt_dir} holds checkpoints already; choose another --out")
    model_item = {
        "params": imported.variables["params"],
        "batch_stats": imported.variables.get("batch_stats", {}),
    }
    checkpoint.save(
        ckpt_dir,
        0,
        model=model_item,
        train={"step": np.zeros((), np.int32)},
        meta=to_meta(imported, sigma=sigma),
    )
    return ckpt_dir


def sigma_from_path(path: str | os.PathLike) -> float | None:
    """The sigma named by a `noise_S` component of `path` (Cohen et al.'s `models/.../noise_0.25/
    checkpoint.pth.tar`), or None."""
    for part in reversed(pathlib.Path(path).parts):
        match = re.fullmatch(r"noise_(\d+(?:\.\d+)?)", part)
        if match:
            return float(match.group(1))
    return None


# ----------------------------------------------------------------------------- reading the file


def _serialization(path: pathlib.Path) -> str:
    if not path.exists():
        raise CheckpointImportError(f"no file at {path}")
    if path.is_dir():
        raise CheckpointImportError(
            f"{path} is a directory, not a PyTorch checkpoint file (.pth, .pth.tar)"
        )
    with open(path, "rb") as f:
        head = f.read(32)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
        return "legacy"
    raise CheckpointImportError(
        f"{path} is not a PyTorch checkpoint: it is neither the zip serialisation of torch.save "
        f"(PyTorch >= 1.6) nor the legacy one (PyTorch 1.0-1.5); it starts with {head[:8]!r}"
    )


def _torch_load(path: pathlib.Path):
    try:
        import torch
    except ImportError as e:
        raise CheckpointImportError(
            f"reading the PyTorch checkpoint {path} needs torch, which is not installed: {INSTALL} "
            f"(the converted rsjax checkpoint is certified without it) [{e}]"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        message = str(e)
        refused = re.search(r"GLOBAL ([\w.]+)", message)
        if refused:
            raise CheckpointImportError(
                f"refused {path}: its pickle would call {refused.group(1)}, which is not tensor "
                "data; rsjax reads PyTorch checkpoints with torch.load(weights_only=True) and never "
                "runs code from a file (a pickled nn.Module must be re-saved as its state_dict)"
            ) from None
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        if message.startswith("Weights only load failed"):  # refused, but not for a global
            detail = message.split("WeightsUnpickler error:")[-1].split("Check the documentation")[
                0
            ]
            detail = " ".join(detail.split()) or lines[0]
            raise CheckpointImportError(
                f"refused {path}: its pickle holds more than tensor data, which "
                f"torch.load(weights_only=True) does not build ({detail}); rsjax never runs code "
                "from a file"
            ) from None
        first = lines[0] if lines else type(e).__name__
        raise CheckpointImportError(
            f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {first})"
        ) from None


def _unpack(loaded, path) -> tuple[dict, str | None, int | None]:
    """(state_dict, arch or None, epoch or None) of what torch.load returned."""
    if isinstance(loaded, dict) and "state_dict" in loaded:
        state_dict, arch, epoch = loaded["state_dict"], loaded.get("arch"), loaded.get("epoch")
        if arch is not None and not isinstance(arch, str):
            raise CheckpointImportError(f"{path}: its 'arch' is {arch!r}, not a name")
        epoch = int(epoch) if isinstance(epoch, (int, float)) else None
        if not isinstance(state_dict, dict) or not state_dict:
            raise CheckpointImportError(f"{path}: its 'state_dict' is empty or not a dict")
        bad = [str(k) for k, v in state_dict.items() if not _is_tensor(v)]
        if bad:
            raise CheckpointImportError(
                f"{path}: its state_dict holds non-tensors at {bad[:_SHOWN]}"
            )
        return state_dict, arch, epoch
    if isinstance(loaded, dict) and loaded and all(map(_is_tensor, loaded.values())):
        return loaded, None, None
    what = (
        f"a dict with keys {sorted(map(str, loaded))[:_SHOWN]}"
        if isinstance(loaded, dict)
        else (type(loaded).__name__)
    )
    raise CheckpointImportError(
        f"{path} is a PyTorch file but not a checkpoint of a model: expected a state_dict (names to "
        f"tensors) or Cohen et al.'s {{'arch', 'state_dict', ...}}, found {what}"
    )


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "numpy")


def _to_numpy(tensor) -> np.ndarray:
    tensor = tensor.detach().cpu()
    return tensor.numpy() if not tensor.is_floating_point() else tensor.float().numpy()


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_arch(arch: str):
    if arch in ARCHITECTURES:
        return
    hint = ""
    if arch in ("resnet20", "resnet110"):
        hint = f" ({arch} is rsjax's own ResNet with Flax's padding; PyTorch's is cifar_{arch})"
    raise CheckpointImportError(
        f"unknown architecture {arch!r}{hint}; known: {', '.join(ARCHITECTURES)}"
    )


def _input_shape(dataset: str) -> tuple[int, int, int]:
    if dataset == "imagenet":
        return _IMAGENET_SHAPE
    from rsjax import data  # tensorflow_datasets: imported only for its datasets' shapes

    if dataset not in data.NAMES:
        raise CheckpointImportError(
            f"unknown dataset {dataset!r}; known: {', '.join((*data.NAMES, 'imagenet'))}"
        )
    return tuple(data.image_shape(dataset))


# ----------------------------------------------------------------------------- layer layouts


class _Layer(NamedTuple):
    """One PyTorch module and the Flax module it becomes."""

    torch: str  # module path in the PyTorch model, e.g. "layer1.0.conv1"
    flax: tuple[str, ...]  # module path in the Flax model, e.g. ("BasicBlock_0", "Conv_0")
    kind: str  # "conv", "dense" or "batchnorm"
    flatten: tuple[int, int, int] | None = None  # (C, H, W) a dense layer's input is flattened from


def _pairs(torch_prefix: str, flax_path: tuple, names) -> Iterator[_Layer]:
    """Alternating convolution and batch-norm modules, in the order Flax names them."""
    for k, (conv, norm) in enumerate(zip(names[::2], names[1::2], strict=True)):
        yield _Layer(torch_prefix + conv, (*flax_path, f"Conv_{k}"), "conv")
        yield _Layer(torch_prefix + norm, (*flax_path, f"BatchNorm_{k}"), "batchnorm")


def _resnet_layers(block: str, stages: list[int], convs: int) -> Iterator[_Layer]:
    yield from _pairs("", (), ("conv1", "bn1"))
    n = 0
    for stage, blocks in enumerate(stages):
        for i in range(blocks):
            names = [f"{kind}{j}" for j in range(1, convs + 1) for kind in ("conv", "bn")]
            if i == 0 and (stage > 0 or block == "Bottleneck"):
                names += ["downsample.0", "downsample.1"]
            yield from _pairs(f"layer{stage + 1}.{i}.", (f"{block}_{n}",), names)
            n += 1
    yield _Layer("fc", ("Dense_0",), "dense")


def _layers(arch: str, input_shape) -> list[_Layer]:
    h, w, c = input_shape
    lenet_flat = (50, ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2)
    if arch in ("cifar_resnet20", "cifar_resnet110"):
        blocks = (int(arch.removeprefix("cifar_resnet")) - 2) // 6
        return list(_resnet_layers("BasicBlock", [blocks] * 3, 2))
    if arch == "resnet50":
        return list(_resnet_layers("Bottleneck", [3, 4, 6, 3], 3))
    if arch == "lenet":
        return [
            _Layer("conv1", ("Conv_0",), "conv"),
            _Layer("conv2", ("Conv_1",), "conv"),
            _Layer("fc1", ("Dense_0",), "dense", lenet_flat),
            _Layer("fc2", ("Dense_1",), "dense"),
        ]
    if arch == "lenet_bn":
        return [
            *_pairs("", (), ("conv1", "bn1", "conv2", "bn2")),
            _Layer("fc1", ("Dense_0",), "dense", lenet_flat),
            _Layer("bn3", ("BatchNorm_2",), "batchnorm"),
            _Layer("fc2", ("Dense_1",), "dense"),
        ]
    return [_Layer("fc", ("Dense_0",), "dense", (c, h, w))]  # linear


# ----------------------------------------------------------------------------- conversion


def _slots(layer: _Layer, params: dict, stats: dict) -> dict[str, tuple[str, str, tuple]]:
    """PyTorch parameter name -> (collection, Flax name, PyTorch shape) for one layer."""
    p = _at(params, layer.flax)
    if layer.kind == "batchnorm":
        s = _at(stats, layer.flax)
        return {
            "weight": ("params", "scale", p["scale"].shape),
            "bias": ("params", "bias", p["bias"].shape),
            "running_mean": ("batch_stats", "mean", s["mean"].shape),
            "running_var": ("batch_stats", "var", s["var"].shape),
        }
    kernel = p["kernel"].shape
    if layer.kind == "conv":  # (kh, kw, in, out) -> (out, in, kh, kw)
        shape = (kernel[3], kernel[2], kernel[0], kernel[1])
    else:  # (in, out) -> (out, in)
        shape = kernel[::-1]
    slots = {"weight": ("params", "kernel", shape)}
    if "bias" in p:
        slots["bias"] = ("params", "bias", p["bias"].shape)
    return slots


def _at(tree: dict, path: tuple):
    for name in path:
        tree = tree[name]
    return tree


def _to_flax(layer: _Layer, name: str, array: np.ndarray) -> np.ndarray:
    if name != "weight" or layer.kind == "batchnorm":
        return array
    if layer.kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if layer.flatten is not None:  # PyTorch flattens (C, H, W), Flax (H, W, C)
        out, (c, h, w) = array.shape[0], layer.flatten
        return array.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)
    return array.T


def _strip_prefix(keys, expected: set) -> str:
    """The prefix (PREFIXES) under which most keys are expected ones."""
    return max(
        PREFIXES,
        key=lambda p: sum(k.startswith(p) and k[len(p) :] in expected for k in keys),
    )


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _convert(arrays: dict, arch: str, dataset: str, input_shape, path):
    """(variables, num_classes, model) from the state_dict's arrays, every key checked."""
    layers = _layers(arch, input_shape)
    finals = [arrays.get(prefix + layers[-1].torch + ".weight") for prefix in PREFIXES]
    classes = [final.shape[0] for final in finals if final is not None and final.ndim == 2]
    num_classes = classes[0] if classes else 10  # no final layer: reported as a missing key
    model = models.make_model(arch, num_classes=num_classes, dataset=dataset)
    shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), input_shape))
    params, stats = shapes["params"], shapes.get("batch_stats", {})
    slots = {}  # PyTorch key (no prefix) -> (layer, name, collection, Flax name, shape)
    optional = set()
    for layer in layers:
        for name, (collection, flax_name, shape) in _slots(layer, params, stats).items():
            slots[f"{layer.torch}.{name}"] = (layer, name, collection, flax_name, shape)
        if layer.kind == "batchnorm":
            optional.add(f"{layer.torch}.num_batches_tracked")
    prefix = _strip_prefix(arrays, set(slots))
    given = {k[len(prefix) :]: k for k in arrays if k.startswith(prefix)}
    missing = [prefix + k for k in slots if k not in given]
    unexpected = [k for k in arrays if not k.startswith(prefix)]
    unexpected += [full for k, full in given.items() if k not in slots and k not in optional]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listed(unexpected)}")
        raise CheckpointImportError(
            f"{path}: its state_dict does not match {arch} ({'; '.join(problems)})"
        )
    wrong = [
        f"{given[key]} has shape {tuple(arrays[given[key]].shape)} in the file, {arch} expects "
        f"{tuple(shape)}"
        for key, (_, _, _, _, shape) in slots.items()
        if tuple(arrays[given[key]].shape) != tuple(shape)
    ]
    if wrong:
        raise CheckpointImportError(f"{path}: wrong shapes: {'; '.join(wrong[:_SHOWN])}")
    variables: dict = {"params": {}, "batch_stats": {}}
    for key, (layer, name, collection, flax_name, _) in slots.items():
        array = arrays[given[key]]
        if not np.all(np.isfinite(array)):
            raise CheckpointImportError(f"{path}: {given[key]} holds NaN or inf")
        node = variables[collection]
        for part in layer.flax:
            node = node.setdefault(part, {})
        node[flax_name] = jnp.asarray(_to_flax(layer, name, array), jnp.float32)
    if not variables["batch_stats"]:
        del variables["batch_stats"]
    return variables, num_classes, model
