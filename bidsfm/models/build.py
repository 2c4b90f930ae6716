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


def few_shot(emb: np.ndarray, pheno: pd.DataFrame, shots=(5, 10, 20, 50), repeats: int = 5,
             seed: int = 0) -> dict[int, dict[str, float]]:
    """Few-shot diagnosis curve of embeddings of the ABIDE participants (:func:`few_shot_curve`)."""
    return few_shot_curve(emb, _targets(pheno, "diagnosis"),
                          pheno["site"].astype(str).to_numpy(), shots, repeats, seed)


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
        y = _targets(pheno, head_name)
        if kind == BINARY:
            head = fit_binary_head(head_name, emb, y, labels, sites)
        else:
            head = fit_regression_head(head_name, emb, y, sites)
            head.info["unit"] = unit
        head.info["validation"] = validation[head_name]
        heads.append(head)
    return heads


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
    validation = evaluate(emb, pheno)
    heads = fit_bundled_heads(emb, pheno, validation)
    baseline = fc_baseline(fc, pheno) if with_baseline else None
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
        "training_data": abide_training_data(
            "ABIDE I (Preprocessed Connectomes Project, C-PAC, no band-pass, no GSR), "
            "CC200 ROI time series", pheno, series),
        "validation": {
            "scheme": ABIDE_LOSO_SCHEME + " The encoder was pretrained (without labels) on all "
                                          "16 sites.",
            "fc_baseline": baseline,
        },
        "licence": ABIDE_WEIGHTS_LICENCE,
        "citation": [BRAINMASS_CITATION] + ABIDE_CITATION,
    }
    card["attribution"] = {"method": "integrated gradients", "baseline": "reference FC: mean "
                           "FC of the training participants (stored as reference.fc)"}
    save_model(out_dir, card, encoder, heads, reference_fc=reference_fc(fc))
    import json

    return json.loads((Path(out_dir) / "card.json").read_text())


# ------------------------------------------------------------------ time-series (Brain-JEPA) model
BRAINJEPA_CITATION = ("Dong Z. et al. (2024) Brain-JEPA: Brain dynamics foundation model with "
                      "gradient positioning and spatiotemporal masking. NeurIPS 2024.")
GRADIENT_CITATIONS = [
    "Margulies D.S. et al. (2016) Situating the default-mode network along a principal "
    "gradient of macroscale cortical organization. PNAS 113:12574-12579.",
    "Vos de Wael R. et al. (2020) BrainSpace: a toolbox for the analysis of macroscale "
    "gradients in neuroimaging and connectomics datasets. Commun Biol 3:103.",
    "Coifman R.R. & Lafon S. (2006) Diffusion maps. Appl Comput Harmon Anal 21:5-30.",
]


VARIANCE_TERM_CITATIONS = [
    "Bardes A., Ponce J. & LeCun Y. (2022) VICReg: Variance-invariance-covariance "
    "regularization for self-supervised learning. ICLR 2022.",
    "Mo S. & Tong S. (2024) Connecting joint-embedding predictive architecture with contrastive "
    "self-supervised learning. NeurIPS 2024.",
]


def abide_gradients(series: list[np.ndarray], n_components: int = 30) -> np.ndarray:
    """Functional gradients of CC200 from the group FC of the ABIDE participants."""
    from .gradients import functional_gradients, group_fc

    return functional_gradients(group_fc(full_fc(series)), n_components=n_components)


def prepare_abide_runs(series: list[np.ndarray], trs: np.ndarray, spec) -> list:
    """Resampled (to ``spec.target_tr``), per-run z-scored series and ROI validity."""
    from .resample import normalise_run, resample_run

    return [normalise_run(resample_run(ts, float(tr), spec.target_tr),
                          method=spec.normalisation)
            for ts, tr in zip(series, trs, strict=True)]


def prepare_abide_windows(series: list[np.ndarray], trs: np.ndarray, spec) -> list:
    """Per run ``(windows (W, R, T), valid (R,))``, as the model API prepares them."""
    from .resample import prepare_run

    return [prepare_run(ts, float(tr), spec, name=f"run {i}")
            for i, (ts, tr) in enumerate(zip(series, trs, strict=True))]


