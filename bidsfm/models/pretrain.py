"""Self-supervised pretraining of the BrainMass FC encoder, and its safetensors checkpoints.

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
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..errors import ConfigError, InputDataError
from ..utils import atomic_path, write_json_atomic
from .brainmass import BrainMassConfig, BrainMassEncoder, fc_from_timeseries, infer_valid_rois

__all__ = ["PretrainConfig", "BrainMassPretrainer", "pretrain", "fit_pretrainer",
           "load_timeseries_npz", "load_timeseries_bidsfm", "save_encoder", "load_encoder",
           "read_encoder_config", "main"]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "pretrain_log.tsv"
FORMAT_VERSION = 1
LOG_COLUMNS = ("epoch", "loss", "lra", "mrm", "lr", "momentum", "seconds")


# --------------------------------------------------------------------------------------- data
def load_timeseries_npz(npz: str | Path, participants_tsv: str | Path,
                        ids: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """Load ROI time series stored one array per participant in an ``.npz`` file.

    Parameters
    ----------
    npz : str or Path
        File such as ``shared/data/abide/cc200_timeseries.npz`` (keys = participant_id, values
        (T, R)).
    participants_tsv : str or Path
        ``participants.tsv`` whose ``participant_id`` column lists (and orders) the subjects.
    ids : sequence of str, optional
        Only these participants (in this order); default: every row of the TSV.

    Returns
    -------
    list of (str, np.ndarray)
        (participant_id, (T, R) float32 series).
    """
    import pandas as pd

    table = pd.read_csv(participants_tsv, sep="\t", dtype={"participant_id": str})
    if "participant_id" not in table.columns:
        raise InputDataError("no participant_id column", path=participants_tsv)
    wanted = list(table["participant_id"]) if ids is None else [str(i) for i in ids]
    out: list[tuple[str, np.ndarray]] = []
    with np.load(npz) as data:
        missing = [pid for pid in wanted if pid not in data.files]
        if missing:
            raise InputDataError(f"{len(missing)} participant(s) have no array, e.g. "
                                 f"{', '.join(missing[:5])}", path=npz,
                                 remedy="Check that the npz and participants.tsv belong together")
        for pid in wanted:
            arr = np.asarray(data[pid], dtype=np.float32)
            if arr.ndim != 2:
                raise InputDataError(f"array of {pid} has shape {arr.shape}, expected (T, R)",
                                     path=npz)
            out.append((pid, arr))
    return out


def load_timeseries_bidsfm(derivatives_dir: str | Path,
                           atlas: str = "CC200") -> list[tuple[str, np.ndarray]]:
    """Load the ROI time series written by bidsfm's participant level.

    Parameters
    ----------
    derivatives_dir : str or Path
        bidsfm output dataset; searched recursively for
        ``*_atlas-<atlas>_stat-mean_timeseries.tsv`` (tab-separated, ROI names as header,
        ``n/a`` for missing ROIs).
    atlas : str
        Atlas label of the ``atlas`` entity.

    Returns
    -------
    list of (str, np.ndarray)
        (file name without the ``_atlas-..._timeseries.tsv`` ending, (T, R) float32 series with
        NaN columns for missing ROIs), sorted by path.
    """
    import pandas as pd

    from ..derivatives import output_glob

    ending = output_glob("timeseries", atlas)[1:]
    files = sorted(Path(derivatives_dir).rglob(f"*{ending}"))
    if not files:
        raise InputDataError(f"no *{ending} files found", path=derivatives_dir,
                             remedy="Run bidsfm's participant level first, or check --atlas")
    out: list[tuple[str, np.ndarray]] = []
    n_cols = None
    for path in files:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        arr = frame.to_numpy(dtype=np.float32)
        if n_cols is None:
            n_cols = arr.shape[1]
        elif arr.shape[1] != n_cols:
            raise InputDataError(f"{arr.shape[1]} ROI columns, other files have {n_cols}",
                                 path=path)
        out.append((path.name[: -len(ending)], arr))
    return out


# ------------------------------------------------------------------------------------- config
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
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown pretraining configuration keys: {', '.join(unknown)}")
        return cls(**d)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available",
                          remedy="Use --device cpu or auto")
    return dev


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
def _lr_at(step: int, total: int, warmup: int, cfg: PretrainConfig) -> float:
    if warmup > 0 and step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _momentum_at(step: int, total: int, base: float) -> float:
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def _make_views(series: list[np.ndarray], idx: np.ndarray, cfg: PretrainConfig,
                rng: np.random.Generator) -> list[Tensor]:
    """``[fc1, fc2, valid1, valid2, mask1, mask2]`` for the subjects ``idx`` (on CPU)."""
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


def _param_groups(model: BrainMassPretrainer, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.trainable_parameters():
        if p.ndim < 2 or name.endswith(("mask_embedding", "roi_embed")):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


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
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=(0.9, 0.999))
    n = len(series)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total - 1)
    amp = device.type == "cuda" and cfg.bf16
    params = [p for _, p in model.trainable_parameters()]
    if log_path is not None:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("\t".join(LOG_COLUMNS) + "\n")

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
                views = [v.to(device, non_blocking=True) for v in _make_views(series, idx, cfg,
                                                                              rng)]
                lr = _lr_at(step, total, warmup, cfg)
                for group in opt.param_groups:
                    group["lr"] = lr
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
                momentum = _momentum_at(step + 1, total, cfg.ema_momentum)
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
            if log_path is not None:
                with open(log_path, "a") as fh:
                    fh.write("\t".join(f"{row[c]:.6g}" if c != "epoch" else str(row[c])
                                       for c in LOG_COLUMNS) + "\n")
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


# ------------------------------------------------------------------------------- checkpoints
def save_encoder(encoder: BrainMassEncoder, cfg: BrainMassConfig, directory: str | Path,
                 extra_meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` (float32 state dict) and ``config.json`` into a folder.

    Parameters
    ----------
    encoder : BrainMassEncoder
        Encoder to save.
    cfg : BrainMassConfig
        Its architecture (stored under ``"architecture"`` in config.json).
    directory : str or Path
        Output folder (created).
    extra_meta : dict, optional
        JSON-serialisable information stored under ``"meta"`` (training data, licence, ...).

    Returns
    -------
    Path
        The ``model.safetensors`` path.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous()
             for k, v in encoder.state_dict().items()}
    n_params = sum(v.numel() for v in state.values())
    arch = cfg.to_dict()
    path = directory / MODEL_FILE
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "model_type": "brainmass",
                                             "architecture": json.dumps(arch)})
    write_json_atomic(directory / CONFIG_FILE, {
        "model_type": "brainmass", "format_version": FORMAT_VERSION,
        "bidsfm_version": __version__, "architecture": arch,
        "embedding_dim": cfg.readout_dim * cfg.n_rois, "n_parameters": n_params,
        "weights": MODEL_FILE, "meta": dict(extra_meta or {}),
    })
    return path


def read_encoder_config(directory: str | Path) -> dict[str, Any]:
    """Read ``config.json`` of a saved encoder (folder or path of its model.safetensors)."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise InputDataError(f"no {CONFIG_FILE}", path=directory,
                             remedy="Point to a folder written by save_encoder/bidsfm-pretrain")
    try:
        meta = json.loads(path.read_text())
    except ValueError as exc:
        raise InputDataError(f"not valid JSON ({exc})", path=path) from exc
    if meta.get("model_type") != "brainmass" or "architecture" not in meta:
        raise InputDataError("not a BrainMass encoder configuration", path=path)
    return meta


