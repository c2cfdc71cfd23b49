"""The baseline users run instead of rsjax: a clean-room PyTorch version of the reference CERTIFY loop.

Written from the description of Cohen et al.'s released code (`core.Smooth.certify`), not copied from
it. One image at a time: the image is repeated `batch` times (default 1,000), Gaussian noise from
torch.randn times sigma is added, the model's argmax is taken, and the class counts are accumulated
in numpy on the host; n0 selection draws pick the candidate, n fresh estimation draws count it, and the
one-sided Clopper-Pearson lower bound comes from scipy (beta.ppf(alpha, nA, n - nA + 1)). The only
deliberate departure: the votes are counted with np.bincount rather than a Python loop over the
predictions, so that the baseline is not slowed by its bookkeeping.

The PyTorch models equal rsjax's Flax ones (rsjax.models) layer for layer, in NCHW: the per-channel
normalisation is the first operation, then the same convolutions, pooling, batch norm in eval mode
(running statistics, epsilon 1e-5 as flax's default) and dense layers. `from_flax` copies a Flax
variables dict into them:
- conv kernels HWIO -> OIHW, dense kernels (in, out) -> (out, in);
- Flax flattens the last feature map in NHWC order and PyTorch in NCHW order, so the columns of the
  first dense layer after the convolutions are permuted;
- Flax's "SAME" padding of a stride-2 3x3 convolution on an even size pads 0 before and 1 after, where
  PyTorch's padding=1 pads 1 on both sides (a shifted sampling grid); the PyTorch ResNet pads
  explicitly as XLA does.

A dataset split, certified by the reference loop into the standard TSV (`certify_split`; resumes
as experiments/certify.py does, through rsjax.records.CertificationTSV), from a PyTorch checkpoint
file read by PyTorch itself (`load_torch_model`: a bare LeNet state_dict, or Cohen et al.'s dict):

  python benchmarks/torch_reference.py CKPT --arch lenet --dataset fashion_mnist --sigma 0.25 \
      --skip 20 --n0 100 --n 10000 --alpha 0.001 --out runs/x/pytorch.tsv

PyTorch is an optional benchmark extra (`pip install -e ".[bench]"`); nothing in rsjax imports this
file. Importing it sets torch to THREADS (2) intra-op threads.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY; github.com/locuslab/smoothing, the
released PyTorch code this mirrors); rsjax REFERENCE section 1.
"""

import math
import time
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from rsjax import models as flax_models

ABSTAIN = -1
THREADS = 2

torch.set_num_threads(THREADS)


# --------------------------------------------------------------------------------------------------
# Models (NCHW), equal to rsjax.models.


class Normalize(nn.Module):
    """(x - mean) / std per channel; buffers, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class LeNet(nn.Module):
    """conv(20, 5x5) - relu - maxpool - conv(50, 5x5) - relu - maxpool - fc(500) - relu - fc(K)."""

    def __init__(self, num_classes: int, input_shape: Sequence[int], mean=(0.0,), std=(1.0,)):
        super().__init__()
        height, width, channels = input_shape
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.feature_shape = (50, ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2)
        self.fc1 = nn.Linear(math.prod(self.feature_shape), 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.normalize(x)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's "SAME" padding (before, after) of one spatial axis: output ceil(size / stride), the odd
    pixel of padding after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d without bias and with Flax's "SAME" padding, explicit where it is asymmetric."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel, stride, bias=False)
        self.kernel, self.step = kernel, stride

    def forward(self, x):
        (top, bottom), (left, right) = (
            same_padding(size, self.kernel, self.step) for size in x.shape[2:]
        )
        if top == bottom and left == right:
            return F.conv2d(x, self.weight, None, self.stride, (top, left))
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, None, self.stride)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_features: int, features: int, strides: int = 1):
        super().__init__()
        self.conv1 = SameConv2d(in_features, features, 3, strides)
        self.bn1 = nn.BatchNorm2d(features, eps=1e-5)
        self.conv2 = SameConv2d(features, features, 3)
        self.bn2 = nn.BatchNorm2d(features, eps=1e-5)
        self.shortcut = None
        if strides != 1 or in_features != features:
            self.shortcut = nn.Sequential(
                SameConv2d(in_features, features, 1, strides), nn.BatchNorm2d(features, eps=1e-5)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6m + 2 (20: m = 3, 110: m = 18), widths 16-32-64."""

    def __init__(self, num_classes: int, depth: int = 20, mean=(0.0,) * 3, std=(1.0,) * 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6m + 2, got {depth}")
        self.normalize = Normalize(mean, std)
        self.conv = SameConv2d(len(mean), 16, 3)
        self.bn = nn.BatchNorm2d(16, eps=1e-5)
        blocks, in_features = [], 16
        for stage, features in enumerate((16, 32, 64)):
            for block in range((depth - 2) // 6):
                strides = 2 if stage > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_features, features, strides))
                in_features = features
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.normalize(x))))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


