"""Tests for rsjax.sequential: sequential CERTIFY with an anytime-valid lower bound.

1. Validity by simulation (default selection) on the hard shapes: for known multinomials (pA just
   above 1/2, pA whose true radius sits exactly on a grid radius, K = 2 and K = 100, pA = 1), 5,000
   independent images per case at alpha = 0.05, for both stopping goals and both constructions. An
   image fails when it returns a class other than argmax p, or a radius above the true radius
   sigma * Phi^-1(pA). The failure count must stay within binom.isf(1e-5, 5000, alpha) (a valid
   procedure fails this with probability <= 1e-5 per case). These cases guard the shapes; they have
   little power against a bound at 2 alpha (most sit far from a bound's level): the powered
   simulations, with cases tuned so that each bound fails at just below its level, are in
   tests/test_coverage.py.
2. The naive procedure, fixed-n Clopper-Pearson at the full alpha at every look, fails that check.
3. The three paths agree image by image on the same draws: the sampler API, certify_from_look_counts
   and the device path (rsjax.certify(..., sampling="sequential")); the device path does not depend
   on chunk size, batch size, round size, device count or order.
4. Bad input.
5. Exact oracles: the union looks are scipy's Clopper-Pearson bounds at the documented levels (which
   sum to alpha), the running bound is their maximum up to the stop, and the mixture looks are the
   crossings of the log wealth of the prior fixed by the selection counts.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special, stats

import rsjax
from rsjax import ABSTAIN, sequential, votes

ALPHA = 0.05
TRIALS = 5_000
RADII = (0.0, 0.25, 0.5, 0.75, 1.0)


def spread(pa, num_classes):
    """pA on class 0, the rest spread evenly over the other classes."""
    return np.array([pa] + [(1 - pa) / (num_classes - 1)] * (num_classes - 1))


# (name, class probabilities, sigma): the hard cases of issue 11
CASES = [
    ("pA just above 1/2, K=2", np.array([0.52, 0.48]), 0.25),
    ("true radius on the grid (0.25), K=10", spread(stats.norm.cdf(1.0), 10), 0.25),
    ("true radius on the grid (0.5), K=2", spread(stats.norm.cdf(1.0), 2), 0.5),
    ("K=100, pA = 0.3 spread", np.array([0.3] + [0.7 / 99] * 99), 0.25),
    ("K=100, top two close", np.array([0.505, 0.49] + [0.005 / 98] * 98), 0.25),
    ("pA = 1", spread(1.0, 10), 0.25),
]


def simulate(plan, p, trials, seed):
    """Selection by Mult(n0, p), then the candidate's votes at every look: (top, k0, k_looks)."""
    rng = np.random.default_rng(seed)
    counts0 = rng.multinomial(plan.n0, p, size=trials)
    top = counts0.argmax(axis=1)
    k0 = counts0[np.arange(trials), top]
    steps = np.diff(np.concatenate([[0], plan.looks]))
    increments = rng.binomial(steps[None, :], p[top][:, None])
    return top, k0, np.cumsum(increments, axis=1)


def failure_rate(plan, p, sigma, seed=0):
    top, k0, k_looks = simulate(plan, p, TRIALS, seed)
    cert = sequential.certify_from_look_counts(plan, top, k0, k_looks)
    pa = p.max()
    true_radius = np.inf if pa == 1 else sigma * stats.norm.ppf(pa)
    answered = cert.prediction != ABSTAIN
    wrong = answered & ((cert.prediction != p.argmax()) | (cert.radius > true_radius))
    return wrong.mean(), cert


def limit(alpha=ALPHA):
    """The largest failure rate a procedure failing with probability <= alpha may show (1e-5)."""
    return stats.binom.isf(1e-5, TRIALS, alpha) / TRIALS


def goals():
    return [dict(radii=RADII), dict(radius_tol=0.05)]


@pytest.mark.parametrize("bound", sequential.BOUNDS)
@pytest.mark.parametrize("goal", goals(), ids=["radii", "radius_tol"])
@pytest.mark.parametrize("name, p, sigma", CASES, ids=[c[0] for c in CASES])
def test_coverage(name, p, sigma, goal, bound):
    plan = sequential.make_plan(sigma=sigma, alpha=ALPHA, n0=100, n_max=10_000, bound=bound, **goal)
    rate, cert = failure_rate(plan, p, sigma)
    assert rate <= limit(), f"{name}: failure rate {rate:.4f} above {limit():.4f}"
    # The procedure is not vacuous: confident cases certify, and certify early.
    if p.max() == 1:
        assert (cert.prediction == 0).mean() > 0.99
        if "radii" in goal:
            assert cert.num_samples.mean() < plan.n0 + plan.n_max


