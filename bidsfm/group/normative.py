"""Normative deviation ("zero-shot"): distance of each participant from a reference group.

Method (recorded in ``group/normative/method.json``):

1. The subject embeddings (runs averaged) are centred on the reference group's mean (they are
   not scaled per dimension: with few reference participants, per-dimension standard
   deviations are noisy and tiny ones blow distances up; the shrinkage below handles scale).
2. The reference covariance ``S`` is estimated with Ledoit-Wolf shrinkage towards a scaled
   identity (Ledoit & Wolf 2004), which is well conditioned even with far fewer reference
   participants than embedding dimensions.
3. The score is the squared Mahalanobis distance ``d2 = z' S^-1 z`` of the centred embedding
   ``z``, with ``S^-1`` the pseudo-inverse when ``S`` is singular (shrinkage 0, e.g. a fit on
   2 participants), exactly as scikit-learn's ``LedoitWolf().mahalanobis``.
4. Reference participants are scored out of sample by K-fold cross-fitting (leave-one-out for
   at most ``LOO_MAX`` reference participants): the mean, scale and covariance that score a
   reference participant were estimated without it. Everyone else is scored by the fit on the
   whole reference group.
5. ``percentile`` is the percentage of the (out-of-sample) reference scores below the score;
   ``p`` is the empirical upper-tail p-value ``(1 + #{reference scores >= d2}) / (1 + m)``
   (a reference participant's own score is left out of its comparison set).
6. Per-ROI contributions: ``d2 = sum_j z_j (S^-1 z)_j`` exactly, so summing the terms of the
   embedding columns of each ROI (``<ROI>_<k>``, 8 per ROI for the FC model) splits the score
   into additive per-ROI parts (a part may be negative when an ROI's deviation is explained by
   correlated deviations elsewhere).
"""

from __future__ import annotations

from typing import Any

import numpy as np

LOO_MAX = 50
N_SPLITS = 10


