"""PyTorch models in the key layouts of the field's checkpoints, for importing into rsjax.

Where benchmarks/torch_reference.py builds PyTorch copies *of* rsjax's Flax models (from_flax), this
file goes the other way: plain PyTorch models written as the checkpoints rsjax.torch_import reads
were written, so that a file saved here is read by `torch_import.load_checkpoint` exactly as a
published one would be.

  LeNet            conv1, conv2, fc1, fc2 (rsjax's `lenet`: conv20-conv50-fc500, VALID 5x5, max pool)
  CifarResNet      Cohen et al.'s CIFAR ResNet (bearpaw's): conv1, bn1, layer{1,2,3}.{i}.{conv1,bn1,
                   conv2,bn2}, layer{2,3}.0.downsample.{0,1}, fc; padding=1 on every side
  ResNet50         torchvision's ImageNet ResNet-50 v1.5: conv1 7x7/2, bn1, maxpool 3x3/2,
                   layer{1..4} of 3, 4, 6, 3 bottlenecks (stride on the 3x3), downsample, fc

`make_twin(arch)` wraps the network as Cohen et al.'s `Sequential(NormalizeLayer, net)` (the
ImageNet net also inside a DataParallel-like `module`), so that its state_dict keys start with `1.`
(`1.module.`) and carry no normalisation constants, as his files do. `save_cohen_checkpoint`
writes his `{"epoch", "arch", "state_dict", "optimizer"}` dict.

Random weights for timing: PyTorch's default initialisation, then every batch norm's running
statistics are those of a batch of uniform random images (train-mode forward pass with cumulative
averaging) and its affine parameters are drawn at random, so that eval-mode batch norm is neither
the identity nor an exploding map through 54 residual blocks.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (github.com/locuslab/smoothing: code/archs/
cifar_resnet.py, code/architectures.py, code/datasets.py); torchvision models/resnet.py; rsjax
REFERENCE section 7.
"""

from typing import Sequence

import numpy as np
import torch
from torch import nn

from rsjax import models as flax_models

ARCHS = ("lenet", "cifar_resnet20", "cifar_resnet110", "resnet50")
INPUT_SHAPES = {  # (H, W, C)
    "cifar_resnet20": (32, 32, 3),
    "cifar_resnet110": (32, 32, 3),
    "resnet50": (224, 224, 3),
}
DATASETS = {"cifar_resnet20": "cifar10", "cifar_resnet110": "cifar10", "resnet50": "imagenet"}


class Normalize(nn.Module):
    """(x - mean) / std per channel, constants as plain tensors (not buffers): like Cohen et al.'s
    NormalizeLayer, they are not in the state_dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def forward(self, x):
        return (x - self.mean) / self.std


class LeNet(nn.Module):
    """rsjax's `lenet` in PyTorch: conv(20, 5x5) - relu - maxpool 2 - conv(50, 5x5) - relu - maxpool
    2 - fc(500) - relu - fc(K); no normalisation (wrap it with Normalize)."""

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = (28, 28, 1)):
        super().__init__()
        height, width, channels = input_shape
        self.conv1 = nn.Conv2d(channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        flat = 50 * (((height - 4) // 2 - 4) // 2) * (((width - 4) // 2 - 4) // 2)
        self.fc1 = nn.Linear(flat, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def _conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout, 1, stride), nn.BatchNorm2d(cout))


class CifarBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, cout, 3, stride), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = _conv(cout, cout, 3), nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """Cohen et al.'s CIFAR ResNet of depth 6m + 2, widths 16-32-64, AvgPool2d(8), fc."""

    def __init__(self, depth: int = 110, num_classes: int = 10):
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1, self.bn1 = _conv(3, 16, 3), nn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            layer = []
            for i in range(blocks):
                layer.append(CifarBasicBlock(cin, width, 2 if stage and i == 0 else 1))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(x, 8), 1))


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: 1x1 (w) - 3x3 (w, stride) - 1x1 (4w), each with batch norm."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(cin, width, 1), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = _conv(width, width, 3, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = _conv(width, 4 * width, 1), nn.BatchNorm2d(4 * width)
        self.downsample = None
        if stride != 1 or cin != 4 * width:
            self.downsample = _downsample(cin, 4 * width, stride)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """torchvision's resnet50 (same module names, so the same state_dict keys)."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 64, 7, 2), nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        cin = 64
        for stage, (blocks, width) in enumerate(
            zip((3, 4, 6, 3), (64, 128, 256, 512), strict=True)
        ):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(cin, width, 2 if stage and i == 0 else 1))
                cin = 4 * width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(x.mean(dim=(2, 3)), 1))


class DataParallelKeys(nn.Module):
    """Holds `module` as nn.DataParallel does, so that keys read `module.<name>` (CPU only)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


def randomize_batch_norm(model: nn.Module, images: torch.Tensor, generator: torch.Generator):
    """Running statistics of every BatchNorm from one train-mode pass over `images` (cumulative
    average), then random affine weights (0.5-1.5) and biases (N(0, 0.1^2)); returns model.eval()."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
        for m in norms:
            m.momentum = 0.1
            m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=generator))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=generator))
    return model.eval()


def make_twin(arch: str, *, num_classes: int | None = None, seed: int = 0) -> nn.Module:
    """Cohen et al.'s `Sequential(NormalizeLayer, net)` for `arch` (CifarResNet or ResNet50), random
    weights from `seed`, in eval mode; it takes (B, C, H, W) float32 images in [0, 1]. The
    normalisation constants are those rsjax uses for the architecture
    (rsjax.models.normalization(arch, dataset)); its state_dict keys are his (`1.` or `1.module.`)."""
    if arch not in INPUT_SHAPES:
        raise ValueError(f"no twin for {arch!r}; have {sorted(INPUT_SHAPES)}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    if arch == "resnet50":
        net = DataParallelKeys(ResNet50(num_classes or 1000))
    else:
        net = CifarResNet(int(arch.removeprefix("cifar_resnet")), num_classes or 10)
    mean, std = flax_models.normalization(arch, DATASETS[arch])
    model = nn.Sequential(Normalize(mean, std), net)
    h, w, c = INPUT_SHAPES[arch]
    calibration = torch.rand((8 if arch == "resnet50" else 32, c, h, w), generator=generator)
    return randomize_batch_norm(model, calibration, generator)


def save_cohen_checkpoint(model: nn.Module, path, arch: str, *, epoch: int = 0) -> None:
    """torch.save of Cohen et al.'s checkpoint dict (his code/train.py), optimizer state left empty."""
    torch.save(
        {"epoch": epoch, "arch": arch, "state_dict": model.state_dict(), "optimizer": {}}, path
    )


def to_nchw(x_nhwc) -> torch.Tensor:
    """NHWC numpy images -> a contiguous NCHW float32 tensor."""
    x = np.asarray(x_nhwc, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
