"""Gaussian-augmentation training: loss, resume to bit-identical parameters, NaN stop, checkpoints."""

import argparse
import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_checkpoint import flip_one_bit

from rsjax import (
    checkpoint,
    empirical_bayes,
    locks,
    losses,
    models,
    monitor,
    preemption,
    sharding,
    train,
)


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    images = np.clip(
        labels[:, None, None, None] / 4 + 0.1 * rng.standard_normal((n, 16, 16, 1)), 0, 1
    )
    return images.astype(np.float32), labels


FIT = dict(
    model="lenet",
    dataset="mnist",
    num_classes=4,
    sigma=0.25,
    epochs=3,
    batch_size=16,
    learning_rate=0.05,
    checkpoint_every=4,
    log_every=3,
    show_progress=False,
)


def _fit(workdir, images, labels, **kw):
    return train.fit(jax.random.key(0), workdir, images=images, labels=labels, **{**FIT, **kw})


def test_gaussian_loss_matches_naive_loop():
    model = models.make_model("linear", num_classes=3)
    params = models.init_variables(model, jax.random.key(1), (2, 2, 1))["params"]
    apply_fn = losses.make_train_apply(model)
    x = jax.random.uniform(jax.random.key(2), (5, 2, 2, 1))
    y = jnp.array([0, 1, 2, 1, 0])
    key = jax.random.key(3)
    loss, _ = losses.gaussian_augmentation_loss(
        params, {}, {"image": x, "label": y}, key, apply_fn=apply_fn, sigma=0.5, k=4
    )
    noisy = np.asarray(losses.noisy_copies(key, x, sigma=0.5, k=4))
    total = 0.0
    for i in range(5):
        for j in range(4):
            logits = np.asarray(model.apply({"params": params}, noisy[i * 4 + j][None]))[0]
            total += -(logits[int(y[i])] - np.log(np.exp(logits).sum()))
    np.testing.assert_allclose(loss, total / 20, rtol=1e-5)
    # The copies are x_i + sigma * eps: the noise has the right scale.
    assert 0.4 < np.std(noisy - np.repeat(np.asarray(x), 4, axis=0)) < 0.6


