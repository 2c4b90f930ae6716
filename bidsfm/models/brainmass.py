"""BrainMass-style functional-connectivity encoder.

Re-implementation (written for bidsfm, not copied) of the encoder described in

    Yang, Y., Ye, C., Su, G., Zhang, Z., Chang, Z., Chen, H., Chan, P., Yu, Y., Ma, T.
    "BrainMass: Advancing Brain Network Analysis for Diagnosis with Large-scale
    Self-Supervised Learning." IEEE Transactions on Medical Imaging, 2024.
    doi:10.1109/TMI.2024.3414476

The input is a Pearson FC matrix (R x R). Each row is one token (``d_model == R``), the tokens
go through a stack of post-norm Transformer encoder layers (``attention_list``) and a readout
``Linear(R, readout_dim) + LeakyReLU`` (``dim_reduction``) whose output, flattened, is the
``readout_dim * R`` BrainMass embedding used downstream (SVM / linear probe).

With :meth:`BrainMassConfig.official` (and ``roi_embedding=False``, ``mask_token=False``) the
state-dict keys and shapes are exactly those of the published checkpoint's
``online_network_state_dict``; bidsfm's two optional extras are a learned per-ROI identity
vector (``roi_embed``) and a learned mask token (``mask_embedding``).

Missing ROIs
------------
ROIs outside the field of view (all-zero or NaN time series) give NaN rows and columns. They
are handled without dropping anything, so the embedding layout never changes:

* their row is replaced by the mask token (zeros when ``mask_token=False``), their column is
  set to 0 in every other row, and they are excluded as attention keys
  (``src_key_padding_mask``), so nothing about them (whatever the values in their row and
  column) reaches the valid tokens;
* their own token is still computed (a query attending to the valid ROIs: the model's
  imputation from context) so the embedding keeps its ``readout_dim * R`` layout.

Mask-ROI Modelling
------------------
ROIs in ``mask`` are hidden the same way (row replaced by the mask token, column zeroed in all
other rows: without the column, the symmetric matrix would give the masked row away), but they
stay attention *keys*: their token carries only the mask token (+ ROI identity), i.e. no
subject information, and keeping them as keys mirrors the official model, which uses no key
padding at all. Without ``roi_embedding`` all masked tokens are identical, so the model cannot
tell which ROI it should reconstruct; the ROI identity vector removes that limitation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["BrainMassConfig", "BrainMassEncoder", "fc_from_timeseries", "infer_valid_rois",
           "embed_fc"]


@dataclass
class BrainMassConfig:
    """Architecture of a :class:`BrainMassEncoder`.

    Parameters
    ----------
    n_rois : int
        Number of ROIs R (also the token width ``d_model``).
    n_layers : int
        Number of post-norm Transformer encoder layers.
    n_heads : int
        Attention heads; must divide ``n_rois``.
    ff_dim : int
        Width of each layer's feed-forward block.
    dropout : float
        Dropout inside the encoder layers.
    readout_dim : int
        Output width per token of the readout (embedding size is ``readout_dim * n_rois``).
    roi_embedding : bool
        Add a learned per-ROI identity vector to every token (bidsfm extension).
    mask_token : bool
        Use a learned vector for masked / missing rows (zeros when False).
    """

    n_rois: int = 200
    n_layers: int = 4
    n_heads: int = 8
    ff_dim: int = 512
    dropout: float = 0.1
    readout_dim: int = 8
    roi_embedding: bool = True
    mask_token: bool = True

    def __post_init__(self) -> None:
        for name in ("n_rois", "n_layers", "n_heads", "ff_dim", "readout_dim"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"BrainMassConfig.{name} must be a positive integer, "
                                  f"got {value!r}")
        if self.n_rois % self.n_heads:
            raise ConfigError(f"n_heads={self.n_heads} does not divide n_rois={self.n_rois} "
                              "(the token width is the number of ROIs)",
                              remedy="Choose a number of heads that divides the ROI count")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"BrainMassConfig.dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BrainMassConfig:
        """Build a configuration from :meth:`to_dict` output.

        Parameters
        ----------
        d : dict
            Field values; unknown keys raise :class:`~bidsfm.errors.ConfigError`.

        Returns
        -------
        BrainMassConfig
        """
        from ..utils import dataclass_from_dict

        return dataclass_from_dict(cls, d, "BrainMass")

    @classmethod
    def official(cls, n_rois: int = 100) -> BrainMassConfig:
        """The published BrainMass layout (16 layers, 10 heads, FF 2048, readout 8).

        Parameters
        ----------
        n_rois : int
            Number of ROIs (100 in the published model).

        Returns
        -------
        BrainMassConfig
            No ROI embedding and no learned mask token, so that the state-dict keys are exactly
            the official checkpoint's.
        """
        return cls(n_rois=n_rois, n_layers=16, n_heads=10, ff_dim=2048, dropout=0.1,
                   readout_dim=8, roi_embedding=False, mask_token=False)


def infer_valid_rois(fc: Tensor) -> Tensor:
    """Valid ROIs of FC matrices: rows with at least one finite, non-zero off-diagonal entry.

    A missing ROI's row is all NaN (or all zero, or NaN with a 1 on the diagonal); a valid
    ROI's row only has NaN in the columns of missing ROIs.

    Parameters
    ----------
    fc : Tensor
        (B, R, R) or (R, R) FC matrices.

    Returns
    -------
    Tensor
        Bool, (B, R) or (R,).
    """
    r = fc.shape[-1]
    off = ~torch.eye(r, dtype=torch.bool, device=fc.device)
    informative = torch.isfinite(fc) & (fc != 0) & off
    return informative.any(dim=-1)


class BrainMassEncoder(nn.Module):
    """BrainMass FC encoder (Yang et al., IEEE TMI 2024).

    Parameters
    ----------
    cfg : BrainMassConfig
        Architecture.

    Notes
    -----
    Submodules: ``attention_list`` (``nn.TransformerEncoderLayer``, ``batch_first=True``,
    ``norm_first=False``) and ``dim_reduction`` (``Linear(R, readout_dim)``, ``LeakyReLU``);
    optional parameters ``mask_embedding`` (R,) and ``roi_embed`` (R, R). See the module
    docstring for the treatment of missing and masked ROIs.
    """

    def __init__(self, cfg: BrainMassConfig) -> None:
        super().__init__()
        self.cfg = cfg
        r = cfg.n_rois
        self.attention_list = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model=r, nhead=cfg.n_heads, dim_feedforward=cfg.ff_dim,
                                       dropout=cfg.dropout, batch_first=True, norm_first=False)
            for _ in range(cfg.n_layers)
        ])
        self.dim_reduction = nn.Sequential(nn.Linear(r, cfg.readout_dim), nn.LeakyReLU())
        if cfg.mask_token:
            self.mask_embedding = nn.Parameter(torch.randn(r) * 0.02)
        if cfg.roi_embedding:
            self.roi_embed = nn.Parameter(torch.randn(r, r) * 0.02)

    @property
    def embedding_dim(self) -> int:
        """Size of :meth:`embed`'s output (``readout_dim * n_rois``)."""
        return self.cfg.readout_dim * self.cfg.n_rois

    def prepare(self, fc: Tensor, valid: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Turn FC matrices into input tokens and the attention key-padding mask.

        Parameters
        ----------
        fc : Tensor
            (B, R, R) Pearson FC; NaN allowed.
        valid : Tensor, optional
            (B, R) bool valid ROIs (default :func:`infer_valid_rois`).
        mask : Tensor, optional
            (B, R) bool ROIs to hide for Mask-ROI Modelling.

        Returns
        -------
        tokens : Tensor
            (B, R, R) input tokens.
        key_padding : Tensor
            (B, R) bool, True for keys to ignore (invalid ROIs).
        valid : Tensor
            (B, R) bool valid ROIs actually used.
        """
        r = self.cfg.n_rois
        if fc.ndim != 3 or fc.shape[1] != r or fc.shape[2] != r:
            raise ConfigError(f"expected FC of shape (batch, {r}, {r}), got {tuple(fc.shape)}")
        param = self.dim_reduction[0].weight
        fc = fc.to(device=param.device, dtype=param.dtype)
        if valid is None:
            valid = infer_valid_rois(fc)
        valid = valid.to(device=fc.device, dtype=torch.bool)
        hidden = ~valid if mask is None else (~valid | mask.to(device=fc.device, dtype=torch.bool))
        x = torch.where(torch.isfinite(fc), fc, torch.zeros((), dtype=fc.dtype, device=fc.device))
        x = x.masked_fill(hidden[:, None, :], 0.0)  # columns of hidden ROIs
        if self.cfg.mask_token:
            token = self.mask_embedding.to(x.dtype).expand_as(x)
        else:
            token = torch.zeros_like(x)
        x = torch.where(hidden[:, :, None], token, x)  # rows of hidden ROIs
        if self.cfg.roi_embedding:
            x = x + self.roi_embed
        key_padding = ~valid
        # a sample without any valid ROI would attend to nothing (NaN): let it attend to all
        key_padding = key_padding & ~key_padding.all(dim=1, keepdim=True)
        return x, key_padding, valid

    def forward(self, fc: Tensor, valid: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Token states after the encoder layers.

        Parameters
        ----------
        fc : Tensor
            (B, R, R) Pearson FC matrices; rows/columns of missing ROIs may be NaN, NaN entries
            elsewhere are set to 0.
        valid : Tensor, optional
            (B, R) bool valid ROIs; default: rows with at least one finite non-zero
            off-diagonal entry (:func:`infer_valid_rois`).
        mask : Tensor, optional
            (B, R) bool extra ROIs to hide (Mask-ROI Modelling): replaced by the mask token,
            still used as attention keys.

        Returns
        -------
        Tensor
            (B, R, R) token states.
        """
        x, key_padding, _ = self.prepare(fc, valid, mask)
        pad = key_padding if bool(key_padding.any()) else None
        for layer in self.attention_list:
            x = layer(x, src_key_padding_mask=pad)
        return x

    def readout(self, tokens: Tensor) -> Tensor:
        """Flattened readout of token states: (B, R, R) -> (B, readout_dim * R)."""
        return self.dim_reduction(tokens).flatten(1)

    def embed(self, fc: Tensor, valid: Tensor | None = None) -> Tensor:
        """The BrainMass embedding ``dim_reduction(tokens).flatten(1)``.

        Parameters
        ----------
        fc : Tensor
            (B, R, R) FC matrices.
        valid : Tensor, optional
            (B, R) bool valid ROIs.

        Returns
        -------
        Tensor
            (B, readout_dim * R), ROI-major (ROI i occupies ``[i*readout_dim, (i+1)*readout_dim)``).
        """
        return self.readout(self.forward(fc, valid))


def _kept_frames(b: int, t: int, drop_fraction: float, generator: Any) -> np.ndarray:
    """(b, keep) sorted indices of the frames kept in each sample."""
    keep = t - int(round(drop_fraction * t))
    if keep < 3:
        raise ValueError(f"{t} time points leave {keep} after dropping {drop_fraction:.0%}")
    rows = []
    for _ in range(b):
        if generator is None or isinstance(generator, torch.Generator):
            perm = torch.randperm(t, generator=generator).numpy()
        elif isinstance(generator, np.random.Generator):
            perm = generator.permutation(t)
        else:
            raise TypeError("generator must be a torch.Generator, a numpy Generator or None")
        rows.append(np.sort(perm[:keep]))
    return np.stack(rows)


def _pearson_numpy(x: np.ndarray) -> np.ndarray:
    """Batched Pearson FC of (B, T, R) float64 series (NaN rows/cols for unusable ROIs)."""
    finite = np.isfinite(x).all(axis=1)
    x = np.where(np.isfinite(x), x, 0.0)
    centered = x - x.mean(axis=1, keepdims=True)
    ss = (centered**2).sum(axis=1)
    raw = (x**2).sum(axis=1)
    ok = finite & (ss > 1e-20 * raw) & (raw > 0)
    z = centered / np.where(ok, np.sqrt(np.where(ok, ss, 1.0)), 1.0)[:, None, :]
    fc = np.clip(np.matmul(z.transpose(0, 2, 1), z), -1.0, 1.0)
    diag = np.arange(x.shape[2])
    fc[:, diag, diag] = 1.0
    bad = ~ok[:, :, None] | ~ok[:, None, :]
    fc[bad] = np.nan
    return fc


def _pearson_torch(x: Tensor) -> Tensor:
    """Torch version of :func:`_pearson_numpy` (keeps the device)."""
    finite = torch.isfinite(x).all(dim=1)
    x = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=x.dtype, device=x.device))
    centered = x - x.mean(dim=1, keepdim=True)
    ss = (centered**2).sum(dim=1)
    raw = (x**2).sum(dim=1)
    ok = finite & (ss > 1e-20 * raw) & (raw > 0)
    z = centered / torch.where(ok, ss.sqrt(), torch.ones_like(ss))[:, None, :]
    fc = (z.transpose(1, 2) @ z).clamp_(-1.0, 1.0)
    eye = torch.eye(x.shape[2], dtype=torch.bool, device=x.device)
    fc = torch.where(eye & ok[:, :, None], torch.ones_like(fc), fc)
    bad = ~ok[:, :, None] | ~ok[:, None, :]
    return fc.masked_fill(bad, float("nan"))


