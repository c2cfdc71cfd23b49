"""Tests for rsjax.votes: the counts depend only on (key, example index, stream, sample number), so
they are identical for every chunk size, example batch size, device count, example order and resume
point; plus the basic contract (int32, rows sum to n, streams differ) and one probabilistic check of
the noise against the closed form for a linear classifier.

All on the four host CPU devices that conftest.py forces; the classifiers are tiny linear maps. Every
new (padded batch, num_samples, chunk_size, stream, mesh) compiles anew (about 1.5 s on a CPU), so the
tests reuse a few shapes: 12 examples, n = n0 = 300, chunk 64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import rsjax
from rsjax import monitor, runs, sharding, votes

NUM_CLASSES = 10
SIGMA = 0.5
N = 300
B = 12

_rng = np.random.default_rng(20240611)
# A fixed random linear map 8x8x1 -> 10 classes; at sigma = 0.5 its votes spread over several classes.
PARAMS = (
    jnp.asarray(_rng.normal(size=(64, NUM_CLASSES)).astype(np.float32)),
    jnp.asarray(_rng.normal(size=(NUM_CLASSES,)).astype(np.float32)),
)
X = _rng.uniform(size=(B, 8, 8, 1)).astype(np.float32)
IDX = np.arange(B)


def linear_logits(params, x):
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


def counts_of(
    x=X,
    idx=IDX,
    *,
    num_samples=N,
    chunk_size=64,
    stream=votes.ESTIMATION,
    mesh=None,
    key=None,
    num_classes=NUM_CLASSES,
):
    key = jax.random.key(0) if key is None else key
    return votes.count_votes(
        key,
        linear_logits,
        PARAMS,
        x,
        idx,
        sigma=SIGMA,
        num_classes=num_classes,
        num_samples=num_samples,
        chunk_size=chunk_size,
        stream=stream,
        mesh=mesh,
    )


@pytest.fixture(scope="module")
def reference():
    """Counts of the whole batch in one call, chunks of 64 samples, all four devices."""
    return counts_of()


def test_contract(reference):
    assert len(jax.devices()) == 4  # conftest.py
    assert isinstance(reference, np.ndarray)
    assert reference.shape == (B, NUM_CLASSES) and reference.dtype == np.int32
    np.testing.assert_array_equal(reference.sum(axis=1), N)
    assert np.all(reference >= 0)
    # The noise matters: several classes get votes, and examples differ.
    assert np.all((reference > 0).sum(axis=1) >= 2)
    assert len({tuple(row) for row in reference}) == B


@pytest.mark.parametrize("chunk_size", [1, 7, 299, 1000])
def test_chunk_size_invariance(reference, chunk_size):
    """The reference uses 64 (5 chunks, the last one padded); 7 and 299 (two chunks of 150) do not
    divide n either; 1 is one sample per step; 1000 > n is a single chunk."""
    np.testing.assert_array_equal(counts_of(chunk_size=chunk_size), reference)


def test_balanced_chunk():
    assert votes.balanced_chunk(300, 1000) == (1, 300)
    assert votes.balanced_chunk(300, 299) == (2, 150)
    assert votes.balanced_chunk(300, 7) == (43, 7)
    for n in [1, 2, 99, 100, 101, 1000]:
        for chunk in [1, 3, 64, 100, 5000]:
            num_chunks, size = votes.balanced_chunk(n, chunk)
            assert size <= chunk and num_chunks * size >= n and (num_chunks - 1) * size < n
            assert num_chunks * size - n < num_chunks  # balanced: little padding
    with pytest.raises(ValueError, match="noise samples must be >= 1"):
        votes.balanced_chunk(0, 10)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        votes.balanced_chunk(10, 0)


@pytest.mark.parametrize("batch", [1, 3, 5, 8])
def test_example_batch_invariance(reference, batch):
    """Counting slices of the batch (ragged slices of 1, 2, 3 or 5 rows pad to 4 or 8 for the 4
    devices) gives the same rows."""
    parts = [counts_of(X[s : s + batch], IDX[s : s + batch]) for s in range(0, B, batch)]
    np.testing.assert_array_equal(np.concatenate(parts), reference)


def test_device_count_invariance(reference):
    """The reference runs on the default mesh of all four devices; one and two devices (and a ragged
    batch padded differently on each) give the same counts: no mesh is compared with itself."""
    one = sharding.batch_mesh(jax.devices()[:1])
    two = sharding.batch_mesh(jax.devices()[:2])
    assert one.size == 1 and two.size == 2 and len(jax.devices()) == 4
    np.testing.assert_array_equal(counts_of(mesh=one), reference)
    np.testing.assert_array_equal(counts_of(mesh=two), reference)
    # A ragged batch: 5 rows on one device, on two (padded to 6) and on four (padded to 8).
    np.testing.assert_array_equal(counts_of(X[:5], IDX[:5], mesh=one), reference[:5])
    np.testing.assert_array_equal(counts_of(X[:5], IDX[:5], mesh=two), reference[:5])
    four = sharding.batch_mesh(jax.devices())
    np.testing.assert_array_equal(counts_of(X[:5], IDX[:5], mesh=four), reference[:5])


def test_order_invariance(reference):
    perm = np.random.default_rng(3).permutation(B)
    np.testing.assert_array_equal(counts_of(X[perm], IDX[perm]), reference[perm])


def test_subset_and_resume(reference):
    """Examples 5..9 alone, given their global indices, draw exactly the noise of the full run."""
    np.testing.assert_array_equal(counts_of(X[5:10], np.arange(5, 10)), reference[5:10])
    # Without the global indices they would be examples 0..4: different noise.
    assert not np.array_equal(counts_of(X[5:10], np.arange(5)), reference[5:10])


def test_more_samples_extend_the_same_sequence(reference):
    """Sample j's noise depends on j only, so n = 100 counts the first 100 of the n = 300 samples."""
    first = counts_of(num_samples=100)
    assert np.all(first <= reference)
    np.testing.assert_array_equal(first.sum(axis=1), 100)


