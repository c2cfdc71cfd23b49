"""rsjax.torch_import against PyTorch twins of each architecture, built with plain torch.nn from the
layer layouts (Cohen et al.'s code/archs/cifar_resnet.py, torchvision's ResNet-50, rsjax's LeNets),
with random weights and batch-norm statistics, saved as his train.py saves them in both
serialisations; and the refusals (code in the pickle, wrong keys and shapes, not a checkpoint).
"""

import importlib.util
import json
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from rsjax import models, torch_import, train

torch = pytest.importorskip("torch")
nn = torch.nn

REPO = pathlib.Path(__file__).resolve().parents[1]
COHEN = models.COHEN_NORMALIZATION


# ----------------------------------------------------------------------------- PyTorch twins


class NormalizeLayer(nn.Module):
    """Cohen et al.'s: the constants are plain tensors, not buffers (not in the state_dict)."""

    def __init__(self, mean, std):
        super().__init__()
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def forward(self, x):
        return (x - self.mean[None, :, None, None]) / self.std[None, :, None, None]


def conv_bn(cin, cout, k, stride=1, padding=0):
    return nn.Conv2d(cin, cout, k, stride, padding, bias=False), nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride, 1)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, 1)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(*conv_bn(cin, cout, 1, stride))

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, width, 1)
        self.conv2, self.bn2 = conv_bn(width, width, 3, stride, 1)
        self.conv3, self.bn3 = conv_bn(width, 4 * width, 1)
        self.downsample = None
        if stride != 1 or cin != 4 * width:
            self.downsample = nn.Sequential(*conv_bn(cin, 4 * width, 1, stride))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    def __init__(self, depth, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 16, 3, 1, 1)
        cin, n = 16, (depth - 2) // 6
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(cin, width, 2 if stage and not i else 1))
                cin = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AvgPool2d(8)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2, 3)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for stage, blocks in enumerate((3, 4, 6, 3)):
            layer = []
            for i in range(blocks):
                layer.append(Bottleneck(cin, 64 * 2**stage, 2 if stage and not i else 1))
                cin = 4 * 64 * 2**stage
            setattr(self, f"layer{stage + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class LeNet(nn.Module):
    """rsjax's LeNet (and LeNetBN: bias-free layers, batch norm before each relu)."""

    def __init__(self, batch_norm, num_classes=10):
        super().__init__()
        self.batch_norm = batch_norm
        self.conv1 = nn.Conv2d(1, 20, 5, bias=not batch_norm)
        self.conv2 = nn.Conv2d(20, 50, 5, bias=not batch_norm)
        self.fc1 = nn.Linear(800, 500, bias=not batch_norm)
        self.fc2 = nn.Linear(500, num_classes)
        if batch_norm:
            self.bn1, self.bn2, self.bn3 = (
                nn.BatchNorm2d(20),
                nn.BatchNorm2d(50),
                nn.BatchNorm1d(500),
            )

    def norm(self, i, x):
        return getattr(self, f"bn{i}")(x) if self.batch_norm else x

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.norm(1, self.conv1(x))), 2)
        x = torch.max_pool2d(torch.relu(self.norm(2, self.conv2(x))), 2)
        return self.fc2(torch.relu(self.norm(3, self.fc1(x.flatten(1)))))


