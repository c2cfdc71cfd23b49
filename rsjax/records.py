"""Run records: the certification TSV (resumable, append-only, one writer), JSON sidecars, and the
environment.

The TSV is the de facto standard of Cohen et al.'s code: header `idx label predict radius correct
time`, one row per example, radius to 3 significant digits rounded down (never above the certified
radius), predict -1 for abstain, time in seconds. Its sidecar `PATH.json` records the settings.

What a certification output (CertificationTSV) guarantees:
- One writer: the TSV is held by an exclusive OS lock (rsjax.locks) from before its settings are
  read until it is closed; a second process is refused at once (OutputLockedError, naming the path
  and the holder's process id), so two runs never interleave or double rows.
- Append-only: rows are checked, appended and fsync'ed per example batch, and a finished row is never
  rewritten. A repair only cuts the file at the byte after the last row it keeps (ftruncate), so a
  failure during it (kill, full disk, file-size limit) leaves every finished row as it was.
- Verified resume: a rerun checks every existing row (field count, integers, idx in the requested
  order, label and prediction in range, radius finite, >= 0 and 0 for an abstention, correct equal to
  predict == label, time finite and >= 0, num_samples >= 1). A torn last line (no final newline: a
  kill in the middle of a write) is dropped; any other bad row, a damaged sidecar or other settings
  raise RunRecordError naming the file (and the line), and nothing is touched. The run then continues
  after the last row, so the finished file has the rows of an uninterrupted run, none lost or
  duplicated (only the `time` column, a wall-clock measurement, differs between any two runs).
- Settings: a resume with other settings is refused with the difference, except an extension of the
  indices (the recorded list a prefix of the new one, as a larger --max): the run continues the file
  and its sidecar records the new indices from then on.
- Sidecars are written atomically (temporary file, fsync, rename): a kill or a failed write leaves the
  old sidecar or the new one, and no temporary file.
"""

import contextlib
import decimal
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import time
from importlib import metadata
from typing import Any, Iterable, Sequence

import jax

from rsjax import locks

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


def check_writable(path: str | os.PathLike) -> pathlib.Path:
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