def test_streams_and_keys_differ(reference):
    selection = counts_of(stream=votes.SELECTION)
    np.testing.assert_array_equal(selection.sum(axis=1), N)
    # Independent draws: rows agree only by chance (not one of 12 here).
    assert not np.any(np.all(selection == reference, axis=1))
    other_key = counts_of(key=jax.random.key(1))
    assert not np.any(np.all(other_key == reference, axis=1))
    # Same key, same stream: bit-for-bit reproducible.
    np.testing.assert_array_equal(counts_of(), reference)


def test_certify_batch_size_device_and_resume_invariance():
    """End to end through rsjax.certify: the certificates (hence the counts) do not depend on
    batch_size, chunk_size, the mesh, or running a subset with its global indices."""
    key = jax.random.key(7)
    # n0 = n so that the selection and estimation streams share compiled shapes.
    kw = dict(
        sigma=SIGMA,
        n0=N,
        n=N,
        alpha=0.01,
        num_classes=NUM_CLASSES,
        params=PARAMS,
        method="tcertify",
        chunk_size=64,
    )
    full = rsjax.certify(key, linear_logits, X, batch_size=64, **kw)
    assert np.any(full.prediction != rsjax.ABSTAIN)
    variants = [
        rsjax.certify(key, linear_logits, X, batch_size=5, **kw),  # batches of 5, 5, 2
        rsjax.certify(
            key, linear_logits, X, batch_size=64, mesh=sharding.batch_mesh(jax.devices()[:1]), **kw
        ),
    ]
    for other in variants:
        for got, want in zip(other, full, strict=True):
            np.testing.assert_array_equal(got, want)
    part = rsjax.certify(key, linear_logits, X[5:10], idx=np.arange(5, 10), batch_size=64, **kw)
    for got, want in zip(part, full, strict=True):
        np.testing.assert_array_equal(got, want[5:10])
    # predict uses the estimation stream: its counts are those of count_votes(stream=ESTIMATION).
    pred = rsjax.predict(
        key,
        linear_logits,
        X,
        sigma=SIGMA,
        n=N,
        alpha=0.01,
        num_classes=NUM_CLASSES,
        params=PARAMS,
        chunk_size=64,
    )
    counts = votes.count_votes(
        key,
        linear_logits,
        PARAMS,
        X,
        IDX,
        sigma=SIGMA,
        num_classes=NUM_CLASSES,
        num_samples=N,
        chunk_size=64,
        stream=votes.ESTIMATION,
    )
    want = rsjax.predict_from_counts(counts, alpha=0.01)
    np.testing.assert_array_equal(pred.prediction, want.prediction)
    np.testing.assert_array_equal(pred.pvalue, want.pvalue)


