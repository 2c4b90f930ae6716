"""Confound selection: the regressors and retained volumes of one run for a strategy.

:func:`load_confounds` reads fMRIPrep's confounds TSV (and its JSON, for CompCor) for a
:class:`~bidsfm.denoising.strategies.DenoiseStrategy` and returns a :class:`ConfoundSelection`.

The selection reproduces :func:`nilearn.interfaces.fmriprep.load_confounds_strategy` (same
regressors, same values, same retained volumes) but works on explicit paths, never on the BOLD
file name, and turns every problem with the input into a one-line :class:`InputDataError`.

Rules taken over from nilearn (so that results match it):

* non-steady-state volumes flagged in ``non_steady_state_outlier*`` columns are always removed
  (``dummy_scans="auto"``);
* FD/DVARS censoring is computed on the whole run, ignoring the non-steady-state volumes, and
  the "keep only segments of at least ``scrub`` volumes" rule only runs when at least one
  volume was flagged;
* the first row of a selected column, when missing (``n/a`` in derivative columns), is
  replaced by the second row;
* regressors are demeaned over the retained volumes only;
* CompCor components are read from the confounds JSON (``Mask`` tells combined / WM / CSF
  components apart) in component order, ``n_compcor`` applying per mask.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from bidsfm.denoising.strategies import DenoiseStrategy, is_number
from bidsfm.errors import ConfigError, InputDataError

_SUFFIXES = {
    "basic": (),
    "derivatives": ("derivative1",),
    "power2": ("power2",),
    "full": ("derivative1", "power2", "derivative1_power2"),
}
_MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
_COMPCOR_PARTS = {
    # (column prefix, JSON masks to keep or None for no mask filter)
    "anat_combined": (("a", ("combined",)),),
    "anat_separated": (("a", ("WM",)), ("a", ("CSF",)), ("w", None), ("c", None)),
    "temporal": (("t", None),),
    "temporal_anat_combined": (("t", None), ("a", ("combined",))),
    "temporal_anat_separated": (
        ("t", None), ("a", ("WM",)), ("a", ("CSF",)), ("w", None), ("c", None),
    ),
}
_NSS_PATTERN = "non_steady_state"
_FD = "framewise_displacement"
_DVARS = "std_dvars"


@dataclass
class ConfoundSelection:
    """Regressors and retained volumes for one run.

    Attributes
    ----------
    confounds : pandas.DataFrame or None
        Selected regressors, one row per volume (all volumes, including removed ones),
        first-row ``n/a`` filled and demeaned over the retained volumes. ``None`` when the
        strategy selects no regressor.
    sample_mask : numpy.ndarray
        Sorted int indices of the retained volumes (always an array).
    dummy : numpy.ndarray
        Indices of the non-steady-state (dummy) volumes removed.
    censored : numpy.ndarray
        Indices removed by FD/DVARS censoring (and the short-segment rule), excluding dummies.
    columns_used : list of str
        Names of the selected regressors, in the order of ``confounds``.
    """

    confounds: pd.DataFrame | None
    sample_mask: np.ndarray
    dummy: np.ndarray
    censored: np.ndarray
    columns_used: list[str]


def load_confounds(
    confounds_tsv: str | Path,
    strategy: DenoiseStrategy,
    *,
    n_volumes: int,
    dummy_scans: int | str = "auto",
    confounds_json: str | Path | None = None,
) -> ConfoundSelection:
    """Select regressors and retained volumes from an fMRIPrep confounds file.

    Parameters
    ----------
    confounds_tsv : str or Path
        fMRIPrep ``*_desc-confounds_timeseries.tsv`` (or the older ``_regressors.tsv``).
    strategy : DenoiseStrategy
        What to regress and how to censor.
    n_volumes : int
        Number of volumes of the BOLD run; the TSV must have as many rows.
    dummy_scans : int or "auto", default="auto"
        ``"auto"``: remove the volumes flagged in fMRIPrep's ``non_steady_state_outlier*``
        columns (as nilearn always does); an int N: remove the first N volumes instead
        (0 = none).
    confounds_json : str or Path, optional
        The sidecar JSON (needed for CompCor); defaults to the TSV path with ``.json``.

    Returns
    -------
    ConfoundSelection
        Regressors, retained volumes, removed dummy and censored volumes.

    Raises
    ------
    InputDataError
        Unreadable or empty TSV, wrong row count, missing or non-numeric columns, missing
        CompCor JSON, every volume removed, or too few retained volumes for the regressors.
    ConfigError
        Invalid ``dummy_scans``.
    """
    tsv = Path(confounds_tsv)
    table = _read_tsv(tsv)
    n_volumes = int(n_volumes)
    if len(table) != n_volumes:
        raise InputDataError(
            f"confounds file has {len(table)} rows but the BOLD run has {n_volumes} volumes",
            path=tsv,
            remedy="Use the confounds file fMRIPrep wrote for this exact run (same sub/ses/"
            "task/run entities)")

    dummy = _dummy_volumes(table, dummy_scans, tsv)
    censored_all = _censor(table, strategy, tsv)
    censored = np.setdiff1d(censored_all, dummy)
    sample_mask = np.setdiff1d(np.arange(n_volumes), np.union1d(dummy, censored_all))
    sample_mask = sample_mask.astype(np.int64)
    if sample_mask.size == 0:
        raise InputDataError(
            f"every volume is removed ({dummy.size} non-steady-state, {censored.size} censored "
            f"of {n_volumes}) with strategy '{strategy.name}'",
            path=tsv,
            remedy="Exclude this run, or relax the FD/DVARS thresholds (0 turns censoring off)")

    columns = _select_columns(table, strategy, tsv, confounds_json)
    confounds = None
    if columns:
        confounds = _numeric_block(table, columns, sample_mask, tsv)
        if strategy.demean:
            confounds = confounds - confounds.iloc[sample_mask].mean(axis=0)
        # volumes that are removed anyway may hold n/a: make them harmless
        confounds = confounds.where(np.isfinite(confounds.to_numpy()), 0.0)
        if sample_mask.size < len(columns) + 1:
            raise InputDataError(
                f"only {sample_mask.size} volumes are retained for {len(columns)} regressors "
                f"(strategy '{strategy.name}'; {dummy.size} non-steady-state and "
                f"{censored.size} censored of {n_volumes})",
                path=tsv,
                remedy="Exclude this run, or use a strategy with fewer regressors or less "
                "censoring")
    return ConfoundSelection(
        confounds=confounds,
        sample_mask=sample_mask,
        dummy=dummy.astype(np.int64),
        censored=censored.astype(np.int64),
        columns_used=list(columns),
    )


def _read_tsv(path: Path) -> pd.DataFrame:
    """Read a confounds TSV; any failure is an InputDataError naming the file."""
    remedy = "Point to the desc-confounds_timeseries.tsv that fMRIPrep wrote for this run"
    if not path.is_file():
        raise InputDataError("confounds file not found", path=path, remedy=remedy)
    try:
        table = pd.read_csv(path, sep="\t")
    except pd.errors.EmptyDataError:
        raise InputDataError("confounds file is empty", path=path, remedy=remedy) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputDataError(f"cannot read confounds file as TSV ({msg})", path=path,
                             remedy=remedy) from None
    if table.shape[0] == 0 or table.shape[1] == 0:
        raise InputDataError("confounds file has a header but no rows", path=path,
                             remedy=remedy)
    return table


def _dummy_volumes(table: pd.DataFrame, dummy_scans: int | str, path: Path) -> np.ndarray:
    """Return the indices of the non-steady-state volumes to remove."""
    n = len(table)
    if isinstance(dummy_scans, str) and dummy_scans.strip().isdigit():
        dummy_scans = int(dummy_scans)
    if isinstance(dummy_scans, str) and dummy_scans == "auto":
        cols = [c for c in table.columns if _NSS_PATTERN in str(c)]
        if not cols:
            return np.zeros(0, dtype=np.int64)
        flags = _as_numeric(table, cols, path).to_numpy()
        return np.flatnonzero(np.nan_to_num(flags, nan=0.0).sum(axis=1) != 0).astype(np.int64)
    if isinstance(dummy_scans, bool) or not is_number(dummy_scans) or \
            int(dummy_scans) != dummy_scans or dummy_scans < 0:
        raise ConfigError(f"dummy_scans must be 'auto' or an integer >= 0 (got {dummy_scans!r})",
                          remedy="Give the number of initial volumes to drop, or 'auto'")
    if dummy_scans > n:
        raise InputDataError(
            f"dummy_scans={dummy_scans} is more than the {n} volumes of the run", path=path,
            remedy="Lower the number of dummy scans")
    return np.arange(int(dummy_scans), dtype=np.int64)


def _censor(table: pd.DataFrame, strategy: DenoiseStrategy, path: Path) -> np.ndarray:
    """Return the volumes censored by FD/DVARS thresholds and the short-segment rule."""
    if not strategy.censors:
        return np.zeros(0, dtype=np.int64)
    needed = []
    if strategy.fd_threshold is not None:
        needed.append((_FD, strategy.fd_threshold))
    if strategy.std_dvars_threshold is not None:
        needed.append((_DVARS, strategy.std_dvars_threshold))
    missing = [c for c, _ in needed if c not in table.columns]
    if missing:
        raise InputDataError(
            f"confounds file lacks column(s) {', '.join(missing)} needed for censoring by "
            f"strategy '{strategy.name}'",
            path=path,
            remedy="Use fMRIPrep's desc-confounds_timeseries.tsv for this run, or turn that "
            "censoring off (threshold 0) / use a strategy without censoring (e.g. simple)")
    values = _as_numeric(table, [c for c, _ in needed], path)
    flagged = np.zeros(len(table), dtype=bool)
    for col, threshold in needed:
        with np.errstate(invalid="ignore"):
            flagged |= values[col].to_numpy(dtype=float) > threshold  # NaN (n/a) -> kept
    if strategy.scrub > 0 and flagged.any():
        flagged = _drop_short_segments(flagged, strategy.scrub)
    return np.flatnonzero(flagged).astype(np.int64)


def _drop_short_segments(flagged: np.ndarray, min_length: int) -> np.ndarray:
    """Also flag every run of unflagged volumes shorter than ``min_length``."""
    out = flagged.copy()
    kept = np.concatenate(([0], (~flagged).astype(np.int8), [0]))
    edges = np.diff(kept)
    starts = np.flatnonzero(edges == 1)
    stops = np.flatnonzero(edges == -1)
    for start, stop in zip(starts, stops, strict=True):
        if stop - start < min_length:
            out[start:stop] = True
    return out


def _expand(base: Sequence[str], model: str) -> list[str]:
    """Base columns followed by their expansions, in nilearn's order."""
    return list(base) + [f"{b}_{s}" for b in base for s in _SUFFIXES[model]]


