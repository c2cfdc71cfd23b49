"""Training: train state, optimizer, the jitted train step, and a resumable `fit` loop. The losses are
in rsjax.losses (make_loss), the held-out checks after each epoch in rsjax.monitor.

Reproducibility: the run's key is split once into (init, data, train) streams. The example order of
epoch e is a permutation drawn from fold_in(data_key, e) and the noise of step s from
fold_in(train_key, s), so nothing random is stored: a run restored from the checkpoint of step s replays
exactly the batches and noise of an uninterrupted run and ends with bit-identical parameters.

Data parallelism: the global batch is split over a one-axis device Mesh (NamedSharding on the batch
axis) and the train state is replicated; jit inserts the gradient all-reduce.
"""

import contextlib
import functools
import inspect
import json
import math
import os
import pathlib
import signal
import time
import warnings
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rsjax import checkpoint, locks, losses, models, monitor, preemption, progress, sharding


class TrainState(NamedTuple):
    """step: int32 scalar; params; model_state (batch-norm statistics, {} if none); opt_state."""

    step: jax.Array
    params: Any
    model_state: Any
    opt_state: Any


# step(state, batch, train_key) -> (state, metrics): the jitted step of make_train_step.
TrainStepFn = Callable[[TrainState, dict[str, jax.Array], jax.Array], tuple[TrainState, dict]]


def make_optimizer(
    *,
    learning_rate: float,
    total_steps: int,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    decay_every: int = 0,
    decay_factor: float = 0.1,
    optimizer: str = "sgd",
    warmup_steps: int = 0,
    clip_norm: float | None = None,
) -> optax.GradientTransformation:
    """SGD with (heavy-ball) momentum (or Adam), optional weight decay and a learning-rate schedule.

    optimizer: "sgd" (momentum as given) or "adam" (momentum is Adam's b1; the energy and score
    networks of rsjax.score train with Adam, as in Saremi & Srivastava 2020).

    schedule: "cosine" (to 0 over total_steps), "step" (x decay_factor every decay_every steps, as in
    Cohen et al.: 0.1 every 30 epochs) or "constant".

    warmup_steps: w > 0 replaces the first w steps of the schedule by a linear warm-up,
    lr(s) = learning_rate * s / w for s < w (so lr(0) = 0 and lr(w) = learning_rate), joined with
    optax.join_schedules. After it, "cosine" decays from learning_rate to 0 over the remaining
    total_steps - w steps; "step" keeps its decays at the absolute steps decay_every, 2 decay_every,
    ... (a decay inside the warm-up applies from step w on); "constant" stays at learning_rate.

    clip_norm: c rescales the gradient g to g * min(1, c / ||g||_2) (optax.clip_by_global_norm, the
    norm over all parameters) before weight decay and the optimizer, as torch's clip_grad_norm_
    before optimizer.step(). For plain SGD without momentum or weight decay every update then has
    norm <= lr(s) * c.
    """
    if schedule == "cosine":
        lr = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
    elif schedule == "step":
        if decay_every < 1:
            raise ValueError("schedule='step' needs decay_every >= 1 (steps)")
        step_lr = optax.exponential_decay(learning_rate, decay_every, decay_factor, staircase=True)

        def lr(count):  # after the warm-up's join, count starts again at 0: decay at absolute steps
            return step_lr(count + warmup_steps)

    elif schedule == "constant":
        lr = optax.constant_schedule(learning_rate)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'step' or 'constant'")
    if not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if warmup_steps:
        warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
        lr = optax.join_schedules([warmup, lr], [warmup_steps])
    if clip_norm is not None and not clip_norm > 0:
        raise ValueError(f"clip_norm must be > 0 or None, got {clip_norm!r}")
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []
    parts += [optax.add_decayed_weights(weight_decay)] if weight_decay else []
    if optimizer == "sgd":
        return optax.chain(*parts, optax.sgd(lr, momentum=momentum))
    if optimizer == "adam":
        return optax.chain(*parts, optax.adam(lr, b1=momentum))
    raise ValueError(f"unknown optimizer {optimizer!r}; use 'sgd' or 'adam'")


def init_state(
    model: nn.Module,
    key: jax.Array,
    input_shape: Sequence[int],
    optimizer: optax.GradientTransformation,
) -> TrainState:
    """Fresh TrainState at step 0: the model's variables for inputs of `input_shape` (without the
    batch axis) drawn from key (rsjax.models.init_variables), and the optimizer's state for them."""
    variables = models.init_variables(model, key, input_shape)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables.get("batch_stats", {}),
        opt_state=optimizer.init(params),
    )


