"""Tests for rsjax.imagefolder: torchvision ImageFolder's order and Cohen et al.'s test transform,
decoding only what is indexed, and errors that name the folder or file.

torchvision cannot be imported here (its compiled ops do not load), so its behaviour is restated
from its documented semantics in `torchvision_reference` (datasets/folder.py: `pil_loader`;
transforms/functional.py: `resize` of a PIL image to shorter side 256 with the other side
`int(256 * long / short)`, PIL bilinear; `center_crop` at `int(round((size - 224) / 2.0))`;
`to_tensor`: uint8 / 255 in float32). The expected order is written out by hand, and the images that
need no resize are checked against plain numpy slices of the pixels written.
"""

import io
import re
import sys

import numpy as np
import PIL.Image
import pytest

from rsjax import imagefolder

# (path under the root, label, PIL mode, width x height): the classes are created in this order,
# which is not their sorted order ("Apple" < "apple" < "mango" < "zebra").
TREE = [
    ("zebra/img_b.jpg", 3, "RGB", (300, 257)),
    ("zebra/IMG_A.JPEG", 3, "L", (257, 300)),  # upper-case extension: still an image
    ("Apple/p.png", 0, "P", (500, 224)),  # upscaled, crop offset round(173.5) = 174
    ("Apple/cmyk.jpg", 0, "CMYK", (256, 256)),
    ("mango/sub/aa.png", 2, "RGB", (256, 259)),  # no resize; top offset round(17.5) = 18
    ("mango/zz.png", 2, "RGB", (301, 256)),  # no resize; left offset round(38.5) = 38
    ("apple/rgba.png", 1, "RGBA", (100, 80)),  # tiny, upscaled to 320 x 256
]
# torchvision's order: classes sorted, then sorted(os.walk(class)), files sorted in each folder.
ORDER = [
    "Apple/cmyk.jpg",
    "Apple/p.png",
    "apple/rgba.png",
    "mango/zz.png",  # the class folder's own files come before its sub-folders'
    "mango/sub/aa.png",
    "zebra/IMG_A.JPEG",  # "I" < "i"
    "zebra/img_b.jpg",
]
SKIPPED = ["zebra/README.txt", "apple/rgba.png.bak", "mango/.DS_Store"]


def random_image(mode, size, seed):
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "P":
        image = PIL.Image.fromarray(rng.integers(0, 256, (height, width), np.uint8), "L")
        image = image.convert("P")
        image.putpalette(rng.integers(0, 256, 768, np.uint8).tobytes())
        return image
    channels = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4}[mode]
    # smooth gradients plus noise, so that JPEG keeps detail and resizing has work to do
    base = np.add.outer(np.arange(height), np.arange(width))[..., None] * (1 + np.arange(channels))
    pixels = (base + rng.integers(0, 60, (height, width, channels))) % 256
    return PIL.Image.fromarray(np.squeeze(pixels.astype(np.uint8), axis=-1 if mode == "L" else ()))


def write_tree(root):
    """Writes TREE and the non-image files under `root`; returns {relative path: pixels written}
    for the lossless RGB files."""
    written = {}
    for seed, (name, _, mode, size) in enumerate(TREE):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = random_image(mode, size, seed)
        if mode == "CMYK":
            image = PIL.Image.frombytes("CMYK", size, image.tobytes())
        image.save(path, format="JPEG" if name.lower().endswith((".jpg", ".jpeg")) else "PNG")
        if mode == "RGB" and name.endswith(".png"):
            written[name] = np.asarray(image)
    for name in SKIPPED:
        (root / name).write_text("not an image")
    return written


def torchvision_reference(path):
    """ToTensor(CenterCrop(224)(Resize(256)(pil_loader(path)))), transposed to HWC."""
    with open(path, "rb") as f:
        image = PIL.Image.open(f).convert("RGB")
    w, h = image.size
    if not ((w <= h and w == 256) or (h <= w and h == 256)):
        size = (256, int(256 * h / w)) if w < h else (int(256 * w / h), 256)
        image = image.resize(size, PIL.Image.BILINEAR)
    w, h = image.size
    top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
    pixels = np.asarray(image.crop((left, top, left + 224, top + 224)))
    return pixels.astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    return root, write_tree(root)


