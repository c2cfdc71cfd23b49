"""Reading certification results and computing the metrics that papers report.

A certification run writes one TSV, the de facto standard of Cohen et al.'s code, with the
tab-separated header ``idx label predict radius correct time`` and one row per example:
``predict`` is the smoothed classifier's answer (``ABSTAIN = -1``), ``radius`` the certified l2
radius in [0,1] pixel units (3 significant digits), ``correct`` is 0/1 for that row alone, ``time``
the wall time spent on the example. rsjax writes ``time`` as seconds (``0.0123``); the PyTorch
reference code writes ``str(datetime.timedelta)`` (``0:00:15.123456``, ``0:00:03``,
``1 day, 0:00:01.5``). Both are read.

Metrics, over the N rows of one file (every example the run certified, including abstains):

- certified accuracy at r: ``acc(r) = (1/N) * #{i : correct_i = 1 and radius_i >= r}``; ``acc(0)``
  is the smoothed classifier's accuracy on clean inputs;
- average certified radius: ``ACR = (1/N) * sum_i radius_i * correct_i`` (abstains and wrong
  answers count 0);
- paired difference of two runs on the same examples: ``ACR(a) - ACR(b)`` as the mean of per-example
  differences of radius * correct, with its standard error (:func:`paired_difference`).

Results on a subset of a test set (say every 20th image) differ from the full test set: say which.

Plots of these metrics are in rsjax.plots (matplotlib, imported only there).

References: Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing",
ICML 2019 (the TSV format and certified accuracy); Zhai et al., "MACER", ICLR 2020 (ACR).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from rsjax.certify import ABSTAIN

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
# The radii of the published MNIST tables (REFERENCE.md section 5).
DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
RADIUS_LABEL = "radius (l2, [0,1] pixel units)"

# str(datetime.timedelta): "[D day[s], ]H:MM:SS[.ffffff]".
_TIMEDELTA_RE = re.compile(
    r"^(?:(?P<days>\d+) days?, )?(?P<hours>\d+):(?P<minutes>\d{2}):(?P<seconds>\d{2}(?:\.\d+)?)$"
)


class CertResults(NamedTuple):
    """The rows of one certification TSV, as columns of length N.

    Attributes:
      idx: int64[N], the example's index in the dataset.
      label: int64[N], the true class.
      predict: int64[N], the smoothed classifier's answer, ``ABSTAIN = -1``.
      radius: float64[N], the certified l2 radius in [0,1] pixel units (0 for abstains).
      correct: bool[N], whether that row's prediction is the label.
      time: float64[N], seconds spent certifying the example.
      num_samples: int64[N], noise draws used (n0 included), from the seventh column that sequential
        certification writes; None for files without it.
    """

    idx: np.ndarray
    label: np.ndarray
    predict: np.ndarray
    radius: np.ndarray
    correct: np.ndarray
    time: np.ndarray
    num_samples: np.ndarray | None = None


def parse_time(text: str) -> float:
    """Seconds from a ``time`` field: seconds (rsjax) or ``str(datetime.timedelta)`` (PyTorch).

    Accepted: ``"0.0123"``, ``"0:00:15.123456"``, ``"0:00:03"``, ``"1 day, 0:00:01.5"``,
    ``"3 days, 12:00:00"``. Raises ValueError for anything else, negative or non-finite durations
    included.
    """
    s = text.strip()
    m = _TIMEDELTA_RE.match(s)
    if m is not None:
        days = int(m.group("days") or 0)
        minutes, seconds = int(m.group("minutes")), float(m.group("seconds"))
        if minutes >= 60 or seconds >= 60:
            raise ValueError(f"invalid time {text!r}: minutes and seconds must be below 60")
        return ((days * 24 + int(m.group("hours"))) * 60 + minutes) * 60 + seconds
    try:
        value = float(s)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: expected seconds or H:MM:SS[.ffffff] (datetime.timedelta)"
        ) from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid time {text!r}: must be a finite, non-negative number of seconds")
    return value


def _parse_correct(text: str) -> bool:
    s = text.strip()
    if s in ("1", "True", "true"):
        return True
    if s in ("0", "False", "false"):
        return False
    raise ValueError(f"invalid correct {text!r}: expected 0 or 1")


def read_tsv(path: str | os.PathLike) -> CertResults:
    """Reads one certification TSV (tab-separated header ``idx label predict radius correct time``).

    Columns are found by name, so their order does not matter and extra columns are ignored.
    Blank lines (a trailing newline, a blank final line) are skipped. A missing column, a malformed
    row or a bad value raises ValueError naming the file (and the line). A row whose ``correct``
    disagrees with ``predict == label`` is kept as written, with a warning. An idx that appears
    twice (rows doubled by two writers) raises ValueError: every example counts once.

    Returns:
      CertResults with N = number of data rows (0 for a header-only file).
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise ValueError(f"{path}: empty file, expected a header {chr(9).join(COLUMNS)!r}")
    header_line, header = numbered[0][0], [name.strip() for name in numbered[0][1].split("\t")]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}:{header_line}: header is missing column(s) {', '.join(missing)} "
            f"(found {header}; expected tab-separated {', '.join(COLUMNS)})"
        )
    duplicated = sorted({c for c in COLUMNS if header.count(c) > 1})
    if duplicated:
        raise ValueError(f"{path}:{header_line}: duplicated column(s) {', '.join(duplicated)}")
    where = {c: header.index(c) for c in COLUMNS}

    parsers = {"idx": int, "label": int, "predict": int, "radius": float}
    parsers |= {"correct": _parse_correct, "time": parse_time}
    columns: dict[str, list] = {c: [] for c in COLUMNS}
    wanted = COLUMNS
    if "num_samples" in header:
        wanted = COLUMNS + ("num_samples",)
        where["num_samples"] = header.index("num_samples")
        parsers["num_samples"] = int
        columns["num_samples"] = []
    for lineno, line in numbered[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ValueError(
                f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(fields)}"
            )
        for c in wanted:
            try:
                columns[c].append(parsers[c](fields[where[c]].strip()))
            except ValueError as e:
                raise ValueError(f"{path}:{lineno}: column {c}: {e}") from None

    results = CertResults(
        idx=np.asarray(columns["idx"], dtype=np.int64),
        label=np.asarray(columns["label"], dtype=np.int64),
        predict=np.asarray(columns["predict"], dtype=np.int64),
        radius=np.asarray(columns["radius"], dtype=np.float64),
        correct=np.asarray(columns["correct"], dtype=bool),
        time=np.asarray(columns["time"], dtype=np.float64),
        num_samples=(
            np.asarray(columns["num_samples"], dtype=np.int64) if "num_samples" in columns else None
        ),
    )
    bad = np.flatnonzero(results.correct != (results.predict == results.label))
    if bad.size:
        warnings.warn(
            f"{path}: {bad.size} row(s) have correct != (predict == label), first idx "
            f"{results.idx[bad[0]]}; using the correct column as written",
            stacklevel=2,
        )
    if np.any(results.radius < 0) or np.any(np.isnan(results.radius)):
        raise ValueError(f"{path}: radius must be non-negative")
    values, first = np.unique(results.idx, return_index=True)
    if values.size != results.idx.size:
        again = np.setdiff1d(np.arange(results.idx.size), first)[0]
        raise ValueError(
            f"{path}: idx {results.idx[again]} appears more than once (row {again + 1}): the file "
            "holds doubled rows (two writers?), so its certified accuracy would count them twice"
        )
    return results


