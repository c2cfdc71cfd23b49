"""Tests for rsjax.certify: CERTIFY, T-CERTIFY and PREDICT.

1. Oracles: the REFERENCE section 1 table through certify_from_counts, PREDICT on the reference
   p-values, and a per-row naive reference implementation (scipy.stats.beta directly) of T-CERTIFY.
2. Coverage by simulation (REFERENCE section 6): for known multinomial p, many independent runs with
   counts0 ~ Mult(n0, p) and counts ~ Mult(n, p); a run fails when it returns a class other than
   argmax p, or a radius above the true radius sigma/2 (Phi^-1(pA) - Phi^-1(max_{c != A} p_c)) (on an
   exact tie g is undefined and the true radius is 0, so any certificate fails). The failure rate must
   stay within alpha plus a binomial tail. The tests can fail: an invalid procedure that reuses the
   selection draws for estimation is caught, and a near-tight case shows failures are visible.
3. T-CERTIFY versus CERTIFY on spread and on concentrated mass.
4. A linear base classifier through the real device path rsjax.certify / rsjax.predict: the smoothed
   classifier's exact radius is the margin |w.x + b| / ||w||.
5. Input validation.

Every simulation uses a fixed numpy seed, so the suite is deterministic; the failure probabilities
stated below are over the choice of seed.
"""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import rsjax
from rsjax import ABSTAIN, bounds, certify_from_counts, predict_from_counts
from rsjax.certify import DEFAULT_SPLIT_GRID

# --------------------------------------------------------------------------------------------------
# 1. Oracles


@pytest.mark.parametrize(
    "na, n, sigma, pa_low, r",
    [
        (10000, 10000, 0.25, 0.999309, 0.7996),
        (100000, 100000, 0.25, 0.999931, 0.9529),
        (9000, 10000, 0.25, 0.890410, 0.3072),
        (99000, 100000, 0.50, 0.988989, 1.1450),
        (60000, 100000, 1.00, 0.595201, 0.2409),
        (5100, 10000, 0.25, 0.494499, None),
    ],
)
def test_oracle_table_through_certify_from_counts(na, n, sigma, pa_low, r):
    counts0 = np.array([[0, 7, 3]])  # selects class 1
    counts = np.array([[n - na, na, 0]])
    for method in ["cohen", "tcertify"]:
        cert = certify_from_counts(counts0, counts, sigma=sigma, alpha=1e-3, method=method)
        if method == "cohen":
            assert round(float(cert.pa_lower[0]), 6) == pytest.approx(pa_low, abs=1e-12)
        if r is None:
            assert cert.prediction[0] == ABSTAIN and cert.radius[0] == 0.0
        else:
            assert cert.prediction[0] == 1
            if method == "cohen":
                assert round(float(cert.radius[0]), 4) == pytest.approx(r, abs=1e-12)
            else:
                # All the runner-up mass is on one class: T-CERTIFY cannot beat CERTIFY by much.
                assert cert.radius[0] == pytest.approx(r, abs=0.02)
    assert cert.prediction.dtype == np.int64 and cert.radius.dtype == np.float64


def test_predict_from_counts_reference_values():
    pred = predict_from_counts(
        np.array([[510, 490], [490, 510], [400, 600], [600, 400]]), alpha=1e-3
    )
    np.testing.assert_array_equal(pred.prediction, [ABSTAIN, ABSTAIN, 1, 0])
    np.testing.assert_allclose(pred.pvalue, [0.548, 0.548, 2.73e-10, 2.73e-10], rtol=2e-3)
    # The top two counts are used wherever they are, with the rest of the mass ignored.
    pred = predict_from_counts(np.array([[5, 600, 0, 400], [300, 0, 310, 20]]), alpha=1e-3)
    np.testing.assert_array_equal(pred.prediction, [1, ABSTAIN])
    assert pred.pvalue[0] == pytest.approx(stats.binomtest(600, 1000, 0.5).pvalue, rel=1e-12)
    assert pred.pvalue[1] == pytest.approx(stats.binomtest(310, 610, 0.5).pvalue, rel=1e-12)
    # An exact tie between the top two is never significant.
    assert predict_from_counts(np.array([[50, 50, 0]]), alpha=0.5).prediction[0] == ABSTAIN