def test_naive_reuse_of_fixed_n_bound_fails_coverage():
    """Clopper-Pearson at the full alpha at every look, stopping as soon as a radius is decided: on
    an image whose true radius sits on the grid, it claims that radius far more often than alpha."""
    sigma = 0.25
    p = spread(stats.norm.cdf(1.0), 2)  # true radius 0.25, on the grid
    plan = sequential.make_plan(sigma=sigma, alpha=ALPHA, n0=100, n_max=10_000, radii=RADII)
    naive = dataclasses.replace(plan, alphas=(ALPHA,) * len(plan.looks))
    valid_rate, _ = failure_rate(plan, p, sigma)
    naive_rate, _ = failure_rate(naive, p, sigma)
    assert valid_rate <= limit()
    assert naive_rate > 2 * ALPHA, f"naive failure rate {naive_rate:.4f} is not above 2 alpha"


def test_union_look_levels_and_bounds_are_exact():
    """The levels are the documented spending (half_final: alpha / 2 at n_max, alpha / (2 (L - 1)) at
    each earlier look; equal: alpha / L), and look t's bounds are scipy's Clopper-Pearson bounds of
    the first n_t draws at alphas[t], for every look and count (one broadcast call)."""
    for spending in sequential.SPENDINGS:
        plan = sequential.make_plan(
            sigma=0.5, alpha=0.05, n0=100, n_max=3200, radii=RADII, spending=spending
        )
        num_looks = len(plan.looks)
        if spending == "half_final":
            want = [0.05 / (2 * (num_looks - 1))] * (num_looks - 1) + [0.025]
        else:
            want = [0.05 / num_looks] * num_looks
        np.testing.assert_allclose(plan.alphas, want, rtol=1e-12)
        assert sum(plan.alphas) == pytest.approx(0.05, rel=1e-12)
        t = np.arange(num_looks)[:, None]
        n = np.asarray(plan.looks)[:, None]
        k = np.round(n * np.linspace(0, 1, 11)[None, :]).astype(np.int64)
        lower, upper = sequential.look_bounds(plan, t, k)
        level = np.asarray(plan.alphas)[:, None]
        with np.errstate(invalid="ignore"):
            want_lower = np.where(k == 0, 0.0, stats.beta.ppf(level, k, n - k + 1))
            want_upper = np.where(k == n, 1.0, stats.beta.ppf(1 - level, k + 1, n - k))
        np.testing.assert_allclose(lower, want_lower, rtol=1e-9, atol=0)
        np.testing.assert_allclose(upper, want_upper, rtol=1e-9, atol=1e-15)


def _mixture_lower(k, n, alpha, k0, n0):
    """The lower end of the mixture sequence, from its definition: where the log wealth
    log B(a + k, b + n - k) - log B(a, b) - k log p - (n - k) log(1 - p), a = k0 + 1/2,
    b = n0 - k0 + 1/2, crosses log(1/alpha) below k / n (scipy.optimize.brentq)."""
    if k == 0:
        return 0.0
    a, b = k0 + 0.5, n0 - k0 + 0.5
    log_marginal = special.betaln(a + k, b + n - k) - special.betaln(a, b)

    def excess(p):
        return log_marginal - k * np.log(p) - (n - k) * np.log1p(-p) - np.log(1 / alpha)

    return optimize.brentq(excess, 1e-300, k / n, xtol=1e-15, rtol=1e-14)


