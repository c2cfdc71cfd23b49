"""Throughput of the empirical-Bayes classifier f(xhat(y)) and of denoiser training, against LeNet.

  python benchmarks/eb_throughput.py [--score-models energy_mnist_mlp energy_mnist score_mnist] [--n 2000]
      [--examples 8] [--batch 64] [--steps 5] [--repeats 5] [--quick]

certify: rsjax.votes.count_votes (stream ESTIMATION, sigma 0.5, the same --examples MNIST-shaped
random images with idx 0..examples-1, --n noise samples each) with the plain LeNet logits_fn
(params: its variables) and with the EB logits_fn of rsjax.empirical_bayes.make_eb_logits_fn
(params {"classifier", "score"}) for each score model. samples/s = examples * n / t; the ratio EB / plain
is what one score evaluation per noise sample costs.

train: the jitted step of rsjax.train.make_train_step for rsjax.tweedie.denoising_loss (Adam) of each
score model, and for comparison the LeNet Gaussian-augmentation step (SGD with momentum, as in
benchmarks/train_throughput.py), on one fixed batch of B images. images/s = B / t, ratio = LeNet's t
over this t.

Every configuration is compiled and run once; then the configurations of a part alternate for
--repeats rounds and the median is reported. Random-init weights (speed does not depend on them).
Rows are printed as markdown tables and appended as JSON lines to --out (default
benchmarks/results/eb_throughput.jsonl; with --quick, nowhere unless --out is given).
"""

import argparse
import functools
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import empirical_bayes, losses, models, records, score, train, tweedie, votes

SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SIGMA = 0.5
DEFAULT_OUT = "benchmarks/results/eb_throughput.jsonl"


def time_alternating(runs: dict, repeats: int) -> tuple[dict, dict]:
    """Calls each run() once (compile), then all of them in turn for `repeats` rounds.

    Returns ({name: seconds of the first call}, {name: [seconds of each round]}).
    """
    first, rounds = {}, {name: [] for name in runs}
    for name, run in runs.items():
        t0 = time.perf_counter()
        run()
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            rounds[name].append(time.perf_counter() - t0)
    return first, rounds


def classifier():
    """LeNet for MNIST and its random-init variables."""
    model = models.make_model("lenet", num_classes=NUM_CLASSES, dataset="mnist")
    return model, models.init_variables(model, jax.random.key(0), SHAPE)


def score_model(name):
    """(score_fn, random-init parameters) of a score model of rsjax.score."""
    model = score.make_score_model(name)
    return score.make_score_fn(model), score.init_params(model, jax.random.key(3), SHAPE)


def measure_certify(score_models, *, examples, n, chunk, repeats):
    """Rows of count_votes samples/s: the plain LeNet, then LeNet on xhat of each score model."""
    model, variables = classifier()
    plain_logits_fn = models.make_logits_fn(model)
    configs = {None: (plain_logits_fn, variables)}
    for name in score_models:
        score_fn, score_params = score_model(name)
        eb_logits_fn = empirical_bayes.make_eb_logits_fn(plain_logits_fn, score_fn, sigma=SIGMA)
        configs[name] = (eb_logits_fn, {"classifier": variables, "score": score_params})
    key = jax.random.key(1)
    x = np.asarray(jax.random.uniform(key, (examples, *SHAPE)))
    idx = np.arange(examples)

    def run(logits_fn, params):
        votes.count_votes(
            key,
            logits_fn,
            params,
            x,
            idx,
            sigma=SIGMA,
            num_classes=NUM_CLASSES,
            num_samples=n,
            chunk_size=chunk,
            stream=votes.ESTIMATION,
        )

    runs = {name: functools.partial(run, *c) for name, c in configs.items()}
    first, rounds = time_alternating(runs, repeats)
    plain = statistics.median(rounds[None])
    return [
        {
            "benchmark": "eb_throughput",
            "part": "certify",
            "classifier": "lenet",
            "score_model": name,
            "examples": examples,
            "n": n,
            "chunk": chunk,
            "sigma": SIGMA,
            "repeats": repeats,
            "call_s": statistics.median(rounds[name]),
            "call_s_repeats": rounds[name],
            "first_call_s": first[name],
            "samples_per_s": examples * n / statistics.median(rounds[name]),
            "ratio": plain / statistics.median(rounds[name]),
        }
        for name in configs
    ]


def make_step_run(loss_fn, optimizer, params, model_state, data, steps):
    """run(): `steps` train steps on the fixed batch `data`, then block_until_ready."""
    step = train.make_train_step(loss_fn, optimizer)
    state = train.TrainState(jnp.zeros((), jnp.int32), params, model_state, optimizer.init(params))
    train_key = jax.random.key(2)

    def run():
        nonlocal state
        for _ in range(steps):
            state, _ = step(state, data, train_key)
        jax.block_until_ready(state)

    return run