def _radius_list(radii: ArrayLike) -> list[float]:
    """Radii (a scalar or any sequence) as a list of Python floats."""
    return [float(r) for r in np.atleast_1d(np.asarray(radii, dtype=np.float64))]


def _table_start(head: Sequence[str]) -> list[str]:
    """The header and alignment lines of a markdown table: first column left, the rest right."""
    return [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", *["---:"] * (len(head) - 1)]) + "|",
    ]


def _check_nonempty(results: CertResults) -> int:
    n = len(results.radius)
    if n == 0:
        raise ValueError("no examples: metrics of an empty result set are undefined")
    return n


def certified_accuracy_curve(results: CertResults, radius_grid: ArrayLike) -> np.ndarray:
    """Certified accuracy at every radius of a grid.

    ``acc(r) = (1/N) * #{i : correct_i and radius_i >= r}``, non-increasing in r; O((N + G) log N).

    Args:
      results: one run's rows (N >= 1).
      radius_grid: float array of any shape (G,), (), ... of radii r.

    Returns:
      float64 array with the shape of ``radius_grid``.
    """
    n = _check_nonempty(results)
    certified = np.sort(np.asarray(results.radius, np.float64)[np.asarray(results.correct, bool)])
    r = np.asarray(radius_grid, dtype=np.float64)
    below = np.searchsorted(certified, r, side="left")  # correct rows with radius < r
    return (certified.size - below) / n


