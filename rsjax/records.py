"""Run records: the certification TSV (resumable, append-only), JSON sidecars, and the environment.

The TSV is the de facto standard of Cohen et al.'s code: header `idx label predict radius correct
time`, one row per example, radius to 3 significant digits rounded down (never above the certified
radius), predict -1 for abstain, time in seconds.
Rows are appended and flushed per example batch. A rerun with the same settings keeps every complete
row, drops a torn last line (a kill in the middle of a write), and continues after the last index
written, so the finished file has the rows of an uninterrupted run, none lost or duplicated (only the
`time` column, a wall-clock measurement, differs between any two runs).
"""

import decimal
import json
import math
import os
import pathlib
import platform
import subprocess
import time
from importlib import metadata
from typing import Iterable

import jax

HEADER = ("idx", "label", "predict", "radius", "correct", "time")
# Sequential certification adds the noise draws each example used (n0 included) as a seventh column.
SEQUENTIAL_HEADER = HEADER + ("num_samples",)
PACKAGES = (
    "rsjax",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "tensorflow-datasets",
    "scipy",
    "numpy",
)


def environment() -> dict:
    """Package versions, device kind and count, Python, platform and the git commit (if any)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device_kind": devices[0].device_kind,
        "platform_name": devices[0].platform,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "git_commit": git_commit(),
    }


def git_commit() -> str | None:
    """The commit of the rsjax checkout (with '+dirty' for local changes), or None outside git."""
    here = pathlib.Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def check_writable(path) -> pathlib.Path:
    """Creates the parent directory of `path` and checks that a file can be written there."""
    path = pathlib.Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".{path.name}.probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot write output {path}: {e.strerror or e}") from e
    return path


def write_json(path, obj) -> None:
    """Writes JSON atomically (temporary file, then rename): a kill never leaves half a file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def append_result(path, row: dict, env: dict) -> dict:
    """Stamps a measurement with the device, versions, commit and time, and appends it as one JSON
    line to `path` (no file when path is empty). Returns the stamped row."""
    row = dict(
        row,
        device_kind=env["device_kind"],
        device_count=env["device_count"],
        versions=env["versions"],
        git_commit=env["git_commit"],
        time=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    if path:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
    return row


def format_radius(radius: float) -> str:
    """The radius to 3 significant digits, rounded down: the written radius never exceeds the
    certified one (nearest rounding would write 0.2496 as 0.25 and certify it at r = 0.25)."""
    text = f"{radius:.3g}"
    if not (radius > 0 and math.isfinite(radius)) or float(text) <= radius:
        return text
    value = decimal.Decimal(text)
    lower = value - decimal.Decimal(1).scaleb(value.adjusted() - 2)
    if lower.adjusted() < value.adjusted():  # 1.00 -> 0.999, not 0.99
        lower = value - decimal.Decimal(1).scaleb(lower.adjusted() - 2)
    return f"{float(lower):.3g}"


def format_row(
    idx: int,
    label: int,
    predict: int,
    radius: float,
    correct: int,
    seconds: float,
    num_samples: int | None = None,
):
    row = f"{idx}\t{label}\t{predict}\t{format_radius(radius)}\t{correct}\t{seconds:.4f}"
    return row + ("\n" if num_samples is None else f"\t{num_samples}\n")


class CertificationTSV:
    """An append-only certification TSV that resumes.

    tsv = CertificationTSV(path, settings)   # settings: what must match for a resume (JSON-able)
    CertificationTSV(path, settings, header=SEQUENTIAL_HEADER)  # sequential: rows add num_samples
    tsv.done                                  # indices already written, in order
    tsv.append(rows)                          # rows: iterable of format_row arguments
    A file written with other settings is never touched: that raises ValueError.
    """

    def __init__(self, path, settings: dict, header: tuple[str, ...] = HEADER):
        self.header = tuple(header)
        self.path = check_writable(path)
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.settings = json.loads(json.dumps(settings))
        self.done: list[int] = []
        if self.path.exists() and self.path.stat().st_size > len("\t".join(self.header)) + 1:
            self._resume()
        else:  # settings first, so that a file with rows always has the settings beside it
            self.write_sidecar({})
            with open(self.path, "w") as f:
                f.write("\t".join(self.header) + "\n")

    def _resume(self):
        previous = {}
        if self.sidecar.exists():
            previous = json.loads(self.sidecar.read_text()).get("settings", {})
        if previous != self.settings:
            diff = {
                k: (previous.get(k), v) for k, v in self.settings.items() if previous.get(k) != v
            }
            raise ValueError(
                f"{self.path} exists from a run with other settings (saved vs now: {diff or previous}); "
                "it is left untouched: choose another output path or delete it to start over"
            )
        text = self.path.read_text()
        lines = text.split("\n")
        if lines[0].split("\t") != list(self.header):
            raise ValueError(f"{self.path} does not start with the header {' '.join(self.header)}")
        complete = lines[1:-1]  # the last element is '' after a final newline, or a torn line
        if lines[-1]:
            with open(self.path, "w") as f:  # drop the torn last line, keep every complete row
                f.write("\n".join(lines[:-1]) + "\n")
        self.done = [int(line.split("\t")[0]) for line in complete if line]

    def append(self, rows: Iterable[tuple]) -> None:
        with open(self.path, "a") as f:
            for row in rows:
                f.write(format_row(*row))
                self.done.append(int(row[0]))
            f.flush()
            os.fsync(f.fileno())

    def write_sidecar(self, extra: dict) -> None:
        write_json(self.sidecar, {"settings": self.settings, **extra})
