"""Empirical Bayes smoothed classifiers: a classifier f composed with the learned denoiser xhat_theta.

    h(y) = f(xhat_theta(y)),  xhat_theta(y) = y + sigma^2 psi_theta(y),
    g_EB(x) = argmax_c P_eps[ h(x + eps) = c ],  eps ~ N(0, sigma^2 I).

h is a fixed function of the noisy input, so CERTIFY, T-CERTIFY and PREDICT (rsjax.certify) apply to
it unchanged at the denoiser's sigma: `make_eb_logits_fn` is just another logits_fn, whose params are
{"classifier": the classifier's variables, "score": the score model's parameters}.

Training:
  fit_denoiser  learns psi_theta by denoising (rsjax.tweedie.denoising_loss), Adam, the shared
                resumable loop of rsjax.train (checkpoints, metrics.jsonl, progress, held-out MSE/PSNR).
  fit_xhat      XHAT(eps): a classifier trained end-to-end on xhat at SmoothAdv points, i.e. the attack
                against the soft EB smoothed classifier, then cross-entropy of f(xhat(x' + eta_j)); the
                score network frozen (its parameters get no update) or fine-tuned. eps = 0 trains f on
                xhat of plain noisy copies.
Setting (a) of the paper, a classifier trained on clean data and used on xhat, is `compose`: an
ordinary rsjax.train.fit checkpoint (loss "gaussian" with sigma = 0 trains on clean data) with a
denoiser checkpoint.

References: Saremi & Srivastava 2020 (empirical Bayes smoothed classifiers, XHAT); Salman et al.,
NeurIPS 2019 (SmoothAdv); rsjax REFERENCE section 4.
"""

import functools
import pathlib
from typing import Callable

import jax
import numpy as np
import optax

from rsjax import (
    bounds,
    checkpoint,
    losses,
    models,
    monitor,
    score,
    sharding,
    train,
    tweedie,
    walkjump,
)


def make_eb_logits_fn(
    classifier_logits_fn: Callable, score_fn: score.ScoreFn, *, sigma: float
) -> Callable:
    """logits_fn(params, y) = classifier_logits_fn(params["classifier"], xhat(y)) with
    xhat(y) = y + sigma^2 score_fn(params["score"], y). y: (B, H, W, C) noisy images."""
    sigma = float(sigma)

    def eb_logits_fn(params, y):
        denoised = y + sigma**2 * score_fn(params["score"], y)
        return classifier_logits_fn(params["classifier"], denoised)

    return eb_logits_fn


def make_eb_train_apply(
    classifier_model, score_fn: score.ScoreFn, *, sigma: float, finetune: bool
) -> losses.TrainApplyFn:
    """The rsjax.losses form apply_fn(params, model_state, y, train) of f(xhat(y)); params as in
    `make_eb_logits_fn`, model_state the classifier's batch statistics. With finetune False no
    gradient reaches the score parameters."""
    classifier_apply = losses.make_train_apply(classifier_model)
    sigma = float(sigma)

    def apply_fn(params, model_state, y, train_mode):
        score_params = params["score"] if finetune else jax.lax.stop_gradient(params["score"])
        denoised = y + sigma**2 * score_fn(score_params, y)
        return classifier_apply(params["classifier"], model_state, denoised, train_mode)

    return apply_fn


# ---------------------------------------------------------------------------- denoiser training


