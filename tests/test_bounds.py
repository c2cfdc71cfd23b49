"""Tests for rsjax.bounds: the oracle table of REFERENCE section 1, Clopper-Pearson against scipy.stats.beta
and statsmodels, exact coverage by summing the binomial pmf, monotonicity, the largest certifiable
radius, NeverCertifiesWarning and the PREDICT p-value against scipy.stats.binomtest.

Also the beta-binomial mixture confidence sequence against its definition: its ends are where the log
wealth crosses log(1/alpha) (scipy's root finder on the closed form, and the mixture integral by
quadrature), with the prior from the selection counts alone.

Everything here is deterministic (closed forms and exact sums); nothing is simulated.
"""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate, optimize, special, stats
from statsmodels.stats.proportion import proportion_confint

from rsjax import bounds
from rsjax.certify import never_certifies

# REFERENCE section 1: nA, n, alpha, sigma, pA_low (6 decimals), radius (4 decimals, None = abstain).
ORACLE = [
    (10000, 10000, 1e-3, 0.25, 0.999309, 0.7996),
    (100000, 100000, 1e-3, 0.25, 0.999931, 0.9529),
    (9000, 10000, 1e-3, 0.25, 0.890410, 0.3072),
    (99000, 100000, 1e-3, 0.50, 0.988989, 1.1450),
    (60000, 100000, 1e-3, 1.00, 0.595201, 0.2409),
    (5100, 10000, 1e-3, 0.25, 0.494499, None),
]

