"""Tangent objective: cross-pipeline pretraining of the tangent-space FC encoder (``bidsfmfc`` 2.x).

Self-supervised, no labels. Each participant comes in one or more real *views*: the same scan
preprocessed by different pipelines (on ABIDE: C-PAC without band-pass and GSR, and with
band-pass + global signal regression). At every step and for every participant of the batch:

* **input**: one view drawn at random, with a random 20 % of its time points dropped before the
  FC is computed (BrainMass's pseudo-FC view), mapped to tangent space, with a random 25 % of its
  valid ROIs hidden (Mask-ROI Modelling: row replaced by the mask token, column zeroed);
* **target**: full-length tangent FC of the same participant: with ``target="primary"`` its
  primary-pipeline view (``views[0]``: whatever pipeline the input came from, the model learns
  to give the primary pipeline's connectivity), with ``target="cross"`` a *different* real view
  drawn at random (its own when it has no other), with ``target="consensus"`` the mean over its
  pipelines;
* **loss**: mean squared error between the encoder's refined matrix and the target, over valid
  ROI pairs, with the hidden ROIs' rows and columns weighted ``masked_weight`` times.

The target is real data, never the network's own output, so the objective cannot collapse; the
per-dimension spread of the embedding is logged every epoch all the same (``emb_sd``, beside the
input's ``input_sd``) so that a reader can check. The reference of the tangent map (log-Euclidean
mean of the training cohort's FC) is fitted first, without labels, and stored in the encoder.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..tangent import log_euclidean_mean, prepare_fc, tangent_space, upper_triangle, whitener
from ..tangentmass import TangentMassConfig, TangentMassEncoder
from .configs import TangentPretrainConfig
from .schedules import set_lr, warmup_cosine_lr

__all__ = ["fit_reference", "pretrain_tangent", "fit_readout_basis", "embed_tangent_fc",
           "LOG_COLUMNS"]

LOG_COLUMNS = ("epoch", "loss", "masked_loss", "lr", "emb_sd", "input_sd", "seconds")


def _pearson(ts: np.ndarray) -> np.ndarray:
    from ..brainmass import fc_from_timeseries

    return np.asarray(fc_from_timeseries(np.asarray(ts, dtype=np.float64)), dtype=np.float64)


def fit_reference(fc: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    """Tangent reference of a cohort, without labels.

    Parameters
    ----------
    fc : np.ndarray
        (N, R, R) Pearson FC of the training runs (NaN rows for missing ROIs).
    shrinkage : float
        Shrinkage towards the identity.

    Returns
    -------
    reference : np.ndarray
        (R, R) log-Euclidean mean of the prepared FC.
    fill : np.ndarray
        (R, R) mean Pearson FC over the runs where both ROIs are present (used for missing ROIs).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fill = np.nanmean(fc, axis=0)
    fill = np.nan_to_num(fill, nan=0.0)
    np.fill_diagonal(fill, 1.0)
    return log_euclidean_mean(prepare_fc(fc, fill, shrinkage)), fill


def _drop_frames_fc(ts: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    t = ts.shape[0]
    keep = t - int(round(frac * t))
    idx = np.sort(rng.permutation(t)[:keep]) if frac > 0 else np.arange(t)
    return _pearson(ts[idx])


def embed_tangent_fc(encoder: TangentMassEncoder, tangent: np.ndarray, valid: np.ndarray,
                     batch_size: int = 64) -> np.ndarray:
    """Embeddings of precomputed tangent FC (N, R, R) with validity (N, R), in eval mode."""
    import torch

    encoder.eval()
    device = encoder.whiten.device
    out = []
    with torch.no_grad():
        for i in range(0, len(tangent), batch_size):
            t = torch.as_tensor(np.asarray(tangent[i:i + batch_size], dtype=np.float32),
                                device=device)
            v = torch.as_tensor(np.asarray(valid[i:i + batch_size], dtype=bool), device=device)
            out.append(encoder.embed_tangent(t, v).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.embedding_dim), np.float32)