def make_train_step(
    loss_fn: losses.LossFn, optimizer: optax.GradientTransformation, *, microbatches: int = 1
) -> TrainStepFn:
    """Jitted step(state, batch, train_key) -> (state, metrics); noise key = fold_in(train_key, step).

    loss_fn(params, model_state, batch, key) -> (loss, (model_state, metrics)); a loss_fn with a
    `step` keyword (the adversarial losses' eps warm-up) also gets the current step.

    microbatches: m > 1 splits the B examples into m interleaved groups (group g holds examples
    g, g + m, ...; each device keeps its own rows when its share of B is divisible by m), takes the
    gradient of each group in turn with the noise key fold_in(key, g), and averages them. For a loss
    that is a mean over examples (every loss in rsjax.losses: the k noisy copies of an example stay
    together) this is the gradient of the same loss, on differently drawn noise. It bounds the batch
    of one backward pass to B * k / m inputs, which XLA:CPU runs faster per input than one large
    batch (benchmarks/README.md, "Training against PyTorch"). Models with batch norm are refused:
    their statistics would be those of a group, not of the batch.
    """
    if not isinstance(microbatches, int) or microbatches < 1:
        raise ValueError(f"microbatches must be an int >= 1, got {microbatches!r}")
    wants_step = "step" in inspect.signature(loss_fn).parameters
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state: TrainState, batch, train_key):
        key = jax.random.fold_in(train_key, state.step)
        extra = {"step": state.step} if wants_step else {}
        if microbatches == 1:
            (loss, (model_state, metrics)), grads = grad_fn(
                state.params, state.model_state, batch, key, **extra
            )
        else:
            loss, model_state, metrics, grads = _microbatched(
                grad_fn, state, batch, key, microbatches, extra
            )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return TrainState(state.step + 1, params, model_state, opt_state), metrics

    return jax.jit(step, donate_argnums=0)