def _ref_two_sided(c, top, sigma, alpha_a, alpha_b):
    """Naive REFERENCE section 2 for one row: (radius or -inf, pA_lower, pB_upper)."""
    n = int(c.sum())
    k = len(c)
    na = int(c[top])
    pa_low = 0.0 if na == 0 else stats.beta.ppf(alpha_a, na, n - na + 1)
    pb_up = 1.0 - pa_low
    if alpha_b > 0:
        uppers = [
            1.0 if c[j] == n else stats.beta.ppf(1 - alpha_b / (k - 1), c[j] + 1, n - c[j])
            for j in range(k)
            if j != top
        ]
        pb_up = min(pb_up, max(uppers))
    if pa_low <= pb_up:
        return -np.inf, pa_low, pb_up
    return sigma / 2 * (stats.norm.ppf(pa_low) - stats.norm.ppf(pb_up)), pa_low, pb_up


def test_cohen_and_union_against_naive_reference():
    rng = np.random.default_rng(0)
    sigma, alpha = 0.5, 0.01
    ps = [np.r_[0.6, np.full(9, 0.4 / 9)], np.r_[0.45, 0.4, np.full(8, 0.15 / 8)], [0.8, 0.2]]
    for p in ps:
        counts0 = rng.multinomial(50, p, size=40)
        counts = rng.multinomial(2000, p, size=40)
        cohen = certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha)
        union = certify_from_counts(
            counts0, counts, sigma=sigma, alpha=alpha, method="tcertify", alpha_split="union"
        )
        share = alpha / len(DEFAULT_SPLIT_GRID)
        for i in range(len(counts)):
            top = int(np.argmax(counts0[i]))
            r, pa, pb = _ref_two_sided(counts[i], top, sigma, alpha, 0.0)
            assert cohen.pa_lower[i] == pytest.approx(pa, rel=1e-10)
            assert cohen.prediction[i] == (top if np.isfinite(r) else ABSTAIN)
            assert cohen.radius[i] == pytest.approx(r if np.isfinite(r) else 0.0, rel=1e-9)
            r_union = max(
                _ref_two_sided(counts[i], top, sigma, (1 - f) * share, f * share)[0]
                for f in DEFAULT_SPLIT_GRID
            )
            assert union.prediction[i] == (top if np.isfinite(r_union) else ABSTAIN)
            want = r_union if np.isfinite(r_union) else 0.0
            assert union.radius[i] == pytest.approx(want, rel=1e-9, abs=1e-12)


def _inferred_fraction(cert, counts, top, alpha, grid):
    """The split f of the grid whose pA_lower at (1 - f) alpha matches the certificate's."""
    n = counts.sum(axis=1)
    na = counts[np.arange(len(top)), top]
    candidates = np.stack([bounds.clopper_pearson_lower(na, n, (1 - f) * alpha) for f in grid], 1)
    match = np.isclose(candidates, cert.pa_lower[:, None], rtol=1e-12, atol=0)
    assert np.all(match.any(axis=1))
    return np.asarray(grid)[match.argmax(axis=1)]


def test_selection_split_depends_on_selection_counts_only():
    """T-CERTIFY "selection" picks alpha_B from counts0 alone (what keeps the full alpha valid): with
    counts0 fixed, the split is the same for every estimation outcome, and the answer is REFERENCE
    section 2 at that split. The estimation rows mix spread runner-up mass (where looking at them
    would favour alpha_B > 0) and two-class mass (where it would favour alpha_B = 0), so a split chosen
    on the estimation counts shows up here as two different splits."""
    rng = np.random.default_rng(1)
    sigma, alpha, grid = 0.5, 0.01, DEFAULT_SPLIT_GRID
    spread, two_class = np.r_[0.6, np.full(9, 0.4 / 9)], np.r_[0.6, 0.4, np.zeros(8)]
    for counts0_row in [
        [60, 5, 5, 4, 4, 4, 4, 5, 5, 4],
        [100, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [40, 30, 5, 5, 4, 4, 4, 4, 2, 2],
    ]:
        counts = np.r_[rng.multinomial(3000, spread, 30), rng.multinomial(3000, two_class, 30)]
        counts0 = np.tile(counts0_row, (60, 1))
        cert = certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha, method="tcertify")
        top = np.zeros(60, dtype=int)
        fraction = _inferred_fraction(cert, counts, top, alpha, grid)
        assert len(set(fraction.tolist())) == 1, fraction
        f = fraction[0]
        for i in range(60):
            r, pa, pb = _ref_two_sided(counts[i], 0, sigma, (1 - f) * alpha, f * alpha)
            assert cert.radius[i] == pytest.approx(r if np.isfinite(r) else 0.0, rel=1e-9)
            assert cert.pb_upper[i] == pytest.approx(pb, rel=1e-9)
        if counts0_row[1] == 5:
            assert f > 0  # spread selection counts do spend part of alpha on the runner-up


