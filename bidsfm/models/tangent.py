"""Tangent-space functional connectivity (Varoquaux et al. 2010), as bidsfm's models use it.

A correlation matrix ``C`` is mapped to the tangent space of the manifold of symmetric
positive-definite matrices at a reference ``M``::

    T = logm(M^-1/2 C M^-1/2)

so that the reference itself maps to the zero matrix and a run's entries say how its coupling
differs from the reference's, with the ROIs' shared variance "whitened" away. Dadi et al. (2019,
NeuroImage 192:115-134) found this the best connectome representation for prediction, ABIDE
included. nilearn's ``ConnectivityMeasure(kind="tangent")`` computes it from time series with a
geometric-mean reference fitted on a cohort; bidsfm needs it from one run's Pearson FC with a
reference stored beside the model weights, so this module works on FC matrices:

* missing ROIs (NaN rows / columns: outside the field of view, or ``n/a``) are filled with the
  reference's correlations (so they contribute nothing);
* the matrix is shrunk towards the identity, ``(1 - s) C + s I``, which makes short runs'
  rank-deficient FC invertible (fixed ``s``, stored in the model card, so one run is enough);
* eigenvalues are floored (filling can break positive definiteness by a little).

The reference is the log-Euclidean mean ``expm(mean(logm(C_i)))`` of the training cohort
(Arsigny et al. 2007), a closed-form approximation of the geometric mean nilearn iterates to.
Functions take and return numpy arrays; :func:`tangent_torch` is the batched torch version used
inside the encoder.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_SHRINKAGE", "log_euclidean_mean", "prepare_fc", "sym_apply",
           "tangent_space", "tangent_torch", "upper_triangle", "whitener"]

#: shrinkage towards the identity of the bundled models' FC (chosen on ABIDE, see docs/models.md)
DEFAULT_SHRINKAGE = 0.3
_EIG_FLOOR = 1e-3


def sym_apply(mats: np.ndarray, fn) -> np.ndarray:
    """Apply a scalar function to the eigenvalues of symmetric matrices (batched).

    Parameters
    ----------
    mats : np.ndarray
        (..., R, R) symmetric matrices.
    fn : callable
        Maps an array of eigenvalues to new eigenvalues.

    Returns
    -------
    np.ndarray
        ``V fn(w) V^T`` for each matrix.
    """
    w, v = np.linalg.eigh(mats)
    return (v * fn(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def prepare_fc(fc: np.ndarray, fill: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE
               ) -> np.ndarray:
    """Fill missing entries, shrink towards the identity and floor eigenvalues.

    Parameters
    ----------
    fc : np.ndarray
        (..., R, R) Pearson FC; NaN rows/columns for missing ROIs.
    fill : np.ndarray
        (R, R) correlations used for missing entries (the reference correlation matrix).
    shrinkage : float
        ``s`` in ``(1 - s) C + s I``, in [0, 1).

    Returns
    -------
    np.ndarray
        (..., R, R) float64 symmetric positive-definite matrices.
    """
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    c = np.array(fc, dtype=np.float64)
    bad = ~np.isfinite(c)
    if bad.any():
        c[bad] = np.broadcast_to(np.asarray(fill, dtype=np.float64), c.shape)[bad]
    r = c.shape[-1]
    c = (1.0 - shrinkage) * c + shrinkage * np.eye(r)
    return sym_apply(0.5 * (c + np.swapaxes(c, -1, -2)), lambda w: np.maximum(w, _EIG_FLOOR))


def log_euclidean_mean(mats: np.ndarray, chunk: int = 128) -> np.ndarray:
    """Log-Euclidean mean ``expm(mean_i logm(C_i))`` of SPD matrices (Arsigny et al. 2007).

    Parameters
    ----------
    mats : np.ndarray
        (N, R, R) symmetric positive-definite matrices.
    chunk : int
        Matrices per batched eigendecomposition (bounds memory).

    Returns
    -------
    np.ndarray
        (R, R) mean.
    """
    acc = np.zeros(mats.shape[1:], dtype=np.float64)
    for i in range(0, len(mats), chunk):
        acc += sym_apply(np.asarray(mats[i:i + chunk], dtype=np.float64), np.log).sum(axis=0)
    return sym_apply(acc / len(mats), np.exp)


def whitener(reference: np.ndarray) -> np.ndarray:
    """``M^-1/2`` of an SPD reference matrix."""
    return sym_apply(np.asarray(reference, dtype=np.float64), lambda w: w ** -0.5)


def tangent_space(fc: np.ndarray, reference: np.ndarray, fill: np.ndarray,
                  shrinkage: float = DEFAULT_SHRINKAGE, chunk: int = 128) -> np.ndarray:
    """Tangent-space FC ``logm(M^-1/2 C M^-1/2)`` of (prepared) Pearson FC matrices.

    Parameters
    ----------
    fc : np.ndarray
        (N, R, R) or (R, R) Pearson FC (NaN rows/columns for missing ROIs).
    reference : np.ndarray
        (R, R) SPD reference ``M`` (e.g. :func:`log_euclidean_mean` of the training cohort's
        prepared FC).
    fill : np.ndarray
        (R, R) correlations for missing entries (see :func:`prepare_fc`).
    shrinkage : float
        Shrinkage towards the identity.
    chunk : int
        Matrices per batched eigendecomposition.

    Returns
    -------
    np.ndarray
        Same shape as ``fc``, float64, symmetric.
    """
    fc = np.asarray(fc)
    single = fc.ndim == 2
    fc = fc[None] if single else fc
    w = whitener(reference)
    out = np.empty(fc.shape, dtype=np.float64)
    for i in range(0, len(fc), chunk):
        c = prepare_fc(fc[i:i + chunk], fill, shrinkage)
        out[i:i + chunk] = sym_apply(w @ c @ w, np.log)
    return out[0] if single else out


def upper_triangle(mats: np.ndarray) -> np.ndarray:
    """(N, R(R-1)/2) strictly-upper-triangle entries of (N, R, R) matrices (row-major order)."""
    r = mats.shape[-1]
    iu = np.triu_indices(r, k=1)
    return np.asarray(mats)[..., iu[0], iu[1]]


def tangent_torch(fc, whiten, fill, shrinkage: float = DEFAULT_SHRINKAGE):
    """Torch version of :func:`tangent_space` for a batch (no gradient needed; float64 inside).

    Parameters
    ----------
    fc : torch.Tensor
        (B, R, R) Pearson FC, NaN for missing entries.
    whiten : torch.Tensor
        (R, R) ``M^-1/2``.
    fill : torch.Tensor
        (R, R) correlations for missing entries.
    shrinkage : float
        Shrinkage towards the identity.

    Returns
    -------
    torch.Tensor
        (B, R, R) tangent-space FC in ``fc``'s dtype, on its device.
    """
    import torch

    dtype = fc.dtype
    x = fc.to(torch.float64)
    fill = fill.to(device=x.device, dtype=torch.float64)
    x = torch.where(torch.isfinite(x), x, fill.expand_as(x))
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    x = (1.0 - shrinkage) * x + shrinkage * eye
    x = 0.5 * (x + x.transpose(-1, -2))
    w, v = torch.linalg.eigh(x)
    x = (v * w.clamp_min(_EIG_FLOOR)[..., None, :]) @ v.transpose(-1, -2)
    wh = whiten.to(device=x.device, dtype=torch.float64)
    m = wh @ x @ wh
    w, v = torch.linalg.eigh(0.5 * (m + m.transpose(-1, -2)))
    out = (v * torch.log(w.clamp_min(1e-12))[..., None, :]) @ v.transpose(-1, -2)
    return out.to(dtype)
