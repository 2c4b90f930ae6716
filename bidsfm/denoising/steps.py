"""The steps of signal cleaning in numpy/scipy, one for one what ``nilearn.signal.clean`` does.

These are the building blocks behind :func:`bidsfm.denoising.clean_signals`, the one entry
point of cleaning, which checks its inputs and calls :func:`clean` here; :func:`clean` keeps
nilearn's name because it re-implements (and is tested against) ``nilearn.signal.clean``.

The per-run hot path (:func:`bidsfm.pipeline.process_run`) must not import nilearn (importing it
costs more than a second per process, more than reading a compressed BOLD run). This module
re-implements the subset of ``nilearn.signal.clean`` (nilearn 0.14) that bidsfm uses, with
``filter="butterworth"``, ``standardize_confounds=True``, ``extrapolate=False`` and a single run.
Written from the algorithm nilearn documents and the papers it follows (orthogonal confound
projection, Friston et al. 1994; filters orthogonal to the regression, Lindquist et al. 2018);
``tests/test_clean.py`` checks it against ``nilearn.signal.clean`` for every option combination.

Order of the steps (nilearn's):

1. with filtering and censoring: fill censored volumes by cubic splines on the retained ones
   (signals and confounds), over the span between the first and last retained volume;
   without filtering: drop censored volumes first;
2. linear detrend (mean and slope removed) of signals and confounds;
3. Butterworth filter (order 5, second-order sections, forward-backward ``sosfiltfilt`` with
   odd padding of scipy's default length) of signals and confounds, then drop censored volumes;
4. z-score the confounds (sample std, ddof=1) and project the signals onto the orthogonal
   complement of their span (pivoted QR dropping linearly dependent columns; see
   :func:`orthonormal_basis` for the one deliberate difference in the rank threshold);
5. standardise: ``zscore_sample`` (ddof=1, std below eps counts as 1) or ``psc`` (percent
   of the mean; if detrending/high-pass removed the mean, the mean before step 2 is used).

Only numpy is needed without band-pass filtering (the pivoted QR of the confound regression is
done in numpy: importing ``scipy.linalg`` alone costs a few tenths of a second per process);
``scipy.signal`` is imported for band-pass filtering and ``scipy.interpolate`` for censoring
combined with a filter.
"""

from __future__ import annotations

import numpy as np

#: Butterworth order used by nilearn.
BUTTERWORTH_ORDER = 5
_EPS = np.finfo(np.float64).eps


def detrend_linear(x: np.ndarray) -> np.ndarray:
    """Remove the mean and the least-squares linear trend of every column (in place).

    Parameters
    ----------
    x : numpy.ndarray, shape (n_samples, n_columns), float64
        Modified in place.

    Returns
    -------
    numpy.ndarray
        ``x`` itself, detrended. A single sample is returned unchanged.
    """
    n = x.shape[0]
    if n == 1:
        return x
    x -= x.mean(axis=0)
    ramp = np.arange(n, dtype=np.float64)
    ramp -= ramp.mean()
    norm = np.sqrt((ramp**2).sum())
    if not norm < _EPS:
        ramp /= norm
    x -= np.outer(ramp, ramp @ x)
    return x


def zscore_sample(x: np.ndarray) -> np.ndarray:
    """Remove column means and divide by the sample standard deviation (ddof=1).

    Columns whose standard deviation is below machine epsilon are divided by 1.

    Parameters
    ----------
    x : numpy.ndarray, shape (n_samples, n_columns)
        Input (not modified).

    Returns
    -------
    numpy.ndarray
        A new float64 array.
    """
    out = x - x.mean(axis=0)
    std = out.std(axis=0, ddof=1)
    std[std < _EPS] = 1.0
    out /= std
    return out


def percent_signal_change(x: np.ndarray) -> np.ndarray:
    """Express columns in percent of their mean: ``100 (x - mean) / |mean|``.

    Columns whose mean is (numerically) zero are set to 0, as nilearn does.

    Parameters
    ----------
    x : numpy.ndarray, shape (n_samples, n_columns)
        Input (not modified).

    Returns
    -------
    numpy.ndarray
        A new float64 array.
    """
    mean = x.mean(axis=0)
    invalid = np.abs(mean) < _EPS
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - mean) / np.abs(mean) * 100.0
    out[:, invalid] = 0.0
    return out


