"""Cross-validated heads on frozen subject embeddings: fold schemes and out-of-fold predictions.

Scheme (chosen from the data, recorded in metrics.json):

- with ``--group-column`` (site): leave-one-group-out when there are at most
  :data:`MAX_LOGO_GROUPS` groups, otherwise grouped k-fold (``n_folds``, default 10); a
  participant's site is never in both the training and the test side of a fold;
- without it: stratified k-fold (``n_folds``, default 5; shuffled k-fold for continuous
  targets), with k reduced to the smallest class size for few-shot cohorts (5 labelled
  participants per class give 5 folds of one participant per class). Leave-one-out is avoided
  on purpose: with a regularised head, removing one participant shifts the training class
  balance (or mean) against it, which biases pooled out-of-fold AUC and r downwards
  (to AUC 0 in the limit of strong regularisation); stratified folds keep the training
  balance constant.

Every fold fits the head from scratch (including its inner, grouped hyper-parameter search) on
the training side only, so the out-of-fold predictions are honest.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .targets import BINARY, CONTINUOUS, Target

MAX_LOGO_GROUPS = 20


def make_folds(target: Target, n_folds: int | None = None, seed: int = 0
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/test index pairs and a description of the scheme."""
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        LeaveOneGroupOut,
        LeaveOneOut,
        StratifiedKFold,
    )

    n = len(target.y)
    x = np.zeros(n)
    if target.groups is not None:
        n_groups = len(np.unique(target.groups))
        if n_groups < 2:
            raise ValueError(f"only one group in the group column ({target.groups[0]}); "
                             "cross-validation by group needs at least 2")
        if n_groups <= MAX_LOGO_GROUPS and not n_folds:
            folds = list(LeaveOneGroupOut().split(x, groups=target.groups))
            return folds, f"leave-one-group-out ({n_groups} groups)"
        k = min(n_folds or 10, n_groups)
        folds = list(GroupKFold(n_splits=k).split(x, groups=target.groups))
        return folds, f"grouped {k}-fold ({n_groups} groups)"
    if target.task_type == CONTINUOUS:
        k = min(n_folds or 5, n)
        return (list(KFold(n_splits=k, shuffle=True, random_state=seed).split(x)),
                f"{k}-fold (shuffled, seed {seed})")
    smallest = int(np.bincount(target.y).min())
    k = min(n_folds or 5, smallest)
    if k < 2:
        return list(LeaveOneOut().split(x)), "leave-one-out (a class has one participant)"
    few = f" (few-shot: smallest class {smallest})" if smallest < 20 else ""
    return (list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, target.y)),
            f"stratified {k}-fold (shuffled, seed {seed}){few}")


def fit_head(target: Target, emb: np.ndarray, name: str | None = None,
             groups: np.ndarray | None = None):
    """Fit the head type of ``target`` on (N, E) embeddings (inner search grouped by site)."""
    from ..models.heads import fit_binary_head, fit_multiclass_head, fit_regression_head

    name = name or target.column
    if target.task_type == BINARY:
        return fit_binary_head(name, emb, target.y, target.labels, groups)
    if target.task_type == CONTINUOUS:
        return fit_regression_head(name, emb, target.y, groups)
    return fit_multiclass_head(name, emb, target.y, target.labels, groups)


def _subset(target: Target, idx: np.ndarray) -> Target:
    return Target(target.column, target.task_type, [target.ids[i] for i in idx], target.rows[idx],
                  target.y[idx], target.labels,
                  None if target.groups is None else target.groups[idx], 0)


def cross_validate(target: Target, emb: np.ndarray, n_folds: int | None = None, seed: int = 0
                   ) -> dict[str, Any]:
    """Out-of-fold predictions of the target's head on its participants' embeddings.

    Parameters
    ----------
    target : Target
        Labels aligned with ``emb`` (``emb[target.rows]`` are the labelled participants).
    emb : np.ndarray
        (P, E) subject embeddings.
    n_folds : int, optional
        Force k-fold (grouped when there is a group column) instead of the automatic choice.
    seed : int
        Seed of shuffled k-fold.

    Returns
    -------
    dict
        ``scores``: (N,) P(positive) for binary, (N, K) probabilities for multi-class, values
        for continuous; ``fold``: (N,) fold index; ``scheme``; ``n_folds``.
    """
    x = np.asarray(emb, dtype=np.float64)[target.rows]
    folds, scheme = make_folds(target, n_folds, seed)
    n = len(target.y)
    k = len(target.labels)
    scores = np.full((n, k) if target.task_type not in (BINARY, CONTINUOUS) else n, np.nan)
    fold_of = np.full(n, -1)
    for f, (tr, te) in enumerate(folds):
        sub = _subset(target, tr)
        if target.task_type != CONTINUOUS and len(np.unique(sub.y)) < 2:
            raise ValueError(f"fold {f}: the training side has a single class; use fewer folds "
                             "or more labelled participants")
        head = fit_head(sub, x[tr], groups=sub.groups)
        scores[te] = head.predict(x[te])
        fold_of[te] = f
    return {"scores": scores, "fold": fold_of, "scheme": scheme, "n_folds": len(folds)}
