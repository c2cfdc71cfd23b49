"""SmoothAdv's T steps unrolled (rsjax.attacks) against the same steps in a lax.fori_loop.

  python benchmarks/attack_loop.py [--models lenet] [--batch 128] [--num-noise 2]
      [--steps 1 2 4 10] [--repeats 5] [--quick]

For each model and T: `loop` is the attack as rsjax wrote it before (the step body of
rsjax.attacks.smoothadv_from_noise inside jax.lax.fori_loop), `unrolled` is
rsjax.attacks.smoothadv_from_noise itself (a Python loop over the T steps, traced once each). Both run
jitted on the same random-init weights, --batch images and fixed noise (--num-noise draws each, sigma
0.5, eps 0.5); they alternate for --repeats rounds and the median times and their ratio are reported,
with the compile times and the largest difference between the two attacked points (the same math, so
float rounding only). Rows are printed as a markdown table and appended as JSON lines to --out (with
--quick, nowhere unless --out is given).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from rsjax import attacks, models, records

DEFAULT_OUT = "benchmarks/results/attack_loop.jsonl"
SHAPES = {"lenet": (28, 28, 1), "resnet20": (32, 32, 3)}
SIGMA = EPS = 0.5


def fori_loop_attack(logits_fn, params, x, y, noise, *, eps, num_steps):
    """The baseline: smoothadv_from_noise's steps in a lax.fori_loop (rsjax before this benchmark)."""
    step_size = 2 * eps / num_steps

    def total_loss(x_adv):
        return attacks.soft_smoothed_ce(logits_fn, params, x_adv, y, noise).sum()

    def step(_, x_adv):
        direction = attacks.l2_normalize(jax.grad(total_loss)(x_adv))
        return attacks.project(x_adv + step_size * direction, x, eps)

    return jax.lax.fori_loop(0, num_steps, step, x)


def _compiled(fn, *args):
    t0 = time.perf_counter()
    jitted = jax.jit(fn)
    jax.block_until_ready(jitted(*args))
    return jitted, time.perf_counter() - t0


def measure(model_name, *, batch, num_noise, num_steps, repeats):
    model = models.make_model(model_name, num_classes=10)
    shape = SHAPES[model_name]
    variables = models.init_variables(model, jax.random.key(0), shape)
    logits_fn = models.make_logits_fn(model)
    image_key, label_key, noise_key = jax.random.split(jax.random.key(1), 3)
    x = jax.random.uniform(image_key, (batch, *shape))
    y = jax.random.randint(label_key, (batch,), 0, 10)
    noise = attacks.attack_noise(noise_key, x, sigma=SIGMA, num_noise=num_noise)
    args = (variables, x, y, noise)
    forms = {
        "loop": lambda p, x, y, n: fori_loop_attack(
            logits_fn, p, x, y, n, eps=EPS, num_steps=num_steps
        ),
        "unrolled": lambda p, x, y, n: attacks.smoothadv_from_noise(
            logits_fn, p, x, y, n, eps=EPS, num_steps=num_steps
        ),
    }
    compiled = {name: _compiled(fn, *args) for name, fn in forms.items()}
    times = {name: [] for name in forms}
    for _ in range(repeats):
        for name, (fn, _) in compiled.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name].append(time.perf_counter() - t0)
    loop_s, unrolled_s = (statistics.median(times[name]) for name in forms)
    outputs = [fn(*args) for fn, _ in compiled.values()]
    return {
        "benchmark": "attack_loop",
        "model": model_name,
        "batch": batch,
        "num_noise": num_noise,
        "num_steps": num_steps,
        "repeats": repeats,
        "loop_s": loop_s,
        "unrolled_s": unrolled_s,
        "speedup": loop_s / unrolled_s,
        "loop_compile_s": compiled["loop"][1],
        "unrolled_compile_s": compiled["unrolled"][1],
        "max_abs_difference": float(jnp.max(jnp.abs(outputs[0] - outputs[1]))),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["lenet"], choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=128, help="images per attack")
    p.add_argument("--num-noise", type=int, default=2, help="m, noise draws per image")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 4, 10], help="T values")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None, help=f"JSON lines file (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.repeats = 4, [1, 2], 1
    out = args.out if args.out is not None else ("" if args.quick else DEFAULT_OUT)
    env = records.environment()
    print(f"device: {env['device_kind']} x{env['device_count']}, jax {env['versions']['jax']}")
    print(
        "| model | batch x m | T | fori_loop s | unrolled s | speedup | compile s (loop / unrolled)"
        " | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for num_steps in args.steps:
            row = measure(
                name,
                batch=args.batch,
                num_noise=args.num_noise,
                num_steps=num_steps,
                repeats=args.repeats,
            )
            row = records.append_result(out, dict(row, quick=args.quick), env)
            print(
                f"| {name} | {args.batch} x {args.num_noise} | {num_steps} | {row['loop_s']:.3f}"
                f" | {row['unrolled_s']:.3f} | {row['speedup']:.2f}"
                f" | {row['loop_compile_s']:.1f} / {row['unrolled_compile_s']:.1f}"
                f" | {row['max_abs_difference']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    jnp.zeros(())  # start the backend before timing anything
    main()