def fit_readout_basis(refined_rows: np.ndarray, k: int) -> np.ndarray:
    """(R, k) principal axes of connectivity rows (fitted without labels; uncentred, since the
    reference maps to the zero matrix in tangent space)."""
    rows = np.asarray(refined_rows, dtype=np.float64).reshape(-1, refined_rows.shape[-1])
    w, v = np.linalg.eigh(rows.T @ rows)
    return v[:, ::-1][:, :k].copy()


def _check_views(views: Sequence[Sequence[np.ndarray | None]], r: int) -> None:
    n = len(views[0])
    if any(len(v) != n for v in views) or any(s is None for s in views[0]):
        raise ConfigError("every view must list all participants and the primary view "
                          "(views[0]) must have a series for each")
    for v in views:
        for s in v:
            if s is not None and (s.ndim != 2 or s.shape[1] != r):
                raise ConfigError(f"series must be (T, {r}), got {s.shape}")


def _tangent_views(views: Sequence[Sequence[np.ndarray | None]], r: int, shrink: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """Full-length FC of every view mapped to tangent space with the cohort's reference.

    Returns
    -------
    tuple
        ``has`` (V, N) which participants each view holds, the reference and fill
        (:func:`fit_reference` on the primary view), the (N, R, R) float32 tangent FC of each
        view, and ``valid`` (N, R) ROIs of the primary view.
    """
    full = [np.stack([_pearson(s) if s is not None else np.full((r, r), np.nan) for s in v])
            for v in views]
    has = np.stack([np.array([s is not None for s in v]) for v in views])  # (V, N)
    reference, fill = fit_reference(full[0], shrink)
    tangents = [tangent_space(f, reference, fill, shrink).astype(np.float32) for f in full]
    valid = np.isfinite(full[0]).sum(axis=-1) > 1  # (N, R)
    return has, reference, fill, tangents, valid


def _batch_pairs(idx: np.ndarray, views: Sequence[Sequence[np.ndarray | None]],
                 has: np.ndarray, tangents: list[np.ndarray], cfg: TangentPretrainConfig,
                 rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Input pseudo-FC (a random view, frames dropped) and target tangent FC per participant."""
    src, tgt = [], []
    for i in idx:
        avail = np.flatnonzero(has[:, i])
        v_in = int(rng.choice(avail))
        src.append(_drop_frames_fc(views[v_in][i], cfg.drop_fraction, rng))
        others = avail[avail != v_in]
        if cfg.target == "consensus":
            tgt.append(np.mean([tangents[v][i] for v in avail], axis=0))
        elif cfg.target == "primary":
            tgt.append(tangents[0][i])
        elif len(others):
            tgt.append(tangents[int(rng.choice(others))][i])
        else:
            tgt.append(tangents[v_in][i])
    return src, tgt


def _batch_loss(encoder: TangentMassEncoder, src: list[np.ndarray], tgt: list[np.ndarray],
                v: Any, cfg: TangentPretrainConfig) -> tuple[Any, Any]:
    """Weighted MSE of the refined matrices (hidden ROIs x ``masked_weight``) and the MSE of
    the hidden ROIs' pairs alone, for one batch with ROI validity ``v`` (B, R)."""
    import torch

    device = v.device
    fc_in = torch.as_tensor(np.stack(src), dtype=torch.float32, device=device)
    fc_in = fc_in.masked_fill(~v[:, :, None] | ~v[:, None, :], float("nan"))
    t_in = encoder.tangent(fc_in)
    target = torch.as_tensor(np.stack(tgt), device=device)
    mask = (torch.rand(len(src), v.shape[1], generator=None) < cfg.mask_ratio).to(device) & v
    y = encoder.refine_tangent(t_in, v, mask)
    pair = (v[:, :, None] & v[:, None, :]).float()
    hid = (mask[:, :, None] | mask[:, None, :]).float()
    w = (1.0 + (cfg.masked_weight - 1.0) * hid) * pair
    err = (y - target) ** 2
    loss = (err * w).sum() / w.sum()
    return loss, (err * hid * pair).sum() / (hid * pair).sum().clamp_min(1.0)


def _write_log(log_path: str | Path | None, logs: list[dict[str, Any]]) -> None:
    """Rewrite the whole per-epoch log atomically (:data:`LOG_COLUMNS`)."""
    if log_path is None:
        return
    import pandas as pd

    from ...utils import atomic_path

    with atomic_path(Path(log_path)) as tmp:
        pd.DataFrame(logs, columns=list(LOG_COLUMNS)).to_csv(tmp, sep="\t", index=False)


def pretrain_tangent(views: Sequence[Sequence[np.ndarray | None]], model_cfg: TangentMassConfig,
                     cfg: TangentPretrainConfig, log_path: str | Path | None = None,
                     progress: bool = True) -> tuple[TangentMassEncoder, list[dict[str, Any]]]:
    """Fit the reference and pretrain a :class:`TangentMassEncoder` on multi-view series.

    Parameters
    ----------
    views : sequence of sequences
        ``views[v][i]`` is participant ``i``'s (T, R) series under pipeline ``v`` or None when
        that pipeline is missing for them. ``views[0]`` (the primary pipeline) must be complete:
        the reference is fitted on it.
    model_cfg : TangentMassConfig
        Architecture.
    cfg : TangentPretrainConfig
        Optimisation.
    log_path : str or Path, optional
        Per-epoch log (TSV, :data:`LOG_COLUMNS`), rewritten atomically after every epoch.
    progress : bool
        Log one line per epoch (``bidsfm.pretrain`` logger).

    Returns
    -------
    encoder : TangentMassEncoder
        On the CPU, eval mode, with its reference set (readout axes not yet fitted).
    logs : list of dict
        One entry per epoch.
    """
    import logging

    import torch

    from ..device import resolve_device

    logger = logging.getLogger("bidsfm.pretrain")
    n = len(views[0])
    r = model_cfg.n_rois
    _check_views(views, r)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = resolve_device(cfg.device)
    shrink = float(model_cfg.shrinkage)

    has, reference, fill, tangents, valid = _tangent_views(views, r, shrink)
    encoder = TangentMassEncoder(model_cfg)
    encoder.set_reference(whitener(reference), fill)
    encoder.to(device)
    opt = torch.optim.AdamW(encoder.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(round(cfg.warmup_epochs * steps_per_epoch)))
    monitor = rng.choice(n, size=min(n, 128), replace=False)
    input_sd = float(upper_triangle(tangents[0][monitor]).std(axis=0).mean())
    logs: list[dict[str, Any]] = []
    step = 0
    t_start = time.time()
    valid_t = torch.as_tensor(valid)
    for epoch in range(1, cfg.epochs + 1):
        encoder.train()
        perm = rng.permutation(n)
        tot = tot_m = 0.0
        for b0 in range(0, n, cfg.batch_size):
            idx = perm[b0:b0 + cfg.batch_size]
            src, tgt = _batch_pairs(idx, views, has, tangents, cfg, rng)
            lr = (warmup_cosine_lr(step, total, warmup, cfg.lr) if cfg.schedule == "cosine"
                  else cfg.lr)
            set_lr(opt, lr)
            loss, masked = _batch_loss(encoder, src, tgt, valid_t[idx].to(device), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(encoder.parameters(), cfg.clip_grad)
            opt.step()
            step += 1
            tot += float(loss.detach()) * len(idx)
            tot_m += float(masked.detach()) * len(idx)
        emb = embed_tangent_fc(encoder, tangents[0][monitor], valid[monitor])
        entry = {"epoch": epoch, "loss": tot / n, "masked_loss": tot_m / n, "lr": lr,
                 "emb_sd": float(emb.std(axis=0).mean()), "input_sd": input_sd,
                 "seconds": round(time.time() - t_start, 1)}
        logs.append(entry)
        if progress:
            logger.info("pretraining epoch %d/%d: loss %.5f (hidden ROIs %.5f), embedding "
                        "sd %.4f (input %.4f), %.0f s", epoch, cfg.epochs, entry["loss"],
                        entry["masked_loss"], entry["emb_sd"], input_sd, entry["seconds"])
        _write_log(log_path, logs)
    encoder = encoder.cpu().eval()
    return encoder, logs