def fc_from_timeseries(ts: np.ndarray | Tensor, drop_fraction: float = 0.0,
                       generator: torch.Generator | np.random.Generator | None = None,
                       dtype: torch.dtype = torch.float32) -> Tensor:
    """Pearson FC of ROI time series, optionally after dropping a random fraction of frames.

    With ``drop_fraction > 0`` this is the "pseudo-FC" view of BrainMass (Yang et al., IEEE TMI
    2024): a random ``round(drop_fraction * T)`` time points are removed (the kept ones stay in
    order) before correlating; each sample of a batch gets its own random draw.

    Parameters
    ----------
    ts : np.ndarray or Tensor
        (T, R) or (B, T, R) time series. NumPy input is computed with NumPy (fast for the
        small per-subject matrices of a data loader); tensors stay on their device.
    drop_fraction : float
        Fraction of time points to drop, in [0, 1).
    generator : torch.Generator or numpy.random.Generator, optional
        Random source for the dropped frames (torch's global one when None).
    dtype : torch.dtype
        Output dtype (computation is in float64).

    Returns
    -------
    Tensor
        (R, R) or (B, R, R) (on the input tensor's device; CPU for NumPy input); ones on the
        diagonal of valid ROIs, NaN rows and columns for ROIs whose series is NaN anywhere, all
        zero or numerically constant.
    """
    is_tensor = isinstance(ts, Tensor)
    shape = tuple(ts.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"time series must be (T, R) or (B, T, R), got shape {shape}")
    if not 0.0 <= drop_fraction < 1.0:
        raise ValueError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    single = len(shape) == 2
    b, t, r = (1, *shape) if single else shape
    idx = _kept_frames(b, t, drop_fraction, generator) if drop_fraction > 0 else None
    if is_tensor:
        x = ts.to(torch.float64).reshape(b, t, r)
        if idx is not None:
            index = torch.from_numpy(idx).to(x.device)
            x = torch.gather(x, 1, index[:, :, None].expand(b, idx.shape[1], r))
        fc = _pearson_torch(x).to(dtype)
    else:
        x = np.asarray(ts, dtype=np.float64).reshape(b, t, r)
        if idx is not None:
            x = x[np.arange(b)[:, None], idx]
        fc = torch.from_numpy(_pearson_numpy(x)).to(dtype)
    return fc[0] if single else fc


@torch.no_grad()
def embed_fc(encoder: BrainMassEncoder, fc: np.ndarray | Tensor, batch_size: int = 64,
             device: str | torch.device | None = None) -> np.ndarray:
    """Embed FC matrices with a (frozen) encoder, in eval mode and in batches.

    Parameters
    ----------
    encoder : BrainMassEncoder
        The encoder (left in eval mode afterwards).
    fc : np.ndarray or Tensor
        (N, R, R) or (R, R) FC matrices (NaN rows/columns for missing ROIs).
    batch_size : int
        Matrices per forward pass.
    device : str or torch.device, optional
        Where to run (default: the encoder's device).

    Returns
    -------
    np.ndarray
        (N, readout_dim * R) float32 (or (readout_dim * R,) for a single matrix).
    """
    x = torch.as_tensor(np.asarray(fc) if not isinstance(fc, Tensor) else fc)
    single = x.ndim == 2
    if single:
        x = x[None]
    if device is not None:
        encoder.to(device)
    encoder.eval()
    out = [encoder.embed(x[i:i + batch_size]).float().cpu() for i in range(0, len(x), batch_size)]
    emb = torch.cat(out).numpy() if out else np.zeros((0, encoder.embedding_dim), np.float32)
    return emb[0] if single else emb