def fit_denoiser(
    key: jax.Array,
    workdir,
    *,
    images: np.ndarray,
    score_model: str,
    dataset: str,
    sigma: float,
    epochs: int,
    batch_size: int,
    learning_rate: float = 1e-3,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    checkpoint_every: int = 0,
    max_to_keep: int = 3,
    stop_after_step: int | None = None,
    mesh=None,
    log_every: int = 50,
    show_progress: bool = True,
    eval_images: np.ndarray | None = None,
    eval_max: int = 1000,
    on_start: Callable[[], None] | None = None,
) -> train.TrainState:
    """Learns the score of Y = X + N(0, sigma^2 I) on `images` by denoising; resumes from `workdir`.

    Args:
      key: the run's root key (split into init, data and train streams; the held-out noise comes
        from fold_in(key, 0x5EED)).
      images: (N, *shape) float32 clean data in [0,1] (labels are not used).
      score_model: a name of rsjax.score.SCORE_MODELS.
      sigma: noise level (> 0) in [0,1] pixel units.
      epochs, batch_size, learning_rate, schedule, weight_decay: Adam (b1 = 0.9) with this schedule.
      eval_images: held-out clean data; after every epoch the denoising MSE per pixel and PSNR (dB)
        of the first `eval_max` are logged to metrics.jsonl.
      on_start: see rsjax.train.train_loop (called before anything is written).
    Returns:
      The final TrainState; its checkpoints hold {"params": score params} and meta kind "denoiser".
    """
    sigma = bounds.check_sigma(sigma)
    mesh = sharding.batch_mesh() if mesh is None else mesh
    steps_per_epoch = train._steps_per_epoch(images.shape[0], batch_size, mesh)
    total_steps = epochs * steps_per_epoch
    model = score.make_score_model(score_model)
    score_fn = _score_fn(score_model)
    optimizer = train.make_optimizer(
        learning_rate=learning_rate,
        total_steps=total_steps,
        momentum=0.9,
        weight_decay=weight_decay,
        schedule=schedule,
        optimizer="adam",
    )
    init_key, data_key, train_key = jax.random.split(key, 3)
    eval_key = jax.random.fold_in(key, 0x5EED)
    params = score.init_params(model, init_key, images.shape[1:])
    state = train.TrainState(
        jax.numpy.zeros((), jax.numpy.int32), params, {}, optimizer.init(params)
    )
    meta = {
        "kind": "denoiser",
        "score_model": score_model,
        "dataset": dataset,
        "input_shape": list(images.shape[1:]),
        "sigma": sigma,
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "total_steps": total_steps,
    }
    loss_fn = functools.partial(tweedie.denoising_loss, score_fn=score_fn, sigma=sigma)

    def evaluate(state):
        if eval_images is None:
            return None
        metrics = tweedie.denoise_metrics(
            eval_key, score_fn, sharding.gather(state.params), eval_images[:eval_max], sigma=sigma
        )
        return {f"held_out_{k}": v for k, v in metrics.items()}

    return train.train_loop(
        workdir,
        state=state,
        train_step=train.make_train_step(loss_fn, optimizer),
        meta=meta,
        images=images,
        labels=None,
        data_key=data_key,
        train_key=train_key,
        epochs=epochs,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        max_to_keep=max_to_keep,
        stop_after_step=stop_after_step,
        mesh=mesh,
        log_every=log_every,
        show_progress=show_progress,
        name=f"denoise {score_model}",
        eval_fn=evaluate,
        on_start=on_start,
    )


DENOISER_OLDER = (
    "rerun the denoiser's training to redo the later steps (it resumes from step {step}), or use "
    "step {step} (compose's denoiser_step)"
)


def load_denoiser(ckpt_dir, step: int | None = None):
    """(score_fn, params, meta, step) of a `fit_denoiser` checkpoint; a step that fails its
    digest check raises rsjax.checkpoint.CorruptedCheckpointError naming the intact steps."""
    step, meta = checkpoint.restore_meta(ckpt_dir, step, hint=DENOISER_OLDER)
    if meta.get("kind") != "denoiser":
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} is not a denoiser checkpoint (kind {meta.get('kind', 'classifier')!r})"
        )
    model = score.make_score_model(meta["score_model"])
    like = {
        "params": score.init_params(model, jax.random.key(0), meta["input_shape"]),
        "batch_stats": {},
    }
    step, variables, _ = checkpoint.restore(ckpt_dir, step, model_like=like, hint=DENOISER_OLDER)
    return _score_fn(meta["score_model"]), variables["params"], meta, step