# --------------------------------------------------------------------------------------------------
# 2. Coverage by simulation (REFERENCE section 6)

ALPHA = 0.1  # large, so that the simulations have power
SIGMA = 0.5
# Per assertion: if the true failure probability is <= ALPHA, the observed number of failures exceeds
# binom.isf(FALSE_ALARM, R, ALPHA) with probability <= FALSE_ALARM (the binomial tail is monotone in
# p). With about 80 such assertions, the chance that a correct rsjax fails any of them is <= 1e-4.
# At R = 20,000 the allowance is alpha + 0.0105 (4.9 standard errors); at R = 5,000, alpha + 0.021.
FALSE_ALARM = 1e-6


def _spread(top, k):
    return np.r_[top, np.full(k - 1, (1 - top) / (k - 1))]


# name: (p, n0, n, runs). Concentrated, spread over many classes, near the abstain boundary, ties,
# K = 2, 3, 10 and 100, and small n where the discreteness of the binomial matters most.
CASES = {
    "tight_two_class": ([0.8, 0.2], 100, 1000, 20000),
    "concentrated_k10": (_spread(0.95, 10), 100, 1000, 20000),
    "spread_k10": (_spread(0.5, 10), 100, 1000, 20000),
    "spread_k100": (_spread(0.3, 100), 100, 1000, 5000),
    "boundary_two_class": ([0.52, 0.48], 100, 1000, 20000),
    "boundary_k10": (np.r_[0.5, 0.3, np.full(8, 0.025)], 100, 1000, 20000),
    "tie_two_class": ([0.5, 0.5], 100, 1000, 20000),
    "tie_k3": ([0.4, 0.4, 0.2], 100, 1000, 20000),
    "tie_spread_k10": (np.r_[0.3, 0.3, np.full(8, 0.05)], 100, 1000, 20000),
    "runner_up_k100": (np.r_[0.4, 0.2, np.full(98, 0.4 / 98)], 100, 1000, 5000),
    "small_n": ([0.9, 0.1], 10, 50, 20000),
}
METHODS = [("cohen", "selection"), ("tcertify", "selection"), ("tcertify", "union")]


@functools.lru_cache(maxsize=None)
def _draws(name):
    p, n0, n, runs = CASES[name]
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(sorted(CASES).index(name))
    counts0 = rng.multinomial(n0, p, size=runs)  # selection and estimation draws: independent
    counts = rng.multinomial(n, p, size=runs)
    return p, counts0, counts


def _truth(p, sigma):
    """(g(x), true radius); on an exact tie for the top the true radius is 0."""
    top = int(np.argmax(p))
    first, second = np.sort(p)[::-1][:2]
    if first == second:
        return top, 0.0
    return top, sigma / 2 * (stats.norm.ppf(first) - stats.norm.ppf(second))


def _failures(cert, p, sigma):
    top, true_radius = _truth(p, sigma)
    answered = cert.prediction != ABSTAIN
    return answered & ((cert.prediction != top) | (cert.radius > true_radius))


def _bound_failures(cert, p, counts0):
    """The bounds themselves: pA_lower > p[cA] or pB_upper < max_{c != cA} p_c, for the candidate cA
    chosen on the selection counts. Both hold together with probability >= 1 - alpha whatever cA is
    (and whether or not the run abstains); this is the stronger event behind the radius guarantee, and
    it is close to tight, so it gives the simulation more power than the radius criterion alone."""
    rows = np.arange(len(counts0))
    top = counts0.argmax(axis=1)
    probs = np.tile(p, (len(rows), 1))
    p_top = probs[rows, top]
    probs[rows, top] = -1.0
    return (cert.pa_lower > p_top) | (cert.pb_upper < probs.max(axis=1))


def _allowed(runs, alpha=ALPHA):
    return stats.binom.isf(FALSE_ALARM, runs, alpha)