def test_logits_fn_without_params():
    """logits_fn(x) (params=None, weights closed over) counts exactly like logits_fn(params, x)."""

    def closed(x):
        return linear_logits(PARAMS, x)

    key = jax.random.key(5)
    kw = dict(sigma=SIGMA, n=N, alpha=0.05, num_classes=NUM_CLASSES, chunk_size=64)
    a = rsjax.predict(key, closed, X, **kw)
    b = rsjax.predict(key, linear_logits, X, params=PARAMS, **kw)
    for got, want in zip(a, b, strict=True):
        np.testing.assert_array_equal(got, want)


def test_vote_fraction_matches_linear_closed_form():
    """For f(x) = [s, -s], s = w.x + b, the vote for class 0 is Bernoulli(Phi(s(x) / (sigma ||w||))),
    so counts[:, 0] ~ Binomial(n, Phi(s / (sigma ||w||))) independently per example.

    Each example's count must lie in the central 1 - 1e-6 binomial interval: false-alarm probability
    <= 8 * 1e-6 for the 8 examples (fixed key, so the outcome is reproducible).
    """
    rng = np.random.default_rng(11)
    w = rng.normal(size=16)
    b = -0.5 * w.sum()
    sigma, n = 0.3, 20000
    unit = w / np.linalg.norm(w)
    signed_margin = np.linspace(-2, 2, 8) * sigma  # s / ||w||, from -2 sigma to 2 sigma
    x = (0.5 + signed_margin[:, None] * unit[None, :]).reshape(8, 4, 4, 1).astype(np.float32)
    params = (jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32))

    def binary_logits(params, x):
        s = x.reshape(x.shape[0], -1) @ params[0] + params[1]
        return jnp.stack([s, -s], axis=-1)

    counts = votes.count_votes(
        jax.random.key(2),
        binary_logits,
        params,
        x,
        np.arange(8),
        sigma=sigma,
        num_classes=2,
        num_samples=n,
        chunk_size=5000,
        stream=votes.ESTIMATION,
    )
    margin = (x.reshape(8, -1).astype(np.float64) @ w + b) / np.linalg.norm(w)
    p = stats.norm.cdf(margin / sigma)
    low, high = stats.binom.interval(1 - 1e-6, n, p)
    assert np.all((low <= counts[:, 0]) & (counts[:, 0] <= high)), (counts[:, 0], n * p)


def test_no_implicit_transfers_and_no_recompiles():
    """The hot path makes no hidden host-device transfer, and batches of one shape compile once."""
    x = np.asarray(jax.random.uniform(jax.random.key(5), (4, 8, 8, 1)))
    traces = []

    def counting_logits_fn(params, images):
        traces.append(images.shape)
        return linear_logits(params, images)

    kw = dict(sigma=0.5, num_classes=10, num_samples=50, chunk_size=16, stream=votes.ESTIMATION)
    key = jax.random.key(0)
    votes.count_votes(key, counting_logits_fn, PARAMS, x, np.arange(4), **kw)
    with jax.transfer_guard("disallow"):
        for start in (4, 8, 12):
            votes.count_votes(key, counting_logits_fn, PARAMS, x, np.arange(start, start + 4), **kw)
    assert len(traces) == 1, traces


def test_bad_indices_are_rejected():
    x = np.zeros((3, 8, 8, 1), np.float32)
    kw = dict(sigma=0.5, num_classes=10, num_samples=5, chunk_size=5, stream=votes.SELECTION)
    for idx, message in (
        ([0, 1], "one global index per image"),
        ([0, 1, 1], "duplicates"),
        ([0, -1, 2], r"\[0, 2\^32\)"),
        ([0.0, 1.0, 2.0], "integers"),
    ):
        with pytest.raises((ValueError, TypeError), match=message):
            votes.count_votes(jax.random.key(0), linear_logits, PARAMS, x, np.asarray(idx), **kw)


# --------------------------------------------------------------------------------------------------
# Non-finite logits never vote: every path that counts raises NonFiniteLogitsError naming the
# examples and their number of non-finite draws.