def test_mixture_looks_take_the_prior_from_the_selection_counts_only():
    """Sequential CERTIFY's mixture bound at look t is the mixture sequence of the first n_t draws at
    the full alpha with the prior of the selection count k0 of cA out of n0: two images with the same
    k0 and different estimation counts get the crossings of the same prior, and the running lower
    bound at the stop is the largest of them."""
    plan = sequential.make_plan(
        sigma=0.25, alpha=0.05, n0=100, n_max=1600, radius_tol=1e-6, bound="mixture"
    )
    looks = np.asarray(plan.looks)
    k_looks = np.stack([np.round(0.83 * looks), np.round(0.9 * looks)]).astype(np.int64)
    k0 = np.array([80, 80])
    cert = sequential.certify_from_look_counts(plan, np.array([0, 0]), k0, k_looks)
    for i in range(2):
        each = [
            _mixture_lower(int(k), int(n), 0.05, 80, 100)
            for k, n in zip(k_looks[i], looks, strict=True)
        ]
        lower, _ = sequential.look_bounds(plan, np.arange(len(looks)), k_looks[i], np.full(1, 80))
        np.testing.assert_allclose(lower, each, rtol=1e-9)
        assert cert.num_samples[i] == 100 + 1600  # the tolerance makes every look happen
        assert cert.pa_lower[i] == pytest.approx(max(each), rel=1e-9)
        assert cert.radius[i] == pytest.approx(0.25 * stats.norm.ppf(max(each)), rel=1e-9)
    # Another selection count moves the bound; the estimation counts never enter the prior.
    moved, _ = sequential.look_bounds(plan, 2, k_looks[0, 2], 60)
    assert moved != pytest.approx(_mixture_lower(int(k_looks[0, 2]), int(looks[2]), 0.05, 80, 100))


def test_union_running_bound_is_the_largest_look_bound_until_the_stop():
    """certify_from_look_counts with the union bound: the running lower bound at the stop is the
    largest Clopper-Pearson bound (scipy) of the looks up to the stop, at their levels."""
    plan = sequential.make_plan(sigma=0.25, alpha=0.05, n0=100, n_max=3200, radii=RADII)
    looks = np.asarray(plan.looks)
    rng = np.random.default_rng(4)
    steps = np.diff(np.r_[0, looks])
    k_looks = np.cumsum(rng.binomial(steps[None, :], 0.86, size=(200, len(looks))), axis=1)
    cert = sequential.certify_from_look_counts(plan, np.zeros(200, int), np.full(200, 86), k_looks)
    assert len(np.unique(cert.num_samples)) > 1
    for i in range(200):
        stop = list(looks).index(cert.num_samples[i] - 100)
        k, n = k_looks[i, : stop + 1], looks[: stop + 1]
        want = stats.beta.ppf(np.asarray(plan.alphas[: stop + 1]), k, n - k + 1).max()
        assert cert.pa_lower[i] == pytest.approx(want, rel=1e-9)
        if want > 0.5:
            assert cert.prediction[i] == 0
            assert cert.radius[i] == pytest.approx(0.25 * stats.norm.ppf(want), rel=1e-9)
        else:
            assert cert.prediction[i] == ABSTAIN and cert.radius[i] == 0.0
    # An image whose vote share falls after the first look keeps the first look's (larger) bound.
    plan = sequential.make_plan(sigma=0.25, alpha=0.05, n0=100, n_max=3200, radius_tol=1e-6)
    looks = np.asarray(plan.looks)
    k = np.round(looks * np.linspace(1.0, 0.8, len(looks))).astype(np.int64)
    cert = sequential.certify_from_look_counts(plan, np.array([0]), np.array([90]), k[None])
    stop = list(looks).index(cert.num_samples[0] - 100)
    each = stats.beta.ppf(np.asarray(plan.alphas), k, looks - k + 1)[: stop + 1]
    assert stop > 0 and each.argmax() < stop  # stopped where no later look could do better
    assert cert.pa_lower[0] == pytest.approx(each.max(), rel=1e-9)


def test_union_bound_levels_sum_to_alpha():
    for spending in sequential.SPENDINGS:
        plan = sequential.make_plan(
            sigma=0.5, alpha=1e-3, n0=100, n_max=100_000, radii=RADII, spending=spending
        )
        assert sum(plan.alphas) == pytest.approx(1e-3, rel=1e-12)
        assert plan.looks[-1] == 100_000 and list(plan.looks) == sorted(set(plan.looks))
    assert sequential.geometric_looks(100_000)[:3] == (100, 200, 400)
    assert sequential.geometric_looks(50) == (50,)


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_radius_looks_stop_an_image_with_every_vote_for_ca_where_it_first_certifies(sigma):
    """With schedule="radii", an image whose every draw votes cA stops at the first draw count where
    the bound of its look certifies the largest grid radius n_max can reach, not at the next
    geometric look; the same image with the geometric looks only needs at least as many draws."""
    grid = tuple(np.arange(0, 2.01, 0.25))
    common = dict(sigma=sigma, alpha=1e-3, n0=100, n_max=100_000, radii=grid)
    plan = sequential.make_plan(**common)
    geometric = sequential.make_plan(**common, schedule="geometric")
    assert set(geometric.looks) < set(plan.looks)
    assert geometric.looks == sequential.geometric_looks(100_000)

    def all_votes(p):
        looks = np.asarray(p.looks)
        return sequential.certify_from_look_counts(p, np.array([0]), np.array([100]), looks[None])

    cert, cert_geometric = all_votes(plan), all_votes(geometric)
    t = plan.looks.index(cert.num_samples[0] - 100)
    reached = max(r for r in grid if r <= cert.radius[0])
    assert t < len(plan.looks) - 1 and reached > 0
    # certified at this look, not at the one before (the look is needed), and no larger grid radius
    # could be certified by any later look
    before = rsjax.bounds.clopper_pearson_lower(
        plan.looks[t - 1], plan.looks[t - 1], plan.alphas[0]
    )
    assert sigma * stats.norm.ppf(before) < reached
    final = rsjax.bounds.clopper_pearson_lower(100_000, 100_000, plan.alphas[-1])
    assert all(r <= reached or sigma * stats.norm.ppf(final) < r for r in grid)
    assert cert.num_samples[0] <= cert_geometric.num_samples[0]
    assert cert.radius[0] >= reached and cert_geometric.radius[0] >= reached


