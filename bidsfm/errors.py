"""Error types with one-line, actionable messages.

Every error bidsfm raises on bad input names the file (or label), what is wrong and what to do,
so that a user reading a cluster log can fix it without a traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path


class BidsfmError(Exception):
    """An input or configuration problem that stops one run (or the whole job).

    Parameters
    ----------
    problem : str
        What is wrong, in one sentence.
    path : str or Path, optional
        The file or label concerned.
    remedy : str, optional
        What the user should do about it.
    """

    def __init__(self, problem: str, path: str | Path | None = None, remedy: str | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.remedy = remedy
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Return the message as a single line: ``file: problem. remedy``."""
        parts = []
        if self.path:
            parts.append(f"{self.path}:")
        parts.append(self.problem.rstrip("."))
        msg = " ".join(parts) + "."
        if self.remedy:
            msg += " " + self.remedy.rstrip(".") + "."
        return msg.replace("\n", " ")


class InputDataError(BidsfmError):
    """A BOLD run, mask, confounds file or sidecar is missing or invalid."""


class AtlasNotFoundError(BidsfmError):
    """An atlas cannot be resolved offline."""


class ConfigError(BidsfmError):
    """A command-line option, config file or strategy file is invalid."""


class OutputError(ConfigError):
    """The output (or work) folder cannot be written: full, read-only or not permitted."""


#: errno values of a full disk or quota, and of a folder that may not be written
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS}


def output_error(exc: OSError, folder: str | Path, what: str = "output folder") -> OutputError:
    """A one-line error for an ``OSError`` raised while writing into ``folder``.

    Parameters
    ----------
    exc : OSError
        The error (its ``filename`` is named when it has one).
    folder : str or Path
        The folder bidsfm was writing into.
    what : str
        How to call it in the message (``output folder``, ``work folder``).

    Returns
    -------
    OutputError
        Saying what happened (``No space left on device``, ``Read-only file system`` ...) and
        what to do; finished runs are kept, so a rerun resumes.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _NO_SPACE:
        remedy = (f"Free disk space (or quota) where the {what} is, or choose another {what}, "
                  "then rerun (finished runs are kept)")
    elif exc.errno in _NOT_WRITABLE:
        remedy = f"Make the {what} writable for this user, or choose another {what}"
    else:
        remedy = f"Check that the {what} can be written, then rerun"
    return OutputError(f"cannot write to the {what} {folder} ({reason})",
                       path=exc.filename or None, remedy=remedy)


def os_error_line(exc: OSError, output_dir: str | Path, path: str | Path | None = None) -> str:
    """One line for an ``OSError`` met while processing a run (never a traceback).

    A full disk, a read-only file system, or any error on a file under ``output_dir`` is
    reported as the output folder's problem (:func:`output_error`); anything else names the
    file (``exc.filename``, else ``path``) as one that could not be read or written.
    """
    name = str(exc.filename or "")
    inside = bool(name) and Path(name).absolute().is_relative_to(Path(output_dir).absolute())
    if inside or exc.errno in _NO_SPACE or exc.errno == errno.EROFS:
        return output_error(exc, output_dir).one_line()
    reason = exc.strerror or str(exc) or type(exc).__name__
    return BidsfmError(f"cannot read or write this file ({reason})", path=exc.filename or path,
                       remedy="Check that it exists and can be read, then rerun").one_line()
