"""Per-ROI attention of a group-level head: integrated gradients averaged over participants.

The head is linear on the run-averaged embedding, so a participant's prediction is the mean of
the head applied to each run's embedding; the integrated-gradients attribution of each run (the
model's own machinery, :mod:`bidsfm.models.attention`, with the model's reference-FC baseline)
is averaged over the participant's runs, then over participants. At most ``max_participants``
participants are used (evenly spaced over the sorted labelled participants, so the figure is
deterministic), because attribution costs one forward pass per integration step (shared by the
classes of a multi-class head) and one backward pass per step and class.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..models.heads import MULTICLASS, LinearHead


def pick_participants(ids: list[str], max_participants: int) -> list[str]:
    """Evenly spaced subset of the sorted ids (all when there are few)."""
    ids = sorted(ids)
    if max_participants <= 0 or len(ids) <= max_participants:
        return ids
    pick = np.unique(np.linspace(0, len(ids) - 1, max_participants).round().astype(int))
    return [ids[i] for i in pick]


def head_attention(model, head: LinearHead, fc_by_participant: dict[str, list[Path]],
                   steps: int = 32) -> dict[str, Any]:
    """Mean per-ROI attribution of ``head`` over participants.

    Parameters
    ----------
    model : bidsfm.models.card.Model
        The model whose embeddings the head reads (either family).
    head : LinearHead
        A binary, regression or multi-class head.
    fc_by_participant : dict
        ``sub-X`` -> FC relmat TSVs of its runs (model atlas, model ROI order).
    steps : int
        Integrated-gradients steps.

    Returns
    -------
    dict
        ``names`` (ROI names), ``columns`` {column name: (R,) values}: ``attention`` (mean signed
        attribution; for multi-class heads the root-mean-square over classes of the per-class
        means, with one ``attention_<class>`` column per class) and ``attention_abs`` (mean
        absolute attribution), ``n_participants``, ``n_runs``.
    """
    names = model.roi_names
    if head.kind == MULTICLASS:
        heads = {f"attention_{lab}": head.class_head(k) for k, lab in enumerate(head.labels)}
    else:
        heads = {"attention": head}
    per_head = {key: [] for key in heads}
    n_runs = n_participants = 0
    for _pid, paths in sorted(fc_by_participant.items()):
        # the model's inputs for these runs (FC matrices, or the time series beside them; a
        # time-series model leaves out runs shorter than its window)
        inputs, _skipped = model.read_inputs(paths)
        if not len(inputs):
            continue
        n_runs += len(inputs)
        n_participants += 1
        # all (class) heads from shared forward passes
        atts = model.attributions(inputs, heads, steps=steps)
        for key in heads:
            with warnings.catch_warnings():  # an ROI missing in every run stays NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                per_head[key].append(np.nanmean(atts[key], axis=0))
    cols: dict[str, np.ndarray] = {}
    for key, rows in per_head.items():
        arr = np.vstack(rows) if rows else np.full((0, len(names)), np.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            cols[key] = np.nanmean(arr, axis=0) if len(arr) else np.full(len(names), np.nan)
            if key == "attention":
                cols["attention_abs"] = np.nanmean(np.abs(arr), axis=0)
    if head.kind == MULTICLASS:
        stack = np.vstack([cols[k] for k in heads])
        cols = {"attention": np.sqrt(np.nanmean(stack ** 2, axis=0)), **cols}
    return {"names": names, "columns": cols, "n_participants": n_participants,
            "n_runs": n_runs}