# --------------------------------------------------------------------------------------------------
# Weights from a Flax variables dict.

DEPTHS = {"resnet20": 20, "resnet110": 110}


def _tensor(array) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _conv(module: nn.Conv2d, params) -> None:
    """Flax conv kernel (H, W, I, O) -> torch weight (O, I, H, W); bias when the layer has one."""
    module.weight.data.copy_(_tensor(np.transpose(np.asarray(params["kernel"]), (3, 2, 0, 1))))
    if module.bias is not None:
        module.bias.data.copy_(_tensor(params["bias"]))


def _dense(module: nn.Linear, params, feature_shape=None) -> None:
    """Flax dense kernel (in, out) -> torch weight (out, in). With feature_shape = (C, H, W) the input
    is a flattened feature map: Flax's rows are in (H, W, C) order, torch's columns in (C, H, W)."""
    kernel = np.asarray(params["kernel"])
    if feature_shape is not None:
        channels, height, width = feature_shape
        kernel = kernel.reshape(height, width, channels, -1).transpose(2, 0, 1, 3)
        kernel = kernel.reshape(channels * height * width, -1)
    module.weight.data.copy_(_tensor(kernel.T))
    module.bias.data.copy_(_tensor(params["bias"]))


def _batch_norm(module: nn.BatchNorm2d, params, stats_) -> None:
    """Flax BatchNorm scale, bias and running mean, var -> torch weight, bias, running_mean, _var."""
    module.weight.data.copy_(_tensor(params["scale"]))
    module.bias.data.copy_(_tensor(params["bias"]))
    module.running_mean.copy_(_tensor(stats_["mean"]))
    module.running_var.copy_(_tensor(stats_["var"]))


