"""rsjax's jitted train step against a PyTorch step of the same loss on the same LeNet, side by side.

  python benchmarks/train_vs_pytorch.py [--configs gaussian:1 adre:8 adre:8:8] [--batch 64] [--lam 0.5]
      [--steps 5] [--repeats 5] [--threads 2] [--xla-flags FLAGS] [--quick]

Needs the benchmark extra (pip install -e ".[bench]": PyTorch). For each LOSS:K[:M] of --configs:

- rsjax: the step of benchmarks/train_throughput.py (rsjax.train.make_train_step of the loss built by
  name as rsjax.train.fit builds it, SGD momentum 0.9, one fixed batch of --batch images on the device,
  the B * K noisy copies as one batch, or with M > 1 as M gradient groups of B / M examples,
  rsjax.train.make_train_step's microbatches).
- PyTorch: the same LeNet with the same initial weights (torch_reference.from_flax), the same loss
  written in PyTorch (Gaussian: cross-entropy on the K noisy copies; ADRE: plus lam * log G[c*], the
  strongest wrong class of the soft smoothed classifier, a constant of the step), torch.optim.SGD with
  momentum 0.9: zero_grad, forward, backward, step.

Both run in one process on --threads CPUs (pinned before JAX starts, torch.set_num_threads), are run
once first (compilation), then alternate for --repeats rounds of --steps steps; images/s = B / median
step time, ratio = rsjax / PyTorch within a round, median over rounds. --xla-flags sets XLA_FLAGS
before JAX starts, to compare XLA:CPU options in separate runs. Rows are printed as a markdown table
and appended as JSON lines to --out (default benchmarks/results/train_vs_pytorch.jsonl; with --quick,
nowhere unless --out is given).
"""

import argparse
import os
import shlex
import statistics
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--configs",
        nargs="+",
        default=["gaussian:1", "adre:8", "adre:8:8"],
        help="LOSS:K[:M] (gaussian or adre; M gradient groups, default 1)",
    )
    p.add_argument("--batch", type=int, default=64, help="clean examples per step")
    p.add_argument("--lam", type=float, default=0.5, help="ADRE's lam")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=5, help="timed steps per round")
    p.add_argument("--repeats", type=int, default=5, help="rounds; the median is reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--xla-flags", default=None, help="XLA_FLAGS for this run (set before JAX starts)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measure")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    configs = []
    for spec in args.configs:
        loss, *numbers = spec.split(":")
        if len(numbers) == 1:
            numbers.append("1")  # M defaults to one group
        if (
            loss not in ("gaussian", "adre")
            or len(numbers) != 2
            or not all(v.isdigit() and int(v) >= 1 for v in numbers)
            or args.batch % int(numbers[1])
        ):
            p.error(
                "--configs takes LOSS:K[:M] with LOSS gaussian or adre, K >= 1 and M >= 1"
                f" dividing --batch {args.batch}, got {spec!r}"
            )
        configs.append((loss, int(numbers[0]), int(numbers[1])))
    args.configs = configs
    if args.quick:
        args.configs = [(loss, min(k, 2), min(m, 2)) for loss, k, m in configs]
        args.batch, args.steps, args.repeats = 8, 1, 1
    if args.out is None:
        args.out = "" if args.quick else "benchmarks/results/train_vs_pytorch.jsonl"
    return args


def torch_loss(model, noisy, labels, *, loss, k, lam):
    """rsjax.losses' Gaussian or ADRE loss in PyTorch on given noisy copies (B * k, C, H, W), the k
    copies of an example adjacent as rsjax.losses.noisy_copies lays them out."""
    import torch
    import torch.nn.functional as F

    batch = labels.shape[0]
    logits = model(noisy)
    total = F.cross_entropy(logits, labels.repeat_interleave(k))
    if loss == "adre":
        soft = F.softmax(logits.view(batch, k, -1), dim=-1).mean(dim=1)
        wrong = soft.detach().scatter(1, labels[:, None], float("-inf")).argmax(dim=1)
        total = total + lam * torch.log(soft.gather(1, wrong[:, None])[:, 0] + 1e-10).mean()
    return total


