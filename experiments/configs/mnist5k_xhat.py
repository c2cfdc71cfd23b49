"""XHAT(eps): LeNet trained end-to-end on the denoiser's xhat at SmoothAdv points, on MNIST 5k.

sigma in {0.25, 0.5, 1.0} selects the denoiser run runs/mnist5k_denoiser_{sigma} (or denoiser=PATH);
eps= the attack radius (0: no attack, LeNet on xhat of noisy copies), steps= the attack steps,
k= the noise draws, finetune=1 trains the energy network too (default frozen), epochs=.

Command:  python experiments/train.py --config experiments/configs/mnist5k_xhat.py:sigma=0.5,eps=0.5 \
              --workdir runs/mnist5k_xhat_0.5 --data-source-dir ../shared/data/mnist-test
          python experiments/certify.py --workdir runs/mnist5k_xhat_0.5 --dataset mnist \
              --data-source-dir ../shared/data/mnist-test --skip 20 --n 10000 --outdir runs/mnist5k_xhat_0.5/certify
Expected: with the energy_mnist_mlp denoisers of mnist5k_denoiser.py, certified on every 20th MNIST
          test image (500) at n = 10,000: CERTIFY ACR 0.743 (sigma 0.25), 1.307 (0.5), 1.374 (1.0),
          above the Gaussian-trained LeNet (experiments/README.md, EB section).
Wall time: 316-581 s on 2 CPU cores (AMD EPYC, jax 0.10.2), shared with other jobs.
"""

SIGMAS = (0.25, 0.5, 1.0)


def get_config(
    smoke: bool = False,
    sigma: float = 0.5,
    eps: float = 0.5,
    steps: int = 1,
    k: int = 2,
    finetune: int = 0,
    epochs: int = 10,
    denoiser: str | None = None,
) -> dict:
    if float(sigma) not in SIGMAS:
        raise ValueError(f"sigma must be one of {SIGMAS} for these configs, got {sigma}")
    config = dict(
        kind="xhat",
        dataset="mnist5k",
        holdout_every=0,
        model="lenet",
        denoiser_workdir=denoiser or f"runs/mnist5k_denoiser_{float(sigma)}",
        sigma=float(sigma),  # the denoiser's; checked when training starts
        eps=float(eps),
        num_steps=int(steps),
        k=int(k),
        finetune=bool(finetune),
        warmup_epochs=2,
        epochs=int(epochs),
        batch_size=64,
        learning_rate=0.02,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        seed=0,
        checkpoint_every=500,
    )
    if smoke:
        config.update(epochs=1, batch_size=8, checkpoint_every=2, warmup_epochs=0, k=1)
    return config