class RunRecordError(ValueError):
    """A certification output that cannot be resumed as it is: a bad row, a damaged or missing
    sidecar, or other settings. The message names the file (and the line of a bad row); nothing was
    changed."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically: a temporary file beside `path`, fsync'ed, renamed over it. A kill or a
    failure leaves the old file or the new one, never half of one, and no temporary file. `obj`: any
    value json.dumps accepts (written indented, keys sorted)."""
    path = pathlib.Path(path)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"  # fails before any file is made
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(path) -> None:
    """Makes a rename in `path` durable (a no-op where directories cannot be fsync'ed)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_json(path: str | os.PathLike) -> dict:
    """Reads a JSON object (a sidecar); RunRecordError naming the file if it is empty or damaged."""
    path = pathlib.Path(path)
    text = path.read_text(errors="replace")
    if not text.strip():
        raise RunRecordError(
            f"{path} is empty (a write cut short?); it is left untouched: restore it, or delete it "
            "with the file it describes to start over"
        )
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise RunRecordError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}: truncated or "
            "damaged); it is left untouched: restore it, or delete it with the file it describes "
            "to start over"
        ) from None
    if not isinstance(obj, dict):
        raise RunRecordError(f"{path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def append_result(path: str | os.PathLike | None, row: dict, env: dict) -> dict:
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
) -> str:
    """One certification TSV line, newline included: idx, label, predict, the radius rounded down
    by `format_radius`, correct, the seconds to 4 decimals, and num_samples when given."""
    row = f"{idx}\t{label}\t{predict}\t{format_radius(radius)}\t{correct}\t{seconds:.4f}"
    return row + ("\n" if num_samples is None else f"\t{num_samples}\n")


_INTEGER = re.compile(r"-?[0-9]+\Z")
_NUMBER = re.compile(r"[-+]?[0-9.]+([eE][-+]?[0-9]+)?\Z")  # no nan, inf or spaces


def _integer(row: dict, name: str) -> int:
    if not _INTEGER.match(row[name]):
        raise ValueError(f"{name} {row[name]!r} is not an integer")
    return int(row[name])


def _seconds_or_radius(row: dict, name: str) -> float:
    try:
        value = float(row[name]) if _NUMBER.match(row[name]) else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} {row[name]!r} is not a finite number >= 0")
    return value


def check_row(
    fields: Sequence[str],
    header: Sequence[str] = HEADER,
    *,
    idx: int | None = None,
    num_classes: int | None = None,
) -> int:
    """Checks one certification row (its tab-separated fields) against what rsjax writes and returns
    its idx; ValueError says what is wrong.

    idx an integer >= 0 (equal to `idx` when given: the requested order); label in [0, num_classes)
    and predict in [-1, num_classes) (no upper bound when num_classes is None); radius finite, >= 0,
    and 0 where predict is -1 (abstain); correct is predict == label as 0 or 1; time finite, >= 0;
    num_samples (sequential rows) an integer >= 1.
    """
    if len(fields) != len(header):
        raise ValueError(f"{len(fields)} fields where the header has {len(header)}")
    row = dict(zip(header, fields, strict=True))
    index = _integer(row, "idx")
    if index < 0:
        raise ValueError(f"idx {index} is negative")
    if idx is not None and index != idx:
        raise ValueError(f"idx {index} where the requested order has {idx}")
    label = _integer(row, "label")
    if label < 0 or (num_classes is not None and label >= num_classes):
        raise ValueError(f"label {label} is outside [0, {num_classes or 'inf'})")
    predict = _integer(row, "predict")
    if predict < -1 or (num_classes is not None and predict >= num_classes):
        raise ValueError(f"predict {predict} is outside [-1, {num_classes or 'inf'})")
    radius = _seconds_or_radius(row, "radius")
    if predict == -1 and radius != 0:
        raise ValueError(f"radius {row['radius']} for an abstention (predict -1) must be 0")
    correct = _integer(row, "correct")
    if correct != int(predict == label):
        raise ValueError(
            f"correct {correct} where predict {predict} and label {label} give "
            f"{int(predict == label)}"
        )
    _seconds_or_radius(row, "time")
    if "num_samples" in row and _integer(row, "num_samples") < 1:
        raise ValueError(f"num_samples {row['num_samples']} is not >= 1")
    return index


class CertificationTSV:
    """An append-only certification TSV that resumes, written by one process at a time.

    with CertificationTSV(path, settings, indices=indices) as tsv:  # locks, then resumes or starts
        tsv.done              # indices already written: a prefix of `indices`
        tsv.append(rows)      # rows: iterable of format_row arguments, in the order of `indices`
        tsv.write_sidecar({"complete": True})

    Args:
      settings: what must match for a resume (JSON-able); `indices` is recorded with them.
      indices: the dataset indices of the rows, in order.
      header: HEADER, or SEQUENTIAL_HEADER for rows with num_samples.
      num_classes: bounds the labels and predictions that a resume accepts (None: unchecked).
      index_settings: names of settings that only choose the indices (a script's --max): they may
        change along with an extension of `indices`.
    Raises OutputLockedError when another process holds the file, RunRecordError (a ValueError) when
    the file cannot be resumed as it is (see the module docstring); neither touches the file. The lock
    is held until close() (or the end of the with block).
    """

    def __init__(
        self,
        path,
        settings: dict,
        *,
        indices: Sequence[int],
        header: Sequence[str] = HEADER,
        num_classes: int | None = None,
        index_settings: Sequence[str] = (),
    ):
        self.header = tuple(header)
        self.path = check_writable(path)
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.indices = [int(i) for i in indices]
        self.settings = json.loads(json.dumps(dict(settings, indices=self.indices)))
        self.num_classes = num_classes
        self.index_settings = tuple(index_settings)
        self.done: list[int] = []
        self.extended_from: int | None = None  # the recorded number of indices, when extended
        self._ends: list[int] = []  # byte offset after the header and after each row
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(locks.exclusive(self.path))
        try:
            header_bytes = len("\t".join(self.header)) + 1
            if self.path.exists() and self.path.stat().st_size > header_bytes:
                self._resume()
            else:  # settings first, so that a file with rows always has the settings beside it
                self.write_sidecar({})
                with open(self.path, "w") as f:
                    f.write("\t".join(self.header) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._ends = [header_bytes]
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "CertificationTSV":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases the lock (the file stays as written)."""
        self._lock.close()

    def _resume(self) -> None:
        """Checks the settings and every row, then drops a torn last line; touches nothing on error."""
        if not self.sidecar.exists():
            raise RunRecordError(
                f"{self.path} has rows but no sidecar {self.sidecar} saying with which settings; "
                "it is left untouched: choose another output path or delete it to start over"
            )
        sidecar = read_json(self.sidecar)
        recorded = sidecar.get("settings")
        if not isinstance(recorded, dict):
            raise RunRecordError(f"{self.sidecar} records no settings (no 'settings' object)")
        self._check_settings(recorded)
        data = self.path.read_bytes()
        self._read_rows(data)
        if len(data) > self._ends[-1]:  # a torn last line: cut at the byte after the last row
            self._truncate(self._ends[-1])
        if recorded != self.settings:  # an extension of the indices: this run takes the file over
            self.extended_from = len(recorded["indices"])
            write_json(
                self.sidecar,
                dict(
                    sidecar,
                    settings=self.settings,
                    examples_done=len(self.done),
                    complete=len(self.done) == len(self.indices),
                ),
            )

    def _check_settings(self, recorded: dict) -> None:
        if recorded == self.settings:
            return
        changed = sorted(
            k for k in set(recorded) | set(self.settings) if recorded.get(k) != self.settings.get(k)
        )
        old = recorded.get("indices")
        extends = (
            set(changed) <= {"indices", *self.index_settings}
            and isinstance(old, list)
            and self.indices[: len(old)] == old
        )
        if extends:
            return
        diff = ", ".join(
            f"{k}: {_brief(recorded, k)} vs {_brief(self.settings, k)}" for k in changed
        )
        hint = ""
        if set(changed) <= {"indices", *self.index_settings}:
            hint = " (the indices may only grow: the saved ones must begin the new ones)"
        raise RunRecordError(
            f"{self.path} exists from a run with other settings (saved vs now: {diff}){hint}; "
            "it is left untouched: choose another output path or delete it to start over"
        )

    def _read_rows(self, data: bytes) -> None:
        """Sets done and the row ends from the file's bytes; RunRecordError at the first bad row."""
        header = "\t".join(self.header).encode()
        if data.split(b"\n", 1)[0] != header or b"\n" not in data:
            raise RunRecordError(
                f"{self.path}, line 1: not the header {' '.join(self.header)}; it is left untouched"
            )
        pos = len(header) + 1
        self._ends = [pos]
        line = 1
        while (end := data.find(b"\n", pos)) >= 0:  # a last line without a newline is torn
            line += 1
            text = data[pos:end]
            try:
                if len(self.done) >= len(self.indices):
                    raise ValueError(f"a row beyond the {len(self.indices)} requested indices")
                index = check_row(
                    text.decode("ascii").split("\t"),
                    self.header,
                    idx=self.indices[len(self.done)],
                    num_classes=self.num_classes,
                )
            except ValueError as e:  # UnicodeDecodeError included
                shown = text[:100].decode("ascii", errors="replace")
                raise RunRecordError(
                    f"{self.path}, line {line}: {e} in {shown!r}; the file is left untouched: "
                    "remove this line and those after it to recompute them, or delete the file "
                    "to start over"
                ) from None
            self.done.append(index)
            pos = end + 1
            self._ends.append(pos)

    def _truncate(self, size: int) -> None:
        """Cuts the file at byte `size`, fsync'ed: one system call that rewrites nothing before it."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)

    def keep(self, count: int) -> None:
        """Keeps the first `count` rows and cuts the file after them (by truncation, as a repair)."""
        if count < len(self.done):
            self._truncate(self._ends[count])
            del self.done[count:]
            del self._ends[count + 1 :]

    def append(self, rows: Iterable[tuple]) -> None:
        """Checks and appends rows (format_row arguments) in the order of `indices`, then fsyncs;
        a bad row (a NaN radius, an index out of order) raises ValueError before anything is written."""
        lines = []
        for row in rows:
            line = format_row(*row)
            k = len(self.done) + len(lines)
            try:
                if k >= len(self.indices):
                    raise ValueError(f"a row beyond the {len(self.indices)} requested indices")
                check_row(
                    line[:-1].split("\t"),
                    self.header,
                    idx=self.indices[k],
                    num_classes=self.num_classes,
                )
            except ValueError as e:
                raise ValueError(f"refusing to write a bad row to {self.path}: {e}") from None
            lines.append(line)
        with open(self.path, "ab") as f:  # opened at the end of the file
            end = f.tell()
            for line in lines:
                end += f.write(line.encode())
                self._ends.append(end)
            f.flush()
            os.fsync(f.fileno())
        self.done.extend(self.indices[len(self.done) : len(self.done) + len(lines)])

    def write_sidecar(self, extra: dict) -> None:
        """Writes the sidecar JSON atomically: {"settings": the run's settings, **extra}."""
        write_json(self.sidecar, {"settings": self.settings, **extra})


def _brief(settings: dict, key: str) -> str:
    """One setting for a message: '(none)' when absent, long lists shortened to their ends."""
    if key not in settings:
        return "(none)"
    value = settings[key]
    if isinstance(value, list) and len(value) > 6:
        return f"[{value[0]}, {value[1]}, ..., {value[-1]}] ({len(value)} items)"
    return json.dumps(value)
