"""Build the bundled tangent-space FC model (``bidsfmfc`` 2.x) from the shared ABIDE views.

``scripts/train_fc_model.py`` calls :func:`build_tangent_fc_model`: load the two real
preprocessing views of the ABIDE I participants, pretrain (:mod:`.objective_tangent`), fit the
readout axes without labels, embed, evaluate the heads leave-one-site-out, fit them on all
participants and write ``weights.safetensors`` + ``card.json``. Nothing from the data is stored
but the weights, the tangent reference (a cohort mean) and the readout axes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ...references import reference
from .abide import (
    ABIDE_CITATION,
    ABIDE_LOSO_SCHEME,
    ABIDE_WEIGHTS_LICENCE,
    BRAINMASS_CITATION,
    abide_training_data,
    cc200_atlas_card,
    evaluate,
    fit_bundled_heads,
)
from .data import full_fc, load_abide_views

__all__ = ["TANGENT_CITATIONS", "tangent_embeddings", "refined_matrices", "fit_readout",
           "reference_correlation", "tangent_card", "build_tangent_fc_model"]

TANGENT_CITATIONS = [
    reference("varoquaux2010"), reference("dadi2019"), reference("arsigny2007"),
]

def tangent_embeddings(encoder, fc: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Embeddings of Pearson FC matrices (N, R, R) with a tangent encoder (eval mode)."""
    from ..brainmass import embed_fc

    return np.atleast_2d(np.asarray(embed_fc(encoder, fc, batch_size=batch_size)))


