"""Recipe of ``bidsfmts``: JEPA pretraining of the Brain-JEPA-style encoder on ABIDE.

:func:`build_ts_model` computes the CC200 functional gradients of the cohort, resamples and
z-scores the runs, JEPA-pretrains the encoder (:mod:`.objective_jepa`), fits the connectivity
readout axes (no labels), evaluates the heads leave-one-site-out beside the same encoder with
random weights (:func:`random_control_validation`, :func:`pretraining_gain`), fits the heads
and writes the model folder. ``scripts/train_ts_model.py`` calls it;
``benchmarks/evaluate_ts_model.py`` uses the run preparation and embedding helpers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...references import reference
from .abide import (
    ABIDE_CITATION,
    ABIDE_LOSO_SCHEME,
    ABIDE_WEIGHTS_LICENCE,
    abide_training_data,
    cc200_atlas_card,
    evaluate,
    fit_bundled_heads,
)
from .cards import readout_section, ts_input_card
from .data import full_fc, load_abide

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["BRAINJEPA_CITATION", "GRADIENT_CITATIONS", "VARIANCE_TERM_CITATIONS",
           "abide_gradients", "prepare_abide_runs", "prepare_abide_windows",
           "abide_ts_embeddings", "fit_abide_readout", "random_control_validation",
           "pretraining_gain", "build_ts_model"]

BRAINJEPA_CITATION = reference("brainjepa")
GRADIENT_CITATIONS = [reference("margulies2016"), reference("vosdewael2020"),
                      reference("coifman2006")]


VARIANCE_TERM_CITATIONS = [reference("vicreg"), reference("mo2024")]


def abide_gradients(series: list[np.ndarray], n_components: int = 30) -> np.ndarray:
    """Functional gradients of CC200 from the group FC of the ABIDE participants."""
    from ..gradients import functional_gradients, group_fc

    return functional_gradients(group_fc(full_fc(series)), n_components=n_components)


def prepare_abide_runs(series: list[np.ndarray], trs: np.ndarray, spec) -> list:
    """Resampled (to ``spec.target_tr``), per-run z-scored series and ROI validity."""
    from ..resample import normalise_run, resample_run

    return [normalise_run(resample_run(ts, float(tr), spec.target_tr),
                          method=spec.normalisation)
            for ts, tr in zip(series, trs, strict=True)]


def prepare_abide_windows(series: list[np.ndarray], trs: np.ndarray, spec) -> list:
    """Per run ``(windows (W, R, T), valid (R,))``, as the model API prepares them."""
    from ..resample import prepare_run

    return [prepare_run(ts, float(tr), spec, name=f"run {i}")
            for i, (ts, tr) in enumerate(zip(series, trs, strict=True))]


def abide_ts_embeddings(encoder, series: list[np.ndarray], trs: np.ndarray, spec,
                        batch_size: int = 32) -> np.ndarray:
    """Embeddings of the ABIDE runs (windows averaged) with a time-series encoder."""
    from ..brainjepa import embed_runs

    return embed_runs(encoder, prepare_abide_windows(series, trs, spec), batch_size=batch_size)


def fit_abide_readout(encoder, runs: list, card_section: dict[str, Any] | None = None
                      ) -> dict[str, np.ndarray]:
    """Fit the connectivity readout of ``encoder`` on prepared ABIDE runs (no labels).

    ``runs`` are ``(windows, valid)`` pairs (:func:`prepare_abide_windows`). Sets the readout on
    the encoder and returns the tensors to store (``readout.centre``, ``readout.basis``); fills
    ``card_section`` with the explained variance.
    """
    from ..brainjepa import fit_connectivity_readout

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

    from ..brainjepa import BrainJEPAEncoder, embed_runs

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


def ts_card(name: str, version: str, enc_cfg: Any, jepa_cfg: Any, spec: Any,
            readout_card: dict[str, Any], grads: np.ndarray, logs: list[dict[str, Any]],
            train_seconds: float, pheno: pd.DataFrame, series: list[np.ndarray],
            trs: np.ndarray, emb_size: int, control: dict[str, dict[str, Any]] | None,
            gain: dict[str, Any] | None) -> dict[str, Any]:
    """The model card of a time-series model built on ABIDE (its heads are added on saving).

    Parameters
    ----------
    name, version : str
        Model name and version.
    enc_cfg, jepa_cfg, spec
        Encoder configuration, JEPA hyper-parameters and input contract.
    readout_card : dict
        :func:`~bidsfm.models.training.cards.readout_section`, filled when fitted.
    grads : np.ndarray
        (R, G) gradients.
    logs : list of dict
        Per-epoch pretraining log.
    train_seconds : float
        Pretraining time.
    pheno, series, trs
        The ABIDE participants, their series and repetition times.
    emb_size : int
        Length of the embedding.
    control, gain : dict, optional
        Random-weight control figures and :func:`pretraining_gain` (None: no control).

    Returns
    -------
    dict
    """
    return {
        "name": name,
        "version": version,
        "family": "brainjepa",
        "description": "Brain-JEPA-style time-series encoder ((ROI, time-patch) tokens, "
                       "pre-norm ViT, sin/cos time code + learned projection of functional "
                       f"gradients, {readout_card['short']}) pretrained by the bidsfm "
                       "developers with JEPA spatiotemporal masking, TR-aware input, with "
                       "linear heads on the frozen embedding.",
        "atlas": cc200_atlas_card(),
        "input": ts_input_card(spec),
        "encoder_config": enc_cfg.to_dict(),
        "embedding_size": emb_size,
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
    from ..brainjepa import BrainJEPAConfig, embed_runs
    from ..registry import save_model
    from ..resample import InputSpec, window_run
    from .configs import JEPAConfig
    from .objective_jepa import pretrain_jepa

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
    card = ts_card(name, version, enc_cfg, jepa_cfg, spec, readout_card, grads, logs,
                   train_seconds, pheno, series, trs, int(emb.shape[1]), control, gain)
    save_model(out_dir, card, encoder, heads, extra_tensors=extra)
    return json.loads((Path(out_dir) / "card.json").read_text())