def certified_accuracy(results: CertResults, radii: ArrayLike) -> np.ndarray:
    """Certified accuracy at each radius in ``radii`` (float array, shape (R,)): returns float64[R].

    ``acc(r) = (1/N) * #{i : correct_i = 1 and radius_i >= r}`` over all N rows, abstains included
    in N (Cohen et al. 2019). Same computation as :func:`certified_accuracy_curve`.
    """
    return certified_accuracy_curve(results, radii)


def average_certified_radius(results: CertResults) -> float:
    """ACR = (1/N) * sum_i radius_i * correct_i; abstains and wrong answers count 0.

    References: Zhai et al., "MACER", ICLR 2020 (the metric); Cohen et al. 2019 (the radii).
    """
    _check_nonempty(results)
    correct = np.asarray(results.correct, dtype=bool)
    return float(np.mean(np.where(correct, np.asarray(results.radius, np.float64), 0.0)))


def summarize(results: CertResults, radii: ArrayLike = DEFAULT_RADII) -> dict:
    """The numbers of one run, as a JSON-ready dict.

    Keys: ``n`` (rows), ``certified_accuracy`` ({r: acc(r)} for r in ``radii``), ``acr``,
    ``abstain_rate`` (fraction with predict = -1), ``clean_accuracy`` (fraction with
    predict = label: the smoothed classifier's accuracy on clean inputs, acc(0) for a consistent
    file), ``mean_time_s`` and ``total_time_s``; for files with a ``num_samples`` column (sequential
    certification) also ``mean_samples``, ``median_samples`` and ``total_samples`` (noise draws per
    example, n0 included).
    """
    n = _check_nonempty(results)
    radii = _radius_list(radii)
    acc = certified_accuracy(results, radii)
    predict, label = np.asarray(results.predict), np.asarray(results.label)
    return {
        "n": n,
        "certified_accuracy": {r: float(a) for r, a in zip(radii, acc, strict=True)},
        "acr": average_certified_radius(results),
        "abstain_rate": float(np.mean(predict == ABSTAIN)),
        "clean_accuracy": float(np.mean(predict == label)),
        "mean_time_s": float(np.mean(results.time)),
        "total_time_s": float(np.sum(results.time)),
        **sample_counts(results),
    }


def sample_counts(results: CertResults) -> dict:
    """``mean_samples``, ``median_samples``, ``total_samples`` of a sequential run ({} otherwise)."""
    if results.num_samples is None:
        return {}
    used = np.asarray(results.num_samples, dtype=np.int64)
    return {
        "mean_samples": float(used.mean()),
        "median_samples": float(np.median(used)),
        "total_samples": int(used.sum()),
    }


class PairedDifference(NamedTuple):
    """Run a minus run b on the same examples (see :func:`paired_difference`).

    Attributes:
      n: number of examples both runs certified.
      acr: ACR(a) - ACR(b), the mean per-example difference of radius * correct.
      acr_se: standard error of that mean, std(d, ddof=1) / sqrt(n) (0 for n = 1).
      certified_accuracy: {r: acc_a(r) - acc_b(r)} at the requested radii.
      larger: examples whose radius * correct is larger in a.
      smaller: examples whose radius * correct is smaller in a.
    """

    n: int
    acr: float
    acr_se: float
    certified_accuracy: dict
    larger: int
    smaller: int


def paired_difference(
    a: CertResults, b: CertResults, radii: ArrayLike = DEFAULT_RADII
) -> PairedDifference:
    """The difference of two runs on the same examples, paired example by example.

    With ``d_i = radius_i(a) * correct_i(a) - radius_i(b) * correct_i(b)`` over the N examples (rows
    matched by ``idx``, in any order), ``ACR(a) - ACR(b) = mean(d)`` and its standard error is
    ``std(d, ddof=1) / sqrt(N)``. The SE covers the choice of examples only: it says nothing of
    training noise (another seed), which needs runs of several seeds.

    Raises:
      ValueError: if the runs are empty, an ``idx`` repeats within a run, or the two runs do not
        hold the same set of ``idx`` (naming how many are missing from each side).
    """
    n = _check_nonempty(a)
    _check_nonempty(b)
    for name, r in (("a", a), ("b", b)):
        if np.unique(r.idx).size != r.idx.size:
            raise ValueError(f"run {name} lists an idx more than once: rows cannot be paired")
    only_a = np.setdiff1d(a.idx, b.idx)
    only_b = np.setdiff1d(b.idx, a.idx)
    if only_a.size or only_b.size:
        raise ValueError(
            f"the runs certify different examples: {only_a.size} idx only in a "
            f"(first {only_a[:3].tolist()}), {only_b.size} only in b (first {only_b[:3].tolist()})"
        )

    def credited(r):
        order = np.argsort(r.idx, kind="stable")
        return np.where(np.asarray(r.correct, bool), np.asarray(r.radius, np.float64), 0.0)[order]

    d = credited(a) - credited(b)
    radii = _radius_list(radii)
    acc = certified_accuracy(a, radii) - certified_accuracy(b, radii)
    return PairedDifference(
        n=n,
        acr=float(d.mean()),
        acr_se=float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        certified_accuracy={r: float(x) for r, x in zip(radii, acc, strict=True)},
        larger=int(np.sum(d > 0)),
        smaller=int(np.sum(d < 0)),
    )


