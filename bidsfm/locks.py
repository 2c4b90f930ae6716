"""Exclusive file locks that a killed job cannot leave held (``fcntl.flock``).

The kernel releases a ``flock`` when its holder dies, even by SIGKILL, so a lock file left
behind by a killed job is simply taken by the next one. A lock file is removed when its lock
is released; a job that opened the old file just before that notices (the path no longer
names the file it locked) and tries again, so two jobs never both believe they hold a lock.
Used for one participant's outputs (:func:`participant_lock_path`), the pybids index and the
output folder's shared files (``logs/CITATION.md``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

_LOGGER = logging.getLogger("bidsfm")


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


def lock_participants(output_dir: Path, runs_by_participant: dict[str, list],
                      problems: list) -> list:
    """Take each participant's lock in ``output_dir``; leave busy participants to their job.

    A participant whose lock (:func:`bidsfm.locks.participant_lock_path`) another job holds
    gets one error line, ``another bidsfm job is processing sub-X (lock FILE, pid N on HOST)``,
    a :class:`~bidsfm.discovery.RunProblem` in ``problems`` and no runs (its entry in
    ``runs_by_participant`` is emptied); the other participants go on. Under its lock, the
    temporary files a killed job left in a participant's folder (and of its report) are
    removed: no other job can be writing them.

    Returns
    -------
    list of ExclusiveLock
        The locks taken; release them when the participants' outputs are written.
    """
    from .discovery import RunProblem
    from .utils import remove_stale_temps

    held = []
    for label, runs in runs_by_participant.items():
        if not runs:
            continue
        lock = ExclusiveLock(participant_lock_path(output_dir, label))
        if not lock.acquire(timeout=0):
            holder = lock.holder()
            msg = (f"another bidsfm job is processing sub-{label} (lock {lock.path}"
                   f"{', ' + holder if holder else ''}); sub-{label} is left to it. Rerun "
                   f"sub-{label} once that job has ended if it did not finish")
            _LOGGER.error("%s", msg)
            problems.append(RunProblem(f"sub-{label}", msg))
            runs_by_participant[label] = []
            continue
        held.append(lock)
        n = (remove_stale_temps(output_dir / f"sub-{label}", recursive=True)
             + remove_stale_temps(output_dir, f"sub-{label}."))
        if n:
            _LOGGER.info("sub-%s: removed %d temporary file(s) left by an interrupted job",
                        label, n)
    return held


def remove_shared_temps(output_dir: Path) -> None:
    """Remove the temporary files a killed job left of the files all participant jobs share,
    each under the lock their writers take: ``dataset_description.json``, ``README.md`` and
    ``.bidsignore``, and the atlases of ``sourcedata/atlases`` (``logs/CITATION.md``'s are
    removed by its writer)."""
    from filelock import FileLock

    from .derivatives import ATLAS_DATASET
    from .utils import remove_stale_temps

    with FileLock(str(output_dir / ".dataset_description.json.lock"), timeout=120):
        for stem in ("dataset_description.", "README.", "."):
            remove_stale_temps(output_dir, stem)
    atlases = output_dir / ATLAS_DATASET
    if atlases.is_dir():
        with FileLock(str(atlases / ".atlases.lock"), timeout=120):
            remove_stale_temps(atlases, recursive=True)