@pytest.mark.parametrize("method, alpha_split", METHODS)
@pytest.mark.parametrize("name", list(CASES))
def test_certify_coverage(name, method, alpha_split):
    p, counts0, counts = _draws(name)
    cert = certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method=method, alpha_split=alpha_split
    )
    fails = int(_failures(cert, p, SIGMA).sum())
    assert fails <= _allowed(len(counts)), (name, fails / len(counts))
    bound_fails = int(_bound_failures(cert, p, counts0).sum())
    assert bound_fails <= _allowed(len(counts)), (name, bound_fails / len(counts))


def test_coverage_is_tight_where_it_should_be():
    """The simulation sees failures: CERTIFY's bound is nearly exact on two-class mass, so the failure
    rate is close to alpha (0.09 to 0.1 observed), far above alpha / 2 (a shortfall that, at these
    rates and 20,000 runs, has probability far below 1e-50). The union form spends alpha / G per split
    and fails at about alpha / G on a tie, still clearly above zero."""
    for name in ["tight_two_class", "tie_two_class"]:
        p, counts0, counts = _draws(name)
        for method, split in METHODS[:2]:
            cert = certify_from_counts(
                counts0, counts, sigma=SIGMA, alpha=ALPHA, method=method, alpha_split=split
            )
            assert _failures(cert, p, SIGMA).mean() > ALPHA / 2, (name, method)
    p, counts0, counts = _draws("tie_two_class")
    cert = certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method="tcertify", alpha_split="union"
    )
    assert _failures(cert, p, SIGMA).mean() > ALPHA / len(DEFAULT_SPLIT_GRID) / 2


@pytest.mark.parametrize("name", ["tight_two_class", "boundary_two_class", "tie_two_class"])
def test_runner_up_bound_near_its_level(name):
    """With alpha_B = 0.9 alpha (split_grid=(0.9,)) on two-class mass, pB_upper is the binding bound
    and fails at close to 0.9 alpha (0.077 to 0.092 observed): a too-small upper bound would push the
    rate over the allowance. The rate must stay within it (false alarm <= 1e-6) and be visibly non-zero
    (> alpha / 2: a shortfall with probability far below 1e-20 at these rates)."""
    p, counts0, counts = _draws(name)
    cert = certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method="tcertify", split_grid=(0.9,)
    )
    rate = _bound_failures(cert, p, counts0).mean()
    assert ALPHA / 2 < rate <= _allowed(len(counts)) / len(counts)
    assert _failures(cert, p, SIGMA).mean() <= _allowed(len(counts)) / len(counts)


@pytest.mark.parametrize("method", ["cohen", "tcertify"])
def test_reusing_selection_draws_is_caught(method):
    """INVALID: estimating on the very draws that chose the class, certify_from_counts(c, c). On a
    two-class tie it picks whichever class happened to lead and so fails about twice as often as
    allowed (about 0.19 at alpha = 0.1). The same assertion as test_certify_coverage flags it, while the
    valid procedure on the same estimation draws passes: the coverage test can fail."""
    p, counts0, counts = _draws("tie_two_class")
    invalid = certify_from_counts(counts, counts, sigma=SIGMA, alpha=ALPHA, method=method)
    valid = certify_from_counts(counts0, counts, sigma=SIGMA, alpha=ALPHA, method=method)
    invalid_fails = int(_failures(invalid, p, SIGMA).sum())
    valid_fails = int(_failures(valid, p, SIGMA).sum())
    assert invalid_fails > _allowed(len(counts))
    assert invalid_fails / len(counts) > 1.5 * ALPHA  # a clear margin, not a borderline call
    assert valid_fails <= _allowed(len(counts))


def _predict_rows(counts, alpha):
    """predict_from_counts on the distinct rows only (it is a function of the row); saves time."""
    rows, inverse = np.unique(counts, axis=0, return_inverse=True)
    return predict_from_counts(rows, alpha=alpha).prediction[inverse.ravel()]


PREDICT_CASES = {
    # name: (p, n, runs)
    "tie_two_class": ([0.5, 0.5], 1000, 20000),
    "tie_k3": ([0.4, 0.4, 0.2], 1000, 3000),
    "near_tie_k3": ([0.36, 0.34, 0.30], 1000, 3000),
    "near_tie_k10": (np.r_[0.2, 0.18, np.full(8, 0.62 / 8)], 1000, 3000),
    "near_tie_k100": (np.r_[0.05, 0.045, np.full(98, 0.905 / 98)], 1000, 3000),
    "concentrated_k10": (np.r_[0.6, 0.3, np.full(8, 0.1 / 8)], 100, 3000),
}


