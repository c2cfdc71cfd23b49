"""LeNet, Gaussian noise augmentation, sigma = 0.25, on full MNIST (60,000 training images).

Needs the MNIST training files: --download where a network exists, or --data-source-dir DIR with
the four IDX files. Protocol of Jeong & Shin (2020) for the LeNet row of REFERENCE section 5.

Command:  python experiments/train.py --config experiments/configs/mnist_lenet_gaussian.py --workdir runs/mnist_lenet_gaussian --download
          python experiments/certify.py --workdir runs/mnist_lenet_gaussian --outdir runs/mnist_lenet_gaussian/certify --skip 20 --n 100000 --data-source-dir ../shared/data/mnist-test
Expected: certified accuracy about .99 / .98 / .96 / .93 at r = 0 / .25 / .5 / .75 (REFERENCE 5: .992 / .985 /
          .967 / .931 on the full test set at n = 100,000).
Wall time: not measured yet (no MNIST training set on the development machine); about 30 s per epoch
           expected on 2 CPU cores from the mnist5k quickstart throughput.
"""


def get_config(smoke: bool = False) -> dict:
    config = dict(
        dataset="mnist",
        model="lenet",
        loss="gaussian",
        sigma=0.25,
        k=1,
        loss_options={},
        epochs=20,
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
