"""TR-aware input for time-series models: resampling, normalisation and windowing.

The official Brain-JEPA code feeds a fixed number of frames whatever the repetition time (TR),
so 160 frames are 115 s of a 0.72 s HCP run but 480 s of a 3 s run, and it z-scores
differently in pretraining and in downstream use. bidsfm fixes both; every time-series model
stores its input contract (:class:`InputSpec`) in its card and applies it identically in
pretraining, head fitting and inference:

1. **resample** each run from its TR to the model's ``target_tr`` with
   :func:`scipy.signal.resample_poly` (polyphase FIR, Kaiser-windowed anti-aliasing low-pass at
   the lower of the two Nyquist frequencies; the ratio TR/target_tr is approximated by a
   fraction with denominator <= 100, i.e. within 1%). Runs are padded by linear extrapolation
   (``padtype="line"``) so the edges are not pulled towards zero. Output length
   ``round(T * TR / target_tr)``;
2. **normalise** the resampled run (``normalisation`` of the spec): ``zscore_run`` (bidsfm's
   models) z-scores each ROI over the whole run (mean 0, SD 1, ``ddof=0``); ``zscore_global``
   (the official Brain-JEPA downstream scheme, for imported checkpoints) subtracts one mean and
   divides by one SD computed over all valid ROIs and frames of the run. ROIs that are NaN or
   constant (outside the field of view, e.g. all-zero columns) are marked missing and set to 0;
3. **window** the run into ``n_frames``-frame windows: one window centred when the run is
   shorter than ``n_frames + window_stride``, otherwise evenly spaced windows
   ``window_stride`` apart (first at frame 0, last ending at the last frame). The model embeds
   every window and averages the embeddings. Runs shorter than ``n_frames`` frames after
   resampling (``n_frames * target_tr`` seconds) are rejected with a reason.

Pretraining draws random ``n_frames`` windows of the same resampled, normalised runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from typing import Any

import numpy as np

from ..errors import InputDataError

__all__ = ["InputSpec", "resample_run", "normalise_run", "window_starts", "prepare_run",
           "RunTooShort"]


NORMALISATIONS = ("zscore_run", "zscore_global")


class RunTooShort(InputDataError):
    """A run is shorter than a model's window after resampling."""


