"""The certify and sequential sections of the GPU suite: rsjax.certify with fixed n (CERTIFY) and
with sequential sampling, on synthetic images of CIFAR shape; seconds per image.

References: Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY); benchmarks/sequential_bounds.py (the
sequential settings: n0 = 100, n_max = 100,000, alpha = 0.001, radii 0, 0.25, ..., 2.0).
"""

import time

import jax
import numpy as np

import rsjax
from rsjax import votes

from .harness import error_text, fmt
from .workloads import NUM_CLASSES, SIGMA, forward_flops, get_model, label, tflops

RADII = tuple(0.25 * i for i in range(9))


def vote_rate_of(suite, name, chunk):
    """The votes section's samples/s for (model, chunk) if measured, else None."""
    for row in suite.rows:
        if (
            row["section"] == "votes"
            and row["model"] == name
            and row.get("chunk") == chunk
            and row["status"] == "ok"
        ):
            return row["votes_samples_per_s"]
    return None


def twice(budget, call, estimate):
    """(first seconds, steady seconds or None, result): the steady call runs if estimate(result of
    the first call) (or the first call's time, where that is None) fits in the section."""
    t0 = time.perf_counter()
    result = call()
    first = time.perf_counter() - t0
    expected = estimate(result)
    if not budget.allows(expected if expected is not None else first):
        return first, None, result
    t0 = time.perf_counter()
    result = call()
    return first, time.perf_counter() - t0, result


def certify_images(args, shape):
    key = jax.random.key(5, impl="rbg")  # synthetic images: see workloads.get_model
    return np.asarray(jax.random.uniform(key, (args.certify_images, *shape)))


def certify_call(args, m, x, chunk, **sampling):
    """A no-argument call of rsjax.certify on model `m` and images `x` with the suite's settings
    (same key, sigma, n0, alpha, chunk and batch for fixed-n and sequential); `sampling` adds n= or
    sampling="sequential", n_max=, radii=."""

    def call():
        return rsjax.certify(
            jax.random.key(7),
            m["logits_fn"],
            x,
            sigma=SIGMA,
            n0=args.n0,
            alpha=args.alpha,
            num_classes=NUM_CLASSES,
            chunk_size=chunk,
            batch_size=min(8, len(x)),
            params=m["variables"],
            **sampling,
        )

    return call


def section_certify(suite, budget, args):
    name, images, n0, n = args.resnet, args.certify_images, args.n0, args.certify_n
    settings = f"{images} images, n0 {n0}, n {n:,}, alpha {args.alpha}, sigma {SIGMA}"
    m = get_model(name)
    x = certify_images(args, m["shape"])
    chunk = args.certify_chunk or votes.default_chunk_size()
    call = certify_call(args, m, x, chunk, n=n)
    rate = vote_rate_of(suite, name, chunk)
    estimate = None if rate is None else images * (n0 + n) / rate
    try:
        first, steady, cert = twice(budget, call, lambda cert: estimate)
    except Exception as e:  # reported as a row
        suite.skip("certify", name, settings, error_text(e))
        return
    t = steady if steady is not None else first
    samples_per_s = images * (n0 + n) / t
    flops = forward_flops(name)
    abstain = int((cert.prediction == rsjax.ABSTAIN).sum())
    suite.add(
        dict(
            section="certify",
            model=name,
            images=images,
            n0=n0,
            n=n,
            alpha=args.alpha,
            sigma=SIGMA,
            chunk=chunk,
            batch_size=min(8, images),
            first_call_s=first,
            steady_call_s=steady,
            per_image_s=t / images,
            per_image_includes_compile=steady is None,
            compile_s=None if steady is None else max(first - steady, 0.0),
            samples_per_s=samples_per_s,
            tflops_per_s=tflops(flops, samples_per_s),
            abstained=abstain,
            predictions=cert.prediction.tolist(),
            mean_radius=float(cert.radius.mean()),
            units={
                "*_s": "s",
                "samples_per_s": "noise samples/s (n0 + n per image)",
                "mean_radius": "l2, [0,1] pixels",
            },
        ),
        {
            "model": label(name),
            "settings": settings,
            "throughput": f"{fmt(samples_per_s)} samples/s",
            "per item": f"{t / images:.3f} s/image"
            + (" (incl. compile)" if steady is None else ""),
            "TFLOP/s": fmt(tflops(flops, samples_per_s), 2),
            "compile s": "-" if steady is None else f"{max(first - steady, 0.0):.1f}",
            "timed": 1,
            "note": f"random weights: {images - abstain}/{images} certified,"
            f" mean radius {cert.radius.mean():.3f}"
            + ("; steady call skipped: budget" if steady is None else ""),
        },
    )


