"""Tests for rsjax.sequential: sequential CERTIFY with an anytime-valid lower bound.

1. Validity by simulation (default selection): for known multinomials (pA just above 1/2, pA whose
   true radius sits exactly on a grid radius, K = 2 and K = 100, pA = 1), 20,000 independent images
   per case at alpha = 0.05, for both stopping goals and both constructions. An image fails when it
   returns a class other than argmax p, or a radius above the true radius sigma * Phi^-1(pA). The
   failure rate must stay below alpha + 3 binomial standard errors (a valid procedure fails this
   with probability < 0.14% per case, over the seed).
2. The naive procedure, fixed-n Clopper-Pearson at the full alpha at every look, fails that check.
3. The three paths agree image by image on the same draws: the sampler API, certify_from_look_counts
   and the device path (rsjax.certify(..., sampling="sequential")); the device path does not depend
   on chunk size, batch size, round size, device count or order.
4. Bad input.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import rsjax
from rsjax import ABSTAIN, sequential, votes

ALPHA = 0.05
TRIALS = 20_000
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
    return alpha + 3 * np.sqrt(alpha * (1 - alpha) / TRIALS)


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
