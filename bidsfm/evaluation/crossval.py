"""Folds and out-of-fold predictions of heads refitted on each fold's training side.

Fold schemes (:func:`make_folds`, recorded in the group level's metrics.json):

- with groups (``--group-column``, the site): leave-one-group-out when there are at most
  :data:`MAX_LOGO_GROUPS` groups, otherwise grouped k-fold (``n_folds``, default 10); a
  participant's site is never on both sides of a fold;
- without: stratified k-fold (``n_folds``, default 5; shuffled k-fold for continuous targets),
  with k reduced to the smallest class size for few-shot cohorts (5 labelled participants per
  class give 5 folds of one participant per class). Leave-one-out is avoided on purpose: with a
  regularised head, removing one participant shifts the training class balance (or mean)
  against it, which biases pooled out-of-fold AUC and r downwards (to AUC 0 in the limit of
  strong regularisation); stratified folds keep the training balance constant.

Every fold fits the head from scratch (:func:`fit_head`, including its inner, grouped
hyper-parameter search) on the training side only, so the out-of-fold predictions
(:func:`out_of_fold`) are honest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..models.heads import (
    BINARY,
    CONTINUOUS,
    MULTICLASS,
    LinearHead,
    fit_binary_head,
    fit_multiclass_head,
    fit_regression_head,
    task_type,
)

__all__ = ["MAX_LOGO_GROUPS", "make_folds", "fit_head", "out_of_fold", "cross_validate"]

#: at most this many groups give leave-one-group-out folds (more: grouped k-fold)
MAX_LOGO_GROUPS = 20


def make_folds(task: str, y: np.ndarray, groups: np.ndarray | None = None,
               n_folds: int | None = None, seed: int = 0
               ) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Train/test index pairs and a description of the scheme (see the module docstring).

    Parameters
    ----------
    task : str
        Task type (:data:`TASK_TYPES`).
    y : np.ndarray
        (N,) class indices or values.
    groups : np.ndarray, optional
        (N,) group (site) of each participant: folds never split a group.
    n_folds : int, optional
        Force k-fold (grouped with ``groups``) instead of the automatic choice.
    seed : int
        Seed of shuffled k-fold.

    Returns
    -------
    folds : list of (np.ndarray, np.ndarray)
        Training and test indices.
    scheme : str
        E.g. ``leave-one-group-out (4 groups)``, ``stratified 5-fold (shuffled, seed 0)``.
    """
    from sklearn.model_selection import (
        GroupKFold,
        KFold,
        LeaveOneGroupOut,
        LeaveOneOut,
        StratifiedKFold,
    )

    n = len(y)
    x = np.zeros(n)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < 2:
            raise ValueError(f"only one group in the group column ({groups[0]}); "
                             "cross-validation by group needs at least 2")
        if n_groups <= MAX_LOGO_GROUPS and not n_folds:
            folds = list(LeaveOneGroupOut().split(x, groups=groups))
            return folds, f"leave-one-group-out ({n_groups} groups)"
        k = min(n_folds or 10, n_groups)
        folds = list(GroupKFold(n_splits=k).split(x, groups=groups))
        return folds, f"grouped {k}-fold ({n_groups} groups)"
    if task == CONTINUOUS:
        k = min(n_folds or 5, n)
        return (list(KFold(n_splits=k, shuffle=True, random_state=seed).split(x)),
                f"{k}-fold (shuffled, seed {seed})")
    smallest = int(np.bincount(y).min())
    k = min(n_folds or 5, smallest)
    if k < 2:
        return list(LeaveOneOut().split(x)), "leave-one-out (a class has one participant)"
    few = f" (few-shot: smallest class {smallest})" if smallest < 20 else ""
    return (list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y)),
            f"stratified {k}-fold (shuffled, seed {seed}){few}")


def fit_head(task: str, emb: np.ndarray, y: np.ndarray, labels: Sequence[str] = (),
             groups: np.ndarray | None = None, name: str = "cv") -> LinearHead:
    """Fit the head of a task type on (N, E) embeddings (inner search grouped by ``groups``).

    Parameters
    ----------
    task : str
        Task type (a card's ``regression`` is read as ``continuous``).
    emb : np.ndarray
        (N, E) embeddings.
    y : np.ndarray
        (N,) class indices (0/1 for binary) or values.
    labels : sequence of str
        Class names (classification).
    groups : np.ndarray, optional
        (N,) site of each participant.
    name : str
        Head name.

    Returns
    -------
    LinearHead
    """
    task = task_type(task)
    if task == BINARY:
        return fit_binary_head(name, emb, y, list(labels) or ["0", "1"], groups)
    if task == CONTINUOUS:
        return fit_regression_head(name, emb, y, groups)
    return fit_multiclass_head(name, emb, y, list(labels), groups)


def out_of_fold(task: str, emb: np.ndarray, y: np.ndarray,
                folds: Sequence[tuple[np.ndarray, np.ndarray]], labels: Sequence[str] = (),
                groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Predictions of heads refitted on each fold's training side for its test side.

    Parameters
    ----------
    task : str
        Task type.
    emb : np.ndarray
        (N, E) embeddings.
    y : np.ndarray
        (N,) class indices or values.
    folds : sequence of (np.ndarray, np.ndarray)
        Training and test indices (:func:`make_folds`).
    labels : sequence of str
        Class names (classification).
    groups : np.ndarray, optional
        (N,) site of each participant (each fold's inner search is grouped by it).

    Returns
    -------
    scores : np.ndarray
        (N,) P(positive) for binary, (N, K) probabilities for multi-class, values for
        continuous; NaN for participants in no test side.
    fold : np.ndarray
        (N,) index of the fold that predicted each participant (-1 for none).

    Raises
    ------
    ValueError
        When a classification fold has a single class on its training side.
    """
    task = task_type(task)
    x = np.asarray(emb, dtype=np.float64)
    y = np.asarray(y)
    n = len(y)
    scores = np.full((n, len(labels)) if task == MULTICLASS else n, np.nan)
    fold_of = np.full(n, -1)
    for f, (tr, te) in enumerate(folds):
        if task != CONTINUOUS and len(np.unique(y[tr])) < 2:
            raise ValueError(f"fold {f}: the training side has a single class; use fewer folds "
                             "or more labelled participants")
        head = fit_head(task, x[tr], y[tr], labels, None if groups is None else groups[tr])
        scores[te] = head.predict(x[te])
        fold_of[te] = f
    return scores, fold_of


def cross_validate(task: str, emb: np.ndarray, y: np.ndarray, labels: Sequence[str] = (),
                   groups: np.ndarray | None = None, n_folds: int | None = None, seed: int = 0
                   ) -> dict[str, Any]:
    """Out-of-fold predictions of a head on labelled participants' embeddings.

    Parameters
    ----------
    task : str
        Task type.
    emb : np.ndarray
        (N, E) embeddings of the labelled participants (rows aligned with ``y``).
    y : np.ndarray
        (N,) class indices or values.
    labels : sequence of str
        Class names (classification).
    groups : np.ndarray, optional
        (N,) site of each participant (grouped folds).
    n_folds : int, optional
        Force k-fold (grouped with ``groups``) instead of the automatic choice.
    seed : int
        Seed of shuffled k-fold.

    Returns
    -------
    dict
        ``scores`` (see :func:`out_of_fold`), ``fold``, ``scheme``, ``n_folds``.
    """
    folds, scheme = make_folds(task_type(task), y, groups, n_folds, seed)
    scores, fold_of = out_of_fold(task, emb, y, folds, labels, groups)
    return {"scores": scores, "fold": fold_of, "scheme": scheme, "n_folds": len(folds)}
