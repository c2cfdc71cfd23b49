"""Image folders (one sub-folder per class) read as torchvision's ImageFolder reads them, lazily.

`scan(root)` walks the tree once and returns the class names, the image paths and the int32 labels;
`FolderImages(paths)` is an array-like of the decoded images that decodes only the rows asked for,
so that ImageNet's 50,000 validation images (30 GB as float32) are never held in memory.

The walk and the decoding follow torchvision (`datasets.folder.ImageFolder` with Cohen et al.'s
test transform `Resize(256)` (formerly `Scale`), `CenterCrop(224)`, `ToTensor()`), so that image i
here is image i of their dataset, pixel for pixel:
- classes are the sub-folders of `root` (symbolic links to folders included) sorted as Python
  strings; a class's label is its position in that list;
- within a class, `os.walk` (following links), sorted by folder, then file names sorted; a file is
  an image when its lower-cased name ends in one of IMG_EXTENSIONS, other files are skipped;
- each image is opened with PIL and `.convert("RGB")` (grayscale, CMYK, palette and RGBA alike:
  alpha is dropped, not composited);
- resized with PIL bilinear so that its shorter side is `resize` and the other
  `int(resize * long / short)` (left as it is when already that size);
- centre-cropped to `crop` x `crop` at offsets `int(round((size - crop) / 2))` (Python's round:
  half to even);
- uint8 / 255 in float32, HWC (torchvision's tensors are CHW: transpose to compare).

References: torchvision `datasets/folder.py` and `transforms/functional.py`; Cohen, Rosenfeld and
Kolter (2019), `code/datasets.py` of github.com/locuslab/smoothing.
"""

import concurrent.futures
import numbers
import os
import pathlib
from typing import NamedTuple

import numpy as np

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# np.asarray(FolderImages) decodes every image only up to this many bytes (1 GiB: 1,783 images of
# 224 x 224 x 3 float32); beyond it, index in batches.
ARRAY_LIMIT_BYTES = 1 << 30


class BadImageError(ValueError):
    """An image file that does not decode, or is smaller than the crop; the message names it."""


class Folder(NamedTuple):
    """What `scan` finds: class names (sorted), image paths in dataset order, int32 labels."""

    classes: tuple[str, ...]
    paths: tuple[str, ...]
    labels: np.ndarray


def is_image_file(name: str) -> bool:
    """torchvision's test: the lower-cased file name ends in one of IMG_EXTENSIONS."""
    return name.lower().endswith(IMG_EXTENSIONS)


def scan(root: str | os.PathLike) -> Folder:
    """Classes, image paths and labels of the tree `root/<class>/**/<image>`, in torchvision's order.

    Reads directory listings only, no image. Raises FileNotFoundError, naming the folder, when
    `root` is not a folder, holds no class folder, or a class folder holds no image file (as
    torchvision does; an empty class would shift no label but is almost always a mistake).
    """
    root = os.fspath(pathlib.Path(root).expanduser())
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} is not a folder")
    with os.scandir(root) as entries:
        classes = sorted(entry.name for entry in entries if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"no class folder in {root}: expected one sub-folder per class holding its images "
            f"({', '.join(IMG_EXTENSIONS)})"
        )
    paths, labels, empty = [], [], []
    for label, name in enumerate(classes):
        found = [
            os.path.join(folder, file)
            for folder, _, files in sorted(os.walk(os.path.join(root, name), followlinks=True))
            for file in sorted(files)
            if is_image_file(file)
        ]
        if not found:
            empty.append(os.path.join(root, name))
        paths.extend(found)
        labels.extend([label] * len(found))
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise FileNotFoundError(
            f"class folder{'s' if len(empty) > 1 else ''} with no image file: {shown}. "
            f"Images end in {', '.join(IMG_EXTENSIONS)} (any case)"
        )
    return Folder(tuple(classes), tuple(paths), np.asarray(labels, np.int32))


def resized_size(width: int, height: int, resize: int) -> tuple[int, int]:
    """(width, height) with the shorter side `resize` and the other `int(resize * long / short)`."""
    if width <= height:
        return resize, int(resize * height / width)
    return int(resize * width / height), resize


def decode(path: str | os.PathLike, *, resize: int | None = 256, crop: int = 224) -> np.ndarray:
    """One image as float32 (crop, crop, 3) in [0, 1], as described in the module docstring.

    resize=None skips the resize (the image must then be at least crop x crop). Raises
    BadImageError naming `path` when PIL cannot decode it or it is smaller than the crop.
    """
    image_module = _pil_image()
    try:
        with open(path, "rb") as f:
            image = image_module.open(f).convert("RGB")
    except Exception as err:  # PIL raises many kinds (OSError, SyntaxError, struct.error, ...)
        raise BadImageError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err
    if resize is not None:
        size = resized_size(*image.size, resize)
        if size != image.size:
            image = image.resize(size, image_module.BILINEAR)
    width, height = image.size
    if width < crop or height < crop:
        raise BadImageError(f"{path}: {width}x{height} is smaller than the {crop}x{crop} crop")
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    image = image.crop((left, top, left + crop, top + crop))
    return np.divide(np.asarray(image), np.float32(255), dtype=np.float32)


