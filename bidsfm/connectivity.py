"""Functional connectivity: Pearson correlation between ROI time series and its Fisher z."""

from __future__ import annotations

import numpy as np


def pearson_fc(timeseries: np.ndarray) -> np.ndarray:
    """Pearson correlation matrix of ROI time series.

    Parameters
    ----------
    timeseries : np.ndarray
        (n_volumes, n_rois). Columns that are all-NaN (low-coverage ROIs) or constant give
        NaN rows and columns; they are never dropped, so the matrix is always n_rois square.

    Returns
    -------
    np.ndarray
        (n_rois, n_rois) float64 with ones on the diagonal of valid ROIs. Equals nilearn's
        ``ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance())``.
    """
    ts = np.asarray(timeseries, dtype=np.float64)
    n_roi = ts.shape[1]
    valid = np.isfinite(ts).all(axis=0)
    centered = ts[:, valid] - ts[:, valid].mean(axis=0)
    norm = np.sqrt((centered**2).sum(axis=0))
    valid_idx = np.flatnonzero(valid)
    nonconst = norm > 0
    fc = np.full((n_roi, n_roi), np.nan)
    z = centered[:, nonconst] / norm[nonconst]
    sub = np.clip(z.T @ z, -1.0, 1.0)
    np.fill_diagonal(sub, 1.0)
    keep = valid_idx[nonconst]
    fc[np.ix_(keep, keep)] = sub
    return fc


def fisher_z(fc: np.ndarray) -> np.ndarray:
    """Fisher r-to-z transform (``arctanh``); the diagonal is set to NaN (infinite otherwise)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.arctanh(np.clip(fc, -1.0, 1.0))
    np.fill_diagonal(z, np.nan)
    z[~np.isfinite(z)] = np.nan
    return z