def measure_train(score_models, *, batch, steps, repeats):
    """Rows of train-step images/s: LeNet Gaussian augmentation, then denoising of each score model."""
    image_key, label_key = jax.random.split(jax.random.key(1))
    data = jax.device_put(
        {
            "image": jax.random.uniform(image_key, (batch, *SHAPE)),
            "label": jax.random.randint(label_key, (batch,), 0, NUM_CLASSES),
        }
    )
    model, variables = classifier()
    sgd = train.make_optimizer(learning_rate=0.01, total_steps=1_000, momentum=0.9)
    gaussian = losses.make_loss("gaussian", model, sigma=SIGMA, k=1)
    runs = {
        "lenet": make_step_run(
            gaussian, sgd, variables["params"], variables.get("batch_stats", {}), data, steps
        )
    }
    adam = train.make_optimizer(learning_rate=1e-3, total_steps=1_000, optimizer="adam")
    for name in score_models:
        score_fn, score_params = score_model(name)
        loss_fn = functools.partial(tweedie.denoising_loss, score_fn=score_fn, sigma=SIGMA)
        runs[name] = make_step_run(loss_fn, adam, score_params, {}, {"image": data["image"]}, steps)
    first, rounds = time_alternating(runs, repeats)
    step_s = {name: [t / steps for t in ts] for name, ts in rounds.items()}
    lenet = statistics.median(step_s["lenet"])
    return [
        {
            "benchmark": "eb_throughput",
            "part": "train",
            "model": name,
            "loss": "gaussian" if name == "lenet" else "denoising",
            "optimizer": "sgd" if name == "lenet" else "adam",
            "sigma": SIGMA,
            "batch": batch,
            "steps": steps,
            "repeats": repeats,
            "step_s": statistics.median(step_s[name]),
            "step_s_repeats": step_s[name],
            "first_round_s": first[name],
            "images_per_s": batch / statistics.median(step_s[name]),
            "ratio": lenet / statistics.median(step_s[name]),
        }
        for name in runs
    ]


def parse_args(argv):
    """The flags, with --quick's sizes applied and args.out resolved ("" for no file)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--score-models",
        nargs="+",
        default=["energy_mnist_mlp", "energy_mnist", "score_mnist"],
        choices=[name for name in score.SCORE_MODELS if name.endswith("_mnist")],
    )
    p.add_argument("--examples", type=int, default=8, help="examples per count_votes call")
    p.add_argument("--n", type=int, default=2_000, help="noise samples per example")
    p.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="noise samples per example per step (default: rsjax's platform default)",
    )
    p.add_argument("--batch", type=int, default=64, help="images per train step")
    p.add_argument("--steps", type=int, default=5, help="timed train steps per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None, help=f"JSON lines (default {DEFAULT_OUT}; --quick: none)")
    args = p.parse_args(argv)
    args.chunk = votes.default_chunk_size() if args.chunk is None else args.chunk
    if args.quick:
        args.examples, args.n, args.chunk, args.batch, args.steps, args.repeats = 2, 64, 32, 4, 1, 1
    if args.out is None:
        args.out = "" if args.quick else DEFAULT_OUT
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    command = shlex.join(["python", "benchmarks/eb_throughput.py", *argv])
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    start = time.perf_counter()

    print("| classifier | examples x n | chunk | samples/s | EB / plain |")
    print("|---|---|---|---|---|")
    rows = measure_certify(
        args.score_models, examples=args.examples, n=args.n, chunk=args.chunk, repeats=args.repeats
    )
    for row in rows:
        row = records.append_result(args.out, dict(row, quick=args.quick, command=command), env)
        name = "LeNet" if row["score_model"] is None else f"LeNet(xhat {row['score_model']})"
        print(
            f"| {name} | {args.examples} x {args.n} | {args.chunk} | {row['samples_per_s']:,.0f}"
            f" | {row['ratio']:.3f} |",
            flush=True,
        )

    print()
    print("| train step | B | step ms | images/s | vs LeNet |")
    print("|---|---|---|---|---|")
    rows = measure_train(
        args.score_models, batch=args.batch, steps=args.steps, repeats=args.repeats
    )
    for row in rows:
        row = records.append_result(args.out, dict(row, quick=args.quick, command=command), env)
        name = "LeNet Gaussian" if row["model"] == "lenet" else f"{row['model']} denoising"
        print(
            f"| {name} | {args.batch} | {1e3 * row['step_s']:,.1f} | {row['images_per_s']:,.0f}"
            f" | {row['ratio']:.3f} |",
            flush=True,
        )
    print(f"time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
