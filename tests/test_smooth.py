"""Tests for rsjax.smooth: the Smooth class over rsjax.certify / rsjax.predict.

1. Equality with the functional API on the same key: a batch gives exactly rsjax.certify's (and
   rsjax.predict's) arrays; one image gives row i of the batch as Python scalars when idx=i.
2. Layout: an NCHW model with layout="NCHW" on NCHW images gives exactly the NHWC results (the noise
   is drawn in NHWC either way).
3. Input validation: layout, rank, sigma, num_classes, chunk_size, and the model's number of logits.

Everything is deterministic (fixed keys and seeds); nothing here is a statistical test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rsjax
from rsjax import ABSTAIN, Certificate, Prediction, Smooth

H, W, C, K = 3, 4, 2, 3
SIGMA = 0.25
CERTIFY_ARGS = dict(n0=50, n=1000, alpha=1e-3)


def linear_logits(params, x):
    """(B, H, W, C) -> (B, K) logits of an affine classifier."""
    w, b = params
    return x.reshape(x.shape[0], -1) @ w + b


def nchw_logits(params, x):
    """The same classifier for (B, C, H, W) input; refuses any other layout."""
    assert x.shape[1:] == (C, H, W), x.shape
    return linear_logits(params, jnp.transpose(x, (0, 2, 3, 1)))


@pytest.fixture(scope="module")
def problem():
    """6 NHWC images and weights putting their margins around sigma: some certify, some abstain."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, H, W, C)).astype(np.float32)
    w = rng.normal(size=(H * W * C, K)).astype(np.float32)
    b = -(x.mean(axis=0).reshape(-1) @ w)
    return x, (jnp.asarray(w), jnp.asarray(b))


def assert_same(result, expected):
    assert type(result) is type(expected)
    for got, want in zip(result, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def assert_is_row(result, batch, i):
    """result is row i of the batch result, of the same NamedTuple type, as Python scalars."""
    assert type(result) is type(batch)
    for got, want in zip(result, batch, strict=True):
        assert type(got) in (int, float), type(got)
        assert got == want[i]


# --------------------------------------------------------------------------------------------------
# 1. Equality with the functional API


@pytest.mark.parametrize("method", ["cohen", "tcertify"])
def test_certify_equals_rsjax_certify(problem, method):
    x, params = problem
    smoothed = Smooth(linear_logits, num_classes=K, sigma=SIGMA, params=params)
    key = jax.random.key(7)
    expected = rsjax.certify(
        key,
        linear_logits,
        x,
        params=params,
        sigma=SIGMA,
        num_classes=K,
        method=method,
        **CERTIFY_ARGS,
    )
    answered = expected.prediction != ABSTAIN
    assert 0 < answered.sum() < len(x)  # the problem is not trivial either way

    batch = smoothed.certify(key, x, method=method, **CERTIFY_ARGS)
    assert_same(batch, expected)
    assert_same(smoothed.certify(key, x, method=method, batch_size=4, **CERTIFY_ARGS), expected)
    for i in range(len(x)):
        assert_is_row(smoothed.certify(key, x[i], idx=i, method=method, **CERTIFY_ARGS), batch, i)
    # The default index of one image is 0: it is row 0 of the batch.
    assert_is_row(smoothed.certify(key, x[0], method=method, **CERTIFY_ARGS), batch, 0)


def test_one_argument_logits_fn_and_chunk_size(problem):
    x, params = problem
    key = jax.random.key(7)

    def logits_fn(images):
        return linear_logits(params, images)

    expected = rsjax.certify(
        key, logits_fn, x, sigma=SIGMA, num_classes=K, chunk_size=300, **CERTIFY_ARGS
    )
    smoothed = Smooth(logits_fn, num_classes=K, sigma=SIGMA, chunk_size=300)
    assert_same(smoothed.certify(key, x, **CERTIFY_ARGS), expected)
    assert_is_row(smoothed.certify(key, x[2], idx=2, **CERTIFY_ARGS), expected, 2)


def test_predict_equals_rsjax_predict(problem):
    x, params = problem
    smoothed = Smooth(linear_logits, num_classes=K, sigma=SIGMA, params=params)
    key = jax.random.key(3)
    expected = rsjax.predict(
        key, linear_logits, x, params=params, sigma=SIGMA, n=1000, alpha=1e-3, num_classes=K
    )
    assert (expected.prediction != ABSTAIN).any()
    batch = smoothed.predict(key, x, n=1000, alpha=1e-3)
    assert_same(batch, expected)
    assert isinstance(batch, Prediction)
    for i in range(len(x)):
        assert_is_row(smoothed.predict(key, x[i], n=1000, alpha=1e-3, idx=i), batch, i)


# --------------------------------------------------------------------------------------------------
# 2. Layout


def test_nchw_equals_nhwc(problem):
    x, params = problem
    x_nchw = np.transpose(x, (0, 3, 1, 2))
    nhwc = Smooth(linear_logits, num_classes=K, sigma=SIGMA, params=params)
    nchw = Smooth(nchw_logits, num_classes=K, sigma=SIGMA, params=params, layout="NCHW")
    key = jax.random.key(11)
    expected = nhwc.certify(key, x, **CERTIFY_ARGS)
    assert_same(nchw.certify(key, x_nchw, **CERTIFY_ARGS), expected)
    assert_is_row(nchw.certify(key, x_nchw[4], idx=4, **CERTIFY_ARGS), expected, 4)
    assert_same(
        nchw.predict(key, x_nchw, n=1000, alpha=1e-3), nhwc.predict(key, x, n=1000, alpha=1e-3)
    )
    assert isinstance(expected, Certificate)


# --------------------------------------------------------------------------------------------------
# 3. Input validation


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(layout="NWHC"), r"layout must be one of \('NHWC', 'NCHW'\), got 'NWHC'"),
        (dict(layout="nhwc"), r"layout must be one of"),
        (dict(sigma=0.0), r"sigma must be a finite number > 0"),
        (dict(sigma=-0.5), r"sigma must be a finite number > 0"),
        (dict(num_classes=1), r"num_classes must be an integer >= 2, got 1"),
        (dict(num_classes=2.5), r"num_classes must be an integer >= 2"),
        (dict(chunk_size=0), r"chunk_size must be an integer >= 1"),
    ],
)
def test_bad_construction(problem, overrides, match):
    _, params = problem
    kw = dict(num_classes=K, sigma=SIGMA, params=params) | overrides
    with pytest.raises(ValueError, match=match):
        Smooth(linear_logits, **kw)