def _records(workdir):
    return [json.loads(line) for line in open(workdir / "metrics.jsonl")]


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """(final state, metrics records) of the uninterrupted run of FIT: 18 steps, checkpoints every
    4, a record every 3 steps and at every checkpoint."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    images, labels = _data()
    return _fit(workdir, images, labels), _records(workdir)


def test_resume_is_bit_identical(tmp_path, uninterrupted):
    images, labels = _data()
    full, _ = uninterrupted
    _fit(tmp_path / "cut", images, labels, stop_after_step=7)  # killed after step 7 ...
    assert checkpoint.latest_step(tmp_path / "cut" / "checkpoints") == 7
    resumed = _fit(tmp_path / "cut", images, labels)  # ... and rerun with the same arguments
    assert int(resumed.step) == int(full.step) == 3 * (96 // 16)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # And training moved the parameters (the comparison above is not trivially true).
    fresh = _fit(tmp_path / "short", images, labels, stop_after_step=1)
    assert not np.array_equal(
        np.asarray(jax.tree.leaves(fresh.params)[0]), np.asarray(jax.tree.leaves(full.params)[0])
    )


def test_one_and_four_devices_agree(tmp_path):
    """Same global batch sharded over 4 host devices or on 1: the loss after 20 steps agrees."""
    images, labels = _data()
    runs = {}
    for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices()[:4])):
        state = _fit(
            tmp_path / name,
            images,
            labels,
            mesh=sharding.batch_mesh(devices),
            epochs=4,
            stop_after_step=20,
            log_every=1,
        )
        metrics = [json.loads(line) for line in open(tmp_path / name / "metrics.jsonl")]
        runs[name] = (state, {m["step"]: m["loss"] for m in metrics if "loss" in m})
    assert len(jax.devices()) == 4
    (one, loss_one), (four, loss_four) = runs["one"], runs["four"]
    assert sorted(loss_one) == sorted(loss_four) == list(range(1, 21))
    np.testing.assert_allclose(loss_four[20], loss_one[20], rtol=1e-4)
    np.testing.assert_allclose(
        [loss_four[s] for s in range(1, 21)], [loss_one[s] for s in range(1, 21)], rtol=1e-4
    )
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_smoothed_accuracy_is_logged_every_epoch_and_changes_nothing(tmp_path):
    images, labels = _data()
    plain = _fit(tmp_path / "plain", images, labels)
    evaluated = _fit(
        tmp_path / "eval",
        images,
        labels,
        eval_images=images[:40],
        eval_labels=labels[:40],
        eval_noise=16,
    )
    records = [json.loads(line) for line in open(tmp_path / "eval" / "metrics.jsonl")]
    evals = [r for r in records if "smoothed_accuracy" in r]
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert all(0.0 <= r["smoothed_accuracy"] <= 1.0 for r in evals)
    assert evals[-1]["smoothed_accuracy"] > 0.5  # 4 well-separated classes: it learns them
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(evaluated), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    images, labels = _data()
    _fit(tmp_path / "run", images, labels, stop_after_step=4)
    before = checkpoint.restore_meta(tmp_path / "run" / "checkpoints")[0]
    poisoned = images.copy()
    poisoned[:] = np.nan
    with pytest.raises(train.NonFiniteLossError, match="non-finite"):
        _fit(tmp_path / "run", poisoned, labels)
    assert checkpoint.latest_step(tmp_path / "run" / "checkpoints") == before == 4


def test_other_run_in_workdir_is_refused(tmp_path):
    images, labels = _data()
    _fit(tmp_path / "run", images, labels, stop_after_step=2)
    before = _files(tmp_path / "run")
    with pytest.raises(ValueError, match="different run"):
        _fit(tmp_path / "run", images, labels, sigma=0.5, on_start=pytest.fail)
    assert _files(tmp_path / "run") == before  # a refused run writes nothing


def _files(workdir) -> dict:
    """{path: bytes} of every file of a workdir but its lock file (the holder's process id)."""
    return {
        str(p.relative_to(workdir)): p.read_bytes()
        for p in sorted(workdir.rglob("*"))
        if p.is_file() and p.name != ".rsjax.lock"
    }


def test_a_killed_run_resumes_without_logging_a_step_twice(tmp_path, monkeypatch, uninterrupted):
    """Killed during step 11, the run had logged step 9, past its checkpoint of step 8 (and half
    a line): the rerun drops those records, and its metrics.jsonl equals the uninterrupted run's."""
    images, labels = _data()
    make_step = train.make_train_step

    def make_dying_step(*args, **kwargs):
        step_fn = make_step(*args, **kwargs)

        def step(state, batch, key):
            if int(state.step) == 10:
                raise RuntimeError("killed")
            return step_fn(state, batch, key)

        return step

    monkeypatch.setattr(train, "make_train_step", make_dying_step)
    with pytest.raises(RuntimeError, match="killed"):
        _fit(tmp_path, images, labels)
    assert checkpoint.latest_step(tmp_path / "checkpoints") == 8
    assert [r["step"] for r in _records(tmp_path)] == [3, 4, 6, 8, 9]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"loss": 0.1, "st')  # torn by the kill
    monkeypatch.setattr(train, "make_train_step", make_step)
    resumed = _fit(tmp_path, images, labels)
    full, full_records = uninterrupted
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [3, 4, 6, 8, 9, 12, 15, 16, 18]  # unique, increasing
    assert _without_timing(records) == _without_timing(full_records)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_dropping_metrics_after_the_resumed_step_keeps_the_earlier_bytes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"loss": 0.5, "step": s}) + "\n" for s in (3, 4, 6, 8, 8, 9)]
    path.write_text("".join(lines) + '{"loss": 0.1, "st')
    train._drop_metrics_after(path, 9)  # only the torn line goes
    assert path.read_text() == "".join(lines)
    train._drop_metrics_after(path, 8)
    assert path.read_text() == "".join(lines[:5])
    train._drop_metrics_after(path, 0)  # a fresh start (no checkpoint) logs from step 1
    assert path.read_text() == ""


def test_training_resumes_from_the_newest_intact_step_and_certification_refuses_it(
    tmp_path, uninterrupted
):
    images, labels = _data()
    _fit(tmp_path, images, labels, stop_after_step=12)  # checkpoints of steps 4, 8 and 12
    ckpt_dir = tmp_path / "checkpoints"
    flip_one_bit(ckpt_dir / "12")
    with pytest.raises(checkpoint.CorruptedCheckpointError) as refused:
        train.load_for_eval(ckpt_dir)
    assert str(refused.value) == (
        f"checkpoint {ckpt_dir} step 12 is corrupted (digest mismatch in 'model'); intact steps: "
        "[4, 8]; pass --step 8 to certify an older one"
    )
    with pytest.raises(checkpoint.CorruptedCheckpointError, match="pass --step 8 to certify"):
        empirical_bayes.load_for_eval(ckpt_dir)  # what experiments/certify.py calls
    assert train.load_for_eval(ckpt_dir, 8)[3] == 8
    with pytest.warns(
        checkpoint.CorruptedCheckpointWarning,
        match=r"step 12 is corrupted \(digest mismatch in 'model'\); resuming from step 8",
    ):
        resumed = _fit(tmp_path, images, labels)
    assert (ckpt_dir / "12.corrupted").is_dir() and checkpoint.all_steps(ckpt_dir)[-1] == 18
    full, full_records = uninterrupted
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _without_timing(_records(tmp_path)) == _without_timing(full_records)