def test_radius_looks_are_fixed_by_the_settings_alone():
    looks = sequential.geometric_looks(100_000)
    a = sequential.radius_looks(looks, (1.0, 1.75), sigma=0.5, alpha=1e-3)
    assert a == sequential.radius_looks(looks, (1.0, 1.75), sigma=0.5, alpha=1e-3)
    assert set(looks) <= set(a) and len(a) == len(looks) + 2 and a[-1] == 100_000
    # a radius certified before the first look, or by no number of draws below n_max, adds no look
    assert sequential.radius_looks(looks, (0.1, 3.0), sigma=0.25, alpha=1e-3) == looks
    with pytest.raises(ValueError, match="schedule"):
        sequential.make_plan(sigma=0.5, alpha=1e-3, n0=100, n_max=1000, radii=(0.5,), schedule="x")


def test_fixed_n_agreement_when_every_look_is_needed():
    """An image that runs to n_max sees the fixed n = n_max counts: its bound is Clopper-Pearson at
    the last look's level (alpha / 2), at least the bound of every earlier look."""
    plan = sequential.make_plan(sigma=0.25, alpha=1e-3, n0=100, n_max=10_000, radius_tol=1e-9)
    k_looks = np.array([[int(0.97 * n) for n in plan.looks]])
    cert = sequential.certify_from_look_counts(plan, np.array([3]), np.array([97]), k_looks)
    assert cert.num_samples[0] == 100 + 10_000
    last = rsjax.bounds.clopper_pearson_lower(k_looks[0, -1], 10_000, plan.alphas[-1])
    assert cert.pa_lower[0] >= last
    assert cert.radius[0] == pytest.approx(0.25 * stats.norm.ppf(cert.pa_lower[0]))


# --------------------------------------------------------------------------------------------------
# 3. The sampler API, the look-count form and the device path agree


def test_sampler_api_matches_look_counts():
    """Records the draws the sampler API asks for and replays them through certify_from_look_counts."""
    rng = np.random.default_rng(1)
    for p, goal in [
        (spread(0.97, 10), dict(radii=RADII)),
        (spread(0.9999, 10), dict(radius_tol=0.1)),
        (np.array([0.4, 0.35, 0.25]), dict(radii=RADII)),
    ]:
        asked = []

        def sample(m, p=p, asked=asked):
            counts = rng.multinomial(m, p)
            asked.append((m, counts))
            return counts

        cert = rsjax.sequential_certify_from_sampler(
            sample, sigma=0.25, alpha=1e-3, n0=100, n_max=20_000, num_classes=len(p), **goal
        )
        plan = sequential.make_plan(sigma=0.25, alpha=1e-3, n0=100, n_max=20_000, **goal)
        top = int(asked[0][1].argmax())
        assert asked[0][0] == 100
        k = np.cumsum([c[top] for _, c in asked[1:]])
        drawn = np.cumsum([m for m, _ in asked[1:]])
        assert list(drawn) == list(plan.looks[: len(drawn)])
        full = np.concatenate([k, np.full(len(plan.looks) - len(k), k[-1])])[None, :]
        replay = sequential.certify_from_look_counts(
            plan, np.array([top]), np.array([asked[0][1][top]]), full
        )
        assert replay.num_samples[0] == cert.num_samples == 100 + drawn[-1]
        assert replay.prediction[0] == cert.prediction
        assert replay.radius[0] == cert.radius


