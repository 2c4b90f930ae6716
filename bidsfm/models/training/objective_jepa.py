"""JEPA pretraining of the Brain-JEPA time-series encoder with spatiotemporal masking.

Joint-Embedding Predictive Architecture (Assran et al., I-JEPA, CVPR 2023) as adapted to fMRI
by Brain-JEPA (Dong et al., NeurIPS 2024), written anew for bidsfm:

* a **context encoder** (:class:`~bidsfm.models.brainjepa.BrainJEPAEncoder`) sees only the
  tokens of an observation block;
* a narrow **predictor** (its own width, depth, gradient positional code and learned mask
  token) receives the context tokens plus one mask token per target position and predicts the
  target tokens' representations;
* the **target encoder** is an exponential moving average (EMA) of the context encoder
  (momentum rising from ``ema_start`` to ``ema_end`` linearly over training, no gradient); it
  encodes the whole window, and its final tokens, layer-normed without affine parameters, are
  the regression targets;
* loss = smooth-L1 (Huber, beta 1) between predictions and targets, averaged over target tokens
  of valid ROIs.

**Spatiotemporal masking** (Brain-JEPA's three target kinds,
:func:`~bidsfm.models.training.jepa_masks.sample_masks`). On the
(ROI x time patch) grid, the observation (context) block is a random subset of ROIs ``C`` over a
contiguous run of time patches ``W``; the targets are

* *cross-ROI* (alpha): ROIs outside ``C`` at times inside ``W`` (other regions, same time);
* *cross-time* (beta): ROIs inside ``C`` at times outside ``W`` (same regions, other times);
* *double-cross* (gamma): ROIs outside ``C`` at times outside ``W``.

The three target blocks are disjoint from the context and from each other by construction.
Block sizes are drawn once per step (so the batch stacks) and positions per sample.

Optimiser: AdamW (no weight decay on biases, norms and the mask token), linear warmup then
cosine decay of the learning rate, gradient clipping. Deterministic on CPU for a given seed
and thread count (fork of the torch RNG, numpy ``default_rng(seed)`` for crops and masks);
bfloat16 autocast on CUDA.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputDataError
from ..brainjepa import (
    Block,
    BrainJEPAConfig,
    BrainJEPAEncoder,
    GradientPositionalCode,
    gather_tokens,
    init_vit_weights,
)
from ..device import resolve_device
from .configs import JEPAConfig
from .epoch_log import append_row, start_log
from .jepa_masks import MaskSet, random_windows, sample_masks
from .schedules import (
    linear_momentum,
    param_groups,
    set_lr,
    warmup_cosine_lr,
    warmup_steps,
)

__all__ = ["BrainJEPAPredictor", "JEPAPretrainer", "fit_jepa", "pretrain_jepa",
           "JEPA_LOG_COLUMNS"]

JEPA_LOG_COLUMNS = ("epoch", "loss", "cross_roi", "cross_time", "double_cross", "variance",
                    "covariance", "lr", "momentum", "seconds")
#: parameters without weight decay besides biases and norms
NO_DECAY = ("mask_token",)


# ---------------------------------------------------------------------------------- predictor
class BrainJEPAPredictor(nn.Module):
    """Narrow Transformer predicting target-token representations from context tokens.

    Layout (official names): ``predictor_embed`` Linear(D, Dp), ``mask_token`` (1, 1, Dp),
    ``predictor_2dpe_proj`` (gradient positional code of width Dp), ``predictor_blocks``,
    ``predictor_norm``, ``predictor_proj`` Linear(Dp, D).
    """

    def __init__(self, enc_cfg: BrainJEPAConfig, dim: int = 64, depth: int = 2,
                 n_heads: int | None = None) -> None:
        super().__init__()
        heads = n_heads or enc_cfg.n_heads
        if dim % 4 or dim % heads:
            raise ConfigError(f"predictor_dim {dim} must be divisible by 4 and by {heads} heads")
        self.predictor_embed = nn.Linear(enc_cfg.embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.predictor_2dpe_proj = GradientPositionalCode(enc_cfg.n_gradients, dim,
                                                          enc_cfg.n_rois, enc_cfg.n_patches)
        self.predictor_blocks = nn.ModuleList(Block(dim, heads, enc_cfg.mlp_ratio,
                                                    enc_cfg.qkv_bias, enc_cfg.norm_eps)
                                              for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(dim, eps=enc_cfg.norm_eps)
        self.predictor_proj = nn.Linear(dim, enc_cfg.embed_dim)
        init_vit_weights(self, self.predictor_blocks)
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.04, b=0.04)

    def forward(self, ctx: Tensor, ctx_index: Tensor, tgt_index: Tensor, gradients: Tensor,
                key_valid: Tensor | None = None) -> Tensor:
        """Predictions (B, Nt, D) for the target tokens ``tgt_index`` given context tokens."""
        pos = self.predictor_2dpe_proj(gradients).expand(ctx.shape[0], -1, -1).to(ctx.dtype)
        x = self.predictor_embed(ctx) + gather_tokens(pos, ctx_index)
        q = self.mask_token.to(ctx.dtype) + gather_tokens(pos, tgt_index)
        h = torch.cat([x, q], dim=1)
        for blk in self.predictor_blocks:
            h = blk(h, key_valid)
        h = self.predictor_norm(h[:, ctx.shape[1]:])
        return self.predictor_proj(h)


class JEPAPretrainer(nn.Module):
    """Context encoder + predictor + EMA target encoder, computing the JEPA loss."""

    def __init__(self, enc_cfg: BrainJEPAConfig, gradients: np.ndarray | Tensor,
                 cfg: JEPAConfig) -> None:
        super().__init__()
        self.enc_cfg = enc_cfg
        self.cfg = cfg
        self.encoder = BrainJEPAEncoder(enc_cfg, gradients)
        self.predictor = BrainJEPAPredictor(enc_cfg, cfg.predictor_dim, cfg.predictor_depth)
        self.target = copy.deepcopy(self.encoder)
        for p in self.target.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> JEPAPretrainer:
        """Train mode for the online parts; the target encoder stays in eval mode."""
        super().train(mode)
        self.target.eval()
        return self

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters of the context encoder and the predictor that require grad."""
        return [(n, p) for n, p in self.named_parameters()
                if p.requires_grad and not n.startswith("target.")]

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """EMA: ``target = m * target + (1 - m) * encoder`` (parameters that are trained)."""
        for pt, po in zip(self.target.parameters(), self.encoder.parameters(), strict=True):
            if po.requires_grad:
                pt.mul_(momentum).add_(po.detach(), alpha=1.0 - momentum)

    def forward(self, x: Tensor, valid: Tensor, masks: MaskSet) -> dict[str, Tensor]:
        """Losses of one batch: ``loss`` and one entry per target kind.

        Parameters
        ----------
        x : Tensor
            (B, R, T) normalised windows.
        valid : Tensor
            (B, R) bool ROI validity.
        masks : MaskSet
            From :func:`sample_masks` (on the same device as ``x``).
        """
        tvalid = self.encoder.token_valid(valid)
        with torch.no_grad():
            h = self.target(x, valid)
            h = F.layer_norm(h.float(), (h.shape[-1],))
        tgt_index = masks.all_targets()
        ctx_valid = torch.gather(tvalid, 1, masks.context)
        # a sample whose context has no valid token would give NaN attention: let it attend all
        ctx_valid = ctx_valid | ~ctx_valid.any(dim=1, keepdim=True)
        ctx = self.encoder(x, valid, keep=masks.context)
        tgt_valid = torch.gather(tvalid, 1, tgt_index)
        pred = self.predictor(ctx, masks.context, tgt_index, self.encoder.gradients,
                              key_valid=torch.cat([ctx_valid, tgt_valid | ~tgt_valid.any(
                                  dim=1, keepdim=True)], dim=1))
        target = gather_tokens(h, tgt_index)
        err = F.smooth_l1_loss(pred.float(), target, reduction="none").mean(dim=-1)
        w = tgt_valid.float()
        out: dict[str, Tensor] = {"loss": (err * w).sum() / w.sum().clamp_min(1.0)}
        start = 0
        for name, idx in masks.targets.items():
            sl = slice(start, start + idx.shape[1])
            out[name] = (err[:, sl] * w[:, sl]).sum() / w[:, sl].sum().clamp_min(1.0)
            start += idx.shape[1]
        var, cov = self.regulariser(ctx, masks.context, ctx_valid)
        out["variance"], out["covariance"] = var, cov
        if self.cfg.var_weight > 0 or self.cfg.cov_weight > 0:
            out["loss"] = (out["loss"] + self.cfg.var_weight * var
                           + self.cfg.cov_weight * cov)
        return out

    def regulariser(self, ctx: Tensor, index: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Variance hinge and covariance penalty of the position-centred context tokens.

        Parameters
        ----------
        ctx : Tensor
            (B, K, D) context-encoder tokens.
        index : Tensor
            (B, K) their token positions.
        valid : Tensor
            (B, K) bool, False for missing-ROI tokens (left out).

        Returns
        -------
        tuple of Tensor
            ``mean(relu(var_target - std))`` and ``sum(offdiag(cov) ** 2) / D``.
        """
        z = F.layer_norm(ctx.float(), (ctx.shape[-1],))
        d = z.shape[-1]
        flat_z, flat_i = z.reshape(-1, d), index.reshape(-1)
        keep = valid.reshape(-1).float().unsqueeze(-1)
        n_tok = self.encoder.config.n_tokens
        sums = torch.zeros(n_tok, d, device=z.device).index_add(0, flat_i, flat_z * keep)
        counts = torch.zeros(n_tok, 1, device=z.device).index_add(0, flat_i, keep)
        shared = counts[flat_i] > 1
        resid = (flat_z - (sums / counts.clamp_min(1.0))[flat_i])
        # positions seen once in the batch carry no between-participant information
        resid = resid[(shared & (keep > 0)).squeeze(-1)]
        if resid.shape[0] < 2:
            zero = z.sum() * 0.0
            return zero, zero
        resid = resid - resid.mean(dim=0)
        std = torch.sqrt(resid.var(dim=0) + 1e-4)
        var = F.relu(self.cfg.var_target - std).mean()
        c = resid.T @ resid / (resid.shape[0] - 1)
        cov = (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
        return var, cov


# ----------------------------------------------------------------------------------- training
def fit_jepa(model: JEPAPretrainer, runs: Sequence[tuple[np.ndarray, np.ndarray]],
             cfg: JEPAConfig, log_path: str | Path | None = None,
             max_seconds: float | None = None) -> list[dict[str, float]]:
    """Train a :class:`JEPAPretrainer` in place on prepared runs.

    Parameters
    ----------
    model : JEPAPretrainer
        Model to train (left in eval mode on the training device).
    runs : sequence of (np.ndarray, np.ndarray)
        Per run: (T', R) resampled, normalised series (T' >= n_frames) and (R,) validity, as
        from :func:`bidsfm.models.resample.normalise_run`.
    cfg : JEPAConfig
        Hyper-parameters.
    log_path : str or Path, optional
        TSV receiving one row per epoch.
    max_seconds : float, optional
        Stop after the first epoch that ends past this wall-clock budget (the schedule is not
        shortened; the log says how many epochs ran).

    Returns
    -------
    list of dict
        Per epoch: mean losses, lr, momentum, seconds.
    """
    device = resolve_device(cfg.device)
    n_frames = model.enc_cfg.n_frames
    if not runs:
        raise InputDataError("no time series to pretrain on")
    for i, (z, _valid) in enumerate(runs):
        if z.ndim != 2 or z.shape[1] != model.enc_cfg.n_rois or z.shape[0] < n_frames:
            raise InputDataError(f"run {i} has shape {z.shape}, expected (>= {n_frames}, "
                                 f"{model.enc_cfg.n_rois})")
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(cfg.seed)
        return _fit(model, runs, cfg, device, log_path, max_seconds)


def _fit(model: JEPAPretrainer, runs: Sequence[tuple[np.ndarray, np.ndarray]], cfg: JEPAConfig,
         device: torch.device, log_path: str | Path | None, max_seconds: float | None
         ) -> list[dict[str, float]]:
    rng = np.random.default_rng(cfg.seed)
    model.to(device)
    opt = torch.optim.AdamW(param_groups(model.trainable_parameters(), cfg.weight_decay,
                                         NO_DECAY), lr=cfg.lr)
    params = [p for _, p in model.trainable_parameters()]
    n = len(runs)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = warmup_steps(cfg.warmup_epochs, steps_per_epoch, total)
    amp = device.type == "cuda" and cfg.bf16
    ecfg = model.enc_cfg
    log = start_log(log_path, JEPA_LOG_COLUMNS)
    logs: list[dict[str, float]] = []
    step, lr, momentum = 0, 0.0, cfg.ema_start
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        order = rng.permutation(n)
        sums = dict.fromkeys(("loss", "cross_roi", "cross_time", "double_cross", "variance",
                              "covariance"), 0.0)
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            x, valid = random_windows(runs, idx, ecfg.n_frames, rng)
            masks = sample_masks(len(idx), ecfg.n_rois, ecfg.n_patches, cfg, rng)
            x, valid = x.to(device), valid.to(device)
            masks = MaskSet(masks.context.to(device),
                            {k: v.to(device) for k, v in masks.targets.items()})
            lr = warmup_cosine_lr(step, total, warmup, cfg.lr, cfg.min_lr)
            set_lr(opt, lr)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x, valid, masks)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()):
                raise RuntimeError(f"non-finite JEPA loss at epoch {epoch}, step {step}; "
                                   "lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            step += 1
            momentum = linear_momentum(step, total, cfg.ema_start, cfg.ema_end)
            model.update_target(momentum)
            for k in sums:
                sums[k] += float(out[k].detach()) * len(idx)
        row = {"epoch": epoch, **{k: v / n for k, v in sums.items()}, "lr": lr,
               "momentum": momentum, "seconds": time.perf_counter() - t0}
        logs.append(row)
        append_row(log, row, JEPA_LOG_COLUMNS)
        if max_seconds is not None and time.perf_counter() - t_start > max_seconds:
            break
    model.eval()
    return logs


def pretrain_jepa(runs: Sequence[tuple[np.ndarray, np.ndarray]], enc_cfg: BrainJEPAConfig,
                  gradients: np.ndarray, cfg: JEPAConfig, log_path: str | Path | None = None,
                  max_seconds: float | None = None
                  ) -> tuple[BrainJEPAEncoder, list[dict[str, float]]]:
    """Build a :class:`JEPAPretrainer` (seeded) and train it; return the target encoder.

    The EMA target encoder is returned (as in I-JEPA / Brain-JEPA, whose released checkpoints
    are the ``target_encoder``), in eval mode.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = JEPAPretrainer(enc_cfg, gradients, cfg)
    logs = fit_jepa(model, runs, cfg, log_path=log_path, max_seconds=max_seconds)
    return model.target.eval(), logs