def torch_step_fn(model, *, loss, k, sigma, lam, lr=0.01):
    """step(x_nchw, labels): one SGD step of `loss` on K noisy copies of each example."""
    import torch

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(x, labels):
        repeated = x.repeat_interleave(k, dim=0)
        noisy = repeated + sigma * torch.randn_like(repeated)
        total = torch_loss(model, noisy, labels, loss=loss, k=k, lam=lam)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        return total

    return step


def alternate(rs, tstep, x, labels, *, steps, repeats):
    """Seconds per step of each side over `repeats` alternating rounds of `steps` steps, and the
    PyTorch / rsjax step-time ratio of each round."""
    import jax

    times, ratios = {"rsjax": [], "torch": []}, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = rs["state"]
        for _ in range(steps):
            state, _ = rs["step"](state, rs["batch"], rs["key"])
        jax.block_until_ready(state)
        rs["state"] = state
        times["rsjax"].append((time.perf_counter() - t0) / steps)
        t0 = time.perf_counter()
        for _ in range(steps):
            tstep(x, labels)
        times["torch"].append((time.perf_counter() - t0) / steps)
        ratios.append(times["torch"][-1] / times["rsjax"][-1])
    return times, ratios


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.xla_flags is not None:
        os.environ["XLA_FLAGS"] = args.xla_flags
    import vs_pytorch  # benchmarks/ is on the path when this file runs as a script

    cpus = vs_pytorch.pin_cpus(args.threads)  # before JAX starts its CPU thread pool

    import jax.numpy as jnp
    import numpy as np
    import torch
    import torch_reference
    import train_throughput

    from rsjax import records

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    jnp.zeros(())
    env = records.environment()
    command = shlex.join(["python", "benchmarks/train_vs_pytorch.py", *argv])
    print(
        f"device: {env['device_kind']} x{env['device_count']}, CPUs {cpus}, jax"
        f" {env['versions']['jax']}, torch {torch.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(
        "| loss | B | k | rsjax groups | rsjax step ms | PyTorch step ms | rsjax images/s"
        " | PyTorch images/s | ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for loss, k, m in args.configs:
        rs = train_throughput.make_config(
            "lenet", loss, k, batch=args.batch, lam=args.lam, microbatches=m
        )
        variables = {"params": rs["state"].params}
        tmodel = torch_reference.from_flax("lenet", variables, input_shape=(28, 28, 1))
        tstep = torch_step_fn(tmodel, loss=loss, k=k, sigma=args.sigma, lam=args.lam)
        x = torch_reference.to_nchw(np.asarray(rs["batch"]["image"]))
        labels = torch.from_numpy(np.asarray(rs["batch"]["label"]).astype(np.int64))
        tstep(x, labels)  # warm-up
        times, ratios = alternate(rs, tstep, x, labels, steps=args.steps, repeats=args.repeats)
        t_rs, t_pt = statistics.median(times["rsjax"]), statistics.median(times["torch"])
        row = {
            "benchmark": "train_vs_pytorch",
            "model": "lenet",
            "loss": loss,
            "k": k,
            "microbatches": m,
            "lam": args.lam if loss == "adre" else None,
            "batch": args.batch,
            "steps": args.steps,
            "repeats": args.repeats,
            "threads": args.threads,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "rsjax_step_s": t_rs,
            "torch_step_s": t_pt,
            "rsjax_step_s_repeats": times["rsjax"],
            "torch_step_s_repeats": times["torch"],
            "rsjax_images_per_s": args.batch / t_rs,
            "torch_images_per_s": args.batch / t_pt,
            "ratio": statistics.median(ratios),
            "torch_version": torch.__version__,
            "command": command,
            "quick": args.quick,
        }
        records.append_result(args.out, row, env)
        print(
            f"| {loss} | {args.batch} | {k} | {m} | {1e3 * t_rs:,.1f} | {1e3 * t_pt:,.1f}"
            f" | {args.batch / t_rs:,.0f} | {args.batch / t_pt:,.0f} | {row['ratio']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
