"""Figures: certified accuracy against radius, and grids of images (walk-jump samples).

matplotlib is imported inside each function and drawn on its Agg canvas directly (no pyplot, no
change to the global backend), so importing rsjax never needs it; it comes with the `demo` extra.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike

from rsjax import analysis

LEGEND_INSIDE = 6  # runs whose legend fits inside the axes without hiding the curves
LINE_STYLES = ("-", "--", ":", "-.")


def plot_certified_accuracy(
    named_results: Mapping[str, analysis.CertResults],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    max_radius: float | None = None,
) -> None:
    """Writes a PNG of certified accuracy against radius, one exact step curve per run.

    acc(r) is constant on each interval (r_(k-1), r_k] between consecutive certified radii, so the
    curve is drawn from its breakpoints, not sampled. ``max_radius`` (default: 5% past the largest
    certified radius) sets the x range. Up to LEGEND_INSIDE runs share the axes with their legend;
    more get the legend to the right of the axes and a line style per 10 runs, so that the colours,
    which repeat every 10, still tell every curve apart. Uses matplotlib's Agg canvas directly: no
    pyplot, no change to the global backend.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if max_radius is None:
        largest = [
            float(np.max(res.radius[np.asarray(res.correct, bool)], initial=0.0))
            for res in named_results.values()
        ]
        max_radius = 1.05 * max(largest, default=0.0) or 1.0
    outside = len(named_results) > LEGEND_INSIDE
    fig = Figure(figsize=(9.0 if outside else 6.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, res) in enumerate(named_results.items()):
        radii = np.asarray(res.radius, np.float64)[np.asarray(res.correct, bool)]
        xs = np.unique(np.concatenate([[0.0], radii[radii < max_radius], [max_radius]]))
        curve = analysis.certified_accuracy_curve(res, xs)
        style = LINE_STYLES[(i // 10) % len(LINE_STYLES)]
        ax.step(xs, curve, where="pre", linestyle=style, label=str(name))
    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel(analysis.RADIUS_LABEL)
    ax.set_ylabel("certified accuracy (fraction)")
    if title is not None:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    else:
        ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(os.fspath(path), format="png")


def save_image_grid(
    images: ArrayLike, path: str | os.PathLike, *, title: str | None = None
) -> None:
    """Writes a PNG of a (rows, cols, H, W, C) array of images in [0,1] (clipped), one image per
    cell: e.g. walk-jump chains (rows) by successive jumps (columns). Grey for one channel."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    images = np.clip(np.asarray(images, np.float64), 0.0, 1.0)
    if images.ndim != 5 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be (rows, cols, H, W, C) with C in (1, 3), got shape {images.shape}"
        )
    rows, cols, h, w, c = images.shape
    grid = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1, c))
    for r in range(rows):
        for col in range(cols):
            grid[r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = images[r, col]
    figure = Figure(
        figsize=(
            max(5.0 if title else 2.0, cols * 0.6),
            max(2.0, rows * 0.6 + (0.4 if title else 0)),
        )
    )
    axes = figure.add_axes((0, 0, 1, 0.92 if title else 1))
    axes.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=1)
    axes.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=8)
    FigureCanvasAgg(figure).print_png(os.fspath(path))
