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

**Spatiotemporal masking** (Brain-JEPA's three target kinds, :func:`sample_masks`). On the
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
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, InputDataError
from .brainjepa import (
    Block,
    BrainJEPAConfig,
    BrainJEPAEncoder,
    GradientPositionalCode,
    gather_tokens,
    init_vit_weights,
)

__all__ = ["JEPAConfig", "MaskSet", "sample_masks", "BrainJEPAPredictor", "JEPAPretrainer",
           "fit_jepa", "pretrain_jepa", "random_windows", "JEPA_LOG_COLUMNS"]

JEPA_LOG_COLUMNS = ("epoch", "loss", "cross_roi", "cross_time", "double_cross", "variance",
                    "covariance", "lr", "momentum", "seconds")


@dataclass
class JEPAConfig:
    """JEPA pretraining hyper-parameters.

    Parameters
    ----------
    epochs, batch_size : int
        Passes over the runs; windows per step (one random window per run and epoch).
    lr, min_lr, warmup_epochs : float
        Peak AdamW learning rate, final learning rate of the cosine decay, warmup length.
    weight_decay : float
        AdamW weight decay.
    ema_start, ema_end : float
        EMA momentum of the target encoder (linear ramp over all steps).
    predictor_dim, predictor_depth : int
        Width and depth of the predictor.
    context_roi : tuple of float
        Range of the fraction of ROIs in the observation block.
    context_time : tuple of float
        Range of the fraction of time patches in the observation window (at least one patch
        stays outside it).
    target_roi : tuple of float
        Range of the fraction of ROIs (of all ROIs) in each target block.
    grad_clip : float
        Max gradient norm (0 disables).
    seed : int
        Seed of initialisation, crops, masks and shuffling.
    device : str
        ``auto``, ``cpu`` or ``cuda[:N]``.
    bf16 : bool
        bfloat16 autocast on CUDA.
    var_weight, var_target, cov_weight : float
        Optional variance-covariance regulariser of the context tokens (0 disables; the
        official Brain-JEPA has none): each context token is layer-normed (no affine), the
        batch mean of the tokens at the same (ROI, time-patch) position is subtracted, and
        ``var_weight * mean(relu(var_target - std_d))`` (std of each feature over the batch's
        residual tokens) plus ``cov_weight * sum(offdiag(cov)^2) / D`` is added to the loss.
        It keeps the part of a token that differs between participants from shrinking to
        nothing, the collapse seen with short runs of plain JEPA on small cohorts (VICReg:
        Bardes et al. 2022; C-JEPA: Mo & Tong 2024).
    """

    epochs: int = 20
    batch_size: int = 16
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_epochs: float = 2.0
    weight_decay: float = 0.04
    ema_start: float = 0.996
    ema_end: float = 1.0
    predictor_dim: int = 64
    predictor_depth: int = 2
    context_roi: tuple[float, float] = (0.45, 0.6)
    context_time: tuple[float, float] = (0.5, 0.75)
    target_roi: tuple[float, float] = (0.15, 0.3)
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    var_weight: float = 0.0
    var_target: float = 0.5
    cov_weight: float = 0.0

    def __post_init__(self) -> None:
        self.context_roi = tuple(self.context_roi)  # type: ignore[assignment]
        self.context_time = tuple(self.context_time)  # type: ignore[assignment]
        self.target_roi = tuple(self.target_roi)  # type: ignore[assignment]
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        for name in ("context_roi", "context_time", "target_roi"):
            lo, hi = getattr(self, name)
            if not 0.0 < lo <= hi < 1.0:
                raise ConfigError(f"{name} must satisfy 0 < low <= high < 1, got {(lo, hi)}")
        if self.context_roi[1] + self.target_roi[1] >= 1.0:
            raise ConfigError("context_roi + target_roi must stay below 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        d = asdict(self)
        for k in ("context_roi", "context_time", "target_roi"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JEPAConfig:
        """Inverse of :meth:`to_dict` (unknown keys raise ConfigError)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown JEPA configuration keys: {', '.join(unknown)}")
        return cls(**d)


# ------------------------------------------------------------------------------------ masking
@dataclass
class MaskSet:
    """Token indices (ROI-major, ``r * n_patches + t``) of one step's masks.

    Attributes
    ----------
    context : Tensor
        (B, Nc) observation-block tokens.
    targets : dict of str to Tensor
        ``cross_roi``, ``cross_time``, ``double_cross``: (B, Nk) target tokens.
    """

    context: Tensor
    targets: dict[str, Tensor]

    def all_targets(self) -> Tensor:
        """(B, sum Nk) concatenated target indices."""
        return torch.cat(list(self.targets.values()), dim=1)


def _frac(rng: np.random.Generator, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo + rng.random() * (hi - lo))


def sample_masks(batch: int, n_rois: int, n_patches: int, cfg: JEPAConfig,
                 rng: np.random.Generator) -> MaskSet:
    """Spatiotemporal masks for one step (see the module docstring).

    Parameters
    ----------
    batch, n_rois, n_patches : int
        Batch size and token grid.
    cfg : JEPAConfig
        Mask size ranges.
    rng : np.random.Generator
        Source of randomness.

    Returns
    -------
    MaskSet
    """
    if n_patches < 2:
        raise ConfigError("JEPA masking needs at least 2 time patches per window")
    n_ctx_roi = int(np.clip(round(_frac(rng, cfg.context_roi) * n_rois), 1, n_rois - 1))
    n_win = int(np.clip(round(_frac(rng, cfg.context_time) * n_patches), 1, n_patches - 1))
    n_out = n_patches - n_win
    n_alpha_roi = int(np.clip(round(_frac(rng, cfg.target_roi) * n_rois), 1, n_rois - n_ctx_roi))
    n_alpha_t = int(rng.integers(1, n_win + 1))
    n_beta_roi = int(np.clip(round(_frac(rng, cfg.target_roi) * n_rois), 1, n_ctx_roi))
    n_gamma_roi = int(np.clip(round(_frac(rng, cfg.target_roi) * n_rois), 1, n_rois - n_ctx_roi))
    n_beta_t = int(rng.integers(1, n_out + 1))
    n_gamma_t = int(rng.integers(1, n_out + 1))

    def grid(rois: np.ndarray, times: np.ndarray) -> np.ndarray:
        return (np.sort(rois)[:, None] * n_patches + np.sort(times)[None, :]).reshape(-1)

    ctx, alpha, beta, gamma = [], [], [], []
    for _ in range(batch):
        perm = rng.permutation(n_rois)
        inside, outside = perm[:n_ctx_roi], perm[n_ctx_roi:]
        t0 = int(rng.integers(0, n_patches - n_win + 1))
        win = np.arange(t0, t0 + n_win)
        out_t = np.setdiff1d(np.arange(n_patches), win)
        ctx.append(grid(inside, win))
        a0 = int(rng.integers(0, n_win - n_alpha_t + 1))
        alpha.append(grid(rng.choice(outside, n_alpha_roi, replace=False),
                          win[a0:a0 + n_alpha_t]))
        beta.append(grid(rng.choice(inside, n_beta_roi, replace=False),
                         rng.choice(out_t, n_beta_t, replace=False)))
        gamma.append(grid(rng.choice(outside, n_gamma_roi, replace=False),
                          rng.choice(out_t, n_gamma_t, replace=False)))

    def stack(rows: list[np.ndarray]) -> Tensor:
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    return MaskSet(context=stack(ctx), targets={"cross_roi": stack(alpha),
                                                "cross_time": stack(beta),
                                                "double_cross": stack(gamma)})


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
def random_windows(runs: Sequence[tuple[np.ndarray, np.ndarray]], idx: np.ndarray,
                   n_frames: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """One random ``n_frames`` window of each prepared run ``idx``: (B, R, T) and (B, R)."""
    xs, vs = [], []
    for i in idx:
        z, valid = runs[i]
        start = int(rng.integers(0, z.shape[0] - n_frames + 1))
        xs.append(z[start:start + n_frames].T)
        vs.append(valid)
    return (torch.from_numpy(np.ascontiguousarray(np.stack(xs), dtype=np.float32)),
            torch.from_numpy(np.stack(vs)))


def _lr_at(step: int, total: int, warmup: int, cfg: JEPAConfig) -> float:
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: JEPAPretrainer, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.trainable_parameters():
        (no_decay if p.ndim < 2 or name.endswith("mask_token") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


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
    from .pretrain import resolve_device

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
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    params = [p for _, p in model.trainable_parameters()]
    n = len(runs)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    amp = device.type == "cuda" and cfg.bf16
    ecfg = model.enc_cfg
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("\t".join(JEPA_LOG_COLUMNS) + "\n")
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
            lr = _lr_at(step, total, warmup, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
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
            momentum = cfg.ema_start + (cfg.ema_end - cfg.ema_start) * step / total
            model.update_target(momentum)
            for k in sums:
                sums[k] += float(out[k].detach()) * len(idx)
        row = {"epoch": epoch, **{k: v / n for k, v in sums.items()}, "lr": lr,
               "momentum": momentum, "seconds": time.perf_counter() - t0}
        logs.append(row)
        if log_path is not None:
            with open(log_path, "a") as fh:
                fh.write("\t".join(str(row[c]) if c == "epoch" else f"{row[c]:.6g}"
                                   for c in JEPA_LOG_COLUMNS) + "\n")
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


def _load_runs_with_tr(npz: Path | None, participants: Path | None, bidsfm_dir: Path | None,
                       atlas: str, tr: float | None
                       ) -> tuple[list[str], list[np.ndarray], list[float], list[str]]:
    """(names, (T, R) series, TRs, ROI names) from an npz + participants.tsv or bidsfm outputs."""
    import json

    import pandas as pd

    from .pretrain import load_timeseries_bidsfm, load_timeseries_npz

    if npz is not None:
        items = load_timeseries_npz(npz, participants)
        table = pd.read_csv(participants, sep="\t", dtype={"participant_id": str})
        if "repetition_time" in table.columns:
            trs = [float(t) for t in table.set_index("participant_id")
                   .loc[[n for n, _ in items], "repetition_time"]]
        elif tr is not None:
            trs = [float(tr)] * len(items)
        else:
            raise InputDataError("no repetition_time column; pass --tr", path=participants)
        roi_names = [f"roi_{i + 1:03d}" for i in range(items[0][1].shape[1])]
        return [n for n, _ in items], [s for _, s in items], trs, roi_names
    items = load_timeseries_bidsfm(bidsfm_dir, atlas=atlas)
    from ..derivatives import output_glob

    ending = output_glob("timeseries_json", atlas)[1:]
    names, series, trs = [], [], []
    for name, arr in items:
        hits = sorted(Path(bidsfm_dir).rglob(f"{name}{ending}"))
        meta = json.loads(hits[0].read_text()) if hits else {}
        value = meta.get("RepetitionTime", tr)
        if value is None:
            raise InputDataError(f"{name}: no RepetitionTime in the sidecar; pass --tr",
                                 path=bidsfm_dir)
        names.append(name)
        series.append(arr)
        trs.append(float(value))
    first = sorted(Path(bidsfm_dir).rglob(output_glob("timeseries", atlas)))[0]
    roi_names = first.read_text().splitlines()[0].split("\t")
    return names, series, trs, roi_names


def jepa_command(out_dir: Path, *, npz: Path | None, participants: Path | None,
                 bidsfm_dir: Path | None, atlas: str, epochs: int, batch_size: int, lr: float,
                 depth: int, heads: int, dim: int, patch: int, frames: int, target_tr: float,
                 tr: float | None, gradients_tsv: Path | None, seed: int, device: str,
                 max_subjects: int | None, readout: str = "mean", readout_dim: int = 8,
                 var_weight: float = 0.0, cov_weight: float = 0.0) -> Path:
    """``bidsfm-pretrain --family brainjepa``: pretrain and save a headless model folder.

    Returns
    -------
    Path
        ``out_dir`` (``weights.safetensors`` + ``card.json`` + ``pretrain_log.tsv``).
    """
    import click

    from .brainjepa import BrainJEPAConfig
    from .build import ts_input_card
    from .gradients import functional_gradients, group_fc
    from .registry import save_model
    from .resample import InputSpec, normalise_run, resample_run

    names, series, trs, roi_names = _load_runs_with_tr(npz, participants, bidsfm_dir, atlas, tr)
    if max_subjects is not None and max_subjects < len(series):
        pick = np.sort(np.random.default_rng(seed).choice(len(series), max_subjects,
                                                          replace=False))
        names = [names[i] for i in pick]
        series = [series[i] for i in pick]
        trs = [trs[i] for i in pick]
    n_rois = series[0].shape[1]
    spec = InputSpec(target_tr=target_tr, n_frames=frames, window_stride=max(1, frames // 2))
    runs, kept = [], []
    for name, ts, t in zip(names, series, trs, strict=True):
        z, valid = normalise_run(resample_run(ts, t, target_tr))
        if z.shape[0] >= frames:
            runs.append((z, valid))
            kept.append(name)
    if not runs:
        raise InputDataError(f"no run lasts {spec.min_seconds:g} s (--frames x --target-tr)")
    if gradients_tsv is not None:
        import pandas as pd

        table = pd.read_csv(gradients_tsv, sep="\t")
        grads = table.drop(columns=[c for c in ("roi",) if c in table.columns]).to_numpy(float)
        if grads.shape[0] != n_rois:
            raise InputDataError(f"{grads.shape[0]} gradient rows for {n_rois} ROIs",
                                 path=gradients_tsv)
        source = str(gradients_tsv)
    else:
        from .brainmass import fc_from_timeseries

        fcs = [np.asarray(fc_from_timeseries(np.asarray(s, dtype=np.float64)))
               for s in series]
        grads = functional_gradients(group_fc(fcs), n_components=min(30, n_rois - 1))
        source = f"group FC of the {len(series)} training runs"
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
    encoder, logs = pretrain_jepa(runs, enc_cfg, grads, cfg, log_path=out_dir / "pretrain_log.tsv")
    elapsed = time.perf_counter() - t0
    encoder = encoder.cpu().eval()
    extra = {"gradients": grads}
    readout_card: dict[str, Any] = {"kind": readout}
    if readout == "connectivity" and enc_cfg.readout_dim:
        from .brainjepa import fit_connectivity_readout
        from .resample import window_run

        prepared = [(window_run(z, spec), valid) for z, valid in runs]
        centre, basis, explained = fit_connectivity_readout(encoder, prepared)
        encoder.set_readout(centre, basis)
        extra.update({"readout.centre": centre, "readout.basis": basis})
        readout_card.update({"readout_dim": enc_cfg.readout_dim,
                             "fitted_on": f"the {len(runs)} training runs, without labels",
                             "explained_variance_total": round(float(explained.sum()), 4)})
    card = {
        "name": out_dir.name, "version": "0.1.0", "family": "brainjepa",
        "description": "Brain-JEPA-style time-series encoder pretrained with bidsfm-pretrain "
                       "--family brainjepa (no heads).",
        "atlas": {"name": atlas, "n_rois": n_rois, "roi_names": roi_names},
        "input": ts_input_card(spec), "encoder_config": enc_cfg.to_dict(),
        "embedding_size": enc_cfg.embedding_size, "readout": readout_card,
        "gradients": {"tensor": "gradients", "n_components": int(grads.shape[1]),
                      "source": source},
        "pretraining": {"config": cfg.to_dict(), "epochs_run": len(logs), "final_epoch": logs[-1],
                        "seconds": round(elapsed, 1), "n_runs": len(runs), "runs": kept},
    }
    save_model(out_dir, card, encoder, [], extra_tensors=extra)
    click.echo(f"bidsfm-pretrain: brainjepa, {len(runs)} runs x {n_rois} ROIs, {len(logs)} "
               f"epoch(s) in {elapsed:.1f} s; loss {logs[-1]['loss']:.4f} -> {out_dir}")
    return out_dir
