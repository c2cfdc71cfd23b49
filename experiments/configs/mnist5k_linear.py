"""A linear classifier trained on clean MNIST 5k digits (all 5,000): the base of the EB linear classifier.

Certify it alone (`--sigma S`: the plain smoothed linear classifier) and composed with a denoiser
(`--denoiser runs/mnist5k_denoiser_S`: the empirical Bayes linear classifier, certified at the
denoiser's sigma).

Command:  python experiments/train.py --config experiments/configs/mnist5k_linear.py \
              --workdir runs/mnist5k_linear --data-source-dir ../shared/data/mnist-test
          python experiments/certify.py --workdir runs/mnist5k_linear --denoiser runs/mnist5k_denoiser_0.5 \
              --dataset mnist --data-source-dir ../shared/data/mnist-test --skip 20 --n 10000 \
              --outdir runs/mnist5k_linear/eb_0.5
Expected: not measured yet (see experiments/README.md).
Wall time: not measured yet; seconds per epoch on 2 CPU cores.
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
        seed=0,
        checkpoint_every=500,
    )
    if smoke:
        config.update(epochs=1, batch_size=8, checkpoint_every=2)
    return config