def _microbatched(grad_fn, state, batch, key, m, extra):
    """(loss, model_state, metrics, grads) averaged over m interleaved groups of the batch."""
    if jax.tree.leaves(state.model_state):
        raise ValueError(
            "microbatches > 1 would compute batch-norm statistics per group; use microbatches=1 "
            "for models with batch norm"
        )
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % m:
        raise ValueError(f"microbatches={m} must divide the batch size {size}")
    results = []
    for g in range(m):
        group = jax.tree.map(lambda a, g=g: a.reshape(size // m, m, *a.shape[1:])[:, g], batch)
        (loss, (_, metrics)), grads = grad_fn(
            state.params, state.model_state, group, jax.random.fold_in(key, g), **extra
        )
        results.append((loss, metrics, grads))
    loss, metrics, grads = jax.tree.map(lambda *xs: sum(xs) / m, *results)
    return loss, state.model_state, metrics, grads


def epoch_order(data_key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
    """The example order of one epoch, a permutation drawn from fold_in(data_key, epoch)."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(data_key, epoch), num_examples))


class DifferentRunError(ValueError):
    """The workdir holds checkpoints of a run with other settings; nothing was written."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient became NaN or infinite; the run stopped and kept its last good
    checkpoint."""


def fit(
    key: jax.Array,
    workdir: str | os.PathLike,
    *,
    model: nn.Module | str,
    loss: str | losses.LossFn = "gaussian",
    images: np.ndarray,
    labels: np.ndarray | None = None,
    epochs: int,
    batch_size: int,
    sigma: float | None = None,
    k: int | None = None,
    loss_options: dict | None = None,
    num_classes: int | None = None,
    dataset: str | None = None,
    optimizer: str | optax.GradientTransformation = "sgd",
    learning_rate: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    decay_every_epochs: int = 0,
    lr_warmup_epochs: float = 0,
    clip_norm: float | None = None,
    trainable: Any = None,
    init_fn: Callable[[jax.Array, tuple], dict] | None = None,
    eval_fn: Callable[[jax.Array, TrainState], dict | None] | None = None,
    meta: dict | None = None,
    name: str | None = None,
    microbatches: int = 1,
    checkpoint_every: int = 0,
    max_to_keep: int = 3,
    stop_after_step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    log_every: int = 50,
    show_progress: bool = True,
    eval_images: np.ndarray | None = None,
    eval_labels: np.ndarray | None = None,
    eval_noise: int = 32,
    eval_max: int = 500,
    fail_on_collapse: bool = False,
    on_start: Callable[[], None] | None = None,
) -> TrainState:
    """Trains a Flax linen module on `images` with `loss`; resumes from `workdir`.

    The one trainer: classifiers, rsjax.empirical_bayes's denoisers and XHAT classifiers are this
    function given their model, loss, initialisation, evaluation and meta.

    Args:
      key: the run's root key, split once into (init, data, train) streams; the held-out
        evaluation's noise comes from fold_in(key, 0x5EED), outside the split.
      workdir: run directory; checkpoints go to workdir/checkpoints and per-step metrics to
        workdir/metrics.jsonl. If it already holds a checkpoint, training resumes from the newest.
      model: any Flax linen module mapping (B, *input_shape) to (B, K) logits, or the name of a
        registered model of rsjax.models (built with num_classes and dataset). A module whose
        __call__ takes `train` is called with train=True in training (batch norm then uses and
        updates the batch's statistics) and train=False in evaluation; one without it is called
        without it and must have no batch statistics (ValueError).
      loss: a loss of rsjax.losses.LOSSES by name, with sigma, its number k of noisy copies per
        example (default 1) and its other keyword options loss_options (e.g. {"lam": 0.5} for
        ADRE), all checked up front; or any pure loss_fn(params, model_state, batch, key) ->
        (loss, (model_state, metrics)) of the same contract (a `step` keyword gets the step), which
        carries its own options.
      images, labels: (N, *input_shape) float32 (images NHWC in [0, 1]) and (N,) int; batches are
        {"image", "label"}, or {"image"} when labels is None.
      epochs, batch_size: full passes and global batch size (the last partial batch is dropped).
      sigma: the noise level of a named loss and of the held-out votes, in [0, 1] pixel units.
      num_classes: of a registered model; read from a module's output (jax.eval_shape) when not
        given.
      dataset: a dataset name: a registered model normalises with its statistics (None: no
        normalisation); recorded in the meta.
      optimizer, learning_rate, momentum, weight_decay, schedule, decay_every_epochs,
        lr_warmup_epochs, clip_norm: "sgd" or "adam" with make_optimizer's schedule over the run's
        steps (lr_warmup_epochs: a linear warm-up over round(lr_warmup_epochs * steps_per_epoch)
        steps, not the adversarial losses' eps warm-up; clip_norm: clip the gradient to this
        global l2 norm, the logged grad_norm being the norm before clipping), or an
        optax.GradientTransformation used as it is (then learning_rate must be None).
        lr_warmup_epochs > 0 and clip_norm are recorded in the meta.
      trainable: a pytree prefix of the params of bools; the parts marked False get no update (not
        even weight decay; optax.set_to_zero). None: everything trains.
      init_fn: init_fn(key, input_shape) -> {"params", and "batch_stats" if any}; default
        rsjax.models.init_variables of the model.
      eval_fn: eval_fn(key, state) -> dict or None, the held-out evaluation after every epoch
        (its dict is logged to metrics.jsonl; see train_loop for `collapsed`). Default, with
        eval_images and eval_labels: `rsjax.monitor.held_out_votes` of the model at sigma, the smoothed accuracy
        (majority vote of `eval_noise` noisy copies, no abstention: a cheap estimate, not a
        certificate) of the first `eval_max` examples, with top_class and top_class_fraction.
        Its noise comes from its own key, so it does not change training.
      meta: JSON-able description of what is trained, saved with every checkpoint and compared on
        resume; default {model (the registered name, or the module's class name with
        user_model: true), dataset, num_classes, sigma, loss (its name), k, loss_options (for a
        named loss)}. fit adds input_shape, epochs, batch_size, total_steps and the optional keys.
      name: the progress line's name (default "train MODEL").
      microbatches: see make_train_step (recorded in the meta when != 1).
      checkpoint_every: steps between checkpoints (0: only at the end).
      stop_after_step: stop (with a checkpoint) after this many steps in total, for interruption
        tests and smoke runs; the result then equals the state of a full run at that step.
      mesh: device mesh for data parallelism (default: all devices). batch_size must be divisible by
        its size.
      fail_on_collapse: after an epoch whose held-out evaluation shows collapse
        (rsjax.monitor.collapse_reason: more than 90% of the noisy-copy predictions on one class,
        or, once the learning-rate warm-up is over, smoothed accuracy within 2 points of chance
        1/num_classes), save that epoch's checkpoint and raise rsjax.monitor.CollapseError.
        Without it, an rsjax.monitor.CollapseWarning is emitted and training goes on. Either way
        the epoch's metrics record gets `collapsed` and `collapse_reason`.
      on_start: called once the workdir is locked and its checks have passed, before anything is
        written (train_loop's on_start: where a script records the run's config).
    Returns:
      The final TrainState (device arrays).
    Raises:
      ValueError: bad options (checked before anything is written).
      rsjax.locks.OutputLockedError, DifferentRunError (a different run in workdir),
        rsjax.checkpoint.CorruptedCheckpointError: see train_loop; nothing is written.
      NonFiniteLossError: a non-finite loss, loss term or gradient norm (the message names the
        first such step and its terms); the last good checkpoint is kept, nothing later is saved.
      rsjax.monitor.CollapseError: see fail_on_collapse.
    """
    mesh = sharding.batch_mesh() if mesh is None else mesh
    steps_per_epoch = _steps_per_epoch(images.shape[0], batch_size, mesh)
    total_steps = epochs * steps_per_epoch
    if lr_warmup_epochs < 0:
        raise ValueError(f"lr_warmup_epochs must be >= 0, got {lr_warmup_epochs!r}")
    registered = isinstance(model, str)
    model_name = model if registered else type(model).__name__
    if registered:
        if num_classes is None:
            raise ValueError(f"the registered model {model!r} needs num_classes")
        model = models.make_model(model_name, num_classes=num_classes, dataset=dataset)
    if isinstance(optimizer, str):
        if learning_rate is None:
            raise ValueError(f"optimizer {optimizer!r} needs a learning_rate")
        optimizer = make_optimizer(
            learning_rate=learning_rate,
            total_steps=total_steps,
            momentum=momentum,
            weight_decay=weight_decay,
            schedule=schedule,
            decay_every=decay_every_epochs * steps_per_epoch,
            optimizer=optimizer,
            warmup_steps=round(lr_warmup_epochs * steps_per_epoch),
            clip_norm=clip_norm,
        )
    elif learning_rate is not None:
        raise ValueError("learning_rate is for optimizer 'sgd' or 'adam', not a transformation")
    if trainable is not None:  # the parts marked False get zero updates
        labels_tree = jax.tree.map(lambda t: "train" if t else "frozen", trainable)
        optimizer = optax.multi_transform(
            {"train": optimizer, "frozen": optax.set_to_zero()}, labels_tree
        )
    init_key, data_key, train_key = jax.random.split(key, 3)
    eval_key = jax.random.fold_in(key, 0x5EED)  # outside the split: adding eval changes nothing
    if init_fn is None:
        variables = models.init_variables(model, init_key, images.shape[1:])
        models.check_batch_norm(model, variables)
    else:
        variables = init_fn(init_key, images.shape[1:])
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        model_state=variables.get("batch_stats", {}),
        opt_state=optimizer.init(variables["params"]),
    )
    if callable(loss):
        if k is not None or loss_options:
            raise ValueError(
                "k and loss_options are options of a named loss; a loss_fn has its own"
            )
        loss_fn = loss
    elif sigma is None:
        raise ValueError(f"loss {loss!r} needs sigma")
    else:
        loss_fn = losses.make_loss(
            loss, model, sigma=sigma, k=1 if k is None else k, **(loss_options or {})
        )
    votes = eval_fn is None and eval_images is not None
    if not registered and (meta is None or votes):
        num_classes = _num_classes(model, variables, images.shape[1:], num_classes)
    if votes:
        if sigma is None or eval_labels is None:
            raise ValueError("the held-out votes (eval_images) need sigma and eval_labels")
        logits_fn = models.make_logits_fn(model)

        def vote_eval(key, state):
            return monitor.held_out_votes(
                key,
                logits_fn,
                _variables(state),
                eval_images,
                eval_labels,
                sigma=sigma,
                num_classes=num_classes,
                num_noise=eval_noise,
                max_examples=eval_max,
                mesh=mesh,
                after_warmup=int(sharding.gather(state.step)) // steps_per_epoch
                >= lr_warmup_epochs,
            )

        eval_fn = vote_eval
    if meta is None:
        meta = {"model": model_name, "dataset": dataset, "num_classes": num_classes}
        meta.update(sigma=sigma, loss=loss if isinstance(loss, str) else _function_name(loss))
        if isinstance(loss, str):
            meta.update(k=1 if k is None else k, loss_options=dict(loss_options or {}))
        if not registered:  # load_for_eval needs the module to rebuild it
            meta["user_model"] = True
    meta = dict(meta, input_shape=list(images.shape[1:]), epochs=epochs, batch_size=batch_size)
    meta["total_steps"] = total_steps
    if microbatches != 1:  # recorded only when used, so that earlier runs still resume
        meta["microbatches"] = microbatches
    if lr_warmup_epochs:
        meta["lr_warmup_epochs"] = lr_warmup_epochs
    if clip_norm is not None:
        meta["clip_norm"] = clip_norm

    def evaluate(state):  # always passed: train_loop checks the metrics at every epoch's end
        return None if eval_fn is None else eval_fn(eval_key, state)

    return train_loop(
        workdir,
        state=state,
        train_step=make_train_step(loss_fn, optimizer, microbatches=microbatches),
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
        name=name or f"train {model_name}",
        eval_fn=evaluate,
        fail_on_collapse=fail_on_collapse,
        on_start=on_start,
    )


def _num_classes(model, variables, input_shape, num_classes: int | None) -> int:
    outputs = models.num_outputs(model, variables, input_shape)
    if num_classes is not None and num_classes != outputs:
        raise ValueError(f"num_classes is {num_classes} but {type(model).__name__} has {outputs}")
    return outputs


def _function_name(fn) -> str:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__name__", type(fn).__name__)


def _steps_per_epoch(num_examples: int, batch_size: int, mesh) -> int:
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the {mesh.size} devices")
    if num_examples // batch_size < 1:
        raise ValueError(f"batch_size {batch_size} exceeds the {num_examples} training examples")
    return num_examples // batch_size


def train_loop(
    workdir: str | os.PathLike,
    *,
    state: TrainState,
    train_step: TrainStepFn,
    meta: dict,
    images: np.ndarray,
    labels: np.ndarray | None,
    data_key: jax.Array,
    train_key: jax.Array,
    epochs: int,
    batch_size: int,
    checkpoint_every: int = 0,
    max_to_keep: int = 3,
    stop_after_step: int | None = None,
    mesh: jax.sharding.Mesh | None = None,
    log_every: int = 50,
    show_progress: bool = True,
    name: str = "train",
    eval_fn: Callable[[TrainState], dict | None] | None = None,
    fail_on_collapse: bool = False,
    on_start: Callable[[], None] | None = None,
) -> TrainState:
    """The resumable training loop shared by every kind of model rsjax trains (classifiers,
    denoisers, classifiers on a denoiser): batches, checkpoints, metrics, progress, resume.

    Args:
      workdir: checkpoints go to workdir/checkpoints, metrics to workdir/metrics.jsonl. The primary
        process holds workdir's lock (rsjax.locks.exclusive, the file workdir/.rsjax.lock) for the
        whole run: one writer per workdir. A checkpoint there is resumed from, after checking that
        its meta equals `meta`: the newest intact one (rsjax.checkpoint digests); newer corrupted
        steps are set aside as `N.corrupted` with a rsjax.checkpoint.CorruptedCheckpointWarning.
        metrics.jsonl then keeps only its records up to the resumed step (none on a fresh start),
        so no step is logged twice; every checkpoint's step ends a record, so a resumed run's
        records are those of an uninterrupted one (but for images_per_s).
      state: the freshly initialised TrainState (its structure is what is restored).
      train_step: jitted step(state, batch, train_key) -> (state, metrics) (`make_train_step`).
      meta: JSON-able description of the run, saved with every checkpoint.
      images, labels: the training set; batch = {"image", "label"} ({"image"} when labels is None).
      data_key: epoch e's order is a permutation drawn from fold_in(data_key, e).
      mesh: the one-axis device mesh the batches are sharded over and the state replicated on
        (default: rsjax.sharding.batch_mesh(), all devices); batch_size must be divisible by its size.
      eval_fn: called after every full epoch with the state; the dict it returns (None: nothing)
        is logged to metrics.jsonl with the step and epoch and shown on the progress line. If it
        holds `collapsed: True`, its `collapse_reason` is shown and a rsjax.monitor.CollapseWarning
        emitted, or, with fail_on_collapse, the epoch's checkpoint is saved and
        rsjax.monitor.CollapseError raised.
      on_start: called once, on the primary process, after the lock is taken and the workdir's
        checks have passed and before training writes anything: a script writes its record of the
        run (config.json) here, so that a refused run changes no file.
    Returns:
      The final TrainState.
    Raises:
      rsjax.locks.OutputLockedError: another process is training in workdir (raised at once,
        naming the lock's path and the holder's process id; nothing is written).
      DifferentRunError: workdir holds a different run (its meta differs from `meta`; nothing is
        written).
      rsjax.checkpoint.CorruptedCheckpointError: steps are saved but none is intact.
      rsjax.preemption.TrainingInterrupted: SIGTERM or SIGINT arrived; the step in progress was
        finished, the metrics since the last log line logged and the step's checkpoint saved.
      NonFiniteLossError: a non-finite metric (loss, loss term, grad_norm) of any step, found when
        the metrics are logged (every log_every steps) and always before a checkpoint or an
        evaluation, or non-finite parameters at a checkpoint; nothing after the last good
        checkpoint is saved.
    """
    workdir = pathlib.Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    mesh = sharding.batch_mesh() if mesh is None else mesh
    num_examples = images.shape[0]
    steps_per_epoch = _steps_per_epoch(num_examples, batch_size, mesh)
    total_steps = epochs * steps_per_epoch
    workdir.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(workdir) if sharding.is_primary() else contextlib.nullcontext():
        state = _resume(workdir, state, meta)
        if sharding.is_primary():
            _drop_metrics_after(workdir / "metrics.jsonl", int(state.step))
            if on_start is not None:
                on_start()
        state, train_key = sharding.replicate(mesh, (state, train_key))
        step = int(sharding.gather(state.step))
        last = total_steps if stop_after_step is None else min(total_steps, stop_after_step)
        bar = (
            progress.Progress(last, name, unit="step", done=step)
            if show_progress and sharding.is_primary()
            else None
        )
        window = []
        t0, seen = time.perf_counter(), 0
        with (
            _primary_open(workdir / "metrics.jsonl") as metrics_file,
            preemption.stop_requests() as stop,
        ):

            def stop_here():  # a signal asked to stop: log the unlogged steps, save this one, raise
                if window:
                    _log(metrics_file, window, step, epoch, seen / (time.perf_counter() - t0))
                if checkpoint.latest_step(ckpt_dir) != step:
                    _save(ckpt_dir, state, meta, max_to_keep)
                raise preemption.TrainingInterrupted(
                    stop[0],
                    f"{signal.Signals(stop[0]).name} received: stopped after step {step} and "
                    f"saved its checkpoint in {ckpt_dir}; rerun the same command to resume",
                )

            while step < last:
                epoch, position = divmod(step, steps_per_epoch)
                order = epoch_order(data_key, epoch, num_examples)
                while position < steps_per_epoch and step < last:
                    rows = order[position * batch_size : (position + 1) * batch_size]
                    if labels is None:
                        (image,) = sharding.shard_batch(mesh, images[rows])
                        batch = {"image": image}
                    else:
                        batch = dict(
                            zip(
                                ("image", "label"),
                                sharding.shard_batch(
                                    mesh, images[rows], labels[rows].astype(np.int32)
                                ),
                                strict=True,
                            )
                        )
                    state, metrics = train_step(state, batch, train_key)
                    step, position, seen = step + 1, position + 1, seen + batch_size
                    window.append(metrics)
                    saving = checkpoint_every and step % checkpoint_every == 0 and step < last
                    # A checkpoint's step ends a record, so that a run resumed there logs the
                    # records of an uninterrupted run. _log raises on a NaN: no state that followed
                    # one is saved.
                    if step % log_every == 0 or step == last or saving:
                        record = _log(
                            metrics_file, window, step, epoch, seen / (time.perf_counter() - t0)
                        )
                        window = []
                        if bar:
                            bar.update(0, extra=_loss_terms(record))
                    if saving:
                        _save(ckpt_dir, state, meta, max_to_keep)
                    if bar:
                        bar.update(1)
                    if stop and position < steps_per_epoch:  # an epoch's end: after its evaluation
                        stop_here()
                evaluation = None
                if eval_fn and position == steps_per_epoch:
                    # NaN parameters would vote for class 0: no collapse
                    _check_finite(window, step)
                    evaluation = eval_fn(state)
                if evaluation:
                    record = {"step": step, "epoch": epoch + 1, **evaluation}
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(record) + "\n")
                        metrics_file.flush()
                    if bar:
                        shown = " ".join(
                            f"{k} {v:.4g}" for k, v in evaluation.items() if isinstance(v, float)
                        )
                        if evaluation.get("collapsed"):
                            shown += f" COLLAPSED: {evaluation.get('collapse_reason')}"
                        bar.update(0, extra=f"epoch {epoch + 1} held-out {shown}")
                    if evaluation.get("collapsed"):
                        if fail_on_collapse and window:  # the checkpoint's step ends a record
                            _log(
                                metrics_file, window, step, epoch, seen / (time.perf_counter() - t0)
                            )
                            window = []
                        _collapsed(ckpt_dir, state, meta, max_to_keep, record, fail_on_collapse)
                if stop and step < last:
                    stop_here()
        if checkpoint.latest_step(ckpt_dir) != step:
            _save(ckpt_dir, state, meta, max_to_keep)
        return state


def _resume(workdir: pathlib.Path, state: TrainState, meta: dict) -> TrainState:
    """The state of the newest intact checkpoint of workdir (`state` when none is saved), after
    checking that the run's meta equals `meta`; the newer corrupted steps are set aside (by the
    primary process, once every process has read the checkpoints) with a warning each."""
    ckpt_dir = workdir / "checkpoints"

    def check_meta(saved_meta):
        # Keys written only when not at their default (earlier runs lack them) compare as the
        # default.
        defaults = {"microbatches": 1, "lr_warmup_epochs": 0, "clip_norm": None}
        saved, wanted = {**defaults, **saved_meta}, {**defaults, **meta}
        mismatched = {k: (saved.get(k), v) for k, v in wanted.items() if saved.get(k) != v}
        if mismatched:
            raise DifferentRunError(
                f"{workdir} holds a different run (saved vs requested: {mismatched}); "
                "use a fresh workdir"
            )

    restored = checkpoint.restore_newest_intact(
        ckpt_dir,
        model_like=_model_item(state),
        train_like=_train_item(state),
        check_meta=check_meta,
    )
    if restored is None:
        return state
    if restored.skipped:
        _sync_processes("rsjax.train: checkpoints read")
        if sharding.is_primary():
            for step, problem in sorted(restored.skipped.items()):
                moved = checkpoint.set_aside(ckpt_dir, step)
                warnings.warn(
                    f"checkpoint {ckpt_dir} step {step} {problem}; resuming from step "
                    f"{restored.step}, the newest intact step (the corrupted one is set aside as "
                    f"{moved})",
                    checkpoint.CorruptedCheckpointWarning,
                    stacklevel=3,
                )
        _sync_processes("rsjax.train: corrupted steps set aside")
    return TrainState(
        restored.train["step"],
        restored.model["params"],
        restored.model["batch_stats"],
        restored.train["opt_state"],
    )


def _sync_processes(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _drop_metrics_after(path: pathlib.Path, step: int):
    """Truncates metrics.jsonl after its last record of a step <= `step` (the one training resumes
    from), so that the steps a killed run logged past its checkpoint are not logged twice. The kept
    records stay in place (a truncation at a byte offset); a torn last line is dropped too."""
    if not path.exists():
        return
    keep = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                break
            if not line.endswith(b"\n") or record.get("step", 0) > step:
                break
            keep += len(line)
    if keep < path.stat().st_size:
        os.truncate(path, keep)


def _collapsed(ckpt_dir, state, meta, max_to_keep, record, fail):
    """Warns of (or, with fail, saves the epoch's checkpoint and raises CollapseError for) the
    collapse that the held-out evaluation `record` reports."""
    message = (
        f"epoch {record['epoch']} (step {record['step']}): the classifier looks collapsed: "
        f"{record.get('collapse_reason')}"
    )
    if "top_class" in record and "held-out noisy-copy" not in message:  # the chance reason alone
        message += (
            f" [most common predicted class {record['top_class']}, "
            f"{record['top_class_fraction']:.1%} of the held-out noisy-copy predictions]"
        )
    message += ". Lower the learning rate, lengthen lr_warmup_epochs or set clip_norm."
    if fail:
        if checkpoint.latest_step(ckpt_dir) != record["step"]:
            _save(ckpt_dir, state, meta, max_to_keep)
        raise monitor.CollapseError(f"{message} Checkpoint of step {record['step']} saved.")
    warnings.warn(message, monitor.CollapseWarning, stacklevel=3)


@contextlib.contextmanager
def _primary_open(path):
    """The metrics file on process 0; None on the others (one writer per file)."""
    if not sharding.is_primary():
        yield None
        return
    with open(path, "a") as f:
        yield f


def _log(metrics_file, window, step, epoch, images_per_s):
    """Writes the mean of the window's metrics (steps step - len(window) + 1 ... step)."""
    window = _check_finite(window, step)
    record = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
    record.update(step=step, epoch=epoch, images_per_s=images_per_s)
    if metrics_file is not None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
    return record


def _check_finite(window, step):
    """The window's metrics on the host; NonFiniteLossError naming the first step (of
    step - len(window) + 1 ... step) with a non-finite loss, loss term or gradient norm."""
    window = sharding.gather(window)
    for offset, metrics in enumerate(window):
        values = {k: float(np.asarray(v)) for k, v in metrics.items()}
        bad = sorted(k for k, v in values.items() if not math.isfinite(v))
        if bad:
            bad_step = step - len(window) + offset + 1
            terms = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite training metrics {bad} at step {bad_step} ({terms}); stopped "
                "without saving: the last good checkpoint is kept. Lower the learning rate, add "
                "lr_warmup_epochs or clip_norm, or check the data."
            )
    return window


def _variables(state: TrainState) -> dict:
    variables = {"params": state.params}
    if state.model_state:
        variables["batch_stats"] = state.model_state
    return variables


def _loss_terms(record: dict) -> str:
    """'loss 0.41 ce 0.38 reg -2.1 ... | 2300 img/s': the running loss and its terms."""
    skip = {"step", "epoch", "images_per_s", "grad_norm"}
    terms = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in skip)
    return f"{terms} | {record['images_per_s']:.0f} img/s"


def _model_item(state: TrainState):
    return {"params": state.params, "batch_stats": state.model_state}


def _train_item(state: TrainState):
    return {"step": state.step, "opt_state": state.opt_state}


def _save(ckpt_dir, state, meta, max_to_keep):
    state = sharding.gather(state)
    if not all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(state.params)):
        raise NonFiniteLossError(
            f"non-finite parameters after step {int(state.step)} (the update of a finite loss "
            "overflowed); stopped without saving: the last good checkpoint is kept. Lower the "
            "learning rate, add lr_warmup_epochs or clip_norm."
        )
    checkpoint.save(
        ckpt_dir,
        int(state.step),
        model=_model_item(state),
        train=_train_item(state),
        meta=meta,
        max_to_keep=max_to_keep,
    )


CERTIFY_OLDER = "pass --step {step} to certify an older one"


def checkpoint_dir(path: str | os.PathLike) -> pathlib.Path:
    """The checkpoints directory of a training workdir (path/checkpoints), or path itself when it
    is one."""
    path = pathlib.Path(path)
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def load_for_eval(
    path: str | os.PathLike, step: int | None = None, *, model: nn.Module | None = None
) -> tuple[nn.Module, dict, dict, int]:
    """(model, variables, meta, step) of a training checkpoint of `fit`, for certification.

    path: a training workdir (holding checkpoints/) or its checkpoints directory. step: the
    newest when None. model: the Flax module the run trained; needed when it was a module of
    your own (meta user_model), which the checkpoint cannot rebuild. By default the registered
    model is rebuilt from the meta's model, num_classes and dataset.

    Raises rsjax.checkpoint.CheckpointError when the module is needed and not given, and
    rsjax.checkpoint.CorruptedCheckpointError when the step fails its digest check (a corrupted
    file would otherwise be certified as the trained model), naming the intact steps and the
    `--step` that certifies the newest of them.
    """
    ckpt_dir = checkpoint_dir(path)
    step, meta = checkpoint.restore_meta(ckpt_dir, step, hint=CERTIFY_OLDER)
    needed = ("model", "input_shape") + (() if model else ("num_classes", "dataset"))
    for field in needed:
        if field not in meta:
            raise checkpoint.CheckpointError(f"checkpoint {ckpt_dir} metadata lacks {field!r}")
    if model is None:
        if meta.get("user_model"):
            raise checkpoint.CheckpointError(
                f"checkpoint {ckpt_dir} holds a {meta['model']}, a module of your own: pass the "
                "module it trained, load_for_eval(..., model=...), to restore its variables"
            )
        model = models.make_model(
            meta["model"], num_classes=meta["num_classes"], dataset=meta["dataset"]
        )
    like = models.init_variables(model, jax.random.key(0), meta["input_shape"])
    like = {"params": like["params"], "batch_stats": like.get("batch_stats", {})}
    step, variables, _ = checkpoint.restore(ckpt_dir, step, model_like=like, hint=CERTIFY_OLDER)
    if not variables["batch_stats"]:
        variables = {"params": variables["params"]}
    return model, variables, meta, step