# (n, k) pairs covering n = 1, tiny and large n, and the edges k = 0 and k = n.
GRID_N = [1, 2, 3, 10, 57, 1000, 100000]
GRID = [(n, k) for n in GRID_N for k in sorted({0, 1, n // 3, n // 2, n - 1, n})]
ALPHAS = [1e-9, 1e-6, 1e-3, 0.05, 0.25, 0.4999]


@pytest.mark.parametrize("na, n, alpha, sigma, pa_low, r", ORACLE)
def test_oracle_table(na, n, alpha, sigma, pa_low, r):
    lower = bounds.clopper_pearson_lower(na, n, alpha)
    assert lower.dtype == np.float64
    assert round(float(lower), 6) == pytest.approx(pa_low, abs=1e-12)
    if r is None:
        assert lower <= 0.5
    else:
        assert round(float(bounds.radius(sigma, lower)), 4) == pytest.approx(r, abs=1e-12)


def test_oracle_table_vectorised():
    """The whole table as one broadcast call gives the same numbers as one call per row."""
    na, n, alpha, sigma, pa_low, _ = (np.array(col) for col in zip(*ORACLE, strict=True))
    lower = bounds.clopper_pearson_lower(na, n, alpha)
    assert lower.shape == (len(ORACLE),)
    np.testing.assert_allclose(lower, pa_low, atol=5e-7)
    radii = bounds.radius(sigma.astype(float), lower)
    for row, radius in zip(ORACLE, radii, strict=True):
        if row[-1] is not None:
            assert radius == pytest.approx(row[-1], abs=5e-5)


def test_predict_pvalues():
    assert bounds.binomial_pvalue_two_sided(510, 490) == pytest.approx(0.548, abs=5e-4)
    assert bounds.binomial_pvalue_two_sided(510, 490) > 1e-3  # PREDICT abstains at alpha = 0.001
    assert bounds.binomial_pvalue_two_sided(600, 400) == pytest.approx(2.73e-10, rel=2e-3)


@pytest.mark.parametrize("n, k", GRID)
def test_clopper_pearson_against_scipy_beta(n, k):
    alpha = np.array(ALPHAS)
    lower = bounds.clopper_pearson_lower(k, n, alpha)
    upper = bounds.clopper_pearson_upper(k, n, alpha)
    want_lower = np.zeros_like(alpha) if k == 0 else stats.beta.ppf(alpha, k, n - k + 1)
    want_upper = np.ones_like(alpha) if k == n else stats.beta.ppf(1 - alpha, k + 1, n - k)
    # rtol: beta.ppf(1 - alpha) itself loses ~1e-9 relative accuracy at alpha = 1e-9 (1 - alpha rounds).
    np.testing.assert_allclose(lower, want_lower, rtol=1e-8, atol=0)
    np.testing.assert_allclose(upper, want_upper, rtol=1e-8, atol=0)
    if k == 0:
        assert np.all(lower == 0.0)
    if k == n:
        assert np.all(upper == 1.0)


@pytest.mark.parametrize("n, k", GRID)
def test_clopper_pearson_against_statsmodels(n, k):
    """The one-sided (1 - alpha) bounds are the ends of the two-sided (1 - 2 alpha) "beta" interval."""
    for alpha in ALPHAS:
        want_lower, want_upper = proportion_confint(k, n, alpha=2 * alpha, method="beta")
        assert bounds.clopper_pearson_lower(k, n, alpha) == pytest.approx(want_lower, rel=1e-12)
        assert bounds.clopper_pearson_upper(k, n, alpha) == pytest.approx(want_upper, rel=1e-12)


def test_all_on_one_class_closed_form():
    """k = n gives lower = alpha^(1/n); k = 0 gives upper = 1 - alpha^(1/n)."""
    for n in [1, 7, 10000]:
        for alpha in [1e-3, 0.05]:
            assert bounds.clopper_pearson_lower(n, n, alpha) == pytest.approx(
                alpha ** (1 / n), 1e-12
            )
            assert bounds.clopper_pearson_upper(0, n, alpha) == pytest.approx(
                1 - alpha ** (1 / n), rel=1e-10
            )


@pytest.mark.parametrize("n", [1, 5, 30, 200])
@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3])
def test_exact_coverage(n, alpha):
    """P(lower <= p) >= 1 - alpha and P(upper >= p) >= 1 - alpha, summed exactly over k ~ Bin(n, p)."""
    k = np.arange(n + 1)
    lower = bounds.clopper_pearson_lower(k, n, alpha)
    upper = bounds.clopper_pearson_upper(k, n, alpha)
    # Coverage is lowest just below a lower bound (just above an upper bound): probe there too.
    probes = np.unique(np.clip(np.r_[np.linspace(0, 1, 101), lower - 1e-9, upper + 1e-9], 0, 1))
    for p in probes:
        pmf = stats.binom.pmf(k, n, p)
        assert pmf[lower <= p].sum() >= 1 - alpha - 1e-9, p
        assert pmf[upper >= p].sum() >= 1 - alpha - 1e-9, p
    # ... and the bounds are exact, not merely conservative: coverage reaches 1 - alpha there.
    worst_lower = min(stats.binom.pmf(k, n, p)[lower <= p].sum() for p in lower[1:] - 1e-9)
    worst_upper = min(stats.binom.pmf(k, n, p)[upper >= p].sum() for p in upper[:-1] + 1e-9)
    assert worst_lower == pytest.approx(1 - alpha, abs=1e-6)
    assert worst_upper == pytest.approx(1 - alpha, abs=1e-6)


def test_monotone_and_ordered():
    n = 500
    k = np.arange(n + 1)
    for alpha in [1e-6, 1e-3, 0.1]:
        lower = bounds.clopper_pearson_lower(k, n, alpha)
        upper = bounds.clopper_pearson_upper(k, n, alpha)
        assert np.all(np.diff(lower) > 0) and np.all(np.diff(upper) > 0)  # strictly increasing in k
        assert np.all(lower < upper)
        inner = slice(1, n)
        assert np.all(lower[inner] < k[inner] / n) and np.all(k[inner] / n < upper[inner])
        # Symmetry: the upper bound of k is one minus the lower bound of n - k.
        np.testing.assert_allclose(upper, 1 - lower[::-1], rtol=0, atol=1e-12)
    # More confidence (smaller alpha) widens the interval.
    alphas = np.array([1e-9, 1e-6, 1e-3, 0.01, 0.1, 0.4])
    assert np.all(np.diff(bounds.clopper_pearson_lower(300, n, alphas)) > 0)
    assert np.all(np.diff(bounds.clopper_pearson_upper(300, n, alphas)) < 0)
    # More samples at the same frequency tighten it.
    ns = np.array([10, 100, 1000, 10000, 100000])
    lower_n = bounds.clopper_pearson_lower(ns * 9 // 10, ns, 1e-3)
    upper_n = bounds.clopper_pearson_upper(ns * 9 // 10, ns, 1e-3)
    assert np.all(np.diff(lower_n) > 0) and np.all(np.diff(upper_n) < 0)
    # Fixed k, more trials: the lower bound falls.
    assert np.all(
        np.diff(bounds.clopper_pearson_lower(50, np.array([50, 60, 100, 1000]), 0.01)) < 0
    )


def test_broadcasting_shapes():
    k = np.array([[0, 3, 10], [1, 5, 9]])
    n = np.array([[10], [10]])
    alpha = np.array([1e-3, 0.01, 0.1])
    lower = bounds.clopper_pearson_lower(k, n, alpha)
    upper = bounds.clopper_pearson_upper(k, n, alpha)
    assert lower.shape == upper.shape == (2, 3)
    for (i, j), value in np.ndenumerate(lower):
        assert value == bounds.clopper_pearson_lower(k[i, j], 10, alpha[j])
        assert upper[i, j] == bounds.clopper_pearson_upper(k[i, j], 10, alpha[j])


def test_count_validation():
    with pytest.raises(TypeError, match="integer"):
        bounds.clopper_pearson_lower(3.0, 10, 0.01)
    with pytest.raises(TypeError, match="integer"):
        bounds.clopper_pearson_upper(3, np.float64(10), 0.01)
    with pytest.raises(ValueError, match="n must be >= 1"):
        bounds.clopper_pearson_lower(0, 0, 0.01)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        bounds.clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        bounds.clopper_pearson_upper(np.array([1, -1]), 10, 0.01)


def test_check_alpha_and_sigma():
    for ok in [1e-12, 0.001, 0.5, 0.999]:
        assert bounds.check_alpha(ok) == ok
    for bad in [0, 1, -0.1, 1.5, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="alpha must lie strictly between 0 and 1"):
            bounds.check_alpha(bad)
    with pytest.raises(ValueError, match="alpha_b must lie"):
        bounds.check_alpha(2.0, name="alpha_b")
    assert bounds.check_sigma(0.25) == 0.25
    for bad in [0, -0.25, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
            bounds.check_sigma(bad)


def test_radius_formulas():
    pa = np.array([0.6, 0.9, 0.999])
    np.testing.assert_allclose(bounds.radius(0.5, pa), 0.5 * stats.norm.ppf(pa), rtol=1e-14)
    # pB_upper = 1 - pA_lower is Cohen's radius again.
    np.testing.assert_allclose(bounds.radius(0.5, pa, 1 - pa), bounds.radius(0.5, pa), rtol=1e-12)
    # A runner-up far below 1 - pA gives a larger radius (T-CERTIFY's gain).
    pb = np.array([0.01, 0.01, 0.0001])
    want = 0.25 * (stats.norm.ppf(pa) - stats.norm.ppf(pb))
    np.testing.assert_allclose(bounds.radius(0.5, pa, pb), want, rtol=1e-14)
    assert np.all(bounds.radius(0.5, pa, pb) > bounds.radius(0.5, pa))
    assert bounds.radius(1.0, 0.5) == 0.0


@pytest.mark.parametrize("n, per_sigma", [(10**4, 3.199), (10**5, 3.811)])
def test_max_certifiable_radius(n, per_sigma):
    for sigma in [0.25, 1.0]:
        r = bounds.max_certifiable_radius(sigma, n, 1e-3)
        assert isinstance(r, float)
        assert r / sigma == pytest.approx(per_sigma, abs=5e-4)
        # It is the radius of the best possible outcome, n votes out of n.
        best = bounds.radius(sigma, bounds.clopper_pearson_lower(n, n, 1e-3))
        assert r == pytest.approx(float(best), rel=1e-10)


def _warns(n, alpha):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        returned = bounds.warn_if_never_certifies(n, alpha)
    hits = [w for w in caught if issubclass(w.category, bounds.NeverCertifiesWarning)]
    assert returned == bool(hits)
    return returned


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.1, 1 / 8, 1e-3, 2.0**-20, 1e-9])
def test_never_certifies_warning_threshold(alpha):
    """Warns exactly for n <= log2(1/alpha), including the boundary alpha^(1/n) = 1/2."""
    limit = math.log2(1 / alpha)
    for n in range(1, int(limit) + 4):
        expected = n <= limit
        assert _warns(n, alpha) == expected, (n, alpha)
        assert never_certifies(n, alpha) == expected
        if not expected:
            # Where no warning is given, all n votes on one class really do certify.
            assert bounds.clopper_pearson_lower(n, n, alpha) > 0.5


def test_never_certifies_warning_message():
    with pytest.warns(bounds.NeverCertifiesWarning, match=r"n = 9 .* alpha = 0.001"):
        assert bounds.warn_if_never_certifies(9, 1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        assert not bounds.warn_if_never_certifies(10, 1e-3)
        assert not bounds.warn_if_never_certifies(100000, 1e-3)


def test_binomial_pvalue_against_scipy():
    pairs = [(0, 0), (0, 1), (1, 0), (0, 7), (3, 3), (5, 2), (50, 31), (510, 490), (4999, 5001)]
    na = np.array([a for a, _ in pairs])
    nb = np.array([b for _, b in pairs])
    pvalues = bounds.binomial_pvalue_two_sided(na, nb)
    assert pvalues.shape == (len(pairs),) and pvalues.dtype == np.float64
    for (a, b), p in zip(pairs, pvalues, strict=True):
        want = 1.0 if a + b == 0 else stats.binomtest(a, a + b, 0.5).pvalue
        assert p == pytest.approx(want, rel=1e-12), (a, b)
    # Symmetric in the two counts, and broadcasting works.
    np.testing.assert_array_equal(pvalues, bounds.binomial_pvalue_two_sided(nb, na))
    grid = bounds.binomial_pvalue_two_sided(np.array([[10], [20]]), np.array([1, 5, 10]))
    assert grid.shape == (2, 3)
    assert grid[1, 2] == pytest.approx(stats.binomtest(20, 30, 0.5).pvalue, rel=1e-12)


def test_mixture_bounds_contain_the_estimate_and_are_wider_than_one_look_clopper_pearson():
    """That they hold at every look at once is tests/test_sequential.py::test_coverage with
    bound "mixture"."""
    k = np.array([0, 3, 50, 99, 100])
    lower, upper = bounds.mixture_bounds(k, 100, 0.05, k0=np.array([0, 5, 50, 95, 100]), n0=100)
    assert np.all(lower <= k / 100) and np.all(upper >= k / 100)
    assert lower[0] == 0 and upper[-1] == 1
    # Wider than Clopper-Pearson at a single look at the same level (it holds at every n).
    cp = bounds.clopper_pearson_lower(k[1:], 100, 0.05)
    assert np.all(lower[1:] <= cp + 1e-12)


# --------------------------------------------------------------------------------------------------
# The mixture confidence sequence against its definition


def _log_wealth(p, k, n, k0, n0):
    """log M_n(p) = log of the integral over q ~ Beta(k0 + 1/2, n0 - k0 + 1/2) of the likelihood
    ratio (q / p)^k ((1 - q) / (1 - p))^(n - k), in closed form (scipy.special.betaln)."""
    a, b = k0 + 0.5, n0 - k0 + 0.5
    return (
        special.betaln(a + k, b + n - k)
        - special.betaln(a, b)
        - special.xlogy(k, p)
        - special.xlog1py(n - k, -p)
    )


def _wealth_by_quadrature(p, k, n, k0, n0):
    """M_n(p) as the mixture integral itself, evaluated numerically (scipy.integrate.quad)."""
    prior = stats.beta(k0 + 0.5, n0 - k0 + 0.5)

    def ratio(q):
        return math.exp(
            k * (math.log(q) - math.log(p)) + (n - k) * (math.log1p(-q) - math.log1p(-p))
        ) * prior.pdf(q)

    points = [k / n] if 0 < k < n else None
    return integrate.quad(ratio, 0, 1, points=points, limit=200, epsabs=0, epsrel=1e-10)[0]


MIXTURE_CASES = [
    # k, n, k0, n0, alpha
    (97, 100, 95, 100, 0.05),
    (180, 200, 40, 100, 0.001),
    (520, 1000, 55, 100, 0.1),
    (9990, 10000, 100, 100, 0.001),
    (30, 400, 2, 50, 0.2),
]


@pytest.mark.parametrize("k, n, k0, n0, alpha", MIXTURE_CASES)
def test_mixture_ends_are_where_the_log_wealth_crosses_log_one_over_alpha(k, n, k0, n0, alpha):
    """Each returned end is where log M_n(p) crosses log(1/alpha), on its outer side (conservative),
    found here by scipy.optimize.brentq on the closed form; the closed form is itself checked against
    the mixture integral at both ends. A sequence at 2 alpha (log(1/alpha) - 0.69), with its prior
    centred on the estimation counts, or with another prior spread, moves the ends far beyond 1e-9."""
    lower, upper = bounds.mixture_bounds(k, n, alpha, k0, n0)
    level = math.log(1 / alpha)
    p_hat = k / n

    def excess(p):
        return _log_wealth(p, k, n, k0, n0) - level

    want_lower = optimize.brentq(excess, 1e-300, p_hat, xtol=1e-15, rtol=1e-15)
    want_upper = optimize.brentq(excess, p_hat, 1 - 1e-16, xtol=1e-15, rtol=1e-15)
    assert float(lower) == pytest.approx(want_lower, rel=1e-9, abs=1e-12)
    assert float(upper) == pytest.approx(want_upper, rel=1e-9, abs=1e-12)
    # Outer side: p at the returned end is (just) outside the set {p : M_n(p) < 1/alpha}.
    assert excess(float(lower)) >= -1e-9 and excess(float(upper)) >= -1e-9
    assert lower < p_hat < upper
    for end in (float(lower), float(upper)):
        assert _wealth_by_quadrature(end, k, n, k0, n0) == pytest.approx(1 / alpha, rel=1e-6)


def test_mixture_prior_is_the_selection_counts_alone():
    """The prior is Beta(k0 + 1/2, n0 - k0 + 1/2), fixed by the selection counts: for one k0 and every
    estimation count k the ends are the crossings of that prior's log wealth (one broadcast call), and
    the same estimation counts with another k0 give other ends."""
    k = np.arange(0, 501, 25)
    n, k0, n0, alpha = 500, 70, 100, 0.01
    lower, upper = bounds.mixture_bounds(k, n, alpha, k0, n0)
    level = math.log(1 / alpha)
    for kk, lo, up in zip(k, lower, upper, strict=True):
        p_hat = kk / n
        if kk == 0:
            assert lo == 0.0
        else:
            assert _log_wealth(lo, kk, n, k0, n0) >= level - 1e-9
            assert _log_wealth(min(lo * (1 + 1e-7), p_hat), kk, n, k0, n0) < level or lo == p_hat
        if kk == n:
            assert up == 1.0
        else:
            assert _log_wealth(up, kk, n, k0, n0) >= level - 1e-9
    other, _ = bounds.mixture_bounds(k, n, alpha, 20, n0)
    assert np.all(other[1:] != lower[1:])
    lower_only, none = bounds.mixture_bounds(k, n, alpha, k0, n0, lower_only=True)
    assert none is None
    np.testing.assert_array_equal(lower_only, lower)