def abide_ts_embeddings(encoder, series: list[np.ndarray], trs: np.ndarray, spec,
                        batch_size: int = 32) -> np.ndarray:
    """Embeddings of the ABIDE runs (windows averaged) with a time-series encoder."""
    from .brainjepa import embed_runs

    return embed_runs(encoder, prepare_abide_windows(series, trs, spec), batch_size=batch_size)


def ts_input_card(spec) -> dict[str, Any]:
    """The card's ``input`` section of a time-series model."""
    return {
        "kind": "timeseries",
        **spec.to_dict(),
        "min_volumes": 1,
        "min_seconds": spec.min_seconds,
        "description": "denoised ROI time series (retained volumes; censored gaps linearly "
                       "interpolated on the original grid, leading/trailing ones trimmed) and "
                       "the run's RepetitionTime",
        "resampling": f"scipy.signal.resample_poly to TR {spec.target_tr:g} s (polyphase "
                      "Kaiser-windowed low-pass FIR; TR ratio as a fraction with denominator "
                      "<= 100; linear-extrapolation padding)",
        "normalisation_description": "per-ROI z-score over the whole resampled run (ddof 0), "
                                     "identical in pretraining, head fitting and inference",
        "windows": f"{spec.n_frames}-frame windows {spec.window_stride} frames apart, "
                   "embeddings averaged; runs shorter than "
                   f"{spec.min_seconds:g} s are skipped with a reason",
        "missing_rois": "n/a, NaN and constant ROIs are set to 0, excluded as attention keys "
                        "and left out of the readout (mean pool, or zero rows/columns of the "
                        "token connectivity)",
    }


def readout_section(enc_cfg) -> dict[str, Any]:
    """The card's ``readout`` section of a time-series model (filled further when fitted)."""
    if enc_cfg.readout == "mean":
        return {"kind": "mean", "short": "mean-pooled embedding",
                "description": "mean of the final tokens over valid ROIs (official readout)"}
    k = enc_cfg.readout_dim
    size = f"{enc_cfg.n_rois} ROIs x {k} axes" if k else "upper triangle"
    return {"kind": "connectivity", "readout_dim": k,
            "short": f"token-connectivity readout ({size})",
            "description": "per window, each ROI's final tokens (time patches x features) "
                           "centred on the mean over ROIs, Pearson correlation between ROIs, "
                           "Fisher z; " + (f"each ROI's row minus the cohort mean matrix "
                                           f"projected on {k} axes fitted without labels "
                                           "(principal axes of the training cohort's rows), "
                                           "embedding ROI-major; " if k else "")
                           + "windows averaged (bidsfm readout, not in the official model)"}


def fit_abide_readout(encoder, runs: list, card_section: dict[str, Any] | None = None
                      ) -> dict[str, np.ndarray]:
    """Fit the connectivity readout of ``encoder`` on prepared ABIDE runs (no labels).

    ``runs`` are ``(windows, valid)`` pairs (:func:`prepare_abide_windows`). Sets the readout on
    the encoder and returns the tensors to store (``readout.centre``, ``readout.basis``); fills
    ``card_section`` with the explained variance.
    """
    from .brainjepa import fit_connectivity_readout

    centre, basis, explained = fit_connectivity_readout(encoder, runs)
    encoder.set_readout(centre, basis)
    if card_section is not None:
        card_section.update({
            "tensors": "readout.centre (R x R), readout.basis (R x k) in weights.safetensors",
            "fitted_on": f"the {len(runs)} ABIDE training runs, without labels",
            "explained_variance": [round(float(e), 4) for e in explained],
            "explained_variance_total": round(float(explained.sum()), 4)})
    return {"readout.centre": centre, "readout.basis": basis}


