"""rsjax: certified robustness by randomized smoothing in JAX/Flax.

Public entry points (see each docstring for shapes, math and guarantees):
  certify, predict                       counts on the device, decisions on the host
  certify_from_counts, predict_from_counts   pure numpy over count arrays
  sequential_certify_from_sampler        sequential CERTIFY from any sampler of class counts
  Smooth                                 Cohen et al.'s Smooth(...).certify / .predict, over these
  ABSTAIN                                the abstention label (-1)
Modules: bounds, votes, sequential, smooth, sharding, models, losses, attacks, train, monitor,
preemption, checkpoint, locks, data, rawfiles, imagefolder, analysis, plots, records, runs, progress;
score, tweedie, empirical_bayes, walkjump (empirical Bayes).
The certification module is rsjax.certify's functions re-exported here (`rsjax.certify` is the function).
"""

from rsjax.certify import (
    ABSTAIN,
    Certificate,
    Prediction,
    certify,
    certify_from_counts,
    predict,
    predict_from_counts,
)
from rsjax.sequential import SequentialCertificate, sequential_certify_from_sampler
from rsjax.smooth import Smooth

__version__ = "0.1.0"

__all__ = [
    "ABSTAIN",
    "Certificate",
    "Prediction",
    "certify",
    "certify_from_counts",
    "predict",
    "predict_from_counts",
    "SequentialCertificate",
    "sequential_certify_from_sampler",
    "Smooth",
]