def _linear_model(d=12, num_classes=3, seed=0):
    key = jax.random.key(seed)
    w = jax.random.normal(key, (d, num_classes))

    def logits_fn(params, x):
        return x.reshape(x.shape[0], -1) @ params

    x = np.asarray(jax.random.uniform(jax.random.key(seed + 1), (7, 2, 2, 3)))
    return logits_fn, w, x


@pytest.fixture(scope="module")
def device_run():
    logits_fn, w, x = _linear_model()
    kwargs = dict(sigma=0.5, n0=50, alpha=0.01, num_classes=3, params=w, sampling="sequential")
    cert = rsjax.certify(
        jax.random.key(0), logits_fn, x, n_max=3000, radii=(0.0, 0.1, 0.2, 0.3), **kwargs
    )
    return logits_fn, w, x, kwargs, cert


def test_device_path_matches_look_counts(device_run):
    """The device path's certificates equal certify_from_look_counts on count_votes' counts."""
    logits_fn, w, x, kwargs, cert = device_run
    plan = sequential.make_plan(
        sigma=0.5, alpha=0.01, n0=50, n_max=3000, radii=(0.0, 0.1, 0.2, 0.3)
    )
    idx = np.arange(len(x))
    common = dict(sigma=0.5, num_classes=3, stream=votes.SELECTION)
    counts0 = votes.count_votes(jax.random.key(0), logits_fn, w, x, idx, num_samples=50, **common)
    top = counts0.argmax(axis=1)
    common["stream"] = votes.ESTIMATION
    k_looks = np.stack(
        [
            votes.count_votes(jax.random.key(0), logits_fn, w, x, idx, num_samples=n, **common)[
                np.arange(len(x)), top
            ]
            for n in plan.looks
        ],
        axis=1,
    )
    expected = sequential.certify_from_look_counts(
        plan, top, counts0[np.arange(len(x)), top], k_looks
    )
    np.testing.assert_array_equal(cert.prediction, expected.prediction)
    np.testing.assert_array_equal(cert.radius, expected.radius)
    np.testing.assert_array_equal(cert.num_samples, expected.num_samples)
    assert len(set(cert.num_samples.tolist())) > 1, "the images should stop at different looks"


@pytest.mark.parametrize(
    "options",
    [
        dict(chunk_size=7),
        dict(batch_size=3),
        dict(batch_size=1, chunk_size=64),
        dict(round_size=50),
        dict(mesh="one device"),
        dict(order="reversed"),
    ],
    ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()),
)
def test_device_path_invariance(device_run, options):
    logits_fn, w, x, kwargs, cert = device_run
    options = dict(options)
    order = np.arange(len(x))
    if options.pop("order", None):
        order = order[::-1]
    if options.pop("mesh", None):
        options["mesh"] = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("batch",))
    plan = sequential.make_plan(
        sigma=0.5, alpha=0.01, n0=50, n_max=3000, radii=(0.0, 0.1, 0.2, 0.3)
    )
    other = sequential.run_slots(
        jax.random.key(0), logits_fn, w, x[order], order, plan, num_classes=3, **options
    )
    np.testing.assert_array_equal(other.prediction, cert.prediction[order])
    np.testing.assert_array_equal(other.radius, cert.radius[order])
    np.testing.assert_array_equal(other.num_samples, cert.num_samples[order])


def test_rounds_sum_to_count_votes():
    logits_fn, w, x = _linear_model()
    idx = np.arange(len(x)) + 10
    looks = np.array([30, 70, 200])
    start = np.array([0, 10, 30, 0, 199, 70, 5])
    stop = np.array([200, 150, 30, 1, 200, 200, 69])
    by_look = votes.count_votes_in_rounds(
        jax.random.key(3),
        logits_fn,
        w,
        x,
        idx,
        start=start,
        stop=stop,
        looks=looks,
        sigma=0.5,
        num_classes=3,
        chunk_size=16,
        stream=votes.ESTIMATION,
    )
    assert by_look.shape == (7, 3, 3)
    full = votes.count_votes(
        jax.random.key(3),
        logits_fn,
        w,
        x,
        idx,
        sigma=0.5,
        num_classes=3,
        num_samples=200,
        stream=votes.ESTIMATION,
    )
    np.testing.assert_array_equal(by_look[0].sum(axis=0), full[0])
    assert by_look[2].sum() == 0 and by_look[3].sum() == 1
    np.testing.assert_array_equal(by_look.sum(axis=(1, 2)), stop - start)
    prefix = votes.count_votes(
        jax.random.key(3),
        logits_fn,
        w,
        x,
        idx,
        sigma=0.5,
        num_classes=3,
        num_samples=70,
        stream=votes.ESTIMATION,
    )
    np.testing.assert_array_equal(by_look[0, :2].sum(axis=0), prefix[0])
    np.testing.assert_array_equal(by_look[5, 2], full[5] - prefix[5])


