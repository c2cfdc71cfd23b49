"""CERTIFY, T-CERTIFY and PREDICT: counts on the device, decisions on the host in float64.

`certify_from_counts` and `predict_from_counts` are pure numpy over count arrays (leading axis =
examples). `certify` and `predict` draw the counts with `rsjax.votes.count_votes` and call them.

Guarantees (per example, over the sampling of the noise):
- CERTIFY / T-CERTIFY: with probability >= 1 - alpha, a non-abstaining answer (c, R) has c = g(x), and
  the smoothed classifier g is constant (= c) on the open l2 ball of radius R around x.
- PREDICT: the probability of returning a class other than g(x) is <= alpha.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY, PREDICT); Feng, Wu, Chen, Zhang & Ning,
AAAI 2020 (T-CERTIFY; rsjax implements the valid form of REFERENCE section 2, since the paper's exact
procedure is not available).
"""

import math
import time
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
from numpy.typing import ArrayLike

from rsjax import bounds, sequential, votes
from rsjax.progress import Progress

ABSTAIN = sequential.ABSTAIN
SAMPLINGS = ("fixed", "sequential")

METHODS = ("cohen", "tcertify")
ALPHA_SPLITS = ("selection", "union")
# Fractions of alpha spent on the runner-up bound (alpha_B = f * alpha). 0 is plain CERTIFY.
DEFAULT_SPLIT_GRID = (0.0, 0.1, 0.25, 0.5)


class Certificate(NamedTuple):
    """Per-example result of CERTIFY / T-CERTIFY; arrays with the leading (examples) axis.

    prediction: int64, the certified class or ABSTAIN (-1).
    radius: float64 certified l2 radius in [0,1] pixel units (0.0 where abstaining).
    pa_lower: float64 lower confidence bound on P(f(x + eps) = prediction candidate).
    pb_upper: float64 upper confidence bound on the runner-up probability.
    """

    prediction: np.ndarray
    radius: np.ndarray
    pa_lower: np.ndarray
    pb_upper: np.ndarray


class Prediction(NamedTuple):
    """Per-example result of PREDICT: the class or ABSTAIN (-1), and the binomial test p-value."""

    prediction: np.ndarray
    pvalue: np.ndarray


