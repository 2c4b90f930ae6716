"""Figures of the group level: ROC curves (classification) and predicted-vs-true scatter."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from ..utils import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def roc_figure(path: str | Path, y: np.ndarray, scores: np.ndarray, labels: list[str],
               title: str) -> Path:
    """Out-of-fold ROC curve(s): one for binary targets, one-vs-rest per class otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if scores.ndim == 1:
        curves = [(labels[1], (y == 1).astype(int), scores)]
    else:
        curves = [(lab, (y == k).astype(int), scores[:, k]) for k, lab in enumerate(labels)]
    for lab, yy, ss in curves:
        if yy.min() == yy.max():
            continue
        fpr, tpr, _ = roc_curve(yy, ss)
        ax.plot(fpr, tpr, lw=1.8, label=f"{lab} (AUC {roc_auc_score(yy, ss):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, Path(path))


def scatter_figure(path: str | Path, y: np.ndarray, pred: np.ndarray, title: str,
                   unit: str = "") -> Path:
    """Out-of-fold predicted vs true values with the identity line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y, pred, s=12, alpha=0.7)
    lo = float(min(np.min(y), np.min(pred)))
    hi = float(max(np.max(y), np.max(pred)))
    ax.plot([lo, hi], [lo, hi], ls="--", color="grey", lw=1)
    ax.set(xlabel=f"true {unit}".strip(), ylabel=f"out-of-fold prediction {unit}".strip(),
           title=title)
    return _save(fig, Path(path))
