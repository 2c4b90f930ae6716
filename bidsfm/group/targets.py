"""Targets from participants.tsv: parse ``--target``, detect the task type, align labels.

Task type rules (overridable with ``COLUMN:binary|multiclass|continuous``): a column whose
non-missing values are not all numbers is a classification target, binary with two distinct
values and multi-class with more; a numeric column with exactly two distinct values (e.g. 1/2
codes) is binary; any other numeric column is continuous.

For binary targets the *positive* label (whose probability is reported) is the value that is
not a control-like name (``TC``, ``HC``, ``CN``, ``control``, ``healthy``, ``0``, ``no`` ...);
when neither or both are, the less frequent value (ties: the second in sorted order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..evaluation import BINARY, CONTINUOUS, MULTICLASS, TASK_TYPES

__all__ = ["BINARY", "MULTICLASS", "CONTINUOUS", "TASK_TYPES", "TargetSpec", "Target",
           "parse_target", "read_participants", "detect_task_type", "class_labels",
           "build_target"]
_CONTROL_NAMES = {"tc", "hc", "cn", "nc", "td", "control", "controls", "healthy", "typical",
                  "0", "0.0", "no", "false", "n", "neg", "negative"}


@dataclass
class TargetSpec:
    """A parsed ``--target`` value."""

    column: str
    task_type: str | None = None  # None = detect


def parse_target(value: str) -> TargetSpec:
    """Parse ``COLUMN`` or ``COLUMN:TYPE``.

    Raises
    ------
    ConfigError
        On an unknown type.
    """
    column, sep, kind = value.rpartition(":")
    if not sep or kind not in TASK_TYPES:
        if sep and kind and column:
            raise ConfigError(f"--target {value!r}: unknown task type {kind!r}",
                              remedy=f"Use COLUMN or COLUMN:{'|'.join(TASK_TYPES)}")
        return TargetSpec(value)
    return TargetSpec(column, kind)


def read_participants(path: str | Path) -> pd.DataFrame:
    """participants.tsv as strings (``n/a`` and empty = missing), ``participant_id`` = ``sub-X``.

    ``participant_id`` may be written with or without ``sub-``. A participant listed twice
    (``01`` and ``sub-01`` count as the same) is accepted only when the rows agree: identical
    rows are collapsed into one with a warning; rows that disagree in any column are an error
    naming the participant and the column, because choosing one of them would silently change
    labels.

    Raises
    ------
    ConfigError
        If the file cannot be read, has no ``participant_id`` column, has a row with an empty
        ``participant_id``, or lists a participant twice with different values.
    """
    import logging

    path = Path(path)
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                            keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"cannot read participants table ({exc})", path=path,
                          remedy="Give a tab-separated participants.tsv with "
                                 "--participants-tsv") from None
    if "participant_id" not in frame:
        raise ConfigError("participants table has no participant_id column", path=path)
    raw = frame["participant_id"]
    ids = raw.fillna("").astype(str).str.strip()
    empty = np.flatnonzero((ids == "").to_numpy() | (ids == "sub-").to_numpy())
    if len(empty):
        rows = ", ".join(str(i + 1) for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
        raise ConfigError(f"empty participant_id in {len(empty)} row(s) (data row {rows}, "
                          "counted after the header)", path=path,
                          remedy="Give every row a participant_id (sub-<label>) or delete it")
    frame["participant_id"] = [i if i.startswith("sub-") else f"sub-{i}" for i in ids]
    dup = frame["participant_id"].duplicated(keep=False)
    if dup.any():
        # compare duplicate rows with missing values equal to each other
        block = frame[dup].fillna("n/a")
        for pid, rows in block.groupby("participant_id", sort=True):
            for column in rows.columns:
                values = rows[column].astype(str).str.strip().unique()
                if len(values) > 1:
                    shown = " vs ".join(repr(v) for v in values[:3])
                    raise ConfigError(
                        f"participant {pid} has {len(rows)} rows that disagree (column "
                        f"{column}: {shown})", path=path,
                        remedy="Keep one row per participant")
        names = sorted(set(frame.loc[dup, "participant_id"]))
        logging.getLogger("bidsfm.group").warning(
            "%s: %d participant(s) listed more than once with identical rows, each used once: "
            "%s", path, len(names), ", ".join(names[:10]) + (" ..." if len(names) > 10 else ""))
    return frame.drop_duplicates("participant_id").set_index("participant_id")


def _numeric(values: pd.Series) -> pd.Series | None:
    num = pd.to_numeric(values, errors="coerce")
    return num if num.notna().all() else None


def detect_task_type(values: pd.Series) -> str:
    """Task type of a column's non-missing values (see the module docstring)."""
    values = values.dropna()
    num = _numeric(values)
    n_unique = values.nunique() if num is None else num.nunique()
    if num is None:
        return BINARY if n_unique == 2 else MULTICLASS
    return BINARY if n_unique == 2 else CONTINUOUS


