"""Data parallelism: a one-axis device Mesh over the example (batch) axis, padding and placement.

This is what `pmap` became: arrays carry a `NamedSharding`, jit partitions the computation, and a ragged
batch is padded to a multiple of the device count (the padding rows are computed and then dropped, never
counted).
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


def shard_batch(mesh: Mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    """Pads every array to a multiple of the mesh size and places it split over the batch axis."""
    sharding = batch_sharding(mesh)
    return tuple(jax.device_put(pad_to_multiple(a, mesh.size), sharding) for a in arrays)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Places a pytree (parameters) on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
