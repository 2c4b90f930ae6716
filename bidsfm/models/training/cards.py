"""Sections of the model card (``card.json``) written by the training code.

Every model trained by bidsfm, with or without heads, is one loadable model folder
(:mod:`.checkpoint`); these functions write the parts of its card that describe the input, the
readout and the atlas, so that ``bidsfm-pretrain`` and the ABIDE recipes describe a model the
same way.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fc_input_card", "ts_input_card", "readout_section", "atlas_card"]


def fc_input_card() -> dict[str, Any]:
    """The card's ``input`` section of a BrainMass-style FC model (Pearson FC input).

    Returns
    -------
    dict
    """
    return {"kind": "Pearson FC (R x R) of denoised ROI time series",
            "min_volumes": 50, "target_tr": None,
            "normalisation": "none needed: Pearson correlation is invariant to each "
                             "ROI's offset and scale, the same at training and inference",
            "missing_rois": "n/a (low-coverage) and all-zero ROIs are NaN rows, replaced "
                            "by the learned mask token and excluded as attention keys"}


def atlas_card(name: str, roi_names: list[str]) -> dict[str, Any]:
    """The card's ``atlas`` section: atlas name, number of ROIs and their order.

    Parameters
    ----------
    name : str
        Atlas label (as given to ``--atlas``).
    roi_names : list of str
        ROI names in the order of the model's input.

    Returns
    -------
    dict
    """
    return {"name": name, "n_rois": len(roi_names), "roi_names": list(roi_names)}


def ts_input_card(spec) -> dict[str, Any]:
    """The card's ``input`` section of a time-series model.

    Parameters
    ----------
    spec : bidsfm.models.resample.InputSpec
        Target TR, window length and stride, normalisation.

    Returns
    -------
    dict
    """
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
    """The card's ``readout`` section of a time-series model (filled further when fitted).

    Parameters
    ----------
    enc_cfg : bidsfm.models.brainjepa.BrainJEPAConfig
        Its ``readout`` (``mean`` or ``connectivity``) and ``readout_dim``.

    Returns
    -------
    dict
    """
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
