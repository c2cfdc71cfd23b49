"""rsjax.plots: the certified-accuracy curve and image grids are written as PNGs of the right size."""

import pathlib
import struct

import numpy as np
import pytest

from rsjax import analysis, plots


def _png_size(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return len(data), struct.unpack(">II", data[16:24])


def _results(radius, correct):
    n = len(radius)
    return analysis.CertResults(
        idx=np.arange(n),
        label=np.zeros(n, np.int64),
        predict=np.where(correct, 0, -1),
        radius=np.asarray(radius, np.float64),
        correct=np.asarray(correct, bool),
        time=np.zeros(n),
    )


def test_plot_writes_png(tmp_path):
    runs = {
        "a": _results([0.812, 0.25, 0.5, 1.5, 0.0, 2.01], [1, 1, 1, 1, 0, 1]),
        "b": _results([0.3, 0.0, 1.1], [1, 0, 1]),
    }
    out = tmp_path / "curve.png"
    plots.plot_certified_accuracy(runs, out, title="test", max_radius=2.5)
    nbytes, (width, height) = _png_size(out)
    assert nbytes > 10_000 and width >= 400 and height >= 300
    plots.plot_certified_accuracy(runs, tmp_path / "auto.png")  # x range from the radii
    assert _png_size(tmp_path / "auto.png")[1] == (width, height)
    # More runs than fit beside the curves: the legend goes to the right, in a wider figure.
    many = {f"run{i}": runs["a" if i % 2 else "b"] for i in range(plots.LEGEND_INSIDE + 6)}
    plots.plot_certified_accuracy(many, tmp_path / "many.png")
    wide, tall = _png_size(tmp_path / "many.png")[1]
    assert wide > 1.3 * width and tall == height


def test_image_grid_has_a_cell_per_image_and_checks_the_shape(tmp_path):
    images = np.linspace(0, 1, 3 * 5 * 28 * 28).reshape(3, 5, 28, 28, 1)
    plots.save_image_grid(images, tmp_path / "grey.png", title="walk-jump")
    plots.save_image_grid(np.zeros((2, 2, 8, 8, 3)), tmp_path / "rgb.png")
    _, (width, height) = _png_size(tmp_path / "grey.png")
    assert width > height > 0
    with pytest.raises(ValueError, match=r"\(rows, cols, H, W, C\).*shape \(5, 28, 28, 1\)"):
        plots.save_image_grid(images[0], tmp_path / "bad.png")
