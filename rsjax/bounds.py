"""Exact binomial confidence bounds and the randomized-smoothing radius, on the host in float64.

Clopper-Pearson bounds hold at one pre-set n; `mixture_bounds` (a beta-binomial mixture confidence
sequence) holds at every n at once, for sequential certification (rsjax.sequential).

Everything here is numpy/scipy over count arrays of any shape (broadcasting), so that one call bounds a
whole batch of examples. Nothing here runs on the accelerator: the statistics must be float64.

References: Clopper & Pearson (1934); Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via
Randomized Smoothing", ICML 2019; Robbins, Ann. Math. Statist. 1970, and Howard, Ramdas, McAuliffe &
Sekhon, Ann. Statist. 2021 (the mixture confidence sequence); rsjax REFERENCE sections 1 and 2.
"""

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike
from scipy import special, stats


class NeverCertifiesWarning(UserWarning):
    """n is so small that no outcome can certify at this alpha (alpha^(1/n) <= 1/2)."""


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """Returns alpha as a float, or raises ValueError unless 0 < alpha < 1."""
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0 or math.isnan(alpha):
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {alpha}")
    return alpha


def check_sigma(sigma: float) -> float:
    """Returns sigma as a float, or raises ValueError unless sigma > 0 and finite."""
    sigma = float(sigma)
    if not (sigma > 0.0 and math.isfinite(sigma)):
        raise ValueError(
            f"sigma must be a finite number > 0 (noise std in [0,1] pixel units), got {sigma}"
        )
    return sigma


def _check_counts(k, n):
    k = np.asarray(k)
    n = np.asarray(n)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise TypeError(f"counts must be integer arrays, got dtypes {k.dtype} and {n.dtype}")
    if np.any(n < 1):
        raise ValueError("the number of samples n must be >= 1")
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("counts must satisfy 0 <= k <= n")
    return k.astype(np.float64), n.astype(np.float64)