def _pil_image():
    try:
        from PIL import Image
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "decoding image folders needs Pillow: pip install -e '.[imagenet]' (pillow==13.0.0)"
        ) from err
    return Image


class FolderImages:
    """The images at `paths`, decoded on access: a read-only float32 (N, crop, crop, 3) array-like.

    Supports `len`, `shape`, `dtype`, `ndim`, iteration, and indexing by an int, a slice, an int
    array (any shape, repeats allowed, negatives from the end) or a boolean mask of length N,
    optionally followed by indices into the decoded images (`images[rows, ..., 0]`). Each call
    decodes the distinct rows it asks for, with `threads` threads, and returns a numpy array;
    nothing is cached. `np.asarray(images)` decodes every image when that takes at most
    ARRAY_LIMIT_BYTES, and raises ValueError beyond (ImageNet's validation set would take 30 GB).
    """

    def __init__(
        self,
        paths,
        *,
        resize: int | None = 256,
        crop: int = 224,
        threads: int | None = None,
    ):
        if not (isinstance(crop, numbers.Integral) and crop >= 1):
            raise ValueError(f"crop must be a positive int, got {crop!r}")
        if resize is not None and not (isinstance(resize, numbers.Integral) and resize >= crop):
            raise ValueError(f"resize must be None or an int >= crop ({crop}), got {resize!r}")
        _pil_image()  # fail now, not at the first image, when Pillow is missing
        self.paths = tuple(os.fspath(p) for p in paths)
        self.resize, self.crop = resize, int(crop)
        self.threads = min(8, os.cpu_count() or 1) if threads is None else max(1, int(threads))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, crop, crop, 3): the images as a float32 NHWC array would hold them."""
        return (len(self.paths), self.crop, self.crop, 3)

    dtype = np.dtype(np.float32)
    ndim = 4

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        resize = "no resize" if self.resize is None else f"shorter side {self.resize}"
        return f"FolderImages({len(self)} images, {resize}, centre crop {self.crop})"

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, key) -> np.ndarray:
        rest = ()
        if isinstance(key, tuple):
            if not key or key[0] is Ellipsis or key[0] is None:
                raise TypeError(
                    "FolderImages: the first index must select images (int, slice, int array "
                    f"or boolean mask), got {key!r}"
                )
            key, rest = key[0], key[1:]
        rows = self._rows(key)
        out = self._decode(rows.ravel()).reshape(rows.shape + self.shape[1:])
        return out[(slice(None),) * rows.ndim + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        if copy is False:
            raise ValueError("FolderImages cannot give an array without decoding (copy=False)")
        nbytes = int(np.prod(self.shape)) * self.dtype.itemsize
        if nbytes > ARRAY_LIMIT_BYTES:
            raise ValueError(
                f"np.asarray would decode all {len(self)} images into {nbytes / 2**30:.1f} GiB "
                f"(limit rsjax.imagefolder.ARRAY_LIMIT_BYTES = {ARRAY_LIMIT_BYTES / 2**30:g} "
                "GiB); index the images in batches instead: images[rows]"
            )
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def _rows(self, key) -> np.ndarray:
        """int64 row numbers in [0, N), shaped as `key` (0-d for an int)."""
        n = len(self)
        if isinstance(key, slice):
            return np.arange(n)[key]
        if isinstance(key, numbers.Integral) and not isinstance(key, bool):
            key = np.int64(key)
        elif isinstance(key, (np.ndarray, list, range)) or hasattr(key, "__array__"):
            key = np.asarray(key)
            if key.size == 0 and key.dtype != bool:
                key = key.astype(np.int64)
        else:
            raise TypeError(
                "FolderImages takes an int, a slice, an int array or a boolean mask, got "
                f"{type(key).__name__}"
            )
        if key.dtype == bool:
            if key.shape != (n,):
                raise IndexError(f"boolean mask of shape {key.shape} for {n} images")
            return np.flatnonzero(key)
        if not np.issubdtype(key.dtype, np.integer):
            raise IndexError(f"image indices must be integers, got dtype {key.dtype}")
        rows = key.astype(np.int64)
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"image index out of range for {n} images: {key}")
        return np.where(rows < 0, rows + n, rows)

    def _decode(self, rows: np.ndarray) -> np.ndarray:
        """float32 (len(rows), crop, crop, 3), each distinct row decoded once."""
        distinct, inverse = np.unique(rows, return_inverse=True)

        def one(i):
            return decode(self.paths[i], resize=self.resize, crop=self.crop)

        if self.threads > 1 and len(distinct) > 1:
            with concurrent.futures.ThreadPoolExecutor(min(self.threads, len(distinct))) as pool:
                images = list(pool.map(one, distinct))
        else:
            images = [one(i) for i in distinct]
        decoded = np.stack(images) if images else np.zeros((0, *self.shape[1:]), np.float32)
        return decoded[inverse.reshape(-1)]
