"""Bundled foundation models: weights (safetensors) + a model card (JSON), loaded by name.

A model folder holds ``weights.safetensors`` (encoder tensors under ``encoder.``, head tensors
under ``heads.<name>.``) and ``card.json`` (name, version, family, atlas and ROI order, input
contract, embedding size, heads with labels and validation figures, training data, licence,
sha256 of the weights). Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .card import (  # noqa: F401 (list_models, MODELS_DIR: this module's names before card.py)
    DEFAULT_MODEL,
    MODELS_DIR,
    ModelCard,
    as_card,
    list_models,
    model_dir,
    read_card,
)
from .heads import BINARY, LinearHead
from .weights import CARD, WEIGHTS, read_weights, write_weights_folder

#: numerical precision of inference: ``float32`` (default, the same numbers on CPU and GPU) or
#: ``bf16`` (bfloat16 autocast of the encoder's forward pass; faster on GPUs, embeddings move by
#: about 1 % relative, see docs/performance.md)
PRECISIONS = ("float32", "bf16")


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises
    ------
    ConfigError
        Otherwise.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    return precision


def inference_autocast(device: str, precision: str):
    """Context of the encoder's forward pass: bfloat16 autocast for ``bf16`` on ``device``
    (``cpu`` or ``cuda``), nothing for ``float32``."""
    import torch

    if check_precision(precision) == "bf16":
        return torch.autocast(str(device).split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class FoundationModel:
    """An encoder with its heads and card.

    Attributes
    ----------
    card : ModelCard
        The model card (a mapping given here is validated into one).
    encoder : torch.nn.Module
        The FC encoder (eval mode).
    heads : dict of LinearHead
        Prediction heads on the embedding.
    device : str
        Where the encoder runs.
    reference_fc : np.ndarray, optional
        Mean training FC (attribution baseline, tangent reference).
    precision : str
        ``float32`` (default) or ``bf16`` (bfloat16 autocast of :meth:`encode`).
    """

    card: ModelCard
    encoder: Any
    heads: dict[str, LinearHead] = field(default_factory=dict)
    device: str = "cpu"
    reference_fc: np.ndarray | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        self.card = as_card(self.card)

    @property
    def name(self) -> str:
        """Model name (used in the ``desc-`` entity of outputs)."""
        return self.card.name

    @property
    def atlas(self) -> str:
        """Atlas the model expects."""
        return self.card.atlas_name

    @property
    def atlas_spec(self) -> str:
        """Atlas spec resolving the model's atlas: its name, or ``NAME=PATH`` for a user file."""
        return self.card.atlas_spec

    @property
    def roi_names(self) -> list[str]:
        """ROI order of the input."""
        return list(self.card.roi_names)

    @property
    def min_volumes(self) -> int:
        """Minimum retained volumes for a reliable FC input."""
        return int(self.card.input["min_volumes"])

    @property
    def input_kind(self) -> str:
        """``fc``: the model reads Pearson FC matrices."""
        return "fc"

    def to(self, device: str) -> FoundationModel:
        """Move the encoder to ``device`` (``cpu`` or ``cuda``)."""
        self.encoder.to(device)
        self.device = device
        return self

    def read_inputs(self, fc_paths: list[Path], fcs: list[np.ndarray] | None = None
                    ) -> tuple[np.ndarray, dict[int, str]]:
        """The runs' FC matrices (B, R, R) in the model's ROI order, read from their FC files
        unless given as ``fcs``; no run is left out (the ``{}`` of :class:`Model`)."""
        if fcs is None:
            from ..derivatives import read_relmat

            fcs = [read_relmat(p, self.roi_names)[1].astype(np.float32) for p in fc_paths]
        return np.stack(fcs), {}

    def embedding_columns(self, width: int) -> list[str]:
        """Column names of the embedding (see :func:`embedding_columns`)."""
        return embedding_columns(self.encoder, self.roi_names, width)

    #: the attribution's starting point, and what a per-ROI score sums (group-level texts)
    attribution_baseline = "the model's reference FC"
    attribution_unit = "FC row"

    def attribution_method(self, steps: int) -> str:
        """How the attention scores are computed (the embedding sidecar's ``Attribution``)."""
        return (f"integrated gradients from the model's reference FC baseline (mean training "
                f"FC; all-zero if the model has none), {steps} steps; "
                "per-ROI sum over the ROI's FC row")

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

        from .brainmass import embed_fc

        x = self._fc_tensor(fc)
        with inference_autocast(self.device, self.precision):
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

    def attributions(self, fc: np.ndarray, heads: Mapping[str, Any] | None = None,
                     steps: int = 32, baseline: np.ndarray | None = None,
                     runs_per_pass: int | None = None) -> dict[str, np.ndarray]:
        """Integrated-gradients attributions of several heads from shared forward passes.

        ``heads`` maps output names to linear heads (or to one head per run); default every
        head of the model. Equal to :meth:`attribution` per head up to float32 round-off
        (:func:`.attention.integrated_gradients_heads`, where ``runs_per_pass`` is explained:
        by default one run per pass on the CPU, several on a GPU).
        """
        from .attention import integrated_gradients_heads

        return integrated_gradients_heads(self, fc, self.heads if heads is None else heads,
                                          steps=steps, baseline=baseline,
                                          runs_per_pass=runs_per_pass)


