"""Normative deviation ("zero-shot"): distance of each participant from a reference group.

Method (recorded in ``group/normative/method.json``):

1. The subject embeddings (runs averaged) are centred on the reference group's mean (they are
   not scaled per dimension: with few reference participants, per-dimension standard
   deviations are noisy and tiny ones blow distances up; the shrinkage below handles scale).
2. The reference covariance ``S`` is estimated with Ledoit-Wolf shrinkage towards a scaled
   identity (Ledoit & Wolf 2004), which is well conditioned even with far fewer reference
   participants than embedding dimensions.
3. The score is the squared Mahalanobis distance ``d2 = z' S^-1 z`` of the centred embedding
   ``z``.
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
    return 0.0 if beta == 0 else float(beta / delta)


class _Reference:
    """Ledoit-Wolf reference model, applied through the Woodbury identity.

    ``S = (1 - d) z'z / m + d mu I`` is never formed: with ``a = d mu`` and ``b = (1 - d) / m``,
    ``S^-1 x = x / a - (b / a^2) z' (I_m + (b / a) z z')^-1 z x``, an m x m solve.
    """

    def __init__(self, ref: np.ndarray):
        self.mean = ref.mean(axis=0)
        self.z = ref - self.mean
        m, p = self.z.shape
        self.shrinkage = lw_shrinkage(self.z)
        mu = float(np.sum(self.z ** 2)) / (m * p)
        self.a = self.shrinkage * mu
        self.b = (1.0 - self.shrinkage) / m
        self.dense = None
        if self.a <= 1e-12 * max(mu, 1e-300):  # no shrinkage (m >> p): invert S directly
            self.dense = np.linalg.pinv(self.z.T @ self.z / m)
        else:
            self.k = np.eye(m) + (self.b / self.a) * (self.z @ self.z.T)

    def terms(self, x: np.ndarray) -> np.ndarray:
        """Additive terms ``x_j (S^-1 x)_j`` of the squared distance, (n, p)."""
        xc = np.atleast_2d(x) - self.mean
        if self.dense is not None:
            return xc * (xc @ self.dense)
        w = np.linalg.solve(self.k, self.z @ xc.T).T
        prec_x = xc / self.a - (self.b / self.a ** 2) * (w @ self.z)
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
        contributions to ``score``, ``shrinkage`` and ``scheme``.
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
    for held in splits:
        train = np.setdiff1d(np.arange(m), held)
        terms[ref_idx[held]] = _Reference(emb[ref_idx[train]]).terms(emb[ref_idx[held]])
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
            "shrinkage": full.shrinkage, "scheme": scheme, "n_reference": m}


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
    """Sum the additive per-column terms within each ROI: (P, R) contributions."""
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
