"""Prediction heads on frozen embeddings: linear models stored as plain tensors.

A head is a standardisation (mean, scale) followed by a linear map: a logistic model for binary
targets (probability of the positive label), a multinomial logistic model for multi-class targets
(one probability per class) or a ridge model for continuous targets. Heads are
fitted with scikit-learn and then reduced to arrays, so they are saved with safetensors (no
pickled scikit-learn objects) and can be differentiated through with torch for attribution.

Task types (one vocabulary for the whole package): ``binary``, ``multiclass`` and ``continuous``
(:data:`TASK_TYPES`). A card stores the kind of a continuous head as ``regression``, as cards
always have (:func:`card_kind`, :func:`task_type`).

Cross-validated evaluation of heads (leave-one-site-out, bootstrap intervals) is in
:mod:`bidsfm.evaluation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BINARY, MULTICLASS, CONTINUOUS = "binary", "multiclass", "continuous"
#: the task types of heads and of the group level's targets
TASK_TYPES = (BINARY, MULTICLASS, CONTINUOUS)
#: how a head's task type is written in a card's ``kind`` where the word differs
_CARD_WORDS = {CONTINUOUS: "regression"}
#: inverse L2 strengths of logistic heads; wide enough that no leave-site-out fold of ABIDE FC,
#: tangent FC or a bundled embedding picks an edge (benchmarks/evaluate_models.py checks)
C_GRID = tuple(float(10.0**k) for k in range(-7, 2))
#: ridge strengths of regression heads
ALPHA_GRID = tuple(float(a) for a in np.logspace(0, 7, 15))


def task_type(kind: str) -> str:
    """The task type of a head ``kind`` as written in a card (``regression`` -> ``continuous``).

    Parameters
    ----------
    kind : str
        ``binary``, ``multiclass``, ``continuous`` or the card word ``regression``.

    Returns
    -------
    str
        One of :data:`TASK_TYPES`.

    Raises
    ------
    ValueError
        For any other word.
    """
    for task, word in _CARD_WORDS.items():
        if kind == word:
            return task
    if kind not in TASK_TYPES:
        raise ValueError(f"unknown head kind {kind!r} (known: {', '.join(TASK_TYPES)}, "
                         "regression)")
    return kind


def card_kind(task: str) -> str:
    """The word a card uses for a head of task type ``task`` (``continuous`` -> ``regression``).

    Parameters
    ----------
    task : str
        One of :data:`TASK_TYPES`.

    Returns
    -------
    str
    """
    return _CARD_WORDS.get(task, task)


@dataclass
class LinearHead:
    """A fitted linear head.

    Attributes
    ----------
    name : str
        Head name (e.g. ``"diagnosis"``).
    kind : str
        Task type: ``"binary"``, ``"multiclass"`` or ``"continuous"`` (written ``"regression"``
        in cards).
    labels : list of str
        For binary heads, ``[negative, positive]``; the score is P(positive). For multi-class
        heads, the classes in the order of the rows of ``coef``.
    mean, scale : np.ndarray
        Standardisation of the embedding, shape (E,).
    coef : np.ndarray
        Weights on the standardised embedding, shape (E,) or (K, E) for multi-class heads.
    intercept : float or np.ndarray
        Bias (shape (K,) for multi-class heads).
    info : dict
        Hyper-parameters and validation figures (for the model card).
    """

    name: str
    kind: str
    labels: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float | np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def decision(self, emb: np.ndarray) -> np.ndarray:
        """Linear score: logit (binary), (N, K) logits (multi-class) or the predicted value."""
        z = (np.asarray(emb, dtype=np.float64) - self.mean) / self.scale
        if self.kind == MULTICLASS:
            return z @ np.asarray(self.coef).T + np.asarray(self.intercept)
        return z @ self.coef + self.intercept

    def predict(self, emb: np.ndarray) -> np.ndarray:
        """P(``labels[1]``) (binary), (N, K) class probabilities (multi-class) or the value."""
        d = self.decision(emb)
        if self.kind == BINARY:
            return 1.0 / (1.0 + np.exp(-d))
        if self.kind == MULTICLASS:
            e = np.exp(d - d.max(axis=-1, keepdims=True))
            return e / e.sum(axis=-1, keepdims=True)
        return d

    def class_head(self, k: int) -> LinearHead:
        """Scalar head on the centred logit of class ``k`` of a multi-class head.

        ``logit_k - mean_j logit_j`` is unchanged by the softmax's free offset, so its
        attribution says what moves the prediction towards class ``k``.
        """
        coef = np.asarray(self.coef)
        icpt = np.asarray(self.intercept)
        return LinearHead(f"{self.name}_{self.labels[k]}", CONTINUOUS, [], self.mean,
                          self.scale, coef[k] - coef.mean(axis=0),
                          float(icpt[k] - icpt.mean()))

    def decision_torch(self, emb):
        """Torch version of :meth:`decision` (differentiable, for attribution)."""
        import torch

        mean = torch.as_tensor(self.mean, dtype=emb.dtype, device=emb.device)
        scale = torch.as_tensor(self.scale, dtype=emb.dtype, device=emb.device)
        coef = torch.as_tensor(self.coef, dtype=emb.dtype, device=emb.device)
        if self.kind == MULTICLASS:
            icpt = torch.as_tensor(self.intercept, dtype=emb.dtype, device=emb.device)
            return ((emb - mean) / scale) @ coef.T + icpt
        return ((emb - mean) / scale) @ coef + float(self.intercept)

    def to_tensors(self) -> dict[str, np.ndarray]:
        """Arrays to store with safetensors under ``heads.<name>.*``."""
        p = f"heads.{self.name}."
        return {p + "mean": self.mean.astype(np.float32),
                p + "scale": self.scale.astype(np.float32),
                p + "coef": self.coef.astype(np.float32),
                p + "intercept": np.asarray(self.intercept, dtype=np.float32).reshape(-1)}

    def meta(self) -> dict[str, Any]:
        """JSON description for the model card (``kind`` in the card's word, :func:`card_kind`)."""
        return {"kind": card_kind(self.kind), "labels": list(self.labels), **self.info}

    @classmethod
    def from_tensors(cls, name: str, tensors: dict[str, np.ndarray], meta: dict[str, Any]
                     ) -> LinearHead:
        """Rebuild a head from stored arrays and its card entry."""
        p = f"heads.{name}."
        info = {k: v for k, v in meta.items() if k not in ("kind", "labels")}
        icpt = np.asarray(tensors[p + "intercept"], dtype=np.float64).ravel()
        kind = task_type(meta["kind"])
        return cls(name=name, kind=kind, labels=list(meta.get("labels", [])),
                   mean=np.asarray(tensors[p + "mean"], dtype=np.float64),
                   scale=np.asarray(tensors[p + "scale"], dtype=np.float64),
                   coef=np.asarray(tensors[p + "coef"], dtype=np.float64),
                   intercept=icpt if kind == MULTICLASS else float(icpt[0]), info=info)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    return mean, scale


def _row_space(z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Project onto the span of the samples when features outnumber samples.

    An L2-penalised linear model's weights lie in the span of its training samples, so fitting
    on n-dimensional coordinates of the samples in an orthonormal basis of that span and
    mapping the weights back gives exactly the same model, much faster when p >> n. The basis
    comes from the eigendecomposition of the n x n Gram matrix (cheaper than an SVD of z).

    Returns
    -------
    coords : np.ndarray
        (n, k) coordinates (``z`` itself when p <= n).
    basis : np.ndarray or None
        (k, p) orthonormal rows spanning the samples; weights map back as ``basis.T @ w``.
    """
    if z.shape[1] <= z.shape[0]:
        return z, None
    gram = z @ z.T
    evals, evecs = np.linalg.eigh(gram)
    keep = evals > evals.max() * 1e-10
    s = np.sqrt(evals[keep])
    coords = evecs[:, keep] * s
    basis = (z.T @ (evecs[:, keep] / s)).T
    return coords, basis


def _inner_cv(groups: np.ndarray | None, n: int, y: np.ndarray | None = None):
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if groups is not None and len(np.unique(groups)) >= 3:
        return list(GroupKFold(n_splits=min(3, len(np.unique(groups)))).split(
            np.zeros(n), groups=groups))
    if y is not None:
        counts = np.unique(y, return_counts=True)[1]
        splits = min(3, int(counts.min()))
        if splits >= 2:  # few-shot: as many folds as the smallest class allows
            return list(StratifiedKFold(n_splits=splits, shuffle=True, random_state=0).split(
                np.zeros(n), y))
    from sklearn.model_selection import KFold

    return list(KFold(n_splits=min(3, n), shuffle=True, random_state=0).split(np.zeros(n)))


def fit_binary_head(name: str, emb: np.ndarray, y: np.ndarray, labels: list[str],
                    groups: np.ndarray | None = None) -> LinearHead:
    """Fit an L2 logistic head; C chosen by inner cross-validated log-loss (grouped by site).

    Log-loss (not AUC) selects C so that the probabilities are calibrated, not only ranked.

    Parameters
    ----------
    name : str
        Head name.
    emb : np.ndarray
        (N, E) embeddings.
    y : np.ndarray
        (N,) 0/1 targets (1 = ``labels[1]``).
    labels : list of str
        ``[negative, positive]`` label names.
    groups : np.ndarray, optional
        Site of each sample; the inner CV then never splits a site.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    emb = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y).astype(int)
    mean, scale = _standardise(emb)
    z, basis = _row_space((emb - mean) / scale)
    best_c, best = C_GRID[0], -np.inf
    folds = _inner_cv(groups, len(y), y)
    for c in C_GRID:
        scores = []
        for tr, te in folds:
            if len(np.unique(y[tr])) < 2 or len(np.unique(y[te])) < 2:
                continue
            clf = LogisticRegression(C=c, max_iter=2000).fit(z[tr], y[tr])
            scores.append(-log_loss(y[te], clf.predict_proba(z[te])[:, 1], labels=[0, 1]))
        score = float(np.mean(scores)) if scores else -np.inf
        if score > best:
            best_c, best = c, score
    clf = LogisticRegression(C=best_c, max_iter=5000).fit(z, y)
    coef = clf.coef_.ravel() if basis is None else basis.T @ clf.coef_.ravel()
    return LinearHead(name, BINARY, list(labels), mean, scale, coef.copy(),
                      float(clf.intercept_[0]), {"C": best_c, "n_train": int(len(y))})


def fit_multiclass_head(name: str, emb: np.ndarray, y: np.ndarray, labels: list[str],
                        groups: np.ndarray | None = None) -> LinearHead:
    """Fit an L2 multinomial logistic head; C chosen by inner cross-validated log-loss.

    Parameters
    ----------
    name : str
        Head name.
    emb : np.ndarray
        (N, E) embeddings.
    y : np.ndarray
        (N,) class indices into ``labels``.
    labels : list of str
        Class names (K >= 2).
    groups : np.ndarray, optional
        Site of each sample; the inner CV then never splits a site.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    emb = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y).astype(int)
    k = len(labels)
    mean, scale = _standardise(emb)
    z, basis = _row_space((emb - mean) / scale)
    best_c, best = C_GRID[0], -np.inf
    for c in C_GRID:
        scores = []
        for tr, te in _inner_cv(groups, len(y), y):
            if len(np.unique(y[tr])) < k:
                continue
            clf = LogisticRegression(C=c, max_iter=2000).fit(z[tr], y[tr])
            scores.append(-log_loss(y[te], clf.predict_proba(z[te]), labels=list(range(k))))
        score = float(np.mean(scores)) if scores else -np.inf
        if score > best:
            best_c, best = c, score
    clf = LogisticRegression(C=best_c, max_iter=5000).fit(z, y)
    coef = np.zeros((k, emb.shape[1]))
    icpt = np.zeros(k)
    w = clf.coef_ if basis is None else clf.coef_ @ basis
    coef[clf.classes_] = w  # classes absent from training keep zero weights
    icpt[clf.classes_] = clf.intercept_
    if len(clf.classes_) < k:
        icpt[np.setdiff1d(np.arange(k), clf.classes_)] = -1e3
    if len(clf.classes_) == 2 and w.shape[0] == 1:  # sklearn returns one row for two classes
        coef[clf.classes_] = np.vstack([-w[0] / 2, w[0] / 2])
        icpt[clf.classes_] = [-clf.intercept_[0] / 2, clf.intercept_[0] / 2]
    return LinearHead(name, MULTICLASS, list(labels), mean, scale, coef, icpt,
                      {"C": best_c, "n_train": int(len(y))})


def fit_regression_head(name: str, emb: np.ndarray, y: np.ndarray,
                        groups: np.ndarray | None = None) -> LinearHead:
    """Fit a ridge head; alpha chosen by inner cross-validation (grouped by site if given)."""
    from sklearn.linear_model import Ridge

    emb = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    mean, scale = _standardise(emb)
    z, basis = _row_space((emb - mean) / scale)
    folds = _inner_cv(groups, len(y))
    best_a, best = ALPHA_GRID[0], np.inf
    for a in ALPHA_GRID:
        err = []
        for tr, te in folds:
            model = Ridge(alpha=a).fit(z[tr], y[tr])
            err.append(np.mean(np.abs(model.predict(z[te]) - y[te])))
        if np.mean(err) < best:
            best_a, best = a, float(np.mean(err))
    model = Ridge(alpha=best_a).fit(z, y)
    coef = model.coef_.ravel() if basis is None else basis.T @ model.coef_.ravel()
    return LinearHead(name, CONTINUOUS, [], mean, scale, coef.copy(),
                      float(model.intercept_), {"alpha": best_a, "n_train": int(len(y))})