def butterworth_sos(t_r: float, low_pass: float | None, high_pass: float | None) -> np.ndarray:
    """Second-order sections of nilearn's Butterworth filter (order 5) for a band.

    Parameters
    ----------
    t_r : float
        Sampling interval (s).
    low_pass, high_pass : float or None
        Band edges (Hz), at least one given, both strictly inside ``(0, 0.5 / t_r)``.

    Returns
    -------
    numpy.ndarray, shape (n_sections, 6)
    """
    from scipy.signal import butter

    if low_pass is not None and high_pass is not None:
        wn: float | list[float] = [high_pass, low_pass]
        btype = "band"
    elif high_pass is not None:
        wn, btype = high_pass, "high"
    elif low_pass is not None:
        wn, btype = low_pass, "low"
    else:
        raise ValueError("butterworth_sos needs low_pass or high_pass")
    return butter(N=BUTTERWORTH_ORDER, Wn=wn, btype=btype, output="sos", fs=1.0 / t_r)


def min_samples_for_filter(sos: np.ndarray) -> int:
    """Smallest signal length ``sosfiltfilt`` accepts with its default padding.

    Parameters
    ----------
    sos : numpy.ndarray
        Second-order sections.

    Returns
    -------
    int
        ``padlen + 1`` where ``padlen = 3 (2 n_sections + 1 - n_trailing_zero_coefficients)``,
        scipy's default.
    """
    n_sec = sos.shape[0]
    zeros = min(int((sos[:, 2] == 0).sum()), int((sos[:, 5] == 0).sum()))
    return 3 * (2 * n_sec + 1 - zeros) + 1


