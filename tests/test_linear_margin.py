"""experiments/linear_margin.py: the exact margin of an affine classifier, and the comparison."""

import os
import sys
from importlib import util

import jax
import jax.numpy as jnp
import numpy as np

from rsjax import analysis, models

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module():
    spec = util.spec_from_file_location("linear_margin", f"{REPO}/experiments/linear_margin.py")
    module = util.module_from_spec(spec)
    sys.modules["linear_margin"] = module
    spec.loader.exec_module(module)
    return module


def test_margin_is_the_distance_to_the_nearest_boundary():
    lm = _module()
    model = models.make_model(
        "linear", num_classes=3, dataset="mnist"
    )  # with MNIST's normalisation
    variables = models.init_variables(model, jax.random.key(0), (4, 4, 1))
    images = np.asarray(jax.random.uniform(jax.random.key(1), (6, 4, 4, 1)))
    pred, margin = lm.margins(model, variables, images)
    logits = lambda x: model.apply(variables, x)  # noqa: E731
    np.testing.assert_array_equal(pred, np.asarray(logits(images)).argmax(1))
    for i in range(len(images)):
        # Walk from x along the gradient of the nearest gap: the class changes just past the margin.
        z = np.asarray(logits(images[i : i + 1]))[0]
        grad = np.asarray(
            jax.jacfwd(lambda v: logits(v.reshape(1, 4, 4, 1))[0])(jnp.asarray(images[i].ravel()))
        )
        others = [j for j in range(3) if j != pred[i]]
        dists = [(z[pred[i]] - z[j]) / np.linalg.norm(grad[pred[i]] - grad[j]) for j in others]
        j = others[int(np.argmin(dists))]
        direction = (grad[j] - grad[pred[i]]) / np.linalg.norm(grad[j] - grad[pred[i]])
        np.testing.assert_allclose(margin[i], min(dists), rtol=1e-5)
        inside = images[i].ravel() + 0.999 * margin[i] * direction
        outside = images[i].ravel() + 1.001 * margin[i] * direction
        assert np.asarray(logits(inside.reshape(1, 4, 4, 1))).argmax() == pred[i]
        assert np.asarray(logits(outside.reshape(1, 4, 4, 1))).argmax() != pred[i]


def test_compare_counts_radii_beyond_the_margin():
    lm = _module()
    pred = np.array([0, 1, 2, 0])
    margin = np.array([0.5, 0.2, 0.3, 0.4])
    labels = np.array([0, 1, 1, 0])  # f is wrong on image 2
    results = analysis.CertResults(
        idx=np.array([0, 1, 2, 3]),
        label=labels,
        predict=np.array([0, 1, 1, -1]),
        radius=np.array([0.7, 0.1, 0.6, 0.0]),
        correct=np.array([True, True, True, False]),
        time=np.zeros(4),
    )
    s = lm.compare(pred, margin, labels, results)
    assert s["linear_accuracy"] == 0.75 and s["certified_accuracy"] == 0.75
    np.testing.assert_allclose(s["linear_mean_margin"], (0.5 + 0.2 + 0.4) / 4)
    np.testing.assert_allclose(s["acr"], (0.7 + 0.1 + 0.6) / 4)
    assert s["both_correct"] == 2 and s["beyond_margin"] == 0.5
