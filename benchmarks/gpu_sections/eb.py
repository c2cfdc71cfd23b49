"""The eb section of the GPU suite: the empirical-Bayes classifier LeNet(xhat(y)) with the
convolutional energy `energy_mnist` against plain LeNet, by eb_throughput.measure_certify.

References: benchmarks/eb_throughput.py (the method, the models and sigma = 0.5).
"""

import eb_throughput  # a sibling script: gpu_suite.py puts benchmarks/ on sys.path
import jax.numpy as jnp

from rsjax import empirical_bayes, models, votes

from .harness import error_text, fmt
from .workloads import lowered_flops, tflops


def section_eb(suite, budget, args):
    chunk = args.eb_chunk or votes.default_chunk_size()
    settings = f"{args.eb_examples} x {args.eb_n:,}, chunk {chunk:,}, sigma {eb_throughput.SIGMA}"
    try:
        rows = eb_throughput.measure_certify(
            ["energy_mnist"],
            examples=args.eb_examples,
            n=args.eb_n,
            chunk=chunk,
            repeats=args.repeats,
        )
    except Exception as e:  # reported as a row
        suite.skip("eb", "lenet", settings, error_text(e))
        return
    model, variables = eb_throughput.classifier()
    plain_fn = models.make_logits_fn(model)
    score_fn, score_params = eb_throughput.score_model("energy_mnist")
    eb_fn = empirical_bayes.make_eb_logits_fn(plain_fn, score_fn, sigma=eb_throughput.SIGMA)
    y = jnp.zeros((64, *eb_throughput.SHAPE), jnp.float32)
    flops = {
        None: lowered_flops(plain_fn, variables, y, per=64),
        "energy_mnist": lowered_flops(
            eb_fn, {"classifier": variables, "score": score_params}, y, per=64
        ),
    }
    for row in rows:
        score_model = row["score_model"]
        label = "LeNet (28x28x1)" if score_model is None else f"LeNet(xhat {score_model}) (28x28x1)"
        rate = row["samples_per_s"]
        suite.add(
            dict(
                section="eb",
                model="lenet",
                score_model=score_model,
                examples=row["examples"],
                n=row["n"],
                chunk=row["chunk"],
                sigma=row["sigma"],
                repeats=row["repeats"],
                call_s=row["call_s"],
                call_s_repeats=row["call_s_repeats"],
                first_call_s=row["first_call_s"],
                compile_s=max(row["first_call_s"] - row["call_s"], 0.0),
                samples_per_s=rate,
                ratio_to_plain=row["ratio"],
                flops_per_sample=flops[score_model],
                tflops_per_s=tflops(flops[score_model], rate),
                units={"*_s": "s", "samples_per_s": "noise samples/s", "flops_per_sample": "FLOP"},
            ),
            {
                "model": label,
                "settings": settings,
                "throughput": f"{fmt(rate)} samples/s",
                "ratio": f"{row['ratio']:.3f} of plain",
                "TFLOP/s": fmt(tflops(flops[score_model], rate), 2),
                "compile s": f"{max(row['first_call_s'] - row['call_s'], 0.0):.1f}",
                "timed": row["repeats"],
            },
        )
