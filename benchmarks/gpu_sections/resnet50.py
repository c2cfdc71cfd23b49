"""The resnet50 section of the GPU suite: rsjax.certify (CERTIFY, fixed n) with torchvision's
ImageNet ResNet-50 (rsjax.models "resnet50", the architecture of Cohen et al.'s ImageNet checkpoints)
on random 224x224x3 images, random weights; seconds per image at n = 100,000.

Cohen et al.'s PyTorch code is reported to take about 110 s per ImageNet image at n = 100,000 on
their GPU (REFERENCE section 5): the row states its own device, which is not theirs.

Not among the default sections (one image at n = 100,000 is about 820 TFLOP, 30-60 s on one
H100 in float32, twice): run it by name, `bash benchmarks/gpu_suite.sh --sections resnet50`.

References: He et al., CVPR 2016 (ResNet-50); Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY, the
ImageNet timing); benchmarks/gpu_sections/certify.py (the same two-call timing).
"""

import jax
import jax.numpy as jnp
import numpy as np

import rsjax
from rsjax import models, votes

from .certify import twice
from .harness import error_text, fmt
from .workloads import SIGMA, lowered_flops, tflops

NAME = "resnet50"
SHAPE = (224, 224, 3)
NUM_CLASSES = 1000
COHEN_S_PER_IMAGE = 110.0  # REFERENCE section 5: users of his code, one GPU, n = 100,000
_MODEL: dict = {}


def get_resnet50() -> dict:
    """{"logits_fn", "variables", "flops"}: random init from an "rbg" key (see
    workloads.get_model), ImageNet normalisation inside, built once per process."""
    if not _MODEL:
        model = models.make_model(NAME, num_classes=NUM_CLASSES, dataset="imagenet")
        variables = models.init_variables(model, jax.random.key(0, impl="rbg"), SHAPE)
        logits_fn = models.make_logits_fn(model)
        x = jnp.zeros((8, *SHAPE), jnp.float32)
        _MODEL.update(
            logits_fn=logits_fn,
            variables=variables,
            flops=lowered_flops(logits_fn, variables, x, per=8),
        )
    return _MODEL


def section_resnet50(suite, budget, args):
    images, n0, n = args.resnet50_images, args.resnet50_n0, args.resnet50_n
    chunk = args.resnet50_chunk or votes.default_chunk_size()
    settings = f"{images} image(s) 224x224x3, n0 {n0}, n {n:,}, alpha {args.alpha}, sigma {SIGMA}"
    model_cell = "ResNet-50 (224x224x3)"
    try:
        m = get_resnet50()
        key = jax.random.key(6, impl="rbg")  # synthetic images, as workloads' weights
        x = np.asarray(jax.random.uniform(key, (images, *SHAPE)))
        batch_size = min(8, images)

        def call():
            return rsjax.certify(
                jax.random.key(7),
                m["logits_fn"],
                x,
                sigma=SIGMA,
                n0=n0,
                n=n,
                alpha=args.alpha,
                num_classes=NUM_CLASSES,
                chunk_size=chunk,
                batch_size=batch_size,
                params=m["variables"],
            )

        first, steady, cert = twice(budget, call, lambda cert: None)
    except Exception as e:  # reported as a row
        suite.skip("resnet50", NAME, settings, error_text(e))
        return
    t = steady if steady is not None else first
    per_image = t / images
    samples_per_s = images * (n0 + n) / t
    abstain = int((np.asarray(cert.prediction) == rsjax.ABSTAIN).sum())
    compile_s = None if steady is None else max(first - steady, 0.0)
    suite.add(
        dict(
            section="resnet50",
            model=NAME,
            input_shape=list(SHAPE),
            num_classes=NUM_CLASSES,
            images=images,
            n0=n0,
            n=n,
            alpha=args.alpha,
            sigma=SIGMA,
            chunk=chunk,
            batch_size=batch_size,
            first_call_s=first,
            steady_call_s=steady,
            per_image_s=per_image,
            per_image_includes_compile=steady is None,
            compile_s=compile_s,
            samples_per_s=samples_per_s,
            flops_per_input=m["flops"],
            tflops_per_s=tflops(m["flops"], samples_per_s),
            cohen_reported_s_per_image=COHEN_S_PER_IMAGE,
            abstained=abstain,
            predictions=np.asarray(cert.prediction).tolist(),
            mean_radius=float(np.mean(cert.radius)),
            units={
                "*_s": "s",
                "samples_per_s": "noise samples/s (n0 + n per image)",
                "flops_per_input": "FLOP (XLA cost analysis of the forward pass)",
                "cohen_reported_s_per_image": "s per ImageNet image at n = 100,000, their GPU",
            },
        ),
        {
            "model": model_cell,
            "settings": settings,
            "throughput": f"{fmt(samples_per_s)} samples/s",
            "per item": f"{per_image:.2f} s/image" + (" (incl. compile)" if steady is None else ""),
            "ratio": f"{COHEN_S_PER_IMAGE / per_image:.1f}x vs Cohen's ~110 s/image"
            if n == 100_000
            else "",
            "TFLOP/s": fmt(tflops(m["flops"], samples_per_s), 2),
            "compile s": "-" if compile_s is None else f"{compile_s:.1f}",
            "timed": 1,
            "note": f"random weights: {images - abstain}/{images} certified,"
            f" mean radius {np.mean(cert.radius):.3f}"
            + ("; steady call skipped: budget" if steady is None else ""),
        },
    )
