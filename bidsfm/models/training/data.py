"""Training data: ROI time series from an npz (ABIDE) or from bidsfm's own outputs.

* :func:`load_timeseries_npz`, :func:`load_timeseries_bidsfm`: (name, (T, R) series) pairs;
* :func:`load_runs_with_tr`: the same with each run's repetition time and the ROI names (the
  time-series objective resamples every run to one TR);
* :func:`pick_subset`: the seeded ``--max-subjects`` subset;
* :func:`shared_abide`, :func:`load_abide`, :func:`load_abide_views`: the ABIDE I CC200 series
  in ``../shared/data/abide`` (phenotypes and one or two preprocessing views), and
  :func:`full_fc`, their Pearson FC.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError, InputDataError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["load_timeseries_npz", "load_timeseries_bidsfm", "load_runs_with_tr", "pick_subset",
           "roi_names_bidsfm", "numbered_rois",
           "shared_abide", "load_abide", "load_abide_views", "full_fc", "SECOND_VIEW"]

#: the second real view of the ABIDE participants used in tangent pretraining
SECOND_VIEW = "cc200_filt_global_timeseries.npz"


def load_timeseries_npz(npz: str | Path, participants_tsv: str | Path,
                        ids: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """Load ROI time series stored one array per participant in an ``.npz`` file.

    Parameters
    ----------
    npz : str or Path
        File such as ``shared/data/abide/cc200_timeseries.npz`` (keys = participant_id, values
        (T, R)).
    participants_tsv : str or Path
        ``participants.tsv`` whose ``participant_id`` column lists (and orders) the subjects.
    ids : sequence of str, optional
        Only these participants (in this order); default: every row of the TSV.

    Returns
    -------
    list of (str, np.ndarray)
        (participant_id, (T, R) float32 series).
    """
    import pandas as pd

    table = pd.read_csv(participants_tsv, sep="\t", dtype={"participant_id": str})
    if "participant_id" not in table.columns:
        raise InputDataError("no participant_id column", path=participants_tsv)
    wanted = list(table["participant_id"]) if ids is None else [str(i) for i in ids]
    out: list[tuple[str, np.ndarray]] = []
    with np.load(npz) as data:
        missing = [pid for pid in wanted if pid not in data.files]
        if missing:
            raise InputDataError(f"{len(missing)} participant(s) have no array, e.g. "
                                 f"{', '.join(missing[:5])}", path=npz,
                                 remedy="Check that the npz and participants.tsv belong together")
        for pid in wanted:
            arr = np.asarray(data[pid], dtype=np.float32)
            if arr.ndim != 2:
                raise InputDataError(f"array of {pid} has shape {arr.shape}, expected (T, R)",
                                     path=npz)
            out.append((pid, arr))
    return out


def load_timeseries_bidsfm(derivatives_dir: str | Path,
                           atlas: str = "CC200") -> list[tuple[str, np.ndarray]]:
    """Load the ROI time series written by bidsfm's participant level.

    Parameters
    ----------
    derivatives_dir : str or Path
        bidsfm output dataset; searched recursively for
        ``*_atlas-<atlas>_stat-mean_timeseries.tsv`` (tab-separated, ROI names as header,
        ``n/a`` for missing ROIs).
    atlas : str
        Atlas label of the ``atlas`` entity.

    Returns
    -------
    list of (str, np.ndarray)
        (file name without the ``_atlas-..._timeseries.tsv`` ending, (T, R) float32 series with
        NaN columns for missing ROIs), sorted by path.
    """
    import pandas as pd

    from ...derivatives import output_glob

    ending = output_glob("timeseries", atlas)[1:]
    files = sorted(Path(derivatives_dir).rglob(f"*{ending}"))
    if not files:
        raise InputDataError(f"no *{ending} files found", path=derivatives_dir,
                             remedy="Run bidsfm's participant level first, or check --atlas")
    out: list[tuple[str, np.ndarray]] = []
    n_cols = None
    for path in files:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        arr = frame.to_numpy(dtype=np.float32)
        if n_cols is None:
            n_cols = arr.shape[1]
        elif arr.shape[1] != n_cols:
            raise InputDataError(f"{arr.shape[1]} ROI columns, other files have {n_cols}",
                                 path=path)
        out.append((path.name[: -len(ending)], arr))
    return out


def load_runs_with_tr(npz: Path | None, participants: Path | None, bidsfm_dir: Path | None,
                       atlas: str, tr: float | None
                       ) -> tuple[list[str], list[np.ndarray], list[float], list[str]]:
    """Runs with their repetition times, for the time-series (JEPA) objective.

    Parameters
    ----------
    npz, participants : Path, optional
        An npz of (T, R) arrays and its participants.tsv (TRs from its ``repetition_time``
        column, else ``tr``).
    bidsfm_dir : Path, optional
        A bidsfm output folder instead (TRs from the time series' JSON sidecars, else ``tr``).
    atlas : str
        Atlas label of the time series (``bidsfm_dir``).
    tr : float, optional
        Repetition time of every run when the data do not say.

    Returns
    -------
    tuple
        (names, (T, R) series, TRs, ROI names).
    """
    import json

    import pandas as pd

    if npz is not None:
        items = load_timeseries_npz(npz, participants)
        table = pd.read_csv(participants, sep="\t", dtype={"participant_id": str})
        if "repetition_time" in table.columns:
            trs = [float(t) for t in table.set_index("participant_id")
                   .loc[[n for n, _ in items], "repetition_time"]]
        elif tr is not None:
            trs = [float(tr)] * len(items)
        else:
            raise InputDataError("no repetition_time column; pass --tr", path=participants)
        return ([n for n, _ in items], [s for _, s in items], trs,
                numbered_rois(items[0][1].shape[1]))
    items = load_timeseries_bidsfm(bidsfm_dir, atlas=atlas)
    from ...derivatives import output_glob

    ending = output_glob("timeseries_json", atlas)[1:]
    names, series, trs = [], [], []
    for name, arr in items:
        hits = sorted(Path(bidsfm_dir).rglob(f"{name}{ending}"))
        meta = json.loads(hits[0].read_text()) if hits else {}
        value = meta.get("RepetitionTime", tr)
        if value is None:
            raise InputDataError(f"{name}: no RepetitionTime in the sidecar; pass --tr",
                                 path=bidsfm_dir)
        names.append(name)
        series.append(arr)
        trs.append(float(value))
    return names, series, trs, roi_names_bidsfm(bidsfm_dir, atlas)


def roi_names_bidsfm(bidsfm_dir: str | Path, atlas: str) -> list[str]:
    """ROI names (header) of the first ``*_atlas-<atlas>_stat-mean_timeseries.tsv`` found.

    Parameters
    ----------
    bidsfm_dir : str or Path
        bidsfm output dataset.
    atlas : str
        Atlas label.

    Returns
    -------
    list of str
    """
    from ...derivatives import output_glob

    first = sorted(Path(bidsfm_dir).rglob(output_glob("timeseries", atlas)))[0]
    return first.read_text().splitlines()[0].split("\t")


def numbered_rois(n_rois: int) -> list[str]:
    """``roi_001``, ``roi_002``...: ROI names of series that come without names (an npz)."""
    return [f"roi_{i + 1:03d}" for i in range(n_rois)]


def pick_subset(n: int, max_subjects: int | None, seed: int) -> np.ndarray | None:
    """Sorted indices of a seeded random subset of ``max_subjects`` of ``n`` items.

    Parameters
    ----------
    n : int
        Number of items.
    max_subjects : int, optional
        Size of the subset (None, or not below ``n``: no subset).
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    np.ndarray or None
        The indices, or None when every item is kept.
    """
    if max_subjects is None or max_subjects >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, max_subjects, replace=False))


def shared_abide(shared_data: str | Path | None = None) -> Path:
    """Folder of the ABIDE data (``shared_data``/abide, env BIDSFM_SHARED_DATA, ../shared).

    Raises
    ------
    ConfigError
        When the folder has no ``cc200_timeseries.npz``.
    """
    from ...utils import shared_data_dir

    path = shared_data_dir(shared_data)
    path = path / "abide" if (path / "abide").is_dir() else path
    if not (path / "cc200_timeseries.npz").is_file():
        raise ConfigError("ABIDE CC200 time series not found", path=path,
                          remedy="Pass the folder holding cc200_timeseries.npz and "
                                 "participants.tsv")
    return path


def load_abide(shared_data: str | Path | None = None, max_subjects: int | None = None
               ) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Phenotypes (participants.tsv rows) and CC200 time series, in the same order.

    Parameters
    ----------
    shared_data : str or Path, optional
        Folder of the shared data (see :func:`shared_abide`).
    max_subjects : int, optional
        Only the first rows of participants.tsv.

    Returns
    -------
    pheno : pandas.DataFrame
        participants.tsv rows (index reset).
    series : list of np.ndarray
        (T, 200) float32 series in ``pheno``'s order.
    """
    import pandas as pd

    folder = shared_abide(shared_data)
    pheno = pd.read_csv(folder / "participants.tsv", sep="\t")
    if max_subjects:
        pheno = pheno.iloc[:max_subjects]
    loaded = load_timeseries_npz(folder / "cc200_timeseries.npz", folder / "participants.tsv",
                                 ids=list(pheno["participant_id"]))
    series = {pid: ts for pid, ts in loaded}
    return pheno.reset_index(drop=True), [series[p] for p in pheno["participant_id"]]


def full_fc(series: list[np.ndarray]) -> np.ndarray:
    """Pearson FC of every series (all time points), NaN rows for all-zero ROIs."""
    from ..brainmass import fc_from_timeseries

    return np.stack([np.asarray(fc_from_timeseries(ts), dtype=np.float32) for ts in series])


def load_abide_views(shared_data: str | Path | None = None, max_subjects: int | None = None
                     ) -> tuple[pd.DataFrame, list[list[np.ndarray | None]]]:
    """ABIDE phenotypes and the CC200 series of both preprocessing views.

    Returns
    -------
    pheno : pandas.DataFrame
        participants.tsv rows.
    views : list
        ``[nofilt_noglobal, filt_global]``; each a list in ``pheno``'s order, None where the
        participant has no series in that view (29 of 833 lack the second view).
    """
    pheno, series = load_abide(shared_data, max_subjects)
    second: list[np.ndarray | None] = [None] * len(pheno)
    path = shared_abide(shared_data) / SECOND_VIEW
    if path.is_file():
        with np.load(path) as npz:
            keys = set(npz.files)
            second = [np.asarray(npz[p], dtype=np.float32) if p in keys else None
                      for p in pheno["participant_id"]]
    return pheno, [series, second]
