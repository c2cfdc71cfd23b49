"""Training losses as pure functions of (params, model_state, batch, key) with keyword options.

Every loss draws k noisy copies x_ij = x_i + sigma * eps_ij of each example, runs them through the
model as ONE batch of B * k inputs, and returns (loss, (new_model_state, metrics)). model_state holds
batch-norm statistics ({} for models without them). Noise is in [0,1] pixel units.

Losses (the LOSSES registry; make_loss builds one by name with its options): "gaussian" (Gaussian
augmentation), "adre" (ADRE regulariser, as reconstructed in REFERENCE section 3), "macer" (MACER),
"smoothadv" (SmoothAdv) and "adre_adv" (ADRE-ADV). Options beyond apply_fn, sigma and k (lam, gamma,
beta, eps, ...) are keyword-only and named as in the papers.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (Gaussian augmentation); Feng, Wu, Chen, Zhang & Ning,
AAAI 2020 (ADRE); Zhai et al., ICLR 2020 (MACER); rsjax REFERENCE section 3.
"""

import inspect
from collections.abc import Mapping
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.scipy.special import ndtri

from rsjax import attacks, models

# apply_fn(params, model_state, x, train) -> (logits, new_model_state)
TrainApplyFn = Callable[[Any, Any, jax.Array, bool], tuple[jax.Array, Any]]
# (loss, (new_model_state, metrics)): what every loss returns, the has_aux form of jax.value_and_grad.
LossResult = tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]
# loss_fn(params, model_state, batch, key[, step]) -> LossResult (make_loss; rsjax.train.fit's loss).
LossFn = Callable[..., LossResult]


def make_train_apply(model: nn.Module) -> TrainApplyFn:
    """The (params, model_state, x, train) -> (logits, model_state) form of a Flax linen module.

    With train True a module with batch norm updates its statistics (mutable "batch_stats"). A
    module whose __call__ has no `train` argument (rsjax.models.takes_train) is called without it;
    it cannot have batch statistics, since nothing would say when to update them (ValueError).
    """
    takes_train = models.takes_train(model)

    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **({"batch_stats": model_state} if model_state else {})}
        if not takes_train:
            models.check_batch_norm(model, variables)
        if train and model_state:
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            return logits, updates["batch_stats"]
        return model.apply(variables, x, **({"train": train} if takes_train else {})), model_state

    return apply_fn


def noisy_copies(key: jax.Array, x: jax.Array, *, sigma: float, k: int) -> jax.Array:
    """(B, H, W, C) -> (B * k, H, W, C): k copies of each image plus N(0, sigma^2) noise.

    Copies of one example are adjacent: row i * k + j is x_i + sigma * eps_ij.
    """
    repeated = jnp.repeat(x, k, axis=0)
    return repeated + sigma * jax.random.normal(key, repeated.shape, repeated.dtype)


def gaussian_augmentation_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    k: int = 1,
) -> LossResult:
    """Cohen et al.'s noise-augmented cross-entropy: mean over i, j of CE(f(x_i + sigma eps_ij), y_i).

    Args:
      batch: {"image": (B, H, W, C) float32 in [0,1], "label": (B,) int}.
      k: noisy copies per example (one vmapped batch of B * k inputs).
    Returns:
      (loss, (new_model_state, {"loss", "ce", "accuracy"})), accuracy on the noisy copies.
    """
    images, labels = batch["image"], batch["label"]
    logits, model_state = apply_fn(
        params, model_state, noisy_copies(key, images, sigma=sigma, k=k), True
    )
    labels_k = jnp.repeat(labels, k)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_k).mean()
    accuracy = (logits.argmax(-1) == labels_k).mean()
    return ce, (model_state, {"loss": ce, "ce": ce, "accuracy": accuracy})


def _noisy_logits(params, model_state, batch, key, *, apply_fn, sigma, k):
    """(logits (B, k, C) of the noisy copies, labels (B,), new model_state): one B * k batch."""
    images, labels = batch["image"], batch["label"]
    logits, model_state = apply_fn(
        params, model_state, noisy_copies(key, images, sigma=sigma, k=k), True
    )
    return logits.reshape(images.shape[0], k, -1), labels, model_state


def soft_smoothed(logits: jax.Array, *, beta: float = 1.0) -> jax.Array:
    """(B, k, C) logits -> (B, C) soft smoothed classifier G = (1/k) sum_j softmax(beta * logits_j)."""
    return jax.nn.softmax(beta * logits, axis=-1).mean(axis=1)