def clopper_pearson_lower(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower confidence bound on p from k successes in n.

    lower = Beta.ppf(alpha; k, n - k + 1), and 0 when k = 0. With probability >= 1 - alpha over
    k ~ Binomial(n, p), lower <= p.

    Args:
      k: integer array of successes, any shape.
      n: integer array (broadcasting with k) of trials, n >= 1.
      alpha: significance level in (0, 1); an array broadcasting with k is allowed.

    Returns:
      float64 array of lower bounds, the broadcast shape of k, n and alpha.
    """
    k, n = _check_counts(k, n)
    alpha = np.asarray(alpha, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lower = stats.beta.ppf(alpha, np.maximum(k, 1.0), n - k + 1.0)
    return np.where(k == 0, 0.0, lower)


def clopper_pearson_upper(k: ArrayLike, n: ArrayLike, alpha: ArrayLike) -> np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper confidence bound on p from k successes in n.

    upper = Beta.ppf(1 - alpha; k + 1, n - k), and 1 when k = n. With probability >= 1 - alpha over
    k ~ Binomial(n, p), upper >= p.

    Args and returns as `clopper_pearson_lower`.
    """
    k, n = _check_counts(k, n)
    alpha = np.asarray(alpha, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        upper = stats.beta.isf(alpha, k + 1.0, np.maximum(n - k, 1.0))
    return np.where(k == n, 1.0, upper)


def radius(
    sigma: ArrayLike, pa_lower: ArrayLike, pb_upper: ArrayLike | None = None
) -> np.ndarray | float:
    """Certified l2 radius R = sigma/2 * (Phi^-1(pA_lower) - Phi^-1(pB_upper)).

    With pb_upper = None this is Cohen's R = sigma * Phi^-1(pA_lower) (pB_upper = 1 - pA_lower).
    Returns float64 of the broadcast shape (a numpy float64 scalar when every input is a scalar); the
    caller decides abstention (R is meaningless unless pA_lower > pB_upper).
    """
    pa_lower = np.asarray(pa_lower, dtype=np.float64)
    if pb_upper is None:
        return sigma * stats.norm.ppf(pa_lower)
    pb_upper = np.asarray(pb_upper, dtype=np.float64)
    return 0.5 * sigma * (stats.norm.ppf(pa_lower) - stats.norm.ppf(pb_upper))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius any run with n samples can certify: sigma * Phi^-1(alpha^(1/n)).

    For alpha = 0.001: n = 1e4 gives 3.199 sigma, n = 1e5 gives 3.811 sigma.
    """
    return float(sigma * stats.norm.ppf(alpha ** (1.0 / n)))


def warn_if_never_certifies(n: int, alpha: float, *, stacklevel: int = 3) -> bool:
    """Warns (NeverCertifiesWarning) and returns True when n samples can never certify at alpha.

    The best possible lower bound, all n samples on one class, is alpha^(1/n); certification needs it
    above 1/2, which fails whenever n <= log2(1/alpha).
    """
    if alpha ** (1.0 / n) <= 0.5:
        warnings.warn(
            f"n = {n} noise samples can never certify at alpha = {alpha}: even n out of n votes gives "
            f"a lower bound of alpha^(1/n) = {alpha ** (1.0 / n):.4f} <= 1/2. "
            f"Use n > log2(1/alpha) = {math.log2(1 / alpha):.1f}.",
            NeverCertifiesWarning,
            stacklevel=stacklevel,
        )
        return True
    return False


def binomial_pvalue_two_sided(na: ArrayLike, nb: ArrayLike) -> np.ndarray:
    """Two-sided binomial-test p-value of na successes in na + nb trials at p = 1/2.

    Uses scipy.stats.binomtest, one example at a time (PREDICT needs it once per example, so this is
    never a bottleneck). Returns a float64 array of the broadcast shape, 1.0 where na + nb = 0.
    """
    na, nb = np.broadcast_arrays(np.asarray(na), np.asarray(nb))
    out = np.ones(na.shape, dtype=np.float64)
    for index in np.ndindex(out.shape):
        a, b = int(na[index]), int(nb[index])
        if a + b > 0:
            out[index] = stats.binomtest(a, a + b, 0.5).pvalue
    return out


def _mixture_log_m(p, k, n, log_marginal):
    """log M_n(p) of the beta-binomial mixture martingale (mixture_bounds); log_marginal is
    log B(a + k, b + n - k) - log B(a, b), which does not depend on p."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return log_marginal - special.xlogy(k, p) - special.xlog1py(n - k, -p)


def _bisect(f, out, inn, iterations):
    """Bisection on a bracket [out, inn] with f(out) False and f(inn) True; returns the outer end."""
    for _ in range(iterations):
        mid = 0.5 * (out + inn)
        ok = f(mid)
        out, inn = np.where(ok, out, mid), np.where(ok, mid, inn)
    return out


def mixture_bounds(
    k: ArrayLike,
    n: ArrayLike,
    alpha: float,
    k0: ArrayLike,
    n0: ArrayLike,
    iterations: int = 60,
    lower_only: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The beta-binomial mixture confidence interval {p : M_n(p) < 1/alpha} (two-sided, so each end
    holds at level alpha at every n at once), prior Beta(k0 + 1/2, n0 - k0 + 1/2).

    Under p, M_n(p) = B(a + k, b + n - k) / B(a, b) / (p^k (1 - p)^(n - k)) with a, b the prior's
    parameters is a nonnegative martingale in n with M_0 = 1, so by Ville's inequality
    P(exists n: M_n(p) >= 1/alpha) <= alpha: the interval holds at every n at once (a confidence
    sequence), however the n at which it is read was chosen. The prior must be fixed before the k
    draws: in sequential CERTIFY k0, n0 are the selection draws, independent of the estimation draws.

    Bisection keeps the outer end of each bracket, so both ends are conservative. Returns (lower,
    upper), float64 arrays of the broadcast shape (upper is None with lower_only).
    """
    k, n, k0 = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (k, n, k0)))
    a, b = k0 + 0.5, n0 - k0 + 0.5
    level = math.log(1.0 / alpha)
    p_hat = k / n
    log_marginal = special.betaln(a + k, b + n - k) - special.betaln(a, b)
    inside = _mixture_log_m(p_hat, k, n, log_marginal) < level

    def ok(p):
        return _mixture_log_m(p, k, n, log_marginal) < level

    # log M decreases on (0, p_hat] and increases on [p_hat, 1).
    lower = np.where(k == 0, 0.0, _bisect(ok, np.zeros_like(p_hat), p_hat, iterations))
    # An empty set (an event of probability <= alpha) says nothing: report the point estimate.
    lower = np.where(inside, lower, p_hat)
    if lower_only:
        return lower, None
    upper = np.where(k == n, 1.0, _bisect(ok, np.ones_like(p_hat), p_hat, iterations))
    return lower, np.where(inside, upper, p_hat)
