"""Recipe of ``bidsfmfc`` 1.0: BrainMass LRA + MRM pretraining on ABIDE, heads, card.

:func:`build_fc_model` pretrains the encoder (:mod:`.objective_brainmass`) on the ABIDE CC200
series, evaluates the heads leave-one-site-out, fits them on all participants and writes the
model folder (``weights.safetensors`` + ``card.json``). ``bidsfmfc`` 2.x is built by
:mod:`.build_tangent`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from .abide import (
    ABIDE_CITATION,
    ABIDE_LOSO_SCHEME,
    ABIDE_WEIGHTS_LICENCE,
    BRAINMASS_CITATION,
    abide_training_data,
    cc200_atlas_card,
    evaluate,
    fc_baseline,
    fit_bundled_heads,
    reference_fc,
)
from .cards import fc_input_card
from .data import full_fc, load_abide

__all__ = ["build_fc_model", "attach_reference"]


def attach_reference(folder: str | Path, shared_data: str | Path | None = None) -> None:
    """Add the reference FC to an existing model folder (re-saving weights and card)."""
    from ..registry import load_model, save_model

    model = load_model(folder)
    _pheno, series = load_abide(shared_data)
    card = json.loads((Path(folder) / "card.json").read_text())
    card["attribution"] = {"method": "integrated gradients", "baseline": "reference FC: mean "
                           "FC of the training participants (stored as reference.fc)"}
    save_model(folder, card, model.encoder, list(model.heads.values()),
               reference_fc=reference_fc(full_fc(series)))


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

    from ..brainmass import BrainMassConfig, embed_fc
    from ..registry import save_model
    from .configs import PretrainConfig
    from .objective_brainmass import pretrain

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
        "atlas": cc200_atlas_card(),
        "input": fc_input_card(),
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
    return json.loads((Path(out_dir) / "card.json").read_text())
