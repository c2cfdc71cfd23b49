"""Empirical Bayes: a classifier of clean digits behind a learned denoiser, certified as f(xhat(y)).

  python examples/denoise_then_classify.py [--small]     (--small: 14 steps each, n = 200)

The denoiser xhat(y) = y + sigma^2 psi(y) comes from an energy network trained by denoising
(rsjax.empirical_bayes.fit_denoiser, which is rsjax.train.fit with its pieces); the classifier is
your own module trained on clean images (sigma 0). h(y) = f(xhat(y)) is a fixed function of the noisy
input, so rsjax.certify certifies it unchanged at the denoiser's sigma. Data: 5,000 MNIST digits.
"""

import sys
import tempfile

import flax.linen as nn
import jax

import rsjax
from rsjax import data, empirical_bayes, models, train

SMALL, SIGMA = "--small" in sys.argv, 0.5
EPOCHS = 1 if SMALL else 10


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, 28, 28, 1) NHWC in [0, 1] -> (B, 10) logits
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1) - 0.5)))


train_set, test_set = data.holdout(data.load("mnist5k", "train"), every=10)
if SMALL:  # every 5th training image: 14 steps an epoch
    train_set = data.Dataset(train_set.images[::5], train_set.labels[::5])
denoiser_dir, classifier_dir = tempfile.mkdtemp(), tempfile.mkdtemp()
empirical_bayes.fit_denoiser(
    jax.random.key(0),
    denoiser_dir,
    images=train_set.images,
    score_model="energy_mnist_mlp",
    dataset="mnist5k",
    sigma=SIGMA,
    epochs=EPOCHS,
    batch_size=64,
)
train.fit(
    jax.random.key(1),
    classifier_dir,
    model=MLP(),
    loss="gaussian",
    sigma=0.0,  # clean images
    images=train_set.images,
    labels=train_set.labels,
    epochs=EPOCHS,
    batch_size=64,
    learning_rate=0.05,
)
score_fn, score_params, _, _ = empirical_bayes.load_denoiser(denoiser_dir)
model, variables, _, _ = train.load_for_eval(classifier_dir, model=MLP())
classifier_fn = models.make_logits_fn(model)
eb_fn = empirical_bayes.make_eb_logits_fn(classifier_fn, score_fn, sigma=SIGMA)  # f(xhat(y))
x, labels = test_set.images[::25], test_set.labels[::25]  # 20 held-out images, 2 per class
noise = dict(sigma=SIGMA, n0=100, n=200 if SMALL else 10_000, alpha=0.001, num_classes=10)
for name, logits_fn, params in (
    ("classifier alone", classifier_fn, variables),
    ("denoiser + classifier", eb_fn, {"classifier": variables, "score": score_params}),
):
    cert = rsjax.certify(jax.random.key(2), logits_fn, x, params=params, **noise)
    correct = cert.prediction == labels
    print(
        f"{name}: certified accuracy at r = 0 {correct.mean():.2f}, ACR {(correct * cert.radius).mean():.3f}"
    )
