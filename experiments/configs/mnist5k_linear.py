"""A linear classifier trained on clean MNIST 5k digits (all 5,000): the base of the EB linear classifier.

Certify it alone (`--sigma S`: the plain smoothed linear classifier) and composed with a denoiser
(`--denoiser runs/mnist5k_denoiser_S`: the empirical Bayes linear classifier, certified at the
denoiser's sigma).

Stability: the learning rate warms up linearly over the first epoch and gradients are clipped to global
norm 10 (rsjax.train.fit's lr_warmup_epochs, clip_norm). Healthy LeNet runs log mean gradient norms of
1-4.5, so 10 rarely binds and caps the spikes of a diverging step. The Expected figures were measured
before the warm-up and clipping were added.

Command:  python experiments/train.py --config experiments/configs/mnist5k_linear.py \
              --workdir runs/mnist5k_linear --data-source-dir ../shared/data/mnist-test
          python experiments/certify.py --workdir runs/mnist5k_linear --denoiser runs/mnist5k_denoiser_0.5 \
              --dataset mnist --data-source-dir ../shared/data/mnist-test --skip 20 --n 10000 \
              --outdir runs/mnist5k_linear/eb_0.5
Expected: clean accuracy 0.876 on the first 500 MNIST test images; on xhat of the denoisers, CERTIFY
          ACR 0.484 (sigma 0.25), 0.610 (0.5), 0.959 (1.0) against 0.321, 0.230, 0.059 smoothed
          directly (every 20th test image, n = 10,000; experiments/README.md, EB section).
Wall time: 18 s on 2 CPU cores (AMD EPYC, jax 0.10.2).
"""


def get_config(smoke: bool = False, epochs: int = 30) -> dict:
    config = dict(
        dataset="mnist5k",
        holdout_every=0,
        model="linear",
        loss="gaussian",
        sigma=0.0,  # clean data: noise of standard deviation 0
        k=1,
        loss_options={},
        epochs=int(epochs),
        batch_size=64,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="cosine",
        decay_every_epochs=0,
        lr_warmup_epochs=1,
        clip_norm=10.0,
        seed=0,
        checkpoint_every=500,
    )
    if smoke:
        config.update(epochs=1, batch_size=8, checkpoint_every=2, lr_warmup_epochs=0)
    return config