def _as_counts(counts, name: str) -> np.ndarray:
    counts = np.asarray(counts)
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(
            f"{name} must be an integer array of class counts, got dtype {counts.dtype}"
        )
    if counts.ndim != 2:
        raise ValueError(f"{name} must have shape (examples, classes), got shape {counts.shape}")
    if counts.shape[1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError(f"{name} has negative counts")
    if np.any(counts.sum(axis=1) < 1):
        raise ValueError(f"{name} has an example with no samples (n must be >= 1)")
    return counts.astype(np.int64)


def _runner_up_upper(counts, top, alpha_b):
    """max over c != top of the Clopper-Pearson upper bound at level alpha_b / (K - 1) (Bonferroni)."""
    n = counts.sum(axis=1, keepdims=True)
    num_classes = counts.shape[1]
    upper = bounds.clopper_pearson_upper(
        counts, n, np.asarray(alpha_b)[..., None] / (num_classes - 1)
    )
    others = np.arange(num_classes)[None, :] != top[:, None]
    return np.where(others, upper, 0.0).max(axis=1)


def _two_sided(counts, top, sigma, alpha_a, alpha_b):
    """pA_lower at alpha_a, pB_upper at alpha_b (alpha_b = 0: pB_upper = 1 - pA_lower), radius."""
    n = counts.sum(axis=1)
    na = counts[np.arange(len(top)), top]
    pa_lower = bounds.clopper_pearson_lower(na, n, alpha_a)
    alpha_b = np.broadcast_to(np.asarray(alpha_b, np.float64), pa_lower.shape)
    pb_upper = 1.0 - pa_lower
    spend = alpha_b > 0
    if np.any(spend):
        pb_upper = np.where(
            spend,
            np.minimum(pb_upper, _runner_up_upper(counts, top, np.where(spend, alpha_b, 1.0))),
            pb_upper,
        )
    certified = pa_lower > pb_upper
    with np.errstate(invalid="ignore", divide="ignore"):
        r = bounds.radius(sigma, pa_lower, pb_upper)
    return np.where(certified, r, -np.inf), pa_lower, pb_upper


def _select_split(counts0, top, sigma, alpha, n, grid):
    """Chooses alpha_B per example from the selection counts only (REFERENCE 2, way (a)).

    Predicts the radius each split would give if the estimation counts were the selection frequencies
    scaled to n draws, and keeps the best (the smallest fraction on ties; the grid's first fraction
    where no split would certify, so the choice is always in the grid). It never looks at the
    estimation counts, so the chosen split is independent of them and the full alpha stays valid.
    """
    n0 = counts0.sum(axis=1, keepdims=True)
    projected = np.rint(counts0 * (n[:, None] / n0)).astype(np.int64)
    # Keep each projected row summing to n (rounding may move it by a few votes).
    projected[np.arange(len(top)), top] += n - projected.sum(axis=1)
    projected = np.clip(projected, 0, None)
    best_radius = np.full(len(top), -np.inf)
    best_fraction = np.full(len(top), grid[0])  # where no split certifies: the grid's first
    for fraction in grid:
        r, _, _ = _two_sided(projected, top, sigma, (1 - fraction) * alpha, fraction * alpha)
        better = r > best_radius
        best_radius = np.where(better, r, best_radius)
        best_fraction = np.where(better, fraction, best_fraction)
    return best_fraction


def certify_from_counts(
    counts0: ArrayLike,
    counts: ArrayLike,
    *,
    sigma: float,
    alpha: float,
    method: str = "cohen",
    alpha_split: str = "selection",
    split_grid: Sequence[float] = DEFAULT_SPLIT_GRID,
) -> Certificate:
    """CERTIFY (method="cohen") or T-CERTIFY (method="tcertify") from class counts.

    Args:
      counts0: (B, K) int selection counts from n0 draws; the candidate is cA = argmax counts0 (lowest
        class on ties).
      counts: (B, K) int estimation counts from n fresh, independent draws. Reusing the selection
        draws here voids the guarantee.
      sigma: noise level (> 0) in [0,1] pixel units.
      alpha: total failure probability per example, in (0, 1).
      method: "cohen": pA_lower = Clopper-Pearson lower bound of counts[cA] at alpha; certify if
        pA_lower > 1/2 with R = sigma * Phi^-1(pA_lower).
        "tcertify": alpha = alpha_A + alpha_B; pB_upper = min(1 - pA_lower, max over c != cA of the
        upper bound of counts[c] at alpha_B / (K - 1)); certify if pA_lower > pB_upper with
        R = sigma / 2 * (Phi^-1(pA_lower) - Phi^-1(pB_upper)).
      alpha_split: how T-CERTIFY picks alpha_B = f * alpha from `split_grid`:
        "selection": f chosen per example from the selection counts alone; the full alpha is valid.
        "union": every f of the grid is tried on the estimation counts with alpha / G each (G = grid
        size), and the largest radius is kept (a union bound over the G tries).
      split_grid: fractions f in [0, 1); include 0.0 so plain CERTIFY is among the choices.

    Returns:
      Certificate with prediction (ABSTAIN = -1) and radius (0.0 where abstaining) per example.
      With probability >= 1 - alpha per example, a non-abstained prediction is the smoothed
      classifier's class and it is constant on the l2 ball of that radius.
    """
    sigma = bounds.check_sigma(sigma)
    alpha = bounds.check_alpha(alpha)
    counts0 = _as_counts(counts0, "counts0")
    counts = _as_counts(counts, "counts")
    if counts0.shape != counts.shape:
        raise ValueError(
            f"counts0 {counts0.shape} and counts {counts.shape} must have the same shape"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    n = counts.sum(axis=1)
    bounds.warn_if_never_certifies(int(n.max()), alpha)
    top = counts0.argmax(axis=1)

    if method == "cohen":
        r, pa_lower, pb_upper = _two_sided(counts, top, sigma, alpha, 0.0)
    else:
        if alpha_split not in ALPHA_SPLITS:
            raise ValueError(f"alpha_split must be one of {ALPHA_SPLITS}, got {alpha_split!r}")
        grid = tuple(float(f) for f in split_grid)
        if not grid or any(not 0.0 <= f < 1.0 for f in grid):
            raise ValueError(f"split_grid must hold fractions in [0, 1), got {split_grid}")
        if alpha_split == "selection":
            fraction = _select_split(counts0, top, sigma, alpha, n, grid)
            r, pa_lower, pb_upper = _two_sided(
                counts, top, sigma, (1 - fraction) * alpha, fraction * alpha
            )
        else:
            share = alpha / len(grid)
            r = np.full(len(top), -np.inf)
            pa_lower = np.zeros(len(top))
            pb_upper = np.ones(len(top))
            for f in grid:
                r_f, pa_f, pb_f = _two_sided(counts, top, sigma, (1 - f) * share, f * share)
                better = r_f > r
                r, pa_lower, pb_upper = (
                    np.where(better, new, old)
                    for new, old in ((r_f, r), (pa_f, pa_lower), (pb_f, pb_upper))
                )
    certified = np.isfinite(r)
    return Certificate(
        prediction=np.where(certified, top, ABSTAIN).astype(np.int64),
        radius=np.where(certified, r, 0.0),
        pa_lower=pa_lower,
        pb_upper=pb_upper,
    )


def predict_from_counts(counts: ArrayLike, *, alpha: float) -> Prediction:
    """PREDICT from (B, K) class counts of n draws: the top class if the two-sided binomial test of
    nA successes in nA + nB trials at p = 1/2 has p-value <= alpha (nA, nB: top two counts), else ABSTAIN.

    Guarantee: the probability of returning a class other than the smoothed classifier's is <= alpha.
    """
    alpha = bounds.check_alpha(alpha)
    counts = _as_counts(counts, "counts")
    order = np.argsort(-counts, axis=1, kind="stable")
    rows = np.arange(counts.shape[0])
    na, nb = counts[rows, order[:, 0]], counts[rows, order[:, 1]]
    pvalue = bounds.binomial_pvalue_two_sided(na, nb)
    prediction = np.where(pvalue <= alpha, order[:, 0], ABSTAIN).astype(np.int64)
    return Prediction(prediction=prediction, pvalue=pvalue)


# --------------------------------------------------------------------------------------------------
# Drivers: counts on the device, then the host decisions above.


PIXEL_RANGE = (0.0, 1.0)


def check_images(x: ArrayLike, input_range: tuple[float, float] | None = PIXEL_RANGE) -> np.ndarray:
    """Validates a batch of images: (B, H, W, C), B >= 1, floating point, finite, in input_range.

    rsjax's convention: pixels are floats in [0, 1] (uint8 / 255), sigma is in those units and any
    normalisation (mean, std) happens inside the model, after the noise. Images in 0..255 or already
    normalised would be certified at the wrong scale, so they are refused. input_range=None skips
    the range check, for inputs that are not images (toy vectors, closed-form checks), whose sigma
    is in their own units. Returns float32 numpy.
    """
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be a batch of NHWC images (B, H, W, C), got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"x holds no images (shape {x.shape}): give at least one image")
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"x must be floating point images in [0,1], got dtype {x.dtype} "
            "(convert uint8 images with x / 255)"
        )
    if not np.all(np.isfinite(x)):
        bad = int((~np.isfinite(x)).reshape(x.shape[0], -1).any(axis=1).sum())
        raise ValueError(f"x contains NaN or infinite values ({bad} of {x.shape[0]} images)")
    if input_range is None:
        return x.astype(np.float32)
    low, high = float(x.min()), float(x.max())
    if low < input_range[0] or high > input_range[1]:
        outside = (x < input_range[0]) | (x > input_range[1])
        outside = int(outside.reshape(x.shape[0], -1).any(axis=1).sum())
        hint = (
            " (0..255 pixels: divide by 255)" if high > 1.0 and high <= 255.0 and low >= 0 else ""
        )
        raise ValueError(
            f"x must hold pixels in [{input_range[0]:g}, {input_range[1]:g}], got values in "
            f"[{low:.4g}, {high:.4g}] ({outside} of {x.shape[0]} images outside){hint}. rsjax's "
            "convention: pixels / 255, sigma in those units, and any normalisation (mean, std) "
            "inside the model, after the noise (input_range=None for inputs that are not images)"
        )
    return x.astype(np.float32)


