"""BrainMass objective: self-supervised pretraining of the FC encoder (LRA + MRM).

The objectives are those of BrainMass (Yang et al., "BrainMass: Advancing Brain Network
Analysis for Diagnosis with Large-scale Self-Supervised Learning", IEEE TMI 2024), written
anew for bidsfm:

* **pseudo-FC views**: for every subject and step, two Pearson FC matrices, each computed after
  dropping a random 20% of the time points (order of the kept frames preserved);
* **Latent Representation Alignment (LRA)**: BYOL (Grill et al., NeurIPS 2020). The online
  encoder's embedding goes through a projector and a predictor MLP and must match (cosine) the
  projection of the *other* view by an exponential-moving-average target encoder + projector
  (no gradient). Loss ``2 - 2 cos`` averaged over both directions; the EMA momentum rises from
  0.996 to 1 on a cosine schedule over all steps;
* **Mask-ROI Modelling (MRM)**: in the online views a random 20% of the valid ROIs are hidden
  (row replaced by the learned mask token, column zeroed; see
  :mod:`bidsfm.models.brainmass`), and a linear head ``R -> R`` reconstructs their FC rows from
  the token states. MSE over the valid, off-diagonal entries of the masked rows.

Loss = LRA + ``mrm_weight`` * MRM. Unlike the official code, every learned part (mask token,
reconstruction head, projector, predictor, ROI embedding) is in the optimizer.

Hyper-parameters: :class:`~bidsfm.models.training.configs.PretrainConfig`; schedules:
:mod:`.schedules`; the command: ``bidsfm-pretrain`` (:mod:`.cli`).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import InputDataError
from ..brainmass import BrainMassConfig, BrainMassEncoder, fc_from_timeseries, infer_valid_rois
from ..device import resolve_device
from .configs import PretrainConfig
from .epoch_log import append_row, start_log
from .schedules import (
    cosine_momentum,
    param_groups,
    set_lr,
    warmup_cosine_lr,
    warmup_steps,
)

__all__ = ["BrainMassPretrainer", "make_views", "fit_pretrainer", "pretrain", "LOG_COLUMNS"]

LOG_COLUMNS = ("epoch", "loss", "lra", "mrm", "lr", "momentum", "seconds")
#: parameters without weight decay besides biases and norms
NO_DECAY = ("mask_embedding", "roi_embed")


# -------------------------------------------------------------------------------------- model
def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    """BYOL head: Linear -> BatchNorm -> ReLU -> Linear."""
    return nn.Sequential(nn.Linear(n_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, n_out))


class BrainMassPretrainer(nn.Module):
    """Online encoder + heads and the EMA target, computing the BrainMass pretraining losses.

    Parameters
    ----------
    model_cfg : BrainMassConfig
        Encoder architecture.
    cfg : PretrainConfig
        Pretraining configuration (head widths).

    Attributes
    ----------
    online : BrainMassEncoder
        The encoder being trained (the one to keep).
    projector, predictor : nn.Sequential
        BYOL heads of the online branch.
    recon_head : nn.Linear
        MRM reconstruction head (R -> R) applied to token states.
    target, target_projector
        EMA copies of ``online`` and ``projector`` (no gradient; the target encoder always
        runs in eval mode, i.e. without dropout).
    """

    def __init__(self, model_cfg: BrainMassConfig, cfg: PretrainConfig) -> None:
        super().__init__()
        self.model_cfg = model_cfg
        self.online = BrainMassEncoder(model_cfg)
        emb = self.online.embedding_dim
        self.projector = _mlp(emb, cfg.projector_hidden, cfg.projection_dim)
        self.predictor = _mlp(cfg.projection_dim, cfg.predictor_hidden, cfg.projection_dim)
        self.recon_head = nn.Linear(model_cfg.n_rois, model_cfg.n_rois)
        self.target = copy.deepcopy(self.online)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self._target_params():
            p.requires_grad_(False)
        self.target.eval()

    def _target_params(self) -> list[nn.Parameter]:
        return list(self.target.parameters()) + list(self.target_projector.parameters())

    def train(self, mode: bool = True) -> BrainMassPretrainer:
        """Set training mode; the target encoder stays in eval mode (no dropout)."""
        super().train(mode)
        self.target.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of the online branch (everything the optimizer updates)."""
        return [(n, p) for n, p in self.named_parameters()
                if not n.startswith(("target.", "target_projector."))]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA update ``target = m * target + (1 - m) * online`` (buffers are copied)."""
        pairs = ((self.target, self.online), (self.target_projector, self.projector))
        for tgt, src in pairs:
            for pt, ps in zip(tgt.parameters(), src.parameters(), strict=True):
                pt.lerp_(ps.detach(), 1.0 - momentum)
            for bt, bs in zip(tgt.buffers(), src.buffers(), strict=True):
                bt.copy_(bs)

    def forward(self, fc1: Tensor, fc2: Tensor, valid1: Tensor, valid2: Tensor, mask1: Tensor,
                mask2: Tensor) -> dict[str, Tensor]:
        """Losses for a batch of two views.

        Parameters
        ----------
        fc1, fc2 : Tensor
            (B, R, R) pseudo-FC views (NaN for missing ROIs).
        valid1, valid2 : Tensor
            (B, R) bool valid ROIs of each view.
        mask1, mask2 : Tensor
            (B, R) bool ROIs masked in the online view (subset of the valid ones).

        Returns
        -------
        dict
            ``lra`` and ``mrm`` (scalar tensors with gradient); the training loop combines them
            as ``lra + mrm_weight * mrm``.
        """
        fc = torch.cat([fc1, fc2])
        valid = torch.cat([valid1, valid2])
        mask = torch.cat([mask1, mask2])
        tokens = self.online(fc, valid, mask)
        p = self.predictor(self.projector(self.online.readout(tokens)))
        with torch.no_grad():
            swapped = torch.cat([fc2, fc1])
            swapped_valid = torch.cat([valid2, valid1])
            z_t = self.target_projector(self.target.readout(self.target(swapped, swapped_valid)))
        cos = F.cosine_similarity(p.float(), z_t.float().detach(), dim=-1)
        lra = (2.0 - 2.0 * cos).mean()

        r = fc.shape[-1]
        recon = self.recon_head(tokens).float()
        target_fc = fc.to(recon.device, torch.float32)
        off = ~torch.eye(r, dtype=torch.bool, device=recon.device)
        sel = mask[:, :, None] & valid[:, None, :] & off & torch.isfinite(target_fc)
        n_sel = sel.sum()
        if int(n_sel) > 0:
            diff = torch.where(sel, recon - torch.nan_to_num(target_fc), torch.zeros_like(recon))
            mrm = (diff**2).sum() / n_sel
        else:
            mrm = recon.sum() * 0.0
        return {"lra": lra, "mrm": mrm}


# ----------------------------------------------------------------------------------- training
def make_views(series: list[np.ndarray], idx: np.ndarray, cfg: PretrainConfig,
                rng: np.random.Generator) -> list[Tensor]:
    """Two pseudo-FC views of the subjects ``idx`` with their valid and masked ROIs.

    Parameters
    ----------
    series : list of np.ndarray
        (T, R) float32 series of every subject.
    idx : np.ndarray
        Subjects of the batch.
    cfg : PretrainConfig
        ``drop_fraction`` (time points dropped per view) and ``mask_fraction`` (valid ROIs
        masked per view).
    rng : np.random.Generator
        Source of the dropped frames and masked ROIs.

    Returns
    -------
    list of Tensor
        ``[fc1, fc2, valid1, valid2, mask1, mask2]`` on the CPU.
    """
    fcs: list[Tensor] = []
    valids: list[Tensor] = []
    masks: list[Tensor] = []
    for _ in range(2):
        fc = torch.stack([fc_from_timeseries(series[i], cfg.drop_fraction, rng) for i in idx])
        valid = infer_valid_rois(fc)
        mask = torch.zeros_like(valid)
        for b in range(len(idx)):
            cand = np.flatnonzero(valid[b].numpy())
            n_mask = int(round(cfg.mask_fraction * len(cand)))
            if cfg.mask_fraction > 0 and len(cand) >= 2:
                n_mask = min(max(n_mask, 1), len(cand) - 1)
            if n_mask > 0:
                mask[b, torch.from_numpy(rng.choice(cand, size=n_mask, replace=False))] = True
        fcs.append(fc)
        valids.append(valid)
        masks.append(mask)
    return [*fcs, *valids, *masks]


def _check_series(series: Sequence[np.ndarray], n_rois: int, cfg: PretrainConfig) -> None:
    if len(series) == 0:
        raise InputDataError("no time series to pretrain on")
    for i, s in enumerate(series):
        if s.ndim != 2 or s.shape[1] != n_rois:
            raise InputDataError(f"series {i} has shape {s.shape}, expected (T, {n_rois})")
        if s.shape[0] - int(round(cfg.drop_fraction * s.shape[0])) < 10:
            raise InputDataError(f"series {i} has only {s.shape[0]} time points",
                                 remedy="Remove runs shorter than about 15 volumes")


def fit_pretrainer(model: BrainMassPretrainer, series: Sequence[np.ndarray],
                   cfg: PretrainConfig, log_path: str | Path | None = None,
                   progress: bool = True) -> list[dict[str, float]]:
    """Train a :class:`BrainMassPretrainer` in place.

    Parameters
    ----------
    model : BrainMassPretrainer
        Model to train (moved to the configured device; left in eval mode).
    series : sequence of np.ndarray
        (T, R) ROI time series, one per subject/run (NaN or all-zero columns = missing ROIs).
    cfg : PretrainConfig
        Hyper-parameters.
    log_path : str or Path, optional
        TSV receiving one row per epoch as soon as the epoch ends.
    progress : bool
        Show a rich progress bar (only when stderr is a terminal).

    Returns
    -------
    list of dict
        Per epoch: epoch, loss, lra, mrm (means over subjects), lr and momentum (at the end of
        the epoch) and seconds.

    Notes
    -----
    Runs under :func:`torch.random.fork_rng` seeded with ``cfg.seed``, so the global RNG is
    left untouched; views, masks and shuffling come from ``numpy.random.default_rng(seed)``.
    On CPU the result is bitwise reproducible for a given seed and thread count.
    """
    device = resolve_device(cfg.device)
    series = [np.asarray(s, dtype=np.float32) for s in series]
    _check_series(series, model.model_cfg.n_rois, cfg)
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(cfg.seed)
        return _fit(model, series, cfg, device, log_path, progress)


def _fit(model: BrainMassPretrainer, series: list[np.ndarray], cfg: PretrainConfig,
         device: torch.device, log_path: str | Path | None,
         progress: bool) -> list[dict[str, float]]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model.trainable_parameters(), cfg.weight_decay,
                                         NO_DECAY), lr=cfg.lr, betas=(0.9, 0.999))
    n = len(series)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total)
    amp = device.type == "cuda" and cfg.bf16
    params = [p for _, p in model.trainable_parameters()]
    log = start_log(log_path, LOG_COLUMNS)

    console = Console(stderr=True)
    show = progress and sys.stderr.isatty()
    bar = Progress(TextColumn("[bold]pretrain[/] {task.description}"), BarColumn(),
                   MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                   console=console, disable=not show, transient=False)
    logs: list[dict[str, float]] = []
    step = 0
    lr = momentum = 0.0
    with bar:
        task = bar.add_task("", total=total)
        for epoch in range(1, cfg.epochs + 1):
            model.train()
            t0 = time.perf_counter()
            order = rng.permutation(n)
            sums = {"loss": 0.0, "lra": 0.0, "mrm": 0.0}
            for start in range(0, n, cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                views = [v.to(device, non_blocking=True) for v in make_views(series, idx, cfg,
                                                                             rng)]
                lr = warmup_cosine_lr(step, total, warmup, cfg.lr, cfg.min_lr)
                set_lr(opt, lr)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                    out = model(*views)
                loss = out["lra"] + cfg.mrm_weight * out["mrm"]
                if not torch.isfinite(loss.detach()):
                    raise RuntimeError(f"non-finite pretraining loss at epoch {epoch}, step "
                                       f"{step} (lra={float(out['lra'])}, "
                                       f"mrm={float(out['mrm'])}); lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                momentum = cosine_momentum(step + 1, total, cfg.ema_momentum)
                model.update_target(momentum)
                step += 1
                k = len(idx)
                value = float(loss.detach())
                sums["loss"] += value * k
                sums["lra"] += float(out["lra"].detach()) * k
                sums["mrm"] += float(out["mrm"].detach()) * k
                bar.update(task, advance=1,
                           description=f"epoch {epoch}/{cfg.epochs} loss {value:.4f}")
            row = {"epoch": epoch, **{k: v / n for k, v in sums.items()}, "lr": lr,
                   "momentum": momentum, "seconds": time.perf_counter() - t0}
            logs.append(row)
            append_row(log, row, LOG_COLUMNS)
    model.eval()
    return logs


def pretrain(series: list[np.ndarray], model_cfg: BrainMassConfig, cfg: PretrainConfig,
             log_path: str | Path | None = None,
             progress: bool = True) -> tuple[BrainMassEncoder, list[dict[str, float]]]:
    """Pretrain a BrainMass encoder with LRA (BYOL) + Mask-ROI Modelling.

    Parameters
    ----------
    series : list of np.ndarray
        (T, R) ROI time series (R == ``model_cfg.n_rois``).
    model_cfg : BrainMassConfig
        Encoder architecture.
    cfg : PretrainConfig
        Hyper-parameters (seed, device, ...).
    log_path : str or Path, optional
        Per-epoch TSV log.
    progress : bool
        Show a progress bar when stderr is a terminal.

    Returns
    -------
    encoder : BrainMassEncoder
        The online encoder, in eval mode, on the training device.
    logs : list of dict
        Per-epoch statistics (see :func:`fit_pretrainer`).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = BrainMassPretrainer(model_cfg, cfg)
    logs = fit_pretrainer(model, series, cfg, log_path=log_path, progress=progress)
    return model.online.eval(), logs
