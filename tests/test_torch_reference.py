"""The PyTorch reference of benchmarks/torch_reference.py against rsjax: same model, same weights, same
counts on the same noise; and a smoke run of benchmarks/vs_pytorch.py. Skipped without torch (the
optional `bench` extra)."""

import functools
import json
import os
import subprocess
import sys
from importlib import util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rsjax  # noqa: E402
from rsjax import models, votes  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
    spec = util.spec_from_file_location(name, f"{REPO}/benchmarks/{name}.py")
    module = util.module_from_spec(spec)
    sys.modules[name] = module  # vs_pytorch imports torch_reference by name
    spec.loader.exec_module(module)
    return module


tr = _load("torch_reference")
twins = _load("torch_twins")  # vs_pytorch and load_torch_model import it by name

CASES = {
    # name: (input shape, dataset normalisation, final dense layer, noise samples for the count tests)
    "lenet": ((28, 28, 1), "mnist", "Dense_1", 1000),
    "resnet20": ((32, 32, 3), "cifar10", "Dense_0", 256),
}
SIGMA = 0.5


def _randomise_batch_norm(variables, key):
    """Random scale, bias and running statistics for every batch norm (init has 1, 0, 0, 1, which
    would not tell mean from bias or scale from var)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(variables)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        name, k = jax.tree_util.keystr(path), jax.random.fold_in(key, i)
        if name.endswith("['mean']") or (name.endswith("['bias']") and "BatchNorm" in name):
            leaf = 0.2 * jax.random.normal(k, leaf.shape)
        elif name.endswith("['var']") or name.endswith("['scale']"):
            leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


@functools.cache
def _model(name):
    """(flax model, random-init variables with random batch norm), made once per model."""
    shape, dataset, _, _ = CASES[name]
    model = models.make_model(name, num_classes=10, dataset=dataset)
    variables = models.init_variables(model, jax.random.key(0), shape)
    return model, _randomise_batch_norm(variables, jax.random.key(1))


def _setup(name, *, spread=True):
    """(flax model, variables, torch twin, image, noise) for a case.

    With spread=True the final bias is set to minus the mean logit over the noise draws, so that the
    votes spread over many classes (a random-init network votes almost only one class, which would
    make equal counts a weak check)."""
    shape, dataset, last, num = CASES[name]
    model, variables = _model(name)
    x = np.asarray(jax.random.uniform(jax.random.key(2), shape), np.float32)
    noise = np.asarray(SIGMA * jax.random.normal(jax.random.key(3), (num, *shape)), np.float32)
    if spread:
        logits = np.asarray(jax.jit(models.make_logits_fn(model))(variables, x[None] + noise))
        params = dict(variables["params"])
        params[last] = dict(params[last], bias=params[last]["bias"] - logits.mean(axis=0))
        variables = dict(variables, params=params)
    twin = tr.from_flax(name, variables, input_shape=shape, dataset=dataset)
    return model, variables, twin, x, noise


def _flax_counts(model, variables, x, noise):
    logits = jax.jit(models.make_logits_fn(model))(variables, jnp.asarray(x[None] + noise))
    return np.bincount(np.asarray(jnp.argmax(logits, axis=-1)), minlength=10), np.asarray(logits)


def test_same_padding_is_xlas():
    assert tr.same_padding(32, 3, 1) == (1, 1)
    assert tr.same_padding(32, 3, 2) == (0, 1)  # PyTorch's padding=1 would pad (1, 1)
    assert tr.same_padding(16, 3, 2) == (0, 1)
    assert tr.same_padding(32, 1, 2) == (0, 0)
    assert tr.same_padding(7, 3, 2) == (1, 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_logits_agree(name):
    model, variables, twin, _, _ = _setup(name, spread=False)
    if name == "resnet20":
        assert not np.allclose(variables["batch_stats"]["BatchNorm_0"]["var"], 1.0)
        assert twin.training is False
    shape = CASES[name][0]
    x = np.asarray(jax.random.uniform(jax.random.key(4), (16, *shape)), np.float32)
    ours = np.asarray(jax.jit(models.make_logits_fn(model))(variables, x))
    with torch.inference_mode():
        theirs = twin(tr.to_nchw(x)).numpy()
    assert ours.shape == theirs.shape == (16, 10)
    np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=1e-4)
    assert np.abs(ours).max() > 0.1  # not trivially zero


@pytest.mark.parametrize("name", sorted(CASES))
def test_counts_agree_on_predrawn_noise(name):
    model, variables, twin, x, noise = _setup(name)
    ours, logits = _flax_counts(model, variables, x, noise)
    theirs = tr.reference_counts_from_noise(twin, x, noise, num_classes=10, batch=100)
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert (ours > 0).sum() >= 5, ours  # the votes really are spread
    np.testing.assert_array_equal(
        theirs, ours, err_msg=f"smallest top-2 logit gap {np.min(top2[:, 1] - top2[:, 0]):.2e}"
    )
    assert ours.sum() == theirs.sum() == len(noise)


@pytest.mark.parametrize("name", sorted(CASES))
def test_count_votes_agrees_with_reference_on_rsjax_noise(name):
    """rsjax's own pipeline (per-sample keys, chunks, sharding over 4 devices) against the reference
    on the very noise rsjax draws, rebuilt from the same keys."""
    model, variables, twin, x, noise = _setup(name)
    num, key, idx = len(noise), jax.random.key(7), 5
    ours = votes.count_votes(
        key,
        models.make_logits_fn(model),
        variables,
        x[None],
        np.array([idx]),
        sigma=SIGMA,
        num_classes=10,
        num_samples=num,
        stream=votes.ESTIMATION,
    )[0]
    with jax.threefry_partitionable(False):
        keys = votes.example_keys(key, jnp.asarray([idx], jnp.uint32), votes.ESTIMATION)
        noisy = votes.noisy_inputs(
            keys, jnp.asarray(x[None]), jnp.arange(num, dtype=jnp.uint32), np.float32(SIGMA)
        )
    rsjax_noise = np.asarray(noisy[0]) - x  # the reference adds x back (equal up to rounding)
    theirs = tr.reference_counts_from_noise(twin, x, rsjax_noise, num_classes=10)
    assert (ours > 0).sum() >= 5, ours
    np.testing.assert_array_equal(theirs, ours)


@pytest.mark.parametrize("spread", [False, True])
def test_reference_certify_decides_as_rsjax_on_its_counts(spread):
    """The reference's scipy decision equals rsjax.certify_from_counts on the reference's own counts;
    random-init LeNet certifies (one class wins), the spread one abstains."""
    _, _, twin, x, _ = _setup("lenet", spread=spread)
    kw = dict(n0=50, n=500, alpha=0.001, sigma=SIGMA, num_classes=10, batch=128)
    result = tr.reference_certify(
        twin, tr.to_nchw(x), generator=torch.Generator().manual_seed(0), **kw
    )
    again = tr.reference_certify(
        twin, tr.to_nchw(x), generator=torch.Generator().manual_seed(0), **kw
    )
    np.testing.assert_array_equal(result.counts, again.counts)
    assert result.counts0.sum() == 50 and result.counts.sum() == 500
    cert = rsjax.certify_from_counts(
        result.counts0[None], result.counts[None], sigma=SIGMA, alpha=0.001
    )
    assert result.prediction == cert.prediction[0]
    assert result.radius == pytest.approx(cert.radius[0], rel=1e-12, abs=0)
    assert result.pa_lower == pytest.approx(cert.pa_lower[0], rel=1e-12)
    assert (result.prediction == tr.ABSTAIN) == spread


def test_from_flax_rejects_unknown_model():
    with pytest.raises(ValueError, match="no PyTorch twin"):
        tr.from_flax(
            "linear", {"params": {"Dense_0": {"kernel": np.zeros((4, 2))}}}, input_shape=(2, 2, 1)
        )


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_vs_pytorch_quick(tmp_path):
    out_file = tmp_path / "r.jsonl"
    out = subprocess.run(
        [sys.executable, "benchmarks/vs_pytorch.py", "--quick", "--out", str(out_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    table = [line for line in out.stdout.splitlines() if line.startswith(("| lenet", "| resnet20"))]
    assert len(table) == 2, out.stdout
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["model"] for r in rows] == ["lenet", "resnet20"]
    for r in rows:
        assert r["benchmark"] == "vs_pytorch" and r["quick"] is True and "--quick" in r["command"]
        assert (r["images"], r["n0"], r["n"], r["repeats"]) == (2, 8, 64, 1)
        assert r["rsjax_samples_per_s"] > 0 and r["reference_samples_per_s"] > 0
        assert len(r["ratios"]) == 1 and r["ratio"] == r["ratios"][0] > 0
        assert r["torch_threads"] == 2 and r["torch_version"].startswith("2.13.0")
        assert r["versions"]["jax"] and r["device_kind"]
    assert [r["target"] for r in rows] == [1.5, 1.0]


def test_vs_pytorch_quick_writes_no_result_unless_asked():
    module = _load("vs_pytorch")
    assert module.parse_args(["--quick"]).out == ""
    assert module.parse_args(["--quick", "--out", "x.jsonl"]).out == "x.jsonl"
    args = module.parse_args([])
    assert args.out == "benchmarks/results/vs_pytorch.jsonl"
    assert (args.images, args.n0, args.n, args.batch, args.repeats) == (20, 100, 10_000, 1000, 3)


@pytest.mark.parametrize("loss, k", [("gaussian", 1), ("adre", 4)])
def test_train_benchmark_losses_agree_on_the_same_noise(loss, k):
    # The PyTorch step of benchmarks/train_vs_pytorch.py computes rsjax's loss: same value, same
    # gradient on the same noisy copies.
    from rsjax import losses

    reference = _load("torch_reference")
    bench = _load("train_vs_pytorch")
    model = models.make_model("lenet", num_classes=10)
    variables = models.init_variables(model, jax.random.key(0), (28, 28, 1))
    x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
    labels = jnp.arange(6) % 10
    key = jax.random.key(2)
    apply_fn = losses.make_train_apply(model)
    loss_fn = losses.adre_loss if loss == "adre" else losses.gaussian_augmentation_loss
    options = {"lam": 0.5} if loss == "adre" else {}
    batch = {"image": x, "label": labels}
    (value, _), grads = jax.value_and_grad(
        functools.partial(loss_fn, apply_fn=apply_fn, sigma=0.25, k=k, **options), has_aux=True
    )(variables["params"], {}, batch, key)
    noisy = losses.noisy_copies(key, x, sigma=0.25, k=k)
    tmodel = reference.from_flax("lenet", variables, input_shape=(28, 28, 1))
    t_value = bench.torch_loss(
        tmodel,
        reference.to_nchw(np.asarray(noisy)),
        torch.from_numpy(np.asarray(labels, np.int64)),
        loss=loss,
        k=k,
        lam=0.5,
    )
    t_value.backward()
    np.testing.assert_allclose(t_value.item(), float(value), rtol=1e-5)
    # conv1's kernel: PyTorch (out, in, kh, kw) against Flax (kh, kw, in, out).
    np.testing.assert_allclose(
        tmodel.conv1.weight.grad.numpy().transpose(2, 3, 1, 0),
        np.asarray(grads["Conv_0"]["kernel"]),
        rtol=1e-4,
        atol=1e-6,
    )


@pytest.mark.slow  # a benchmark script's smoke run (the default selection runs gpu_suite --quick)
def test_train_vs_pytorch_quick(tmp_path):
    out_file = tmp_path / "t.jsonl"
    out = subprocess.run(
        [sys.executable, "benchmarks/train_vs_pytorch.py", "--quick", "--out", str(out_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["loss"], r["k"], r["microbatches"]) for r in rows] == [
        ("gaussian", 1, 1),
        ("adre", 2, 1),
        ("adre", 2, 2),
    ]
    for r in rows:
        assert r["rsjax_images_per_s"] > 0 and r["torch_images_per_s"] > 0 and r["ratio"] > 0
        assert r["quick"] is True and r["batch"] == 8


def test_train_vs_pytorch_rejects_bad_configs(capsys):
    module = _load("train_vs_pytorch")
    for spec in ("adre", "adre:0", "mse:2", "adre:8:3", "adre:8:1:1"):
        with pytest.raises(SystemExit):
            module.parse_args(["--configs", spec])
        assert "LOSS:K[:M]" in capsys.readouterr().err
    assert module.parse_args(["--configs", "adre:8:8"]).configs == [("adre", 8, 8)]
    assert module.parse_args(["--configs", "gaussian:2"]).configs == [("gaussian", 2, 1)]


def test_reference_split_runner_and_twins(tmp_path):
    """The PyTorch side of the import evidence (experiments/torch_import_evidence.sh): a LeNet state
    dict loaded by torch_reference.load_torch_model (torch_twins.LeNet behind rsjax's normalisation)
    gives the logits of the same file imported by rsjax.torch_import; certify_split writes valid
    standard rows, and a run cut after two rows resumes to the same rows (the noise of image i
    comes from (seed, i) alone)."""
    from rsjax import records, torch_import

    torch.manual_seed(0)
    net = twins.LeNet(10, (28, 28, 1))
    path = tmp_path / "lenet.pth"
    torch.save(net.state_dict(), path)
    model = tr.load_torch_model(path, "lenet", "mnist")
    imported = torch_import.load_checkpoint(path, arch="lenet", dataset="mnist")
    x = np.random.default_rng(0).random((5, 28, 28, 1), np.float32)
    with torch.no_grad():
        want = model(tr.to_nchw(x)).numpy()
    got = np.asarray(imported.logits_fn(imported.variables, x))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    labels = np.array([0, 1, 2, 3, 4])
    kw = dict(sigma=0.25, n0=10, n=64, alpha=0.01, num_classes=10, batch=32, seed=3)
    out = tmp_path / "ref.tsv"
    tr.certify_split(model, x, labels, [0, 2, 4], output=out, **kw)
    rows = out.read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["0", "2", "4"]
    for i, row in zip([0, 2, 4], rows[1:], strict=True):
        records.check_row(row.split("\t"), idx=i, num_classes=10)
    out.write_text("\n".join(rows[:3]) + "\n")  # as if killed after two rows
    tr.certify_split(model, x, labels, [0, 2, 4], output=out, **kw)
    again = out.read_text().splitlines()
    assert [r.split("\t")[:5] for r in again] == [r.split("\t")[:5] for r in rows]
