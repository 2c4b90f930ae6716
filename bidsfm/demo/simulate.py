"""BOLD signal synthesis of one run, streamed to disk.

Signal model (per voxel, per volume)::

    x = baseline * (1 + non-steady-state + drift + ROI signal + global signal
                      + motion artefacts) + white noise

ROI signals are drawn from a multivariate normal with the anatomy's target correlation and
smoothed in time (AR(1) with a time constant in seconds, so the spectrum does not depend on TR).
All spatially separable terms are one (voxels x regressors) @ (regressors,) product per volume.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .anatomy import Anatomy
from .grid import world_coords
from .nifti import write_nifti
from .presets import RunSpec, SubjectSpec

__all__ = ["RunResult", "simulate_run"]

# Relative baseline intensity and noise (fraction of baseline) per tissue class.
_TISSUE_BASE = {"gm": 1.0, "wm": 0.85, "csf": 1.3, "scalp": 0.35}
_TISSUE_NOISE = {"gm": 0.012, "wm": 0.010, "csf": 0.020, "scalp": 0.030}
_NSS_BOOST = (0.6, 0.3, 0.15)  # extra brightness of the first non-steady-state volumes


@dataclass
class RunResult:
    """What the confounds of a simulated run are computed from."""

    mask_ts: np.ndarray  # (T, n_mask) float32 data inside the brain mask
    params: np.ndarray  # (T, 6) motion parameters (mm, rad)
    fd: np.ndarray  # framewise displacement (NaN first)
    rmsd: np.ndarray  # relative RMS displacement (NaN first)
    nss: int  # number of non-steady-state volumes
    n_volumes: int


def _ar1(x: np.ndarray, phi: float) -> np.ndarray:
    """Unit-variance AR(1) filtering along axis 0, started in the stationary state."""
    b0 = math.sqrt(1.0 - phi**2)
    y = np.empty_like(x, dtype=np.float64)
    y[0] = x[0]
    for t in range(1, len(x)):
        y[t] = phi * y[t - 1] + b0 * x[t]
    return y


def _motion(rng: np.random.Generator, n: int, kind: str, nss: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk motion parameters (mm, rad) with optional spikes; returns params, FD, RMSD."""
    scale = {"low": 1.0, "spikes": 1.0, "heavy": 4.0}[kind]
    steps = np.empty((n, 6))
    steps[:, :3] = rng.normal(0.0, 0.012 * scale, (n, 3))
    steps[:, 3:] = rng.normal(0.0, 0.00018 * scale, (n, 3))
    steps[0] = 0.0
    n_events = {"low": 0, "spikes": int(rng.integers(3, 6)), "heavy": int(rng.integers(10, 16))}
    n_ev = n_events[kind]
    if n_ev:
        lo = max(nss, 1) + 2
        times = rng.choice(np.arange(lo, n - 2), size=min(n_ev, n - 2 - lo), replace=False)
        for t in times:
            jump = np.concatenate([rng.normal(0.0, 0.35, 3), rng.normal(0.0, 0.005, 3)])
            steps[t] += jump
            steps[t + 1] -= jump * rng.uniform(0.6, 1.0)  # the subject mostly moves back
    params = np.cumsum(steps, axis=0)
    params[:, :3] += rng.normal(0.0, 0.2, 3)  # offset from the reference volume
    params[:, 3:] += rng.normal(0.0, 0.003, 3)
    d = np.diff(params, axis=0, prepend=params[:1])
    fd = np.abs(d[:, :3]).sum(1) + 50.0 * np.abs(d[:, 3:]).sum(1)
    # relative RMS displacement (Jenkinson 1999, small-angle, 80 mm sphere)
    rmsd = np.sqrt((d[:, :3] ** 2).sum(1) + 0.2 * 80.0**2 * (d[:, 3:] ** 2).sum(1))
    fd[0] = np.nan
    rmsd[0] = np.nan
    return params, fd, rmsd