class Linear(nn.Module):
    def __init__(self, inputs, num_classes=10):
        super().__init__()
        self.fc = nn.Linear(inputs, num_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def twin(arch, seed=0):
    """(PyTorch model in eval mode, dataset, image shape (H, W, C)) with random weights and random
    batch-norm statistics and affine parameters."""
    torch.manual_seed(seed)
    if arch.startswith("cifar_resnet"):
        net, dataset, shape = CifarResNet(int(arch.removeprefix("cifar_resnet"))), "cifar10", 32
        mean, std = COHEN["cifar10"]
    elif arch == "resnet50":
        net, dataset, shape = nn.DataParallel(ResNet50()), "imagenet", 64
        mean, std = COHEN["imagenet"]
    else:
        # rsjax's own models normalise with the dataset's rsjax constants; linear on CIFAR-10 checks
        # the (C, H, W) flatten on three channels
        dataset, shape = ("cifar10", 32) if arch == "linear" else ("mnist", 28)
        net = {"lenet": LeNet(False), "lenet_bn": LeNet(True), "linear": Linear(32 * 32 * 3)}[arch]
        mean, std = models.NORMALIZATION[dataset]
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.num_features, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
                m.num_batches_tracked.fill_(1000)
    model = nn.Sequential(NormalizeLayer(mean, std), net).eval()
    channels = 1 if dataset == "mnist" else 3
    return model, dataset, (shape, shape, channels)


def save_cohen(model, arch, path, legacy):
    """His code/train.py: torch.save({'epoch', 'arch', 'state_dict', 'optimizer'})."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if arch != "resnet50":  # (its 25M momentum buffers would only slow the test down)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()  # momentum buffers in the optimizer state; zero gradients move nothing
    state = {"epoch": 90, "arch": arch, "state_dict": model.state_dict(),
             "optimizer": optimizer.state_dict()}  # fmt: skip
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def torch_logits(model, x_nhwc):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))).numpy()


def assert_logits_match(imported, model, x):
    got = np.asarray(imported.logits_fn(imported.variables, x))
    want = torch_logits(model, x)
    assert got.shape == want.shape and got.dtype == want.dtype == np.float32
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, (np.abs(got - want).max(), scale)


def images(shape, count, seed=0):
    return np.random.default_rng(seed).uniform(size=(count, *shape)).astype(np.float32)


# ----------------------------------------------------------------------------- equal logits


@pytest.mark.parametrize(
    "arch,count",
    [
        ("cifar_resnet20", 2),
        ("resnet50", 2),  # at 64x64: fully convolutional up to the global pool
        ("lenet", 2),
        ("lenet_bn", 2),
        ("linear", 2),
        pytest.param("cifar_resnet110", 1, marks=pytest.mark.slow),
    ],
)
def test_logits_equal_pytorch_in_both_serialisations(tmp_path, arch, count):
    model, dataset, shape = twin(arch)
    cohen = arch in torch_import.DEFAULT_DATASET
    loaded = []
    for legacy in (False, True):
        path = tmp_path / f"{arch}_{legacy}.pth.tar"
        if cohen:  # his dict, "1." (and "1.module." for the ImageNet ResNet-50) prefixes
            save_cohen(model, arch, path, legacy)
            loaded.append(torch_import.load_checkpoint(path))
        else:  # rsjax's own architecture: a bare state_dict of the network, arch and dataset given
            torch.save(model[1].state_dict(), path, _use_new_zipfile_serialization=not legacy)
            loaded.append(torch_import.load_checkpoint(path, arch=arch, dataset=dataset))
        assert loaded[-1].source["serialization"] == ("legacy" if legacy else "zip")
    zipped, legacy = loaded
    jax.tree.map(np.testing.assert_array_equal, zipped.variables, legacy.variables)
    assert (zipped.arch, zipped.dataset, zipped.num_classes) == (
        arch,
        dataset,
        1000 if arch == "resnet50" else 10,
    )
    assert zipped.input_shape == ((224, 224, 3) if arch == "resnet50" else shape)
    assert ("batch_stats" in zipped.variables) == (arch not in ("lenet", "linear"))
    assert_logits_match(zipped, model, images(shape, count))


@pytest.mark.slow
def test_resnet50_at_imagenet_size(tmp_path):
    model, _, _ = twin("resnet50", seed=3)
    imported = torch_import.load_checkpoint(save_cohen(model, "resnet50", tmp_path / "r50", True))
    assert_logits_match(imported, model, images((224, 224, 3), 2))


def test_padding_and_constants_matter(tmp_path):
    """The checks above can fail: the same weights with Flax's "SAME" padding (rsjax's resnet20) or
    with rsjax's CIFAR-10 standard deviations give other logits than the PyTorch model."""
    model, _, shape = twin("cifar_resnet20")
    imported = torch_import.load_checkpoint(
        save_cohen(model, "cifar_resnet20", tmp_path / "c.pth", False)
    )
    x = images(shape, 2)
    want = torch_logits(model, x)
    mean, std = COHEN["cifar10"]
    same_padding = models.CifarResNet(num_classes=10, depth=20, mean=mean, std=std)
    rsjax_stats = models.make_model("resnet20", num_classes=10, dataset="cifar10").clone(
        padding="SYMMETRIC"
    )
    for wrong in (same_padding, rsjax_stats):
        got = np.asarray(wrong.apply(imported.variables, x))
        assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()  # 10x the tolerance


# ----------------------------------------------------------------------------- the converted copy