def nan_when_bright(params, x):
    """linear_logits, but NaN on every draw of an image whose noisy mean exceeds 0.6: images set to
    0.95 get NaN on all their draws, images drawn from U(0, 0.25) on none (the noisy mean of 64
    pixels has standard deviation 0.5 / 8 = 0.0625 at sigma 0.5: 5.6 of them from 0.6 at worst)."""
    logits = linear_logits(params, x)
    bright = x.reshape(x.shape[0], -1).mean(axis=1, keepdims=True) > 0.6
    return jnp.where(bright, jnp.nan, logits)


def inf_on_some_draws(params, x):
    """linear_logits with +inf on class 3 where the noisy first pixel exceeds 1: some draws only."""
    logits = linear_logits(params, x)
    return jnp.where(x[:, :1, 0, 0] > 1.0, logits.at[:, 3].set(jnp.inf), logits)


DIM = np.random.default_rng(7).uniform(0, 0.25, size=(B, 8, 8, 1)).astype(np.float32)
BRIGHT = (1, 4, 5, 11)  # positions in the batch set to 0.95


def _dim_and_bright():
    x = DIM.copy()
    x[list(BRIGHT)] = 0.95
    return x


@pytest.mark.parametrize("devices", [1, 4])
def test_nonfinite_logits_on_some_images_name_those_images(devices):
    """NaN for some images of a batch only: the error names exactly their global indices and all n
    of their draws, on a 1-device and on the 4-device mesh (the count is made on the device)."""
    mesh = sharding.batch_mesh(jax.devices()[:devices])
    idx = IDX + 1000
    with pytest.raises(votes.NonFiniteLogitsError, match="example 1001: 300 draws") as caught:
        votes.count_votes(
            jax.random.key(0),
            nan_when_bright,
            PARAMS,
            _dim_and_bright(),
            idx,
            sigma=SIGMA,
            num_classes=NUM_CLASSES,
            num_samples=N,
            chunk_size=64,
            stream=votes.ESTIMATION,
            mesh=mesh,
        )
    assert caught.value.indices == [1000 + i for i in BRIGHT]
    assert caught.value.draws == [N] * len(BRIGHT)
    assert "NaN or infinite logits for 4 example(s)" in str(caught.value)
    # The same images without the bright ones count normally (no false alarm).
    keep = np.setdiff1d(IDX, BRIGHT)
    counts = votes.count_votes(
        jax.random.key(0),
        nan_when_bright,
        PARAMS,
        DIM[keep],
        idx[keep],
        sigma=SIGMA,
        num_classes=NUM_CLASSES,
        num_samples=N,
        chunk_size=64,
        stream=votes.ESTIMATION,
        mesh=mesh,
    )
    np.testing.assert_array_equal(counts.sum(axis=1), N)


def test_nonfinite_logits_on_some_draws_are_counted_exactly():
    """inf on the draws whose noisy first pixel exceeds 1 (some draws of each image): the error
    gives, per example, exactly the number of such draws, recomputed from votes.noisy_inputs."""
    x = np.full((3, 8, 8, 1), 0.5, np.float32)
    idx = np.array([3, 9, 27])
    key = jax.random.key(2)
    with jax.threefry_partitionable(False):  # the noise of count_votes (module docstring)
        noisy = votes.noisy_inputs(
            votes.example_keys(key, idx, votes.SELECTION), x, jnp.arange(N, dtype=jnp.uint32), SIGMA
        )
    expected = np.asarray((noisy[:, :, 0, 0, 0] > 1.0).sum(axis=1))
    assert np.all((expected > 0) & (expected < N))  # some draws, not all
    with pytest.raises(votes.NonFiniteLogitsError) as caught:
        votes.count_votes(
            key,
            inf_on_some_draws,
            PARAMS,
            x,
            idx,
            sigma=SIGMA,
            num_classes=NUM_CLASSES,
            num_samples=N,
            chunk_size=64,
            stream=votes.SELECTION,
        )
    assert caught.value.indices == [3, 9, 27]
    assert caught.value.draws == [int(d) for d in expected]
    assert "selection draws" in str(caught.value)


def _nan_everywhere(x):
    return jnp.full((x.shape[0], NUM_CLASSES), jnp.nan)


NAN_PARAMS = (PARAMS[0].at[3, 2].set(jnp.nan), PARAMS[1])