MAX_SAMPLES = votes.MAX_COUNT  # counts are int32 on the device


def check_samples(name: str, value: int) -> int:
    """Validates a number of noise draws (n0, n, n_max): an integer in [1, 2^31 - 1]."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value > MAX_SAMPLES:
        raise ValueError(
            f"{name} = {value:,} exceeds {MAX_SAMPLES:,}, the largest count of the int32 vote "
            "counters; split the draws over several runs"
        )
    return int(value)


def check_batch_size(batch_size: int) -> int:
    """Validates a number of images per device call: an integer >= 1."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(
            f"batch_size (images per device call) must be an integer >= 1, got {batch_size!r}"
        )
    return int(batch_size)


def _as_apply(logits_fn, params):
    """Turns logits_fn(x) (params=None) or logits_fn(params, x) into the two-argument form."""
    if params is None:
        return _CallWithoutParams(logits_fn), ()
    return logits_fn, params


class _CallWithoutParams:
    """Adapter logits_fn(x) -> apply(params, x); hashable by the wrapped function (one compile)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, params, x):
        return self.fn(x)

    def __hash__(self):
        return hash(self.fn)

    def __eq__(self, other):
        return isinstance(other, _CallWithoutParams) and other.fn is self.fn


def _count_streams(
    key,
    logits_fn,
    x,
    *,
    sigma,
    alpha,
    draws,
    num_classes,
    chunk_size,
    batch_size,
    params,
    idx,
    mesh,
    progress_desc,
    input_range,
):
    """Validates the common arguments of certify/predict and counts the votes of every stream in
    `draws` ({stream: num_samples}) over all of x, one example batch at a time (all its streams,
    then the next batch). Returns {stream: (B, num_classes) int32 counts}. With progress_desc, a
    progress line on stderr per example batch (rsjax.progress)."""
    sigma = bounds.check_sigma(sigma)
    bounds.check_alpha(alpha)
    batch_size = check_batch_size(batch_size)
    x = check_images(x, input_range)
    idx = votes.check_indices(np.arange(x.shape[0]) if idx is None else idx, x.shape[0])
    apply_fn, params = _as_apply(logits_fn, params)
    bar = Progress(x.shape[0], progress_desc, unit="img") if progress_desc else None
    per_image = sum(draws.values())
    t_start = time.perf_counter()
    parts = {stream: [] for stream in draws}
    for s in range(0, x.shape[0], batch_size):
        for stream, num_samples in draws.items():
            parts[stream].append(
                votes.count_votes(
                    key,
                    apply_fn,
                    params,
                    x[s : s + batch_size],
                    idx[s : s + batch_size],
                    sigma=sigma,
                    num_classes=int(num_classes),
                    num_samples=num_samples,
                    chunk_size=chunk_size,
                    stream=stream,
                    mesh=mesh,
                )
            )
        if bar:
            done = min(s + batch_size, x.shape[0])
            rate = done * per_image / (time.perf_counter() - t_start)
            bar.update(done - bar.done, extra=f"{rate:,.0f} noise samples/s")
    return {stream: np.concatenate(counts) for stream, counts in parts.items()}


def certify(
    key: jax.Array,
    logits_fn: Callable[..., jax.Array],
    x: ArrayLike,
    *,
    sigma: float,
    n0: int,
    n: int | None = None,
    alpha: float,
    num_classes: int,
    method: str = "cohen",
    chunk_size: int | None = None,
    batch_size: int = 8,
    params: Any = None,
    idx: ArrayLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    alpha_split: str = "selection",
    split_grid: Sequence[float] = DEFAULT_SPLIT_GRID,
    sampling: str = "fixed",
    n_max: int | None = None,
    radii: Sequence[float] | None = None,
    radius_tol: float | None = None,
    bound: str = "union",
    progress: bool = False,
    input_range: tuple[float, float] | None = PIXEL_RANGE,
) -> Certificate | sequential.SequentialCertificate:
    """CERTIFY / T-CERTIFY of the Gaussian-smoothed `logits_fn` at every image of x.

    Args:
      key: root key of the certification; each example's noise comes from (key, its index).
      logits_fn: base classifier, logits_fn(x) -> (B, K) logits, or logits_fn(params, x) when
        `params` is given (preferred: params are then traced, not compiled in).
      x: (B, H, W, C) float images in [0,1]; sigma is in these units. Images outside [0, 1] (0..255
        pixels, already normalised) are refused; input_range=None lifts that for non-image inputs.
      sigma, n0, n, alpha: noise level, selection draws, estimation draws, failure probability.
      num_classes: K, at least the number of the model's outputs.
      method, alpha_split, split_grid: see `certify_from_counts`.
      chunk_size: noise samples per example per device step (memory: batch_size * chunk_size inputs).
      batch_size: examples per device call.
      idx: (B,) global indices of the examples (default 0..B-1): pass dataset indices so that a
        subset or a resumed run draws the same noise as a full run.
      mesh: device mesh for the example batch (default: all devices).
      sampling: "fixed" (n estimation draws per example) or "sequential": rsjax.sequential, which
        stops each example once `radii` (or `radius_tol`) is decided, at most n_max draws, with the
        same 1 - alpha guarantee; `bound` picks its confidence sequence. CERTIFY only (method="cohen").
      progress: a progress line on stderr (images done, noise samples/s, time left); default quiet.

    Returns:
      Certificate per example (sampling="fixed"; see `certify_from_counts` for the guarantee), or a
      sequential.SequentialCertificate of arrays with num_samples per example (sampling="sequential").
    Raises:
      rsjax.votes.NonFiniteLogitsError: the classifier gave NaN or infinite logits on some draws
        (no certificate is returned for any example of the call).
      ValueError / TypeError: invalid arguments or images (see `check_images`).
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if sampling == "sequential":
        if n is not None:
            raise ValueError("sequential sampling draws up to n_max: give n_max=..., not n")
        if method != "cohen":
            raise ValueError(
                f"sequential sampling implements CERTIFY (method='cohen'), not {method!r}"
            )
        if n_max is None:
            raise ValueError(
                "sequential sampling needs n_max, the most estimation draws per example"
            )
        plan = sequential.make_plan(
            sigma=sigma,
            alpha=alpha,
            n0=n0,
            n_max=n_max,
            radii=radii,
            radius_tol=radius_tol,
            bound=bound,
        )
        batch_size = check_batch_size(batch_size)
        x = check_images(x, input_range)
        idx = votes.check_indices(np.arange(x.shape[0]) if idx is None else idx, x.shape[0])
        apply_fn, params = _as_apply(logits_fn, params)
        return sequential.run_slots(
            key,
            apply_fn,
            params,
            x,
            idx,
            plan,
            num_classes=int(num_classes),
            chunk_size=chunk_size,
            batch_size=batch_size,
            mesh=mesh,
            on_stop=_sequential_progress(x.shape[0]) if progress else None,
        )
    if n is None:
        raise ValueError("fixed sampling needs n, the estimation draws per example")
    if n_max is not None or radii is not None or radius_tol is not None:
        raise ValueError("n_max, radii and radius_tol belong to sampling='sequential'")
    n0 = check_samples("n0", n0)
    n = check_samples("n", n)
    counts = _count_streams(
        key,
        logits_fn,
        x,
        sigma=sigma,
        alpha=alpha,
        draws={votes.SELECTION: n0, votes.ESTIMATION: n},
        num_classes=num_classes,
        chunk_size=chunk_size,
        batch_size=batch_size,
        params=params,
        idx=idx,
        mesh=mesh,
        progress_desc="certify" if progress else None,
        input_range=input_range,
    )
    counts0, counts = counts[votes.SELECTION], counts[votes.ESTIMATION]
    return certify_from_counts(
        counts0,
        counts,
        sigma=sigma,
        alpha=alpha,
        method=method,
        alpha_split=alpha_split,
        split_grid=split_grid,
    )