def class_labels(values: pd.Series, task_type: str) -> list[str]:
    """Class labels in head order: ``[negative, positive]`` for binary, sorted otherwise."""
    labels = sorted(values.dropna().astype(str).unique(), key=_sort_key)
    if task_type != BINARY or len(labels) != 2:
        return labels
    control = [lab.lower() in _CONTROL_NAMES for lab in labels]
    if control[0] != control[1]:
        return labels if control[0] else labels[::-1]
    counts = values.astype(str).value_counts()
    if counts[labels[0]] < counts[labels[1]]:
        return labels[::-1]
    return labels


def _sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


@dataclass
class Target:
    """Labels of one target aligned with the subject embeddings."""

    column: str
    task_type: str
    ids: list[str]
    rows: np.ndarray  # indices into the subject embedding table
    y: np.ndarray  # class index (classification) or float value
    labels: list[str]
    groups: np.ndarray | None
    n_missing: int


def build_target(spec: TargetSpec, table: pd.DataFrame, subject_ids: list[str],
                 group_column: str | None = None, table_path: str | Path = "participants.tsv"
                 ) -> Target:
    """Align a participants.tsv column with the participants that have embeddings.

    Raises
    ------
    ConfigError
        If the column is missing, has too few labelled participants, or does not fit the
        requested task type.
    """
    if spec.column not in table:
        raise ConfigError(f"--target {spec.column}: no such column (columns: "
                          f"{', '.join(table.columns)})", path=table_path)
    if group_column and group_column not in table:
        raise ConfigError(f"--group-column {group_column}: no such column", path=table_path)
    present = [i for i, p in enumerate(subject_ids) if p in table.index]
    values = table[spec.column].reindex([subject_ids[i] for i in present])
    ok = np.array(values.notna().to_numpy(), dtype=bool)
    if group_column:
        ok &= table[group_column].reindex(values.index).notna().to_numpy()
    rows = np.asarray(present, dtype=int)[ok]
    values = values[ok]
    task_type = spec.task_type or detect_task_type(values)
    if task_type == CONTINUOUS:
        num = _numeric(values)
        if num is None:
            raise ConfigError(f"--target {spec.column}:continuous: the column holds values that "
                              "are not numbers", path=table_path)
        y = num.to_numpy(dtype=np.float64)
        labels: list[str] = []
        if len(y) < 5:
            raise ConfigError(f"--target {spec.column}: only {len(y)} participant(s) with a "
                              "value and an embedding; at least 5 are needed", path=table_path)
    else:
        labels = class_labels(values, task_type)
        if task_type == BINARY and len(labels) != 2:
            raise ConfigError(f"--target {spec.column}:binary: {len(labels)} distinct values "
                              f"({', '.join(labels[:5])})", path=table_path)
        if len(labels) < 2:
            raise ConfigError(f"--target {spec.column}: a single class ({labels}); nothing to "
                              "predict", path=table_path)
        index = {lab: k for k, lab in enumerate(labels)}
        y = np.array([index[v] for v in values.astype(str)], dtype=int)
        counts = np.bincount(y, minlength=len(labels))
        if counts.min() < 2:
            small = labels[int(np.argmin(counts))]
            raise ConfigError(f"--target {spec.column}: class {small!r} has {counts.min()} "
                              "participant(s) with an embedding; at least 2 per class are "
                              "needed (5 or more for a usable estimate)", path=table_path)
    groups = None
    if group_column:
        groups = table[group_column].reindex(values.index).astype(str).to_numpy()
    n_missing = len(subject_ids) - len(rows)
    return Target(spec.column, task_type, list(values.index), rows, y, labels, groups,
                  n_missing)