def run_script(name, argv):
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def write_cifar_test_batch(folder, count):
    """A CIFAR-10 python-pickle folder (the format rsjax.data reads) with `count` test images."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 1) for i in range(1, 6)] + [("test_batch", count)]:
        batch = {b"batch_label": name.encode(), b"filenames": [b"x.png"] * n,
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


def test_converted_copy_certifies_without_torch(tmp_path):
    model, _, shape = twin("cifar_resnet20", seed=5)
    source = tmp_path / "models" / "cifar10" / "resnet20" / "noise_0.25"
    source.mkdir(parents=True)
    path = save_cohen(model, "cifar_resnet20", source / "checkpoint.pth.tar", legacy=True)
    run_script("import_torch", [str(path), "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as exit_:  # never over an existing run
        run_script("import_torch", [str(path), "--out", str(tmp_path / "run")])
    assert exit_.value.code == 1

    # The restored rsjax checkpoint is the PyTorch model, and the meta says where it came from.
    flax_model, variables, meta, step = train.load_for_eval(tmp_path / "run" / "checkpoints")
    x = images(shape, 2, seed=1)
    got = np.asarray(models.make_logits_fn(flax_model)(variables, x))
    want = torch_logits(model, x)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    assert step == 0 and meta["sigma"] == 0.25 and meta["model"] == "cifar_resnet20"
    assert meta["dataset"] == "cifar10" and meta["input_shape"] == [32, 32, 3]
    assert meta["normalization"] == {"mean": list(COHEN["cifar10"][0]),
                                     "std": list(COHEN["cifar10"][1])}  # fmt: skip
    assert meta["imported_from"]["sha256"] == torch_import._sha256(path)
    assert meta["imported_from"]["arch"] == "cifar_resnet20"
    assert meta["imported_from"]["epoch"] == 90

    # certify.py in a process where `import torch` fails (and records that it was tried).
    shim = tmp_path / "no_torch"
    (shim / "torch").mkdir(parents=True)
    (shim / "torch" / "__init__.py").write_text(
        f"open({str(tmp_path / 'torch_imported')!r}, 'w').close()\n"
        "raise ImportError('torch is not installed in this test')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(shim), str(REPO)]))
    data_src = write_cifar_test_batch(tmp_path / "cifar-10-batches-py", 3)
    out = subprocess.run(
        [sys.executable, "experiments/certify.py", "--workdir", str(tmp_path / "run"),
         "--data-source-dir", str(data_src), "--data-dir", str(tmp_path / "tfds"),
         "--max", "2", "--n0", "10", "--n", "100", "--methods", "cohen",
         "--outdir", str(tmp_path / "cert")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert not (tmp_path / "torch_imported").exists()
    rows = (tmp_path / "cert" / "cohen.tsv").read_text().splitlines()
    assert rows[0].split("\t")[:3] == ["idx", "label", "predict"]
    assert [row.split("\t")[0] for row in rows[1:]] == ["0", "1"]

    # One command from the PyTorch file (--torch-checkpoint): the same rows (but the time column),
    # and the sidecar names the file by its sha256.
    direct = subprocess.run(
        [sys.executable, "experiments/certify.py", "--torch-checkpoint", str(path),
         "--data-source-dir", str(data_src), "--data-dir", str(tmp_path / "tfds"),
         "--max", "2", "--n0", "10", "--n", "100", "--methods", "cohen",
         "--outdir", str(tmp_path / "cert_direct")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert direct.returncode == 0, direct.stderr[-3000:]
    tsv = tmp_path / "cert_direct" / "cohen.tsv"
    direct_rows = tsv.read_text().splitlines()
    assert [r.split("\t")[:5] for r in direct_rows] == [r.split("\t")[:5] for r in rows]
    sidecar = json.loads(tsv.with_name("cohen.tsv.json").read_text())
    assert sidecar["imported_from"]["sha256"] == torch_import._sha256(path)
    assert sidecar["settings"]["params_sha256"] == json.loads(
        (tmp_path / "cert" / "cohen.tsv.json").read_text()
    )["settings"]["params_sha256"]


def test_sigma_from_path():
    assert torch_import.sigma_from_path("models/imagenet/resnet50/noise_0.50/ck.pth.tar") == 0.5
    assert torch_import.sigma_from_path("models/cifar10/resnet110/noise_1/c.pth") == 1.0
    assert torch_import.sigma_from_path("runs/noisy_0.25/c.pth") is None


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def cifar20(tmp_path):
    """(state_dict, save(state_dict) -> path) of a cifar_resnet20 twin in Cohen et al.'s format."""
    model, _, _ = twin("cifar_resnet20")

    def save(state_dict, arch="cifar_resnet20"):
        path = tmp_path / "edited.pth"
        torch.save({"epoch": 1, "arch": arch, "state_dict": state_dict, "optimizer": {}}, path)
        return path

    return model.state_dict(), save


def test_unknown_architecture_lists_the_known_ones(cifar20):
    state_dict, save = cifar20
    with pytest.raises(torch_import.CheckpointImportError, match="unknown architecture 'vgg16'.*"
                       "cifar_resnet20, cifar_resnet110, resnet50, lenet"):  # fmt: skip
        torch_import.load_checkpoint(save(state_dict, arch="vgg16"))
    with pytest.raises(torch_import.CheckpointImportError, match="PyTorch's is cifar_resnet20"):
        torch_import.load_checkpoint(save(state_dict, arch="resnet20"))
    with pytest.raises(torch_import.CheckpointImportError, match="records arch 'cifar_resnet20'"):
        torch_import.load_checkpoint(save(state_dict), arch="cifar_resnet110")


