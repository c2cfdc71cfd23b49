"""CIFAR ResNet-110 on CIFAR-10 (meant for a GPU), noise-augmented training by method and sigma.

method in {gaussian, adre, adre_adv, smoothadv, macer}, sigma in {0.25, 0.5, 1.0}; optional lam=, k=, eps=
override the method's defaults (experiments/configs/methods.py), e.g. the ADRE lambda sweep.

Stability: the learning rate warms up linearly over the first epoch and gradients are clipped to global
norm 10 (rsjax.train.fit's lr_warmup_epochs, clip_norm): lr 0.1 at step 0 is what Cohen et al. use, but a
warm-up is the usual guard for a 110-layer ResNet at that rate (He et al. 2016 warm up ResNet-110 at 0.01),
and 10 is several times a healthy batch-norm network's gradient norm, so it only caps divergent steps.

Command:  python experiments/train.py --config experiments/configs/cifar10_resnet110.py:method=adre,sigma=0.5 \
              --workdir runs/cifar10_resnet110_adre_0.5 --download
          python experiments/certify.py --workdir runs/cifar10_resnet110_adre_0.5 --outdir runs/cifar10_resnet110_adre_0.5/certify \
              --skip 20 --n 100000
Expected: Gaussian at sigma 0.25: about .77 / .61 / .42 / .25 at r = 0 / .25 / .5 / .75 (Cohen et al., full test
          set); MACER ACR 0.556 / 0.726 / 0.792 at sigma .25 / .5 / 1 (500 images). Not yet measured with rsjax.
Wall time: not measured yet (no GPU and no CIFAR-10 on the development machine).
"""

import methods


def get_config(
    smoke: bool = False, method: str = "gaussian", sigma: float = 0.5, lam=None, k=None, eps=None
) -> dict:
    config = dict(
        dataset="cifar10",
        model="resnet110",
        sigma=float(sigma),
        **methods.training(method, float(sigma), mnist_like=False, lam=lam, k=k, eps=eps),
        epochs=90,
        batch_size=256,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0001,
        schedule="step",
        decay_every_epochs=30,
        lr_warmup_epochs=1,
        clip_norm=10.0,
        seed=0,
        checkpoint_every=2000,
    )
    return methods.smoke(config) if smoke else config