def paired_table(pairs: Mapping[str, PairedDifference], radii: ArrayLike = DEFAULT_RADII) -> str:
    """A markdown table, one row per named :class:`PairedDifference`: the difference of certified
    accuracy at each r, of the ACR with its paired SE, and the counts of larger / smaller examples.
    """
    radii = _radius_list(radii)
    head = ["a - b", *(f"r={r:g}" for r in radii), "ACR", "paired SE", "larger / smaller", "n"]
    lines = _table_start(head)
    for name, p in pairs.items():
        cells = [str(name).replace("|", "\\|")]
        cells += [f"{p.certified_accuracy[r]:+.3f}" for r in radii]
        cells += [f"{p.acr:+.3f}", f"{p.acr_se:.3f}", f"{p.larger} / {p.smaller}", str(p.n)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(
    named_results: Mapping[str, CertResults], radii: ArrayLike = DEFAULT_RADII
) -> str:
    """A markdown table: one row per run, columns ``r=...`` (certified accuracy), ``ACR``, ``n``.

    Numbers have 3 decimals. Returns the table as a string ending in a newline.
    """
    radii = _radius_list(radii)
    head = ["run", *(f"r={r:g}" for r in radii), "ACR", "n"]
    lines = _table_start(head)
    for name, results in named_results.items():
        acc = certified_accuracy(results, radii)
        cells = [str(name).replace("|", "\\|"), *(f"{a:.3f}" for a in acc)]
        cells += [f"{average_certified_radius(results):.3f}", str(len(results.radius))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_table(
    named_seeds: Mapping[str, Sequence[CertResults]], radii: ArrayLike = DEFAULT_RADII
) -> str:
    """A markdown table over seeds: one row per run name, each cell ``mean ± h`` of certified
    accuracy at r (and of the ACR) over that name's seeds, with h half the range (max - min) / 2;
    ``seeds`` counts them and ``n`` gives the rows per seed (all seeds must certify the same number).
    """
    radii = _radius_list(radii)
    head = ["run", *(f"r={r:g}" for r in radii), "ACR", "seeds", "n"]
    lines = _table_start(head)
    for name, seeds in named_seeds.items():
        if not seeds:
            raise ValueError(f"run {name!r}: no seeds")
        sizes = sorted({len(r.radius) for r in seeds})
        if len(sizes) != 1:
            raise ValueError(f"run {name!r}: its seeds certify different numbers of rows {sizes}")
        values = np.array(
            [[*certified_accuracy(r, radii), average_certified_radius(r)] for r in seeds]
        )
        mean, half = values.mean(axis=0), (values.max(axis=0) - values.min(axis=0)) / 2
        cells = [str(name).replace("|", "\\|")]
        cells += [f"{m:.3f} ± {h:.3f}" for m, h in zip(mean, half, strict=True)]
        cells += [str(len(seeds)), str(sizes[0])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def default_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Run names for the given files: their stems, or their paths where stems collide."""
    stems = [os.path.splitext(os.path.basename(os.fspath(p)))[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [os.fspath(p) for p in paths]


def affine_margins(logits: ArrayLike, jacobian: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Predictions and exact l2 robust radii of an affine classifier z(x) = A x + c.

    Args:
      logits: (N, K) z(x) of N inputs.
      jacobian: (K, d) A.
    Returns:
      (pred (N,), margin (N,)): f(x) = argmax z, and min_{j != f(x)} (z_f - z_j) / ||A_f - A_j||,
      the distance from x to f's nearest decision boundary (f is constant within it, and changes just
      beyond it). inf where no other class's row of A differs.
    """
    logits, jacobian = np.asarray(logits, np.float64), np.asarray(jacobian, np.float64)
    pred = logits.argmax(axis=1)
    gaps = logits[np.arange(len(logits)), pred][:, None] - logits  # (N, K), >= 0
    norms = np.linalg.norm(jacobian[pred][:, None, :] - jacobian[None, :, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dist = np.where(np.arange(logits.shape[1])[None] == pred[:, None], np.inf, gaps / norms)
    return pred, np.nan_to_num(dist, nan=np.inf).min(axis=1)


def compare_to_margins(
    pred: ArrayLike, margin: ArrayLike, labels: ArrayLike, results: CertResults
) -> dict:
    """One certification's radii against a linear classifier's margins on the same images.

    pred, margin: affine_margins of the linear classifier f on the whole dataset; labels: the
    dataset's (indexed by results.idx). Returns images, f's accuracy and mean margin (0 where f is
    wrong), the certification's certified accuracy and ACR, and among the images both classify
    correctly: their number, the share certified beyond f's margin, and the two medians.
    """
    idx = np.asarray(results.idx)
    f_correct = np.asarray(pred)[idx] == np.asarray(labels)[idx]
    f_radius = np.where(f_correct, np.asarray(margin)[idx], 0.0)
    radius = np.where(results.correct, results.radius, 0.0)
    both = f_correct & results.correct
    some = bool(both.any())
    return {
        "images": int(len(idx)),
        "linear_accuracy": float(f_correct.mean()),
        "linear_mean_margin": float(f_radius.mean()),
        "certified_accuracy": float(results.correct.mean()),
        "acr": float(radius.mean()),
        "both_correct": int(both.sum()),
        "beyond_margin": float((radius[both] > f_radius[both]).mean()) if some else None,
        "median_margin_both": float(np.median(f_radius[both])) if some else None,
        "median_radius_both": float(np.median(radius[both])) if some else None,
    }


def compare_sequential(
    fixed: CertResults,
    sequential: CertResults,
    radii: ArrayLike = DEFAULT_RADII,
    fixed_samples: int | None = None,
) -> dict:
    """Fixed-n against sequential certification of the same images, as a JSON-ready dict.

    Keys: ``n``; ``certified_accuracy`` {"fixed": {r: acc}, "sequential": {r: acc}}; ``worst_gap``
    (sequential minus fixed certified accuracy at the radius where they differ most, in accuracy
    units: -0.01 is one point fewer); ``acr`` of both; ``mean_samples`` and ``median_samples`` of the
    sequential run, ``fixed_samples`` (n0 + n per image of the fixed run, if given) and
    ``sample_ratio`` = fixed_samples / mean_samples; ``time_s`` of both (sums of the ``time``
    columns) and their ratio. Raises ValueError unless both files hold the same indices in order and
    the sequential file has a num_samples column.
    """
    if sequential.num_samples is None:
        raise ValueError("the sequential results have no num_samples column")
    if fixed.idx.shape != sequential.idx.shape or np.any(fixed.idx != sequential.idx):
        raise ValueError(
            "fixed and sequential results must hold the same indices in the same order"
        )
    radii = _radius_list(radii)
    acc_fixed = certified_accuracy(fixed, radii)
    acc_seq = certified_accuracy(sequential, radii)
    gap = acc_seq - acc_fixed
    counts = sample_counts(sequential)
    out = {
        "n": int(fixed.idx.size),
        "certified_accuracy": {
            "fixed": {r: float(a) for r, a in zip(radii, acc_fixed, strict=True)},
            "sequential": {r: float(a) for r, a in zip(radii, acc_seq, strict=True)},
        },
        "worst_gap": float(gap[np.argmax(np.abs(gap))]),
        "acr": {
            "fixed": average_certified_radius(fixed),
            "sequential": average_certified_radius(sequential),
        },
        "mean_samples": counts["mean_samples"],
        "median_samples": counts["median_samples"],
        "time_s": {
            "fixed": float(np.sum(fixed.time)),
            "sequential": float(np.sum(sequential.time)),
        },
    }
    out["time_ratio"] = out["time_s"]["fixed"] / out["time_s"]["sequential"]
    if fixed_samples is not None:
        out["fixed_samples"] = int(fixed_samples)
        out["sample_ratio"] = fixed_samples / counts["mean_samples"]
    return out
