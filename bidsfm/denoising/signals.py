"""Cleaning ROI time series: detrend, band-pass, confound regression, censoring, z-scoring.

:func:`clean_signals` is the one entry point of cleaning (as ``nilearn.signal.clean`` is
nilearn's). It applies to region signals what ``NiftiLabelsMasker`` applies (the same steps as
:func:`nilearn.signal.clean`, re-implemented with numpy/scipy in
:mod:`bidsfm.denoising.steps` so that processing a run never imports nilearn), with three
additions:

* all-NaN ROI columns (low-coverage ROIs, written as ``n/a``) are set aside and come back
  all-NaN, without touching the other columns;
* bad parameters (a band edge at or above Nyquist, ...) are one-line :class:`ConfigError`;
* every censored volume is interpolated before filtering. nilearn 0.14's own interpolation
  indexes the volumes to fill with ``~sample_mask`` on an integer index array (i.e. ``-i-1``),
  so it only fills censored volume ``j`` when volume ``n-1-j`` is retained, and it can shift
  the output when volumes are removed at both ends of the run. bidsfm fills every censored
  volume with the same cubic spline, on the span between the first and the last retained
  volume; where nilearn's indexing happens to be right the result is the same as nilearn's.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from bidsfm.errors import ConfigError, InputDataError

STANDARDIZE_OPTIONS = ("zscore_sample", "psc")


def clean_signals(
    signals: np.ndarray,
    *,
    t_r: float,
    confounds: pd.DataFrame | np.ndarray | None = None,
    sample_mask: np.ndarray | None = None,
    detrend: bool = True,
    standardize: str | bool | None = "zscore_sample",
    low_pass: float | None = None,
    high_pass: float | None = None,
    roi_names: list[str] | None = None,
) -> np.ndarray:
    """Denoise ROI time series as ``NiftiLabelsMasker`` cleans its region signals.

    Order (nilearn's, see :mod:`bidsfm.denoising.steps`): interpolate censored volumes (only when
    filtering), detrend signals and confounds, Butterworth band-pass both, drop censored
    volumes, regress out the (z-scored) confounds, standardize.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_volumes, n_rois)
        Mean ROI signals of every volume. Columns that are entirely NaN are kept as NaN.
    t_r : float
        Repetition time in seconds.
    confounds : pandas.DataFrame or numpy.ndarray, optional
        Regressors with one row per volume (all volumes, as from
        :func:`bidsfm.denoising.load_confounds`).
    sample_mask : numpy.ndarray, optional
        Sorted int indices (or a boolean mask) of the volumes to keep. ``None`` keeps all.
    detrend : bool, default=True
        Remove linear trends (from signals and confounds).
    standardize : {"zscore_sample", "psc", True, False, None}, default="zscore_sample"
        Standardization of the output (``True`` = ``"zscore_sample"``, ``False``/``None`` =
        none).
    low_pass, high_pass : float, optional
        Butterworth band edges in Hz. Must lie strictly between 0 and the Nyquist frequency
        ``0.5 / t_r``, with ``high_pass < low_pass``.
    roi_names : list of str, optional
        Names of the columns, used to name an ROI in error messages.

    Returns
    -------
    numpy.ndarray, shape (len(sample_mask), n_rois), float64
        Cleaned signals of the retained volumes.

    Raises
    ------
    ConfigError
        Invalid filter band or ``standardize`` value.
    InputDataError
        Invalid TR, confounds or sample mask not matching the signals, partially non-finite
        ROI columns, or too few volumes.
    """
    x = np.array(signals, dtype=np.float64)  # always a copy
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise ValueError(f"signals must be 2D (n_volumes, n_rois), got shape {x.shape}")
    n_vol, n_roi = x.shape
    t_r = _check_tr(t_r)
    _check_band(t_r, low_pass, high_pass)
    std = _standardize_option(standardize)
    conf = _confounds_array(confounds, n_vol)
    mask = _sample_mask(sample_mask, n_vol)

    empty = np.isnan(x).all(axis=0)
    good = np.isfinite(x).all(axis=0)
    partial = ~(empty | good)
    if partial.any():
        cols = np.flatnonzero(partial)
        first = int(cols[0])
        name = (f"ROI {roi_names[first]!r}, " if roi_names is not None
                and len(roi_names) == n_roi else "")
        bad = int((~np.isfinite(x[:, first])).sum())
        raise InputDataError(
            f"{cols.size} ROI signal column(s) mix finite and non-finite values (first: "
            f"{name}column {first + 1} of {n_roi}, non-finite in {bad} of {n_vol} volumes)",
            remedy="Mark a low-coverage ROI as NaN for every volume, or check the BOLD data "
            "for NaN/inf voxels")
    out = np.full((mask.size, n_roi), np.nan)
    if not good.any():
        return out
    if mask.size < 3:
        raise InputDataError(
            f"only {mask.size} volume(s) retained, too few to clean",
            remedy="Exclude this run or relax censoring")

    y = x[:, good]
    if low_pass is not None or high_pass is not None:
        from .steps import butterworth_sos, min_samples_for_filter

        span = int(mask[-1] - mask[0] + 1)
        need = min_samples_for_filter(butterworth_sos(t_r, low_pass, high_pass))
        if span < need:
            raise InputDataError(
                f"{span} volumes are too few for Butterworth filtering "
                f"(low_pass={low_pass}, high_pass={high_pass}; at least {need} needed)",
                remedy="Disable the band-pass filter for short runs, or exclude the run")
    from .steps import clean

    cleaned = clean(y, t_r=t_r, confounds=conf,
                    sample_mask=None if mask.size == n_vol else mask, detrend=detrend,
                    standardize=std, low_pass=low_pass, high_pass=high_pass)
    out[:, good] = np.asarray(cleaned, dtype=np.float64)
    return out


def dvars(signals: np.ndarray) -> np.ndarray:
    """Per-volume RMS of the temporal difference across ROIs.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_volumes, n_rois)
        ROI time series; non-finite entries (e.g. all-NaN ROIs) are ignored.

    Returns
    -------
    numpy.ndarray, shape (n_volumes,)
        ``sqrt(mean_r (x[t, r] - x[t-1, r])**2)`` over the ROIs where both values are
        finite; NaN for the first volume and where no ROI is finite.
    """
    x = np.asarray(signals, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    out = np.full(x.shape[0], np.nan)
    if x.shape[0] < 2:
        return out
    diff = np.diff(x, axis=0)
    finite = np.isfinite(diff)
    count = finite.sum(axis=1)
    sumsq = np.where(finite, diff, 0.0) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.where(count > 0, np.sqrt(sumsq.sum(axis=1) / count), np.nan)
    return out


def _check_tr(t_r: float) -> float:
    try:
        value = float(t_r)
    except (TypeError, ValueError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InputDataError(
            f"invalid repetition time {t_r!r} (must be a positive number of seconds)",
            remedy="Check RepetitionTime in the BOLD JSON sidecar")
    return value


def _check_band(t_r: float, low_pass: float | None, high_pass: float | None) -> None:
    nyquist = 0.5 / t_r
    for name, value in (("low_pass", low_pass), ("high_pass", high_pass)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{name} must be a positive frequency in Hz (got {value!r})",
                              remedy=f"Give {name} in Hz, or leave it unset")
        if value >= nyquist:
            raise ConfigError(
                f"{name} cutoff {value:g} Hz is at or above the Nyquist frequency "
                f"{nyquist:g} Hz for TR {t_r:g} s",
                remedy=f"Use a {name} below {nyquist:g} Hz for this TR, or leave it unset")
    if low_pass is not None and high_pass is not None and high_pass >= low_pass:
        raise ConfigError(
            f"high_pass ({high_pass:g} Hz) must be lower than low_pass ({low_pass:g} Hz)",
            remedy="Swap or correct the band edges")


def _standardize_option(standardize: str | bool | None) -> str | None:
    if standardize is True:
        return "zscore_sample"
    if standardize is False or standardize is None:
        return None
    if standardize not in STANDARDIZE_OPTIONS:
        raise ConfigError(
            f"unknown standardize option {standardize!r}",
            remedy=f"Use one of {', '.join(STANDARDIZE_OPTIONS)}, or none")
    return str(standardize)


def _confounds_array(confounds: pd.DataFrame | np.ndarray | None,
                     n_vol: int) -> np.ndarray | None:
    if confounds is None:
        return None
    values = confounds.to_numpy() if isinstance(confounds, pd.DataFrame) else confounds
    try:
        values = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputDataError("confounds hold non-numeric values",
                             remedy="Pass numeric regressors") from None
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[0] != n_vol:
        raise InputDataError(
            f"confounds have shape {values.shape} but the signals have {n_vol} volumes",
            remedy="Give one confound row per volume (all volumes, before censoring)")
    if values.shape[1] == 0:
        return None
    if not np.isfinite(values).all():
        raise InputDataError("confounds hold n/a or infinite values",
                             remedy="Fill or drop those regressors (load_confounds does)")
    return values


def _sample_mask(sample_mask: np.ndarray | None, n_vol: int) -> np.ndarray:
    if sample_mask is None:
        return np.arange(n_vol)
    mask = np.asarray(sample_mask)
    if mask.dtype == bool:
        if mask.shape != (n_vol,):
            raise InputDataError(
                f"boolean sample mask has shape {mask.shape}, expected ({n_vol},)",
                remedy="Give one flag per volume, or the indices of the retained volumes")
        mask = np.flatnonzero(mask)
    mask = mask.astype(np.int64).ravel()
    if mask.size == 0:
        raise InputDataError("every volume is censored (empty sample mask)",
                             remedy="Exclude this run, or relax censoring")
    if mask[0] < 0 or mask[-1] >= n_vol or np.any(np.diff(mask) <= 0):
        raise InputDataError(
            f"sample mask must hold increasing volume indices within 0..{n_vol - 1}",
            remedy="Pass ConfoundSelection.sample_mask for this run")
    return mask
