"""fMRIPrep-like confounds of a simulated run: columns, CompCor metadata and the TSV text.

Column names, expansions and their order follow fMRIPrep 24 (``desc-confounds_timeseries``):
tissue signals, tCompCor, DVARS, framewise displacement, RMSD, a/c/w/t CompCor with their
JSON metadata, cosine basis, non-steady-state and motion outliers, 24 motion parameters.
Reductions of the (T x V) in-mask series go blockwise, so a full-size run stays in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .anatomy import Anatomy
from .grid import world_coords
from .simulate import RunResult

__all__ = ["cosine_basis", "format_tsv", "run_confounds"]

_CHUNK = 16384  # voxels per block when reducing the (T x V) in-mask time series
_ORDER_A = ("", "_derivative1", "_power2", "_derivative1_power2")
_ORDER_B = ("", "_derivative1", "_derivative1_power2", "_power2")


def cosine_basis(n_volumes: int, tr: float, cutoff: float = 128.0) -> np.ndarray:
    """Discrete cosine high-pass basis as fMRIPrep writes it (``cosine00``...; no constant).

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).
    cutoff : float
        Period cut-off (s).

    Returns
    -------
    numpy.ndarray
        (n_volumes, K) with ``K = floor(2 * n_volumes * tr / cutoff)``.
    """
    order = int(np.floor(2 * n_volumes * tr / cutoff))
    t = np.arange(n_volumes)
    cols = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * (t + 0.5) * k)
            for k in range(1, order + 1)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


def _chunks(n: int) -> Iterator[slice]:
    for a in range(0, n, _CHUNK):
        yield slice(a, min(a + _CHUNK, n))


def _masked_means(ts: np.ndarray, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Mean time course of ``ts`` (T x V) over each boolean voxel mask, in float64 blocks."""
    sums = [np.zeros(ts.shape[0]) for _ in masks]
    for sl in _chunks(ts.shape[1]):
        block = ts[:, sl].astype(np.float64)
        for acc, m in zip(sums, masks, strict=True):
            if m[sl].any():
                acc += block @ m[sl].astype(np.float64)
    return [acc / max(int(m.sum()), 1) for acc, m in zip(sums, masks, strict=True)]


def _compcor(ts: np.ndarray, voxels: np.ndarray, n_skip: int, tr: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """CompCor like nipype/fMRIPrep: cosine-filter, variance-normalise, SVD.

    Parameters
    ----------
    ts : numpy.ndarray
        (T, V) in-mask time series.
    voxels : numpy.ndarray
        Boolean (V,) selection of the noise-ROI voxels.
    n_skip : int
        Leading non-steady-state volumes left out (their rows are 0 in the output).
    tr : float
        Repetition time (s), for the 128 s cosine pre-filter.

    Returns
    -------
    comps : numpy.ndarray
        (T, K) orthonormal components, by decreasing singular value.
    singular_values : numpy.ndarray
        (K,) singular values.
    """
    n = ts.shape[0]
    q, _ = np.linalg.qr(np.column_stack([np.ones(n - n_skip), cosine_basis(n - n_skip, tr)]))
    idx = np.flatnonzero(voxels)
    gram = np.zeros((n - n_skip, n - n_skip))
    # left singular vectors from the (T x T) Gram matrix: fast when V >> T, and blockwise
    for a in range(0, idx.size, _CHUNK):
        m = ts[n_skip:, idx[a:a + _CHUNK]].astype(np.float64)
        m -= q @ (q.T @ m)
        sd = m.std(0)
        sd[sd == 0] = 1.0
        m /= sd
        gram += m @ m.T
    w, u = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0.0, None), u[:, order]
    rank = int((w > w[0] * 1e-10).sum()) if w[0] > 0 else 0
    u, s = u[:, :rank], np.sqrt(w[:rank])
    u *= np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(rank)])  # deterministic signs
    comps = np.zeros((n, rank))
    comps[n_skip:] = u
    return comps, s


