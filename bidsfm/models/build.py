"""Build and evaluate the bundled FC model from the ABIDE CC200 time series.

``scripts/train_fc_model.py`` calls :func:`build_fc_model` (pretraining, heads, card);
``benchmarks/evaluate_fc_model.py`` calls :func:`evaluate` to recompute the leave-one-site-out
figures of a model from the data, printing a table. Both read the data from
``../shared/data/abide`` (or a path given by the user); nothing from it is stored in the repo
except the trained weights, which the card attributes to ABIDE.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .heads import BINARY, REGRESSION, fit_binary_head, fit_regression_head, leave_site_out

ABIDE_CITATION = [
    "Di Martino A. et al. (2014) The autism brain imaging data exchange: towards a large-scale "
    "evaluation of the intrinsic brain architecture in autism. Mol Psychiatry 19:659-667.",
    "Craddock C. et al. (2013) The Neuro Bureau Preprocessing Initiative: open sharing of "
    "preprocessed neuroimaging data and derivatives. Front Neuroinform (ABIDE Preprocessed, "
    "Preprocessed Connectomes Project).",
    "Craddock R.C. et al. (2012) A whole brain fMRI atlas generated via spatially constrained "
    "spectral clustering. Hum Brain Mapp 33:1914-1928 (CC200 atlas).",
]
BRAINMASS_CITATION = ("Yang Y. et al. (2024) BrainMass: Advancing brain network analysis for "
                      "diagnosis with large-scale self-supervised learning. IEEE Trans Med "
                      "Imaging.")

#: the heads of the bundled model: name -> (participants.tsv column, kind, labels, unit)
HEADS = {
    "diagnosis": ("diagnosis", BINARY, ["TC", "ASD"], None),
    "sex": ("sex", BINARY, ["M", "F"], None),
    "age": ("age", REGRESSION, [], "years"),
}


def shared_abide(shared_data: str | Path | None = None) -> Path:
    """Folder of the ABIDE data (``shared_data``/abide, env BIDSFM_SHARED_DATA, ../shared)."""
    import os

    if shared_data is None:
        env = os.environ.get("BIDSFM_SHARED_DATA")
        shared_data = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"
    path = Path(shared_data)
    path = path / "abide" if (path / "abide").is_dir() else path
    if not (path / "cc200_timeseries.npz").is_file():
        from ..errors import ConfigError

        raise ConfigError("ABIDE CC200 time series not found", path=path,
                          remedy="Pass the folder holding cc200_timeseries.npz and "
                                 "participants.tsv")
    return path


def load_abide(shared_data: str | Path | None = None, max_subjects: int | None = None
               ) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Phenotypes (participants.tsv rows) and CC200 time series, in the same order."""
    from .pretrain import load_timeseries_npz

    folder = shared_abide(shared_data)
    pheno = pd.read_csv(folder / "participants.tsv", sep="\t")
    if max_subjects:
        pheno = pheno.iloc[:max_subjects]
    loaded = load_timeseries_npz(folder / "cc200_timeseries.npz", folder / "participants.tsv",
                                 ids=list(pheno["participant_id"]))
    series = {pid: ts for pid, ts in loaded}
    return pheno.reset_index(drop=True), [series[p] for p in pheno["participant_id"]]


def full_fc(series: list[np.ndarray]) -> np.ndarray:
    """Pearson FC of every series (all time points), NaN rows for all-zero ROIs."""
    from .brainmass import fc_from_timeseries

    return np.stack([np.asarray(fc_from_timeseries(ts), dtype=np.float32) for ts in series])


def _targets(pheno: pd.DataFrame, head: str) -> np.ndarray:
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
        res = leave_site_out(emb, _targets(pheno, head), sites, kind, labels=labels)
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


def attach_reference(folder: str | Path, shared_data: str | Path | None = None) -> None:
    """Add the reference FC to an existing model folder (re-saving weights and card)."""
    import json

    from .registry import load_model, save_model

    model = load_model(folder)
    _pheno, series = load_abide(shared_data)
    card = json.loads((Path(folder) / "card.json").read_text())
    card["attribution"] = {"method": "integrated gradients", "baseline": "reference FC: mean "
                           "FC of the training participants (stored as reference.fc)"}
    save_model(folder, card, model.encoder, list(model.heads.values()),
               reference_fc=reference_fc(full_fc(series)))


def few_shot(emb: np.ndarray, pheno: pd.DataFrame, shots=(5, 10, 20, 50), repeats: int = 5,
             seed: int = 0) -> dict[int, dict[str, float]]:
    """Few-shot diagnosis curve, leave-one-site-out.

    For each held-out site and repeat, ``k`` ASD and ``k`` TC participants are drawn from the
    other 15 sites, a head is fitted on them alone and scores the held-out site. The pooled AUC
    over sites is computed per repeat; the mean and standard deviation over repeats are returned.
    """
    from sklearn.metrics import roc_auc_score

    y = _targets(pheno, "diagnosis")
    sites = pheno["site"].astype(str).to_numpy()
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
                head = fit_binary_head("few", emb[pick], y[pick], ["TC", "ASD"])
                oof[te] = head.predict(emb[te])
            aucs.append(roc_auc_score(y, oof))
        out[int(k)] = {"auc_mean": float(np.mean(aucs)), "auc_sd": float(np.std(aucs)),
                       "repeats": repeats}
    return out