@pytest.fixture
def opened(monkeypatch):
    """The paths PIL opens, in order (threads append too: list.append holds the GIL)."""
    calls = []
    original = PIL.Image.open

    def spy(fp, *args, **kwargs):
        calls.append(getattr(fp, "name", fp))
        return original(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    return calls


def test_order_labels_and_pixels_follow_torchvision(tree):
    root, written = tree
    found = imagefolder.scan(root)
    assert found.classes == ("Apple", "apple", "mango", "zebra")
    assert found.paths == tuple(str(root / name) for name in ORDER)
    labels = {name: label for name, label, _, _ in TREE}
    np.testing.assert_array_equal(found.labels, [labels[name] for name in ORDER])
    assert found.labels.dtype == np.int32

    images = imagefolder.FolderImages(found.paths, threads=2)
    assert images.shape == (7, 224, 224, 3) and len(images) == 7
    assert images.dtype == np.float32 and images.ndim == 4
    every = images[:]
    assert every.shape == (7, 224, 224, 3) and every.dtype == np.float32
    for k, path in enumerate(found.paths):
        np.testing.assert_array_equal(every[k], torchvision_reference(path), err_msg=path)
    # no resize needed: the crop is a plain slice of the pixels written
    zz, aa = written["mango/zz.png"], written["mango/sub/aa.png"]
    np.testing.assert_array_equal(every[3] * 255, zz[16:240, 38:262])
    np.testing.assert_array_equal(every[4] * 255, aa[18:242, 16:240])
    assert 0.0 <= every.min() and every.max() <= 1.0


def test_resized_size():
    assert imagefolder.resized_size(300, 257, 256) == (298, 256)
    assert imagefolder.resized_size(257, 300, 256) == (256, 298)
    assert imagefolder.resized_size(500, 224, 256) == (571, 256)
    assert imagefolder.resized_size(100, 80, 256) == (320, 256)
    assert imagefolder.resized_size(256, 256, 256) == (256, 256)


def test_decodes_only_what_is_indexed(tree, opened):
    root, _ = tree
    paths = imagefolder.scan(root).paths
    images = imagefolder.FolderImages(paths, threads=2)
    assert opened == []  # neither the walk nor the array decodes anything up front

    batch = images[np.array([5, 1])]
    assert batch.shape == (2, 224, 224, 3) and batch.dtype == np.float32
    assert sorted(opened) == sorted([paths[5], paths[1]])
    np.testing.assert_array_equal(batch[0], torchvision_reference(paths[5]))

    opened.clear()
    repeated = images[np.array([2, 2, 6, 2])]  # the sequential scheduler repeats rows
    assert sorted(opened) == sorted([paths[2], paths[6]])
    np.testing.assert_array_equal(repeated[0], repeated[3])
    np.testing.assert_array_equal(repeated[2], torchvision_reference(paths[6]))

    opened.clear()
    assert images[-1].shape == (224, 224, 3) and opened == [paths[6]]
    opened.clear()
    assert images[np.int64(3)].shape == (224, 224, 3) and opened == [paths[3]]
    opened.clear()
    assert images[2:4].shape == (2, 224, 224, 3) and sorted(opened) == sorted(paths[2:4])
    opened.clear()
    assert images[np.array([], np.int64)].shape == (0, 224, 224, 3) and opened == []
    assert images[[]].shape == (0, 224, 224, 3) and images[5:5].shape == (0, 224, 224, 3)


def test_indexing_forms(tree):
    root, _ = tree
    images = imagefolder.FolderImages(imagefolder.scan(root).paths, threads=1)
    every = images[:]
    np.testing.assert_array_equal(images[[0, 6]], every[[0, 6]])

    class Rows:  # a jax array, say: anything with __array__
        def __array__(self, dtype=None, copy=None):
            return np.array([6, 0])

    np.testing.assert_array_equal(images[Rows()], every[[6, 0]])
    np.testing.assert_array_equal(images[np.array([[1], [4]])], every[np.array([[1], [4]])])
    mask = np.array([True, False, False, True, False, False, True])
    np.testing.assert_array_equal(images[mask], every[mask])
    np.testing.assert_array_equal(images[[0, 2], ..., 1], every[[0, 2], ..., 1])
    np.testing.assert_array_equal(images[3, 5:9, :, 0], every[3, 5:9, :, 0])
    np.testing.assert_array_equal(images[::3], every[::3])
    np.testing.assert_array_equal(np.stack(list(images)), every)
    np.testing.assert_array_equal(np.asarray(images), every)
    assert np.asarray(images, dtype=np.float64).dtype == np.float64
    for bad in (7, -8, [0, 7]):
        with pytest.raises(IndexError, match="out of range for 7 images"):
            images[bad]
    with pytest.raises(IndexError, match="boolean mask of shape"):
        images[mask[:3]]
    with pytest.raises(IndexError, match="must be integers"):
        images[np.array([0.0, 1.0])]
    for bad in (1.0, None, "0", True):
        with pytest.raises(TypeError, match="FolderImages takes"):
            images[bad]
    with pytest.raises(TypeError, match="first index must select images"):
        images[..., 0]


def test_asarray_of_a_large_set_is_refused(tree, monkeypatch, opened):
    root, _ = tree
    images = imagefolder.FolderImages(imagefolder.scan(root).paths)
    monkeypatch.setattr(imagefolder, "ARRAY_LIMIT_BYTES", 6 * 224 * 224 * 3 * 4)
    with pytest.raises(ValueError, match=r"decode all 7 images .* images\[rows\]"):
        np.asarray(images)
    assert opened == []
    assert images[np.arange(7)].shape == (7, 224, 224, 3)  # indexing has no limit


def test_other_sizes(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 40, 3), np.uint8)
    for k, name in enumerate(["b/1.png", "a/2.png"]):
        (tmp_path / name).parent.mkdir()
        PIL.Image.fromarray(pixels[k]).save(tmp_path / name)
    paths = imagefolder.scan(tmp_path).paths
    uncropped = imagefolder.FolderImages(paths, resize=None, crop=32)
    assert uncropped.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(uncropped[:] * 255, pixels[::-1, :, 4:36])
    resized = imagefolder.FolderImages(paths, resize=64, crop=48)
    assert resized[0].shape == (48, 48, 3)
    with pytest.raises(imagefolder.BadImageError, match=r"a/2\.png: 40x32 is smaller than.*33x33"):
        imagefolder.FolderImages(paths, resize=None, crop=33)[0]
    with pytest.raises(ValueError, match="resize must be None or an int >= crop"):
        imagefolder.FolderImages(paths, resize=200, crop=224)
    with pytest.raises(ValueError, match="crop must be a positive int"):
        imagefolder.FolderImages(paths, crop=0)