@pytest.mark.parametrize(
    "path",
    [
        "certify",
        "tcertify",
        "predict",
        "sequential",
        "smooth_certify",
        "smooth_predict",
        "in_rounds",
        "nan_params",
        "monitor",
    ],
)
def test_every_path_refuses_nonfinite_logits(path):
    """NaN everywhere (the issue's probe: prediction 0 at the largest radius n allowed before), or
    NaN parameters: every public path raises instead of returning a certificate or a prediction."""
    key = jax.random.key(1)
    x = DIM[:3]
    common = dict(sigma=0.25, alpha=0.001, num_classes=NUM_CLASSES, chunk_size=64)
    calls = {
        "certify": lambda: rsjax.certify(key, _nan_everywhere, x, n0=100, n=1000, **common),
        "tcertify": lambda: rsjax.certify(
            key, _nan_everywhere, x, n0=100, n=1000, method="tcertify", **common
        ),
        "predict": lambda: rsjax.predict(key, _nan_everywhere, x, n=1000, **common),
        "sequential": lambda: rsjax.certify(
            key, _nan_everywhere, x, n0=100, sampling="sequential", n_max=1000, radii=(0,), **common
        ),
        "smooth_certify": lambda: rsjax.Smooth(
            _nan_everywhere, num_classes=NUM_CLASSES, sigma=0.25, chunk_size=64
        ).certify(key, x[0], n0=100, n=1000, alpha=0.001, idx=7),
        "smooth_predict": lambda: rsjax.Smooth(
            _nan_everywhere, num_classes=NUM_CLASSES, sigma=0.25, chunk_size=64
        ).predict(key, x, n=1000, alpha=0.001),
        "in_rounds": lambda: votes.count_votes_in_rounds(
            key,
            linear_logits,
            NAN_PARAMS,
            x,
            np.arange(3),
            start=np.array([0, 100, 0]),
            stop=np.array([100, 200, 0]),  # the third row is an empty range: no draw, no error
            looks=np.array([100, 200]),
            sigma=0.25,
            num_classes=NUM_CLASSES,
            chunk_size=64,
            stream=votes.ESTIMATION,
        ),
        "nan_params": lambda: rsjax.certify(
            key, linear_logits, x, params=NAN_PARAMS, n0=100, n=1000, **common
        ),
        "monitor": lambda: monitor.vote_accuracy(
            key,
            linear_logits,
            NAN_PARAMS,
            x,
            np.zeros(3, int),
            sigma=0.25,
            num_classes=NUM_CLASSES,
            num_noise=8,
        ),
    }
    with pytest.raises(votes.NonFiniteLogitsError) as caught:
        calls[path]()
    wanted = {"smooth_certify": [7], "in_rounds": [0, 1]}.get(path, [0, 1, 2])
    assert caught.value.indices == wanted


def test_runner_stops_on_nonfinite_logits_and_keeps_earlier_rows(tmp_path):
    """rsjax.runs: the batch with a NaN image raises; rows of the batches before it stay written."""
    x = _dim_and_bright()[:8]  # positions 1, 4, 5 are bright: the first batch of 1 is clean
    outputs = {"cohen": tmp_path / "cohen.tsv"}
    with pytest.raises(votes.NonFiniteLogitsError, match="example 1: 300 draws"):
        runs.certify_dataset(
            jax.random.key(0),
            nan_when_bright,
            PARAMS,
            x,
            np.zeros(8, np.int64),
            range(8),
            outputs=outputs,
            sigma=SIGMA,
            n0=N,
            n=N,
            alpha=0.01,
            num_classes=NUM_CLASSES,
            chunk_size=64,
            batch_size=1,
            show_progress=False,
        )
    rows = outputs["cohen"].read_text().splitlines()
    assert [row.split("\t")[0] for row in rows[1:]] == ["0"]
    with pytest.raises(votes.NonFiniteLogitsError, match="example 1: "):
        runs.certify_dataset_sequential(
            jax.random.key(0),
            nan_when_bright,
            PARAMS,
            x,
            np.zeros(8, np.int64),
            range(8),
            output=tmp_path / "sequential.tsv",
            sigma=SIGMA,
            n0=N,
            n_max=N,
            alpha=0.01,
            radii=(0.0,),
            num_classes=NUM_CLASSES,
            chunk_size=64,
            batch_size=1,
            show_progress=False,
        )
