"""Empirical Bayes smoothed classifiers: a classifier f composed with the learned denoiser xhat_theta.

    h(y) = f(xhat_theta(y)),  xhat_theta(y) = y + sigma^2 psi_theta(y),
    g_EB(x) = argmax_c P_eps[ h(x + eps) = c ],  eps ~ N(0, sigma^2 I).

h is a fixed function of the noisy input, so CERTIFY, T-CERTIFY and PREDICT (rsjax.certify) apply to
it unchanged at the denoiser's sigma: `make_eb_logits_fn` is just another logits_fn, whose params are
{"classifier": the classifier's variables, "score": the score model's parameters}.

Training, both rsjax.train.fit given their model, loss, initialisation, evaluation and meta:
  fit_denoiser  learns psi_theta by denoising (rsjax.tweedie.denoising_loss), Adam, held-out MSE/PSNR.
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
import os
import pathlib
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

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
    classifier_model: nn.Module, score_fn: score.ScoreFn, *, sigma: float, finetune: bool
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
    workdir: str | os.PathLike,
    *,
    images: np.ndarray,
    score_model: str,
    dataset: str,
    sigma: float,
    learning_rate: float = 1e-3,
    eval_images: np.ndarray | None = None,
    eval_max: int = 1000,
    **options: Any,
) -> train.TrainState:
    """Learns the score of Y = X + N(0, sigma^2 I) on `images` by denoising; resumes from `workdir`.

    rsjax.train.fit of the score model with rsjax.tweedie.denoising_loss and Adam (b1 = 0.9).

    Args:
      key: the run's root key (as in rsjax.train.fit).
      images: (N, *shape) float32 clean data in [0,1] (no labels).
      score_model: a name of rsjax.score.SCORE_MODELS.
      sigma: noise level (> 0) in [0,1] pixel units.
      eval_images: held-out clean data; after every epoch the denoising MSE per pixel and PSNR (dB)
        of the first `eval_max` are logged to metrics.jsonl.
      options: rsjax.train.fit's (epochs, batch_size, schedule, weight_decay, checkpoint_every,
        stop_after_step, mesh, on_start, ...).
    Returns:
      The final TrainState; its checkpoints hold {"params": score params} and meta kind "denoiser".
    """
    sigma = bounds.check_sigma(sigma)
    score_fn = _score_fn(score_model)

    def evaluate(key, state):
        if eval_images is None:
            return None
        params = sharding.gather(state.params)
        metrics = tweedie.denoise_metrics(
            key, score_fn, params, eval_images[:eval_max], sigma=sigma
        )
        return {f"held_out_{k}": v for k, v in metrics.items()}

    return train.fit(
        key,
        workdir,
        model=score.make_score_model(score_model),
        loss=functools.partial(tweedie.denoising_loss, score_fn=score_fn, sigma=sigma),
        images=images,
        optimizer="adam",
        learning_rate=learning_rate,
        eval_fn=evaluate,
        meta={
            "kind": "denoiser",
            "score_model": score_model,
            "dataset": dataset,
            "sigma": sigma,
            "learning_rate": learning_rate,
        },
        name=f"denoise {score_model}",
        **options,
    )


DENOISER_OLDER = (
    "rerun the denoiser's training to redo the later steps (it resumes from step {step}), or use "
    "step {step} (compose's denoiser_step)"
)


def load_denoiser(
    path: str | os.PathLike, step: int | None = None
) -> tuple[score.ScoreFn, Any, dict, int]:
    """(score_fn, params, meta, step) of a `fit_denoiser` checkpoint, from its workdir or its
    checkpoints directory; a step that fails its digest check raises
    rsjax.checkpoint.CorruptedCheckpointError naming the intact steps."""
    ckpt_dir = train.checkpoint_dir(path)
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
    workdir: str | os.PathLike,
    *,
    images: np.ndarray,
    labels: np.ndarray,
    model: str,
    dataset: str,
    num_classes: int,
    denoiser_dir: str | os.PathLike,
    eps: float,
    num_steps: int = 1,
    k: int = 1,
    warmup_steps: int = 0,
    finetune: bool = False,
    sigma: float | None = None,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    eval_noise: int = 32,
    eval_max: int = 500,
    mesh: jax.sharding.Mesh | None = None,
    **options: Any,
) -> train.TrainState:
    """XHAT(eps): trains the registered classifier `model` end-to-end on xhat of the denoiser in
    `denoiser_dir` at SmoothAdv points, at the denoiser's sigma; resumes from `workdir`.

    rsjax.train.fit of params {"classifier", "score"} (the classifier's batch statistics as model
    state) with the loss: x' = SmoothAdv(x) against the soft EB smoothed classifier (k noise draws,
    `num_steps` steps, eps warmed up over `warmup_steps`), then mean over i, j of
    CE(f(xhat(x'_i + eta_ij)), y_i) on k fresh draws (rsjax.losses.smoothadv_loss with the EB
    apply_fn). eps = 0: no attack, f trained on xhat(x + eta) (rsjax.losses.gaussian_augmentation_loss).
    finetune: the score network trains too (same optimizer); otherwise its parameters are frozen
    (fit's trainable: no gradient, no update). sigma, if given, must equal the denoiser's (a guard
    against pairing the wrong runs). The held-out evaluation is fit's, of the EB classifier.
    options: rsjax.train.fit's (epochs, batch_size, learning_rate, momentum, weight_decay, schedule,
    fail_on_collapse, on_start, ...).
    Returns:
      The final TrainState, params {"classifier", "score"}; meta kind "eb_classifier".
    """
    score_fn, score_params, denoiser_meta, denoiser_step = load_denoiser(denoiser_dir)
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
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    classifier = models.make_model(model, num_classes=num_classes, dataset=dataset)
    apply_fn = make_eb_train_apply(classifier, score_fn, sigma=sigma, finetune=finetune)
    base = dict(apply_fn=apply_fn, sigma=sigma, k=k)
    if eps > 0:
        attack = dict(eps=eps, num_steps=num_steps, warmup_steps=warmup_steps)
        loss_fn = functools.partial(losses.smoothadv_loss, **base, **attack)
    else:
        loss_fn = functools.partial(losses.gaussian_augmentation_loss, **base)

    def init_fn(key, input_shape):
        variables = models.init_variables(classifier, key, input_shape)
        return dict(variables, params={"classifier": variables["params"], "score": score_params})

    score_model = denoiser_meta["score_model"]
    logits_fn = eb_logits_fn_for(model, dataset, num_classes, score_model, sigma)

    def evaluate(key, state):  # the votes of the EB classifier f(xhat(y))
        if eval_images is None:
            return None
        return monitor.held_out_votes(
            key,
            logits_fn,
            _eb_variables(state),
            eval_images,
            eval_labels,
            sigma=sigma,
            num_classes=num_classes,
            num_noise=eval_noise,
            max_examples=eval_max,
            mesh=mesh,
        )

    return train.fit(
        key,
        workdir,
        model=classifier,
        loss=loss_fn,
        images=images,
        labels=labels,
        trainable={"classifier": True, "score": finetune},
        init_fn=init_fn,
        eval_fn=evaluate,
        meta={
            "kind": "eb_classifier",
            "model": model,
            "score_model": score_model,
            "dataset": dataset,
            "num_classes": num_classes,
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
        },
        name=f"xhat {model}",
        mesh=mesh,
        **options,
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


def compose(
    classifier_dir: str | os.PathLike,
    denoiser_dir: str | os.PathLike,
    *,
    classifier_step: int | None = None,
    denoiser_step: int | None = None,
) -> tuple[Callable, dict, dict]:
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


def load_for_eval(
    path: str | os.PathLike, step: int | None = None, *, model: nn.Module | None = None
) -> tuple[Callable, Any, dict, int]:
    """(logits_fn, params, meta, step) of any classifier checkpoint: a plain rsjax.train.fit one or a
    `fit_xhat` one (kind "eb_classifier"); a denoiser checkpoint alone is not a classifier.
    path: a training workdir or its checkpoints directory; model: the module of a plain run that
    trained a module of your own (see rsjax.train.load_for_eval).
    A step that fails its digest check raises rsjax.checkpoint.CorruptedCheckpointError naming the
    intact steps and the `--step` that certifies the newest of them."""
    ckpt_dir = train.checkpoint_dir(path)
    step, meta = checkpoint.restore_meta(ckpt_dir, step, hint=train.CERTIFY_OLDER)
    kind = meta.get("kind", "classifier")
    if kind == "denoiser":
        raise checkpoint.CheckpointError(
            f"{ckpt_dir} holds a denoiser, not a classifier: compose it with a classifier "
            "(rsjax.empirical_bayes.compose, or certify.py --denoiser)"
        )
    if kind == "classifier":
        model, variables, meta, step = train.load_for_eval(ckpt_dir, step, model=model)
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
