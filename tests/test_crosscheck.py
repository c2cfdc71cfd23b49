"""Independent cross-checks of every path that writes a certificate (issue 24, items 1, 4 and 5).

Each path is compared with the count-level functions on counts that the test draws itself with
`votes.count_votes` and the documented streams (selection: n0 draws of stream SELECTION; estimation:
n fresh draws of stream ESTIMATION), the same key and the same dataset indices:

1. `rsjax.certify` (CERTIFY, T-CERTIFY with both split rules), `rsjax.predict` and `rsjax.Smooth`
   equal `certify_from_counts` / `predict_from_counts` on those counts, field by field.
2. The dataset runner behind experiments/certify.py (`runs.certify_dataset`) writes TSV rows equal to
   those certificates row by row (radius rounded down to 3 significant digits, as documented), for
   several chunk sizes, batch sizes, 1 and 4 devices, and a run killed mid-file and resumed with
   other batch and chunk sizes on another device count.
3. The sequential runner (`runs.certify_dataset_sequential`, both bounds) writes rows equal to
   `sequential.certify_from_look_counts` on count_votes counts at every look, also on 1 and 4 devices
   and resumed with other sizes.

No path is compared with itself: the reference always comes from count_votes with a fixed chunk
size on the default four-device mesh, and each variant changes the path (another function, mesh,
batch or chunk size). A runner that drew its estimation counts from the selection stream, certified
at 2 alpha, or dropped the dataset index from the noise would disagree here row by row.

The model is a fixed linear map of 8x8x1 images to 4 classes whose votes spread over several
classes at sigma = 0.5 (so T-CERTIFY's runner-up bound and abstentions both occur); the shapes are
few so that the test compiles little. Everything is deterministic (fixed keys).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import rsjax
from rsjax import ABSTAIN, runs, sequential, sharding, votes
from rsjax.certify import certify_from_counts, predict_from_counts

K = 4
SIGMA = 0.5
# Not multiples of the chunk sizes used, so that padded noise samples exist and must not count.
N0, N = 49, 201
ALPHA = 0.05
CHUNK = 64
KEY = 11

_rng = np.random.default_rng(24)
W = jnp.asarray(_rng.normal(size=(64, K)).astype(np.float32))
IMAGES = _rng.uniform(size=(40, 8, 8, 1)).astype(np.float32)
# Index 1766 of the "dataset" holds a copy of image 6 (top-class share 0.61): with this key its
# candidate on the n0 = 49 selection draws differs from the one on 201, and one of them certifies
# (found by a search over indices), so a runner whose selection drew n samples would show.
NEAR_TIE = 1766
IMAGES = np.concatenate([IMAGES, np.repeat(IMAGES[6:7], NEAR_TIE + 1 - 40, axis=0)])
# Dataset indices certified: not 0..B-1, so that an index dropped from the noise would show.
INDICES = np.array([1, 4, 9, 16, 22, 27, 33, NEAR_TIE])
LABELS = np.asarray(IMAGES.reshape(len(IMAGES), -1) @ np.asarray(W)).argmax(axis=1)
LABELS[::3] = (LABELS[::3] + 1) % K  # some labels wrong, so `correct` varies


def logits_fn(w, x):
    return x.reshape(x.shape[0], -1) @ w


def one_device():
    return sharding.batch_mesh(jax.devices()[:1])


def reference_counts(num_samples, stream, indices=INDICES):
    """The documented draws, counted in one call on the default (four-device) mesh."""
    counts = votes.count_votes(
        jax.random.key(KEY),
        logits_fn,
        W,
        IMAGES[indices],
        indices,
        sigma=SIGMA,
        num_classes=K,
        num_samples=num_samples,
        chunk_size=CHUNK,
        stream=stream,
    )
    np.testing.assert_array_equal(counts.sum(axis=1), num_samples)
    return counts


@pytest.fixture(scope="module")
def counts():
    counts0 = reference_counts(N0, votes.SELECTION)
    counts = reference_counts(N, votes.ESTIMATION)
    assert len(jax.devices()) == 4  # conftest.py
    return counts0, counts


def reference_certificate(counts, method="cohen", alpha_split="selection"):
    counts0, counts = counts
    return certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method=method, alpha_split=alpha_split
    )


def assert_same(got, want):
    assert type(got) is type(want)
    for name, a, b in zip(want._fields, got, want, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_the_problem_is_not_trivial(counts):
    """Some examples certify and some abstain, votes spread over classes, and T-CERTIFY's runner-up
    bound binds somewhere: otherwise the cross-checks below could not tell the methods apart."""
    counts0, counts_ = counts
    cohen = reference_certificate(counts)
    tcertify = reference_certificate(counts, "tcertify")
    assert 0 < (cohen.prediction != ABSTAIN).sum() < len(INDICES)
    assert np.all((counts_ > 0).sum(axis=1) >= 2)
    assert np.any(tcertify.pb_upper < 1 - tcertify.pa_lower)
    # The near-tie image: n selection draws would choose another candidate and another answer.
    more = reference_counts(N, votes.SELECTION)
    other = certify_from_counts(more, counts_, sigma=SIGMA, alpha=ALPHA)
    assert other.prediction[-1] != cohen.prediction[-1]
    # The streams differ: the selection counts are not the first n0 estimation draws.
    first = reference_counts(N0, votes.ESTIMATION)
    assert not np.array_equal(first, counts0)
    # The dataset index seeds the noise: one image under two indices gets other draws.
    same_image = np.full(len(INDICES), INDICES[0])
    twice = votes.count_votes(
        jax.random.key(KEY),
        logits_fn,
        W,
        IMAGES[same_image],
        INDICES,
        sigma=SIGMA,
        num_classes=K,
        num_samples=N,
        chunk_size=CHUNK,
        stream=votes.ESTIMATION,
    )
    np.testing.assert_array_equal(twice[0], counts_[0])
    assert len({tuple(row) for row in twice}) > len(INDICES) // 2


def test_votes_follow_the_gaussian_closed_form():
    """The draws are x + sigma * N(0, I) in pixel units, independent across draws: a linear two-class
    classifier votes class 0 with probability Phi((w.x + b) / (sigma ||w||)). Over 8 images x 4,000
    draws each count stays within 5 binomial standard deviations of that (a correct rsjax fails this
    with probability < 1e-5); noise at 2 sigma, or one draw reused for every sample, is far outside."""
    w = np.asarray(W)[:, 0] - np.asarray(W)[:, 1]
    x = IMAGES[INDICES]
    b = -float(np.median(x.reshape(len(x), -1) @ w))  # margins on both sides of the hyperplane
    params = (jnp.asarray(w), jnp.float32(b))
    counts = votes.count_votes(
        jax.random.key(KEY),
        two_class_logits,
        params,
        x,
        INDICES,
        sigma=SIGMA,
        num_classes=2,
        num_samples=4000,
        chunk_size=500,
        stream=votes.ESTIMATION,
    )
    margin = (x.reshape(len(x), -1).astype(np.float64) @ w + b) / np.linalg.norm(w)
    p0 = stats.norm.cdf(margin / SIGMA)
    assert np.all((p0 > 0.05) & (p0 < 0.95))  # every image is informative about sigma
    sd = np.sqrt(4000 * p0 * (1 - p0))
    assert np.all(np.abs(counts[:, 0] - 4000 * p0) < 5 * sd), (counts[:, 0] / 4000, p0)


def two_class_logits(params, x):
    w, b = params
    s = x.reshape(x.shape[0], -1) @ w + b
    return jnp.stack([s, -s], axis=-1)


# --------------------------------------------------------------------------------------------------
# 0. The count-level function against a naive scipy reference at its levels (REFERENCE 1, 2)


def naive_two_sided(c, top, alpha_a, alpha_b):
    """(radius or None, pA_lower, pB_upper) of one row, straight from REFERENCE section 2."""
    n, k, na = int(c.sum()), len(c), int(c[top])
    pa = 0.0 if na == 0 else stats.beta.ppf(alpha_a, na, n - na + 1)
    pb = 1.0 - pa
    if alpha_b > 0:
        level = alpha_b / (k - 1)
        others = [
            1.0 if c[j] == n else stats.beta.ppf(1 - level, c[j] + 1, n - c[j])
            for j in range(k)
            if j != top
        ]
        pb = min(pb, max(others))
    radius = SIGMA / 2 * (stats.norm.ppf(pa) - stats.norm.ppf(pb)) if pa > pb else None
    return radius, pa, pb


def test_tcertify_union_and_fixed_splits_at_their_levels():
    """T-CERTIFY "union" is the best of the G splits with (1 - f) alpha / G for pA and f alpha / G for
    the runner-up (Bonferroni over K - 1), and a one-split grid uses (1 - f) alpha and f alpha; CERTIFY
    is alpha for pA. Checked row by row against scipy on simulated counts where the runner-up bound
    binds. (A union whose pA bound kept the whole alpha / G is invisible to any simulation: its pA
    bounds are nested. This exact check catches it.)"""
    rng = np.random.default_rng(3)
    p = np.r_[0.6, 0.3, np.full(K - 2, 0.1 / (K - 2))]
    two_class = np.r_[0.6, 0.4, np.zeros(K - 2)]  # where the cap 1 - pA_lower is the smaller bound
    counts0 = np.r_[rng.multinomial(50, p, size=30), rng.multinomial(50, two_class, size=10)]
    counts = np.r_[rng.multinomial(400, p, size=30), rng.multinomial(400, two_class, size=10)]
    grid = (0.0, 0.1, 0.25, 0.5)
    union = certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method="tcertify", alpha_split="union"
    )
    one_split = certify_from_counts(
        counts0, counts, sigma=SIGMA, alpha=ALPHA, method="tcertify", split_grid=(0.5,)
    )
    cohen = certify_from_counts(counts0, counts, sigma=SIGMA, alpha=ALPHA)
    binds = 0
    for i in range(len(counts)):
        top = int(counts0[i].argmax())
        tries = [naive_two_sided(counts[i], top, (1 - f) * ALPHA / 4, f * ALPHA / 4) for f in grid]
        best = max(tries, key=lambda t: -np.inf if t[0] is None else t[0])
        assert union.radius[i] == pytest.approx(best[0] or 0.0, rel=1e-9, abs=1e-12)
        if best[0] is not None:  # an abstaining union row reports the trivial bounds 0 and 1
            assert union.pa_lower[i] == pytest.approx(best[1], rel=1e-9)
            assert union.pb_upper[i] == pytest.approx(best[2], rel=1e-9)
        r, pa, pb = naive_two_sided(counts[i], top, ALPHA, 0.0)
        assert cohen.radius[i] == pytest.approx(r or 0.0, rel=1e-9, abs=1e-12)
        assert cohen.pa_lower[i] == pytest.approx(pa, rel=1e-9)
        if one_split.pa_lower[i] != cohen.pa_lower[i]:  # f = 0.5 (f = 0 is the fallback)
            r, pa, pb = naive_two_sided(counts[i], top, 0.5 * ALPHA, 0.5 * ALPHA)
            assert one_split.radius[i] == pytest.approx(r or 0.0, rel=1e-9, abs=1e-12)
            assert one_split.pa_lower[i] == pytest.approx(pa, rel=1e-9)
            assert one_split.pb_upper[i] == pytest.approx(pb, rel=1e-9)
            binds += pb < 1 - pa
    assert 20 < binds < len(counts)  # the runner-up bound binds in some rows, the cap in others


def test_pa_lower_of_exactly_one_half_abstains():
    """10 votes out of 10 at alpha = 2^-10 give pA_lower = alpha^(1/10) = 1/2 exactly (in floating
    point too): CERTIFY needs pA_lower > 1/2 and abstains, as does sequential CERTIFY at one look."""
    counts = np.array([[10, 0]])
    with pytest.warns(rsjax.bounds.NeverCertifiesWarning):
        cert = certify_from_counts(counts, counts, sigma=SIGMA, alpha=2.0**-10)
    assert cert.pa_lower[0] == 0.5
    assert cert.prediction[0] == ABSTAIN and cert.radius[0] == 0.0
    with pytest.warns(rsjax.bounds.NeverCertifiesWarning):
        plan = sequential.make_plan(sigma=SIGMA, alpha=2.0**-10, n0=1, n_max=10, radius_tol=0.1)
    assert plan.looks == (10,) and plan.alphas == (2.0**-10,)
    seq = sequential.certify_from_look_counts(plan, np.array([0]), np.array([1]), np.array([[10]]))
    assert seq.pa_lower[0] == 0.5
    assert seq.prediction[0] == ABSTAIN and seq.radius[0] == 0.0


def test_selection_split_is_chosen_on_the_selection_counts_alone():
    """T-CERTIFY "selection": for one selection-count row, every estimation outcome gets the same
    split, recovered from pA_lower (scipy at (1 - f) alpha). The estimation rows mix spread runner-up
    mass (where looking at them would favour alpha_B > 0) and two-class mass (where it would favour
    alpha_B = 0)."""
    rng = np.random.default_rng(5)
    spread_mass = np.r_[0.6, np.full(K - 1, 0.4 / (K - 1))]
    two_class = np.r_[0.6, 0.4, np.zeros(K - 2)]
    counts = np.r_[rng.multinomial(2000, spread_mass, 20), rng.multinomial(2000, two_class, 20)]
    n = counts.sum(axis=1)
    grid = (0.0, 0.1, 0.25, 0.5)
    for row in ([60, 14, 13, 13], [100, 0, 0, 0], [60, 40, 0, 0]):
        counts0 = np.tile(row, (len(counts), 1))
        cert = certify_from_counts(counts0, counts, sigma=SIGMA, alpha=ALPHA, method="tcertify")
        levels = np.stack(
            [stats.beta.ppf((1 - f) * ALPHA, counts[:, 0], n - counts[:, 0] + 1) for f in grid], 1
        )
        match = np.isclose(levels, cert.pa_lower[:, None], rtol=1e-10, atol=0)
        assert np.all(match.sum(axis=1) == 1)
        assert len(set(match.argmax(axis=1).tolist())) == 1, (row, match.argmax(axis=1))


# --------------------------------------------------------------------------------------------------
# 1. rsjax.certify, rsjax.predict and rsjax.Smooth against the count-level functions


@pytest.mark.parametrize(
    "method, alpha_split",
    [("cohen", "selection"), ("tcertify", "selection"), ("tcertify", "union")],
)
def test_certify_equals_certify_from_counts(counts, method, alpha_split):
    """One device and batches of 3: another mesh and other example batches than the reference."""
    got = rsjax.certify(
        jax.random.key(KEY),
        logits_fn,
        IMAGES[INDICES],
        params=W,
        idx=INDICES,
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        num_classes=K,
        method=method,
        alpha_split=alpha_split,
        chunk_size=40,
        batch_size=4,
        mesh=one_device(),
    )
    assert_same(got, reference_certificate(counts, method, alpha_split))


def test_predict_equals_predict_from_counts(counts):
    got = rsjax.predict(
        jax.random.key(KEY),
        logits_fn,
        IMAGES[INDICES],
        params=W,
        idx=INDICES,
        sigma=SIGMA,
        n=N,
        alpha=ALPHA,
        num_classes=K,
        chunk_size=40,
        batch_size=4,
        mesh=one_device(),
    )
    want = predict_from_counts(counts[1], alpha=ALPHA)
    assert_same(got, want)
    assert 0 < (want.prediction != ABSTAIN).sum()


def test_smooth_equals_the_count_level_functions(counts):
    smoothed = rsjax.Smooth(logits_fn, num_classes=K, sigma=SIGMA, params=W, chunk_size=40)
    key = jax.random.key(KEY)
    for method in ("cohen", "tcertify"):
        got = smoothed.certify(
            key,
            IMAGES[INDICES],
            n0=N0,
            n=N,
            alpha=ALPHA,
            idx=INDICES,
            method=method,
            batch_size=4,
            mesh=one_device(),
        )
        assert_same(got, reference_certificate(counts, method))
    got = smoothed.predict(
        key, IMAGES[INDICES], n=N, alpha=ALPHA, idx=INDICES, batch_size=4, mesh=one_device()
    )
    assert_same(got, predict_from_counts(counts[1], alpha=ALPHA))


# --------------------------------------------------------------------------------------------------
# 2. The dataset runner's TSV


def read_rows(path, sequential_columns=False):
    lines = open(path).read().splitlines()
    header = ["idx", "label", "predict", "radius", "correct", "time"]
    assert lines[0].split("\t") == header + (["num_samples"] if sequential_columns else [])
    return [line.split("\t") for line in lines[1:] if line]


def assert_radius_written(text, radius):
    """`text` is `radius` to 3 significant digits rounded down (records.format_radius's contract),
    and exactly "0" where the example abstains (radius 0.0)."""
    written = float(text)
    if radius == 0.0:
        assert written == 0.0, text
        return
    unit = 10.0 ** (math.floor(math.log10(radius)) - 2)
    assert written <= radius < written + unit * (1 + 1e-9), (text, radius)


def assert_rows_equal(rows, cert, indices=INDICES, num_samples=None):
    """Every row equals the reference certificate of its index; radius 0 exactly when abstaining;
    `correct` is predict == label."""
    assert [int(row[0]) for row in rows] == list(indices)
    for i, row in enumerate(rows):
        idx, label, predict, radius, correct = row[:5]
        assert int(label) == LABELS[int(idx)]
        assert int(predict) == cert.prediction[i], (idx, predict, cert.prediction[i])
        assert_radius_written(radius, cert.radius[i])
        assert (float(radius) == 0.0) == (int(predict) == ABSTAIN)
        assert int(correct) == int(int(predict) == int(label))
        if num_samples is not None:
            assert int(row[6]) == num_samples[i], (idx, row[6], num_samples[i])


def run_fixed(outdir, **kw):
    options = dict(chunk_size=CHUNK, batch_size=8, mesh=None, alpha_split="selection")
    options.update(kw)
    return runs.certify_dataset(
        jax.random.key(KEY),
        logits_fn,
        W,
        IMAGES,
        LABELS,
        INDICES,
        outputs={"cohen": outdir / "cohen.tsv", "tcertify": outdir / "tcertify.tsv"},
        sigma=SIGMA,
        n0=N0,
        n=N,
        alpha=ALPHA,
        num_classes=K,
        show_progress=False,
        **options,
    )


def cut(path, keep):
    """A run killed mid-write: `keep` complete rows, then a torn line."""
    lines = open(path).read().split("\n")
    open(path, "w").write("\n".join(lines[: 1 + keep]) + "\n" + lines[1 + keep][:4])


@pytest.mark.parametrize(
    "options",
    [
        dict(batch_size=8, chunk_size=CHUNK),
        dict(batch_size=3, chunk_size=40, mesh="one device"),
        dict(batch_size=4, chunk_size=200, alpha_split="union"),
    ],
    ids=["batch8-chunk64-4dev", "batch3-chunk40-1dev", "batch4-chunk200-union"],
)
def test_dataset_runner_rows_equal_certify_from_counts(counts, tmp_path, options):
    options = dict(options)
    if options.get("mesh"):
        options["mesh"] = one_device()
    paths = run_fixed(tmp_path, **options)
    split = options.get("alpha_split", "selection")
    assert_rows_equal(read_rows(paths["cohen"]), reference_certificate(counts))
    assert_rows_equal(
        read_rows(paths["tcertify"]), reference_certificate(counts, "tcertify", split)
    )


def test_dataset_runner_resumed_with_other_sizes_and_devices(counts, tmp_path):
    """Killed after 3 rows of one file and 5 of the other (batches of 4 on one device, chunk 40),
    resumed with batches of 3 on four devices and chunk 64: every row equals the reference."""
    run_fixed(tmp_path, batch_size=4, chunk_size=40, mesh=one_device())
    cut(tmp_path / "cohen.tsv", 3)
    cut(tmp_path / "tcertify.tsv", 5)
    paths = run_fixed(tmp_path, batch_size=3, chunk_size=CHUNK)
    assert_rows_equal(read_rows(paths["cohen"]), reference_certificate(counts))
    assert_rows_equal(read_rows(paths["tcertify"]), reference_certificate(counts, "tcertify"))


# --------------------------------------------------------------------------------------------------
# 3. The sequential runner's TSV

SEQ = dict(sigma=SIGMA, alpha=ALPHA, n0=N0, n_max=400, radii=(0.0, 0.1, 0.2))


def sequential_reference(plan):
    """certify_from_look_counts on count_votes' counts at every look (the first n_t draws)."""
    counts0 = reference_counts(N0, votes.SELECTION)
    top = counts0.argmax(axis=1)
    rows = np.arange(len(INDICES))
    k_looks = np.stack(
        [reference_counts(int(n), votes.ESTIMATION)[rows, top] for n in plan.looks], axis=1
    )
    return sequential.certify_from_look_counts(plan, top, counts0[rows, top], k_looks)


def run_sequential(path, bound, **kw):
    return runs.certify_dataset_sequential(
        jax.random.key(KEY),
        logits_fn,
        W,
        IMAGES,
        LABELS,
        INDICES,
        output=path,
        num_classes=K,
        bound=bound,
        show_progress=False,
        **SEQ,
        **kw,
    )


@pytest.mark.parametrize("bound", sequential.BOUNDS)
def test_sequential_runner_rows_equal_look_counts(tmp_path, bound):
    """Fresh on one device (batch 3, chunk 40); then a copy killed after 4 rows and resumed on four
    devices with batch 2 and chunk 64: both equal the reference, num_samples included."""
    plan = sequential.make_plan(bound=bound, **SEQ)
    want = sequential_reference(plan)
    assert len(set(want.num_samples.tolist())) > 1, "the images should stop at different looks"
    assert 0 < (want.prediction != ABSTAIN).sum() < len(INDICES)
    fresh = run_sequential(
        tmp_path / "a.tsv", bound, batch_size=3, chunk_size=40, mesh=one_device()
    )
    assert_rows_equal(read_rows(fresh, True), want, num_samples=want.num_samples)
    cut(fresh, 4)
    resumed = run_sequential(tmp_path / "a.tsv", bound, batch_size=2, chunk_size=CHUNK)
    assert_rows_equal(read_rows(resumed, True), want, num_samples=want.num_samples)
