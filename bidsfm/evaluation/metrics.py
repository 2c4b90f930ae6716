"""Out-of-fold metrics with participant-bootstrap 95% intervals (the group level's figures).

Classification: AUC (binary; macro one-vs-rest for multi-class), balanced accuracy and F1 (of the
positive label for binary targets, macro for multi-class) of the predicted label (P >= 0.5 for
binary, the most probable class otherwise). Continuous: MAE, Pearson r and out-of-fold R^2
(``1 - SS_res / SS_tot``). Intervals are percentile intervals over ``n_boot`` resamples of
participants with replacement (resamples in which a metric is undefined, e.g. one class, are
dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..models.heads import BINARY, CONTINUOUS

__all__ = ["roc_auc", "compute_metrics", "uncertainty_statement"]


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """Binary ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half.

    Parameters
    ----------
    y : np.ndarray
        (N,) 0/1 labels.
    s : np.ndarray
        (N,) scores.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When ``y`` holds one class only.
    """
    from scipy.stats import rankdata

    pos = y == 1
    n1 = int(pos.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        raise ValueError("one class only")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def _recalls(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.array([np.mean(pred[y == k] == k) for k in range(n_classes)])


def _f1(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    tp = np.sum((pred == k) & (y == k))
    denom = 2 * tp + np.sum((pred == k) & (y != k)) + np.sum((pred != k) & (y == k))
    return float(2 * tp / denom) if denom else 0.0


def _metric_functions(task_type: str, n_classes: int) -> dict[str, Callable]:
    """Metric functions written with numpy (fast enough for thousands of bootstrap resamples);
    tests check them against scikit-learn."""
    if task_type == CONTINUOUS:
        def mae(y, s):
            return float(np.mean(np.abs(y - s)))

        def r(y, s):
            if np.std(y) == 0 or np.std(s) == 0:
                raise ValueError("constant")
            return float(np.corrcoef(y, s)[0, 1])

        def r2(y, s):
            ss_tot = np.sum((y - y.mean()) ** 2)
            if ss_tot == 0:
                raise ValueError("constant")
            return float(1.0 - np.sum((y - s) ** 2) / ss_tot)

        return {"mae": mae, "r": r, "r2": r2}

    def _need_all(y):
        if len(np.unique(y)) < n_classes:
            raise ValueError("a class is missing")

    if task_type == BINARY:
        def auc(y, s):
            return roc_auc(y, s)

        def bacc(y, s):
            _need_all(y)
            return float(np.mean(_recalls(y, (s >= 0.5).astype(int), 2)))

        def f1(y, s):
            return _f1(y, (s >= 0.5).astype(int), 1)

        return {"auc": auc, "balanced_accuracy": bacc, "f1": f1}

    def mauc(y, s):
        _need_all(y)
        return float(np.mean([roc_auc((y == k).astype(int), s[:, k]) for k in range(n_classes)]))

    def mbacc(y, s):
        _need_all(y)
        return float(np.mean(_recalls(y, s.argmax(axis=1), n_classes)))

    def mf1(y, s):
        pred = s.argmax(axis=1)
        return float(np.mean([_f1(y, pred, k) for k in range(n_classes)]))

    return {"auc": mauc, "balanced_accuracy": mbacc, "f1": mf1}


def compute_metrics(task_type: str, y: np.ndarray, scores: np.ndarray, n_classes: int = 2,
                    n_boot: int = 1000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Point estimates and bootstrap 95% intervals of the out-of-fold metrics.

    Parameters
    ----------
    task_type : str
        ``binary``, ``multiclass`` or ``continuous``.
    y : np.ndarray
        (N,) class indices or values.
    scores : np.ndarray
        (N,) P(positive) or predicted values; (N, K) probabilities for multi-class.
    n_classes : int
        Number of classes (classification).
    n_boot : int
        Bootstrap resamples (0 = no intervals).
    seed : int
        Bootstrap seed.

    Returns
    -------
    dict
        ``{metric: {"value", "ci_low", "ci_high", "n_boot_used"}}``; NaN where undefined.
    """
    funcs = _metric_functions(task_type, n_classes)
    y = np.asarray(y)
    scores = np.asarray(scores)
    out: dict[str, dict[str, Any]] = {}
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(y), len(y)) for _ in range(n_boot)]
    for name, fn in funcs.items():
        try:
            value = fn(y, scores)
        except ValueError:
            value = float("nan")
        vals = []
        for idx in draws:
            try:
                vals.append(fn(y[idx], scores[idx]))
            except ValueError:
                continue
        vals = [v for v in vals if np.isfinite(v)]
        lo, hi = (np.percentile(vals, [2.5, 97.5]) if vals else (np.nan, np.nan))
        out[name] = {"value": value, "ci_low": float(lo), "ci_high": float(hi),
                     "n_boot_used": len(vals)}
    if task_type == CONTINUOUS:
        base = float(np.mean(np.abs(y - y.mean())))
        out["mae_predict_mean"] = {"value": base, "ci_low": float("nan"),
                                   "ci_high": float("nan"), "n_boot_used": 0}
    return out


def uncertainty_statement(task_type: str, metrics: dict[str, dict[str, Any]], n: int,
                          n_per_class: dict[str, int] | None, scheme: str) -> str:
    """Plain-language statement of how uncertain the cross-validated figure is."""
    key = "mae" if task_type == CONTINUOUS else "auc"
    m = metrics[key]
    width = m["ci_high"] - m["ci_low"]
    who = (f"{n} labelled participants ("
           + ", ".join(f"{k}: {v}" for k, v in (n_per_class or {}).items()) + ")"
           if n_per_class else f"{n} labelled participants")
    text = (f"{key.upper()} {m['value']:.3f} with a bootstrap 95% CI of {m['ci_low']:.3f} to "
            f"{m['ci_high']:.3f} (width {width:.3f}) from {who}, {scheme}.")
    smallest = min(n_per_class.values()) if n_per_class else n
    if (n_per_class and smallest < 20) or n < 40:
        text += (" Few labelled participants: the interval is wide and the point estimate can "
                 "move a lot with a different sample; treat it as a rough indication only.")
    if task_type != CONTINUOUS and np.isfinite(m["ci_low"]) and m["ci_low"] <= 0.5:
        text += " The interval includes chance level (AUC 0.5)."
    if task_type == CONTINUOUS:
        base = metrics["mae_predict_mean"]["value"]
        text += f" Predicting the mean for everyone gives an MAE of {base:.3f}."
    return text