@pytest.mark.parametrize("name", list(PREDICT_CASES))
def test_predict_coverage(name):
    """PREDICT returns a class other than g(x) with probability <= alpha; on an exact tie any answer
    counts as wrong. Same binomial allowance (false alarm <= 1e-6 per case)."""
    p, n, runs = PREDICT_CASES[name]
    p = np.asarray(p, dtype=np.float64)
    rng = np.random.default_rng(100 + sorted(PREDICT_CASES).index(name))
    counts = rng.multinomial(n, p, size=runs)
    prediction = _predict_rows(counts, ALPHA)
    top, true_radius = _truth(p, SIGMA)
    wrong = (prediction != ABSTAIN) & ((prediction != top) | (true_radius == 0.0))
    assert int(wrong.sum()) <= _allowed(runs), (name, wrong.mean())
    if name == "tie_two_class":
        # Near-tight: the exact binomial test rejects a true tie at close to rate alpha.
        assert wrong.mean() > ALPHA / 2


# --------------------------------------------------------------------------------------------------
# 3. T-CERTIFY versus CERTIFY


def _three_ways(counts0, counts, sigma, alpha):
    return [
        certify_from_counts(counts0, counts, sigma=sigma, alpha=alpha, method=m, alpha_split=s)
        for m, s in METHODS
    ]


def test_tcertify_gains_on_spread_mass():
    """pA = 0.7 with the other 0.3 spread over 99 classes: pB is about 0.003, far below 1 - pA, so
    T-CERTIFY's radius is about three times CERTIFY's (alpha = 0.001, n = 10,000)."""
    rng = np.random.default_rng(7)
    p = _spread(0.7, 100)
    counts0 = rng.multinomial(100, p, size=300)
    counts = rng.multinomial(10000, p, size=300)
    cohen, selection, union = _three_ways(counts0, counts, 0.5, 1e-3)
    assert np.all(cohen.prediction == 0)
    assert np.median(selection.radius) > 2 * np.median(cohen.radius)
    assert np.median(union.radius) > 2 * np.median(cohen.radius)
    # Never worse than CERTIFY when the split grid contains 0 and is chosen on the selection counts
    # ... in this case, where the selection counts themselves are spread.
    assert np.all(selection.radius >= cohen.radius)


def test_tcertify_gains_on_fixed_counts():
    """A fixed count vector: 7030 of 10,000 on the top class, 30 on each of 99 others."""
    counts = np.array([[7030] + [30] * 99])
    counts0 = np.array([[70] + [1] * 30 + [0] * 69])  # spread selection counts
    cohen, selection, union = _three_ways(counts0, counts, 0.5, 1e-3)
    assert cohen.radius[0] == pytest.approx(
        0.5 * stats.norm.ppf(stats.beta.ppf(1e-3, 7030, 2971)), rel=1e-10
    )
    assert cohen.radius[0] == pytest.approx(0.246, abs=1e-3)
    assert selection.radius[0] > 2.5 * cohen.radius[0]
    assert union.radius[0] > 2.5 * cohen.radius[0]
    assert selection.pb_upper[0] < 0.01 < cohen.pb_upper[0]


def test_tcertify_loses_little_on_concentrated_mass():
    """All the non-top mass on one class (K = 2), or nearly so (K = 10): the runner-up bound cannot
    beat 1 - pA_lower. "selection" then keeps CERTIFY's radius exactly (it picks alpha_B = 0);
    "union" pays for spending alpha / 4 per split: under 1 % of the radius here (0.5 % observed)."""
    rng = np.random.default_rng(8)
    for p in [np.array([0.9, 0.1]), np.r_[0.9, 0.09, np.full(8, 0.01 / 8)]]:
        counts0 = rng.multinomial(100, p, size=500)
        counts = rng.multinomial(10000, p, size=500)
        cohen, selection, union = _three_ways(counts0, counts, 0.5, 1e-3)
        assert np.all(cohen.prediction == 0)
        assert np.all(selection.radius >= 0.99 * cohen.radius)
        assert np.median(selection.radius / cohen.radius) >= 1.0
        assert np.all(union.radius >= 0.99 * cohen.radius)


# --------------------------------------------------------------------------------------------------
# 4. A linear base classifier through the device path


def binary_logits(params, x):
    w, b = params
    s = x.reshape(x.shape[0], -1) @ w + b
    return jnp.stack([s, -s], axis=-1)


