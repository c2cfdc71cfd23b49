"""What every section of the GPU suite shares: the budget, the rows and the table, the warm-ups.

References: benchmarks/gpu_suite.py (the budget and timing rules), benchmarks/README.md ("GPU suite").
"""

import concurrent.futures
import math
import threading
import time

import jax

from rsjax import records

COLUMNS = (
    "section",
    "model",
    "settings",
    "throughput",
    "per item",
    "ratio",
    "TFLOP/s",
    "compile s",
    "timed",
    "note",
)


class Budget:
    """Wall-clock budget: a total, shared by sections in order (a section's deadline is the end of
    its cumulative share, or half its own share from when it opens if that is later, never past
    the total)."""

    def __init__(self, total_s: float, shares: dict, clock=time.perf_counter):
        self.clock = clock
        self.start = clock()
        self.total_s = float(total_s)
        self.shares = shares
        self.end = self.start + self.total_s
        self.deadline = self.end
        self.cumulative = 0.0

    def open(self, section: str) -> float:
        """Starts `section`; returns its seconds left."""
        share = self.shares.get(section, 0.0)
        self.cumulative += share
        planned = self.start + self.total_s * self.cumulative
        self.deadline = min(self.end, max(planned, self.clock() + 0.5 * share * self.total_s))
        return self.left()

    def left(self) -> float:
        """Seconds left in the current section."""
        return self.deadline - self.clock()

    def total_left(self) -> float:
        return self.end - self.clock()

    def allows(self, seconds: float, first: bool = False) -> bool:
        """Whether a step expected to take `seconds` fits: in the section, or, for a configuration's
        first timed repeat, in the total budget."""
        return seconds <= (self.total_left() if first else self.left())


class Suite:
    """The rows measured so far: JSON lines to `out`, table cells for the final table."""

    def __init__(self, out: str, env: dict, *, quick: bool, command: str):
        self.out, self.env, self.quick, self.command = out, env, quick, command
        self.rows, self.cells = [], []
        self.lock = threading.Lock()
        self.start = time.perf_counter()
        device = jax.devices()[0]
        self.device = str(device)
        self.platform = device.platform

    def add(self, row: dict, cells: dict) -> dict:
        row = dict(
            {"benchmark": "gpu_suite", "status": "ok"},
            **row,
            quick=self.quick,
            command=self.command,
            date=time.strftime("%Y-%m-%d"),
            platform_name=self.platform,
            device=self.device,
            jax_version=jax.__version__,
            device_peak_bytes=device_peak_bytes(),
        )
        row = records.append_result(self.out, row, self.env)
        cells = dict(cells, section=row["section"], note=cells.get("note", ""))
        with self.lock:
            self.rows.append(row)
            self.cells.append(cells)
        print(
            f"  [{row['section']}] "
            + ", ".join(f"{k}: {v}" for k, v in cells.items() if v and k != "section"),
            flush=True,
        )
        return row

    def skip(self, section, model, settings, reason, **fields):
        return self.add(
            dict(
                section=section, model=model, status=reason.split(":")[0], reason=reason, **fields
            ),
            {"model": model, "settings": settings, "note": reason},
        )

    def table(self) -> str:
        with self.lock:
            lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
            for cells in self.cells:
                lines.append(
                    "| " + " | ".join(str(cells.get(c, "") or "-") for c in COLUMNS) + " |"
                )
        return "\n".join(lines)

    def print_table(self, note: str = ""):
        elapsed = time.perf_counter() - self.start
        print()
        print(
            f"GPU suite: {self.env['device_kind']} ({self.platform}, {self.env['device_count']}"
            f" device(s)), jax {jax.__version__}, {time.strftime('%Y-%m-%d')}"
            + (", --quick (a smoke test, not a measure)" if self.quick else "")
        )
        print()
        print(self.table())
        print()
        print(f"time: {elapsed:.0f} s{note}", flush=True)


def device_peak_bytes():
    """The default device's peak memory in use so far (None where the backend does not say)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # optional, backend-dependent
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def fmt(x, digits=0):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:,.{digits}f}"


def error_text(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"error: {type(e).__name__}: {text[:120]}"


def warm_up(jobs: dict, workers: int) -> dict:
    """Runs each job() once, in `workers` threads: {name: (seconds, result or the exception)}."""

    def timed(job):
        t0 = time.perf_counter()
        try:
            result = job()
        except Exception as e:  # reported as a row
            result = e
        return time.perf_counter() - t0, result

    if workers <= 1:
        return {name: timed(job) for name, job in jobs.items()}
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {name: pool.submit(timed, job) for name, job in jobs.items()}
        return {name: f.result() for name, f in futures.items()}