HOLD_LOCK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("locks", sys.argv[1])
locks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(locks)
with locks.exclusive(sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def held_by_another_process(workdir):
    """A second process (importing rsjax/locks.py alone, not jax) holds workdir's lock for the
    block; yields its process id."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, locks.__file__, str(workdir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder.pid
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_second_training_in_the_workdir_is_refused_and_writes_nothing(tmp_path):
    images, labels = _data()
    _fit(tmp_path, images, labels, stop_after_step=2)
    before = _files(tmp_path)
    with held_by_another_process(tmp_path) as pid:
        with pytest.raises(
            locks.OutputLockedError, match=rf"{re.escape(str(tmp_path))} .*process id {pid}\b"
        ):
            _fit(tmp_path, images, labels, stop_after_step=4, on_start=pytest.fail)
    assert _files(tmp_path) == before
    # The holder gone, its lock went with it: the run goes on.
    assert int(_fit(tmp_path, images, labels, stop_after_step=4).step) == 4


def test_batch_size_checks(tmp_path):
    images, labels = _data()
    with pytest.raises(ValueError, match="divisible"):
        _fit(tmp_path / "a", images, labels, batch_size=18)
    with pytest.raises(ValueError, match="exceeds"):
        _fit(tmp_path / "b", images, labels, batch_size=128)


def test_schedules():
    for schedule in ("cosine", "constant"):
        train.make_optimizer(learning_rate=0.1, total_steps=10, schedule=schedule)
    train.make_optimizer(learning_rate=0.1, total_steps=10, schedule="step", decay_every=3)
    with pytest.raises(ValueError, match="decay_every"):
        train.make_optimizer(learning_rate=0.1, total_steps=10, schedule="step")
    with pytest.raises(ValueError, match="unknown schedule"):
        train.make_optimizer(learning_rate=0.1, total_steps=10, schedule="linear")


@pytest.mark.parametrize(
    "loss,options", [("adre", {"lam": 0.5}), ("macer", {"lam": 12.0, "gamma": 8.0, "beta": 16.0})]
)
def test_regularised_losses_train(tmp_path, loss, options):
    images, labels = _data()
    state = _fit(
        tmp_path / loss, images, labels, loss=loss, k=4, loss_options=options, epochs=1, log_every=1
    )
    assert int(state.step) == 6
    meta = checkpoint.restore_meta(tmp_path / loss / "checkpoints")[1]
    assert meta["loss"] == loss and meta["loss_options"] == options and meta["k"] == 4
    if "eps" in options:  # linear warm-up over 4 steps, logged per step
        logged = [json.loads(line) for line in open(tmp_path / loss / "metrics.jsonl")]
        eps = {r["step"]: r["eps"] for r in logged if "eps" in r}
        np.testing.assert_allclose(
            [eps[s] for s in (1, 2, 3, 4, 5)], [0.0, 0.125, 0.25, 0.375, 0.5], rtol=1e-6
        )


def test_loss_options_are_checked_up_front(tmp_path):
    images, labels = _data()
    with pytest.raises(ValueError, match=r"missing options \['lam'\]"):
        _fit(tmp_path / "a", images, labels, loss="adre", k=2)
    with pytest.raises(ValueError, match=r"unknown options \['lamda'\]"):
        _fit(tmp_path / "b", images, labels, loss="adre", k=2, loss_options={"lamda": 1.0})


def _step_once(model, loss_fn, batch, **kw):
    optimizer = optax.sgd(0.1)
    state = train.init_state(model, jax.random.key(0), batch["image"].shape[1:], optimizer)
    return train.make_train_step(loss_fn, optimizer, **kw)(state, batch, jax.random.key(1))


def test_microbatches_average_the_groups_gradients():
    images, labels = _data(8)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    model = models.make_model("lenet", num_classes=4)
    # sigma ~ 0: every grouping sees the same inputs, so the averaged gradient must be the full one.
    loss_fn = losses.make_loss("adre", model, sigma=1e-7, k=2, lam=0.5)
    full, full_metrics = _step_once(model, loss_fn, batch)
    for m in (2, 4):
        micro, metrics = _step_once(model, loss_fn, batch, microbatches=m)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
            full.params,
            micro.params,
        )
        np.testing.assert_allclose(metrics["loss"], full_metrics["loss"], rtol=1e-5)
        np.testing.assert_allclose(metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-4)
    # With real noise the groups draw their own: a different but equally valid step.
    noisy = losses.make_loss("gaussian", model, sigma=0.5, k=2)
    a, _ = _step_once(model, noisy, batch)
    b, _ = _step_once(model, noisy, batch, microbatches=2)
    assert not np.allclose(a.params["Dense_0"]["kernel"], b.params["Dense_0"]["kernel"])


def test_microbatches_refuse_batch_norm_and_ragged_groups():
    images, labels = _data(6)
    batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
    lenet = models.make_model("lenet", num_classes=4)
    with pytest.raises(ValueError, match="must divide the batch size 6"):
        _step_once(
            lenet, losses.make_loss("gaussian", lenet, sigma=0.25, k=1), batch, microbatches=4
        )
    with pytest.raises(ValueError, match="microbatches must be an int >= 1"):
        train.make_train_step(lambda *a: None, optax.sgd(0.1), microbatches=0)
    resnet = models.make_model("resnet20", num_classes=4)
    with pytest.raises(ValueError, match="batch norm"):
        _step_once(
            resnet, losses.make_loss("gaussian", resnet, sigma=0.25, k=1), batch, microbatches=2
        )


def test_fit_records_microbatches_and_refuses_to_resume_without_them(tmp_path):
    images, labels = _data()
    _fit(tmp_path / "run", images, labels, stop_after_step=2, microbatches=2)
    state = _fit(tmp_path / "run", images, labels, stop_after_step=3, microbatches=2)  # resumes
    assert int(state.step) == 3
    with pytest.raises(ValueError, match="microbatches"):
        _fit(tmp_path / "run", images, labels, microbatches=1)


def test_lr_warmup_then_schedule():
    """lr(0) = 0, lr(w) = learning_rate, then the schedule: cosine over the remaining steps, step
    decays at the absolute steps, constant stays."""
    lr, w, total = 0.1, 4, 12

    def lrs(schedule, **kw):
        opt = train.make_optimizer(
            learning_rate=lr,
            total_steps=total,
            momentum=0.0,
            schedule=schedule,
            warmup_steps=w,
            **kw,
        )
        # Plain SGD: the update of a gradient of ones is -lr(s) per coordinate.
        params, state, out = jnp.zeros(1), None, []
        state = opt.init(params)
        for _ in range(total):
            updates, state = opt.update(jnp.ones(1), state, params)
            out.append(-float(updates[0]))
        return np.array(out)

    ramp = [lr * s / w for s in range(w)]
    cosine = optax.cosine_decay_schedule(lr, total - w)
    np.testing.assert_allclose(
        lrs("cosine"), ramp + [float(cosine(s)) for s in range(total - w)], rtol=1e-6, atol=1e-9
    )
    assert lrs("cosine")[0] == 0.0 and lrs("cosine")[w] == pytest.approx(lr)
    np.testing.assert_allclose(lrs("constant"), ramp + [lr] * (total - w), rtol=1e-6)
    step = lrs("step", decay_every=6, decay_factor=0.5)
    np.testing.assert_allclose(step, ramp + [lr] * 2 + [lr / 2] * 6, rtol=1e-6)
    with pytest.raises(ValueError, match="warmup_steps"):
        train.make_optimizer(learning_rate=lr, total_steps=total, warmup_steps=-1)


def test_clip_norm_bounds_the_update():
    params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    huge = {"a": jnp.full(3, 1e8), "b": jnp.full((2, 2), -3e7)}
    small = jax.tree.map(lambda g: g * 1e-9, huge)  # norm 0.12 < clip: left alone
    lr, clip = 0.1, 10.0
    opt = train.make_optimizer(
        learning_rate=lr, total_steps=10, momentum=0.0, schedule="constant", clip_norm=clip
    )
    for grads in (huge, small):
        updates, _ = opt.update(grads, opt.init(params), params)
        direct = optax.chain(optax.clip_by_global_norm(clip), optax.sgd(lr))
        reference, _ = direct.update(grads, direct.init(params), params)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), updates, reference)
        norm = float(optax.tree.norm(updates))
        assert norm <= lr * clip * (1 + 1e-6)
        assert norm == pytest.approx(min(lr * clip, lr * float(optax.tree.norm(grads))), rel=1e-5)
    with pytest.raises(ValueError, match="clip_norm"):
        train.make_optimizer(learning_rate=lr, total_steps=10, clip_norm=0.0)


def test_nan_gradient_stops_naming_the_step(tmp_path):
    """A finite loss with a non-finite gradient (sqrt at 0) stops at that step, before saving."""
    model = models.make_model("linear", num_classes=4)
    images, labels = _data(32)
    optimizer = train.make_optimizer(learning_rate=0.1, total_steps=4)
    state = train.init_state(model, jax.random.key(0), images.shape[1:], optimizer)
    apply_fn = losses.make_train_apply(model)

    def loss_fn(params, model_state, batch, key, step):
        loss, aux = losses.gaussian_augmentation_loss(
            params, model_state, batch, key, apply_fn=apply_fn, sigma=0.25, k=1
        )
        # From step index 2 on (the 3rd step) sqrt is taken at 0, where its derivative is infinite:
        # the loss stays finite, the gradient (inf * 0) is NaN.
        c = jnp.where(step >= 2, 0.0, 1.0) + 0.0 * params["Dense_0"]["bias"].sum()
        return loss + jnp.sqrt(c), aux

    with pytest.raises(train.NonFiniteLossError, match=r"\['grad_norm'\] at step 3 \(.*loss"):
        train.train_loop(
            tmp_path,
            state=state,
            train_step=train.make_train_step(loss_fn, optimizer),
            meta={"model": "linear"},
            images=images,
            labels=labels,
            data_key=jax.random.key(1),
            train_key=jax.random.key(2),
            epochs=2,
            batch_size=16,
            checkpoint_every=2,
            log_every=10,
            show_progress=False,
        )
    assert checkpoint.latest_step(tmp_path / "checkpoints") == 2  # the last good one


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"learning_rate": 1e6}, id="lr=1e6"),
        pytest.param({"loss": "adre", "k": 4, "loss_options": {"lam": 100.0}}, id="adre-lam=100"),
    ],
)
def test_deliberately_broken_config_is_stopped(tmp_path, broken):
    """lr 1e6, or ADRE with lam = 100 (the regulariser swamps the cross-entropy): fit stops the
    run, as non-finite (naming the step) or as collapse (one class, or accuracy at chance, on the
    held-out votes)."""
    images, labels = _data()
    with pytest.raises((train.NonFiniteLossError, monitor.CollapseError)) as stopped:
        _fit(
            tmp_path / "run",
            images,
            labels,
            fail_on_collapse=True,
            eval_images=images[:48],
            eval_labels=labels[:48],
            eval_noise=8,
            **broken,
        )
    assert "at step" in str(stopped.value) or "collapsed" in str(stopped.value)
    print(type(stopped.value).__name__, stopped.value)


def _eval_records(workdir):
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r for r in records if "smoothed_accuracy" in r]


def test_one_class_model_is_flagged_as_collapsed(tmp_path):
    """Trained on labels that are all class 0, the model votes class 0 on a balanced held-out set:
    a CollapseWarning naming the epoch and class, or with fail_on_collapse a CollapseError after the
    epoch's checkpoint is saved."""
    images, labels = _data()
    held_out = dict(eval_images=images[:32], eval_labels=labels[:32], eval_noise=8)
    zeros = np.zeros_like(labels)
    with pytest.warns(monitor.CollapseWarning, match=r"epoch 1 .*(9\d\.\d|100\.0)% .*class 0"):
        _fit(tmp_path / "warn", images, zeros, epochs=1, **held_out)
    (record,) = _eval_records(tmp_path / "warn")
    assert record["collapsed"] is True and record["top_class"] == 0
    assert record["top_class_fraction"] > 0.9 and "class 0" in record["collapse_reason"]
    with pytest.raises(monitor.CollapseError, match="epoch 1"):
        _fit(tmp_path / "fail", images, zeros, epochs=2, fail_on_collapse=True, **held_out)
    assert checkpoint.latest_step(tmp_path / "fail" / "checkpoints") == 96 // 16  # epoch 1's


def test_healthy_run_with_warmup_and_clipping_gives_no_collapse(tmp_path):
    images, labels = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", monitor.CollapseWarning)
        _fit(
            tmp_path / "run",
            images,
            labels,
            lr_warmup_epochs=1,
            clip_norm=10.0,
            eval_images=images[:40],
            eval_labels=labels[:40],
            eval_noise=8,
        )
    evals = _eval_records(tmp_path / "run")
    assert [r["collapsed"] for r in evals] == [False] * 3
    assert all(r["top_class_fraction"] < 0.9 for r in evals)
    meta = checkpoint.restore_meta(tmp_path / "run" / "checkpoints")[1]
    assert (meta["lr_warmup_epochs"], meta["clip_norm"]) == (1, 10.0)


def test_runs_without_the_stability_keys_still_resume(tmp_path):
    """lr_warmup_epochs and clip_norm enter the meta only when set, so a run written before they
    existed resumes with the defaults, and a run that set them refuses to resume without them."""
    images, labels = _data()
    _fit(tmp_path / "old", images, labels, stop_after_step=2)
    meta = checkpoint.restore_meta(tmp_path / "old" / "checkpoints")[1]
    assert "lr_warmup_epochs" not in meta and "clip_norm" not in meta
    assert int(_fit(tmp_path / "old", images, labels, stop_after_step=3).step) == 3
    new = dict(lr_warmup_epochs=0.5, clip_norm=5.0)
    _fit(tmp_path / "new", images, labels, stop_after_step=2, **new)
    assert int(_fit(tmp_path / "new", images, labels, stop_after_step=3, **new).step) == 3
    with pytest.raises(ValueError, match="clip_norm"):
        _fit(tmp_path / "new", images, labels, lr_warmup_epochs=0.5)
    with pytest.raises(ValueError, match="lr_warmup_epochs"):
        _fit(tmp_path / "old", images, labels, lr_warmup_epochs=1)


@pytest.mark.parametrize("signalled", [5, 6])  # mid-epoch, and an epoch's last step (6 per epoch)
def test_sigterm_saves_the_step_in_progress_and_the_rerun_resumes_bit_identically(
    tmp_path, monkeypatch, signalled
):
    images, labels = _data()
    held_out = dict(eval_images=images[:32], eval_labels=labels[:32], eval_noise=4)
    full = _fit(tmp_path / "full", images, labels, **held_out)
    make_step = train.make_train_step

    def make_signalling_step(*args, **kwargs):
        step_fn = make_step(*args, **kwargs)

        def step(state, batch, key):
            if int(state.step) == signalled - 1:  # SIGTERM arrives during step `signalled`
                os.kill(os.getpid(), signal.SIGTERM)
            return step_fn(state, batch, key)

        return step

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(train, "make_train_step", make_signalling_step)
    with pytest.raises(preemption.TrainingInterrupted, match=f"SIGTERM.*after step {signalled}"):
        _fit(tmp_path / "cut", images, labels, **held_out)
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back
    assert checkpoint.latest_step(tmp_path / "cut" / "checkpoints") == signalled  # saved every 4
    logged = [json.loads(line) for line in open(tmp_path / "cut" / "metrics.jsonl")]
    # Every step up to the signalled one is logged (log_every = 3, and the checkpoint of step 4
    # ends a window: the last window is short), and an epoch's last step stops only after that
    # epoch's held-out evaluation.
    assert [r["step"] for r in logged if "loss" in r] == [3, 4, signalled]
    evaluations = [r["step"] for r in logged if "smoothed_accuracy" in r]
    assert evaluations == ([6] if signalled == 6 else [])
    monkeypatch.setattr(train, "make_train_step", make_step)
    resumed = _fit(tmp_path / "cut", images, labels, **held_out)
    assert int(resumed.step) == int(full.step)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_stop_requests_outside_the_main_thread_installs_nothing():
    seen = []

    def worker():
        with preemption.stop_requests() as stop:
            seen.append((stop, signal.getsignal(signal.SIGTERM)))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [([], before)]
    with preemption.stop_requests() as stop:  # the main thread: a request is recorded, not acted on
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # Python runs the handler between bytecodes of this thread
        assert stop == [signal.SIGINT]
        with pytest.raises(KeyboardInterrupt, match="second SIGINT"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert signal.getsignal(signal.SIGTERM) is before


TINY_CONFIG = """
def get_config(smoke=False, sigma=0.25):
    return dict(dataset="mnist5k", holdout_every=10, model="linear", loss="gaussian", sigma=sigma,
                k=1, loss_options={}, epochs=1, batch_size=500, learning_rate=0.05, momentum=0.9,
                weight_decay=0.0, schedule="cosine", decay_every_epochs=0, seed=0,
                checkpoint_every=0)
"""


def test_train_script_changes_no_file_when_the_rerun_is_refused(tmp_path):
    """experiments/train.py writes config.json only once the workdir is locked and checked: a rerun
    with other settings, or beside another training, leaves every file of the run as it was."""
    experiments = pathlib.Path(__file__).parents[1] / "experiments"
    sys.path.insert(0, str(experiments))
    try:
        spec = importlib.util.spec_from_file_location("train_script", experiments / "train.py")
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
    finally:
        sys.path.remove(str(experiments))
    config = tmp_path / "tiny.py"
    config.write_text(TINY_CONFIG)
    workdir = tmp_path / "run"
    args = ["--config", str(config), "--workdir", str(workdir), "--stop-after-step", "1"]
    script.main(args)
    before = _files(workdir)
    assert {"config.json", "metrics.jsonl"} <= set(before)
    with pytest.raises(ValueError, match="different run"):
        script.main(["--config", f"{config}:sigma=0.5", *args[2:]])
    assert _files(workdir) == before
    # --smoke (the same settings for this config; config.json would record smoke: true) and 2 steps.
    with held_by_another_process(workdir), pytest.raises(locks.OutputLockedError):
        script.main([*args[:-1], "2", "--smoke"])
    assert _files(workdir) == before
    script.main([*args[:-1], "2", "--smoke"])  # and without the other process, it runs
    assert json.loads((workdir / "config.json").read_text())["smoke"] is True


# ------------------------------------------------------------------------ any Flax module


class _UserMLP(nn.Module):
    """A module of the user's own: no `train` argument; it centres its inputs itself."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.relu(nn.Dense(32)(x.reshape(x.shape[0], -1) - 0.5)))


class _UserBatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Dense(16)(x.reshape(x.shape[0], -1))
        return nn.Dense(4)(nn.relu(nn.BatchNorm(use_running_average=not train)(x)))


class _BatchNormNoTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.BatchNorm(use_running_average=False)(x.reshape(x.shape[0], -1)))


USER_FIT = dict(sigma=0.25, epochs=2, batch_size=16, learning_rate=0.1, show_progress=False)


def _user_fit(workdir, model, **kw):
    images, labels = _data()
    return train.fit(
        jax.random.key(0), workdir, model=model, images=images, labels=labels, **{**USER_FIT, **kw}
    )


def test_fit_trains_a_users_module_without_train_and_restores_it_given_the_module(tmp_path):
    """No train argument, no num_classes (read from the output), no dataset: it learns (held-out
    votes 0.92 right against chance 0.25 after 12 steps, fixed keys), and load_for_eval needs the
    module to restore it, from the workdir or its checkpoints directory."""
    images, labels = _data(seed=1)
    held = dict(eval_images=images[:48], eval_labels=labels[:48], eval_noise=8)
    state = _user_fit(tmp_path, _UserMLP(), **held)
    evals = [r for r in _records(tmp_path) if "smoothed_accuracy" in r]
    assert [r["epoch"] for r in evals] == [1, 2] and evals[-1]["smoothed_accuracy"] > 0.6
    _, meta = checkpoint.restore_meta(tmp_path / "checkpoints")
    assert (meta["model"], meta["user_model"], meta["num_classes"]) == ("_UserMLP", True, 4)
    assert meta["dataset"] is None and (meta["loss"], meta["k"]) == ("gaussian", 1)
    with pytest.raises(checkpoint.CheckpointError, match="pass the module"):
        train.load_for_eval(tmp_path)
    for path in (tmp_path, tmp_path / "checkpoints"):
        _, variables, _, step = train.load_for_eval(path, model=_UserMLP())
        assert step == int(state.step) == 12
        assert checkpoint.digest(variables) == checkpoint.digest({"params": state.params})
    with pytest.raises(ValueError, match="num_classes is 3 but _UserMLP has 4"):
        _user_fit(tmp_path / "wrong", _UserMLP(), num_classes=3)


def test_fit_updates_the_batch_statistics_of_a_module_with_train(tmp_path):
    """A module whose __call__ takes train trains its batch norm on the batch's statistics and
    updates the running ones; with batch norm but no train argument it is refused up front."""
    images, _ = _data()
    model = _UserBatchNormNet()
    initial = models.init_variables(model, jax.random.key(0), images.shape[1:])["batch_stats"]
    state = _user_fit(tmp_path / "bn", model)
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), state.model_state, initial)
    assert jax.tree.leaves(moved) and all(jax.tree.leaves(moved))
    _, variables, _, _ = train.load_for_eval(tmp_path / "bn", model=model)
    assert checkpoint.digest(variables["batch_stats"]) == checkpoint.digest(state.model_state)
    with pytest.raises(ValueError, match="takes no `train` argument"):
        _user_fit(tmp_path / "refused", _BatchNormNoTrain())
    assert not (tmp_path / "refused").exists()


def test_fit_takes_a_loss_function_of_the_losses_contract(tmp_path):
    """Gaussian augmentation written out as a pure loss_fn(params, model_state, batch, key) trains
    to the weights of loss="gaussian"; such a function carries its own k and options."""
    model = _UserMLP()
    loss_fn = functools.partial(
        losses.gaussian_augmentation_loss,
        apply_fn=losses.make_train_apply(model),
        sigma=0.25,
        k=1,
    )
    named = _user_fit(tmp_path / "named", model, loss="gaussian")
    given = _user_fit(tmp_path / "given", model, loss=loss_fn)
    assert checkpoint.digest(given.params) == checkpoint.digest(named.params)
    _, meta = checkpoint.restore_meta(tmp_path / "given" / "checkpoints")
    assert meta["loss"] == "gaussian_augmentation_loss" and "k" not in meta
    with pytest.raises(ValueError, match="options of a named loss"):
        _user_fit(tmp_path / "k", model, loss=loss_fn, k=2)


def test_fit_takes_an_optax_transformation_and_freezes_what_is_not_trainable(tmp_path):
    model = _UserMLP()
    state = _user_fit(
        tmp_path / "run",
        model,
        optimizer=optax.adam(1e-2),
        learning_rate=None,
        trainable={"Dense_0": False, "Dense_1": True},
    )
    init_key = jax.random.split(jax.random.key(0), 3)[0]  # the run key's init stream
    images, _ = _data()
    initial = models.init_variables(model, init_key, images.shape[1:])["params"]
    assert checkpoint.digest(state.params["Dense_0"]) == checkpoint.digest(initial["Dense_0"])
    assert checkpoint.digest(state.params["Dense_1"]) != checkpoint.digest(initial["Dense_1"])
    with pytest.raises(ValueError, match="learning_rate is for"):
        _user_fit(tmp_path / "both", model, optimizer=optax.sgd(0.1))


# ------------------------------------------------------------- configs to weights, pinned digests

EXPERIMENTS = pathlib.Path(__file__).parents[1] / "experiments"
# config spec -> (weights digest, metrics digest) of its smoke run by `_config_run`, recorded with the
# code of commit 8ad67e3 (before train.fit took any Flax module), on 4 host CPU devices of the
# development machine (x86-64 AMD EPYC, jax 0.10.2): XLA:CPU may round differently on another
# processor kind, and then these digests are to be re-recorded there from the same commit.
PINNED = {
    "mnist5k_lenet_gaussian": (
        "b810192d59b76bfee47410860ccd146fcb6316c7ff4e52338bb54e5c1516662b",
        "06b6b4265008b5a1f066c7a404985eff098144deded88a6382f9df9e66444fa9",
    ),
    "mnist_lenet:method=macer": (
        "60c7a38b4a5fb8ecfeb52aa305c2b5b426cdfa95880ab5701a33f3cb69077d72",
        "4c3df9d175243652baa839d2a4801c6c979565942a2a34369069ad0534ca2c5b",
    ),
    "mnist_lenet:method=smoothadv": (
        "efec25cced77e8bf0d92f1463f226c2ea750d96169925395fe2d4ba703e2957a",
        "4226aacde8e57cd4880585a52c4c9bbb866ab8841cf9e52e9e53532e5d8cc886",
    ),
    "mnist5k_denoiser:sigma=0.5": (
        "b435e89470a1f653bf8e599da482e855b6b35b608e6b17c5650051cdba1ffb0a",
        "eece2dbe2faa6ff40c1ae121982df8c11861b04974a76997b92cdd9d7d9f5d32",
    ),
    "mnist5k_xhat:sigma=0.5,eps=0.5": (
        "9de838e6b582a316069d494b745c803325d190f1f76519da15d4055131f7d649",
        "4fc525078c2fb85f78873590e49615e32e05215f7ae6d82f06039b38c45af81a",
    ),
}


def _cli():
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        import cli
    finally:
        sys.path.remove(str(EXPERIMENTS))
    return cli


def _config_run(spec, workdir, mnist_test_dir, **config_args):
    """The smoke run of config `spec` through the script layer, as experiments/train.py --smoke
    runs it (cli.load_config, cli.train_and_test, cli.fit with the config's seed), on every 30th
    (every 90th for batch size 8) of its training images so that its one epoch, and the held-out
    evaluation after it (on 64 of the held-out images), take seconds. Configs of the full MNIST training set (not
    here) train on mnist5k's held-in digits instead. Returns (weights digest over params and batch
    statistics, digest of the metrics records without their timing)."""
    from rsjax import data

    cli = _cli()
    name, _, args = spec.partition(":")
    extra = ",".join(f"{k}={v}" for k, v in config_args.items())
    args = ",".join(filter(None, (args, extra)))
    config = cli.load_config(f"{EXPERIMENTS / 'configs' / name}.py:{args}", smoke=True)
    source = mnist_test_dir if config.get("holdout_every") == 0 else None  # the MNIST test split
    flags = argparse.Namespace(data_dir=None, data_source_dir=source, download=False)
    if config["dataset"] == "mnist":
        train_set, held_out = data.holdout(data.load("mnist5k", "train"), every=10)
    else:
        train_set, held_out = cli.train_and_test(config, flags)
    every = 30 if config["batch_size"] > 8 else 90
    train_set = data.Dataset(train_set.images[::every], train_set.labels[::every])
    held_out = data.Dataset(held_out.images[::7][:64], held_out.labels[::7][:64])
    state = cli.fit(
        jax.random.key(config["seed"]), workdir, config, train_set, held_out, show_progress=False
    )
    weights = checkpoint.digest({"params": state.params, "batch_stats": state.model_state})
    records = _without_timing(_records(pathlib.Path(workdir)))
    assert any("loss" in r for r in records)
    assert any("smoothed_accuracy" in r or "held_out_psnr" in r for r in records)
    metrics = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    return weights, metrics


@pytest.mark.filterwarnings("ignore::rsjax.monitor.CollapseWarning")  # a few steps' training
@pytest.mark.parametrize(
    "spec", ["mnist5k_lenet_gaussian", "mnist_lenet:method=macer", "mnist_lenet:method=smoothadv"]
)
def test_classifier_configs_train_to_their_pinned_weights(spec, tmp_path, mnist_test_dir):
    """A classifier (the quickstart's), one with batch norm (MACER's lenet_bn: its statistics are
    in the digest) and an adversarial one (SmoothAdv) train to the weights and metrics recorded
    before the refactor that made train.fit take any module."""
    assert _config_run(spec, tmp_path, mnist_test_dir) == PINNED[spec]


@pytest.mark.filterwarnings("ignore::rsjax.monitor.CollapseWarning")
def test_empirical_bayes_configs_train_to_their_pinned_weights(tmp_path, mnist_test_dir):
    """The denoiser config and the XHAT config on it train to the recorded weights and metrics."""
    denoiser = tmp_path / "denoiser"
    spec = "mnist5k_denoiser:sigma=0.5"
    assert _config_run(spec, denoiser, mnist_test_dir) == PINNED[spec]
    spec = "mnist5k_xhat:sigma=0.5,eps=0.5"
    got = _config_run(spec, tmp_path / "xhat", mnist_test_dir, denoiser=denoiser)
    assert got == PINNED[spec]
