"""Error types with one-line, actionable messages.

Every error bidsfm raises on bad input names the file (or label), what is wrong and what to do,
so that a user reading a cluster log can fix it without a traceback.
"""

from __future__ import annotations

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