def lw_shrinkage(z: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage intensity of centred data ``z`` (m, p), from its Gram matrix.

    The same estimator as :func:`sklearn.covariance.ledoit_wolf_shrinkage` with
    ``assume_centered=True`` (the test checks it), written with m x m products so that it costs
    O(m^2 p) instead of O(m p^2) when p (1,600) exceeds m.
    """
    m, p = z.shape
    sq = np.einsum("ij,ij->i", z, z)  # |z_i|^2
    gram = z @ z.T
    trace = sq.sum() / m  # trace of S = z'z / m
    mu = trace / p
    beta_ = float(np.sum(sq ** 2))  # sum_jk sum_i z_ij^2 z_ik^2
    delta_ = float(np.sum(gram ** 2)) / m ** 2  # ||z'z||_F^2 / m^2
    beta = (beta_ / m - delta_) / (p * m)
    delta = (delta_ - 2.0 * mu * trace + p * mu ** 2) / p
    beta = min(beta, delta)
    if beta == 0 or delta <= 0:
        return 0.0
    # beta >= 0 in exact arithmetic (Cauchy-Schwarz); a rounding-negative value is 0
    return float(min(max(beta / delta, 0.0), 1.0))


class _Reference:
    """Ledoit-Wolf reference model, applied through the thin SVD of the centred reference.

    ``S = (1 - d) z'z / m + d mu I`` is never formed. With ``z = U diag(s) V'`` (V: p x k,
    k <= m orthonormal columns), ``a = d mu`` and ``b = (1 - d) / m``, S has the eigenvalue
    ``a + b s_k^2`` along each column of V and ``a`` on the rest of the space, so

        S^+ x = V diag(1 / (a + b s^2)) V'x + (x - V V'x) / a

    costs O(m p) per participant, with an orthogonal (not a difference-of-large-numbers)
    decomposition, so it stays exact when the shrinkage ``d`` is tiny or zero.

    ``S^+`` is the Moore-Penrose pseudo-inverse with scipy's ``pinvh`` cut-off (eigenvalues at
    most ``p * eps * max eigenvalue`` count as zero), exactly what scikit-learn's
    ``LedoitWolf().precision_`` and ``.mahalanobis`` use. This matters when the shrinkage is
    0: with 2 reference participants (leave-one-out over 3) the Ledoit-Wolf intensity is
    exactly 0, ``S`` is singular, and the score measures the deviation within the span of the
    reference participants only (``singular`` is then True).
    """

    def __init__(self, ref: np.ndarray):
        self.mean = ref.mean(axis=0)
        z = ref - self.mean
        m, p = z.shape
        self.shrinkage = lw_shrinkage(z)
        mu = float(np.sum(z ** 2)) / (m * p)
        a = self.shrinkage * mu
        b = (1.0 - self.shrinkage) / m
        _u, s, self.vt = np.linalg.svd(z, full_matrices=False)
        eig = a + b * s ** 2  # eigenvalues of S along the rows of vt
        top = max(float(np.max(np.abs(eig), initial=0.0)), abs(a))
        cutoff = p * np.finfo(np.float64).eps * top
        self.inv_eig = np.where(np.abs(eig) > cutoff, 1.0 / np.where(eig == 0, 1.0, eig), 0.0)
        full_rank = self.vt.shape[0] >= p
        self.inv_a = 1.0 / a if (abs(a) > cutoff and not full_rank) else 0.0
        self.singular = bool((self.inv_eig == 0).any() or (not full_rank and self.inv_a == 0))

    def terms(self, x: np.ndarray) -> np.ndarray:
        """Additive terms ``x_j (S^+ x)_j`` of the squared distance, (n, p)."""
        xc = np.atleast_2d(x) - self.mean
        c = xc @ self.vt.T
        prec_x = (c * self.inv_eig) @ self.vt
        if self.inv_a:
            prec_x += (xc - c @ self.vt) * self.inv_a
        return xc * prec_x


def normative_scores(emb: np.ndarray, is_reference: np.ndarray, seed: int = 0
                     ) -> dict[str, Any]:
    """Deviation scores of every participant from the reference participants.

    Parameters
    ----------
    emb : np.ndarray
        (P, E) subject embeddings.
    is_reference : np.ndarray
        (P,) bool, the reference group (at least 3 participants).
    seed : int
        Seed of the cross-fitting split.

    Returns
    -------
    dict
        ``score`` (P,), ``percentile`` (P,), ``p`` (P,), ``terms`` (P, E) additive
        contributions to ``score``, ``shrinkage``, ``scheme``, ``n_singular_fits`` (cross-fits
        whose covariance was singular, see :class:`_Reference`) and ``warnings``.
    """
    emb = np.asarray(emb, dtype=np.float64)
    ref_idx = np.flatnonzero(np.asarray(is_reference, dtype=bool))
    m = len(ref_idx)
    if m < 3:
        raise ValueError(f"the reference group has {m} participant(s); at least 3 are needed")
    terms = np.zeros_like(emb)
    full = _Reference(emb[ref_idx])
    others = np.setdiff1d(np.arange(len(emb)), ref_idx)
    if len(others):
        terms[others] = full.terms(emb[others])
    if m <= LOO_MAX:
        splits = [np.array([i]) for i in range(m)]
        scheme = "leave-one-out over the reference participants"
    else:
        rng = np.random.default_rng(seed)
        splits = np.array_split(rng.permutation(m), N_SPLITS)
        scheme = f"{N_SPLITS}-fold cross-fitting over the reference participants (seed {seed})"
    n_singular = 0
    min_train = m
    for held in splits:
        train = np.setdiff1d(np.arange(m), held)
        fit = _Reference(emb[ref_idx[train]])
        terms[ref_idx[held]] = fit.terms(emb[ref_idx[held]])
        n_singular += fit.singular
        min_train = min(min_train, len(train))
    warnings = []
    if n_singular:
        warnings.append(
            f"the reference covariance is singular (Ledoit-Wolf shrinkage 0) in {n_singular} of "
            f"the {len(splits)} out-of-sample fits (smallest fit: {min_train} reference "
            "participants); as scikit-learn's LedoitWolf, its pseudo-inverse is used, so those "
            "reference participants' scores measure the deviation within the span of the "
            "other reference participants only and are not comparable with the other "
            "participants' scores, percentiles or p-values. Use at least 4 reference "
            "participants (many more for usable percentiles)")
    score = terms.sum(axis=1)
    ref_scores = score[ref_idx]
    percentile = np.empty(len(emb))
    p = np.empty(len(emb))
    ref_set = set(ref_idx.tolist())
    for i, s in enumerate(score):
        comp = ref_scores if i not in ref_set else np.delete(ref_scores,
                                                             np.flatnonzero(ref_idx == i))
        percentile[i] = 100.0 * np.mean(comp < s)
        p[i] = (1.0 + np.sum(comp >= s)) / (1.0 + len(comp))
    return {"score": score, "percentile": percentile, "p": p, "terms": terms,
            "shrinkage": full.shrinkage, "scheme": scheme, "n_reference": m,
            "singular_full_fit": full.singular, "n_singular_fits": int(n_singular),
            "warnings": warnings}


def roi_blocks(columns: list[str]) -> tuple[list[str], np.ndarray]:
    """ROI names and the ROI index of each embedding column (``<ROI>_<k>``)."""
    rois: list[str] = []
    index: dict[str, int] = {}
    codes = []
    for col in columns:
        roi = col.rsplit("_", 1)[0] if "_" in col else col
        if roi not in index:
            index[roi] = len(rois)
            rois.append(roi)
        codes.append(index[roi])
    return rois, np.asarray(codes)


def roi_contributions(terms: np.ndarray, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """Sum the additive per-column terms within each ROI: (P, R) contributions.

    Columns ``<ROI>_<k>`` belong to their ROI; edge columns ``<ROI a>--<ROI b>`` (tangent
    models) give half their term to each of the two ROIs (all of it when a == b), so the ROI
    contributions still sum to the score.
    """
    if columns and all("--" in c for c in columns):
        rois: list[str] = []
        index: dict[str, int] = {}
        pairs = []
        for col in columns:
            a, b = col.split("--", 1)
            for roi in (a, b):
                if roi not in index:
                    index[roi] = len(rois)
                    rois.append(roi)
            pairs.append((index[a], index[b]))
        out = np.zeros((terms.shape[0], len(rois)))
        for j, (a, b) in enumerate(pairs):
            out[:, a] += 0.5 * terms[:, j]
            out[:, b] += 0.5 * terms[:, j]
        return rois, out
    rois, codes = roi_blocks(columns)
    out = np.zeros((terms.shape[0], len(rois)))
    for j, c in enumerate(codes):
        out[:, c] += terms[:, j]
    return rois, out


def parse_reference(value: str) -> tuple[str, str]:
    """``"COLUMN=VALUE"`` -> (column, value).

    Raises
    ------
    ConfigError
        If there is no ``=``.
    """
    from ..errors import ConfigError

    column, sep, val = value.partition("=")
    if not sep or not column.strip() or not val.strip():
        raise ConfigError(f"--reference {value!r}: expected COLUMN=VALUE (e.g. diagnosis=TC)")
    return column.strip(), val.strip()