def _detrended_variance(ts: np.ndarray, n_skip: int) -> np.ndarray:
    """Per-voxel variance after removing mean and linear trend (steady-state volumes)."""
    n = ts.shape[0] - n_skip
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), np.linspace(-1.0, 1.0, n)]))
    var = np.empty(ts.shape[1])
    for sl in _chunks(ts.shape[1]):
        m = ts[n_skip:, sl].astype(np.float64)
        var[sl] = ((m**2).sum(0) - ((q.T @ m) ** 2).sum(0)) / n
    return var


def _dvars(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-standardised and standardised DVARS, roughly as nipype's ComputeDVARS.

    Intensities are scaled so that the median voxel mean is 1000; the standardised DVARS divides
    by the expected SD of the temporal difference (robust IQR-based SD and AR(1) per voxel).
    """
    n = ts.shape[0]
    mfunc = np.zeros(ts.shape[1])
    for sl in _chunks(ts.shape[1]):
        mfunc[sl] = ts[:, sl].mean(0, dtype=np.float64)
    keep = mfunc > 0
    scale = 1000.0 / float(np.median(mfunc[keep]))
    sq_diff = np.zeros(n - 1)
    sd_sum = 0.0
    for sl in _chunks(ts.shape[1]):
        f = ts[:, sl][:, keep[sl]].T.astype(np.float64) * scale  # (V, T)
        q75, q25 = np.percentile(f, [75, 25], axis=1)
        f -= f.mean(1, keepdims=True)
        num = (f[:, :-1] * f[:, 1:]).sum(1)
        den = (f[:, :-1] ** 2).sum(1)
        ar1 = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        sd_sum += float((np.sqrt(np.clip(2.0 * (1.0 - ar1), 0, None)) * (q75 - q25) / 1.349)
                        .sum())
        sq_diff += (np.diff(f, axis=1) ** 2).sum(0)
    n_vox = max(int(keep.sum()), 1)
    dvars = np.concatenate([[np.nan], np.sqrt(sq_diff / n_vox)])
    return dvars, dvars / (sd_sum / n_vox)


def _add_expansions(cols: dict[str, np.ndarray], name: str, x: np.ndarray,
                    order: Sequence[str]) -> None:
    """Add ``name`` and its derivative/power expansions to ``cols`` in ``order``."""
    deriv = np.concatenate([[np.nan], np.diff(x)])
    forms = {"": x, "_derivative1": deriv, "_power2": x**2, "_derivative1_power2": deriv**2}
    for suffix in order:
        cols[name + suffix] = forms[suffix]


def _tcompcor_mask(ts: np.ndarray, n_skip: int) -> np.ndarray:
    """tCompCor mask: top 2% variance (after removing mean + linear trend) in the brain mask."""
    var = _detrended_variance(ts, n_skip)
    n_top = max(int(round(0.02 * var.size)), 10)
    tmask = np.zeros(var.size, bool)
    tmask[np.argsort(var, kind="stable")[-n_top:]] = True
    return tmask


def _add_compcor(cols: dict[str, np.ndarray], meta: dict[str, Any], ts: np.ndarray,
                 noise_rois: Sequence[tuple], n_skip: int, tr: float) -> None:
    """Add the retained CompCor components to ``cols`` and every component's metadata."""
    dropped = 0
    for prefix, method, mask_name, vox, min_k in noise_rois:
        comps, s = _compcor(ts, vox, n_skip, tr)
        ve = s**2 / (s**2).sum()
        cve = np.cumsum(ve)
        k = max(int(np.searchsorted(cve, 0.5)) + 1, min_k)
        k = min(k, comps.shape[1])
        for j in range(comps.shape[1]):
            entry: dict[str, Any] = {"Method": method}
            if mask_name is not None:
                entry["Mask"] = mask_name
            entry.update({"SingularValue": float(s[j]), "VarianceExplained": float(ve[j]),
                          "CumulativeVarianceExplained": float(cve[j]), "Retained": j < k})
            if j < k:
                name = f"{prefix}_{j:02d}"
                cols[name] = comps[:, j]
            else:
                name = f"dropped_{dropped}"
                dropped += 1
            meta[name] = entry


def _add_onehots(cols: dict[str, np.ndarray], prefix: str, times: Sequence[int], n: int
                 ) -> None:
    """Add one spike regressor (``<prefix>00``, ...) per volume index in ``times``."""
    for j, t in enumerate(times):
        onehot = np.zeros(n)
        onehot[t] = 1.0
        cols[f"{prefix}{j:02d}"] = onehot


def run_confounds(res: RunResult, anat: Anatomy, tr: float, cut_z: float | None
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Build fMRIPrep-like confound columns and the JSON metadata of a simulated run.

    Parameters
    ----------
    res : RunResult
        In-mask series and motion of the run.
    anat : Anatomy
        Tissue classes on the run's grid.
    tr : float
        Repetition time (s).
    cut_z : float or None
        World z (mm) above which the run's field of view is cut, or None.

    Returns
    -------
    columns : dict of str to numpy.ndarray
        Confound columns in fMRIPrep's order (NaN where fMRIPrep writes ``n/a``).
    metadata : dict
        The confounds JSON (CompCor components, retained and dropped).
    """
    coords = world_coords(anat.shape, anat.affine)
    keep = np.ones(anat.shape, bool) if cut_z is None else coords[..., 2] <= cut_z
    in_mask = (anat.mask & keep).ravel()
    sel = {k: getattr(anat, k).ravel()[in_mask] for k in ("gm", "wm", "csf")}
    ts, n = res.mask_ts, res.n_volumes
    cols: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    everything = np.ones(ts.shape[1], dtype=bool)
    glob, csf, wm, csf_wm = _masked_means(
        ts, [everything, sel["csf"], sel["wm"], sel["csf"] | sel["wm"]])
    _add_expansions(cols, "global_signal", glob, _ORDER_A)
    _add_expansions(cols, "csf", csf, _ORDER_B)
    _add_expansions(cols, "white_matter", wm, _ORDER_B)
    _add_expansions(cols, "csf_wm", csf_wm, _ORDER_A)
    tmask = _tcompcor_mask(ts, res.nss)
    (cols["tcompcor"],) = _masked_means(ts, [tmask])
    dvars, std_dvars = _dvars(ts)
    cols["std_dvars"] = std_dvars
    cols["dvars"] = dvars
    cols["framewise_displacement"] = res.fd
    cols["rmsd"] = res.rmsd
    _add_compcor(cols, meta, ts, (
        ("t_comp_cor", "tCompCor", None, tmask, 5),
        ("c_comp_cor", "aCompCor", "CSF", sel["csf"], 5),
        ("w_comp_cor", "aCompCor", "WM", sel["wm"], 5),
        ("a_comp_cor", "aCompCor", "combined", sel["csf"] | sel["wm"], 10),
    ), res.nss, tr)
    cos = cosine_basis(n, tr)
    for j in range(cos.shape[1]):
        cols[f"cosine{j:02d}"] = cos[:, j]
    _add_onehots(cols, "non_steady_state_outlier", range(res.nss), n)
    for j, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        _add_expansions(cols, name, res.params[:, j], _ORDER_B)
    outliers = np.flatnonzero((np.nan_to_num(res.fd) > 0.5) | (np.nan_to_num(std_dvars) > 1.5))
    _add_onehots(cols, "motion_outlier", outliers, n)
    return cols, meta


def format_tsv(cols: dict[str, np.ndarray]) -> str:
    """Tab-separated table with ``n/a`` for missing values (one-hot columns print as 0/1).

    Parameters
    ----------
    cols : dict of str to numpy.ndarray
        Columns of equal length, in order.

    Returns
    -------
    str
        Header and rows (``%.10g``), newline-terminated.
    """
    names = list(cols)
    data = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in names])
    fmt = "\t".join(["%.10g"] * len(names))
    lines = ["\t".join(names)] + [fmt % tuple(row) for row in data]
    return ("\n".join(lines) + "\n").replace("nan", "n/a")
