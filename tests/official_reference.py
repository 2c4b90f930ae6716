"""Straightforward forward passes of the official BrainMass and Brain-JEPA encoders.

Plain torch functional code written from the papers' descriptions (and the layouts of the
public checkpoints), operating directly on a raw official state dict: no bidsfm module is used,
so the importer tests compare bidsfm's models against an independent implementation.

* BrainMass (Yang et al., IEEE TMI 2024): each row of the R x R FC matrix is a token of width
  R; post-norm Transformer encoder layers (multi-head self-attention, residual, LayerNorm; ReLU
  feed-forward, residual, LayerNorm; eps 1e-5); readout ``LeakyReLU(Linear(R, 8))`` per token,
  flattened ROI-major to 8R.
* Brain-JEPA (Dong et al., NeurIPS 2024): tokens = (ROI, 16-frame patch), ROI-major; a linear
  patch embedding; positional code = [sin/cos of the time-patch index | Linear(G -> D/2) of the
  ROI's gradients, min-max scaled over the table to [-1, 1]]; pre-norm ViT blocks (LayerNorm
  eps 1e-6, GELU MLP) and a final LayerNorm; embedding = mean over tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _heads(x: Tensor, n_heads: int) -> Tensor:
    b, n, d = x.shape
    return x.reshape(b, n, n_heads, d // n_heads).transpose(1, 2)  # (B, H, N, dh)


def _attention(x: Tensor, w_in: Tensor, b_in: Tensor | None, w_out: Tensor, b_out: Tensor,
               n_heads: int) -> Tensor:
    """Multi-head self-attention with a packed (3D, D) input projection, written out."""
    b, n, d = x.shape
    qkv = x @ w_in.T + (0 if b_in is None else b_in)
    q, k, v = (_heads(t, n_heads) for t in qkv.split(d, dim=-1))
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // n_heads)
    out = scores.softmax(dim=-1) @ v  # (B, H, N, dh)
    out = out.transpose(1, 2).reshape(b, n, d)
    return out @ w_out.T + b_out


def brainmass_forward(state: dict[str, Tensor], fc: Tensor, n_heads: int = 10) -> Tensor:
    """BrainMass embedding of FC matrices from the raw ``online_network_state_dict``.

    Parameters
    ----------
    state : dict
        Official keys (``attention_list.{i}.*``, ``dim_reduction.0.*``; ``g.*`` ignored).
    fc : Tensor
        (B, R, R) FC matrices (finite).
    n_heads : int
        Attention heads.

    Returns
    -------
    Tensor
        (B, 8R) embedding.
    """
    x = fc.to(torch.float64)
    s = {k: v.to(torch.float64) for k, v in state.items() if v.is_floating_point()}
    r = x.shape[-1]
    i = 0
    while f"attention_list.{i}.linear1.weight" in s:
        p = f"attention_list.{i}."
        a = _attention(x, s[p + "self_attn.in_proj_weight"], s[p + "self_attn.in_proj_bias"],
                       s[p + "self_attn.out_proj.weight"], s[p + "self_attn.out_proj.bias"],
                       n_heads)
        x = F.layer_norm(x + a, (r,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-5)
        h = torch.relu(x @ s[p + "linear1.weight"].T + s[p + "linear1.bias"])
        h = h @ s[p + "linear2.weight"].T + s[p + "linear2.bias"]
        x = F.layer_norm(x + h, (r,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-5)
        i += 1
    y = F.leaky_relu(x @ s["dim_reduction.0.weight"].T + s["dim_reduction.0.bias"], 0.01)
    return y.reshape(y.shape[0], -1)


def sincos(dim: int, positions: Tensor) -> Tensor:
    """[sin(p w_k) for k] + [cos(p w_k) for k], w_k = 10000^(-k / (dim/2)), k < dim/2."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    omega = 1.0 / (10000.0 ** (k / (dim / 2)))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def brainjepa_forward(state: dict[str, Tensor], x: Tensor, gradients: Tensor, n_heads: int,
                      patch: int = 16, use_stored_time_code: bool = False) -> Tensor:
    """Brain-JEPA embedding (mean of final tokens) from the raw ``target_encoder`` state.

    Parameters
    ----------
    state : dict
        Official keys, with or without the ``module.`` prefix.
    x : Tensor
        (B, R, T) time series (already normalised).
    gradients : Tensor
        (R, G) functional gradients.
    n_heads : int
        Attention heads (6 / 12 / 16 for ViT-S / B / L).
    patch : int
        Frames per patch.
    use_stored_time_code : bool
        Take the time half of the positional code from ``pos_embed_proj.emb_h`` (as the
        official module does) instead of recomputing it.

    Returns
    -------
    Tensor
        (B, D) embedding (float64).
    """
    s = {k.removeprefix("module."): v.to(torch.float64) for k, v in state.items()}
    b, r, t = x.shape
    n_patch = t // patch
    d = s["patch_embed.proj.weight"].shape[0]
    # patch embedding: each ROI's consecutive `patch` frames -> one token, ROI-major order
    patches = x.to(torch.float64).reshape(b, r, n_patch, patch).reshape(b, r * n_patch, patch)
    w = s["patch_embed.proj.weight"].reshape(d, patch)
    h = patches @ w.T + s["patch_embed.proj.bias"]
    # positional code: time half, then gradient half
    if use_stored_time_code:
        time_code = s["pos_embed_proj.emb_h"]
    else:
        time_index = torch.arange(n_patch, dtype=torch.float64).repeat(r)
        time_code = sincos(d // 2, time_index)
    g = gradients.to(torch.float64) @ s["pos_embed_proj.predictor_pos_embed_proj.weight"].T
    g = g + s["pos_embed_proj.predictor_pos_embed_proj.bias"]
    g = g.repeat_interleave(n_patch, dim=0)
    g = (g - g.min()) / (g.max() - g.min()) * 2 - 1
    h = h + torch.cat([time_code, g], dim=1)[None]
    i = 0
    while f"blocks.{i}.attn.qkv.weight" in s:
        p = f"blocks.{i}."
        y = F.layer_norm(h, (d,), s[p + "norm1.weight"], s[p + "norm1.bias"], eps=1e-6)
        h = h + _attention(y, s[p + "attn.qkv.weight"], s.get(p + "attn.qkv.bias"),
                           s[p + "attn.proj.weight"], s[p + "attn.proj.bias"], n_heads)
        y = F.layer_norm(h, (d,), s[p + "norm2.weight"], s[p + "norm2.bias"], eps=1e-6)
        y = F.gelu(y @ s[p + "mlp.fc1.weight"].T + s[p + "mlp.fc1.bias"])
        h = h + y @ s[p + "mlp.fc2.weight"].T + s[p + "mlp.fc2.bias"]
        i += 1
    h = F.layer_norm(h, (d,), s["norm.weight"], s["norm.bias"], eps=1e-6)
    return h.mean(dim=1)
