"""Bundled foundation models: weights (safetensors) + a model card (JSON), loaded by name.

A model folder holds ``weights.safetensors`` (encoder tensors under ``encoder.``, head tensors
under ``heads.<name>.``) and ``card.json`` (name, version, family, atlas and ROI order, input
contract, embedding size, heads with labels and validation figures, training data, licence,
sha256 of the weights). Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .heads import BINARY, LinearHead

MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
DEFAULT_MODEL = "bidsfmfc"
WEIGHTS = "weights.safetensors"
CARD = "card.json"


def list_models() -> list[str]:
    """Names of the models bundled with this installation."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in MODELS_DIR.iterdir() if (p / CARD).is_file())


def model_dir(spec: str | Path) -> Path:
    """Folder of a bundled model name or a path to a model folder.

    Raises
    ------
    ConfigError
        If no such model exists.
    """
    path = Path(spec)
    if (path / CARD).is_file():
        return path
    cand = MODELS_DIR / str(spec)
    if (cand / CARD).is_file():
        return cand
    raise ConfigError(f"unknown model {spec!r}",
                      remedy=f"Use one of {', '.join(list_models()) or '(none bundled)'} or a "
                             "folder holding card.json and weights.safetensors")


@dataclass
class FoundationModel:
    """An encoder with its heads and card.

    Attributes
    ----------
    card : dict
        The model card.
    encoder : torch.nn.Module
        The FC encoder (eval mode).
    heads : dict of LinearHead
        Prediction heads on the embedding.
    """

    card: dict[str, Any]
    encoder: Any
    heads: dict[str, LinearHead] = field(default_factory=dict)
    device: str = "cpu"
    reference_fc: np.ndarray | None = None

    @property
    def name(self) -> str:
        """Model name (used in the ``desc-`` entity of outputs)."""
        return str(self.card["name"])

    @property
    def atlas(self) -> str:
        """Atlas the model expects."""
        return str(self.card["atlas"]["name"])

    @property
    def roi_names(self) -> list[str]:
        """ROI order of the input."""
        return list(self.card["atlas"]["roi_names"])

    @property
    def min_volumes(self) -> int:
        """Minimum retained volumes for a reliable FC input."""
        return int(self.card["input"]["min_volumes"])

    def to(self, device: str) -> FoundationModel:
        """Move the encoder to ``device`` (``cpu`` or ``cuda``)."""
        self.encoder.to(device)
        self.device = device
        return self

    def _fc_tensor(self, fc: np.ndarray):
        import torch

        fc = np.asarray(fc, dtype=np.float32)
        if fc.ndim == 2:
            fc = fc[None]
        r = len(self.roi_names)
        if fc.shape[1:] != (r, r):
            raise ConfigError(f"model {self.name} expects {r}x{r} FC matrices, got "
                              f"{fc.shape[1]}x{fc.shape[2]}")
        return torch.from_numpy(fc).to(self.device)

    def encode(self, fc: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Embeddings of a batch of FC matrices (NaN rows = missing ROIs, handled as masked).

        Parameters
        ----------
        fc : np.ndarray
            (B, R, R) or (R, R) Pearson FC in the model's ROI order.
        batch_size : int
            Matrices per forward pass.

        Returns
        -------
        np.ndarray
            (B, E) float32 embeddings.
        """
        import torch

        from .brainmass import embed_fc

        x = self._fc_tensor(fc)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda")
                    else contextlib.nullcontext())
        with autocast:
            return np.atleast_2d(embed_fc(self.encoder, x, batch_size=batch_size))

    def head_outputs(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """Head outputs on embeddings: P(positive label) (binary) or the value (regression)."""
        return {name: head.predict(emb) for name, head in self.heads.items()}

    def fc_from_series(self, timeseries: list[np.ndarray],
                       repetition_times: list[float] | None = None) -> np.ndarray:
        """Pearson FC of each run's (n_volumes, n_rois) series in the model's ROI order.

        ``repetition_times`` is accepted for a uniform API with time-series models; FC does not
        depend on it.
        """
        from .brainmass import fc_from_timeseries

        r = len(self.roi_names)
        out = []
        for i, ts in enumerate(timeseries):
            ts = np.asarray(ts, dtype=np.float64)
            if ts.ndim != 2 or ts.shape[1] != r:
                raise ConfigError(f"run {i}: expected (n_volumes, {r}) time series in the "
                                  f"model's ROI order, got shape {ts.shape}")
            if ts.shape[0] < self.min_volumes:
                raise ConfigError(f"run {i}: {ts.shape[0]} volumes, below the model's minimum "
                                  f"of {self.min_volumes}")
            out.append(np.asarray(fc_from_timeseries(ts), dtype=np.float32))
        if repetition_times is not None and len(repetition_times) != len(out):
            raise ConfigError("give one repetition time per run")
        return np.stack(out)

    def embed(self, timeseries: list[np.ndarray],
              repetition_times: list[float] | None = None) -> np.ndarray:
        """Embeddings (n_runs, embedding_size) of ROI time series (notebook API)."""
        return self.encode(self.fc_from_series(timeseries, repetition_times))

    def predict(self, timeseries: list[np.ndarray],
                repetition_times: list[float] | None = None):
        """One row per run, one column per head output (``diagnosis_P(ASD)``, ``age``...)."""
        import pandas as pd

        outputs = self.head_outputs(self.embed(timeseries, repetition_times))
        cols = {}
        for name, values in outputs.items():
            head = self.heads[name]
            key = f"{name}_P({head.labels[1]})" if head.kind == BINARY else name
            cols[key] = values
        return pd.DataFrame(cols)

    def attention(self, timeseries: list[np.ndarray], repetition_times: list[float] | None,
                  head: str, steps: int = 32) -> np.ndarray:
        """Per-ROI integrated-gradients scores (n_runs, n_rois) for one head."""
        if head not in self.heads:
            raise ConfigError(f"unknown head {head!r}; this model has {', '.join(self.heads)}")
        return self.attribution(self.fc_from_series(timeseries, repetition_times), head,
                                steps=steps)

    def attribution(self, fc: np.ndarray, head: str, steps: int = 32,
                    baseline: np.ndarray | None = None) -> np.ndarray:
        """Per-ROI integrated-gradients attribution of one head (see :mod:`.attention`)."""
        from .attention import integrated_gradients

        return integrated_gradients(self, fc, head, steps=steps, baseline=baseline)


def load_model(spec: str | Path = DEFAULT_MODEL, device: str = "cpu") -> FoundationModel:
    """Load a bundled (or local) model: card, encoder and heads, from safetensors only.

    Raises
    ------
    ConfigError
        If the model is unknown, its weights do not match the card's sha256, or tensors are
        missing or mis-shaped (all listed).
    """
    from safetensors.numpy import load_file

    from ..utils import sha256_file
    from .brainmass import BrainMassConfig, BrainMassEncoder

    folder = model_dir(spec)
    card = json.loads((folder / CARD).read_text())
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ConfigError("model weights are missing", path=weights,
                          remedy="Reinstall bidsfm or restore the model folder")
    digest = sha256_file(weights)
    if card.get("sha256") and card["sha256"] != digest:
        raise ConfigError(f"weights sha256 {digest[:12]}... does not match the card's "
                          f"{str(card['sha256'])[:12]}...", path=weights,
                          remedy="The file is corrupt or from another model; reinstall it")
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # SafetensorError, OSError, ValueError: never fall back to pickle
        raise ConfigError(f"weights are not a valid safetensors file ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})", path=weights,
                          remedy="bidsfm only loads safetensors; restore the model's "
                                 "weights.safetensors") from None
    family = card.get("family")
    if family != "brainmass":
        raise ConfigError(f"unsupported model family {family!r}", path=folder / CARD)
    cfg = BrainMassConfig.from_dict(card["encoder_config"])
    encoder = BrainMassEncoder(cfg)
    import torch

    state = {k[len("encoder."):]: torch.from_numpy(v.copy()) for k, v in tensors.items()
             if k.startswith("encoder.")}
    expected = encoder.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise ConfigError("weights do not match the encoder: " + "; ".join(problems[:10]),
                          path=weights)
    encoder.load_state_dict(state, strict=True)
    encoder.eval()
    heads = {name: LinearHead.from_tensors(name, tensors, meta)
             for name, meta in card.get("heads", {}).items()}
    reference = tensors.get("reference.fc")
    model = FoundationModel(card=card, encoder=encoder, heads=heads,
                            reference_fc=None if reference is None
                            else reference.astype(np.float32))
    return model.to(device)


def save_model(folder: str | Path, card: dict[str, Any], encoder, heads: list[LinearHead],
               reference_fc: np.ndarray | None = None) -> Path:
    """Write ``weights.safetensors`` and ``card.json`` (sha256 filled in) atomically.

    ``reference_fc`` (R, R), the mean FC of the training data, is stored as ``reference.fc`` and
    used as the attribution baseline.
    """
    from safetensors.numpy import save_file

    from ..utils import atomic_path, sha256_file, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"encoder.{k}": v.detach().cpu().float().contiguous().numpy()
               for k, v in encoder.state_dict().items()}
    for head in heads:
        tensors.update(head.to_tensors())
    if reference_fc is not None:
        tensors["reference.fc"] = np.ascontiguousarray(reference_fc, dtype=np.float32)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    card = dict(card)
    card["heads"] = {h.name: h.meta() for h in heads}
    card["sha256"] = sha256_file(folder / WEIGHTS)
    write_json_atomic(folder / CARD, card)
    return folder