def _random_field(coords: np.ndarray, rng: np.random.Generator, wavelength: float) -> np.ndarray:
    """A smooth random field (zero mean, unit variance): four plane cosine waves."""
    out = np.zeros(coords.shape[:-1], dtype=np.float32)
    for _ in range(4):
        k = rng.normal(0.0, 1.0 / (wavelength * math.sqrt(3.0)), 3)
        out += np.cos(2 * np.pi * (coords @ k) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out / np.float32(math.sqrt(2.0))


def _baseline(anat: Anatomy, idx: np.ndarray, xyz: np.ndarray, rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tissue code (0 GM, 1 WM, 2 CSF, 3 scalp), baseline and noise SD of the head voxels."""
    flat = {k: getattr(anat, k).ravel()[idx] for k in ("gm", "wm", "csf")}
    base_rel = np.array([_TISSUE_BASE[t] for t in ("gm", "wm", "csf", "scalp")], np.float32)
    noise_rel = np.array([_TISSUE_NOISE[t] for t in ("gm", "wm", "csf", "scalp")], np.float32)
    tcode = np.full(idx.size, 3, dtype=np.int8)
    tcode[flat["csf"]] = 2
    tcode[flat["wm"]] = 1
    tcode[flat["gm"]] = 0
    bias = 1.0 + 0.09 * _random_field(xyz, rng, 60.0)  # grey matter ~ 800-1200
    base = (1000.0 * base_rel[tcode] * bias).astype(np.float32)
    noise_sd = (noise_rel[tcode] * base).astype(np.float32)
    return tcode, base, noise_sd


def _roi_signals(anat: Anatomy, idx: np.ndarray, tcode: np.ndarray, n: int, tr: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROI time courses (T, R + 1; last column 0), each voxel's column and its amplitude."""
    # MVN with the target correlation, AR(1) in time (time constant 2.5 s)
    nv = idx.size
    n_roi = anat.target_corr.shape[0]
    chol = np.linalg.cholesky(anat.target_corr)
    roi = _ar1(rng.standard_normal((n, n_roi)) @ chol.T, math.exp(-tr / 2.5))
    roi = np.concatenate([roi, np.zeros((n, 1))], axis=1).astype(np.float32)
    roi_idx = anat.labels.ravel()[idx].astype(np.int64) - 1
    roi_idx[roi_idx < 0] = n_roi  # the zero column
    roi_amp = np.where(tcode == 0, rng.uniform(0.007, 0.013, nv), 0.0).astype(np.float32)
    roi_amp[roi_idx == n_roi] = 0.0
    return roi, roi_idx, roi_amp


def _regressors(xyz: np.ndarray, tcode: np.ndarray, spec: RunSpec, tr: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Spatial loads (V, 11) and time courses (T, 11) of the separable terms, and the motion.

    The terms: baseline with non-steady-state boost, linear and cosine drift, global signal,
    FD-driven spikes and the six motion parameters. Returns loads, temporal and
    (params, fd, rmsd).
    """
    n, nv = spec.n_volumes, tcode.size
    glob = _ar1(rng.standard_normal(n), math.exp(-tr / 6.0)).astype(np.float32)
    glob_amp = (0.005 * np.array([1.0, 0.6, 0.8, 0.3], np.float32)[tcode]
                * rng.uniform(0.6, 1.4, nv).astype(np.float32))
    tt = np.arange(n, dtype=np.float32)
    lin = tt / max(n - 1, 1) - 0.5
    cosd = np.cos(np.pi * (tt + 0.5) / n).astype(np.float32)
    drift_lin = (rng.normal(0.012, 0.004, nv)).astype(np.float32)
    drift_cos = (rng.normal(0.0, 0.006, nv)).astype(np.float32)
    params, fd, rmsd = _motion(rng, n, spec.motion, spec.n_nss)
    pmm = params.copy()
    pmm[:, 3:] *= 50.0  # radians -> mm at 50 mm
    pmm -= pmm.mean(0)
    # motion artefacts are spatially structured (edges, gradients): smooth fields + voxel noise
    motion_load = np.stack([0.006 * _random_field(xyz, rng, 80.0) for _ in range(6)], axis=1)
    motion_load += rng.normal(0.0, 0.002, (nv, 6)).astype(np.float32)
    spike_load = (-0.01 + 0.03 * _random_field(xyz, rng, 80.0)  # per mm of FD
                  + rng.normal(0.0, 0.01, nv).astype(np.float32))
    fd0 = np.nan_to_num(fd).astype(np.float32)
    nss = np.zeros(n, dtype=np.float32)
    nss[: spec.n_nss] = _NSS_BOOST[: spec.n_nss]
    loads = np.column_stack([np.ones(nv, np.float32), drift_lin, drift_cos, glob_amp,
                             spike_load, motion_load]).astype(np.float32)
    temporal = np.column_stack([1.0 + nss, lin, cosd, glob, fd0, pmm]).astype(np.float32)
    return loads, temporal, (params, fd, rmsd)


def _int16_scaling(base: np.ndarray, noise_sd: np.ndarray, dtype: str
                   ) -> tuple[float | None, np.dtype]:
    """``scl_slope`` (None for float32) and the on-disk data type."""
    if dtype != "int16":
        return None, np.dtype(np.float32)
    bound = float(base.max()) * (1.0 + _NSS_BOOST[0]) * 1.15 + 6.0 * float(noise_sd.max())
    return bound / 32000.0, np.dtype(np.int16)


@dataclass
class _VoxelModel:
    """Everything a volume of the run is computed from (head voxels only)."""

    base: np.ndarray
    noise_sd: np.ndarray
    loads: np.ndarray
    temporal: np.ndarray
    roi: np.ndarray
    roi_idx: np.ndarray
    roi_amp: np.ndarray


def _volumes(model: _VoxelModel, rng: np.random.Generator, shape: tuple[int, int, int],
             f_idx: np.ndarray, in_mask: np.ndarray, mask_ts: np.ndarray,
             slope: float | None, out_dtype: np.dtype) -> Iterator[np.ndarray]:
    """Yield the run's volumes (one reused Fortran-order buffer) and fill ``mask_ts``."""
    nv = model.base.size
    vol = np.zeros(int(np.prod(shape)), dtype=out_dtype)
    for t in range(model.temporal.shape[0]):
        mod = model.loads @ model.temporal[t]
        mod += model.roi_amp * model.roi[t, model.roi_idx]
        x = model.base * mod + model.noise_sd * rng.standard_normal(nv, dtype=np.float32)
        if slope is not None:
            q = np.clip(np.rint(x / slope), -32768, 32767).astype(np.int16)
            vol[f_idx] = q
            x = q.astype(np.float32) * np.float32(slope)
        else:
            vol[f_idx] = x
        mask_ts[t] = x[in_mask]
        yield vol.reshape(shape, order="F")


def simulate_run(path: Path, anat: Anatomy, spec: RunSpec, subj: SubjectSpec,
                 rng: np.random.Generator, *, dtype: str, compress: bool, space_code: int,
                 cut_z: float | None) -> RunResult:
    """Generate one run, stream it to ``path`` and return what the confounds need.

    Parameters
    ----------
    path : Path
        The BOLD image to write.
    anat : Anatomy
        Grid, tissue classes, labels and target ROI correlation.
    spec : RunSpec
        Length, non-steady-state volumes and motion kind of the run.
    subj : SubjectSpec
        The participant (its repetition time).
    rng : numpy.random.Generator
        Source of every random draw of the run.
    dtype : {"float32", "int16"}
        On-disk data type.
    compress : bool
        Gzip the image.
    space_code : int
        qform/sform code.
    cut_z : float or None
        World z (mm) above which the field of view is cut (no signal), or None.

    Returns
    -------
    RunResult
        The in-mask time series and the motion of the run.
    """
    n, tr = spec.n_volumes, subj.repetition_time
    shape = anat.shape
    coords = world_coords(shape, anat.affine)
    keep = np.ones(shape, dtype=bool) if cut_z is None else coords[..., 2] <= cut_z
    idx = np.flatnonzero(anat.head & keep)  # C-order flat indices of voxels with signal
    xyz = coords.reshape(-1, 3)[idx]
    tcode, base, noise_sd = _baseline(anat, idx, xyz, rng)
    roi, roi_idx, roi_amp = _roi_signals(anat, idx, tcode, n, tr, rng)
    loads, temporal, (params, fd, rmsd) = _regressors(xyz, tcode, spec, tr, rng)
    slope, out_dtype = _int16_scaling(base, noise_sd, dtype)
    in_mask = anat.mask.ravel()[idx]
    mask_ts = np.empty((n, int(in_mask.sum())), dtype=np.float32)
    # the image buffer is kept in Fortran (NIfTI) order so it can be written without a copy
    f_idx = np.ravel_multi_index(np.unravel_index(idx, shape), shape, order="F")
    model = _VoxelModel(base, noise_sd, loads, temporal, roi, roi_idx, roi_amp)
    volumes = _volumes(model, rng, shape, f_idx, in_mask, mask_ts, slope, out_dtype)
    write_nifti(path, None, anat.affine, compress=compress, space_code=space_code,
                shape4d=(*shape, n), tr=tr, dtype=out_dtype, slope=slope, volumes=volumes)
    return RunResult(mask_ts, params, fd, rmsd, spec.n_nss, n)