@pytest.fixture(scope="module")
def linear_problem():
    """32 images 4x4x1 in [0,1] at signed distances -2 sigma .. 2 sigma from the hyperplane."""
    rng = np.random.default_rng(3)
    sigma = 0.25
    w = rng.normal(size=16)
    b = -0.5 * w.sum()  # the hyperplane passes through the grey image 0.5
    unit = w / np.linalg.norm(w)
    signed = np.linspace(-2, 2, 32) * sigma
    tangent = rng.normal(size=(32, 16))
    tangent -= np.outer(tangent @ unit, unit)  # move along the hyperplane too
    x = 0.5 + signed[:, None] * unit + 0.05 * tangent
    assert 0 <= x.min() and x.max() <= 1
    x = x.reshape(32, 4, 4, 1).astype(np.float32)
    s = x.reshape(32, -1).astype(np.float64) @ w + b
    margin = np.abs(s) / np.linalg.norm(w)
    sign_class = np.where(s > 0, 0, 1)
    params = (jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))
    return x, params, sigma, margin, sign_class


def test_linear_classifier_certifies_its_margin(linear_problem):
    """Cohen: the smoothed linear classifier is sign(w.x + b) with exact radius |w.x + b| / ||w||.

    Each example independently violates radius <= margin (or certifies the wrong class) with
    probability <= alpha = 0.001; allowing one violation among 32, a correct rsjax fails this test
    with probability <= C(32, 2) * alpha^2 < 5e-4 per n, so < 1e-3 for both n.
    """
    x, params, sigma, margin, sign_class = linear_problem
    gaps = {}
    for n in [1000, 100000]:
        cert = rsjax.certify(
            jax.random.key(42),
            binary_logits,
            x,
            sigma=sigma,
            n0=100,
            n=n,
            alpha=1e-3,
            num_classes=2,
            params=params,
            chunk_size=10000,
        )
        answered = cert.prediction != ABSTAIN
        violations = answered & ((cert.prediction != sign_class) | (cert.radius > margin))
        assert violations.sum() <= 1, n
        good = answered & ~violations
        assert good.sum() >= 24  # margins down to 0.06 sigma; selection with n0 = 100 may abstain
        gaps[n] = margin[good] - cert.radius[good]
    # The gap closes like 1 / sqrt(n): about 10x smaller with 100x the samples.
    assert gaps[100000].mean() < 0.25 * gaps[1000].mean()
    assert gaps[100000].max() < 0.02  # about sigma * 3.1 * sd(pA_hat) / phi(2), plus noise
    assert 0.01 < gaps[1000].mean() < 0.1

    pred = rsjax.predict(
        jax.random.key(42),
        binary_logits,
        x,
        sigma=sigma,
        n=100000,
        alpha=1e-3,
        num_classes=2,
        params=params,
        chunk_size=10000,
    )
    # Every example is at least 0.06 sigma from the hyperplane: with 100,000 votes PREDICT is sure.
    np.testing.assert_array_equal(pred.prediction, sign_class)


# --------------------------------------------------------------------------------------------------
# 5. Input validation


def ten_class_logits(x):
    return jnp.tile(x.reshape(x.shape[0], -1)[:, :1], (1, 10)) * jnp.arange(10.0)


GOOD_X = np.full((2, 4, 4, 1), 0.5, np.float32)


def _certify(**overrides):
    kw = dict(x=GOOD_X, sigma=0.25, n0=10, n=100, alpha=0.01, num_classes=10)
    kw.update(overrides)
    x = kw.pop("x")
    return rsjax.certify(jax.random.key(0), ten_class_logits, x, **kw)


def _predict(**overrides):
    kw = dict(x=GOOD_X, sigma=0.25, n=100, alpha=0.01, num_classes=10)
    kw.update(overrides)
    x = kw.pop("x")
    return rsjax.predict(jax.random.key(0), ten_class_logits, x, **kw)


NAN_X = GOOD_X.copy()
NAN_X[1, 0, 0, 0] = np.nan
INF_X = GOOD_X.copy()
INF_X[0, 2, 1, 0] = np.inf

