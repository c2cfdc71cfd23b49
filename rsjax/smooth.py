"""Smooth: Cohen et al.'s `Smooth(base_classifier, num_classes, sigma)` over rsjax.certify / predict.

For code written against Cohen et al.'s PyTorch `core.Smooth`. A thin class: it validates, handles
one image or a batch in NHWC or NCHW, and calls `rsjax.certify` / `rsjax.predict`, whose docstrings
hold the math and the guarantees (unchanged here).

    smoothed = Smooth(logits_fn, num_classes=10, sigma=0.25, params=variables)
    cert = smoothed.certify(key, x, n0=100, n=100_000, alpha=0.001)   # x: one (H, W, C) image
    cert.prediction, cert.radius                                       # his (prediction, radius)
    smoothed.predict(key, x, n=1000, alpha=0.001).prediction           # his predict(...)

Cohen et al. -> rsjax:
  Smooth(base_classifier, num_classes, sigma)
      Smooth(logits_fn, num_classes=, sigma=, params=): logits_fn(params, x) -> (B, K) logits with
      params= (traced, so new weights do not recompile), or logits_fn(x) with params=None, exactly as
      rsjax.certify takes it. sigma is in [0,1] pixel units in both.
  certify(x, n0, n, alpha, batch_size) -> (prediction, radius)
      certify(key, x, n0=, n=, alpha=) -> Certificate(prediction, radius, pa_lower, pb_upper);
      `cert.prediction, cert.radius` (or `prediction, radius, *_ = cert`) are his pair.
  predict(x, n, alpha, batch_size) -> prediction
      predict(key, x, n=, alpha=) -> Prediction(prediction, pvalue).
  his batch_size (noise samples per forward pass)
      Smooth's chunk_size (None: rsjax.votes.default_chunk_size()). rsjax's batch_size is something
      else: images per device call when x is a batch.
  Smooth.ABSTAIN = -1
      the same: Smooth.ABSTAIN = rsjax.ABSTAIN = -1.
  torch's global RNG
      an explicit `key`, the first argument. Image i's noise comes from (key, idx_i), idx defaulting
      to 0..B-1, so a call repeated with the same key gives the same answer. When certifying a dataset
      one image at a time, pass idx=i (the dataset index): otherwise every image gets the same noise
      (each certificate is still valid, but they are no longer independent), and with idx=i the answer
      equals row i of certifying the whole set at once.
  x: one (C, H, W) tensor, normalised inside base_classifier
      x: one image or a batch, float in [0,1], layout="NHWC" (default) or "NCHW". Normalisation goes
      inside logits_fn (his `get_architecture` puts a NormalizeLayer first too):
      `lambda params, x: model.apply(params, (x - mean) / std)`.

Layout: with layout="NCHW" the logits_fn expects NCHW input, as a model ported from PyTorch does.
Smooth transposes x to NHWC for rsjax.certify, which adds the noise there (i.i.d. N(0, sigma^2) per
pixel: the same Gaussian in any layout), and transposes every noisy batch back to NCHW before the
logits_fn sees it. For the same key the results equal those of layout="NHWC" on the transposed images
with the model composed with the transpose.

One difference of no practical weight: his CERTIFY certifies radius 0 when pA_lower is exactly 1/2,
rsjax's needs pA_lower > 1/2.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY, PREDICT; github.com/locuslab/smoothing,
code/core.py).
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from rsjax import bounds
from rsjax.certify import (
    ABSTAIN,
    DEFAULT_SPLIT_GRID,
    Certificate,
    Prediction,
    certify,
    check_images,
    predict,
)

LAYOUTS = ("NHWC", "NCHW")
_AXES = {"NHWC": "(H, W, C)", "NCHW": "(C, H, W)"}


class _ChannelsFirst:
    """An NCHW logits_fn as the NHWC one rsjax.certify calls: each NHWC batch is transposed to NCHW
    before the model sees it. Takes (x) or (params, x) like the wrapped function."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        *params, x = args
        return self.fn(*params, jnp.transpose(x, (0, 3, 1, 2)))