def _select_columns(table: pd.DataFrame, strategy: DenoiseStrategy, path: Path,
                    confounds_json: str | Path | None) -> list[str]:
    """Return the regressor names the strategy needs, checking they exist."""
    available = set(map(str, table.columns))
    groups: list[tuple[str, list[str]]] = []
    if strategy.motion:
        groups.append(("motion", _expand(_MOTION, strategy.motion)))
    if strategy.wm_csf:
        groups.append(("wm_csf", _expand(("csf", "white_matter"), strategy.wm_csf)))
    if strategy.global_signal:
        groups.append(("global_signal", _expand(("global_signal",), strategy.global_signal)))
    if strategy.compcor:
        groups.append(("compcor", _compcor_columns(strategy, path, confounds_json)))
    if strategy.high_pass:
        groups.append(("high_pass", [c for c in table.columns if "cosine" in str(c)]))

    missing: dict[str, list[str]] = {}
    selected: list[str] = []
    for group, cols in groups:
        absent = [c for c in cols if c not in available]
        if absent:
            missing[group] = absent
        selected += cols
    for entry in strategy.extra_columns:
        if entry in available:
            selected.append(entry)
            continue
        pattern = re.compile(entry)
        matches = [c for c in table.columns if pattern.fullmatch(str(c))]
        if matches:
            selected += matches
        else:
            missing.setdefault("extra_columns", []).append(entry)
    if missing:
        flat = [c for cols in missing.values() for c in cols]
        shown = ", ".join(flat[:8]) + (f" (+{len(flat) - 8} more)" if len(flat) > 8 else "")
        raise InputDataError(
            f"confounds file lacks {len(flat)} column(s) needed by strategy "
            f"'{strategy.name}' ({', '.join(missing)}): {shown}",
            path=path, remedy=_missing_remedy(missing))
    return list(dict.fromkeys(selected))  # de-duplicate, keep order