@dataclass
class InputSpec:
    """Input contract of a time-series model (stored as ``card["input"]``).

    Attributes
    ----------
    target_tr : float
        Repetition time (s) runs are resampled to.
    n_frames : int
        Window length in frames at ``target_tr``.
    window_stride : int
        Frames between consecutive inference windows.
    normalisation : str
        ``zscore_run``: per-ROI z-score over the whole resampled run (ddof 0);
        ``zscore_global``: one mean and SD over all valid ROIs and frames of the run.
    """

    target_tr: float = 2.0
    n_frames: int = 64
    window_stride: int = 32
    normalisation: str = "zscore_run"

    def __post_init__(self) -> None:
        if self.target_tr <= 0 or self.n_frames < 1 or self.window_stride < 1:
            raise ValueError("target_tr, n_frames and window_stride must be positive")
        if self.normalisation not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {self.normalisation!r}; use one of "
                             f"{', '.join(NORMALISATIONS)}")

    @property
    def min_seconds(self) -> float:
        """Shortest usable run, in seconds."""
        return self.n_frames * self.target_tr

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (the card's ``input`` section adds descriptive keys)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        """Read the spec from a card's ``input`` section (other keys are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def resample_run(ts: np.ndarray, tr: float, target_tr: float) -> np.ndarray:
    """Band-limited resampling of a (T, R) run from ``tr`` to ``target_tr`` seconds.

    Parameters
    ----------
    ts : np.ndarray
        (T, R) time series (NaN columns allowed; they stay NaN).
    tr, target_tr : float
        Repetition times in seconds.

    Returns
    -------
    np.ndarray
        (round(T * tr / target_tr), R) float64.
    """
    from scipy.signal import resample_poly

    ts = np.asarray(ts, dtype=np.float64)
    if ts.ndim != 2:
        raise ValueError(f"expected a (T, R) array, got shape {ts.shape}")
    if not (np.isfinite(tr) and tr > 0):
        raise ValueError(f"invalid repetition time {tr!r}")
    n_out = int(round(ts.shape[0] * tr / target_tr))
    if abs(tr - target_tr) < 1e-6 * target_tr:
        return ts.copy()
    frac = Fraction(float(tr) / float(target_tr)).limit_denominator(100)
    up, down = frac.numerator, frac.denominator
    nan_cols = ~np.all(np.isfinite(ts), axis=0)
    clean = np.where(nan_cols[None, :], 0.0, ts)
    out = resample_poly(clean, up, down, axis=0, padtype="line")
    if out.shape[0] < n_out:
        out = np.concatenate([out, np.repeat(out[-1:], n_out - out.shape[0], axis=0)])
    out = out[:n_out]
    out[:, nan_cols] = np.nan
    return out


def normalise_run(ts: np.ndarray, eps: float = 1e-8, method: str = "zscore_run"
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Normalise a run; missing (NaN or constant) ROIs -> 0 and ``valid=False``.

    ``method``: ``zscore_run`` (per-ROI z-score over the run) or ``zscore_global`` (one mean
    and SD over all valid ROIs and frames).

    Returns
    -------
    z : np.ndarray
        (T, R) float32.
    valid : np.ndarray
        (R,) bool.
    """
    ts = np.asarray(ts, dtype=np.float64)
    finite = np.all(np.isfinite(ts), axis=0)
    safe = np.where(finite[None, :], ts, 0.0)
    sd = safe.std(axis=0)
    valid = finite & (sd > eps * np.maximum(1.0, np.abs(safe).max(axis=0)))
    z = np.zeros_like(safe)
    if method == "zscore_run":
        z[:, valid] = (safe[:, valid] - safe[:, valid].mean(axis=0)) / sd[valid]
    elif method == "zscore_global":
        if valid.any():
            block = safe[:, valid]
            z[:, valid] = (block - block.mean()) / max(float(block.std()), eps)
    else:
        raise ValueError(f"unknown normalisation {method!r}")
    return z.astype(np.float32), valid


def window_starts(n: int, n_frames: int, stride: int) -> list[int]:
    """Start frames of the inference windows of an ``n``-frame run (see module docstring)."""
    if n < n_frames:
        return []
    span = n - n_frames
    if span < stride:
        return [span // 2]
    count = int(np.ceil(span / stride)) + 1
    return sorted({int(round(s)) for s in np.linspace(0, span, count)})


def prepare_run(ts: np.ndarray, tr: float, spec: InputSpec, name: str = "run"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Resample, normalise and window one run for a time-series model.

    Parameters
    ----------
    ts : np.ndarray
        (T, R) ROI time series (NaN columns = missing ROIs).
    tr : float
        Its repetition time in seconds.
    spec : InputSpec
        The model's input contract.
    name : str
        Used in error messages.

    Returns
    -------
    windows : np.ndarray
        (W, R, n_frames) float32.
    valid : np.ndarray
        (R,) bool.

    Raises
    ------
    RunTooShort
        If the run lasts less than ``spec.n_frames * spec.target_tr`` seconds.
    """
    z, valid = normalise_run(resample_run(ts, tr, spec.target_tr), method=spec.normalisation)
    starts = window_starts(z.shape[0], spec.n_frames, spec.window_stride)
    if not starts:
        raise RunTooShort(f"{name}: {np.asarray(ts).shape[0]} volumes x TR {tr:g} s = "
                          f"{np.asarray(ts).shape[0] * tr:.0f} s, shorter than the model's "
                          f"window of {spec.n_frames} frames x {spec.target_tr:g} s = "
                          f"{spec.min_seconds:.0f} s")
    if not valid.any():
        raise InputDataError(f"{name}: no ROI has a usable (finite, non-constant) signal")
    return window_run(z, spec), valid


def window_run(z: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Cut a resampled, normalised ``(T, R)`` run into the model's windows ``(W, R, n_frames)``.

    Raises
    ------
    ValueError
        If the run is shorter than one window (:func:`prepare_run` reports that case with the
        run's name and duration first).
    """
    starts = window_starts(z.shape[0], spec.n_frames, spec.window_stride)
    if not starts:
        raise ValueError(f"{z.shape[0]} frames are shorter than a {spec.n_frames}-frame window")
    return np.stack([z[s:s + spec.n_frames].T for s in starts]).astype(np.float32)
