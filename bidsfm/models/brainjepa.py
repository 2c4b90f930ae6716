"""Brain-JEPA-style time-series encoder with brain-gradient positioning.

The architecture follows Brain-JEPA (Dong et al., "Brain-JEPA: Brain Dynamics Foundation Model
with Gradient Positioning and Spatiotemporal Masking", NeurIPS 2024), written anew for bidsfm:

* **tokens** = (ROI, time patch): the input ``(B, R, T)`` is seen as a one-channel image of
  height ``R`` and width ``T``; a ``Conv2d(1, D, kernel=(1, P), stride=(1, P))``
  (``patch_embed.proj``) turns each ROI's ``P``-frame patch into a token. Tokens are ordered
  ROI-major: token ``r * (T // P) + t`` is ROI ``r``, patch ``t``;
* **positional code** (``pos_embed_proj``): one half of the ``D`` channels is the fixed 1-D
  sin/cos code (MAE/I-JEPA convention: ``[sin(p w_k), cos(p w_k)]``, ``w_k = 10000^(-k/(D/4))``)
  of the time-patch index, stored as the frozen parameter ``pos_embed_proj.emb_h``
  (``R * T/P`` x ``D/2``); the other half is a learned ``Linear(G, D/2)``
  (``pos_embed_proj.predictor_pos_embed_proj``, the official name) of each ROI's ``G``
  functional gradients, repeated over the ROI's patches and then min-max scaled over the whole
  table to [-1, 1] (as the official implementation does). Time half first, gradient half second;
* pre-norm ViT blocks (LayerNorm eps 1e-6, ``attn.qkv`` with bias, ``attn.proj``,
  ``mlp.fc1`` -> GELU -> ``mlp.fc2``, MLP ratio 4) and a final ``norm``; attention is
  :func:`torch.nn.functional.scaled_dot_product_attention` (no flash-attn dependency);
* embedding = mean of the final tokens (no CLS token), the official readout
  (``readout="mean"``).

bidsfm readout (``readout="connectivity"``, not in the official model; used by the bundled
``bidsfmts``): the mean pool averages 800+ tokens whose time patches have no common phase across
participants, which leaves little that tells participants apart. The connectivity readout keeps
ROI identity: each ROI's final tokens over the window (``T/P`` patches x ``D`` features) are
centred on the mean over ROIs at each (patch, feature), the ROIs are correlated with each
other on these trajectories and Fisher-z transformed, giving an ``R x R`` "token
connectivity" per window. With ``readout_dim = k > 0`` each ROI's row (minus the training
cohort's mean matrix) is projected on ``k`` axes fitted without labels on the training cohort
(:func:`fit_connectivity_readout`, principal axes of the rows), so the embedding is ``R * k``
(ROI-major) like BrainMass's ``8 R``; with ``readout_dim = 0`` it is the upper triangle.

``BrainJEPAConfig.official("small" | "base" | "large")`` gives the published layouts (450 ROIs,
160 frames, patch 16, 30 gradients); the ``state_dict()`` of such an encoder has exactly the keys
and shapes of the official checkpoints' ``target_encoder`` (without the DDP ``module.``
prefix), listed by :func:`official_state_shapes`. The gradients themselves are not part of the
official state dict (the official code passes them separately, from a CSV); here they are a
non-persistent buffer ``gradients`` (R x G) that :mod:`bidsfm.models.registry` stores in the
model's safetensors file as ``gradients``.

bidsfm additions (not in the official model): ROIs can be marked missing (``valid``); their
tokens are excluded as attention keys and from the mean pool, so partial field-of-view runs do
not inject all-zero tokens. With every ROI valid the computation is the official one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BrainJEPAConfig", "BrainJEPAEncoder", "GradientPositionalCode", "official_state_shapes",
           "sincos_1d", "OFFICIAL_SIZES", "READOUTS", "fit_connectivity_readout"]

#: embedding readouts: the official mean pool and bidsfm's token connectivity
READOUTS = ("mean", "connectivity")

#: official ViT layouts: size -> (embed_dim, depth, n_heads)
OFFICIAL_SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}


@dataclass
class BrainJEPAConfig:
    """Architecture of a :class:`BrainJEPAEncoder`.

    Attributes
    ----------
    n_rois : int
        Number of ROIs ``R`` (token rows).
    n_frames : int
        Input length ``T`` in frames (a multiple of ``patch_size``).
    patch_size : int
        Frames per time patch ``P``.
    embed_dim : int
        Token width ``D`` (divisible by 4 and by ``n_heads``).
    depth : int
        Number of Transformer blocks.
    n_heads : int
        Attention heads.
    mlp_ratio : float
        MLP hidden width / ``D``.
    n_gradients : int
        Functional-gradient components per ROI ``G``.
    qkv_bias : bool
        Bias in the qkv projection (True in the official models).
    norm_eps : float
        LayerNorm epsilon (1e-6 in the official models).
    readout : str
        ``mean`` (official: mean of the final tokens, ``D``) or ``connectivity`` (bidsfm:
        Fisher-z correlation between ROIs of their token trajectories, see the module
        docstring).
    readout_dim : int
        Axes per ROI of the connectivity readout (embedding ``R * readout_dim``); 0 keeps the
        upper triangle (``R (R - 1) / 2``). Ignored by ``mean``.
    """

    n_rois: int = 200
    n_frames: int = 96
    patch_size: int = 16
    embed_dim: int = 128
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    n_gradients: int = 30
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    readout: str = "mean"
    readout_dim: int = 0

    def __post_init__(self) -> None:
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, got "
                             f"{self.readout!r}")
        if int(self.readout_dim) < 0 or int(self.readout_dim) > self.n_rois:
            raise ValueError(f"readout_dim must be in 0..{self.n_rois}")
        if self.n_frames % self.patch_size:
            raise ValueError(f"n_frames {self.n_frames} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.embed_dim % 4 or self.embed_dim % self.n_heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by 4 and by "
                             f"n_heads {self.n_heads}")
        for name in ("n_rois", "n_frames", "patch_size", "depth", "n_heads", "n_gradients"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")

    @property
    def n_patches(self) -> int:
        """Time patches per ROI (``T // P``)."""
        return self.n_frames // self.patch_size

    @property
    def n_tokens(self) -> int:
        """Tokens per sample (``R * T // P``)."""
        return self.n_rois * self.n_patches

    @property
    def embedding_size(self) -> int:
        """Length of the embedding the readout produces."""
        if self.readout == "mean":
            return self.embed_dim
        if self.readout_dim:
            return self.n_rois * self.readout_dim
        return self.n_rois * (self.n_rois - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (stored in model cards)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BrainJEPAConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`~bidsfm.errors.ConfigError`."""
        from ..utils import dataclass_from_dict

        return dataclass_from_dict(cls, d, "Brain-JEPA")

    @classmethod
    def official(cls, size: str = "base") -> BrainJEPAConfig:
        """The published Brain-JEPA layout ``size`` ("small", "base" or "large").

        450 ROIs (Tian S3 subcortex first, then Schaefer-400 17-network), 160 frames,
        16-frame patches, 30 gradients, MLP ratio 4, qkv bias, LayerNorm eps 1e-6.
        """
        if size not in OFFICIAL_SIZES:
            raise ValueError(f"unknown Brain-JEPA size {size!r}; use one of "
                             f"{', '.join(OFFICIAL_SIZES)}")
        dim, depth, heads = OFFICIAL_SIZES[size]
        return cls(n_rois=450, n_frames=160, patch_size=16, embed_dim=dim, depth=depth,
                   n_heads=heads, mlp_ratio=4.0, n_gradients=30, qkv_bias=True, norm_eps=1e-6)


def official_state_shapes(cfg: BrainJEPAConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the encoder's state dict (= official ``target_encoder`` layout).

    Parameters
    ----------
    cfg : BrainJEPAConfig
        E.g. ``BrainJEPAConfig.official("base")``.

    Returns
    -------
    dict
        ``{key: shape}`` in module order: ``patch_embed.proj.{weight,bias}``
        (D, 1, 1, P) / (D,), ``pos_embed_proj.emb_h`` (R*T/P, D/2),
        ``pos_embed_proj.predictor_pos_embed_proj.{weight,bias}`` (D/2, G) / (D/2,), per block
        ``blocks.{i}.norm1.{weight,bias}`` (D,), ``attn.qkv.{weight,bias}`` (3D, D) / (3D,),
        ``attn.proj.{weight,bias}`` (D, D) / (D,), ``norm2``, ``mlp.fc1.{weight,bias}``
        (H, D) / (H,), ``mlp.fc2.{weight,bias}`` (D, H) / (D,) with H = mlp_ratio * D, and
        ``norm.{weight,bias}`` (D,).
    """
    d, half, hidden = cfg.embed_dim, cfg.embed_dim // 2, int(cfg.embed_dim * cfg.mlp_ratio)
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, 1, 1, cfg.patch_size),
        "patch_embed.proj.bias": (d,),
        "pos_embed_proj.emb_h": (cfg.n_tokens, half),
        "pos_embed_proj.predictor_pos_embed_proj.weight": (half, cfg.n_gradients),
        "pos_embed_proj.predictor_pos_embed_proj.bias": (half,),
    }
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        shapes[p + "norm1.weight"] = (d,)
        shapes[p + "norm1.bias"] = (d,)
        shapes[p + "attn.qkv.weight"] = (3 * d, d)
        if cfg.qkv_bias:
            shapes[p + "attn.qkv.bias"] = (3 * d,)
        shapes[p + "attn.proj.weight"] = (d, d)
        shapes[p + "attn.proj.bias"] = (d,)
        shapes[p + "norm2.weight"] = (d,)
        shapes[p + "norm2.bias"] = (d,)
        shapes[p + "mlp.fc1.weight"] = (hidden, d)
        shapes[p + "mlp.fc1.bias"] = (hidden,)
        shapes[p + "mlp.fc2.weight"] = (d, hidden)
        shapes[p + "mlp.fc2.bias"] = (d,)
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    """Fixed 1-D sin/cos code ``[sin(p w), cos(p w)]`` of ``positions``, ``dim`` channels.

    ``w_k = 10000 ** (-k / (dim / 2))`` for ``k = 0 .. dim/2 - 1`` (Vaswani et al. 2017; the
    MAE / I-JEPA layout: all sines, then all cosines).
    """
    if dim % 2:
        raise ValueError("sin/cos code needs an even dimension")
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.outer(np.asarray(positions, dtype=np.float64).reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


class GradientPositionalCode(nn.Module):
    """Brain gradient positioning: [sin/cos(time patch) | scaled Linear(gradients)].

    Parameters
    ----------
    n_gradients : int
        ``G``.
    dim : int
        Width ``D`` of the code (half time, half gradient).
    n_rois, n_patches : int
        Token grid (ROI-major).
    """

    def __init__(self, n_gradients: int, dim: int, n_rois: int, n_patches: int) -> None:
        super().__init__()
        self.n_patches = n_patches
        time_index = np.tile(np.arange(n_patches), n_rois)  # token r*Tp + t -> t
        code = torch.from_numpy(sincos_1d(dim // 2, time_index)).float()
        # a frozen parameter (not a buffer) so that the state dict matches the official layout
        self.emb_h = nn.Parameter(code, requires_grad=False)
        self.predictor_pos_embed_proj = nn.Linear(n_gradients, dim // 2)

    def forward(self, gradients: Tensor) -> Tensor:
        """``(R, G)`` gradients -> ``(1, R * Tp, D)`` positional code."""
        g = self.predictor_pos_embed_proj(gradients.to(self.emb_h.dtype))
        g = g.repeat_interleave(self.n_patches, dim=0)
        lo, hi = g.min(), g.max()
        g = (g - lo) / (hi - lo).clamp_min(1e-12) * 2 - 1
        return torch.cat([self.emb_h, g], dim=1).unsqueeze(0)


class _PatchEmbed(nn.Module):
    def __init__(self, dim: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=(1, patch), stride=(1, patch))

    def forward(self, x: Tensor) -> Tensor:
        # (B, R, T) -> (B, 1, R, T) -> (B, D, R, T/P) -> (B, R*T/P, D), ROI-major
        return self.proj(x.unsqueeze(1)).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm Transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, n_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 eps: float = 1e-6) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, n_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """``key_mask`` (B, N) bool: True where a token may be attended to."""
        x = x + self.attn(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module, depth_modules: nn.ModuleList, std: float = 0.02) -> None:
    """Truncated-normal (std 0.02) Linear/Conv weights, zero biases, unit LayerNorms, and the
    residual output projections of block ``i`` divided by ``sqrt(2 (i + 1))`` (I-JEPA init)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for i, blk in enumerate(depth_modules):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * (i + 1)))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * (i + 1)))


def gather_tokens(x: Tensor, index: Tensor) -> Tensor:
    """Tokens ``x[b, index[b]]``: (B, N, D) and (B, K) -> (B, K, D)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class BrainJEPAEncoder(nn.Module):
    """Brain-JEPA time-series encoder (see the module docstring).

    Parameters
    ----------
    config : BrainJEPAConfig
        Architecture.
    gradients : torch.Tensor or np.ndarray, optional
        ``(R, G)`` functional gradients of the ROIs (default zeros, to be filled by loading).
    """

    def __init__(self, config: BrainJEPAConfig, gradients: Tensor | np.ndarray | None = None
                 ) -> None:
        super().__init__()
        self.config = cfg = config
        grads = (torch.zeros(cfg.n_rois, cfg.n_gradients) if gradients is None
                 else torch.as_tensor(np.asarray(gradients, dtype=np.float32)))
        if tuple(grads.shape) != (cfg.n_rois, cfg.n_gradients):
            raise ValueError(f"gradients must be ({cfg.n_rois}, {cfg.n_gradients}), got "
                             f"{tuple(grads.shape)}")
        self.patch_embed = _PatchEmbed(cfg.embed_dim, cfg.patch_size)
        self.pos_embed_proj = GradientPositionalCode(cfg.n_gradients, cfg.embed_dim, cfg.n_rois,
                                                     cfg.n_patches)
        self.blocks = nn.ModuleList(Block(cfg.embed_dim, cfg.n_heads, cfg.mlp_ratio,
                                          cfg.qkv_bias, cfg.norm_eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        init_vit_weights(self, self.blocks)
        self.register_buffer("gradients", grads.float().clone(), persistent=False)
        k = cfg.readout_dim if cfg.readout == "connectivity" else 0
        self.register_buffer("readout_centre", torch.zeros(cfg.n_rois, cfg.n_rois),
                             persistent=False)
        self.register_buffer("readout_basis", torch.zeros(cfg.n_rois, k), persistent=False)

    @property
    def embedding_dim(self) -> int:
        """Size of :meth:`embed`'s output (``D``, or the connectivity readout's size)."""
        return self.config.embedding_size

    def set_readout(self, centre: Tensor | np.ndarray, basis: Tensor | np.ndarray) -> None:
        """Set the connectivity readout's cohort mean (R x R) and axes (R x readout_dim)."""
        c = torch.as_tensor(np.asarray(centre, dtype=np.float32))
        b = torch.as_tensor(np.asarray(basis, dtype=np.float32))
        if c.shape != self.readout_centre.shape or b.shape != self.readout_basis.shape:
            raise ValueError(f"readout tensors must be {tuple(self.readout_centre.shape)} and "
                             f"{tuple(self.readout_basis.shape)}, got {tuple(c.shape)} and "
                             f"{tuple(b.shape)}")
        self.readout_centre.copy_(c.to(self.readout_centre.device))
        self.readout_basis.copy_(b.to(self.readout_basis.device))

    def set_gradients(self, gradients: Tensor | np.ndarray) -> None:
        """Replace the ROI gradients (``(R, G)``)."""
        g = torch.as_tensor(np.asarray(gradients, dtype=np.float32))
        if g.shape != self.gradients.shape:
            raise ValueError(f"gradients must be {tuple(self.gradients.shape)}, got "
                             f"{tuple(g.shape)}")
        self.gradients.copy_(g.to(self.gradients.device))

    def token_valid(self, valid: Tensor | None) -> Tensor | None:
        """Per-ROI validity (B, R) -> per-token validity (B, R * Tp)."""
        if valid is None:
            return None
        return valid.bool().repeat_interleave(self.config.n_patches, dim=1)

    def positional_code(self) -> Tensor:
        """(1, N, D) positional code of all tokens."""
        return self.pos_embed_proj(self.gradients)

    def _check(self, x: Tensor) -> None:
        r, t = self.config.n_rois, self.config.n_frames
        if x.ndim != 3 or x.shape[1:] != (r, t):
            raise ValueError(f"expected input (B, {r}, {t}) = (batch, ROIs, frames), got "
                             f"{tuple(x.shape)}")

    def forward(self, x: Tensor, valid: Tensor | None = None, keep: Tensor | None = None
                ) -> Tensor:
        """Final (normed) tokens.

        Parameters
        ----------
        x : Tensor
            (B, R, T) normalised ROI time series.
        valid : Tensor, optional
            (B, R) bool, False for missing ROIs (excluded as attention keys).
        keep : Tensor, optional
            (B, K) token indices to encode (JEPA context); default all tokens.

        Returns
        -------
        Tensor
            (B, N, D) tokens (N = R * T / P, or K with ``keep``).
        """
        self._check(x)
        h = self.patch_embed(x) + self.positional_code().to(x.dtype)
        tvalid = self.token_valid(valid)
        if keep is not None:
            h = gather_tokens(h, keep)
            if tvalid is not None:
                tvalid = torch.gather(tvalid, 1, keep)
        for blk in self.blocks:
            h = blk(h, tvalid)
        return self.norm(h)

    def embed(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """Embedding of each window: (B, R, T) -> (B, embedding_dim).

        ``mean``: mean of the final tokens over valid ROIs. ``connectivity``: the projected
        token connectivity (see the module docstring).
        """
        tokens = self.forward(x, valid)
        if self.config.readout == "connectivity":
            z = self.token_connectivity(tokens, valid)
            k = self.config.readout_dim
            if k == 0:
                iu = torch.triu_indices(z.shape[1], z.shape[1], offset=1, device=z.device)
                return z[:, iu[0], iu[1]]
            dev = z - self.readout_centre.to(z.dtype)
            if valid is not None:
                vr = valid.to(z.dtype)
                dev = dev * vr[:, :, None] * vr[:, None, :]
            return (dev @ self.readout_basis.to(z.dtype)).flatten(1)
        if valid is None:
            return tokens.mean(dim=1)
        w = self.token_valid(valid).to(tokens.dtype).unsqueeze(-1)
        return (tokens * w).sum(dim=1) / w.sum(dim=1).clamp_min(1.0)

    def token_connectivity(self, tokens: Tensor, valid: Tensor | None = None,
                           clip: float = 0.999) -> Tensor:
        """Fisher-z correlation between ROIs of their token trajectories.

        Parameters
        ----------
        tokens : Tensor
            (B, N, D) final tokens (ROI-major).
        valid : Tensor, optional
            (B, R) ROI validity; missing ROIs are left out of the centring and get all-zero
            rows and columns.
        clip : float
            Correlations are clipped to ``[-clip, clip]`` before ``arctanh``.

        Returns
        -------
        Tensor
            (B, R, R), zero diagonal.
        """
        b, _, d = tokens.shape
        r, p = self.config.n_rois, self.config.n_patches
        # always in float32, also under bf16 autocast (--precision bf16): in bfloat16 the
        # clip 0.999 rounds to 1.0, atanh gives inf on the diagonal and inf * 0 = NaN
        with torch.autocast(tokens.device.type, enabled=False):
            t = tokens.float().reshape(b, r, p * d)
            if valid is None:
                vr = torch.ones(b, r, device=t.device)
            else:
                vr = valid.to(t.dtype)
            centre = ((t * vr[..., None]).sum(1, keepdim=True)
                      / vr.sum(1).clamp_min(1.0)[:, None, None])
            t = t - centre
            t = t - t.mean(dim=-1, keepdim=True)
            t = t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            c = (t @ t.transpose(1, 2)).clamp(-clip, clip)
            z = torch.atanh(c) * (1.0 - torch.eye(r, device=t.device, dtype=t.dtype))
            return z * vr[:, :, None] * vr[:, None, :]


def embed_runs(encoder: BrainJEPAEncoder, runs: list[tuple[np.ndarray, np.ndarray]],
               batch_size: int = 32) -> np.ndarray:
    """Embedding of each prepared run: the mean of its windows' embeddings.

    Parameters
    ----------
    encoder : BrainJEPAEncoder
        Encoder (eval mode).
    runs : list of (np.ndarray, np.ndarray)
        Per run ``(windows (W, R, T), valid (R,))`` from
        :func:`bidsfm.models.resample.prepare_run`.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    np.ndarray
        (n_runs, D) float32.
    """
    device = next(encoder.parameters()).device
    wins = np.concatenate([w for w, _ in runs]).astype(np.float32)
    valid = np.concatenate([np.repeat(v[None], len(w), axis=0) for w, v in runs])
    owner = np.repeat(np.arange(len(runs)), [len(w) for w, _ in runs])
    out = np.zeros((len(wins), encoder.embedding_dim), dtype=np.float64)
    with torch.no_grad():
        for s in range(0, len(wins), batch_size):
            x = torch.from_numpy(wins[s:s + batch_size]).to(device)
            v = torch.from_numpy(valid[s:s + batch_size]).to(device)
            out[s:s + batch_size] = encoder.embed(x, v).float().cpu().numpy()
    emb = np.zeros((len(runs), out.shape[1]))
    np.add.at(emb, owner, out)
    emb /= np.bincount(owner, minlength=len(runs))[:, None]
    return emb.astype(np.float32)


def fit_connectivity_readout(encoder: BrainJEPAEncoder,
                             runs: list[tuple[np.ndarray, np.ndarray]], batch_size: int = 32
                             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit the connectivity readout's cohort mean and per-ROI axes (no labels used).

    Each run's token connectivity (windows averaged) is computed; the centre is their mean and
    the axes are the leading right singular vectors of all runs' centred rows (missing ROIs
    left out), so every ROI's row is summarised by its coordinates on the cohort's main axes
    of variation in connectivity profiles.

    Parameters
    ----------
    encoder : BrainJEPAEncoder
        A ``connectivity`` encoder with ``readout_dim > 0`` (eval mode).
    runs : list of (np.ndarray, np.ndarray)
        Prepared runs ``(windows (W, R, T), valid (R,))`` of the training cohort.
    batch_size : int
        Windows per forward pass.

    Returns
    -------
    centre : np.ndarray
        (R, R) mean token connectivity.
    basis : np.ndarray
        (R, k) orthonormal axes.
    explained : np.ndarray
        (k,) fraction of the centred rows' variance on each axis.
    """
    cfg = encoder.config
    if cfg.readout != "connectivity" or cfg.readout_dim < 1:
        raise ValueError("fit_connectivity_readout needs readout='connectivity' and "
                         "readout_dim >= 1")
    device = next(encoder.parameters()).device
    mats, valids = [], []
    with torch.no_grad():
        for wins, valid in runs:
            acc = np.zeros((cfg.n_rois, cfg.n_rois))
            v = torch.from_numpy(np.repeat(valid[None], len(wins), axis=0)).to(device)
            for s in range(0, len(wins), batch_size):
                x = torch.from_numpy(wins[s:s + batch_size].astype(np.float32)).to(device)
                z = encoder.token_connectivity(encoder(x, v[s:s + batch_size]),
                                               v[s:s + batch_size])
                acc += z.double().sum(0).cpu().numpy()
            mats.append(acc / len(wins))
            valids.append(np.asarray(valid, dtype=bool))
    stack = np.stack(mats)
    both = np.stack([np.outer(v, v) for v in valids])
    centre = (stack * both).sum(0) / np.maximum(both.sum(0), 1)
    rows = ((stack - centre) * both).reshape(-1, cfg.n_rois)
    rows = rows[np.stack(valids).reshape(-1)]
    _, sv, vt = np.linalg.svd(rows, full_matrices=False)
    k = cfg.readout_dim
    basis = vt[:k].T
    # deterministic signs: the largest-magnitude entry of each axis is positive
    signs = np.sign(basis[np.abs(basis).argmax(0), np.arange(k)])
    basis = basis * np.where(signs == 0, 1.0, signs)
    explained = sv[:k] ** 2 / np.sum(sv ** 2)
    return centre.astype(np.float32), basis.astype(np.float32), explained