BAD_INPUTS = [
    (dict(x=GOOD_X[0]), ValueError, r"\(B, H, W, C\).*shape \(4, 4, 1\)"),
    (dict(x=GOOD_X[..., 0]), ValueError, r"NHWC"),
    (dict(x=(GOOD_X * 255).astype(np.uint8)), TypeError, r"floating point.*uint8"),
    (dict(x=GOOD_X.astype(np.int32)), TypeError, r"floating point.*int32"),
    (dict(x=NAN_X), ValueError, r"NaN or infinite values \(1 of 2"),
    (dict(x=INF_X), ValueError, r"NaN or infinite"),
    (dict(sigma=0.0), ValueError, r"sigma must be a finite number > 0"),
    (dict(sigma=-0.25), ValueError, r"sigma must be a finite number > 0"),
    (dict(sigma=float("nan")), ValueError, r"sigma"),
    (dict(alpha=0.0), ValueError, r"alpha must lie strictly between 0 and 1"),
    (dict(alpha=1.0), ValueError, r"alpha must lie strictly between 0 and 1"),
    (dict(alpha=-0.1), ValueError, r"alpha must lie strictly between 0 and 1"),
    (dict(alpha=float("nan")), ValueError, r"alpha must lie strictly between 0 and 1"),
    (dict(n=0), ValueError, r"n must be an integer >= 1, got 0"),
    (dict(n=-5), ValueError, r"n must be an integer >= 1"),
    (dict(n=10.5), ValueError, r"n must be an integer >= 1, got 10.5"),
    (dict(num_classes=5), ValueError, r"num_classes"),
    # pixels outside [0, 1]: 0..255 floats, normalised images; the message states the convention
    (dict(x=GOOD_X * 255), ValueError, r"\[0, 1\], got values in \[127.5, 127.5\].*divide by 255"),
    (dict(x=GOOD_X - 0.75), ValueError, r"in \[0, 1\].*pixels / 255, sigma in those units"),
    (dict(x=np.concatenate([GOOD_X, GOOD_X + 0.6])), ValueError, r"2 of 4 images outside"),
    (dict(x=GOOD_X[:0]), ValueError, r"no images"),
    (
        dict(batch_size=0),
        ValueError,
        r"batch_size \(images per device call\) must be an integer >= 1",
    ),
    (dict(n=2**31), ValueError, r"n = 2,147,483,648 exceeds 2,147,483,647.*int32"),
]


@pytest.mark.parametrize("overrides, error, message", BAD_INPUTS)
def test_certify_and_predict_reject_bad_inputs(overrides, error, message):
    with pytest.raises(error, match=message):
        _certify(**overrides)
    with pytest.raises(error, match=message):
        _predict(**overrides)


