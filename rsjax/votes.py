"""Vote counting on the device: class counts of a base classifier under Gaussian noise.

For each example i and noise sample j the noise is drawn from its own key,

    key_ij = fold_in(fold_in(fold_in(root_key, idx_i), stream), j),

where idx_i is the example's global index (its position in the dataset) and stream separates the
selection draws (n0) from the estimation draws (n). The counts therefore do not depend on the chunk
size, the example batch size, the number of devices, the order of examples, or where a run resumed.

Noise samples are processed in chunks: one step draws `chunk` noise samples for every example of the
batch on the device, runs the classifier once on the (batch * chunk) noisy inputs (the classifier is
vmapped over noise samples; the vmap folds into the batch axis), and adds one-hot votes into int32
counts. At most batch * chunk noisy inputs exist at once, never batch * n.

Non-finite logits never vote. A draw whose logits hold NaN or inf (a diverged model, NaN weights, an
overflow) would otherwise vote for class 0 through argmax and could be certified. Each step also
counts such draws per example, on the device in the same loop (no extra host transfer), the draws are
left out of the class counts, and `count_votes` / `count_votes_in_rounds` raise NonFiniteLogitsError
naming the examples' indices and how many of their draws were non-finite, before any decision is made.

The noise uses threefry in its non-partitionable form, fixed here whatever the user's
`jax_threefry_partitionable` setting: each noise sample has its own key and only the example axis is
sharded, so nothing is lost, the counts do not depend on that global setting, and drawing the noise is
about 2x faster on CPU (benchmarks/vote_throughput.py).

References: Cohen, Rosenfeld & Kolter, ICML 2019 (CERTIFY's sampling); rsjax STYLE (PRNG discipline).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from numpy.typing import ArrayLike

from rsjax import sharding

SELECTION = 0
ESTIMATION = 1
# Counts are int32 on the device: no count of draws may reach 2^31.
MAX_COUNT = 2**31 - 1

# logits_fn(params, x): (batch, H, W, C) float32 in [0,1] -> (batch, K) logits.
ApplyFn = Callable[[Any, jax.Array], jax.Array]


class NonFiniteLogitsError(FloatingPointError):
    """The base classifier returned NaN or infinite logits on some noise draws: no certificate or
    prediction is made from them.

    indices: global indices of the affected examples; draws: how many of each one's draws were
    non-finite (same order); num_samples: the draws asked per example in that call.
    """

    def __init__(self, indices: ArrayLike, draws: ArrayLike, num_samples: int, stream: int):
        self.indices = [int(i) for i in indices]
        self.draws = [int(d) for d in draws]
        self.num_samples = int(num_samples)
        listed = ", ".join(
            f"example {i}: {d:,} draws"
            for i, d in zip(self.indices[:5], self.draws[:5], strict=True)
        )
        more = f" and {len(self.indices) - 5} more examples" if len(self.indices) > 5 else ""
        stream_name = {SELECTION: "selection", ESTIMATION: "estimation"}.get(stream, str(stream))
        super().__init__(
            f"the classifier returned NaN or infinite logits for {len(self.indices)} example(s) "
            f"({listed}{more}; of {self.num_samples:,} {stream_name} draws each). Such draws would "
            "vote for class 0, so nothing is certified. Check the model's weights (a diverged "
            "training run, a corrupted checkpoint) and its inputs (NHWC float32 in [0, 1])"
        )


def raise_if_nonfinite(
    nonfinite: np.ndarray, idx: np.ndarray, num_samples: int, stream: int
) -> None:
    """Raises NonFiniteLogitsError when any example of the batch had non-finite draws.

    nonfinite: (B,) counts of non-finite draws per example; idx: (B,) their global indices."""
    bad = np.flatnonzero(nonfinite)
    if bad.size:
        raise NonFiniteLogitsError(idx[bad], nonfinite[bad], num_samples, stream)


def default_chunk_size() -> int:
    """Noise samples per example per step when the caller gives none: 125 on CPU (with the default
    example batch of 8, about 1,000 noisy inputs per step, where the CPU measured best in
    benchmarks/vote_throughput.py), 1,000 on accelerators, which want larger steps."""
    return 125 if jax.default_backend() == "cpu" else 1000


def balanced_chunk(num_samples: int, chunk_size: int) -> tuple[int, int]:
    """(number of chunks, samples per chunk) covering num_samples with chunks of <= chunk_size.

    Chunks are balanced so that at most (number of chunks - 1) padded samples are wasted.
    """
    if num_samples < 1:
        raise ValueError(f"the number of noise samples must be >= 1, got {num_samples}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_chunks = -(-num_samples // chunk_size)
    return num_chunks, -(-num_samples // num_chunks)


def check_indices(idx: ArrayLike, num_examples: int) -> np.ndarray:
    """Validates global example indices: (B,) distinct integers in [0, 2^32), one per image."""
    idx = np.asarray(idx)
    if idx.shape != (num_examples,):
        raise ValueError(
            f"idx must hold one global index per image: shape ({num_examples},), got {idx.shape}"
        )
    if num_examples and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"idx must be integers, got dtype {idx.dtype}")
    if num_examples and (idx.min() < 0 or idx.max() >= 2**32):
        raise ValueError("idx must lie in [0, 2^32): each index seeds its example's noise")
    if len(np.unique(idx)) != num_examples:
        raise ValueError("idx has duplicates: two images would share the same noise")
    return idx.astype(np.uint32)


def example_keys(key: jax.Array, idx: jax.Array, stream: int) -> jax.Array:
    """Per-example keys for one stream: fold_in(fold_in(key, idx_i), stream). idx: (B,) int."""
    return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(key, i), stream))(idx)


def noisy_inputs(
    keys: jax.Array, x: jax.Array, sample_ids: jax.Array, sigma: float | jax.Array
) -> jax.Array:
    """x_i + sigma * eps_ij for every example key i and sample id j: (B, J, *x.shape[1:]).

    sample_ids: (J,) ids shared by every example, or (B, J) ids of each example's own."""

    def one_example(example_key, image, ids):
        def one_sample(j):
            eps = jax.random.normal(jax.random.fold_in(example_key, j), image.shape, image.dtype)
            return image + sigma * eps

        return jax.vmap(one_sample)(ids)

    ids_axis = 0 if sample_ids.ndim == 2 else None
    return jax.vmap(one_example, in_axes=(0, 0, ids_axis))(keys, x, sample_ids)


