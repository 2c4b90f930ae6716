"""What every ABIDE recipe shares: citations, licence, the bundled heads and their evaluation.

The bundled models (``bidsfmfc``, ``bidsfmts``) are trained on the ABIDE I CC200 time series of
``../shared/data/abide`` (:func:`~bidsfm.models.training.data.load_abide`). Their heads
(diagnosis, sex, age: :data:`HEADS`) are evaluated leave-one-site-out
(:func:`bidsfm.evaluation.leave_site_out`) and then fitted on all participants; the recipes
are :mod:`.build_fc` (``bidsfmfc`` 1.0), :mod:`.build_tangent` (``bidsfmfc`` 2.x) and
:mod:`.build_ts` (``bidsfmts``). Nothing from the data is stored in the repository except the
trained weights, which the cards attribute to ABIDE.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ...evaluation import BINARY, CONTINUOUS, few_shot_curve, leave_site_out
from ...references import reference
from ..heads import fit_binary_head, fit_regression_head

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ABIDE_CITATION", "BRAINMASS_CITATION", "ABIDE_WEIGHTS_LICENCE",
           "ABIDE_LOSO_SCHEME", "HEADS", "abide_training_data", "cc200_atlas_card",
           "head_targets", "evaluate", "fc_baseline", "reference_fc", "few_shot", "in_sample",
           "format_table", "format_few_shot_table", "fit_bundled_heads"]

ABIDE_CITATION = [reference("abide"), reference("abide_pcp"), reference("cc200")]
BRAINMASS_CITATION = reference("brainmass")

#: licence of weights trained on ABIDE (every bundled model's card)
ABIDE_WEIGHTS_LICENCE = ("Weights: CC BY-NC-SA 4.0 (trained on ABIDE under its data usage "
                         "agreement); code: Apache-2.0.")
#: how the bundled models' heads are validated (card ``validation.scheme``, before what was
#: fitted without labels on all sites)
ABIDE_LOSO_SCHEME = ("leave-one-site-out over the 16 training sites; heads refitted without "
                     "each site (inner hyper-parameter search grouped by site).")


def abide_training_data(name: str, pheno: pd.DataFrame, series: list[np.ndarray],
                        **extra: Any) -> dict[str, Any]:
    """The card's ``training_data`` section of a model trained on the ABIDE participants."""
    n_vol = [len(s) for s in series]
    return {"name": name, "n_participants": int(len(pheno)),
            "sites": sorted(set(pheno["site"].astype(str))),
            "n_by_diagnosis": pheno["diagnosis"].value_counts().to_dict(),
            "volumes": [int(min(n_vol)), int(max(n_vol))], **extra,
            "terms": "ABIDE data usage agreement, CC BY-NC-SA", "citation": ABIDE_CITATION}


#: the heads of the bundled model: name -> (participants.tsv column, kind, labels, unit)
HEADS = {
    "diagnosis": ("diagnosis", BINARY, ["TC", "ASD"], None),
    "sex": ("sex", BINARY, ["M", "F"], None),
    "age": ("age", CONTINUOUS, [], "years"),
}


def cc200_atlas_card() -> dict[str, Any]:
    """The card's ``atlas`` section of the models trained on ABIDE (CC200, 200 ROIs)."""
    return {"name": "CC200", "template": "MNI152NLin6Asym", "n_rois": 200,
            "roi_order": "ascending CC200 label (1..200)",
            "roi_names": [f"CC200_{i:03d}" for i in range(1, 201)]}


def head_targets(pheno: pd.DataFrame, head: str) -> np.ndarray:
    """Targets of one of :data:`HEADS`: 0/1 (1 = its positive label) or values."""
    column, kind, labels, _unit = HEADS[head]
    if kind == BINARY:
        return (pheno[column].astype(str) == labels[1]).astype(int).to_numpy()
    return pheno[column].astype(float).to_numpy()


def evaluate(emb: np.ndarray, pheno: pd.DataFrame, heads: list[str] | None = None
             ) -> dict[str, dict[str, Any]]:
    """Leave-one-site-out figures of each head on the given embeddings."""
    out = {}
    sites = pheno["site"].astype(str).to_numpy()
    for head in heads or list(HEADS):
        _col, kind, labels, _unit = HEADS[head]
        res = leave_site_out(emb, head_targets(pheno, head), sites, kind, labels=labels)
        res.pop("oof")
        out[head] = res
    return out


