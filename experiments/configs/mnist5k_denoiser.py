"""The smoothed-energy (DEEN) denoiser of the empirical Bayes classifiers, on all 5,000 MNIST 5k digits.

sigma in {0.25, 0.5, 1.0}; score_model= any of rsjax.score.SCORE_MODELS (default energy_mnist_mlp:
a 1024 x 1024 softplus MLP energy plus a learned diagonal quadratic, the score is -grad phi; the
convolutional energy_mnist denoises better per step but its score costs about 20x more on CPU, see
experiments/README.md); epochs= overrides the schedule. Held-out denoising MSE and PSNR are logged every
epoch on the MNIST test split (--data-source-dir ../shared/data/mnist-test).

Command:  python experiments/train.py --config experiments/configs/mnist5k_denoiser.py:sigma=0.5 \
              --workdir runs/mnist5k_denoiser_0.5 --data-source-dir ../shared/data/mnist-test
Expected: held-out PSNR (first 1,000 MNIST test images) 19.79 dB at sigma 0.25, 16.67 dB at 0.5,
          14.95 dB at 1.0, against the noisy input's 20 log10(1 / sigma): 12.04, 6.02, 0.00 dB.
Wall time: 96-234 s on 2 CPU cores (AMD EPYC, jax 0.10.2), shared with other jobs (the energy
           network's step differentiates through a gradient).
"""

SIGMAS = (0.25, 0.5, 1.0)


def get_config(
    smoke: bool = False, sigma: float = 0.5, score_model: str = "energy_mnist_mlp", epochs: int = 60
) -> dict:
    if float(sigma) not in SIGMAS:
        raise ValueError(f"sigma must be one of {SIGMAS} for these configs, got {sigma}")
    config = dict(
        kind="denoiser",
        dataset="mnist5k",
        holdout_every=0,  # train on all 5,000; held-out = the MNIST test split
        score_model=score_model,
        sigma=float(sigma),
        epochs=int(epochs),
        batch_size=64,
        learning_rate=1e-3,
        schedule="cosine",
        seed=0,
        checkpoint_every=500,
    )
    if smoke:
        config.update(epochs=1, batch_size=8, checkpoint_every=2, score_model="energy_mlp")
    return config
