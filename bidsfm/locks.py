"""Exclusive file locks that a killed job cannot leave held (``fcntl.flock``).

The kernel releases a ``flock`` when its holder dies, even by SIGKILL, so a lock file left
behind by a killed job is simply taken by the next one. A lock file is removed when its lock
is released; a job that opened the old file just before that notices (the path no longer
names the file it locked) and tries again, so two jobs never both believe they hold a lock.
Used for one participant's outputs (:func:`participant_lock_path`), the pybids index and the
output folder's shared files (``logs/CITATION.md``).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType


class ExclusiveLock:
    """An exclusive lock on ``path`` (created when needed, removed on release).

    Parameters
    ----------
    path : str or Path
        The lock file; its folder must exist.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock; return False if another holder kept it for ``timeout`` seconds.

        Parameters
        ----------
        timeout : float, optional
            0 tries once; None waits as long as it takes.
        """
        import fcntl

        if self._fd is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
                continue
            try:  # the previous holder may have removed the file we opened
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            self._fd = fd
            return True

    def release(self) -> None:
        """Remove the lock file and release the lock (nothing happens when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still holding it: a waiter then sees another file
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (``pid N on HOST``), or ``""``."""
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self) -> ExclusiveLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def participant_lock_path(output_dir: str | Path, label: str) -> Path:
    """The lock file a participant-level job holds while it writes ``sub-<label>``'s outputs:
    ``OUTPUT_DIR/.sub-<label>.lock``."""
    return Path(output_dir) / f".sub-{label}.lock"
