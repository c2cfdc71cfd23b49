"""One writer per output: an exclusive OS file lock on a certification output or a training workdir.

    with locks.exclusive(path_of_output):   # raises OutputLockedError if another process holds it
        ...write the output...

The lock is `fcntl.flock` on a small lock file beside the output (`.NAME.lock`, or `.rsjax.lock`
inside a directory). The kernel releases it when the holder's file descriptor closes, which includes
the process dying in any way (`kill -9`, out of memory), so a lock never outlives its process and
there is no stale-lock clean-up. The holder writes its process id and host into the lock file so that
a refused process can say who holds it. flock locks belong to an open file description: a second
`exclusive` on the same path in the same process is refused as well.

POSIX only (Linux, macOS); on a file system without flock support (some network mounts) the lock
raises a clear OSError rather than silently not locking.
"""

import contextlib
import errno
import fcntl
import os
import pathlib
import socket
from typing import Iterator


class OutputLockedError(RuntimeError):
    """Another process holds the output's lock; `path` is the output, `holder` what it wrote."""

    def __init__(self, path: str | os.PathLike, holder: str):
        self.path = str(path)
        self.holder = holder
        super().__init__(
            f"{path} is in use by another process ({holder}); wait for it to finish or stop it. "
            "Two writers on one output would double or lose rows"
        )


def lock_path(path: str | os.PathLike) -> pathlib.Path:
    """The lock file of an output: `DIR/.rsjax.lock` for a directory, `.NAME.lock` beside a file."""
    path = pathlib.Path(path)
    if path.is_dir():
        return path / ".rsjax.lock"
    return path.with_name(f".{path.name}.lock")


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[pathlib.Path]:
    """Holds the exclusive lock of `path` (a file or a directory, created by the caller or not)
    for the block; raises OutputLockedError at once, without waiting, when another holder has it."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise OSError(e.errno, f"cannot lock {lock}: {e.strerror}") from e
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown process"
            raise OutputLockedError(path, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process id {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # releases the lock (the file stays: removing it would race a new holder)