def in_sample(model, emb: np.ndarray, pheno: pd.DataFrame) -> dict[str, dict[str, float]]:
    """The bundled heads applied to their own training data (in-sample, optimistic)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    out = {}
    for head_name, values in model.head_outputs(emb).items():
        y = _targets(pheno, head_name)
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


def build_fc_model(out_dir: str | Path, *, shared_data: str | Path | None = None,
                   model_cfg=None, pretrain_cfg=None, name: str = "bidsfmfc",
                   version: str = "1.0.0", max_subjects: int | None = None,
                   log_path: str | Path | None = None, with_baseline: bool = True
                   ) -> dict[str, Any]:
    """Pretrain the encoder on ABIDE, fit the heads, evaluate them and save model + card.

    Returns
    -------
    dict
        The model card (also written to ``out_dir/card.json``).
    """
    import torch

    from .brainmass import BrainMassConfig, embed_fc
    from .pretrain import PretrainConfig, pretrain
    from .registry import save_model

    pheno, series = load_abide(shared_data, max_subjects)
    model_cfg = model_cfg or BrainMassConfig(n_rois=200)
    pretrain_cfg = pretrain_cfg or PretrainConfig()
    t0 = time.time()
    encoder, logs = pretrain(series, model_cfg, pretrain_cfg, log_path=log_path)
    train_seconds = time.time() - t0
    encoder = encoder.cpu().eval()
    fc = full_fc(series)
    with torch.no_grad():
        emb = np.asarray(embed_fc(encoder, fc))
    sites = pheno["site"].astype(str).to_numpy()
    validation = evaluate(emb, pheno)
    heads = []
    for head_name, (_col, kind, labels, unit) in HEADS.items():
        y = _targets(pheno, head_name)
        if kind == BINARY:
            head = fit_binary_head(head_name, emb, y, labels, sites)
        else:
            head = fit_regression_head(head_name, emb, y, sites)
            head.info["unit"] = unit
        head.info["validation"] = validation[head_name]
        heads.append(head)
    baseline = fc_baseline(fc, pheno) if with_baseline else None
    n_vol = [len(s) for s in series]
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "family": "brainmass",
        "description": "BrainMass-style functional-connectivity encoder (FC rows as tokens, "
                       "post-norm Transformer, Linear(R, 8) + LeakyReLU readout) pretrained by "
                       "the bidsfm developers with Latent Representation Alignment (BYOL) + "
                       "Mask-ROI Modelling, with linear heads on the frozen embedding.",
        "atlas": {"name": "CC200", "template": "MNI152NLin6Asym", "n_rois": 200,
                  "roi_order": "ascending CC200 label (1..200)",
                  "roi_names": [f"CC200_{i:03d}" for i in range(1, 201)]},
        "input": {"kind": "Pearson FC (R x R) of denoised ROI time series",
                  "min_volumes": 50, "target_tr": None,
                  "normalisation": "none needed: Pearson correlation is invariant to each "
                                   "ROI's offset and scale, the same at training and inference",
                  "missing_rois": "n/a (low-coverage) and all-zero ROIs are NaN rows, replaced "
                                  "by the learned mask token and excluded as attention keys"},
        "encoder_config": model_cfg.to_dict(),
        "embedding_size": int(emb.shape[1]),
        "pretraining": {"objectives": ["latent representation alignment (BYOL, EMA target)",
                                       "mask-ROI modelling"],
                        "config": pretrain_cfg.to_dict(),
                        "final_epoch": logs[-1] if logs else None,
                        "seconds": round(train_seconds, 1),
                        "device": str(pretrain_cfg.device)},
        "training_data": {
            "name": "ABIDE I (Preprocessed Connectomes Project, C-PAC, no band-pass, no GSR), "
                    "CC200 ROI time series",
            "n_participants": int(len(pheno)), "sites": sorted(set(sites)),
            "n_by_diagnosis": pheno["diagnosis"].value_counts().to_dict(),
            "volumes": [int(min(n_vol)), int(max(n_vol))],
            "terms": "ABIDE data usage agreement, CC BY-NC-SA",
            "citation": ABIDE_CITATION,
        },
        "validation": {
            "scheme": "leave-one-site-out over the 16 training sites; heads refitted without "
                      "each site (inner hyper-parameter search grouped by site). The encoder "
                      "was pretrained (without labels) on all 16 sites.",
            "fc_baseline": baseline,
        },
        "licence": "Weights: CC BY-NC-SA 4.0 (trained on ABIDE under its data usage "
                   "agreement); code: Apache-2.0.",
        "citation": [BRAINMASS_CITATION] + ABIDE_CITATION,
    }
    card["attribution"] = {"method": "integrated gradients", "baseline": "reference FC: mean "
                           "FC of the training participants (stored as reference.fc)"}
    save_model(out_dir, card, encoder, heads, reference_fc=reference_fc(fc))
    import json

    return json.loads((Path(out_dir) / "card.json").read_text())