def predict(
    key: jax.Array,
    logits_fn: Callable[..., jax.Array],
    x: ArrayLike,
    *,
    sigma: float,
    n: int,
    alpha: float,
    num_classes: int,
    chunk_size: int | None = None,
    batch_size: int = 8,
    params: Any = None,
    idx: ArrayLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    input_range: tuple[float, float] | None = PIXEL_RANGE,
) -> Prediction:
    """PREDICT with the Gaussian-smoothed `logits_fn` at every image of x (arguments as `certify`).

    Uses the estimation stream of each example's key. Guarantee: a non-abstaining answer differs from
    the smoothed classifier's class with probability <= alpha.
    """
    counts = _count_streams(
        key,
        logits_fn,
        x,
        sigma=sigma,
        alpha=alpha,
        draws={votes.ESTIMATION: check_samples("n", n)},
        num_classes=num_classes,
        chunk_size=chunk_size,
        batch_size=batch_size,
        params=params,
        idx=idx,
        mesh=mesh,
        progress_desc="predict" if progress else None,
        input_range=input_range,
    )[votes.ESTIMATION]
    return predict_from_counts(counts, alpha=alpha)


def _sequential_progress(total: int):
    """An on_stop callback for sequential.run_slots that updates a progress line per stopped image."""
    bar = Progress(total, "certify", unit="img")
    t_start = time.perf_counter()
    used = stopped = 0

    def on_stop(position, cert, seconds):
        nonlocal used, stopped
        used, stopped = used + cert.num_samples, stopped + 1
        rate = used / (time.perf_counter() - t_start)
        bar.update(1, extra=f"{rate:,.0f} noise samples/s, {used / stopped:,.0f} per img")

    return on_stop


def never_certifies(n: int, alpha: float) -> bool:
    """True when n draws cannot certify at alpha for any outcome (n <= log2(1/alpha))."""
    return n <= math.log2(1.0 / alpha)
