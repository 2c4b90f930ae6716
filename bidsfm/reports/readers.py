"""Tolerant readers for the report: a file that is absent or unreadable becomes a message.

Reports are written from whatever is on disk; a missing or corrupt file must show up in the
report as such, never abort it. Each reader returns ``(value, problem)`` where exactly one of
the two is ``None``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Result = tuple[Any, "str | None"]


def _problem(path: Path, exc: Exception) -> str:
    lines = str(exc).splitlines()
    text = getattr(exc, "strerror", None) or (lines[0] if lines else "")
    return f"{path.name}: cannot be read ({type(exc).__name__}{': ' + text if text else ''})"


def read_tsv(path: Path, **kwargs: Any) -> Result:
    """Read a BIDS TSV (``n/a`` = missing) into a DataFrame.

    Returns
    -------
    (DataFrame or None, str or None)
        The table, or a one-line problem naming the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None, f"{path.name}: not found"
    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                            **kwargs)
    except Exception as exc:  # pandas raises many types for malformed files
        return None, _problem(path, exc)
    return frame, None


def read_json(path: Path) -> Result:
    """Read a JSON object; ``(dict, None)`` or ``(None, problem)``."""
    path = Path(path)
    if not path.is_file():
        return None, f"{path.name}: not found"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, _problem(path, exc)
    if not isinstance(data, dict):
        return None, f"{path.name}: not a JSON object"
    return data, None


def entities(name: str) -> dict[str, str]:
    """BIDS entities (``key-value`` parts) of a file name, in order."""
    stem = name.split(".")[0]
    out: dict[str, str] = {}
    for part in stem.split("_"):
        key, sep, value = part.partition("-")
        if sep and key and value:
            out[key] = value
    return out
