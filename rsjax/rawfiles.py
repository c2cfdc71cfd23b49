"""Parsers of the raw files datasets are distributed as: IDX (MNIST, Fashion-MNIST) and CIFAR-10
python pickles (directory or tar archive). Every parser validates what it reads and raises ValueError
naming the file.
"""

import gzip
import os
import pathlib
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Sequence
from typing import IO, Any

import numpy as np


def first_existing(folder: pathlib.Path, names: Iterable[str]) -> pathlib.Path | None:
    """folder / name for the first of `names` that is a file in `folder`, or None."""
    return next((folder / n for n in names if (folder / n).is_file()), None)


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file at `path` starts with the gzip magic bytes 1f 8b."""
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """The array in IDX file `path` (gzipped or not), checked against `magic` (2051 or 2049).

    IDX: a big-endian int32 magic 0x0000 0x08 ndim (0x08 = uint8), ndim big-endian int32 sizes,
    then prod(sizes) uint8 values in row-major order. Returns the uint8 array of shape `sizes`:
    (N, rows, cols) for images (2051), (N,) for labels (2049).
    """
    try:
        opener = gzip.open if is_gzip(path) else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated file ({err})") from err
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        found = int.from_bytes(data[:4], "big") if len(data) >= 4 else None
        raise ValueError(f"{path}: not an IDX file with magic number {magic} (found {found})")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != int(np.prod(dims)):
        raise ValueError(
            f"{path}: truncated or corrupt: header says {dims} = {int(np.prod(dims))} values, "
            f"file holds {len(data) - header}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def check_labels(labels: np.ndarray, n_classes: int, path: str | os.PathLike) -> None:
    """Raises ValueError naming `path` unless every label of the (N,) int array is in
    [0, n_classes)."""
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"{path}: labels outside 0..{n_classes - 1}")


class BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: dicts, lists and numpy arrays, never arbitrary classes."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global `module.name`; raises pickle.UnpicklingError for any other."""
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def unpickle_batch(fileobj: IO[bytes], path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (N, 3072), int64 (N,)) from one CIFAR-10 python batch; `path` names it in errors."""
    try:
        batch = BatchUnpickler(fileobj, encoding="bytes").load()
        data = batch.get(b"data", batch.get("data"))
        labels = batch.get(b"labels", batch.get("labels"))
        data, labels = np.asarray(data), np.asarray(labels, dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a CIFAR-10 python batch ({err})") from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if labels.shape != (len(data),):
        raise ValueError(f"{path}: {len(data)} images but {labels.shape} labels")
    return data, labels


def read_cifar_tar(
    path: str | os.PathLike, wanted: Sequence[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The batches named `wanted`, in that order, from the CIFAR-10 python archive: a list of
    (uint8 (N, 3072), int64 (N,)) as `unpickle_batch` returns."""
    found = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted:
                    found[base] = unpickle_batch(tar.extractfile(member), f"{path}:{member.name}")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: corrupt or truncated archive ({err})") from err
    missing = [b for b in wanted if b not in found]
    if missing:
        raise ValueError(f"{path}: archive lacks {', '.join(missing)}")
    return [found[b] for b in wanted]