def refined_matrices(encoder, fc: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """The encoder's refined connectivity (N, R, R) of Pearson FC matrices."""
    import torch

    encoder.eval()
    with torch.no_grad():
        return np.concatenate([
            encoder.refined(torch.as_tensor(np.asarray(fc[i:i + batch_size], np.float32))
                            ).numpy() for i in range(0, len(fc), batch_size)])


def fit_readout(encoder, fc: np.ndarray) -> None:
    """Fit and store the readout axes (principal axes of the refined rows, no labels)."""
    import torch

    from ..brainmass import infer_valid_rois
    from .objective_tangent import fit_readout_basis

    if not encoder.config.readout_dim:
        return
    refined = refined_matrices(encoder, fc)
    valid = infer_valid_rois(torch.as_tensor(np.asarray(fc, dtype=np.float32))).numpy()
    encoder.set_readout(fit_readout_basis(refined[valid], encoder.config.readout_dim))


def reference_correlation(encoder) -> np.ndarray:
    """The FC matrix whose tangent map is the zero matrix: ``(M - s I) / (1 - s)``.

    Stored as ``reference.fc`` (the attribution baseline and "typical participant" of the
    model), so that encoding it gives exactly the reference the integrated gradients start from.
    """
    s = float(encoder.config.shrinkage)
    m = encoder.reference()
    return ((m - s * np.eye(len(m))) / (1.0 - s)).astype(np.float32)


def tangent_card(name: str, version: str, model_cfg, pretrain_cfg, logs, seconds: float,
                 pheno: pd.DataFrame, views, emb_size: int, validation: dict[str, Any]
                 ) -> dict[str, Any]:
    """The model card of a tangent-space FC model built on ABIDE."""
    k = model_cfg.readout_dim
    readout = (f"each ROI's refined connectivity row projected on {k} axes (principal axes of "
               "the training cohort's refined rows, fitted without labels; stored as "
               f"encoder.readout_basis): {model_cfg.n_rois} x {k} values, ROI-major"
               if k else "upper triangle (diagonal included) of the refined connectivity")
    return {
        "name": name,
        "version": version,
        "family": "brainmass",
        "description": "BrainMass-family FC encoder on tangent-space FC: each ROI's tangent "
                       "connectivity row is a token, pre-norm Transformer layers, and a "
                       "residual readout (the refined connectivity = input + Linear(token "
                       f"states), symmetrised; {readout}). Pretrained by the bidsfm developers "
                       "to map one real preprocessing view of a participant (20 % of time "
                       "points dropped, 25 % of ROIs masked) to another real view; linear "
                       "heads on the frozen embedding.",
        "atlas": cc200_atlas_card(),
        "input": {"kind": "Pearson FC (R x R) of denoised ROI time series, mapped to tangent "
                          "space inside the encoder",
                  "min_volumes": 50, "target_tr": None, "min_valid_roi_fraction": 0.25,
                  "min_valid_roi_fraction_description": "runs with fewer usable ROIs (finite, "
                  "non-zero correlation to another ROI) are not encoded: the training data had "
                  "at least 41 % (one ABIDE participant has 118 of 200 ROIs outside the field "
                  "of view)",
                  "normalisation": f"shrinkage {model_cfg.shrinkage:g} towards the identity, "
                                   "then logm(M^-1/2 C M^-1/2) with the stored reference M "
                                   "(log-Euclidean mean of the 833 training participants' "
                                   "FC; encoder.whiten = M^-1/2): the same at training and "
                                   "inference, one run is enough",
                  "missing_rois": "n/a (low-coverage) and all-zero ROIs: their correlations "
                                  "are replaced by the reference's (encoder.fill) before the "
                                  "tangent map, their token by the learned mask token, and "
                                  "they are excluded as attention keys"},
        "encoder_config": model_cfg.to_dict(),
        "embedding_size": int(emb_size),
        "readout": {"kind": "rows on axes" if k else "upper triangle", "readout_dim": k,
                    "description": readout},
        "pretraining": {"objectives": ["cross-pipeline prediction of tangent FC (real second "
                                       "view: PCP filt_global, i.e. band-pass + GSR)",
                                       "pseudo-FC views (20 % of time points dropped)",
                                       "mask-ROI modelling (25 % of ROIs hidden)"],
                        "config": pretrain_cfg.to_dict(),
                        "epochs_log": logs,
                        "seconds": round(seconds, 1),
                        "device": str(pretrain_cfg.device),
                        "collapse_check": "emb_sd (mean per-dimension SD of the embedding "
                                          "over 128 participants) vs input_sd (the same of "
                                          "the input tangent FC), logged every epoch"},
        "training_data": abide_training_data(
            "ABIDE I (Preprocessed Connectomes Project, C-PAC), CC200 ROI time series: "
            "nofilt_noglobal (833 participants) and filt_global (804 of them)", pheno, views[0],
            n_second_view=int(sum(s is not None for s in views[1]))),
        "validation": {
            "scheme": ABIDE_LOSO_SCHEME + " The encoder was pretrained (without labels) on all "
                                          "16 sites.",
            "heads": validation,
        },
        "attribution": {"method": "integrated gradients in tangent space",
                        "baseline": "the model's reference (the zero tangent matrix)"},
        "licence": ABIDE_WEIGHTS_LICENCE,
        "citation": [BRAINMASS_CITATION] + TANGENT_CITATIONS + ABIDE_CITATION,
    }


def build_tangent_fc_model(out_dir: str | Path, *, shared_data: str | Path | None = None,
                           model_cfg=None, pretrain_cfg=None, name: str = "bidsfmfc",
                           version: str = "2.0.0", max_subjects: int | None = None,
                           log_path: str | Path | None = None) -> dict[str, Any]:
    """Pretrain, fit readout and heads, evaluate and save a tangent-space FC model.

    Returns
    -------
    dict
        The model card (also written to ``out_dir/card.json``).
    """
    from ..registry import save_model
    from ..tangentmass import TangentMassConfig
    from .configs import TangentPretrainConfig
    from .objective_tangent import pretrain_tangent

    pheno, views = load_abide_views(shared_data, max_subjects)
    model_cfg = model_cfg or TangentMassConfig()
    pretrain_cfg = pretrain_cfg or TangentPretrainConfig()
    t0 = time.time()
    encoder, logs = pretrain_tangent(views, model_cfg, pretrain_cfg, log_path=log_path)
    seconds = time.time() - t0
    fc = full_fc(views[0])
    fit_readout(encoder, fc)
    emb = tangent_embeddings(encoder, fc)
    validation = evaluate(emb, pheno)
    heads = fit_bundled_heads(emb, pheno, validation)
    card = tangent_card(name, version, model_cfg, pretrain_cfg, logs, seconds, pheno, views,
                        emb.shape[1], validation)
    save_model(out_dir, card, encoder, heads, reference_fc=reference_correlation(encoder))
    return json.loads((Path(out_dir) / "card.json").read_text())
