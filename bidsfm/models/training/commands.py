"""What ``bidsfm-pretrain`` does for each family: load the data, pretrain, save a model folder.

:func:`run_brainmass` (FC encoder, LRA + MRM) and :func:`run_brainjepa` (time-series encoder,
JEPA) both end with :func:`~bidsfm.models.training.checkpoint.save_pretrained`: ``OUT_DIR``
becomes a headless model folder (``weights.safetensors`` + ``card.json``) that
``bidsfm --model OUT_DIR`` and ``bidsfm.models.load(OUT_DIR)`` read, beside
``pretrain_log.tsv``. The click options are in :mod:`.cli`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import InputDataError
from .cards import atlas_card, fc_input_card, ts_input_card
from .checkpoint import pretrained_card, save_pretrained
from .data import (
    load_runs_with_tr,
    load_timeseries_bidsfm,
    load_timeseries_npz,
    numbered_rois,
    pick_subset,
    roi_names_bidsfm,
)
from .epoch_log import LOG_FILE

__all__ = ["run_brainmass", "run_brainjepa"]


def run_brainmass(out_dir: Path, *, npz: Path | None, participants: Path | None,
                  bidsfm_dir: Path | None, atlas: str, epochs: int, batch_size: int, lr: float,
                  layers: int, heads: int, ff_dim: int, roi_embedding: bool, seed: int,
                  device: str, max_subjects: int | None, progress: bool) -> str:
    """``bidsfm-pretrain --family brainmass``: pretrain a BrainMass FC encoder, save it.

    Parameters
    ----------
    out_dir : Path
        Output model folder.
    npz, participants : Path, optional
        ROI time series (one array per participant) and their participants.tsv.
    bidsfm_dir : Path, optional
        A bidsfm output folder instead.
    atlas : str
        Atlas label (of ``bidsfm_dir``'s time series; the card's atlas name).
    epochs, batch_size, lr, seed, device
        Training settings (:class:`~bidsfm.models.training.configs.PretrainConfig`).
    layers, heads, ff_dim, roi_embedding
        Architecture (:class:`~bidsfm.models.brainmass.BrainMassConfig`).
    max_subjects : int, optional
        Seeded random subset of this many subjects.
    progress : bool
        Progress bar on a terminal.

    Returns
    -------
    str
        The one-line summary to print.
    """
    from ..brainmass import BrainMassConfig
    from ..device import resolve_device
    from .configs import PretrainConfig
    from .objective_brainmass import pretrain

    if npz is not None:
        items = load_timeseries_npz(npz, participants)
        source: dict[str, Any] = {"npz": str(npz), "participants": str(participants)}
    else:
        items = load_timeseries_bidsfm(bidsfm_dir, atlas=atlas)
        source = {"bidsfm_dir": str(bidsfm_dir), "atlas": atlas}
    pick = pick_subset(len(items), max_subjects, seed)
    if pick is not None:
        items = [items[i] for i in pick]
    n_rois = items[0][1].shape[1]
    roi_names = numbered_rois(n_rois) if npz is not None else roi_names_bidsfm(bidsfm_dir, atlas)
    model_cfg = BrainMassConfig(n_rois=n_rois, n_layers=layers, n_heads=heads, ff_dim=ff_dim,
                                roi_embedding=roi_embedding)
    cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encoder, logs = pretrain([s for _, s in items], model_cfg, cfg, log_path=out_dir / LOG_FILE,
                             progress=progress)
    elapsed = time.perf_counter() - t0
    encoder = encoder.cpu().eval()
    card = pretrained_card(
        out_dir.name, "brainmass",
        "BrainMass-style FC encoder pretrained with bidsfm-pretrain --family brainmass "
        "(latent representation alignment + mask-ROI modelling; no heads).",
        atlas_card(atlas, roi_names), fc_input_card(), model_cfg.to_dict(),
        encoder.embedding_dim,
        {"objectives": ["latent representation alignment (BYOL, EMA target)",
                        "mask-ROI modelling"],
         "config": cfg.to_dict(), "epochs_run": len(logs), "final_epoch": logs[-1],
         "seconds": round(elapsed, 1), "device": str(resolve_device(device)),
         "source": source, "n_series": len(items), "subjects": [name for name, _ in items]})
    save_pretrained(out_dir, card, encoder)
    n_params = sum(p.numel() for p in encoder.parameters())
    last = logs[-1]
    return (f"bidsfm-pretrain: {len(items)} series x {n_rois} ROIs, {epochs} epoch(s) in "
            f"{elapsed:.1f} s on {resolve_device(device)}; loss {last['loss']:.4f} "
            f"(lra {last['lra']:.4f}, mrm {last['mrm']:.4f}); {n_params:,} parameters -> "
            f"{out_dir}")


def _read_gradients(path: Path, n_rois: int) -> np.ndarray:
    """(R, G) gradients of a ``bidsfm-gradients`` TSV (its ``roi`` column dropped)."""
    import pandas as pd

    table = pd.read_csv(path, sep="\t")
    grads = table.drop(columns=[c for c in ("roi",) if c in table.columns]).to_numpy(float)
    if grads.shape[0] != n_rois:
        raise InputDataError(f"{grads.shape[0]} gradient rows for {n_rois} ROIs", path=path)
    return grads


def _resampled_runs(names: list[str], series: list[np.ndarray], trs: list[float], spec: Any
                    ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Runs resampled to ``spec.target_tr`` and z-scored, without those shorter than a window;
    with their names."""
    from ..resample import normalise_run, resample_run

    runs, kept = [], []
    for name, ts, t in zip(names, series, trs, strict=True):
        z, valid = normalise_run(resample_run(ts, t, spec.target_tr))
        if z.shape[0] >= spec.n_frames:
            runs.append((z, valid))
            kept.append(name)
    if not runs:
        raise InputDataError(f"no run lasts {spec.min_seconds:g} s (--frames x --target-tr)")
    return runs, kept