def _votes(logits_fn, params, keys, x, sample_ids, sigma, num_classes):
    """argmax of logits_fn on the noisy inputs of noisy_inputs(...): (B, J) int class votes, and
    (B, J) bool, True where the draw's logits are all finite (only those may vote)."""
    noisy = noisy_inputs(keys, x, sample_ids, sigma)
    batch, num_ids = noisy.shape[:2]
    logits = logits_fn(params, noisy.reshape((batch * num_ids,) + x.shape[1:]))
    if logits.ndim != 2 or logits.shape[-1] > num_classes:
        raise ValueError(
            f"the classifier returns logits of shape {logits.shape[1:]} per input but "
            f"num_classes = {num_classes}: num_classes must be >= the model's output size"
        )
    finite = jnp.all(jnp.isfinite(logits), axis=-1).reshape(batch, num_ids)
    return jnp.argmax(logits, axis=-1).reshape(batch, num_ids), finite


@functools.partial(
    jax.jit, static_argnames=("logits_fn", "num_classes", "num_samples", "chunk_size", "stream")
)
def _count(key, params, x, idx, sigma, *, logits_fn, num_classes, num_samples, chunk_size, stream):
    num_chunks, chunk = balanced_chunk(num_samples, chunk_size)
    batch = x.shape[0]
    keys = example_keys(key, idx, stream)

    def step(c, carry):
        counts, nonfinite = carry
        sample_ids = c * chunk + jnp.arange(chunk, dtype=jnp.uint32)
        votes, finite = _votes(logits_fn, params, keys, x, sample_ids, sigma, num_classes)
        valid = (sample_ids < num_samples)[None, :]
        one_hot = (votes[..., None] == jnp.arange(num_classes)) & (valid & finite)[..., None]
        counts = counts + one_hot.sum(axis=1, dtype=jnp.int32)
        return counts, nonfinite + (valid & ~finite).sum(axis=1, dtype=jnp.int32)

    zeros = (jnp.zeros((batch, num_classes), jnp.int32), jnp.zeros((batch,), jnp.int32))
    return jax.lax.fori_loop(0, num_chunks, step, zeros)


