"""LeNet on full MNIST (60,000 training images), noise-augmented training by method and sigma.

method in {gaussian, adre, adre_adv, smoothadv, macer}, sigma in {0.25, 0.5, 1.0}; optional lam=, k=, eps=
override the method's defaults (experiments/configs/methods.py), e.g. the ADRE lambda sweep, and epochs=,
batch_size=, learning_rate=, warmup_epochs= (the attack's eps warm-up; MACER's lam with macer_warmup=1) the schedule,
lr_warmup_epochs= and clip_norm= (0: off) the stability settings, model= the network (default lenet, and
lenet_bn, LeNet with batch norm, for MACER: its hinge does not train the plain LeNet, see
experiments/README.md),
seed= the initialisation, noise and data order, microbatches= the gradient groups of one step
(rsjax.train.make_train_step: the same loss on differently drawn noise, about 1.3x faster per step for
ADRE and ADRE-ADV on XLA:CPU; not for lenet_bn).

Stability: the learning rate warms up linearly over the first lr_warmup_epochs= (default 1) epoch and
gradients are clipped to global norm 10 (rsjax.train.fit's lr_warmup_epochs, clip_norm). Healthy LeNet
runs log mean gradient norms of 1-4.5 (runs/quickstart, runs/fashion_mnist_0.5), so 10 rarely binds and
caps the spikes of a diverging step (MACER's hinge term starts near 100).

Command:  python experiments/train.py --config experiments/configs/mnist_lenet.py:method=adre,sigma=0.5 \
              --workdir runs/mnist_lenet_adre_0.5 --download
          python experiments/certify.py --workdir runs/mnist_lenet_adre_0.5 --outdir runs/mnist_lenet_adre_0.5/certify \
              --skip 20 --n 100000 --data-source-dir ../shared/data/mnist-test
Expected: REFERENCE section 5 (Jeong & Shin reproductions, full test set, n = 100,000), e.g. Gaussian at
          sigma 0.25: .992 / .985 / .967 / .931 at r = 0 / .25 / .5 / .75, ACR 0.911; not yet measured with rsjax
          (the MNIST training set is not available offline on the development machine).
Wall time: not measured yet; Gaussian about 25 s per epoch on 2 CPU cores (mnist5k quickstart throughput), the
           regularized methods roughly k times that.
"""

import methods


def get_config(
    smoke: bool = False,
    method: str = "gaussian",
    sigma: float = 0.5,
    lam=None,
    k=None,
    eps=None,
    epochs: int = 20,
    batch_size: int = 128,
    learning_rate: float = 0.05,
    warmup_epochs: int = 10,
    macer_warmup: int = 0,
    lr_warmup_epochs: float = 1,
    clip_norm: float = 10.0,
    model: str | None = None,
    seed: int = 0,
    microbatches: int = 1,
) -> dict:
    config = dict(
        dataset="mnist",
        model=model or ("lenet_bn" if method == "macer" else "lenet"),
        sigma=float(sigma),
        **methods.training(
            method,
            float(sigma),
            mnist_like=True,
            lam=lam,
            k=k,
            eps=eps,
            warmup_epochs=warmup_epochs,
            macer_warmup=bool(macer_warmup),
        ),
        epochs=int(epochs),
        batch_size=int(batch_size),
        learning_rate=float(learning_rate),
        momentum=0.9,
        weight_decay=0.0005,
        schedule="cosine",
        decay_every_epochs=0,
        lr_warmup_epochs=float(lr_warmup_epochs),
        clip_norm=float(clip_norm) or None,
        seed=int(seed),
        microbatches=int(microbatches),
        checkpoint_every=1000,
    )
    return methods.smoke(config) if smoke else config
