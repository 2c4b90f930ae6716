"""Spatiotemporal masks of the JEPA objective (Brain-JEPA's three target kinds).

On the (ROI x time patch) grid of one window, the observation (context) block is a random
subset of ROIs ``C`` over a contiguous run of time patches ``W``; the targets are *cross-ROI*
(ROIs outside ``C`` at times inside ``W``), *cross-time* (ROIs inside ``C`` at times outside
``W``) and *double-cross* (outside both). See :mod:`.objective_jepa`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError
from .configs import JEPAConfig

__all__ = ["MaskSet", "sample_masks", "random_windows"]


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
