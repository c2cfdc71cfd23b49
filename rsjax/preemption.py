"""Stopping a training run cleanly on SIGTERM or SIGINT (a preempted VM, a batch scheduler, Ctrl-C).

`rsjax.train.train_loop` runs inside `stop_requests()`: a signal then only records a request; the loop
finishes the step it is in, saves that step's checkpoint and raises `TrainingInterrupted`. Rerunning
the same command resumes from that step, and since every step's noise is fold_in(train_key, step) and
every epoch's order is drawn from fold_in(data_key, epoch), the resumed run ends with the parameters
the uninterrupted run would have had (tests/test_train.py). A second signal before the step ends
raises KeyboardInterrupt at once, as Ctrl-C would without this module.

Only a single process installs the handlers, and only from the main thread (Python delivers signals
there): in a multi-process run one process stopping alone would leave the others waiting in a
collective, so there the signals keep their usual effect.
"""

import contextlib
import signal
import threading
from collections.abc import Iterator

import jax

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(KeyboardInterrupt):
    """A signal stopped training after a step whose checkpoint was saved; `signum` is the signal.
    Rerun the same command to resume."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Within the block, SIGTERM and SIGINT append their number to the yielded list instead of
    stopping the process (a second one raises KeyboardInterrupt); the previous handlers come back on
    exit. Outside the main thread or with several JAX processes the list stays empty and nothing is
    installed."""
    received: list[int] = []
    if jax.process_count() > 1 or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def request(signum, frame):
        if received:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping at once")
        received.append(signum)

    previous = {s: signal.signal(s, request) for s in SIGNALS}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
