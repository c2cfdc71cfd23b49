"""rsjax.empirical_bayes: the EB smoothed linear classifier on the two-point prior certifies the
data-adapted radius; denoiser and XHAT training resume, freeze and load like classifier training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import checkpoint, empirical_bayes, monitor, train, tweedie

SIGMA = 0.25
MU = np.array([1.0, 0.0, 0.0, 0.0], np.float32).reshape(1, 1, 4)  # one image (H, W, C) = (1, 1, 4)
W = np.array([1.0, 1.0, 0.0, 0.0], np.float32) / np.sqrt(2)  # w . mu > 0, not aligned with mu
X = np.array([[0.3, -0.25, 0.1, 0.0]], np.float32).reshape(1, 1, 1, 4)


def _linear(params, z):
    s = z.reshape(z.shape[0], -1) @ params["w"]
    return jnp.stack([-s, s], axis=-1)


def _two_point_score(params, y):
    return tweedie.two_point_score(y, mu=params["mu"], sigma=SIGMA)


def test_eb_linear_classifier_certifies_the_data_adapted_radius_beyond_the_margin():
    """Two points {-mu, mu}: f(xhat(y)) = sign(mu . y) for any w with w . mu > 0, so the EB smoothed
    classifier certifies |mu . x| / ||mu|| = 0.3, while the plain smoothed linear classifier certifies
    its margin |w . x| / ||w|| = 0.035. With n = 100,000 and alpha = 0.001 the EB radius is
    sigma Phi^-1(pA_lower) with pA = Phi(1.2): about 0.296; fixed key, so the test is deterministic
    (the radius exceeds 0.3 with probability <= alpha over keys). X is a toy vector with a
    negative coordinate, not an image: input_range=None."""
    eb = empirical_bayes.make_eb_logits_fn(_linear, _two_point_score, sigma=SIGMA)
    params = {"classifier": {"w": jnp.asarray(W)}, "score": {"mu": jnp.asarray(MU)}}
    common = dict(sigma=SIGMA, n0=100, n=100_000, alpha=0.001, num_classes=2, input_range=None)
    cert = rsjax.certify(jax.random.key(0), eb, X, params=params, **common)
    plain = rsjax.certify(jax.random.key(0), _linear, X, params={"w": jnp.asarray(W)}, **common)
    margin = abs(float(X.reshape(-1) @ W)) / np.linalg.norm(W)
    data_radius = abs(float(X.reshape(-1) @ MU.reshape(-1))) / np.linalg.norm(MU)
    assert cert.prediction[0] == plain.prediction[0] == 1
    assert 0.27 < cert.radius[0] <= data_radius
    assert plain.radius[0] <= margin + 1e-9
    assert cert.radius[0] > 5 * margin


def test_eb_train_apply_freezes_the_score_unless_fine_tuned():
    from rsjax import models, score

    classifier = models.make_model("linear", num_classes=3)
    variables = models.init_variables(classifier, jax.random.key(0), (2, 2, 1))
    score_model = score.make_score_model("energy_mlp")
    params = {
        "classifier": variables["params"],
        "score": score.init_params(score_model, jax.random.key(1), (2, 2, 1)),
    }
    y = jax.random.uniform(jax.random.key(2), (5, 2, 2, 1))
    for finetune in (False, True):
        apply_fn = empirical_bayes.make_eb_train_apply(
            classifier, score.make_score_fn(score_model), sigma=0.5, finetune=finetune
        )
        grads = jax.grad(lambda p, f=apply_fn: f(p, {}, y, True)[0].sum())(params)
        score_norm = sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads["score"]))
        assert (score_norm > 0) == finetune


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, 4, 4, 1)).astype(np.float32), (np.arange(n) % 3).astype(np.int32)


DENOISER = dict(
    score_model="energy_mlp",
    dataset="mnist",
    sigma=0.5,
    epochs=2,
    batch_size=8,
    learning_rate=1e-2,
    checkpoint_every=3,
    show_progress=False,
)


def test_fit_denoiser_resumes_bit_identically_and_logs_held_out_psnr(tmp_path):
    images, _ = _images(40)
    held_out, _ = _images(16, seed=1)
    key = jax.random.key(0)
    full = empirical_bayes.fit_denoiser(
        key, tmp_path / "full", images=images, eval_images=held_out, **DENOISER
    )
    empirical_bayes.fit_denoiser(
        key, tmp_path / "cut", images=images, eval_images=held_out, stop_after_step=4, **DENOISER
    )
    resumed = empirical_bayes.fit_denoiser(
        key, tmp_path / "cut", images=images, eval_images=held_out, **DENOISER
    )
    assert int(full.step) == int(resumed.step) == 10
    assert checkpoint.digest(full.params) == checkpoint.digest(resumed.params)
    records = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").open()]
    evals = [r for r in records if "held_out_psnr" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    assert all(np.isfinite(r["held_out_psnr"]) and r["held_out_mse"] > 0 for r in evals)
    score_fn, params, meta, step = empirical_bayes.load_denoiser(tmp_path / "full" / "checkpoints")
    assert meta["kind"] == "denoiser" and meta["sigma"] == 0.5 and step == 10
    assert checkpoint.digest(params) == checkpoint.digest(full.params)
    with pytest.raises(checkpoint.CheckpointError, match="holds a denoiser"):
        empirical_bayes.load_for_eval(tmp_path / "full" / "checkpoints")


def test_fit_denoiser_rejects_bad_sigma(tmp_path):
    images, _ = _images(16)
    with pytest.raises(ValueError, match="sigma"):
        empirical_bayes.fit_denoiser(
            jax.random.key(0), tmp_path, images=images, **dict(DENOISER, sigma=0.0)
        )


LINEAR_XHAT = dict(model="linear", dataset="mnist", num_classes=3, epochs=1, batch_size=8)


def test_fit_xhat_flags_a_collapsed_classifier(tmp_path):
    """XHAT trained on labels that are all class 0 votes class 0 on a balanced held-out set: the
    epoch's evaluation record says collapsed, with a CollapseWarning, or a CollapseError with
    fail_on_collapse."""
    images, labels = _images(32)
    denoiser_dir = tmp_path / "denoiser"
    empirical_bayes.fit_denoiser(jax.random.key(0), denoiser_dir, images=images, **DENOISER)
    held_out = dict(eval_images=images[:30], eval_labels=labels[:30], eval_noise=8)
    xhat = dict(LINEAR_XHAT, images=images, labels=np.zeros_like(labels), **held_out)
    xhat.update(denoiser_dir=denoiser_dir, eps=0.0, learning_rate=0.5, show_progress=False)
    with pytest.warns(monitor.CollapseWarning, match="class 0"):
        empirical_bayes.fit_xhat(jax.random.key(1), tmp_path / "warn", **xhat)
    records = [json.loads(line) for line in open(tmp_path / "warn" / "metrics.jsonl")]
    (record,) = [r for r in records if "smoothed_accuracy" in r]
    assert record["collapsed"] is True and record["top_class"] == 0
    with pytest.raises(monitor.CollapseError, match="epoch 1"):
        empirical_bayes.fit_xhat(
            jax.random.key(1), tmp_path / "fail", fail_on_collapse=True, **xhat
        )


@pytest.mark.parametrize("finetune", [False, True])
def test_fit_xhat_trains_the_classifier_on_xhat_and_loads_for_certification(tmp_path, finetune):
    images, labels = _images(32)
    denoiser_dir = tmp_path / "denoiser"
    empirical_bayes.fit_denoiser(jax.random.key(0), denoiser_dir, images=images, **DENOISER)
    _, score_params, _, _ = empirical_bayes.load_denoiser(denoiser_dir / "checkpoints")
    state = empirical_bayes.fit_xhat(
        jax.random.key(1),
        tmp_path / "xhat",
        images=images,
        labels=labels,
        model="linear",
        dataset="mnist",
        num_classes=3,
        denoiser_dir=denoiser_dir,
        eps=0.25,
        num_steps=1,
        k=2,
        finetune=finetune,
        epochs=1,
        batch_size=8,
        learning_rate=0.05,
        weight_decay=1e-3,
        show_progress=False,
        eval_images=images[:8],
        eval_labels=labels[:8],
    )
    with pytest.raises(ValueError, match="trained at sigma 0.5"):
        empirical_bayes.fit_xhat(
            jax.random.key(1),
            tmp_path / "other",
            images=images,
            labels=labels,
            model="linear",
            dataset="mnist",
            num_classes=3,
            denoiser_dir=denoiser_dir,
            eps=0.0,
            sigma=0.25,
            epochs=1,
            batch_size=8,
            learning_rate=0.05,
        )
    same = checkpoint.digest(state.params["score"]) == checkpoint.digest(score_params)
    assert same != finetune  # frozen: not even weight decay moves the score network
    logits_fn, params, meta, _ = empirical_bayes.load_for_eval(tmp_path / "xhat" / "checkpoints")
    assert meta["kind"] == "eb_classifier" and meta["sigma"] == 0.5
    cert = rsjax.certify(
        jax.random.key(2),
        logits_fn,
        images[:2],
        params=params,
        sigma=meta["sigma"],
        n0=8,
        n=32,
        alpha=0.1,
        num_classes=3,
    )
    assert cert.prediction.shape == (2,)
    records = [json.loads(line) for line in (tmp_path / "xhat" / "metrics.jsonl").open()]
    assert any("eps" in r for r in records) and any("smoothed_accuracy" in r for r in records)


def test_compose_a_clean_classifier_with_a_denoiser(tmp_path):
    images, labels = _images(32)
    empirical_bayes.fit_denoiser(jax.random.key(0), tmp_path / "d", images=images, **DENOISER)
    train.fit(
        jax.random.key(1),
        tmp_path / "c",
        images=images,
        labels=labels,
        model="linear",
        dataset="mnist",
        num_classes=3,
        sigma=0.0,
        epochs=1,
        batch_size=8,
        learning_rate=0.05,
        show_progress=False,
    )
    logits_fn, params, meta = empirical_bayes.compose(tmp_path / "c", tmp_path / "d")
    assert meta["sigma"] == 0.5 and meta["classifier_sigma"] == 0.0
    y = jnp.asarray(images[:4])
    plain_logits, _ = empirical_bayes.load_for_eval(tmp_path / "c" / "checkpoints")[:2]
    _, score_params, _, _ = empirical_bayes.load_denoiser(tmp_path / "d" / "checkpoints")
    denoised = tweedie.xhat(empirical_bayes._score_fn("energy_mlp"), y, 0.5, score_params)
    np.testing.assert_allclose(
        logits_fn(params, y), plain_logits(params["classifier"], denoised), rtol=1e-5, atol=1e-5
    )


def test_denoiser_training_on_one_and_four_devices_agrees(tmp_path):
    """The global batch sharded over 4 host devices or on 1: the same losses and parameters."""
    from rsjax import sharding

    images, _ = _images(32)
    runs = {}
    for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices()[:4])):
        state = empirical_bayes.fit_denoiser(
            jax.random.key(0),
            tmp_path / name,
            images=images,
            mesh=sharding.batch_mesh(devices),
            log_every=1,
            **dict(DENOISER, epochs=2),
        )
        metrics = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
        runs[name] = (state, [m["loss"] for m in metrics if "loss" in m])
    (one, loss_one), (four, loss_four) = runs["one"], runs["four"]
    assert len(loss_one) == len(loss_four) == 8
    np.testing.assert_allclose(loss_four, loss_one, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