def _missing_remedy(missing: dict[str, list[str]]) -> str:
    hints = ["Use the unmodified desc-confounds_timeseries.tsv that fMRIPrep wrote for this run"]
    if "compcor" in missing:
        hints.append(", or a strategy without CompCor (e.g. simple)")
    elif set(missing) & {"motion", "wm_csf", "global_signal"}:
        hints.append(", or a custom strategy JSON with a smaller expansion (e.g. motion "
                     "\"basic\") or without these regressors")
    if "extra_columns" in missing:
        hints.append(", and check the extra_columns of the strategy file")
    return "".join(hints)


def _compcor_columns(strategy: DenoiseStrategy, path: Path,
                     confounds_json: str | Path | None) -> list[str]:
    """CompCor component names from the confounds JSON, as nilearn selects them."""
    json_path = Path(confounds_json) if confounds_json is not None else path.with_suffix(".json")
    remedy = (f"Put fMRIPrep's confounds JSON ({json_path.name}) beside the TSV, or use a "
              "strategy without CompCor (e.g. simple)")
    if not json_path.is_file():
        raise InputDataError(
            f"CompCor strategy '{strategy.name}' needs the confounds JSON sidecar, which is "
            f"missing (for {path.name})", path=json_path, remedy=remedy)
    try:
        meta = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputDataError(f"cannot read confounds JSON ({exc})", path=json_path,
                             remedy=remedy) from None
    if not isinstance(meta, dict):
        raise InputDataError("confounds JSON is not a JSON object", path=json_path,
                             remedy=remedy)
    assert strategy.compcor is not None
    n_keep = None if strategy.n_compcor == "all" else int(strategy.n_compcor)
    selected: list[str] = []
    for prefix, masks in _COMPCOR_PARTS[strategy.compcor]:
        pattern = re.compile(rf"{prefix}_comp_cor_(\d+)")
        names = sorted((k for k in meta if pattern.fullmatch(k)),
                       key=lambda k: int(k.rsplit("_", 1)[1]))
        if masks is not None:
            names = [k for k in names
                     if isinstance(meta[k], dict) and meta[k].get("Mask") in masks]
        selected += names[:n_keep]
    if not selected:
        raise InputDataError(
            f"confounds JSON lists no '{strategy.compcor}' CompCor components", path=json_path,
            remedy="Use fMRIPrep >= 1.4 outputs, another compcor type, or a strategy without "
            "CompCor (e.g. simple)")
    return selected