def section_sequential(suite, budget, args):
    name, images, n0, n_max = args.resnet, args.certify_images, args.n0, args.n_max
    settings = f"{images} images, n0 {n0}, n_max {n_max:,}, radii 0-2.0 by 0.25, alpha {args.alpha}"
    m = get_model(name)
    x = certify_images(args, m["shape"])
    chunk = args.certify_chunk or votes.default_chunk_size()
    call = certify_call(args, m, x, chunk, sampling="sequential", n_max=n_max, radii=RADII)
    rate = vote_rate_of(suite, name, chunk)
    try:  # the steady call's estimate: the first call's draws at the votes section's rate
        first, steady, cert = twice(
            budget,
            call,
            lambda cert: None if rate is None else float(np.sum(cert.num_samples)) / rate,
        )
    except Exception as e:  # reported as a row
        suite.skip("sequential", name, settings, error_text(e))
        return
    t = steady if steady is not None else first
    draws = np.asarray(cert.num_samples)
    abstain = int((np.asarray(cert.prediction) == rsjax.ABSTAIN).sum())
    to_max = int((draws >= n0 + n_max).sum())
    classes = sorted({int(c) for c in np.asarray(cert.prediction) if c != rsjax.ABSTAIN})
    samples_per_s = float(draws.sum()) / t
    flops = forward_flops(name)
    suite.add(
        dict(
            section="sequential",
            model=name,
            images=images,
            n0=n0,
            n_max=n_max,
            radii=list(RADII),
            alpha=args.alpha,
            sigma=SIGMA,
            chunk=chunk,
            bound="union",
            batch_size=min(8, images),
            first_call_s=first,
            steady_call_s=steady,
            per_image_s=t / images,
            per_image_includes_compile=steady is None,
            compile_s=None if steady is None else max(first - steady, 0.0),
            mean_draws=float(draws.mean()),
            median_draws=float(np.median(draws)),
            draws=draws.tolist(),
            ran_to_n_max=to_max,
            abstained=abstain,
            predicted_classes=classes,
            mean_radius=float(np.mean(cert.radius)),
            samples_per_s=samples_per_s,
            tflops_per_s=tflops(flops, samples_per_s),
            units={
                "*_s": "s",
                "*draws": "noise draws per image, n0 included",
                "samples_per_s": "draws/s",
            },
        ),
        {
            "model": label(name),
            "settings": settings,
            "throughput": f"{fmt(samples_per_s)} draws/s",
            "per item": f"{t / images:.3f} s/image, {fmt(draws.mean())} draws"
            + (" (incl. compile)" if steady is None else ""),
            "ratio": f"{(n0 + n_max) / draws.mean():.1f}x fewer draws",
            "TFLOP/s": fmt(tflops(flops, samples_per_s), 2),
            "compile s": "-" if steady is None else f"{max(first - steady, 0.0):.1f}",
            "timed": 1,
            "note": f"random weights: {images - abstain}/{images} certified, classes {classes}, "
            f"{to_max} ran to n_max, mean radius {np.mean(cert.radius):.3f}"
            + ("; steady call skipped: budget" if steady is None else ""),
        },
    )