# --------------------------------------------------------------------------------------------------
# 4. Bad input


def _sampler(counts):
    return lambda m: counts(m)


GOOD = dict(sigma=0.25, alpha=1e-3, n0=100, n_max=1000, num_classes=3, radii=RADII)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(n_max=50), "n_max = 50 must be >= n0 = 100"),
        (dict(radii=()), "radii is empty"),
        (dict(radii=(0.0, -0.25)), "finite and >= 0"),
        (dict(radii=(0.5, 0.25)), "strictly increasing"),
        (dict(radii=None, radius_tol=0.0), "radius_tol must be a finite number > 0"),
        (dict(radii=None, radius_tol=-1.0), "radius_tol must be a finite number > 0"),
        (dict(radius_tol=0.1), "exactly one stopping goal"),
        (dict(radii=None), "exactly one stopping goal"),
        (dict(sigma=0.0), "sigma must be"),
        (dict(alpha=1.0), "alpha must lie strictly between 0 and 1"),
        (dict(n0=0), "n0 must be an integer >= 1"),
        (dict(n_max=2.5), "n_max must be an integer >= 1"),
        (dict(num_classes=1), "num_classes must be an integer >= 2"),
        (dict(bound="bonferroni"), "bound must be one of"),
    ],
)
def test_bad_arguments(overrides, message):
    args = dict(GOOD, **overrides)
    with pytest.raises(ValueError, match=message):
        rsjax.sequential_certify_from_sampler(lambda m: np.array([m, 0, 0]), **args)


@pytest.mark.parametrize(
    "sample, error, message",
    [
        (lambda m: np.array([m, 0]), ValueError, r"shape \(3,\), got \(2,\)"),
        (lambda m: np.array([[m, 0, 0]]), ValueError, r"shape \(3,\), got \(1, 3\)"),
        (lambda m: np.array([m + 1, 0, 0]), ValueError, "more than the"),
        (lambda m: np.array([m - 1, 0, 0]), ValueError, "fewer than the"),
        (lambda m: np.array([m + 1, -1, 0]), ValueError, "negative counts"),
        (lambda m: np.array([float(m), 0, 0]), TypeError, "integer counts"),
    ],
)
def test_bad_sampler(sample, error, message):
    with pytest.raises(error, match=message):
        rsjax.sequential_certify_from_sampler(sample, **GOOD)


def test_bad_sampler_after_selection_is_caught_too():
    calls = []

    def sample(m):
        calls.append(m)
        return np.array([m, 0, 0]) if len(calls) == 1 else np.array([2 * m, 0, 0])

    with pytest.raises(ValueError, match="more than the"):
        rsjax.sequential_certify_from_sampler(sample, **GOOD)


def test_device_path_bad_arguments():
    logits_fn, w, x = _linear_model()
    base = dict(sigma=0.5, n0=50, alpha=0.01, num_classes=3, params=w)
    with pytest.raises(ValueError, match="give n_max=..., not n"):
        rsjax.certify(
            jax.random.key(0), logits_fn, x, n=100, sampling="sequential", radii=RADII, **base
        )
    with pytest.raises(ValueError, match="needs n_max"):
        rsjax.certify(jax.random.key(0), logits_fn, x, sampling="sequential", radii=RADII, **base)
    with pytest.raises(ValueError, match="method='cohen'"):
        rsjax.certify(
            jax.random.key(0),
            logits_fn,
            x,
            sampling="sequential",
            n_max=100,
            radii=RADII,
            method="tcertify",
            **base,
        )
    with pytest.raises(ValueError, match="belong to sampling='sequential'"):
        rsjax.certify(jax.random.key(0), logits_fn, x, n=100, radii=RADII, **base)
    with pytest.raises(ValueError, match="sampling must be one of"):
        rsjax.certify(jax.random.key(0), logits_fn, x, n=100, sampling="adaptive", **base)
    with pytest.raises(ValueError, match="NaN"):
        rsjax.certify(
            jax.random.key(0),
            logits_fn,
            x * jnp.nan,
            sampling="sequential",
            n_max=100,
            radii=RADII,
            **base,
        )