class PreparedRuns:
    """Runs prepared for a time-series model: per run ``(windows (W, R, T), valid (R,))``.

    Behaves like a batch for the participant level: ``len``, ``shape`` (n_runs, n_rois) and
    indexing by an int, a slice, or a boolean / integer array.
    """

    def __init__(self, runs: list[tuple[np.ndarray, np.ndarray]], n_rois: int) -> None:
        self.runs = list(runs)
        self.n_rois = n_rois

    def __len__(self) -> int:
        return len(self.runs)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_runs, n_rois)."""
        return (len(self.runs), self.n_rois)

    def __getitem__(self, key) -> PreparedRuns:
        if isinstance(key, (int, np.integer)):
            return PreparedRuns([self.runs[int(key)]], self.n_rois)
        if isinstance(key, slice):
            return PreparedRuns(self.runs[key], self.n_rois)
        arr = np.asarray(key)
        idx = np.flatnonzero(arr) if arr.dtype == bool else arr.astype(int)
        return PreparedRuns([self.runs[i] for i in idx], self.n_rois)


@dataclass
class TimeSeriesModel:
    """A Brain-JEPA-style time-series encoder with its heads and card.

    Same API as :class:`FoundationModel` (``embed``/``predict``/``attention`` on lists of
    (n_volumes, n_rois) series and their repetition times), but the input is the time series:
    each run is resampled to the card's target TR, z-scored per ROI and cut into windows
    (:mod:`bidsfm.models.resample`); the run's embedding is the mean over windows.
    """

    card: ModelCard
    encoder: Any
    heads: dict[str, LinearHead] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "float32"

    __post_init__ = FoundationModel.__post_init__
    name = FoundationModel.name
    atlas = FoundationModel.atlas
    atlas_spec = FoundationModel.atlas_spec
    roi_names = FoundationModel.roi_names
    head_outputs = FoundationModel.head_outputs
    predict = FoundationModel.predict
    embedding_columns = FoundationModel.embedding_columns

    @property
    def input_kind(self) -> str:
        """``timeseries``: the model reads ROI time series and their TR."""
        return "timeseries"

    @property
    def spec(self):
        """The input contract (:class:`~bidsfm.models.resample.InputSpec`) from the card."""
        from .resample import InputSpec

        return InputSpec.from_dict(dict(self.card.input))

    @property
    def min_volumes(self) -> int:
        """Volumes the participant level requires before trying (the real limit is seconds)."""
        return int(self.card.input.get("min_volumes", 1))

    attribution_baseline = "the all-zero input"
    attribution_unit = "time points (averaged over the input windows)"

    def attribution_method(self, steps: int) -> str:
        """How the attention scores are computed (the embedding sidecar's ``Attribution``)."""
        return (f"integrated gradients over the model's input windows (resampled, normalised "
                f"ROI time series) from an all-zero baseline, {steps} steps; per-ROI sum over "
                "the ROI's time points, averaged over windows")

    @classmethod
    def from_tensors(cls, card: ModelCard | Mapping[str, Any], tensors: dict[str, np.ndarray],
                     heads: dict[str, LinearHead], path: str | Path) -> TimeSeriesModel:
        """Build from a card and its safetensors tensors (``encoder.*`` and ``gradients``)."""
        from .brainjepa import BrainJEPAConfig, BrainJEPAEncoder

        try:
            cfg = BrainJEPAConfig.from_dict(card["encoder_config"])
            cls_spec_check = card["input"]["target_tr"], card["input"]["n_frames"]
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ConfigError(f"card lacks a valid encoder_config / input section ({exc})",
                              path=path) from None
        if int(cls_spec_check[1]) != cfg.n_frames:
            raise ConfigError(f"card input n_frames {cls_spec_check[1]} != encoder n_frames "
                              f"{cfg.n_frames}", path=path)
        grads = tensors.get("gradients")
        if grads is None or grads.shape != (cfg.n_rois, cfg.n_gradients):
            got = None if grads is None else grads.shape
            raise ConfigError(f"gradients tensor must be ({cfg.n_rois}, {cfg.n_gradients}), "
                              f"got {got}", path=path)
        encoder = BrainJEPAEncoder(cfg, grads)
        load_encoder_state(encoder, tensors, path)
        if cfg.readout == "connectivity" and cfg.readout_dim:
            centre, basis = tensors.get("readout.centre"), tensors.get("readout.basis")
            want = ((cfg.n_rois, cfg.n_rois), (cfg.n_rois, cfg.readout_dim))
            got = tuple(None if t is None else t.shape for t in (centre, basis))
            if got != want:
                raise ConfigError(f"connectivity readout tensors readout.centre / readout.basis "
                                  f"must be {want[0]} / {want[1]}, got {got[0]} / {got[1]}",
                                  path=path)
            encoder.set_readout(centre, basis)
        return cls(card=card, encoder=encoder, heads=heads)

    def to(self, device: str) -> TimeSeriesModel:
        """Move the encoder to ``device``."""
        self.encoder.to(device)
        self.device = device
        return self

    def prepare(self, timeseries: list[np.ndarray], repetition_times: list[float] | None,
                names: list[str] | None = None) -> PreparedRuns:
        """Resample, normalise and window each (n_volumes, n_rois) run.

        Raises
        ------
        ConfigError
            If TRs are missing, shapes do not match the model, or a run is too short.
        """
        from .resample import prepare_run

        r = len(self.roi_names)
        if repetition_times is None or len(repetition_times) != len(timeseries):
            raise ConfigError(f"model {self.name} reads time series: give one repetition time "
                              "(seconds) per run")
        spec = self.spec
        out = []
        for i, (ts, tr) in enumerate(zip(timeseries, repetition_times, strict=True)):
            ts = np.asarray(ts, dtype=np.float64)
            label = names[i] if names else f"run {i}"
            if ts.ndim != 2 or ts.shape[1] != r:
                raise ConfigError(f"{label}: expected (n_volumes, {r}) time series in the "
                                  f"model's ROI order, got shape {ts.shape}")
            out.append(prepare_run(ts, float(tr), spec, name=label))
        return PreparedRuns(out, r)

    def encode(self, inputs: PreparedRuns, batch_size: int = 32) -> np.ndarray:
        """(n_runs, D) embeddings of prepared runs (windows averaged)."""

        from .brainjepa import embed_runs

        with inference_autocast(self.device, self.precision):
            return embed_runs(self.encoder, inputs.runs, batch_size=batch_size)

    def embed(self, timeseries: list[np.ndarray],
              repetition_times: list[float] | None = None) -> np.ndarray:
        """Embeddings (n_runs, embedding_size) of ROI time series (notebook API)."""
        return self.encode(self.prepare(timeseries, repetition_times))

    def attention(self, timeseries: list[np.ndarray], repetition_times: list[float] | None,
                  head: str, steps: int = 32) -> np.ndarray:
        """Per-ROI integrated-gradients scores (n_runs, n_rois) for one head."""
        if head not in self.heads:
            raise ConfigError(f"unknown head {head!r}; this model has "
                              f"{', '.join(self.heads) or 'no heads'}")
        return self.attribution(self.prepare(timeseries, repetition_times), head, steps=steps)

    def attribution(self, inputs: PreparedRuns, head: str, steps: int = 32,
                    baseline: np.ndarray | None = None) -> np.ndarray:
        """Per-ROI integrated-gradients attribution (see :mod:`.attention`)."""
        from .attention import integrated_gradients_timeseries

        return integrated_gradients_timeseries(self, inputs, head, steps=steps)

    def attributions(self, inputs: PreparedRuns, heads: Mapping[str, Any] | None = None,
                     steps: int = 32, baseline: np.ndarray | None = None
                     ) -> dict[str, np.ndarray]:
        """Integrated-gradients attributions of several heads from shared forward passes
        (``heads`` as in :meth:`FoundationModel.attributions`; the baseline is the zero input,
        ``baseline`` must be None)."""
        from .attention import integrated_gradients_timeseries_heads

        if baseline is not None:
            raise ConfigError("time-series models integrate from the zero input; "
                              "baseline must be None")
        return integrated_gradients_timeseries_heads(
            self, inputs, self.heads if heads is None else heads, steps=steps)

    def read_inputs(self, fc_paths: list[Path], fcs: Any = None
                    ) -> tuple[PreparedRuns, dict[int, str]]:
        """Read the runs' time series next to their FC files (participant level; ``fcs``, the
        FC matrices of :class:`Model`'s signature, are not used).

        For each ``*_stat-pearsoncorrelation_relmat.tsv`` the sibling
        ``*_stat-mean_timeseries.tsv`` (+ ``.json`` with ``RepetitionTime`` and
        ``RetainedVolumes``) is read. Censored volumes are put back on the original grid by
        linear interpolation (leading and trailing ones trimmed) so the series is evenly
        sampled. Returns the prepared runs and ``{index: reason}`` of runs that are skipped.
        """
        import pandas as pd

        from ..derivatives import sibling_output
        from .resample import RunTooShort, prepare_run

        spec, names, good, skipped = self.spec, self.roi_names, [], {}
        for i, fc_path in enumerate(fc_paths):
            fc_path = Path(fc_path)
            try:
                ts_path = sibling_output(fc_path, "timeseries")
            except ValueError:
                ts_path = fc_path
            if ts_path == fc_path or not ts_path.is_file():
                raise ConfigError("no time series next to the FC file", path=fc_path)
            meta = json.loads(ts_path.with_suffix(".json").read_text())
            frame = pd.read_csv(ts_path, sep="\t", na_values=["n/a"], keep_default_na=False)
            if list(frame.columns) != names:
                raise ConfigError("time-series columns do not match the model's ROI order",
                                  path=ts_path)
            ts = even_grid(frame.to_numpy(dtype=np.float64), meta.get("RetainedVolumes"))
            tr = meta.get("RepetitionTime")
            if not tr:
                raise ConfigError("no RepetitionTime in the time-series sidecar",
                                  path=ts_path.with_suffix(".json"))
            try:
                good.append(prepare_run(ts, float(tr), spec, name=ts_path.name))
            except RunTooShort as exc:
                skipped[i] = exc.problem
        return PreparedRuns(good, len(names)), skipped


def even_grid(ts: np.ndarray, retained: list[int] | None) -> np.ndarray:
    """Put retained volumes back on an even grid, linearly interpolating censored gaps.

    Parameters
    ----------
    ts : np.ndarray
        (n_retained, R) series.
    retained : list of int, optional
        Original indices of the rows (None: the rows are already evenly spaced).

    Returns
    -------
    np.ndarray
        (last - first + 1, R) series; NaN columns stay NaN.
    """
    if not retained or len(retained) != ts.shape[0]:
        return ts
    idx = np.asarray(retained, dtype=np.int64)
    if np.all(np.diff(idx) == 1):
        return ts
    grid = np.arange(idx[0], idx[-1] + 1)
    out = np.full((grid.size, ts.shape[1]), np.nan)
    for j in range(ts.shape[1]):
        if np.all(np.isfinite(ts[:, j])):
            out[:, j] = np.interp(grid, idx, ts[:, j])
    return out


def _read_model_folder(folder: Path) -> tuple[ModelCard, dict[str, np.ndarray]]:
    """Card and tensors of a model folder (card validated, sha256 checked, safetensors only)."""
    card = read_card(folder)
    tensors = read_weights(folder, card, "model", remedy="Restore the model's "
                           "weights.safetensors (reinstall bidsfm or the model folder)")
    return card, tensors


def embedding_columns(encoder: Any, roi_names: list[str], width: int) -> list[str]:
    """Column names of an embedding ``width`` values wide.

    The encoder's own names when it has them (edge embeddings of tangent models:
    ``<ROI a>--<ROI b>``); per-ROI embeddings (a connectivity readout, ROI-major) are
    ``<ROI>_<k>``; a pooled embedding (mean readout) has no ROI, whatever its width:
    ``emb_000``...
    """
    if hasattr(encoder, "embedding_columns"):
        return list(encoder.embedding_columns(roi_names))
    pooled = getattr(getattr(encoder, "config", None), "readout", None) == "mean"
    if width % len(roi_names) == 0 and not pooled:
        return [f"{n}_{k}" for n in roi_names for k in range(width // len(roi_names))]
    return [f"emb_{k:03d}" for k in range(width)]


def load_encoder_state(encoder, tensors: dict[str, np.ndarray], path: str | Path) -> None:
    """Load the ``encoder.*`` tensors into ``encoder`` (strict; every problem listed)."""
    import torch

    state = {k[len("encoder."):]: torch.from_numpy(v.copy()) for k, v in tensors.items()
             if k.startswith("encoder.")}
    expected = encoder.state_dict()
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [f"{k}: shape {tuple(state[k].shape)} != {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise ConfigError(f"weights do not match the encoder ({len(problems)} problem(s)): "
                          + "; ".join(problems[:10]), path=path)
    encoder.load_state_dict(state, strict=True)
    encoder.eval()


def load_model(spec: str | Path = DEFAULT_MODEL, device: str = "cpu",
               precision: str = "float32"):
    """Load a bundled (or local) model: card, encoder and heads, from safetensors only.

    The card's ``family`` selects the model class: ``brainmass`` (FC input,
    :class:`FoundationModel`) or ``brainjepa`` (time-series input,
    :class:`TimeSeriesModel`). Models without heads (e.g. imported
    checkpoints) load too. ``precision`` (:data:`PRECISIONS`) applies to :meth:`encode`:
    ``float32`` by default on every device (a GPU gives the CPU's numbers), ``bf16`` for
    bfloat16 autocast.

    Raises
    ------
    ConfigError
        If the model is unknown, its weights do not match the card's sha256, or tensors are
        missing or mis-shaped (all listed).
    """
    check_precision(precision)
    folder = model_dir(spec)
    card, tensors = _read_model_folder(folder)
    family = card.get("family")
    heads = {name: LinearHead.from_tensors(name, tensors, meta)
             for name, meta in (card.get("heads") or {}).items()}
    if family == "brainjepa":
        model = TimeSeriesModel.from_tensors(card, tensors, heads, folder / WEIGHTS)
        model.precision = precision
        return model.to(device)
    if family != "brainmass":
        raise ConfigError(f"unsupported model family {family!r} (known: brainmass, "
                          "brainjepa)", path=folder / CARD)
    from .brainmass import BrainMassConfig, BrainMassEncoder

    try:
        enc_cfg = dict(card["encoder_config"])
        if enc_cfg.get("kind") == "tangent":
            from .tangentmass import TangentMassConfig, TangentMassEncoder

            encoder = TangentMassEncoder(TangentMassConfig.from_dict(enc_cfg))
        else:
            encoder = BrainMassEncoder(BrainMassConfig.from_dict(enc_cfg))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"card has no valid encoder_config ({exc})", path=folder / CARD
                          ) from None
    load_encoder_state(encoder, tensors, folder / WEIGHTS)
    reference = tensors.get("reference.fc")
    model = FoundationModel(card=card, encoder=encoder, heads=heads,
                            reference_fc=None if reference is None
                            else reference.astype(np.float32), precision=precision)
    return model.to(device)


def save_model(folder: str | Path, card: dict[str, Any], encoder, heads: list[LinearHead],
               reference_fc: np.ndarray | None = None,
               extra_tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``weights.safetensors`` and ``card.json`` (sha256 filled in) atomically.

    ``reference_fc`` (R, R), the mean FC of the training data, is stored as ``reference.fc`` and
    used as the attribution baseline. ``extra_tensors`` are stored under their own names (e.g.
    ``gradients``, the (R, G) ROI gradients of a Brain-JEPA model). ``heads`` may be empty
    (imported encoders have none).
    """
    tensors = {f"encoder.{k}": v.detach().cpu().float().contiguous().numpy()
               for k, v in encoder.state_dict().items()}
    for head in heads:
        tensors.update(head.to_tensors())
    if reference_fc is not None:
        tensors["reference.fc"] = np.ascontiguousarray(reference_fc, dtype=np.float32)
    for key, value in (extra_tensors or {}).items():
        tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    return write_weights_folder(folder, tensors,
                                {**card, "heads": {h.name: h.meta() for h in heads}})

