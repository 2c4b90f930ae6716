"""Site harmonisation of participant features before prediction heads (``--harmonize``).

Two label-free methods, both fitted on the features and the site column only:

``centre``
    Per-site centring: each site's mean feature vector is replaced by the pooled mean,
    ``x - mean(site) + mean(all)``. Removes additive site effects exactly; scales are left alone.
``combat``
    ComBat (Johnson et al. 2007, *Biostatistics*; Fortin et al. 2017 and 2018, *NeuroImage*) as
    implemented by neuroHarmonize (Pomponio et al. 2020, *NeuroImage*): per feature, a site
    location and scale, shrunk towards their across-feature means by parametric empirical
    Bayes, are removed and the pooled mean and variance restored. Fitted with the site as the
    only variable (no biological covariates, so no labels are used).

Rules shared by both methods (the same call, whatever the caller):

- participants whose site is missing, or whose site has fewer than :data:`MIN_SITE_SIZE`
  participants (no within-site spread to estimate), are returned unchanged; both methods keep
  the pooled mean, so they stay in the same space as everyone else;
- features that are constant over the harmonised participants are returned unchanged (ComBat
  would divide by their zero variance);
- at least two sites with :data:`MIN_SITE_SIZE` participants are needed (``ValueError``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("combat", "centre")
#: the ``--harmonize-method`` default, chosen by benchmarks/harmonize_abide.py (docs/group.md)
DEFAULT_METHOD = "combat"
MIN_SITE_SIZE = 2
_ALIASES = {"center": "centre", "centering": "centre", "centring": "centre"}


def _site_labels(sites: np.ndarray | list, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Site labels as strings and a mask of participants that have one."""
    import pandas as pd

    raw = pd.Series(np.asarray(sites, dtype=object).ravel())
    if len(raw) != n:
        raise ValueError(f"{len(raw)} site labels for {n} participants")
    text = raw.astype(str).str.strip()
    missing = raw.isna().to_numpy() | text.isin(["", "n/a", "nan", "None"]).to_numpy()
    return text.to_numpy(dtype=object), ~missing


def harmonize_with_info(features: np.ndarray, sites: np.ndarray | list,
                        method: str = DEFAULT_METHOD,
                        min_site_size: int = MIN_SITE_SIZE) -> tuple[np.ndarray, dict[str, Any]]:
    """Harmonise features across sites and describe what was done.

    Parameters
    ----------
    features : np.ndarray
        (N, F) features of N participants (finite values).
    sites : array-like of str
        (N,) site of each participant; missing values (None, NaN, ``n/a``, empty) allowed.
    method : {"combat", "centre"}
        Harmonisation method (``center`` is accepted for ``centre``).
    min_site_size : int
        Sites with fewer participants are left unadjusted.

    Returns
    -------
    harmonised : np.ndarray
        (N, F) float64 features.
    info : dict
        ``method``, ``n_sites`` (sites adjusted), ``n_adjusted``, ``unadjusted`` (row indices
        left unchanged), ``unadjusted_sites`` (small sites), ``n_constant_features``.

    Raises
    ------
    ValueError
        For an unknown method, non-finite features, mismatched lengths, or fewer than two
        sites with ``min_site_size`` participants.
    """
    method = _ALIASES.get(str(method).lower(), str(method).lower())
    if method not in METHODS:
        raise ValueError(f"unknown harmonisation method {method!r} (choose from "
                         f"{', '.join(METHODS)})")
    x = np.array(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be 2-D (participants x features), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features contain NaN or infinite values")
    labels, has_site = _site_labels(sites, len(x))
    names, counts = np.unique(labels[has_site], return_counts=True)
    big = {str(s) for s, c in zip(names, counts, strict=True) if c >= min_site_size}
    small = sorted(str(s) for s, c in zip(names, counts, strict=True) if c < min_site_size)
    use = has_site & np.isin(labels, list(big))
    if len(big) < 2:
        raise ValueError(f"site harmonisation needs at least 2 sites with at least "
                         f"{min_site_size} participants each (found {len(big)})")
    sub = x[use]
    varying = sub.std(axis=0) > 1e-12 * np.maximum(1.0, np.abs(sub).max(axis=0))
    out = x.copy()
    if method == "centre":
        out[use] = _centre(sub, labels[use])
    else:
        block = sub[:, varying]
        out_sub = sub.copy()
        if block.shape[1]:
            out_sub[:, varying] = _combat(block, labels[use])
        out[use] = out_sub
    info = {"method": method, "n_sites": len(big), "sites": sorted(big),
            "n_adjusted": int(use.sum()), "unadjusted": [int(i) for i in np.flatnonzero(~use)],
            "unadjusted_sites": small, "n_constant_features": int((~varying).sum()),
            "min_site_size": int(min_site_size)}
    return out, info


def harmonize(features: np.ndarray, sites: np.ndarray | list, method: str = DEFAULT_METHOD
              ) -> np.ndarray:
    """Remove site effects from (N, F) features without labels.

    Parameters
    ----------
    features : np.ndarray
        (N, F) features (e.g. subject embeddings, or the FC upper triangle).
    sites : array-like of str
        (N,) site of each participant.
    method : {"combat", "centre"}
        ``centre``: subtract each site's mean and add the pooled mean. ``combat``: ComBat
        with empirical Bayes (neuroHarmonize), site as the only variable.

    Returns
    -------
    np.ndarray
        (N, F) harmonised features (float64). Participants without a site or in a site with
        fewer than 2 participants, and constant features, are returned unchanged; see
        :func:`harmonize_with_info`.
    """
    return harmonize_with_info(features, sites, method)[0]


def _centre(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = x - x.mean(axis=0)
    for site in np.unique(labels):
        rows = labels == site
        out[rows] -= out[rows].mean(axis=0)
    return out + x.mean(axis=0)


def _combat(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """neuroHarmonize's ComBat (empirical Bayes, no covariates) on (N, F) features."""
    import contextlib
    import io
    import warnings

    import pandas as pd

    try:
        from neuroHarmonize import harmonizationLearn
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ImportError("--harmonize-method combat needs the neuroHarmonize package "
                          "(pip install neuroHarmonize)") from exc
    covars = pd.DataFrame({"SITE": [str(s) for s in labels]})
    # seed=0 keeps neuroHarmonize from reseeding numpy's global generator (it does so when
    # seed is None); the parametric empirical Bayes fit itself is deterministic.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # its use of np.matrix
        _model, adjusted = harmonizationLearn(x, covars, eb=True, seed=0)
    adjusted = np.asarray(adjusted, dtype=np.float64)
    if not np.isfinite(adjusted).all():
        raise ValueError("ComBat produced non-finite values (a feature with no variance "
                         "within every site?)")
    return adjusted