def _as_numeric(table: pd.DataFrame, columns: Iterable[str], path: Path) -> pd.DataFrame:
    """Return ``table[columns]`` as float64; a non-numeric entry is an InputDataError."""
    out = {}
    for col in columns:
        series = table[col]
        if pd.api.types.is_bool_dtype(series.dtype) or pd.api.types.is_numeric_dtype(
                series.dtype):
            out[col] = series.astype("float64")
            continue
        converted = pd.to_numeric(series, errors="coerce")
        bad = converted.isna() & series.notna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputDataError(
                f"column '{col}' holds a non-numeric value {series.iloc[row]!r} at volume {row}",
                path=path,
                remedy="Use the confounds TSV exactly as fMRIPrep wrote it (numbers or n/a)")
        out[col] = converted.astype("float64")
    return pd.DataFrame(out, index=table.index)


def _numeric_block(table: pd.DataFrame, columns: list[str], sample_mask: np.ndarray,
                   path: Path) -> pd.DataFrame:
    """Selected columns as float64, first-row n/a filled from the second row, checked."""
    block = _as_numeric(table, columns, path).reset_index(drop=True)
    values = block.to_numpy(copy=True)
    if values.shape[0] > 1:
        first_nan = np.isnan(values[0])
        values[0, first_nan] = values[1, first_nan]
    bad = ~np.isfinite(values[sample_mask])
    if bad.any():
        row_i, col_i = np.argwhere(bad)[0]
        count = int(bad.any(axis=0).sum())
        raise InputDataError(
            f"column '{columns[col_i]}' is n/a or infinite at retained volume "
            f"{int(sample_mask[row_i])} ({count} selected column(s) affected)",
            path=path,
            remedy="Use the confounds TSV exactly as fMRIPrep wrote it (only derivative columns "
            "may be n/a, on the first row), or drop the column from the strategy")
    return pd.DataFrame(values, columns=columns)
