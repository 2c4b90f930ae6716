"""``pretrain_log.tsv``: one row per epoch, appended as soon as the epoch ends.

Written by the BrainMass and JEPA objectives (the tangent objective rewrites its whole log
atomically after every epoch, since its rows carry the embedding-collapse check).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: file name of the per-epoch log in an output folder of ``bidsfm-pretrain``
LOG_FILE = "pretrain_log.tsv"


def start_log(path: str | Path | None, columns: Sequence[str]) -> Path | None:
    """Create (or truncate) the log with its header line; ``None`` passes through.

    Parameters
    ----------
    path : str or Path, optional
        Log file (its folder is created).
    columns : sequence of str
        Column names.

    Returns
    -------
    Path or None
    """
    if path is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(columns) + "\n")
    return path


def append_row(path: Path | None, row: dict[str, Any], columns: Sequence[str]) -> None:
    """Append one epoch's row (``epoch`` as an integer, the others with 6 significant digits).

    Parameters
    ----------
    path : Path, optional
        Log started by :func:`start_log` (nothing is written when None).
    row : dict
        Values by column.
    columns : sequence of str
        Column order.
    """
    if path is None:
        return
    with open(path, "a") as fh:
        fh.write("\t".join(str(row[c]) if c == "epoch" else f"{row[c]:.6g}"
                           for c in columns) + "\n")
