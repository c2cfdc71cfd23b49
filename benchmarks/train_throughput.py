"""Train-step throughput of the noise-augmented losses, and how the step scales with k.

  python benchmarks/train_throughput.py [--models lenet resnet20] [--losses gaussian adre]
      [--ks 1 2 4 8] [--batch B] [--steps 5] [--repeats 5] [--quick]

For each model, loss and k: the jitted step of rsjax.train.make_train_step (SGD with momentum,
random-init weights, one fixed batch of B examples on the default device, the loss built by name as
rsjax.train.fit builds it) is compiled and run once. Then the configurations of one model alternate
for --repeats rounds of --steps steps each (block_until_ready on the state after each round) and the
median step time t is reported: images/s = B / t (clean examples), noisy inputs/s = B * k / t, and
scaling = t(k) / (k * t(1)) for the same model and loss (1: the B * k noisy inputs cost k times the
k = 1 step; below 1: per-step costs that do not grow with k are amortised). Rows are printed as a
markdown table and appended as JSON lines to --out.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from rsjax import losses, models, records, train

SHAPES = {
    "linear": (28, 28, 1),
    "lenet": (28, 28, 1),
    "resnet20": (32, 32, 3),
    "resnet110": (32, 32, 3),
}
BATCH = {"linear": 64, "lenet": 64, "resnet20": 32, "resnet110": 32}
LOSSES = ("gaussian", "adre", "macer")  # the noise-only losses (no attack options needed)


def make_config(model_name, loss, k, *, batch, lam, sigma=0.25, num_classes=10, microbatches=1):
    """A compiled-and-run train step for one (model, loss, k): {"step", "state", "batch", "key"};
    microbatches as in rsjax.train.make_train_step."""
    model = models.make_model(model_name, num_classes=num_classes)
    shape = SHAPES[model_name]
    optimizer = train.make_optimizer(learning_rate=0.01, total_steps=1_000, momentum=0.9)
    state = train.init_state(model, jax.random.key(0), shape, optimizer)
    options = {"lam": lam} if loss == "adre" else {}
    loss_fn = losses.make_loss(loss, model, sigma=sigma, k=k, **options)
    step = train.make_train_step(loss_fn, optimizer, microbatches=microbatches)
    image_key, label_key = jax.random.split(jax.random.key(1))
    data = jax.device_put(
        {
            "image": jax.random.uniform(image_key, (batch, *shape)),
            "label": jax.random.randint(label_key, (batch,), 0, num_classes),
        }
    )
    train_key = jax.random.key(2)
    t0 = time.perf_counter()
    state, _ = step(state, data, train_key)  # compile and run once
    jax.block_until_ready(state)
    return {
        "step": step,
        "state": state,
        "batch": data,
        "key": train_key,
        "compile_s": time.perf_counter() - t0,
    }


def measure(model_name, *, losses, ks, batch, steps, repeats, lam):
    """Rows (one per loss and k) of median step time and throughput; configs alternate per round."""
    configs = {
        (loss, k): make_config(model_name, loss, k, batch=batch, lam=lam)
        for loss in losses
        for k in ks
    }
    times = {name: [] for name in configs}
    for _ in range(repeats):
        for name, c in configs.items():
            state = c["state"]
            t0 = time.perf_counter()
            for _ in range(steps):
                state, _ = c["step"](state, c["batch"], c["key"])
            jax.block_until_ready(state)
            times[name].append((time.perf_counter() - t0) / steps)
            c["state"] = state
    rows = []
    for (loss, k), c in configs.items():
        t = statistics.median(times[loss, k])
        t1 = statistics.median(times[loss, 1]) if (loss, 1) in times else None
        rows.append(
            {
                "benchmark": "train_throughput",
                "model": model_name,
                "loss": loss,
                "k": k,
                "lam": lam if loss == "adre" else None,
                "batch": batch,
                "steps": steps,
                "repeats": repeats,
                "step_s": t,
                "step_s_repeats": times[loss, k],
                "compile_s": c["compile_s"],
                "images_per_s": batch / t,
                "noisy_inputs_per_s": batch * k / t,
                "scaling": t / (k * t1) if t1 else None,
            }
        )
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet", "resnet20"], choices=sorted(SHAPES))
    p.add_argument("--losses", nargs="+", default=["gaussian", "adre"], choices=LOSSES)
    p.add_argument(
        "--ks", nargs="+", type=int, default=[1, 2, 4, 8], help="noisy copies per example"
    )
    p.add_argument("--lam", type=float, default=0.5, help="ADRE's lam")
    p.add_argument(
        "--batch", type=int, default=None, help="examples per step (default: 64 LeNet, 32 ResNet)"
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default="benchmarks/results/train_throughput.jsonl")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.ks, args.batch, args.steps, args.repeats = ["lenet"], [1, 2], 8, 2, 1
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    print("| model | loss | B | k | step ms | images/s | noisy inputs/s | t(k) / (k t(1)) |")
    print("|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for name in args.models:
        batch = args.batch or BATCH[name]
        rows = measure(
            name,
            losses=args.losses,
            ks=args.ks,
            batch=batch,
            steps=args.steps,
            repeats=args.repeats,
            lam=args.lam,
        )
        for row in rows:
            row = records.append_result(args.out, dict(row, quick=args.quick), env)
            scaling = "-" if row["scaling"] is None else f"{row['scaling']:.2f}"
            print(
                f"| {name} | {row['loss']} | {batch} | {row['k']} | {1e3 * row['step_s']:,.1f}"
                f" | {row['images_per_s']:,.0f} | {row['noisy_inputs_per_s']:,.0f} | {scaling} |",
                flush=True,
            )
    print(f"time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