def random_control_validation(enc_cfg, grads: np.ndarray, seed: int, runs: list,
                              pheno: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Leave-one-site-out figures of the untrained encoder (the pretraining's seed-``seed``
    initialisation) with the same readout procedure and heads, on prepared ``runs``."""
    import torch

    from .brainjepa import BrainJEPAEncoder, embed_runs

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = BrainJEPAEncoder(enc_cfg, grads).eval()
    if enc_cfg.readout == "connectivity" and enc_cfg.readout_dim:
        fit_abide_readout(encoder, runs)
    return evaluate(embed_runs(encoder, runs), pheno)


def pretraining_gain(validation: dict[str, dict[str, Any]],
                     control: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Compare each head with the random-weight control.

    A head counts as improved by pretraining when its leave-one-site-out AUC lies above the
    control's 95% bootstrap interval (MAE below it, for regression heads).

    Returns
    -------
    dict
        ``improved`` (head names), ``comparison`` (one "head metric model vs control" line per
        head) and ``warning`` (a sentence for the card when no head improved, else None).
    """
    improved, lines = [], []
    for head, res in validation.items():
        ctrl = control.get(head)
        if not ctrl:
            continue
        key = "auc" if "auc" in res else "mae"
        lo, hi = ctrl[f"{key}_ci95"]
        better = res[key] > hi if key == "auc" else res[key] < lo
        if better:
            improved.append(head)
        lines.append(f"{head} {key.upper()} {res[key]:.3f} vs {ctrl[key]:.3f} "
                     f"(control 95% CI {lo:.3f}-{hi:.3f})")
    warning = None
    if not improved:
        warning = ("leave-one-site-out on ABIDE this model is no better than the same "
                   "architecture with random weights (" + "; ".join(lines) + "): what it "
                   "predicts comes from its readout, not from what its JEPA pretraining "
                   "learned. Read its predictions with the card's leave-site-out figures, not "
                   "as the output of a pretrained time-series foundation model.")
    return {"improved": improved, "comparison": lines, "warning": warning}


def build_ts_model(out_dir: str | Path, *, shared_data: str | Path | None = None,
                   enc_cfg=None, jepa_cfg=None, spec=None, name: str = "bidsfmts",
                   version: str = "1.1.0", max_subjects: int | None = None,
                   log_path: str | Path | None = None, max_seconds: float | None = None,
                   random_control: bool = True, log=print) -> dict[str, Any]:
    """JEPA-pretrain the Brain-JEPA-style encoder on ABIDE, fit heads, evaluate, save.

    With ``random_control`` the card's ``validation.random_weight_control`` holds the same
    leave-one-site-out figures for the encoder's starting point (same seed, untrained weights,
    its own readout axes fitted the same way), so the card says what pretraining added.

    Returns
    -------
    dict
        The model card (also written to ``out_dir/card.json``).
    """
    from .brainjepa import BrainJEPAConfig, embed_runs
    from .jepa import JEPAConfig, pretrain_jepa
    from .registry import save_model
    from .resample import InputSpec, window_run

    pheno, series = load_abide(shared_data, max_subjects)
    trs = pheno["repetition_time"].astype(float).to_numpy()
    spec = spec or InputSpec()
    enc_cfg = enc_cfg or BrainJEPAConfig(n_rois=200, n_frames=spec.n_frames)
    jepa_cfg = jepa_cfg or JEPAConfig()
    t0 = time.time()
    grads = abide_gradients(series, enc_cfg.n_gradients)
    runs = prepare_abide_runs(series, trs, spec)
    log(f"gradients and {len(runs)} prepared runs in {time.time() - t0:.0f} s")
    t0 = time.time()
    encoder, logs = pretrain_jepa(runs, enc_cfg, grads, jepa_cfg, log_path=log_path,
                                  max_seconds=max_seconds)
    train_seconds = time.time() - t0
    encoder = encoder.cpu().eval()
    log(f"pretrained {len(logs)} epoch(s) in {train_seconds:.0f} s; last {logs[-1]}")
    t0 = time.time()
    # the same windows as the model API's (prepare_run), from the runs resampled once above
    windows = [(window_run(z, spec), valid) for z, valid in runs]
    extra = {"gradients": grads}
    readout_card = readout_section(enc_cfg)
    if enc_cfg.readout == "connectivity" and enc_cfg.readout_dim:
        extra.update(fit_abide_readout(encoder, windows, readout_card))
        log(f"connectivity readout fitted in {time.time() - t0:.0f} s: "
            f"{readout_card['explained_variance_total']:.3f} of the row variance on "
            f"{enc_cfg.readout_dim} axes")
    t0 = time.time()
    emb = embed_runs(encoder, windows)
    log(f"embedded {len(emb)} runs in {time.time() - t0:.0f} s")
    validation = evaluate(emb, pheno)
    heads = fit_bundled_heads(emb, pheno, validation)
    control = None
    if random_control:
        t0 = time.time()
        control = random_control_validation(enc_cfg, grads, jepa_cfg.seed, windows, pheno)
        log(f"random-weight control embedded and evaluated in {time.time() - t0:.0f} s")
    gain = None if control is None else pretraining_gain(validation, control)
    card: dict[str, Any] = {
        "name": name,
        "version": version,
        "family": "brainjepa",
        "description": "Brain-JEPA-style time-series encoder ((ROI, time-patch) tokens, "
                       "pre-norm ViT, sin/cos time code + learned projection of functional "
                       f"gradients, {readout_card['short']}) pretrained by the bidsfm "
                       "developers with JEPA spatiotemporal masking, TR-aware input, with "
                       "linear heads on the frozen embedding.",
        "atlas": {"name": "CC200", "template": "MNI152NLin6Asym", "n_rois": 200,
                  "roi_order": "ascending CC200 label (1..200)",
                  "roi_names": [f"CC200_{i:03d}" for i in range(1, 201)]},
        "input": ts_input_card(spec),
        "encoder_config": enc_cfg.to_dict(),
        "embedding_size": int(emb.shape[1]),
        "readout": readout_card,
        "gradients": {
            "tensor": "gradients (R x G) in weights.safetensors",
            "n_components": int(grads.shape[1]),
            "method": "diffusion-map embedding (bidsfm.models.gradients.functional_gradients: "
                      "row-wise top-10% threshold, cosine affinity, alpha 0.5, multi-scale "
                      "lambda/(1-lambda) scaling, signs fixed by the largest entry)",
            "source": f"group FC (mean Fisher z) of the {len(series)} ABIDE training "
                      "participants, CC200",
            "citation": GRADIENT_CITATIONS,
        },
        "pretraining": {"objective": "JEPA: smooth-L1 between predictor outputs and layer-normed "
                                     "EMA-target tokens of cross-ROI, cross-time and "
                                     "double-cross target blocks",
                        "config": jepa_cfg.to_dict(), "epochs_run": len(logs),
                        "final_epoch": logs[-1] if logs else None,
                        "seconds": round(train_seconds, 1),
                        "encoder_saved": "EMA target encoder"},
        "training_data": abide_training_data(
            "ABIDE I (Preprocessed Connectomes Project, C-PAC, no band-pass, no GSR), "
            "CC200 ROI time series", pheno, series,
            repetition_times=sorted({float(t) for t in trs})),
        "validation": {
            "scheme": ABIDE_LOSO_SCHEME + " The encoder, the gradients and the readout axes "
                                          "were fitted (without labels) on all 16 sites.",
            **({"random_weight_control": control} if control is not None else {}),
        },
        **({"warning": gain["warning"]} if gain and gain["warning"] else {}),
        "attribution": {"method": "integrated gradients over the input windows",
                        "baseline": "all-zero z-scored series (every ROI at its run mean)",
                        "roi_score": "sum over the ROI's time points, averaged over windows"},
        "licence": ABIDE_WEIGHTS_LICENCE,
        "citation": [BRAINJEPA_CITATION] + GRADIENT_CITATIONS + ABIDE_CITATION
        + (VARIANCE_TERM_CITATIONS if jepa_cfg.var_weight or jepa_cfg.cov_weight else []),
    }
    save_model(out_dir, card, encoder, heads, extra_tensors=extra)
    import json

    return json.loads((Path(out_dir) / "card.json").read_text())
