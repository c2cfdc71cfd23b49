"""Data parallelism: a one-axis device Mesh over the example (batch) axis, padding and placement.

This is what `pmap` became: arrays carry a `NamedSharding`, jit partitions the computation, and a ragged
batch is padded to a multiple of the device count (the padding rows are computed and then dropped, never
counted).

Multi-host: after `jax.distributed.initialize`, `jax.devices()` spans every process. Every process holds
the same host data (the same dataset, the same key-derived order); `shard_batch` and `replicate` build
global arrays from it, each process filling only its own devices' shards, and `gather` brings a result
back to every process. With one process they reduce to plain `device_put` / `device_get`.
"""

from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D Mesh named `batch` over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's batch axis, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated over the mesh (parameters)."""
    return NamedSharding(mesh, PartitionSpec())


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Pads the leading axis with copies of the last row up to a multiple of `multiple`.

    Repeating a real row (rather than zeros) keeps padded inputs inside the data domain, so a model
    never sees an out-of-distribution filler; the caller drops the padded rows after the computation.
    """
    size = array.shape[0]
    padded = -(-size // multiple) * multiple
    if padded == size:
        return array
    filler = np.repeat(array[-1:], padded - size, axis=0)
    return np.concatenate([array, filler], axis=0)


def _global(array: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host value on every process (each fills its own shards)."""
    if jax.process_count() == 1:
        return jax.device_put(array, sharding)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Pads every array to a multiple of the mesh size and places it split over the batch axis."""
    sharding = batch_sharding(mesh)
    return tuple(_global(pad_to_multiple(np.asarray(a), mesh.size), sharding) for a in arrays)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree (parameters, keys) on every device of the mesh."""
    if jax.process_count() == 1:
        return jax.device_put(tree, replicated(mesh))

    def leaf(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = _global(np.asarray(jax.random.key_data(x)), replicated(mesh))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x  # already global
        return _global(np.asarray(x), replicated(mesh))

    return jax.tree.map(leaf, tree)


def gather(tree: Any) -> Any:
    """Host numpy copies of (possibly multi-process) arrays, the same on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def is_primary() -> bool:
    """True on the one process that writes files (process 0)."""
    return jax.process_index() == 0