@pytest.mark.parametrize("num_idx", [3, 5, 9])
def test_idx_of_the_wrong_length_is_rejected(num_idx):
    """idx must hold one global index per image: x and idx are padded separately to a multiple of
    the device count, so without the check 6 images and 5 indices (or 12 and 9) would be accepted
    and the images beyond the last index would reuse its noise."""
    x = np.full((6 if num_idx == 5 else 12, 4, 4, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"idx"):
        _certify(x=x, idx=np.arange(num_idx))
    with pytest.raises(ValueError, match=r"idx"):
        _predict(x=x, idx=np.arange(num_idx))


def test_certify_rejects_bad_n0():
    for bad in [0, -1, 2.5]:
        with pytest.raises(ValueError, match=r"n0 must be an integer >= 1"):
            _certify(n0=bad)
    with pytest.raises(ValueError, match=r"n0 = 4,294,967,296 exceeds"):
        _certify(n0=2**32)
    with pytest.raises(ValueError, match=r"n_max = 2,147,483,648 exceeds"):
        _certify(n=None, sampling="sequential", n_max=2**31, radii=(0.0,))
    for bad in (dict(batch_size=0), dict(x=GOOD_X * 255), dict(x=GOOD_X[:0])):
        with pytest.raises(ValueError):
            _certify(n=None, sampling="sequential", n_max=100, radii=(0.0,), **bad)


def test_input_range_none_admits_inputs_that_are_not_images():
    """Toy vectors (closed-form checks) may leave [0, 1] with input_range=None: at x = 2.5 every
    noisy copy stays positive (10 sigma away), so ten_class_logits votes class 9 every time and
    CERTIFY certifies it; NaN is still refused, and another range is checked as given."""
    shifted = _certify(x=GOOD_X + 2.0, input_range=None)
    np.testing.assert_array_equal(shifted.prediction, [9, 9])
    assert np.all(shifted.radius > 0)
    with pytest.raises(ValueError, match=r"NaN"):
        _certify(x=NAN_X, input_range=None)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        _certify(x=GOOD_X + 0.75, input_range=(-1.0, 1.0))


def test_progress_line_only_when_asked(capsys):
    """progress=True writes a progress line on stderr (images and noise samples/s); the default is
    quiet, for certify, predict and the sequential path."""
    _certify()
    _predict()
    assert capsys.readouterr().err == ""
    _certify(progress=True)
    err = capsys.readouterr().err
    assert "certify: 2/2 img" in err and "noise samples/s" in err
    _predict(progress=True)
    assert "predict: 2/2 img" in capsys.readouterr().err
    _certify(n=None, sampling="sequential", n_max=100, radii=(0.0,), progress=True)
    err = capsys.readouterr().err
    assert "certify: 2/2 img" in err and "per img" in err


def test_num_classes_error_says_what_to_do():
    with pytest.raises(ValueError, match=r"num_classes = 5: num_classes must be >= the model's"):
        _certify(num_classes=5)


def test_certify_from_counts_rejects_bad_counts():
    good = np.array([[8, 2], [5, 5]])
    cases = [
        (dict(counts0=good.astype(float)), TypeError, r"counts0 must be an integer array.*float64"),
        (dict(counts=good + 0.5), TypeError, r"counts must be an integer array.*float64"),
        (dict(counts=np.array([[8, 2], [-1, 11]])), ValueError, r"counts has negative counts"),
        (
            dict(counts0=np.array([[8, 2, 0], [5, 5, 0]])),
            ValueError,
            r"counts0 \(2, 3\) and counts \(2, 2\) must have the same shape",
        ),
        (dict(counts=np.array([[8, 2]] * 3)), ValueError, r"same shape"),
        (dict(counts=np.array([8, 2])), ValueError, r"shape \(examples, classes\)"),
        (
            dict(counts0=np.array([[10], [10]]), counts=np.array([[10], [10]])),
            ValueError,
            r"at least 2 classes",
        ),
        (dict(counts=np.array([[8, 2], [0, 0]])), ValueError, r"no samples"),
        (dict(sigma=0.0), ValueError, r"sigma"),
        (dict(alpha=1.0), ValueError, r"alpha"),
        (dict(method="tight"), ValueError, r"method must be one of"),
        (
            dict(method="tcertify", alpha_split="estimation"),
            ValueError,
            r"alpha_split must be one of",
        ),
        (dict(method="tcertify", split_grid=(0.0, 1.0)), ValueError, r"split_grid"),
        (dict(method="tcertify", split_grid=()), ValueError, r"split_grid"),
    ]
    for overrides, error, message in cases:
        kw = dict(counts0=good, counts=good, sigma=0.25, alpha=0.01)
        kw.update(overrides)
        with pytest.raises(error, match=message):
            certify_from_counts(kw.pop("counts0"), kw.pop("counts"), **kw)
    with pytest.raises(TypeError, match=r"integer"):
        predict_from_counts(good * 1.0, alpha=0.01)
    with pytest.raises(ValueError, match=r"negative"):
        predict_from_counts(-good, alpha=0.01)
    with pytest.raises(ValueError, match=r"alpha"):
        predict_from_counts(good, alpha=0.0)


def test_certify_from_counts_warns_when_n_can_never_certify():
    counts = np.array([[9, 0]])  # n = 9 <= log2(1000)
    with pytest.warns(bounds.NeverCertifiesWarning):
        cert = certify_from_counts(counts, counts, sigma=0.25, alpha=1e-3)
    assert cert.prediction[0] == ABSTAIN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cert = certify_from_counts(counts + 1, np.array([[10, 0]]), sigma=0.25, alpha=1e-3)
    assert cert.prediction[0] == 0


def test_selection_split_stays_in_the_grid_when_nothing_would_certify():
    """A tied selection count projects to an abstention for every split; the split used is then the
    grid's first fraction (0.25 here), not 0, which the caller's grid does not hold: pA_lower is the
    Clopper-Pearson bound at (1 - 0.25) alpha."""
    cert = certify_from_counts(
        np.array([[50, 50, 0]]),
        np.array([[900, 60, 40]]),
        sigma=0.5,
        alpha=0.01,
        method="tcertify",
        split_grid=(0.25, 0.5),
    )
    np.testing.assert_allclose(cert.pa_lower, stats.beta.ppf(0.75 * 0.01, 900, 101), rtol=1e-12)
