"""LeNet, Gaussian noise augmentation, sigma = 0.5, on full Fashion-MNIST (Debian package).

Data: apt-get install -y dataset-fashion-mnist (found automatically), or --data-source-dir DIR.

Command:  python experiments/train.py --config experiments/configs/fashion_mnist_lenet_gaussian.py --workdir runs/fashion_mnist_lenet_gaussian
          python experiments/certify.py --workdir runs/fashion_mnist_lenet_gaussian --outdir runs/fashion_mnist_lenet_gaussian/certify --skip 20 --n 10000
Expected: not measured yet; the regularized-training issue reports the full table for this setting.
Wall time: not measured yet; about 30 s per epoch expected on 2 CPU cores.
"""


def get_config(smoke: bool = False) -> dict:
    config = dict(
        dataset="fashion_mnist",
        model="lenet",
        loss="gaussian",
        sigma=0.5,
        k=1,
        loss_options={},
        epochs=30,
        batch_size=128,
        learning_rate=0.05,
        momentum=0.9,
        weight_decay=0.0005,
        schedule="cosine",
        decay_every_epochs=0,
        seed=0,
        checkpoint_every=1000,
    )
    if smoke:  # seconds on a CPU, on any small local copy of the data
        config.update(epochs=1, batch_size=8, checkpoint_every=2)
    return config