def test_missing_unexpected_and_misshapen_keys_are_named(cifar20):
    state_dict, save = cifar20
    edited = dict(state_dict)
    del edited["1.fc.bias"], edited["1.layer2.0.downsample.1.running_var"]
    edited["1.extra.weight"] = torch.zeros(3)
    with pytest.raises(
        torch_import.CheckpointImportError,
        match=r"missing keys: 1\.fc\.bias, 1\.layer2\.0\.downsample\.1\.running_var; "
        r"unexpected keys: 1\.extra\.weight",
    ):
        torch_import.load_checkpoint(save(edited))
    edited = dict(state_dict, **{"1.layer1.0.conv1.weight": torch.zeros(16, 16, 5, 5)})
    with pytest.raises(
        torch_import.CheckpointImportError,
        match=r"1\.layer1\.0\.conv1\.weight has shape \(16, 16, 5, 5\) in the file, "
        r"cifar_resnet20 expects \(16, 16, 3, 3\)",
    ):
        torch_import.load_checkpoint(save(edited))
    edited = dict(state_dict, **{"1.fc.bias": torch.full((10,), float("nan"))})
    with pytest.raises(torch_import.CheckpointImportError, match=r"1\.fc\.bias holds NaN"):
        torch_import.load_checkpoint(save(edited))


def test_a_bare_state_dict_needs_its_arch_and_an_rsjax_model_its_dataset(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(LeNet(False).state_dict(), path)
    with pytest.raises(torch_import.CheckpointImportError, match="pass arch= .*lenet"):
        torch_import.load_checkpoint(path)
    with pytest.raises(torch_import.CheckpointImportError, match="pass dataset="):
        torch_import.load_checkpoint(path, arch="lenet")
    with pytest.raises(
        torch_import.CheckpointImportError, match="no normalisation statistics for dataset 'svhn'"
    ):
        torch_import.load_checkpoint(path, arch="lenet", dataset="svhn")


class WritesMarker:
    """Unpickling this would write a file (a pickle can call any function this way)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_pickle_that_calls_a_function_is_refused(tmp_path, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"arch": "cifar_resnet20", "state_dict": {"1.fc.weight": WritesMarker(marker)}},
               path, _use_new_zipfile_serialization=not legacy)  # fmt: skip
    with pytest.raises(torch_import.CheckpointImportError, match=r"refused .*system"):
        torch_import.load_checkpoint(path)
    assert not marker.exists()
    if not legacy:  # INST, an opcode weights_only refuses: plain pickle would run os.system
        source = tmp_path / "plain.pth"
        torch.save({"state_dict": {"w": torch.zeros(1)}}, source)
        with zipfile.ZipFile(source) as zin, zipfile.ZipFile(path, "w") as zout:
            for item in zin.infolist():
                payload = zin.read(item.filename)
                if item.filename.endswith("/data.pkl"):
                    payload = f"(S'touch {marker}'\nios\nsystem\n.".encode()
                zout.writestr(item, payload)
        with pytest.raises(
            torch_import.CheckpointImportError, match="refused .*Unsupported operand"
        ):
            torch_import.load_checkpoint(path, arch="lenet", dataset="mnist")
        assert not marker.exists()
    torch.save(LeNet(False), path)  # a whole pickled nn.Module: its class would be imported
    with pytest.raises(torch_import.CheckpointImportError, match=r"refused .*LeNet.*state_dict"):
        torch_import.load_checkpoint(path, arch="lenet", dataset="mnist")


def test_files_that_are_not_pytorch_checkpoints(tmp_path):
    marker = tmp_path / "marker"
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"state_dict": WritesMarker(marker)}, protocol=2))
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    for path in (plain, text):
        with pytest.raises(torch_import.CheckpointImportError, match="is not a PyTorch checkpoint"):
            torch_import.load_checkpoint(path)
    assert not marker.exists()
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "other.pth")
    with pytest.raises(torch_import.CheckpointImportError, match="not a checkpoint of a model"):
        torch_import.load_checkpoint(tmp_path / "other.pth", arch="lenet", dataset="mnist")
    with pytest.raises(torch_import.CheckpointImportError, match="no file at"):
        torch_import.load_checkpoint(tmp_path / "missing.pth")


def test_without_torch_the_error_names_the_extra(tmp_path, monkeypatch):
    path = tmp_path / "lenet.pth"
    torch.save(LeNet(False).state_dict(), path)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(torch_import.CheckpointImportError, match=r'pip install -e "\.\[torch\]"'):
        torch_import.load_checkpoint(path, arch="lenet", dataset="mnist")