def log_soft_smoothed_at(logits: jax.Array, classes: jax.Array) -> jax.Array:
    """log G_i[c_i] for (B, k, C) logits and (B,) classes, stably: logsumexp over the k copies of
    log_softmax(logits)[c] minus log k. Finite, with a nonzero gradient, even where every softmax
    probability of c underflows to 0 in float32."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    at = jnp.take_along_axis(log_p, classes[:, None, None], axis=-1)[..., 0]
    return jax.nn.logsumexp(at, axis=1) - jnp.log(logits.shape[1])


def strongest_wrong_class(G: jax.Array, labels: jax.Array) -> jax.Array:
    """(B, C), (B,) -> (B,) int: c*_i = argmax_{c != y_i} G_i[c].

    The runner-up when x_i is classified correctly, the wrongly winning class when not.
    """
    is_label = jax.nn.one_hot(labels, G.shape[-1], dtype=bool)
    return jnp.where(is_label, -jnp.inf, G).argmax(axis=-1)


def adre_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    k: int,
    lam: float,
) -> LossResult:
    """ADRE, the adaptive radius-enhancing regulariser, in the published reconstruction rsjax follows.

    Feng et al.'s exact formula is not available; rsjax uses the reconstruction of REFERENCE section 3:
      G_i = (1/k) sum_j softmax(f(x_ij)),  x_ij = x_i + sigma * eps_ij,
      c*_i = argmax_{c != y_i} G_i[c]   (strongest wrong class, see `strongest_wrong_class`),
      loss = mean_i [ (1/k) sum_j CE(f(x_ij), y_i) + lam * log(G_i[c*_i] + 1e-10) ].
    Pushing down the strongest wrong class raises the certified radius sigma/2 (Phi^-1(pA) -
    Phi^-1(pB)) of correct points and corrects wrong ones. c* is a constant of the step (argmax has no
    gradient); the gradient flows through G_i[c*_i]. lam and k are not published: REFERENCE suggests
    sweeping lam in {0.05, 0.1, 0.5, 1, 2} and k in {4, 8, 16}.

    Args:
      batch: {"image": (B, H, W, C) float32 in [0,1], "label": (B,) int}.
      k: noisy copies per example (one batch of B * k inputs). lam: weight of the log term.
    Returns:
      (loss, (new_model_state, {"loss", "ce", "reg", "accuracy"})): reg is the batch mean of the log
      term (loss = ce + lam * reg), accuracy is measured on the noisy copies.

    References: Feng, Wu, Chen, Zhang & Ning, AAAI 2020; rsjax REFERENCE section 3.
    """
    logits, labels, model_state = _noisy_logits(
        params, model_state, batch, key, apply_fn=apply_fn, sigma=sigma, k=k
    )
    labels_k = jnp.broadcast_to(labels[:, None], logits.shape[:2])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels_k).mean()
    G = soft_smoothed(logits)
    c_star = jax.lax.stop_gradient(strongest_wrong_class(G, labels))
    reg = jnp.log(jnp.take_along_axis(G, c_star[:, None], axis=-1)[:, 0] + 1e-10).mean()
    loss = ce + lam * reg
    accuracy = (logits.argmax(-1) == labels_k).mean()
    return loss, (model_state, {"loss": loss, "ce": ce, "reg": reg, "accuracy": accuracy})


def macer_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    k: int = 16,
    lam: float = 12.0,
    gamma: float = 8.0,
    beta: float = 16.0,
    warmup_steps: int = 0,
    step: int | jax.Array = 0,
) -> LossResult:
    """MACER: cross-entropy of the soft smoothed classifier plus a hinge on its certified margin.

      G_i = (1/k) sum_j softmax(f(x_ij)),  G^beta_i = (1/k) sum_j softmax(beta * f(x_ij)),
      xi_i = Phi^-1(G^beta_i[top1]) - Phi^-1(G^beta_i[top2])   (top1, top2: the two largest of G^beta_i),
      loss = (1/B) sum_i -log G_i[y_i]
             + lam * sigma/2 * (1/B) sum_{i in H} max(0, gamma - xi_i),
    where H holds the points whose top1 is y_i and whose xi_i is finite. As in Zhai et al.'s code the
    hinge is summed over H and divided by the batch size B (not by |H|). Points with infinite xi (in
    float32: G^beta top1 rounds to 1, or top2 underflows below ~1e-38) are dropped, not clipped; a
    double jnp.where keeps their infinities out of the gradient, so the gradient is finite even when
    H is empty. log G_i[y_i] is computed as a logsumexp of log-softmaxes (`log_soft_smoothed_at`):
    with log(G + 1e-10), as in Zhai et al.'s code, a float32 softmax that underflows to exactly 0
    leaves a zero gradient for good (seen on Fashion-MNIST at sigma 0.5: the loss stuck at 20.7).

    Args:
      batch: {"image": (B, H, W, C) float32 in [0,1], "label": (B,) int}.
      k: noisy copies per example (default 16). lam: hinge weight (default 12; 16 on MNIST).
      gamma: hinge margin (default 8). beta: inverse temperature of G^beta (default 16).
      warmup_steps: rsjax's option, not Zhai et al.'s (default 0: off): lam grows linearly from 0
        over the first warmup_steps steps. On LeNet (no batch norm) from scratch the full hinge
        gives a gradient norm near 100 at step 0 and the network collapses to one class; warming
        lam up over one epoch of Fashion-MNIST only delayed that collapse (to lam of about 10).
    Returns:
      (loss, (new_model_state, {"loss", "ce", "hinge", "accuracy", "hinge_fraction"})):
      loss = ce + lam * hinge, with hinge = sigma/2 * (1/B) sum_{i in H} max(0, gamma - xi_i);
      hinge_fraction = |H| / B; accuracy on the noisy copies.

    References: Zhai, Dan, He, Zhang, Gong, Ravikumar, Hsieh & Wang, ICLR 2020 (MACER); rsjax
    REFERENCE section 3.
    """
    logits, labels, model_state = _noisy_logits(
        params, model_state, batch, key, apply_fn=apply_fn, sigma=sigma, k=k
    )
    ce = -log_soft_smoothed_at(logits, labels).mean()
    top, top_idx = jax.lax.top_k(soft_smoothed(logits, beta=beta), 2)
    xi_raw = ndtri(top[:, 0]) - ndtri(top[:, 1])
    in_hinge = (top_idx[:, 0] == labels) & jnp.isfinite(xi_raw)
    # Double where: outside H, evaluate Phi^-1 at 1/2 so no inf/NaN reaches the backward pass.
    safe = jnp.where(in_hinge[:, None], top, 0.5)
    xi = ndtri(safe[:, 0]) - ndtri(safe[:, 1])
    hinge = sigma / 2 * jnp.where(in_hinge, jnp.maximum(0.0, gamma - xi), 0.0).mean()
    loss = ce + attacks.eps_schedule(step, eps=lam, warmup_steps=warmup_steps) * hinge
    accuracy = (logits.argmax(-1) == labels[:, None]).mean()
    metrics = {
        "loss": loss,
        "ce": ce,
        "hinge": hinge,
        "accuracy": accuracy,
        "hinge_fraction": in_hinge.mean(),
    }
    return loss, (model_state, metrics)


def attacked_batch(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    eps: float,
    num_steps: int,
    num_noise: int,
    warmup_steps: int,
    step: int | jax.Array,
) -> tuple[dict[str, jax.Array], jax.Array]:
    """The batch with its images replaced by SmoothAdv points x' (no gradient flows through x').

    The attack runs the model in evaluation mode with the current batch-norm statistics, against the
    soft smoothed classifier with `num_noise` fixed noise draws, with eps warmed up linearly over
    `warmup_steps` training steps. Returns (batch, eps in force at this step).
    """

    def logits_fn(p, x):
        return apply_fn(p, model_state, x, False)[0]

    eps_now = attacks.eps_schedule(step, eps=eps, warmup_steps=warmup_steps)
    x_adv = attacks.smoothadv_attack(
        key,
        logits_fn,
        params,
        batch["image"],
        batch["label"],
        eps=eps_now,
        sigma=sigma,
        num_steps=num_steps,
        num_noise=num_noise,
    )
    return dict(batch, image=x_adv), eps_now


def smoothadv_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    k: int,
    eps: float,
    num_steps: int,
    warmup_steps: int = 0,
    step: int | jax.Array = 0,
) -> LossResult:
    """SmoothAdv training (Salman et al., NeurIPS 2019): Gaussian augmentation at attacked points.

    x'_i = SmoothAdv(x_i) with m = k noise draws and `num_steps` steps (rsjax.attacks); the loss is
    mean over i, j of CE(f(x'_i + sigma eps_ij), y_i) on k fresh noisy copies (Salman et al.'s code
    reuses the attack's draws; fresh draws are rsjax's choice, as for ADRE-ADV below).

    Returns `gaussian_augmentation_loss`'s (loss, (new_model_state, metrics)), metrics with "eps"
    added: the attack radius in force at this step (warmed up over `warmup_steps`).
    """
    return _at_attacked_point(
        gaussian_augmentation_loss,
        params,
        model_state,
        batch,
        key,
        apply_fn=apply_fn,
        sigma=sigma,
        k=k,
        attack=dict(
            eps=eps, num_steps=num_steps, num_noise=k, warmup_steps=warmup_steps, step=step
        ),
    )


def adre_adv_loss(
    params: Any,
    model_state: Any,
    batch: Mapping[str, jax.Array],
    key: jax.Array,
    *,
    apply_fn: TrainApplyFn,
    sigma: float,
    k: int,
    lam: float,
    eps: float,
    num_steps: int,
    num_noise: int = 1,
    warmup_steps: int = 0,
    step: int | jax.Array = 0,
) -> LossResult:
    """ADRE-ADV (Feng et al., AAAI 2020): ADRE (`adre_loss`) at the SmoothAdv point x' of each example,
    on k fresh noisy copies x' + sigma eps_ij; the attack uses `num_noise` draws, `num_steps` steps.
    Returns `adre_loss`'s (loss, (new_model_state, metrics)), metrics with "eps" added (the attack
    radius in force at this step)."""
    return _at_attacked_point(
        adre_loss,
        params,
        model_state,
        batch,
        key,
        apply_fn=apply_fn,
        sigma=sigma,
        k=k,
        lam=lam,
        attack=dict(
            eps=eps, num_steps=num_steps, num_noise=num_noise, warmup_steps=warmup_steps, step=step
        ),
    )


def _at_attacked_point(
    base_loss, params, model_state, batch, key, *, apply_fn, sigma, k, attack, **options
):
    """base_loss at the SmoothAdv points of the batch (attack key and noise key split from key)."""
    attack_key, noise_key = jax.random.split(key)
    batch, eps_now = attacked_batch(
        params, model_state, batch, attack_key, apply_fn=apply_fn, sigma=sigma, **attack
    )
    loss, (model_state, metrics) = base_loss(
        params, model_state, batch, noise_key, apply_fn=apply_fn, sigma=sigma, k=k, **options
    )
    return loss, (model_state, dict(metrics, eps=eps_now))


LOSSES = {
    "gaussian": gaussian_augmentation_loss,
    "adre": adre_loss,
    "macer": macer_loss,
    "smoothadv": smoothadv_loss,
    "adre_adv": adre_adv_loss,
}


def make_loss(name: str, model: nn.Module, *, sigma: float, k: int, **options: Any) -> LossFn:
    """loss_fn(params, model_state, batch, key[, step]) for rsjax.train.make_train_step, from the
    loss `name` of LOSSES with its k and keyword options; unknown or missing options raise ValueError
    here, before anything is compiled."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; available: {sorted(LOSSES)}")
    apply_fn = make_train_apply(model)
    fn = LOSSES[name]
    accepted = set(inspect.signature(fn).parameters)
    unknown = set(options) - (accepted - {"apply_fn", "sigma", "k", "step"})
    missing = (
        {
            p.name
            for p in inspect.signature(fn).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is p.empty
        }
        - {"apply_fn", "sigma", "k"}
        - set(options)
    )
    if unknown or missing:
        raise ValueError(
            f"loss {name!r}: unknown options {sorted(unknown)}, missing options "
            f"{sorted(missing)} (its keyword options: {sorted(accepted)})"
        )

    if "step" in accepted:

        def loss_fn(params, model_state, batch, key, step):
            return fn(
                params,
                model_state,
                batch,
                key,
                apply_fn=apply_fn,
                sigma=sigma,
                k=k,
                step=step,
                **options,
            )
    else:

        def loss_fn(params, model_state, batch, key):
            return fn(
                params, model_state, batch, key, apply_fn=apply_fn, sigma=sigma, k=k, **options
            )

    return loss_fn
