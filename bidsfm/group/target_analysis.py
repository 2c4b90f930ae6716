"""One ``--target``: cross-validated head, metrics, figures, attention and the final head.

Writes ``group/target-<COLUMN>/``: ``predictions.tsv``, ``metrics.tsv``, ``metrics.json``,
``figures/roc.png`` or ``figures/scatter.png``, ``attention.tsv`` and ``head/`` (see
docs/group.md).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..evaluation import (
    BINARY,
    CONTINUOUS,
    compute_metrics,
    cross_validate,
    fit_head,
    uncertainty_statement,
)
from .targets import Target

LOGGER = logging.getLogger("bidsfm.group")


def target_label(column: str) -> str:
    """Folder label of a column: letters and digits only (``target-<label>``)."""
    label = re.sub(r"[^A-Za-z0-9]", "", column)
    return label or "unnamed"


def _predictions_frame(target: Target, cv: dict[str, Any], group_column: str | None
                       ) -> pd.DataFrame:
    frame = pd.DataFrame({"participant_id": target.ids})
    if group_column:
        frame[group_column] = target.groups
    s = cv["scores"]
    if target.task_type == CONTINUOUS:
        frame["true"] = target.y
        frame["predicted"] = s
        frame["score"] = s
    elif target.task_type == BINARY:
        frame["true"] = [target.labels[i] for i in target.y]
        frame["predicted"] = [target.labels[int(v >= 0.5)] for v in s]
        frame["probability"] = s
    else:
        frame["true"] = [target.labels[i] for i in target.y]
        frame["predicted"] = [target.labels[i] for i in s.argmax(axis=1)]
        frame["probability"] = s.max(axis=1)
        for k, lab in enumerate(target.labels):
            frame[f"probability_{target_label(lab)}"] = s[:, k]
    frame["fold"] = cv["fold"]
    return frame


def run_target(target: Target, emb: np.ndarray, subject_ids: list[str], folder: Path, *,
               model, model_card: dict[str, Any], fc_by_participant: dict[str, list[Path]],
               group_column: str | None, n_folds: int | None, n_boot: int,
               attention_participants: int, attention_steps: int,
               provenance: dict[str, Any],
               harmonization: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole analysis of one target and write its folder.

    Parameters
    ----------
    target : Target
        Labels aligned with ``emb``.
    emb : np.ndarray
        (P, E) subject embeddings (``subject_ids`` order).
    subject_ids : list of str
        ``sub-X`` of the rows of ``emb``.
    folder : Path
        ``group/target-<COLUMN>``.
    model : FoundationModel or None
        For the attention of the new head (None: no attention).
    model_card : dict
        Card of the model the embeddings come from.
    fc_by_participant : dict
        ``sub-X`` -> FC TSVs of its encoded runs.
    group_column : str or None
        Site/group column.
    n_folds : int or None
        Force k-fold.
    n_boot : int
        Bootstrap resamples of the intervals.
    attention_participants : int
        At most this many participants for the attention (0 = none).
    attention_steps : int
        Integrated-gradients steps.
    provenance : dict
        Extra card entries (participants table, version, time).
    harmonization : dict, optional
        How ``emb`` was site-harmonised (``--harmonize``); recorded in metrics.json and the
        head card. ``emb`` is then already harmonised.

    Returns
    -------
    dict
        The content of metrics.json.
    """
    from ..utils import write_json_atomic
    from .collect import write_table
    from .figures import roc_figure, scatter_figure
    from .heads_io import save_head

    x = np.asarray(emb, dtype=np.float64)[target.rows]
    cv = cross_validate(target.task_type, x, target.y, target.labels, target.groups,
                        n_folds=n_folds)
    k = len(target.labels)
    metrics = compute_metrics(target.task_type, target.y, cv["scores"], n_classes=max(k, 2),
                              n_boot=n_boot)
    n_per_class = None
    if target.task_type != CONTINUOUS:
        counts = np.bincount(target.y, minlength=k)
        n_per_class = {lab: int(c) for lab, c in zip(target.labels, counts, strict=True)}
    statement = uncertainty_statement(target.task_type, metrics, len(target.y), n_per_class,
                                      cv["scheme"])
    write_table(_predictions_frame(target, cv, group_column), folder / "predictions.tsv")
    rows = [{"metric": m, "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]}
            for m, v in metrics.items()]
    write_table(pd.DataFrame(rows, columns=["metric", "value", "ci_low", "ci_high"]),
                folder / "metrics.tsv")
    title = f"{target.column} ({cv['scheme'].split(' (')[0]}, n={len(target.y)})"
    if target.task_type == CONTINUOUS:
        scatter_figure(folder / "figures" / "scatter.png", target.y, cv["scores"], title)
        figure = "figures/scatter.png"
    else:
        roc_figure(folder / "figures" / "roc.png", target.y, cv["scores"], target.labels, title)
        figure = "figures/roc.png"

    head = fit_head(target.task_type, x, target.y, target.labels, target.groups,
                    name=target.column)
    summary = {
        "target": target.column, "task_type": target.task_type,
        "classes": target.labels or None,
        "positive_label": target.labels[1] if target.task_type == BINARY else None,
        "n": int(len(target.y)), "n_per_class": n_per_class,
        "n_without_label": int(target.n_missing),
        "cv": {"scheme": cv["scheme"], "n_folds": int(cv["n_folds"]),
               "group_column": group_column,
               "unit": "participant (run embeddings averaged)",
               "head": "standardised embedding -> L2 logistic (binary, multinomial for "
                       "multi-class) or ridge (continuous); regularisation chosen by an inner "
                       "cross-validation on the training side of each fold (grouped by the group "
                       "column when given)"},
        "uncertainty": statement,
        "metrics": metrics,
        "model": {k2: model_card.get(k2) for k2 in ("name", "version", "sha256")},
        "harmonization": harmonization,
        "figure": figure,
        "head": "head/",
    }
    info = {"task_type": target.task_type, "target_column": target.column,
            "positive_label": summary["positive_label"], "n": summary["n"],
            "n_per_class": n_per_class, "cv": {"scheme": cv["scheme"],
                                               "n_folds": summary["cv"]["n_folds"],
                                               "group_column": group_column,
                                               "metrics": metrics},
            "uncertainty": statement, "fitted_on": "all labelled participants' run-averaged "
            "embeddings" + (f", harmonised across {harmonization['column']} "
                            f"({harmonization['method']})" if harmonization else ""),
            "harmonization": harmonization, **provenance}
    save_head(folder / "head", head, model_card, info)

    if model is not None and attention_participants:
        from .attention import head_attention, pick_participants

        labelled = [p for p in target.ids if p in fc_by_participant]
        chosen = pick_participants(labelled, attention_participants)
        att = head_attention(model, head, {p: fc_by_participant[p] for p in chosen},
                             steps=attention_steps)
        frame = pd.DataFrame({"name": att["names"], **att["columns"]})
        write_table(frame, folder / "attention.tsv")
        summary["attention"] = {
            "method": "integrated gradients of the head's logit (binary), centred class logits "
                      f"(multi-class) or value (continuous) from {model.attribution_baseline}, "
                      f"{attention_steps} steps, summed over each ROI's "
                      f"{model.attribution_unit}, averaged over each participant's runs and "
                      "then over participants" + (
                          "; the head (fitted on harmonised embeddings) is applied to the "
                          "model's raw embeddings, so per-site offsets cancel in the "
                          "attribution and ComBat's per-site scaling is not included"
                          if harmonization else ""),
            "n_participants": att["n_participants"], "n_runs": att["n_runs"]}
    write_json_atomic(folder / "metrics.json", summary)
    return summary