# ------------------------------------------------------------------ classifiers on the denoiser


def fit_xhat(
    key: jax.Array,
    workdir,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    model_name: str,
    dataset: str,
    num_classes: int,
    denoiser_dir,
    eps: float,
    num_steps: int = 1,
    k: int = 1,
    warmup_steps: int = 0,
    finetune: bool = False,
    sigma: float | None = None,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    checkpoint_every: int = 0,
    max_to_keep: int = 3,
    stop_after_step: int | None = None,
    mesh=None,
    log_every: int = 50,
    show_progress: bool = True,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    eval_noise: int = 32,
    eval_max: int = 500,
    fail_on_collapse: bool = False,
    on_start: Callable[[], None] | None = None,
) -> train.TrainState:
    """XHAT(eps): trains classifier `model_name` end-to-end on xhat of the denoiser in `denoiser_dir`
    at SmoothAdv points, at the denoiser's sigma; resumes from `workdir`.

    Loss: x' = SmoothAdv(x) against the soft EB smoothed classifier (k noise draws, `num_steps`
    steps, eps warmed up over `warmup_steps`), then mean over i, j of CE(f(xhat(x'_i + eta_ij)), y_i)
    on k fresh draws (rsjax.losses.smoothadv_loss with the EB apply_fn). eps = 0: no attack, f trained
    on xhat(x + eta) (rsjax.losses.gaussian_augmentation_loss). finetune: the score network trains
    too (same optimizer); otherwise its parameters are frozen (no gradient, no update). sigma, if
    given, must equal the denoiser's (a guard against pairing the wrong runs).
    Classifier training options, eval, on_start, the collapse check of every held-out evaluation
    (rsjax.monitor.CollapseWarning, or with fail_on_collapse CollapseError) as in rsjax.train.fit
    (SGD with momentum).
    Returns:
      The final TrainState, params {"classifier", "score"}; meta kind "eb_classifier".
    """
    score_fn, score_params, denoiser_meta, denoiser_step = load_denoiser(
        pathlib.Path(denoiser_dir) / "checkpoints"
    )
    if sigma is not None and float(sigma) != float(denoiser_meta["sigma"]):
        raise ValueError(
            f"sigma {sigma} requested but the denoiser in {denoiser_dir} was trained at "
            f"sigma {denoiser_meta['sigma']}"
        )
    sigma = float(denoiser_meta["sigma"])
    if list(images.shape[1:]) != denoiser_meta["input_shape"]:
        raise ValueError(
            f"images of shape {images.shape[1:]} but the denoiser was trained on "
            f"{tuple(denoiser_meta['input_shape'])}"
        )
    mesh = sharding.batch_mesh() if mesh is None else mesh
    steps_per_epoch = train._steps_per_epoch(images.shape[0], batch_size, mesh)
    total_steps = epochs * steps_per_epoch
    classifier = models.make_model(model_name, num_classes=num_classes, dataset=dataset)
    sgd = train.make_optimizer(
        learning_rate=learning_rate,
        total_steps=total_steps,
        momentum=momentum,
        weight_decay=weight_decay,
        schedule=schedule,
    )
    labels_tree = {"classifier": "train", "score": "train" if finetune else "frozen"}
    optimizer = optax.multi_transform({"train": sgd, "frozen": optax.set_to_zero()}, labels_tree)
    init_key, data_key, train_key = jax.random.split(key, 3)
    eval_key = jax.random.fold_in(key, 0x5EED)
    variables = models.init_variables(classifier, init_key, images.shape[1:])
    params = {"classifier": variables["params"], "score": score_params}
    state = train.TrainState(
        jax.numpy.zeros((), jax.numpy.int32),
        params,
        variables.get("batch_stats", {}),
        optimizer.init(params),
    )
    apply_fn = make_eb_train_apply(classifier, score_fn, sigma=sigma, finetune=finetune)
    if eps > 0:
        loss_fn = functools.partial(
            losses.smoothadv_loss,
            apply_fn=apply_fn,
            sigma=sigma,
            k=k,
            eps=eps,
            num_steps=num_steps,
            warmup_steps=warmup_steps,
        )
    elif eps == 0:
        loss_fn = functools.partial(
            losses.gaussian_augmentation_loss, apply_fn=apply_fn, sigma=sigma, k=k
        )
    else:
        raise ValueError(f"eps must be >= 0, got {eps}")
    meta = {
        "kind": "eb_classifier",
        "model": model_name,
        "score_model": denoiser_meta["score_model"],
        "dataset": dataset,
        "num_classes": num_classes,
        "input_shape": list(images.shape[1:]),
        "sigma": sigma,
        "loss": "xhat",
        "k": k,
        "loss_options": {
            "eps": eps,
            "num_steps": num_steps,
            "warmup_steps": warmup_steps,
            "finetune": finetune,
        },
        "denoiser": {"dir": str(denoiser_dir), "step": denoiser_step},
        "denoiser_sha256": checkpoint.digest(score_params),
        "epochs": epochs,
        "batch_size": batch_size,
        "total_steps": total_steps,
    }
    logits_fn = eb_logits_fn_for(model_name, dataset, num_classes, meta["score_model"], sigma)

    def evaluate(state):
        if eval_images is None:
            return None
        summary = monitor.vote_summary(
            eval_key,
            logits_fn,
            _eb_variables(state),
            eval_images[:eval_max],
            eval_labels[:eval_max],
            sigma=sigma,
            num_classes=num_classes,
            num_noise=eval_noise,
            mesh=mesh,
        )
        return monitor.evaluation_record(
            summary,
            num_classes=num_classes,
            after_warmup=True,  # evaluated after whole epochs; fit_xhat has no lr warm-up
            eval_examples=min(eval_max, len(eval_labels)),
            eval_noise=eval_noise,
        )

    return train.train_loop(
        workdir,
        state=state,
        train_step=train.make_train_step(loss_fn, optimizer),
        meta=meta,
        images=images,
        labels=labels,
        data_key=data_key,
        train_key=train_key,
        epochs=epochs,
        batch_size=batch_size,
        checkpoint_every=checkpoint_every,
        max_to_keep=max_to_keep,
        stop_after_step=stop_after_step,
        mesh=mesh,
        log_every=log_every,
        show_progress=show_progress,
        name=f"xhat {model_name}",
        eval_fn=evaluate,
        fail_on_collapse=fail_on_collapse,
        on_start=on_start,
    )


