"""LeNet on full Fashion-MNIST (Debian package), noise-augmented training by method and sigma.

method in {gaussian, adre, adre_adv, smoothadv, macer}, sigma in {0.25, 0.5, 1.0}; optional lam=, k=, eps=
override the method's defaults (experiments/configs/methods.py), e.g. the ADRE lambda sweep, and epochs=,
batch_size=, learning_rate=, warmup_epochs= (the attack's eps warm-up; MACER's lam with macer_warmup=1) the schedule.

Command:  python experiments/train.py --config experiments/configs/fashion_mnist_lenet.py:method=adre,sigma=0.5 \
              --workdir runs/fashion_mnist_lenet_adre_0.5
          python experiments/certify.py --workdir runs/fashion_mnist_lenet_adre_0.5 --outdir runs/fashion_mnist_lenet_adre_0.5/certify \
              --skip 20 --n 10000
Expected: not measured yet; the regularized-training issue puts the sigma = 0.5 comparison (Gaussian, ADRE,
          ADRE-ADV, MACER; CERTIFY and T-CERTIFY) in experiments/README.md.
Wall time: not measured yet; Gaussian about 25 s per epoch on 2 CPU cores, the regularized methods roughly k
           times that.
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
    learning_rate: float = 0.02,  # 0.05 stalls at chance (loss 2.303) at sigma = 0.5
    warmup_epochs: int = 10,
    macer_warmup: int = 0,
) -> dict:
    config = dict(
        dataset="fashion_mnist",
        model="lenet",
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
        seed=0,
        checkpoint_every=1000,
    )
    return methods.smoke(config) if smoke else config