def fc_baseline(fc: np.ndarray, pheno: pd.DataFrame, heads: list[str] | None = None
                ) -> dict[str, dict[str, Any]]:
    """The same heads on the raw FC upper triangle (the literature's baseline)."""
    iu = np.triu_indices(fc.shape[1], k=1)
    feats = np.nan_to_num(fc[:, iu[0], iu[1]], nan=0.0)
    return evaluate(feats, pheno, heads)


def reference_fc(fc: np.ndarray) -> np.ndarray:
    """Mean FC over participants, ignoring missing ROIs (the attribution baseline)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmean(fc, axis=0)
    return np.nan_to_num(ref, nan=0.0).astype(np.float32)


def few_shot(emb: np.ndarray, pheno: pd.DataFrame, shots=(5, 10, 20, 50), repeats: int = 5,
             seed: int = 0) -> dict[int, dict[str, float]]:
    """Few-shot diagnosis curve of embeddings of the ABIDE participants (:func:`few_shot_curve`)."""
    return few_shot_curve(emb, head_targets(pheno, "diagnosis"),
                          pheno["site"].astype(str).to_numpy(), shots, repeats, seed)


def in_sample(model, emb: np.ndarray, pheno: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The bundled heads applied to their own training data (in-sample, optimistic)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    out = {}
    for head_name, values in model.head_outputs(emb).items():
        y = head_targets(pheno, head_name)
        if HEADS[head_name][1] == BINARY:
            out[head_name] = {"auc": float(roc_auc_score(y, values)),
                              "balanced_accuracy": float(balanced_accuracy_score(y, values >= 0.5))}
        else:
            out[head_name] = {"mae": float(np.mean(np.abs(values - y))),
                              "r": float(np.corrcoef(values, y)[0, 1])}
    return out


def format_table(results: dict[str, dict[str, dict[str, Any]]]) -> str:
    """Markdown table of evaluation results: rows = (features, head)."""
    lines = ["| features | head | metric | leave-one-site-out (95% CI) | mean over sites |",
             "| --- | --- | --- | --- | --- |"]
    for feats, per_head in results.items():
        for head, r in per_head.items():
            if "auc" in r:
                lo, hi = r["auc_ci95"]
                lines.append(f"| {feats} | {head} | AUC | {r['auc']:.3f} ({lo:.3f}-{hi:.3f}) | "
                             f"{r['auc_mean_over_sites']:.3f} |")
                lines.append(f"| {feats} | {head} | balanced accuracy | "
                             f"{r['balanced_accuracy']:.3f} | |")
            else:
                lo, hi = r["mae_ci95"]
                rlo, rhi = r["r_ci95"]
                lines.append(f"| {feats} | {head} | MAE (years) | {r['mae']:.2f} "
                             f"({lo:.2f}-{hi:.2f}); predicting the mean: "
                             f"{r['mae_predict_mean']:.2f} | |")
                lines.append(f"| {feats} | {head} | r | {r['r']:.3f} ({rlo:.3f}-{rhi:.3f}) | |")
    return "\n".join(lines)


def format_few_shot_table(curves: dict[str, dict[int, dict[str, float]]]) -> str:
    """Markdown table of few-shot curves (as returned by :func:`few_shot`): rows = features."""
    shots = sorted(next(iter(curves.values())))
    lines = ["| features | " + " | ".join(f"k={k}" for k in shots) + " |",
             "| --- |" + " --- |" * len(shots)]
    for label, curve in curves.items():
        lines.append(f"| {label} | " + " | ".join(f"{curve[k]['auc_mean']:.3f} +- "
                                                  f"{curve[k]['auc_sd']:.3f}" for k in shots)
                     + " |")
    return "\n".join(lines)


def fit_bundled_heads(emb: np.ndarray, pheno, validation: dict[str, Any]) -> list:
    """Fit the bundled heads (diagnosis, sex, age) on all of ABIDE, with their LOSO figures.

    Parameters
    ----------
    emb : np.ndarray
        (N, E) embeddings of the participants of ``pheno``.
    pheno : pandas.DataFrame
        ABIDE phenotypes (``site`` and the heads' columns).
    validation : dict
        :func:`evaluate` results per head, stored in each head's info.
    """
    sites = pheno["site"].astype(str).to_numpy()
    heads = []
    for head_name, (_col, kind, labels, unit) in HEADS.items():
        y = head_targets(pheno, head_name)
        if kind == BINARY:
            head = fit_binary_head(head_name, emb, y, labels, sites)
        else:
            head = fit_regression_head(head_name, emb, y, sites)
            head.info["unit"] = unit
        head.info["validation"] = validation[head_name]
        heads.append(head)
    return heads