def from_flax(
    model_name: str, variables: dict, *, input_shape: Sequence[int], dataset: str | None = None
) -> nn.Module:
    """The PyTorch model equal to rsjax.models.make_model(model_name, dataset=dataset) with these
    Flax variables, in eval mode.

    Args:
      model_name: "lenet", "resnet20" or "resnet110".
      variables: {"params": ..., and "batch_stats" for the ResNets} as from
        rsjax.models.init_variables or rsjax.train.load_for_eval.
      input_shape: (H, W, C) of the images (LeNet's first dense layer depends on it).
      dataset: normalisation statistics (rsjax.models.NORMALIZATION); None for none.

    Returns:
      the torch module, taking (B, C, H, W) float32 images in [0,1] and returning (B, K) logits.
    """
    if model_name != "lenet" and model_name not in DEPTHS:
        raise ValueError(f"no PyTorch twin for model {model_name!r}; have lenet, {sorted(DEPTHS)}")
    params = variables["params"]
    last = params["Dense_1" if model_name == "lenet" else "Dense_0"]
    num_classes = int(np.shape(last["kernel"])[1])
    channels = int(input_shape[2])
    mean, std = ((0.0,) * channels, (1.0,) * channels)
    if dataset is not None:
        mean, std = flax_models.NORMALIZATION[dataset]
    if model_name == "lenet":
        model = LeNet(num_classes, input_shape, mean, std)
        _conv(model.conv1, params["Conv_0"])
        _conv(model.conv2, params["Conv_1"])
        _dense(model.fc1, params["Dense_0"], model.feature_shape)
        _dense(model.fc2, params["Dense_1"])
    else:
        stats_ = variables["batch_stats"]
        model = CifarResNet(num_classes, DEPTHS[model_name], mean, std)
        _conv(model.conv, params["Conv_0"])
        _batch_norm(model.bn, params["BatchNorm_0"], stats_["BatchNorm_0"])
        for i, block in enumerate(model.blocks):
            p, s = params[f"BasicBlock_{i}"], stats_[f"BasicBlock_{i}"]
            _conv(block.conv1, p["Conv_0"])
            _batch_norm(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
            _conv(block.conv2, p["Conv_1"])
            _batch_norm(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
            if block.shortcut is not None:
                _conv(block.shortcut[0], p["Conv_2"])
                _batch_norm(block.shortcut[1], p["BatchNorm_2"], s["BatchNorm_2"])
        _dense(model.fc, params["Dense_0"])
    return model.eval()


# --------------------------------------------------------------------------------------------------
# The reference certification loop.


class ReferenceCertificate(NamedTuple):
    """One image's CERTIFY result: class or ABSTAIN (-1), radius (0.0 when abstaining), the
    Clopper-Pearson lower bound, and the selection and estimation counts."""

    prediction: int
    radius: float
    pa_lower: float
    counts0: np.ndarray
    counts: np.ndarray


def sample_counts(model, x_chw, num, *, sigma, num_classes, batch=1000, generator=None):
    """Class counts of argmax model(x + sigma * eps) over `num` draws, `batch` noisy copies at a time.

    x_chw: (C, H, W) float32 tensor in [0,1]. Returns (num_classes,) int64 numpy counts.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = num
    with torch.inference_mode():
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            copies = x_chw.repeat((size, 1, 1, 1))
            noise = torch.randn(copies.shape, generator=generator, dtype=copies.dtype) * sigma
            predictions = model(copies + noise).argmax(1)
            counts += np.bincount(predictions.numpy(), minlength=num_classes)
    return counts


def lower_confidence_bound(na: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound: beta.ppf(alpha, nA, n - nA + 1), 0 at nA = 0."""
    return 0.0 if na == 0 else float(stats.beta.ppf(alpha, na, n - na + 1))


def reference_certify(
    model,
    x_chw,
    *,
    n0: int,
    n: int,
    alpha: float,
    sigma: float,
    num_classes: int,
    batch: int = 1000,
    generator: torch.Generator | None = None,
) -> ReferenceCertificate:
    """CERTIFY of one image as the reference code runs it: selection (n0 draws, cA = argmax), then
    estimation (n fresh draws), pA_lower = Clopper-Pearson lower bound of counts[cA] at alpha, and
    (cA, sigma * Phi^-1(pA_lower)) if pA_lower > 1/2, else ABSTAIN.

    x_chw: (C, H, W) float32 tensor in [0,1]; sigma in those units. With probability >= 1 - alpha a
    non-abstaining answer is the smoothed classifier's class, constant on the l2 ball of that radius.
    """
    model.eval()
    counts0 = sample_counts(
        model, x_chw, n0, sigma=sigma, num_classes=num_classes, batch=batch, generator=generator
    )
    top = int(counts0.argmax())
    counts = sample_counts(
        model, x_chw, n, sigma=sigma, num_classes=num_classes, batch=batch, generator=generator
    )
    pa_lower = lower_confidence_bound(int(counts[top]), n, alpha)
    if pa_lower > 0.5:
        return ReferenceCertificate(
            top, float(sigma * stats.norm.ppf(pa_lower)), pa_lower, counts0, counts
        )
    return ReferenceCertificate(ABSTAIN, 0.0, pa_lower, counts0, counts)


def to_nchw(x_nhwc) -> torch.Tensor:
    """NHWC (or HWC) numpy images -> a contiguous NCHW (or CHW) float32 tensor."""
    x = np.asarray(x_nhwc, dtype=np.float32)
    axes = (0, 3, 1, 2) if x.ndim == 4 else (2, 0, 1)
    return torch.from_numpy(np.array(x.transpose(axes), order="C"))


def reference_counts_from_noise(model, x, noise, *, num_classes: int, batch: int = 1000):
    """Class counts of argmax model(x + noise_j) on pre-drawn noise, for parity checks.

    x: (H, W, C) float32 image in [0,1]; noise: (N, H, W, C) float32, already scaled by sigma (the
    noisy inputs x + noise_j are formed in numpy, as a caller forms them for rsjax). Returns
    (num_classes,) int64 numpy counts.
    """
    noisy = np.asarray(x, np.float32)[None] + np.asarray(noise, np.float32)
    counts = np.zeros(num_classes, dtype=np.int64)
    with torch.inference_mode():
        for s in range(0, noisy.shape[0], batch):
            predictions = model(to_nchw(noisy[s : s + batch])).argmax(1)
            counts += np.bincount(predictions.numpy(), minlength=num_classes)
    return counts


# --------------------------------------------------------------------------------------------------
# A dataset split, certified by the reference loop into the standard TSV.


def image_generator(seed: int, idx: int) -> torch.Generator:
    """The reference noise of dataset image `idx`: a torch.Generator seeded from (seed, idx), so a
    resumed run draws what an uninterrupted one would (not rsjax's noise: the two are independent)."""
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + int(idx))


def certify_split(
    model,
    images,
    labels,
    indices,
    *,
    output,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    num_classes: int,
    batch: int = 1000,
    seed: int = 0,
    settings: dict | None = None,
    sidecar: dict | None = None,
    log=None,
):
    """reference_certify on images[i] for i in `indices`, one at a time, each row appended to the
    standard TSV `output` (idx label predict radius correct time; rsjax.records.CertificationTSV,
    with its JSON sidecar and resume: rerun with the same settings, it continues after the last
    row). images: NHWC float32 in [0,1]; the noise of image i comes from image_generator(seed, i).
    Returns the sidecar path."""
    from rsjax import records  # the TSV format and its resume checks, shared with rsjax's runs

    settings = dict(
        settings or {}, sigma=sigma, n0=n0, n=n, alpha=alpha, batch=batch, seed=seed, method="cohen"
    )
    start = time.perf_counter()
    with records.CertificationTSV(
        output, settings, indices=indices, num_classes=num_classes
    ) as tsv:
        resumed = len(tsv.done)
        todo = [int(i) for i in indices][resumed:]
        for k, i in enumerate(todo):
            t0 = time.perf_counter()
            cert = reference_certify(
                model,
                to_nchw(images[i]),
                n0=n0,
                n=n,
                alpha=alpha,
                sigma=sigma,
                num_classes=num_classes,
                batch=batch,
                generator=image_generator(seed, i),
            )
            label = int(labels[i])
            tsv.append(
                [
                    (
                        i,
                        label,
                        cert.prediction,
                        cert.radius,
                        int(cert.prediction == label),
                        time.perf_counter() - t0,
                    )
                ]
            )
            if log and (k + 1) % 25 == 0:
                log(f"{resumed + k + 1}/{len(indices)} images, {time.perf_counter() - start:.0f} s")
        tsv.write_sidecar(
            dict(
                sidecar or {},
                complete=True,
                examples_done=len(tsv.done),
                resumed_from=resumed,
                seconds_this_run=time.perf_counter() - start,
                torch_version=torch.__version__,
                torch_threads=torch.get_num_threads(),
            )
        )
        return tsv.sidecar


def load_torch_model(path, arch: str, dataset: str, num_classes: int = 10):
    """The PyTorch model of a checkpoint file, in eval mode, taking NCHW images in [0, 1]: a bare
    LeNet state_dict (keys conv1, conv2, fc1, fc2) behind a Normalize with rsjax's constants for
    (lenet, dataset), or Cohen et al.'s dict for his architectures (benchmarks/torch_twins.py).
    Read with torch.load(weights_only=True)."""
    import torch_twins  # a sibling module (benchmarks/ on the path)

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    if arch == "lenet":
        shape = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}
        net = torch_twins.LeNet(num_classes, shape[dataset])
        net.load_state_dict(loaded)
        mean, std = flax_models.normalization("lenet", dataset)
        return nn.Sequential(torch_twins.Normalize(mean, std), net).eval()
    model = torch_twins.make_twin(arch, num_classes=num_classes)
    model.load_state_dict(loaded["state_dict"] if "state_dict" in loaded else loaded)
    return model.eval()