def interpolate_censored(y: np.ndarray, conf: np.ndarray | None, mask: np.ndarray, t_r: float
                         ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Cut to the retained span and fill its censored volumes by cubic splines.

    Unlike nilearn 0.14 (which selects the volumes to fill with ``~sample_mask`` on an index
    array), every censored volume between the first and the last retained one is filled.

    Parameters
    ----------
    y : numpy.ndarray, shape (n_volumes, n_columns)
        Signals of all volumes.
    conf : numpy.ndarray or None
        Confounds of all volumes.
    mask : numpy.ndarray
        Sorted indices of the retained volumes.
    t_r : float
        Repetition time (s); the splines are fitted on times ``i * t_r``.

    Returns
    -------
    y, conf : numpy.ndarray
        New arrays for volumes ``mask[0] .. mask[-1]`` with censored volumes filled.
    local_mask : numpy.ndarray
        ``mask - mask[0]``, the retained volumes' indices within the span.
    """
    first, last = int(mask[0]), int(mask[-1])
    local = mask - first
    y = np.array(y[first:last + 1], dtype=np.float64)
    conf = None if conf is None else np.array(conf[first:last + 1], dtype=np.float64)
    n_span = y.shape[0]
    if local.size < n_span:
        from scipy.interpolate import CubicSpline

        times = np.arange(n_span) * t_r
        censored = np.setdiff1d(np.arange(n_span), local)
        for arr in (y, conf):
            if arr is not None:
                spline = CubicSpline(times[local], arr[local], extrapolate=False)
                arr[censored] = spline(times[censored])
    return y, conf, local


def orthonormal_basis(a: np.ndarray, rtol: float | None = None) -> np.ndarray:
    """Orthonormal basis of the column span, by QR with column pivoting (numpy only).

    At each step the remaining column with the largest residual norm is taken as the pivot
    (LAPACK ``geqp3``'s rule); the process stops when that norm (``|R_ii|``) is at most
    ``rtol`` times the largest column norm (``|R_00|``), which drops linearly dependent
    columns. Each new vector is re-orthogonalised against the previous ones (Gram-Schmidt
    twice), so the basis is orthonormal to machine precision.

    nilearn keeps the columns with ``|R_ii| > 100 eps`` (an absolute threshold) after
    ``scipy.linalg.qr(..., pivoting=True)``. For z-scored regressors (norm ``sqrt(n - 1)``) the
    rounding residual of an exactly dependent column is of that order, so nilearn sometimes
    keeps a pure rounding-noise direction and projects it out of the signals; the relative
    threshold here (numpy ``matrix_rank``'s default, ``max(n, k) eps``) drops it. For
    regressors that are not exactly collinear both give the same projection.

    Parameters
    ----------
    a : numpy.ndarray, shape (n_samples, n_columns)
        Columns to span (not modified).
    rtol : float, optional
        Relative pivot threshold (default ``max(n_samples, n_columns) * eps``).

    Returns
    -------
    numpy.ndarray, shape (n_samples, rank)
    """
    work = np.array(a, dtype=np.float64)
    n, k = work.shape
    basis = np.empty((n, min(n, k)))
    if k == 0:
        return basis
    rtol = max(n, k) * _EPS if rtol is None else float(rtol)
    tol = max(rtol * float(np.sqrt((work**2).sum(axis=0)).max()), np.finfo(np.float64).tiny)
    left = np.arange(k)
    rank = 0
    while left.size and rank < n:
        norms = np.sqrt((work[:, left] ** 2).sum(axis=0))
        pick = int(np.argmax(norms))
        if not norms[pick] > tol:
            break
        vec = work[:, left[pick]] / norms[pick]
        if rank:
            prev = basis[:, :rank]
            vec -= prev @ (prev.T @ vec)
            vec /= np.sqrt(vec @ vec)
        basis[:, rank] = vec
        rank += 1
        left = np.delete(left, pick)
        if left.size:
            work[:, left] -= np.outer(vec, vec @ work[:, left])
    return basis[:, :rank]


def project_out(signals: np.ndarray, confounds: np.ndarray) -> np.ndarray:
    """Remove from the signals their projection on the span of the (z-scored) confounds.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_samples, n_signals)
        Modified in place.
    confounds : numpy.ndarray, shape (n_samples, n_confounds)
        Regressors (z-scored here with ddof=1). Linearly dependent columns are dropped by
        :func:`orthonormal_basis` (pivoted QR).

    Returns
    -------
    numpy.ndarray
        ``signals``, now orthogonal to the confounds.
    """
    q = orthonormal_basis(zscore_sample(confounds))
    signals -= q @ (q.T @ signals)
    return signals


def clean(signals: np.ndarray, *, t_r: float, confounds: np.ndarray | None = None,
          sample_mask: np.ndarray | None = None, detrend: bool = True,
          standardize: str | None = "zscore_sample", low_pass: float | None = None,
          high_pass: float | None = None) -> np.ndarray:
    """Clean time series as ``nilearn.signal.clean`` does (Butterworth, z-scored confounds).

    Inputs are assumed valid (:func:`bidsfm.denoising.clean_signals` checks them and handles
    all-NaN columns): finite values, ``sample_mask`` sorted unique indices, band edges inside
    ``(0, Nyquist)`` with ``high_pass < low_pass``, and enough volumes for the filter.

    Parameters
    ----------
    signals : numpy.ndarray, shape (n_volumes, n_signals)
        Time series (not modified).
    t_r : float
        Repetition time (s).
    confounds : numpy.ndarray, shape (n_volumes, n_confounds), optional
        Regressors for every volume.
    sample_mask : numpy.ndarray, optional
        Sorted indices of the volumes to keep (``None``: all).
    detrend : bool
        Remove linear trends from signals and confounds.
    standardize : {"zscore_sample", "psc", None}
        Standardisation of the output.
    low_pass, high_pass : float, optional
        Butterworth band edges (Hz); none given means no filtering.

    Returns
    -------
    numpy.ndarray, shape (n_retained, n_signals), float64
        Cleaned signals of the retained volumes.
    """
    y = np.array(signals, dtype=np.float64)
    conf = None if confounds is None else np.array(confounds, dtype=np.float64)
    if conf is not None and conf.ndim == 1:
        conf = conf[:, None]
    mask = None if sample_mask is None else np.asarray(sample_mask, dtype=np.int64)
    filtering = low_pass is not None or high_pass is not None

    if mask is not None:
        if filtering:
            y, conf, mask = interpolate_censored(y, conf, mask, t_r)
        else:
            y = y[mask]
            conf = None if conf is None else conf[mask]
            mask = None
    original_mean = y.mean(axis=0)
    if detrend:
        detrend_linear(y)
        if conf is not None:
            detrend_linear(conf)
    if filtering:
        from scipy.signal import sosfiltfilt

        sos = butterworth_sos(t_r, low_pass, high_pass)
        y = sosfiltfilt(sos, y, axis=0, padtype="odd")
        if conf is not None:
            conf = sosfiltfilt(sos, conf, axis=0, padtype="odd")
        if mask is not None:
            y = y[mask]
            conf = None if conf is None else conf[mask]
    if conf is not None and conf.shape[1]:
        project_out(y, conf)
    if standardize is None:
        return y
    if standardize == "zscore_sample":
        return zscore_sample(y)
    if standardize == "psc":
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_lost = (np.abs(y.mean(axis=0)).mean() / np.abs(original_mean).mean()) < 0.1
        return percent_signal_change(y + original_mean if mean_lost else y)
    raise ValueError(f"unknown standardize option {standardize!r}")