# ----------------------------------------------------------------------------- errors


def test_missing_folder_and_no_class_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"{tmp_path / 'nowhere'} is not a folder")
    ):
        imagefolder.scan(tmp_path / "nowhere")
    (tmp_path / "ILSVRC2012_val_00000001.JPEG").write_bytes(b"flat, as the archive unpacks")
    with pytest.raises(FileNotFoundError, match=re.escape(f"no class folder in {tmp_path}:")):
        imagefolder.scan(tmp_path)


def test_class_folder_without_images_is_named(tmp_path):
    write_tree(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "only_text").mkdir()
    (tmp_path / "only_text" / "README.txt").write_text("no image here")
    with pytest.raises(FileNotFoundError) as err:
        imagefolder.scan(tmp_path)
    message = str(err.value)
    assert f"{tmp_path / 'empty'}, {tmp_path / 'only_text'}" in message and ".jpeg" in message
    assert "mango" not in message


def test_undecodable_image_is_named_when_read(tmp_path):
    write_tree(tmp_path)
    jpeg = io.BytesIO()
    random_image("RGB", (300, 300), 0).save(jpeg, format="JPEG")
    (tmp_path / "mango" / "truncated.jpg").write_bytes(jpeg.getvalue()[:2000])
    (tmp_path / "zebra" / "garbage.png").write_bytes(b"these bytes are not a PNG")
    paths = imagefolder.scan(tmp_path).paths  # the walk reads no image: both files are listed
    names = [p.rsplit("/", 1)[-1] for p in paths]
    assert names.index("truncated.jpg") == 3 and names.index("garbage.png") == 7
    images = imagefolder.FolderImages(paths, threads=2)
    assert images[[0, 1, 2, 4, 5, 6, 8]].shape == (7, 224, 224, 3)  # the others still read
    with pytest.raises(imagefolder.BadImageError, match=r"truncated\.jpg: not a readable image"):
        images[3]
    with pytest.raises(imagefolder.BadImageError, match=r"garbage\.png: not a readable image"):
        images[np.array([0, 7])]
    assert issubclass(imagefolder.BadImageError, ValueError)


def test_without_pillow_the_error_says_what_to_install(tmp_path, monkeypatch):
    write_tree(tmp_path)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now fails
    found = imagefolder.scan(tmp_path)  # the walk needs no Pillow
    assert len(found.paths) == 7
    with pytest.raises(ModuleNotFoundError, match=r"pip install -e '\.\[imagenet\]'"):
        imagefolder.FolderImages(found.paths)