def _eb_variables(state: train.TrainState) -> dict:
    classifier = {"params": state.params["classifier"]}
    if state.model_state:
        classifier["batch_stats"] = state.model_state
    return {"classifier": classifier, "score": state.params["score"]}


# --------------------------------------------------------------------------- loading for eval


@functools.cache
def _score_fn(score_model: str) -> score.ScoreFn:
    """One score_fn object per score model name (jit caches on it)."""
    return score.make_score_fn(score.make_score_model(score_model))


@functools.cache
def eb_logits_fn_for(
    model_name: str, dataset: str, num_classes: int, score_model: str, sigma: float
) -> Callable:
    """The EB logits_fn of a (classifier, score model, sigma), one object per combination."""
    classifier = models.make_model(model_name, num_classes=num_classes, dataset=dataset)
    return make_eb_logits_fn(models.make_logits_fn(classifier), _score_fn(score_model), sigma=sigma)


def compose(classifier_dir, denoiser_dir, *, classifier_step=None, denoiser_step=None):
    """Setting (a): a classifier checkpoint of rsjax.train.fit used on xhat of a denoiser checkpoint.

    Returns (logits_fn, params, meta): params {"classifier", "score"}; meta the classifier's, with the
    denoiser's sigma, score model and step added. Certify at meta["sigma"], the denoiser's.
    Either checkpoint failing its digest check raises rsjax.checkpoint.CorruptedCheckpointError
    naming the intact steps (see train.load_for_eval and load_denoiser).
    """
    model, variables, meta, step = train.load_for_eval(
        pathlib.Path(classifier_dir) / "checkpoints", classifier_step
    )
    del model
    _, score_params, denoiser_meta, d_step = load_denoiser(
        pathlib.Path(denoiser_dir) / "checkpoints", denoiser_step
    )
    if list(meta["input_shape"]) != list(denoiser_meta["input_shape"]):
        raise ValueError(
            f"the classifier takes {meta['input_shape']} but the denoiser {denoiser_meta['input_shape']}"
        )
    sigma = float(denoiser_meta["sigma"])
    logits_fn = eb_logits_fn_for(
        meta["model"], meta["dataset"], meta["num_classes"], denoiser_meta["score_model"], sigma
    )
    meta = dict(
        meta,
        kind="eb_classifier",
        classifier_sigma=meta["sigma"],
        sigma=sigma,
        classifier_step=step,
        score_model=denoiser_meta["score_model"],
        denoiser={"dir": str(denoiser_dir), "step": d_step},
    )
    return logits_fn, {"classifier": variables, "score": score_params}, meta


