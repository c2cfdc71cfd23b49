"""Walk-jump samples from a learned smoothed density: a PNG grid of chains (rows) by jumps (columns).

  python experiments/walk_jump_samples.py --denoiser runs/mnist5k_denoiser_0.5 --out samples.png \
      [--chains 8] [--jumps 10] [--steps-per-jump 10] [--delta D] [--gamma 0.5] [--u 1] [--seed 0]

Each chain starts at y0 = u + sigma * eps (u uniform in [0,1]), walks with underdamped Langevin
dynamics on the learned score and jumps to xhat after every --steps-per-jump steps (rsjax.walkjump).
The jumps are also saved as float32 .npy beside the PNG.
"""

import argparse
import functools
import pathlib

import jax
import numpy as np

from rsjax import empirical_bayes, plots, walkjump


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--denoiser", required=True, help="denoiser run directory (holds checkpoints/)")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--jumps", type=int, default=10)
    p.add_argument("--steps-per-jump", type=int, default=10)
    p.add_argument("--delta", type=float, default=None, help="walk step (default 0.5 sigma)")
    p.add_argument("--gamma", type=float, default=0.5)
    p.add_argument("--u", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    score_fn, params, meta, step = empirical_bayes.load_denoiser(
        pathlib.Path(args.denoiser) / "checkpoints"
    )
    sigma = meta["sigma"]
    init_key, walk_key = jax.random.split(jax.random.key(args.seed))
    shape = (args.chains, *meta["input_shape"])
    u_key, eps_key = jax.random.split(init_key)
    y0 = jax.random.uniform(u_key, shape) + sigma * jax.random.normal(eps_key, shape)
    samples = walkjump.walk_jump_sample(
        walk_key,
        functools.partial(score_fn, params),
        y0,
        sigma=sigma,
        num_jumps=args.jumps,
        steps_per_jump=args.steps_per_jump,
        delta=args.delta or 0.5 * sigma,
        gamma=args.gamma,
        u=args.u,
    )
    jumps = np.swapaxes(np.asarray(samples.jumps), 0, 1)  # (chains, jumps, H, W, C)
    if not np.all(np.isfinite(jumps)):
        raise SystemExit("the chain diverged (non-finite samples): try a smaller --delta")
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), jumps.astype(np.float32))
    title = (
        f"walk-jump, sigma {sigma}, {args.steps_per_jump} steps/jump, "
        f"delta {args.delta or 0.5 * sigma:g} ({meta['score_model']}, step {step})"
    )
    plots.save_image_grid(jumps, out, title=title)
    print(f"wrote {out} and {out.with_suffix('.npy')} ({args.chains} chains x {args.jumps} jumps)")


if __name__ == "__main__":
    main()
