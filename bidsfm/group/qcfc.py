"""QC-FC: correlation across participants of each FC edge with mean framewise displacement.

Subject level (the default and what bidsfm writes): each participant's FC is the mean of the
Fisher-z FC of its runs with connectivity (``status`` ``ok``) in the atlas, back-transformed
with tanh, and its motion is the mean of those runs' ``mean_fd``. For each edge, the Pearson
correlation across participants between FC and mean FD is computed over the participants in
which the edge is defined (an ROI may be ``n/a`` in some runs), with a two-sided p-value from
the t distribution with n - 2 degrees of freedom (Power et al. 2015; Ciric et al. 2017).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

METHOD = ("Pearson correlation across participants of each FC edge with mean framewise "
          "displacement; per participant, FC = tanh(mean over runs of arctanh(r)) and FD = mean "
          "over runs of mean_fd (runs with status ok); pairwise-complete over participants; "
          "two-sided p from the t distribution (n - 2 df).")


def edge_correlations(fc: np.ndarray, fd: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Pairwise-complete Pearson r of every column of ``fc`` (P, M) with ``fd`` (P,).

    Returns
    -------
    r, p, n : np.ndarray
        (M,) correlation, two-sided p-value and number of participants used (NaN where fewer
        than 3 participants or no variance).
    """
    from scipy import stats

    fc = np.asarray(fc, dtype=np.float64)
    fd = np.asarray(fd, dtype=np.float64)
    mask = np.isfinite(fc) & np.isfinite(fd)[:, None]
    n = mask.sum(axis=0).astype(np.float64)
    x = np.where(mask, fc, 0.0)
    y = np.where(mask, fd[:, None], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = x.sum(0) / n
        my = y.sum(0) / n
        dx = np.where(mask, x - mx, 0.0)
        dy = np.where(mask, y - my, 0.0)
        r = (dx * dy).sum(0) / np.sqrt((dx ** 2).sum(0) * (dy ** 2).sum(0))
        r = np.clip(r, -1.0, 1.0)
        t = r * np.sqrt((n - 2) / np.maximum(1e-300, 1 - r ** 2))
        p = 2 * stats.t.sf(np.abs(t), n - 2)
    bad = (n < 3) | ~np.isfinite(r)
    r[bad] = np.nan
    p[bad] = np.nan
    return r, p, n


def subject_fc(fc_files: list[tuple[str, Path]], qc: pd.DataFrame, atlas: str
               ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Per-participant mean FC (upper triangles) and mean FD of the runs with status ok.

    Parameters
    ----------
    fc_files : list of (run key, path)
        From :class:`bidsfm.group.collect.Collection` ``fc_files[atlas]``.
    qc : pd.DataFrame
        The group QC table (``participant_id``, ``atlas``, ``status``, ``mean_fd`` and the
        file key is matched through the entity columns).
    atlas : str
        Atlas name.

    Returns
    -------
    ids, rois, fc, fd
        Participants, ROI names, (P, M) upper-triangle FC and (P,) mean FD.
    """
    from ..derivatives import parse_name, read_relmat
    from .collect import entity_columns

    qa = qc[(qc["atlas"].astype(str) == atlas) & (qc["status"].astype(str) == "ok")]
    ent_cols = [c for c in qa.columns if c in ("participant_id", "session_id", "task", "acq",
                                                "ce", "rec", "dir", "run", "echo", "part")]
    fd_of = {}
    for row in qa[ent_cols + ["mean_fd"]].itertuples(index=False):
        key = tuple("" if pd.isna(v) or v == "n/a" else str(v) for v in row[:-1])
        fd_of[key] = pd.to_numeric(row[-1], errors="coerce")
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    fds: dict[str, list[float]] = {}
    rois: list[str] = []
    iu = None
    for _key, path in fc_files:
        ents = entity_columns(parse_name(path.name)[0])
        key = tuple(ents.get(c, "") for c in ent_cols)
        fd = fd_of.get(key)
        if fd is None or not np.isfinite(fd):
            continue  # no QC row with status ok (skipped, failed or stale)
        names, mat = read_relmat(path)
        if not rois:
            rois = names
            iu = np.triu_indices(len(rois), k=1)
        elif names != rois:
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.arctanh(np.clip(mat[iu], -0.999999, 0.999999))
        pid = ents["participant_id"]
        if pid not in sums:
            sums[pid] = np.zeros(len(z))
            counts[pid] = np.zeros(len(z))
            fds[pid] = []
        ok = np.isfinite(z)
        sums[pid][ok] += z[ok]
        counts[pid][ok] += 1
        fds[pid].append(float(fd))
    ids = sorted(sums)
    if not ids:
        return [], rois, np.zeros((0, 0)), np.zeros(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        fc = np.tanh(np.stack([sums[p] / counts[p] for p in ids]))
    fd = np.array([np.mean(fds[p]) for p in ids])
    return ids, rois, fc, fd


def qcfc_table(rois: list[str], r: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """One row per edge (upper triangle): ``roi_a``, ``roi_b``, ``r``, ``p``."""
    iu = np.triu_indices(len(rois), k=1)
    names = np.asarray(rois)
    return pd.DataFrame({"roi_a": names[iu[0]], "roi_b": names[iu[1]], "r": r, "p": p})


def qcfc_summary(r: np.ndarray, p: np.ndarray, n_participants: int, atlas: str,
                 fd: np.ndarray) -> dict[str, Any]:
    """``n_participants``, ``median_abs_r``, ``fraction_p05`` and the method."""
    ok = np.isfinite(r)
    return {"atlas": atlas, "n_participants": int(n_participants), "n_edges": int(ok.sum()),
            "median_abs_r": float(np.median(np.abs(r[ok]))) if ok.any() else None,
            "fraction_p05": float(np.mean(p[ok] < 0.05)) if ok.any() else None,
            "mean_fd_median": float(np.median(fd)) if len(fd) else None,
            "level": "participant (runs averaged)", "method": METHOD}