def _gradients(gradients_tsv: Path | None, series: list[np.ndarray], n_rois: int
               ) -> tuple[np.ndarray, str]:
    """(R, G) gradients from ``--gradients`` or from the group FC of the runs, and their source."""
    if gradients_tsv is not None:
        return _read_gradients(gradients_tsv, n_rois), str(gradients_tsv)
    from ..brainmass import fc_from_timeseries
    from ..gradients import functional_gradients, group_fc

    fcs = [np.asarray(fc_from_timeseries(np.asarray(s, dtype=np.float64))) for s in series]
    grads = functional_gradients(group_fc(fcs), n_components=min(30, n_rois - 1))
    return grads, f"group FC of the {len(series)} training runs"


def _fit_readout(encoder: Any, runs: list[tuple[np.ndarray, np.ndarray]], spec: Any,
                 card: dict[str, Any]) -> dict[str, np.ndarray]:
    """Fit the connectivity readout axes on the runs' windows (no labels), set them on the
    encoder, describe them in ``card`` and return the tensors to store."""
    from ..brainjepa import fit_connectivity_readout
    from ..resample import window_run

    prepared = [(window_run(z, spec), valid) for z, valid in runs]
    centre, basis, explained = fit_connectivity_readout(encoder, prepared)
    encoder.set_readout(centre, basis)
    card.update({"readout_dim": encoder.config.readout_dim,
                 "fitted_on": f"the {len(runs)} training runs, without labels",
                 "explained_variance_total": round(float(explained.sum()), 4)})
    return {"readout.centre": centre, "readout.basis": basis}


def run_brainjepa(out_dir: Path, *, npz: Path | None, participants: Path | None,
                  bidsfm_dir: Path | None, atlas: str, epochs: int, batch_size: int, lr: float,
                  depth: int, heads: int, dim: int, patch: int, frames: int, target_tr: float,
                  tr: float | None, gradients_tsv: Path | None, seed: int, device: str,
                  max_subjects: int | None, readout: str = "mean", readout_dim: int = 8,
                  var_weight: float = 0.0, cov_weight: float = 0.0) -> str:
    """``bidsfm-pretrain --family brainjepa``: JEPA-pretrain a time-series encoder, save it.

    Runs are resampled to ``target_tr`` and z-scored; runs shorter than ``frames`` frames are
    left out. The gradients come from ``gradients_tsv`` or from the group FC of the runs. With
    ``readout="connectivity"`` the readout axes are fitted on the runs (no labels).

    Returns
    -------
    str
        The one-line summary to print.
    """
    from ..brainjepa import BrainJEPAConfig
    from ..resample import InputSpec
    from .configs import JEPAConfig
    from .objective_jepa import pretrain_jepa

    names, series, trs, roi_names = load_runs_with_tr(npz, participants, bidsfm_dir, atlas, tr)
    pick = pick_subset(len(series), max_subjects, seed)
    if pick is not None:
        names = [names[i] for i in pick]
        series = [series[i] for i in pick]
        trs = [trs[i] for i in pick]
    n_rois = series[0].shape[1]
    spec = InputSpec(target_tr=target_tr, n_frames=frames, window_stride=max(1, frames // 2))
    runs, kept = _resampled_runs(names, series, trs, spec)
    grads, source = _gradients(gradients_tsv, series, n_rois)
    enc_cfg = BrainJEPAConfig(n_rois=n_rois, n_frames=frames, patch_size=patch, embed_dim=dim,
                              depth=depth, n_heads=heads, n_gradients=grads.shape[1],
                              readout=readout,
                              readout_dim=readout_dim if readout == "connectivity" else 0)
    cfg = JEPAConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                     warmup_epochs=min(JEPAConfig.warmup_epochs, epochs / 5),
                     var_weight=var_weight, cov_weight=cov_weight)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    encoder, logs = pretrain_jepa(runs, enc_cfg, grads, cfg, log_path=out_dir / LOG_FILE)
    elapsed = time.perf_counter() - t0
    encoder = encoder.cpu().eval()
    extra = {"gradients": grads}
    readout_card: dict[str, Any] = {"kind": readout}
    if readout == "connectivity" and enc_cfg.readout_dim:
        extra.update(_fit_readout(encoder, runs, spec, readout_card))
    card = pretrained_card(
        out_dir.name, "brainjepa",
        "Brain-JEPA-style time-series encoder pretrained with bidsfm-pretrain "
        "--family brainjepa (no heads).",
        atlas_card(atlas, roi_names), ts_input_card(spec), enc_cfg.to_dict(),
        enc_cfg.embedding_size,
        {"config": cfg.to_dict(), "epochs_run": len(logs), "final_epoch": logs[-1],
         "seconds": round(elapsed, 1), "n_runs": len(runs), "runs": kept},
        readout=readout_card,
        gradients={"tensor": "gradients", "n_components": int(grads.shape[1]),
                   "source": source})
    save_pretrained(out_dir, card, encoder, extra_tensors=extra)
    return (f"bidsfm-pretrain: brainjepa, {len(runs)} runs x {n_rois} ROIs, {len(logs)} "
            f"epoch(s) in {elapsed:.1f} s; loss {logs[-1]['loss']:.4f} -> {out_dir}")
