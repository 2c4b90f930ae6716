"""Hyper-parameters of the three pretraining objectives, validated when built.

* :class:`PretrainConfig`: BrainMass latent representation alignment + Mask-ROI modelling
  (:mod:`.objective_brainmass`);
* :class:`JEPAConfig`: Brain-JEPA spatiotemporal JEPA (:mod:`.objective_jepa`);
* :class:`TangentPretrainConfig`: cross-pipeline tangent-FC pretraining
  (:mod:`.objective_tangent`).

Each has ``to_dict`` (JSON-serialisable, stored in the model card's ``pretraining`` section).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ...errors import ConfigError
from ...utils import dataclass_from_dict

__all__ = ["PretrainConfig", "JEPAConfig", "TangentPretrainConfig"]


@dataclass
class PretrainConfig:
    """Pretraining hyper-parameters.

    Parameters
    ----------
    epochs : int
        Passes over the subjects.
    batch_size : int
        Subjects per step (each gives two views).
    lr : float
        Peak AdamW learning rate (linear warmup, then cosine decay to ``min_lr``).
    weight_decay : float
        AdamW weight decay (not applied to biases, norms, mask token and ROI embedding).
    warmup_epochs : float
        Length of the linear warmup.
    min_lr : float
        Learning rate at the end of the cosine decay.
    drop_fraction : float
        Fraction of time points dropped to make each pseudo-FC view.
    mask_fraction : float
        Fraction of valid ROIs masked in each online view (Mask-ROI Modelling).
    mrm_weight : float
        Weight of the MRM loss (lambda).
    ema_momentum : float
        Initial EMA momentum of the target network (rises to 1 on a cosine schedule).
    projector_hidden, projection_dim, predictor_hidden : int
        Widths of the BYOL projector (embedding -> hidden -> projection) and predictor
        (projection -> hidden -> projection) MLPs.
    grad_clip : float
        Max gradient norm (0 disables).
    seed : int
        Seed of model initialisation, views, masks, shuffling and dropout.
    device : str
        ``auto`` (CUDA when available), ``cpu`` or ``cuda[:N]``.
    bf16 : bool
        bfloat16 autocast on CUDA (ignored on CPU).
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    min_lr: float = 1e-6
    drop_fraction: float = 0.2
    mask_fraction: float = 0.2
    mrm_weight: float = 1.0
    ema_momentum: float = 0.996
    projector_hidden: int = 1024
    projection_dim: int = 256
    predictor_hidden: int = 1024
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        if not 0.0 <= self.drop_fraction < 1.0:
            raise ConfigError(f"drop_fraction must be in [0, 1), got {self.drop_fraction}")
        if not 0.0 <= self.mask_fraction < 1.0:
            raise ConfigError(f"mask_fraction must be in [0, 1), got {self.mask_fraction}")
        if not 0.0 <= self.ema_momentum <= 1.0:
            raise ConfigError(f"ema_momentum must be in [0, 1], got {self.ema_momentum}")

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """Build from :meth:`to_dict` output (unknown keys raise ConfigError)."""
        return dataclass_from_dict(cls, d, "pretraining")


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
        return dataclass_from_dict(cls, d, "JEPA")


@dataclass
class TangentPretrainConfig:
    """Optimisation settings of :func:`pretrain_tangent`.

    Parameters
    ----------
    epochs, batch_size, lr, weight_decay, warmup_epochs : training schedule (AdamW, linear
        warm-up then cosine decay to 0).
    drop_fraction : float
        Fraction of time points dropped from the input view.
    mask_ratio : float
        Fraction of valid ROIs hidden in the input view.
    masked_weight : float
        Loss weight of the hidden ROIs' rows and columns (others: 1).
    target : str
        ``"primary"`` (the primary pipeline's full view), ``"cross"`` (another real view) or
        ``"consensus"`` (mean of the real views).
    schedule : str
        ``"cosine"`` (linear warm-up, cosine decay to 0) or ``"constant"`` (``lr`` throughout).
    clip_grad : float
        Gradient-norm clipping (0 = none).
    seed : int
        Random seed (CPU runs are deterministic for a seed).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    """

    epochs: int = 5
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    drop_fraction: float = 0.2
    mask_ratio: float = 0.25
    masked_weight: float = 3.0
    target: str = "consensus"
    schedule: str = "constant"
    clip_grad: float = 0.0
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.target not in ("cross", "consensus", "primary"):
            raise ConfigError(f"target must be 'cross', 'consensus' or 'primary', got "
                              f"{self.target!r}")
        if not 0.0 <= self.drop_fraction < 0.9 or not 0.0 <= self.mask_ratio < 1.0:
            raise ConfigError("drop_fraction must be in [0, 0.9) and mask_ratio in [0, 1)")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.epochs < 0 or self.batch_size < 1:
            raise ConfigError("epochs must be >= 0 and batch_size >= 1")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings."""
        return asdict(self)