class Smooth:
    """The Gaussian-smoothed classifier g(x) = argmax_c P(f(x + eps) = c), eps ~ N(0, sigma^2 I).

    Args:
      logits_fn: the base classifier f: logits_fn(params, x) -> (B, K) logits when params is given,
        else logits_fn(x). It sees float32 images in [0,1] in `layout` and does its own normalisation.
        Reuse one Smooth (or one logits_fn object): jit caches the compiled vote counting on it.
      num_classes: K >= 2, the number of logits the model returns (checked on the first call).
      sigma: noise standard deviation (> 0) in [0,1] pixel units.
      params: pytree passed as logits_fn's first argument (e.g. flax variables), or None.
      layout: "NHWC" (x is (H, W, C) or (B, H, W, C)) or "NCHW" (x is (C, H, W) or (B, C, H, W), and
        logits_fn receives NCHW batches; see the module docstring).
      chunk_size: noise samples per image per device step (Cohen's batch_size); None: the default of
        rsjax.votes.

    One image in gives a result of Python scalars; a batch gives arrays with the leading batch axis.
    """

    ABSTAIN = ABSTAIN

    def __init__(
        self,
        logits_fn: Callable,
        *,
        num_classes: int,
        sigma: float,
        params: Any = None,
        layout: str = "NHWC",
        chunk_size: int | None = None,
    ):
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or int(chunk_size) != chunk_size or chunk_size < 1
        ):
            raise ValueError(f"chunk_size must be an integer >= 1 or None, got {chunk_size!r}")
        self.logits_fn = logits_fn
        self.num_classes = int(num_classes)
        self.sigma = bounds.check_sigma(sigma)
        self.params = params
        self.layout = layout
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        # What rsjax.certify calls: built once, so every call hits the same jit cache entry.
        self._nhwc_fn = _ChannelsFirst(logits_fn) if layout == "NCHW" else logits_fn
        self._checked_shapes = set()

    def __repr__(self):
        return (
            f"Smooth({self.logits_fn!r}, num_classes={self.num_classes}, sigma={self.sigma}, "
            f"layout={self.layout!r}, chunk_size={self.chunk_size})"
        )

    def certify(
        self,
        key: jax.Array,
        x: ArrayLike,
        *,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int = 8,
        method: str = "cohen",
        alpha_split: str = "selection",
        split_grid: Sequence[float] = DEFAULT_SPLIT_GRID,
        idx: ArrayLike | None = None,
        mesh: jax.sharding.Mesh | None = None,
        progress: bool = False,
    ) -> Certificate:
        """CERTIFY (method="cohen") or T-CERTIFY (method="tcertify") of g at x: `rsjax.certify`.

        x: one image or a batch in `layout`, float in [0,1]. idx: the image's global index (an int)
        or the batch's (B,) indices, default 0..B-1; it seeds the noise. The other arguments are
        rsjax.certify's (progress: a progress line on stderr). Returns a Certificate of Python
        scalars for one image, of (B,) arrays for a batch; with probability >= 1 - alpha per image,
        a non-abstaining (prediction, radius) is g(x), and g is constant on the l2 ball of that
        radius around x. For sequential sampling call rsjax.certify directly. Raises
        rsjax.votes.NonFiniteLogitsError when the classifier gives NaN or infinite logits.
        """
        images, single = self._as_nhwc(x)
        result = certify(
            key,
            self._nhwc_fn,
            images,
            sigma=self.sigma,
            n0=n0,
            n=n,
            alpha=alpha,
            num_classes=self.num_classes,
            method=method,
            chunk_size=self.chunk_size,
            batch_size=batch_size,
            params=self.params,
            idx=self._as_idx(idx, single),
            mesh=mesh,
            alpha_split=alpha_split,
            split_grid=split_grid,
            progress=progress,
        )
        return _first(result) if single else result

    def predict(
        self,
        key: jax.Array,
        x: ArrayLike,
        *,
        n: int,
        alpha: float,
        batch_size: int = 8,
        idx: ArrayLike | None = None,
        mesh: jax.sharding.Mesh | None = None,
        progress: bool = False,
    ) -> Prediction:
        """PREDICT with g at x: `rsjax.predict` (x, idx and the result as in `certify`).

        Guarantee: a non-abstaining prediction differs from g(x) with probability <= alpha.
        """
        images, single = self._as_nhwc(x)
        result = predict(
            key,
            self._nhwc_fn,
            images,
            sigma=self.sigma,
            n=n,
            alpha=alpha,
            num_classes=self.num_classes,
            chunk_size=self.chunk_size,
            batch_size=batch_size,
            params=self.params,
            idx=self._as_idx(idx, single),
            mesh=mesh,
            progress=progress,
        )
        return _first(result) if single else result

    def _as_nhwc(self, x) -> tuple[np.ndarray, bool]:
        """(B, H, W, C) float32 images validated by check_images, and whether x was one image."""
        x = np.asarray(x)
        if x.ndim not in (3, 4):
            axes = _AXES[self.layout]
            raise ValueError(
                f"x must be one {self.layout} image {axes} or a batch (B, {axes[1:]}, "
                f"got shape {x.shape}"
            )
        single = x.ndim == 3
        if single:
            x = x[None]
        images = check_images(np.transpose(x, (0, 2, 3, 1)) if self.layout == "NCHW" else x)
        self._check_num_classes(x.shape[1:])
        return images, single

    def _check_num_classes(self, image_shape: tuple[int, ...]):
        """Raises ValueError unless logits_fn maps one image of this shape (in `layout`) to
        (1, num_classes) logits; abstract evaluation (jax.eval_shape), once per image shape."""
        if image_shape in self._checked_shapes:
            return
        batch = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
        args = (batch,) if self.params is None else (self.params, batch)
        out = jax.eval_shape(self.logits_fn, *args)
        shape = getattr(out, "shape", None)
        if shape != (1, self.num_classes):
            raise ValueError(
                f"logits_fn maps a batch of shape {batch.shape} to logits of shape {shape}, but "
                f"num_classes = {self.num_classes}: it must return (B, num_classes) logits"
            )
        self._checked_shapes.add(image_shape)

    @staticmethod
    def _as_idx(idx, single: bool):
        if single and idx is not None and np.ndim(idx) == 0:
            return np.asarray([idx])
        return idx


def _first(result):
    """The first row of a result NamedTuple of arrays, as the same type of Python scalars."""
    return type(result)(*(np.asarray(field)[0].item() for field in result))