def count_votes(
    key: jax.Array,
    logits_fn: ApplyFn,
    params: Any,
    x: np.ndarray,
    idx: np.ndarray,
    *,
    sigma: float,
    num_classes: int,
    num_samples: int,
    chunk_size: int | None = None,
    stream: int,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Class counts of argmax logits_fn(params, x_i + sigma * eps_ij), j < num_samples.

    Args:
      key: the run's certification key (the same for every example; see the module docstring).
      logits_fn: pure function (params, images) -> logits; passed as a static argument to jit, so
        pass the same function object every call (a new lambda recompiles).
      params: pytree of arrays, traced (not baked into the compiled function).
      x: (B, H, W, C) float32 images in [0,1] (already validated by the caller).
      idx: (B,) global example indices, the source of each example's randomness.
      sigma: noise standard deviation in [0,1] pixel units.
      num_classes: length of the count vectors (>= the model's number of outputs).
      num_samples: noise samples per example.
      chunk_size: at most this many noise samples per example per device step (bounds memory at
        B * chunk_size noisy inputs); None: `default_chunk_size()`.
      stream: `SELECTION` or `ESTIMATION`.
      mesh: device mesh; the example batch is padded and split over its batch axis. Default: all
        devices.

    Returns:
      (B, num_classes) int32 numpy array; each row sums to num_samples.
    Raises:
      NonFiniteLogitsError: some draws of some examples gave NaN or infinite logits (it names
        the examples' indices and their counts of such draws).
    """
    mesh = sharding.batch_mesh() if mesh is None else mesh
    chunk_size = default_chunk_size() if chunk_size is None else int(chunk_size)
    size = x.shape[0]
    if size == 0:
        raise ValueError("count_votes needs at least one image, got an empty batch")
    idx = check_indices(idx, size)
    x_dev, idx_dev = sharding.shard_batch(mesh, np.asarray(x), idx)
    # Everything placed explicitly: the call makes no implicit host-device transfer.
    key, params, sigma = sharding.replicate(mesh, (key, params, np.float32(sigma)))
    with jax.threefry_partitionable(False):
        counts, nonfinite = _count(
            key,
            params,
            x_dev,
            idx_dev,
            sigma,
            logits_fn=logits_fn,
            num_classes=num_classes,
            num_samples=num_samples,
            chunk_size=chunk_size,
            stream=stream,
        )
    counts, nonfinite = (np.asarray(a)[:size] for a in sharding.gather((counts, nonfinite)))
    raise_if_nonfinite(nonfinite, idx, num_samples, stream)
    return counts


@functools.partial(jax.jit, static_argnames=("logits_fn", "num_classes", "chunk_size", "stream"))
def _count_rounds(
    key, params, x, idx, start, stop, looks, sigma, *, logits_fn, num_classes, chunk_size, stream
):
    batch = x.shape[0]
    keys = example_keys(key, idx, stream)
    num_chunks = ((jnp.max(stop - start) + chunk_size - 1) // chunk_size).astype(jnp.int32)

    def step(c, carry):
        counts, nonfinite = carry
        sample_ids = start[:, None] + c * chunk_size + jnp.arange(chunk_size, dtype=jnp.uint32)
        votes, finite = _votes(logits_fn, params, keys, x, sample_ids, sigma, num_classes)
        in_range = sample_ids < stop[:, None]
        valid = in_range & finite
        # draw j belongs to look interval t when looks[t-1] <= j < looks[t]
        interval = jnp.searchsorted(looks, sample_ids, side="right")
        by_look = (interval[..., None] == jnp.arange(looks.shape[0])) & valid[..., None]
        by_class = votes[..., None] == jnp.arange(num_classes)
        counts = counts + jnp.einsum(
            "bjl,bjk->blk",
            by_look.astype(jnp.int32),
            by_class.astype(jnp.int32),
            preferred_element_type=jnp.int32,
        )
        return counts, nonfinite + (in_range & ~finite).sum(axis=1, dtype=jnp.int32)

    zeros = (
        jnp.zeros((batch, looks.shape[0], num_classes), jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    return jax.lax.fori_loop(0, num_chunks, step, zeros)


def count_votes_in_rounds(
    key: jax.Array,
    logits_fn: ApplyFn,
    params: Any,
    x: np.ndarray,
    idx: np.ndarray,
    *,
    start: np.ndarray,
    stop: np.ndarray,
    looks: np.ndarray,
    sigma: float,
    num_classes: int,
    chunk_size: int | None = None,
    stream: int,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Class counts of the draws j in [start_i, stop_i) of each example, split by look interval.

    The draws are those of `count_votes` (draw j of example i has the noise of key_ij of the module
    docstring), so the counts of [0, n) summed over intervals equal count_votes with num_samples = n.
    Sequential certification (rsjax.sequential) continues each example where it stopped.

    Args:
      start, stop: (B,) int draw ranges per example; an empty range (start = stop) leaves a padding
        row, whose idx may repeat another row's.
      looks: (L,) increasing ints with stop_i <= looks[-1]; interval t holds the draws with
        looks[t-1] <= j < looks[t] (looks[-1] = 0 for t = 0).
      Others as `count_votes`; the device step runs ceil(max(stop - start) / chunk_size) chunks.

    Returns:
      (B, L, num_classes) int32 numpy array.
    Raises:
      NonFiniteLogitsError: as `count_votes` (draws in [start_i, stop_i) only).
    """
    mesh = sharding.batch_mesh() if mesh is None else mesh
    chunk_size = default_chunk_size() if chunk_size is None else int(chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    size = x.shape[0]
    start = np.asarray(start, np.int64)
    stop = np.asarray(stop, np.int64)
    looks = np.asarray(looks, np.int64)
    if start.shape != (size,) or stop.shape != (size,):
        raise ValueError(
            f"start and stop must have shape ({size},), got {start.shape}, {stop.shape}"
        )
    if looks.ndim != 1 or looks.size == 0 or np.any(np.diff(looks) <= 0) or looks[0] < 1:
        raise ValueError(f"looks must be increasing positive draw counts, got {looks}")
    if np.any(start < 0) or np.any(stop < start) or np.any(stop > looks[-1]):
        raise ValueError("draw ranges must satisfy 0 <= start <= stop <= looks[-1]")
    if looks[-1] >= 2**32:
        raise ValueError("at most 2^32 draws per example")
    idx = np.asarray(idx)
    if idx.shape != (size,) or (size and (idx.min() < 0 or idx.max() >= 2**32)):
        raise ValueError(f"idx must hold ({size},) indices in [0, 2^32), got shape {idx.shape}")
    x_dev, idx_dev, start_dev, stop_dev = sharding.shard_batch(
        mesh, np.asarray(x), idx.astype(np.uint32), start.astype(np.uint32), stop.astype(np.uint32)
    )
    key, params, looks_dev, sigma = sharding.replicate(
        mesh, (key, params, looks.astype(np.uint32), np.float32(sigma))
    )
    with jax.threefry_partitionable(False):
        counts, nonfinite = _count_rounds(
            key,
            params,
            x_dev,
            idx_dev,
            start_dev,
            stop_dev,
            looks_dev,
            sigma,
            logits_fn=logits_fn,
            num_classes=num_classes,
            chunk_size=chunk_size,
            stream=stream,
        )
    counts, nonfinite = (np.asarray(a)[:size] for a in sharding.gather((counts, nonfinite)))
    raise_if_nonfinite(nonfinite, idx, int(looks[-1]), stream)
    return counts
