"""CIFAR ResNet-20, Gaussian noise augmentation, sigma = 0.25 (meant for a GPU).

Data: --download where a network exists, or --data-source-dir DIR holding cifar-10-batches-py/ or
cifar-10-python.tar.gz. Schedule of Cohen et al. (2019): 90 epochs, lr 0.1 divided by 10 every 30.

Command:  python experiments/train.py --config experiments/configs/cifar10_resnet20_gaussian.py --workdir runs/cifar10_resnet20_gaussian --download
          python experiments/certify.py --workdir runs/cifar10_resnet20_gaussian --outdir runs/cifar10_resnet20_gaussian/certify --skip 20 --n 100000
Expected: below the ResNet-110 of Cohen et al. (.77 / .61 / .42 / .25 at r = 0 / .25 / .5 / .75).
Wall time: not measured yet (no GPU and no CIFAR-10 on the development machine).
"""


def get_config(smoke: bool = False) -> dict:
    config = dict(
        dataset="cifar10",
        model="resnet20",
        loss="gaussian",
        sigma=0.25,
        k=1,
        loss_options={},
        epochs=90,
        batch_size=256,
        learning_rate=0.1,
        momentum=0.9,
        weight_decay=0.0001,
        schedule="step",
        decay_every_epochs=30,
        seed=0,
        checkpoint_every=2000,
    )
    if smoke:  # seconds on a CPU, on any small local copy of the data
        config.update(epochs=1, batch_size=8, checkpoint_every=2)
    return config