@functools.cache
def walk_jump_logits_fn_for(
    model_name: str,
    dataset: str,
    num_classes: int,
    score_model: str,
    sigma: float,
    num_steps: int,
    delta: float,
    gamma: float,
    u: float,
) -> Callable:
    """The walk-jump logits_fn (rsjax.walkjump) of a (classifier, score model, walk), one object per
    combination; params {"classifier", "score"} as for `eb_logits_fn_for`."""
    classifier = models.make_model(model_name, num_classes=num_classes, dataset=dataset)
    return walkjump.make_walk_jump_logits_fn(
        models.make_logits_fn(classifier),
        _score_fn(score_model),
        sigma=sigma,
        num_steps=num_steps,
        delta=delta,
        gamma=gamma,
        u=u,
    )


def load_for_eval(ckpt_dir, step: int | None = None):
    """(logits_fn, params, meta, step) of any classifier checkpoint: a plain rsjax.train.fit one or a
    `fit_xhat` one (kind "eb_classifier"); a denoiser checkpoint alone is not a classifier.
    A step that fails its digest check raises rsjax.checkpoint.CorruptedCheckpointError naming the
    intact steps and the `--step` that certifies the newest of them."""
    step, meta = checkpoint.restore_meta(ckpt_dir, step, hint=train.CERTIFY_OLDER)
    kind = meta.get("kind", "classifier")
    if kind == "denoiser":
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} holds a denoiser, not a classifier: compose it with a classifier "
            "(rsjax.empirical_bayes.compose, or certify.py --denoiser)"
        )
    if kind == "classifier":
        model, variables, meta, step = train.load_for_eval(ckpt_dir, step)
        return models.make_logits_fn(model), variables, meta, step
    classifier = models.make_model(
        meta["model"], num_classes=meta["num_classes"], dataset=meta["dataset"]
    )
    variables = models.init_variables(classifier, jax.random.key(0), meta["input_shape"])
    score_params = score.init_params(
        score.make_score_model(meta["score_model"]), jax.random.key(0), meta["input_shape"]
    )
    like = {
        "params": {"classifier": variables["params"], "score": score_params},
        "batch_stats": variables.get("batch_stats", {}),
    }
    step, restored, _ = checkpoint.restore(
        ckpt_dir, step, model_like=like, hint=train.CERTIFY_OLDER
    )
    classifier_vars = {"params": restored["params"]["classifier"]}
    if restored["batch_stats"]:
        classifier_vars["batch_stats"] = restored["batch_stats"]
    params = {"classifier": classifier_vars, "score": restored["params"]["score"]}
    logits_fn = eb_logits_fn_for(
        meta["model"], meta["dataset"], meta["num_classes"], meta["score_model"], meta["sigma"]
    )
    return logits_fn, params, meta, step