def main(argv=None):
    """python benchmarks/torch_reference.py CKPT --arch lenet --dataset fashion_mnist --sigma 0.25
    --skip 20 --n0 100 --n 10000 --alpha 0.001 --out ref.tsv: the reference loop over a test split
    (every --skip-th image of rsjax.data.load's split, the idx of experiments/certify.py)."""
    import argparse
    import hashlib
    import pathlib

    from rsjax import data, records

    p = argparse.ArgumentParser(description="certify a dataset split with the reference loop")
    p.add_argument("checkpoint")
    p.add_argument("--arch", required=True, help="lenet, cifar_resnet20, cifar_resnet110, resnet50")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--sigma", type=float, required=True)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=1)
    p.add_argument("--max", type=int, default=-1)
    p.add_argument("--batch", type=int, default=1000, help="noisy copies per forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=THREADS)
    p.add_argument("--data-source-dir", default=None)
    p.add_argument("--out", required=True, help="the TSV to write (resumes)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    split = data.load(args.dataset, args.split, source_dir=args.data_source_dir)
    stop = len(split.labels) if args.max < 0 else min(args.max, len(split.labels))
    indices = np.arange(0, stop, args.skip)
    model = load_torch_model(args.checkpoint, args.arch, args.dataset)
    sha256 = hashlib.sha256(pathlib.Path(args.checkpoint).read_bytes()).hexdigest()
    env = records.environment()
    sidecar = certify_split(
        model,
        split.images,
        split.labels,
        indices,
        output=args.out,
        sigma=args.sigma,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        num_classes=10 if args.arch != "resnet50" else 1000,
        batch=args.batch,
        seed=args.seed,
        settings={
            "dataset": args.dataset,
            "split": args.split,
            "skip": args.skip,
            "max": args.max,
            "checkpoint_sha256": sha256,
        },
        sidecar={
            "implementation": "benchmarks/torch_reference.py",
            "checkpoint": args.checkpoint,
            "processor": env["platform"],
            "versions": env["versions"],
            "git_commit": env["git_commit"],
        },
        log=lambda line: print(line, flush=True),
    )
    print(f"wrote {args.out} ({sidecar})")


if __name__ == "__main__":
    main()