@pytest.mark.parametrize(
    "layout, shape, match",
    [
        ("NHWC", (H, W), r"NHWC image \(H, W, C\) or a batch \(B, H, W, C\), got shape \(3, 4\)"),
        ("NHWC", (1, 1, H, W, C), r"got shape \(1, 1, 3, 4, 2\)"),
        ("NCHW", (C, H * W), r"one NCHW image \(C, H, W\) or a batch \(B, C, H, W\), got shape"),
    ],
)
def test_bad_rank(problem, layout, shape, match):
    _, params = problem
    fn = nchw_logits if layout == "NCHW" else linear_logits
    smoothed = Smooth(fn, num_classes=K, sigma=SIGMA, params=params, layout=layout)
    x = np.full(shape, 0.5, np.float32)
    with pytest.raises(ValueError, match=match):
        smoothed.certify(jax.random.key(0), x, **CERTIFY_ARGS)
    with pytest.raises(ValueError, match=match):
        smoothed.predict(jax.random.key(0), x, n=100, alpha=1e-3)


def test_images_are_checked_after_the_transpose(problem):
    x, params = problem
    smoothed = Smooth(nchw_logits, num_classes=K, sigma=SIGMA, params=params, layout="NCHW")
    x_nchw = np.transpose(x, (0, 3, 1, 2))
    with pytest.raises(TypeError, match=r"floating point.*uint8"):
        smoothed.certify(jax.random.key(0), (x_nchw * 255).astype(np.uint8), **CERTIFY_ARGS)
    bad = x_nchw.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinite values \(1 of 6"):
        smoothed.certify(jax.random.key(0), bad, **CERTIFY_ARGS)
    # Cohen's images in 0..255 floats, one (C, H, W) image: refused with the convention stated
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\].*divide by 255"):
        smoothed.certify(jax.random.key(0), x_nchw[0] * 255.0, **CERTIFY_ARGS)
    with pytest.raises(ValueError, match=r"pixels in \[0, 1\]"):
        smoothed.predict(jax.random.key(0), x_nchw * 2.0 - 1.0, n=100, alpha=1e-3)


@pytest.mark.parametrize("num_classes", [2, 5])
def test_num_classes_must_match_the_model(problem, num_classes):
    x, params = problem
    smoothed = Smooth(linear_logits, num_classes=num_classes, sigma=SIGMA, params=params)
    match = rf"batch of shape \(1, 3, 4, 2\) to logits of shape \(1, 3\), but num_classes = {num_classes}"
    with pytest.raises(ValueError, match=match):
        smoothed.certify(jax.random.key(0), x, **CERTIFY_ARGS)
    with pytest.raises(ValueError, match=match):
        smoothed.predict(jax.random.key(0), x[0], n=100, alpha=1e-3)


def test_single_image_index_and_abstain_constant(problem):
    x, params = problem
    smoothed = Smooth(linear_logits, num_classes=K, sigma=SIGMA, params=params)
    assert Smooth.ABSTAIN == rsjax.ABSTAIN == -1
    key = jax.random.key(5)
    one = smoothed.predict(key, x[3], n=200, alpha=0.1, idx=np.int64(9))
    assert one == smoothed.predict(key, x[3], n=200, alpha=0.1, idx=[9])
    with pytest.raises(ValueError, match=r"idx must hold one global index per image"):
        smoothed.predict(key, x, n=200, alpha=0.1, idx=[0, 1])