def load_encoder(directory: str | Path, device: str | torch.device = "cpu") -> BrainMassEncoder:
    """Load an encoder saved by :func:`save_encoder` (safetensors only, never pickle).

    Parameters
    ----------
    directory : str or Path
        Folder holding ``config.json`` and ``model.safetensors`` (or the safetensors path).
    device : str or torch.device
        Where to put the weights.

    Returns
    -------
    BrainMassEncoder
        In eval mode.

    Raises
    ------
    InputDataError
        When a file is missing or the tensors do not match the architecture (the message lists
        missing and unexpected keys and shape mismatches).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    meta = read_encoder_config(directory)
    cfg = BrainMassConfig.from_dict(meta["architecture"])
    weights = directory / meta.get("weights", MODEL_FILE)
    if not weights.is_file():
        raise InputDataError("weights file missing", path=weights)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise InputDataError(f"cannot read safetensors file ({exc})", path=weights) from exc
    encoder = BrainMassEncoder(cfg)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                    for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {', '.join(shapes)}")
        raise InputDataError(f"weights do not match config.json ({'; '.join(parts)})",
                             path=weights, remedy="Use the config.json saved with these weights")
    encoder.load_state_dict(state, strict=True)
    return encoder.to(device).eval()


# ---------------------------------------------------------------------------------------- CLI
@click.command(name="bidsfm-pretrain",
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--npz", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="npz with one (T, R) array per participant_id (e.g. ABIDE cc200).")
@click.option("--participants", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="participants.tsv listing the npz's participants (with --npz).")
@click.option("--bidsfm-dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="bidsfm output folder with *_stat-mean_timeseries.tsv files.")
@click.option("--atlas", default="CC200", show_default=True, help="atlas label (--bidsfm-dir).")
@click.option("--epochs", type=int, default=PretrainConfig.epochs, show_default=True)
@click.option("--batch-size", type=int, default=PretrainConfig.batch_size, show_default=True)
@click.option("--lr", type=float, default=PretrainConfig.lr, show_default=True)
@click.option("--layers", type=int, default=BrainMassConfig.n_layers, show_default=True)
@click.option("--heads", type=int, default=BrainMassConfig.n_heads, show_default=True,
              help="Attention heads; must divide the number of ROIs.")
@click.option("--ff-dim", type=int, default=BrainMassConfig.ff_dim, show_default=True)
@click.option("--no-roi-embedding", is_flag=True, help="Drop the learned ROI identity vectors.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--max-subjects", type=int, default=None,
              help="Use a seeded random subset of this many subjects (quick runs).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--family", type=click.Choice(["brainmass", "brainjepa"]), default="brainmass",
              show_default=True, help="brainmass: FC encoder (LRA + MRM); brainjepa: "
              "time-series encoder (JEPA, spatiotemporal masking).")
@click.option("--tr", type=float, default=None,
              help="[brainjepa] repetition time (s) of every run, when participants.tsv has no "
                   "repetition_time column (--bidsfm-dir reads it from the JSON sidecars).")
@click.option("--target-tr", type=float, default=2.0, show_default=True,
              help="[brainjepa] TR the runs are resampled to.")
@click.option("--frames", type=int, default=64, show_default=True,
              help="[brainjepa] window length in frames at --target-tr.")
@click.option("--patch", type=int, default=16, show_default=True,
              help="[brainjepa] frames per time patch.")
@click.option("--dim", type=int, default=96, show_default=True,
              help="[brainjepa] token width (--layers and --heads set depth and heads).")
@click.option("--gradients", "gradients_tsv", default=None,
              type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="[brainjepa] ROI gradients TSV from bidsfm-gradients (default: computed "
                   "from the group FC of the training runs).")
@click.option("--readout", type=click.Choice(["mean", "connectivity"]), default="mean",
              show_default=True, help="[brainjepa] embedding readout: the official mean pool, "
              "or bidsfm's token connectivity (its axes are fitted on the training runs).")
@click.option("--readout-dim", type=int, default=8, show_default=True,
              help="[brainjepa] axes per ROI of the connectivity readout (0: upper triangle).")
@click.option("--var-weight", type=float, default=0.0, show_default=True,
              help="[brainjepa] weight of the variance hinge on context tokens (0: plain JEPA; "
                   "bidsfmts uses 1.0).")
@click.option("--cov-weight", type=float, default=0.0, show_default=True,
              help="[brainjepa] weight of the covariance penalty (bidsfmts uses 0.04).")
def pretrain_command(out_dir: Path, npz: Path | None, participants: Path | None,
                     bidsfm_dir: Path | None, atlas: str, epochs: int, batch_size: int, lr: float,
                     layers: int, heads: int, ff_dim: int, no_roi_embedding: bool, seed: int,
                     device: str, max_subjects: int | None, no_progress: bool,
                     family: str = "brainmass", tr: float | None = None, target_tr: float = 2.0,
                     frames: int = 64, patch: int = 16, dim: int = 96,
                     gradients_tsv: Path | None = None, readout: str = "mean",
                     readout_dim: int = 8, var_weight: float = 0.0,
                     cov_weight: float = 0.0) -> None:
    """Pretrain a foundation-model encoder and save it in OUT_DIR.

    Data come either from an npz of ROI time series plus its participants.tsv, or from a bidsfm
    output folder. brainmass: OUT_DIR receives model.safetensors, config.json and
    pretrain_log.tsv. brainjepa: OUT_DIR becomes a model folder (weights.safetensors + card.json,
    no heads) loadable with --model OUT_DIR, plus pretrain_log.tsv.
    """
    if (npz is None) == (bidsfm_dir is None) or (npz is not None and participants is None):
        raise click.UsageError("give either --npz with --participants, or --bidsfm-dir")
    if family == "brainjepa":
        from .jepa import jepa_command

        try:
            jepa_command(out_dir, npz=npz, participants=participants, bidsfm_dir=bidsfm_dir,
                         atlas=atlas, epochs=epochs, batch_size=batch_size, lr=lr, depth=layers,
                         heads=heads, dim=dim, patch=patch, frames=frames, target_tr=target_tr,
                         tr=tr, gradients_tsv=gradients_tsv, seed=seed, device=device,
                         max_subjects=max_subjects, readout=readout, readout_dim=readout_dim,
                         var_weight=var_weight, cov_weight=cov_weight)
        except (ConfigError, InputDataError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        return
    try:
        if npz is not None:
            items = load_timeseries_npz(npz, participants)
            source = {"npz": str(npz), "participants": str(participants)}
        else:
            items = load_timeseries_bidsfm(bidsfm_dir, atlas=atlas)
            source = {"bidsfm_dir": str(bidsfm_dir), "atlas": atlas}
        if max_subjects is not None and max_subjects < len(items):
            pick = np.sort(np.random.default_rng(seed).choice(len(items), max_subjects,
                                                              replace=False))
            items = [items[i] for i in pick]
        n_rois = items[0][1].shape[1]
        model_cfg = BrainMassConfig(n_rois=n_rois, n_layers=layers, n_heads=heads,
                                    ff_dim=ff_dim, roi_embedding=not no_roi_embedding)
        cfg = PretrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                             device=device)
        out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        encoder, logs = pretrain([s for _, s in items], model_cfg, cfg,
                                 log_path=out_dir / LOG_FILE, progress=not no_progress)
        elapsed = time.perf_counter() - t0
        path = save_encoder(encoder, model_cfg, out_dir, extra_meta={
            "training": cfg.to_dict(), "source": source, "n_series": len(items),
            "subjects": [name for name, _ in items], "final": logs[-1],
            "seconds": round(elapsed, 1)})
    except (ConfigError, InputDataError) as exc:
        raise click.ClickException(str(exc)) from exc
    n_params = sum(p.numel() for p in encoder.parameters())
    last = logs[-1]
    click.echo(f"bidsfm-pretrain: {len(items)} series x {n_rois} ROIs, {epochs} epoch(s) in "
               f"{elapsed:.1f} s on {resolve_device(device)}; loss {last['loss']:.4f} "
               f"(lra {last['lra']:.4f}, mrm {last['mrm']:.4f}); {n_params:,} parameters -> "
               f"{path}")


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point of ``bidsfm-pretrain``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    pretrain_command.main(args=argv, prog_name="bidsfm-pretrain", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main()
