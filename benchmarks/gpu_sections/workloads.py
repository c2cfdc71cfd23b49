"""The GPU suite's models (random init, built once per process) and the work they do (FLOPs).

References: benchmarks/gpu_suite.py; vote_throughput.SHAPES (the input shape of each model).
"""

import jax
import jax.numpy as jnp
import vote_throughput  # a sibling script: gpu_suite.py puts benchmarks/ on sys.path

from rsjax import models

NUM_CLASSES = 10
SIGMA = 0.25
NAMES = {"lenet": "LeNet", "resnet20": "ResNet-20", "resnet110": "ResNet-110", "linear": "linear"}

_MODELS: dict = {}
_FLOPS: dict = {}


def get_model(name: str) -> dict:
    """{"logits_fn", "variables", "shape"} of a registered model, built once per process (the same
    logits_fn object everywhere, so rsjax's compiled steps are shared between sections).

    The random weights come from an "rbg" key: XLA:CPU compiles the default (partitionable
    threefry) normal in 1-2 s per parameter shape, which made initialising ResNet-20 cost 13 s of
    the quick run; the weights' bits do not change the speed. The noise of the measured steps stays
    rsjax's own (threefry, from threefry keys)."""
    if name not in _MODELS:
        model = models.make_model(name, num_classes=NUM_CLASSES)
        shape = vote_throughput.SHAPES[name]
        variables = models.init_variables(model, jax.random.key(0, impl="rbg"), shape)
        _MODELS[name] = {
            "logits_fn": models.make_logits_fn(model),
            "variables": variables,
            "shape": shape,
        }
    return _MODELS[name]


def cost_flops(lowered, per: int = 1):
    """XLA's FLOP count of a lowered (not compiled) program, divided by `per`; None if the backend
    gives none."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # optional
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return cost["flops"] / per if cost and cost.get("flops") else None


def lowered_flops(fn, *args, per: int = 1):
    """XLA's FLOP count of jit(fn) lowered on args (no compile), divided by `per`; None if the
    backend gives none."""
    try:
        lowered = jax.jit(fn).lower(*args)
    except Exception:  # optional
        return None
    return cost_flops(lowered, per=per)


def forward_flops(name: str):
    """FLOPs per input of the model's forward pass (cost analysis on a batch of 64)."""
    if name not in _FLOPS:
        m = get_model(name)
        x = jnp.zeros((64, *m["shape"]), jnp.float32)
        _FLOPS[name] = lowered_flops(m["logits_fn"], m["variables"], x, per=64)
    return _FLOPS[name]


def shape_text(name):
    return "x".join(map(str, vote_throughput.SHAPES[name]))


def label(name):
    """The table's model cell: "ResNet-110 (32x32x3)"."""
    return f"{NAMES.get(name, name)} ({shape_text(name)})"


def tflops(flops_per_item, rate):
    return None if flops_per_item is None or rate is None else flops_per_item * rate / 1e12
