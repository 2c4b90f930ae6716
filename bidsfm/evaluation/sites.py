"""Leave-one-site-out figures of model cards and benchmarks, bootstrap intervals, few-shot.

:func:`leave_site_out` refits a head without each site and scores it on that site (the
``validation`` figures of the bundled models' cards, ``benchmarks/``); its intervals use
scikit-learn's AUC (:func:`bootstrap_ci`), as the cards always have.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.heads import BINARY, CONTINUOUS, MULTICLASS, fit_binary_head, task_type
from .crossval import out_of_fold

__all__ = ["leave_site_out", "bootstrap_ci", "paired_bootstrap_auc_difference",
           "few_shot_curve"]


def leave_site_out(emb: np.ndarray, y: np.ndarray, sites: np.ndarray, kind: str, *,
                   labels: list[str] | None = None) -> dict[str, Any]:
    """Leave-one-site-out evaluation of a binary or continuous head on embeddings.

    For every site, a head is fitted on the other sites (with its own inner, site-grouped
    hyper-parameter search) and scores that site's participants (:func:`out_of_fold`
    on one fold per site, whatever the number of sites).

    Parameters
    ----------
    emb : np.ndarray
        (N, E) embeddings.
    y : np.ndarray
        (N,) 0/1 labels (binary) or values (continuous).
    sites : np.ndarray
        (N,) site of each participant.
    kind : str
        ``binary`` or ``continuous`` (a card's ``regression`` too).
    labels : list of str, optional
        ``[negative, positive]`` names (binary).

    Returns
    -------
    dict
        ``n``, ``n_sites``, ``scheme``, ``oof`` (out-of-fold predictions) and, binary: ``auc``,
        ``auc_ci95``, ``balanced_accuracy``, ``auc_mean_over_sites``, ``auc_per_site``;
        continuous: ``mae``, ``mae_ci95``, ``r``, ``r_ci95``, ``mae_per_site``,
        ``mae_predict_mean``. Intervals: :func:`bootstrap_ci` (scikit-learn's AUC).
    """
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    task = task_type(kind)
    if task == MULTICLASS:
        raise ValueError("leave_site_out scores binary and continuous heads; use "
                         "cross_validate and compute_metrics for multi-class targets")
    sites = np.asarray(sites)
    site_names = np.unique(sites)
    folds = [(np.flatnonzero(sites != s), np.flatnonzero(sites == s)) for s in site_names]
    oof, _ = out_of_fold(task, emb, y, folds, labels or ["0", "1"], sites)
    per_site: dict[str, float] = {}
    for site in site_names:
        te = sites == site
        if task == CONTINUOUS:
            per_site[str(site)] = float(np.mean(np.abs(oof[te] - y[te])))
        elif len(np.unique(y[te])) == 2:
            per_site[str(site)] = float(roc_auc_score(y[te], oof[te]))
    out: dict[str, Any] = {"n": int(len(y)), "n_sites": int(len(site_names)),
                           "scheme": "leave-one-site-out", "oof": oof}
    if task == BINARY:
        y = np.asarray(y).astype(int)
        auc = float(roc_auc_score(y, oof))
        out.update(auc=auc, auc_ci95=bootstrap_ci(roc_auc_score, y, oof),
                   balanced_accuracy=float(balanced_accuracy_score(y, oof >= 0.5)),
                   auc_mean_over_sites=float(np.mean(list(per_site.values()))),
                   auc_per_site=per_site)
    else:
        y = np.asarray(y, dtype=np.float64)

        def mae(a, b):
            return float(np.mean(np.abs(a - b)))

        def corr(a, b):
            return float(np.corrcoef(a, b)[0, 1])

        out.update(mae=mae(y, oof), mae_ci95=bootstrap_ci(mae, y, oof), r=corr(y, oof),
                   r_ci95=bootstrap_ci(corr, y, oof), mae_per_site=per_site,
                   mae_predict_mean=float(np.mean(np.abs(y - y.mean()))))
    return out


def bootstrap_ci(metric, y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile 95% bootstrap interval of ``metric(y, s)`` over participants."""
    rng = np.random.default_rng(seed)
    vals = []
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        try:
            vals.append(metric(y[idx], s[idx]))
        except ValueError:  # a resample with one class
            continue
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def paired_bootstrap_auc_difference(y: np.ndarray, score_a: np.ndarray, score_b: np.ndarray,
                                    n_boot: int = 2000, seed: int = 0
                                    ) -> tuple[float, float, float]:
    """AUC(a) - AUC(b) on the same participants, with a paired percentile 95 % interval.

    Each bootstrap resample of participants scores both sets of predictions, so the interval
    accounts for their correlation (both were made for the same people).

    Parameters
    ----------
    y : np.ndarray
        (N,) 0/1 labels.
    score_a, score_b : np.ndarray
        (N,) out-of-fold scores of the two feature sets.
    n_boot : int
        Resamples.
    seed : int
        Random seed.

    Returns
    -------
    tuple of float
        (difference, lower, upper).
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    a, b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    diff = float(roc_auc_score(y, a) - roc_auc_score(y, b))
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        vals.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return diff, float(lo), float(hi)


def few_shot_curve(features, y: np.ndarray, sites: np.ndarray, shots=(5, 10, 20, 50),
                   repeats: int = 5, seed: int = 0) -> dict[int, dict[str, float]]:
    """Few-shot diagnosis curve, leave-one-site-out, on fixed or per-fold features.

    For each held-out site and repeat, ``k`` participants of each class are drawn from the
    other sites, a head is fitted on them alone and scores the held-out site. The pooled AUC
    over sites is computed per repeat; the mean and standard deviation over repeats are
    returned. The draws depend only on ``y``, ``sites`` and ``seed``, so every feature set
    evaluated with the same seed sees the same participants.

    Parameters
    ----------
    features : np.ndarray or callable
        (N, E) features, or ``site -> (N, E)`` features built for the fold that holds that
        site out (e.g. a tangent reference refitted without it).
    y : np.ndarray
        (N,) 0/1 labels (1 = ASD).
    sites : np.ndarray
        (N,) site of each participant.
    """
    from sklearn.metrics import roc_auc_score

    get = features if callable(features) else (lambda _site: features)
    rng = np.random.default_rng(seed)
    out: dict[int, dict[str, float]] = {}
    for k in shots:
        aucs = []
        for _ in range(repeats):
            oof = np.full(len(y), np.nan)
            for site in np.unique(sites):
                te = sites == site
                pool = np.flatnonzero(~te)
                pick = np.concatenate([rng.choice(pool[y[pool] == c], size=k, replace=False)
                                       for c in (0, 1)])
                x = get(site)
                head = fit_binary_head("few", x[pick], y[pick], ["TC", "ASD"])
                oof[te] = head.predict(x[te])
            aucs.append(roc_auc_score(y, oof))
        out[int(k)] = {"auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs)),
                       "repeats": repeats}
    return out
