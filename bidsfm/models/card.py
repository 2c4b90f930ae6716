"""Model folders and their card: found by name, ``card.json`` parsed and validated once.

A model folder holds ``weights.safetensors`` and ``card.json`` (see
:mod:`bidsfm.models.weights`). :func:`read_card` reads the card into a :class:`ModelCard`: the
fields every part of bidsfm uses (name, atlas and ROI order, input contract, heads, sha256)
are typed attributes, checked here once; the whole card stays readable as a read-only mapping
(``card["training_data"]``), so a card is also what notebooks and reports read.
:func:`resolve_model` turns the ``--model`` option into a card (or None), for the participant
and the group level alike. :class:`Model` is the interface both model families implement
(:class:`~bidsfm.models.registry.FoundationModel`, FC input, and
:class:`~bidsfm.models.registry.TimeSeriesModel`, time-series input), so that no caller asks
which family it holds.

This module imports no torch: the command line reads cards before any model is loaded.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigError
from ..utils import BIDS_LABEL
from .weights import CARD

LOGGER = logging.getLogger("bidsfm")
MODELS_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
DEFAULT_MODEL = "bidsfmfc"
_RESTORE = "Restore the model folder (card.json + weights.safetensors), or reinstall bidsfm"


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


@dataclass(frozen=True, eq=False)
class ModelCard(Mapping[str, Any]):
    """A model card, validated: typed fields plus the whole card as a read-only mapping.

    Attributes
    ----------
    name : str
        Model name, a BIDS label (the ``desc-`` entity of outputs).
    atlas_name : str
        Name of the atlas the model reads, a BIDS label (the ``atlas-`` entity).
    roi_names : tuple of str
        ROI order of the input.
    family : str or None
        ``brainmass`` (FC input) or ``brainjepa`` (time-series input).
    version, sha256 : str or None
        Model version and sha256 of its weights.
    atlas_file : str or None
        The card's own atlas file (models imported on a user atlas), absolute when the card
        was read from a folder (a relative file is relative to the card's folder).
    warning : str or None
        A caution the card asks to be shown (e.g. a model kept as a reference).
    folder : Path or None
        The model folder (absolute), when read from one.
    data : Mapping
        The whole card (also reachable as ``card[key]``): read-only at the top level, its
        values plain JSON (a private copy; use :meth:`to_dict` for a copy to change).
    """

    name: str
    atlas_name: str
    roi_names: tuple[str, ...]
    family: str | None
    version: str | None
    sha256: str | None
    atlas_file: str | None
    warning: str | None
    folder: Path | None
    data: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"ModelCard(name={self.name!r}, family={self.family!r}, folder={self.folder})"

    @property
    def atlas_spec(self) -> str:
        """Atlas spec resolving the model's atlas: its name, or ``NAME=PATH`` for a card's own
        atlas file."""
        return f"{self.atlas_name}={self.atlas_file}" if self.atlas_file else self.atlas_name

    @property
    def input(self) -> Mapping[str, Any]:
        """The input contract (``min_volumes``, ``min_valid_roi_fraction``, ``target_tr`` ...)."""
        return self.data.get("input") or {}

    @property
    def heads(self) -> Mapping[str, Any]:
        """The card's heads (name -> labels, kind, validation ...)."""
        return self.data.get("heads") or {}

    @property
    def embedding_size(self) -> int | None:
        """Width of the embedding (None when the card does not say)."""
        size = self.data.get("embedding_size")
        return None if size is None else int(size)

    def provenance(self, *keys: str) -> dict[str, Any]:
        """``{key: value}`` of the card for the outputs' sidecars (default name, version,
        sha256)."""
        return {k: self.data.get(k) for k in keys or ("name", "version", "sha256")}

    def to_dict(self) -> dict[str, Any]:
        """The card as plain JSON values (a copy)."""
        return copy.deepcopy(dict(self.data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], folder: str | Path | None = None
                  ) -> ModelCard:
        """Validate a card's content (``folder``: where it was read from, for messages and the
        card's relative atlas file).

        Raises
        ------
        ConfigError
            If the card lacks its name, atlas name or ROI names, or if the model or atlas name
            is not a BIDS label (both become parts of output file names).
        """
        where = None if folder is None else Path(folder) / CARD
        try:
            name, atlas = data["name"], data["atlas"]
            atlas_name, rois = atlas["name"], atlas["roi_names"]
            if not isinstance(rois, (list, tuple)) or not all(isinstance(r, str) for r in rois):
                raise TypeError("atlas.roi_names must be a list of names")
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read the model card ({type(exc).__name__}: {exc})",
                              path=where, remedy=_RESTORE) from None
        for what, value in (("model name", name), ("atlas name", atlas_name)):
            if not isinstance(value, str) or not BIDS_LABEL.fullmatch(value):
                raise ConfigError(f"the card's {what} {value!r} is not a BIDS label (letters "
                                  "and digits only); it would become part of output file "
                                  "names", path=where, remedy="Fix the card, or use another "
                                  "model")
        content = dict(data)
        user_file = atlas.get("user_file")
        if user_file and folder is not None:  # relative to the card's folder
            user_file = str(Path(folder).absolute() / Path(str(user_file)).expanduser())
            content["atlas"] = {**atlas, "user_file": user_file}

        def text(key: str) -> str | None:
            value = data.get(key)
            return None if value is None else str(value)

        return cls(name=name, atlas_name=atlas_name, roi_names=tuple(rois),
                   family=text("family"), version=text("version"), sha256=text("sha256"),
                   atlas_file=str(user_file) if user_file else None, warning=text("warning"),
                   folder=None if folder is None else Path(folder).absolute(),
                   data=MappingProxyType(copy.deepcopy(content)))


def read_card(folder: str | Path) -> ModelCard:
    """The validated card of a model folder.

    Raises
    ------
    ConfigError
        If ``card.json`` cannot be read or is not a valid card (see :meth:`ModelCard.from_dict`).
    """
    path = Path(folder) / CARD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the model card ({type(exc).__name__}: {exc})",
                          path=path, remedy=_RESTORE) from None
    if not isinstance(data, dict):
        raise ConfigError("cannot read the model card (it is not a JSON object)", path=path,
                          remedy=_RESTORE)
    return ModelCard.from_dict(data, folder)


def as_card(card: ModelCard | Mapping[str, Any]) -> ModelCard:
    """``card`` as a :class:`ModelCard` (a mapping, e.g. a card built in memory, is
    validated)."""
    return card if isinstance(card, ModelCard) else ModelCard.from_dict(card)


def resolve_model(spec: str | Path | None) -> ModelCard | None:
    """The card of the model ``--model`` names (None for ``none``, or ``auto`` without a
    bundled default model); its warning, if any, is logged.

    Raises
    ------
    ConfigError
        If the model is unknown or its card is not valid.
    """
    if spec in ("none", "", None):
        return None
    if spec == "auto":
        if DEFAULT_MODEL not in list_models():
            return None
        spec = DEFAULT_MODEL
    card = read_card(model_dir(spec).absolute())
    if card.warning:  # e.g. a bundled model kept as a reference, not for predictions
        LOGGER.warning("model %s: %s", card.name, card.warning)
    return card


@runtime_checkable
class Model(Protocol):
    """What the participant and group levels use of a loaded model, whatever its family.

    Both :class:`~bidsfm.models.registry.FoundationModel` (FC input) and
    :class:`~bidsfm.models.registry.TimeSeriesModel` (time-series input) implement it; the
    model's *inputs* are whatever :meth:`read_inputs` returns (FC matrices, or prepared time
    series windows), and only the model looks inside them.
    """

    card: ModelCard
    heads: dict[str, Any]
    device: str
    precision: str
    #: where the attribution path starts, and what a per-ROI score sums (for texts)
    attribution_baseline: str
    attribution_unit: str

    @property
    def name(self) -> str:
        """Model name."""
        ...

    @property
    def atlas(self) -> str:
        """Atlas name."""
        ...

    @property
    def atlas_spec(self) -> str:
        """Atlas spec for :func:`bidsfm.atlases.resolve_atlas`."""
        ...

    @property
    def roi_names(self) -> list[str]:
        """ROI order."""
        ...

    @property
    def min_volumes(self) -> int:
        """Retained volumes a run needs before it is tried."""
        ...

    def read_inputs(self, fc_paths: list[Path], fcs: Any = None) -> tuple[Any, dict[int, str]]:
        """The model's inputs for runs whose FC files are ``fc_paths`` (their FC matrices
        ``fcs`` when already read), and ``{index: reason}`` of runs left out."""
        ...

    def encode(self, inputs: Any, batch_size: int = ...) -> Any:
        """(n_runs, D) embeddings."""
        ...

    def head_outputs(self, emb: Any) -> dict[str, Any]:
        """Each head's output on embeddings."""
        ...

    def attributions(self, inputs: Any, heads: Mapping[str, Any] | None = None,
                     steps: int = ..., baseline: Any = None) -> dict[str, Any]:
        """(n_runs, n_rois) integrated-gradients attribution of each head."""
        ...

    def embedding_columns(self, width: int) -> list[str]:
        """Column names of an embedding ``width`` values wide."""
        ...

    def attribution_method(self, steps: int) -> str:
        """How the attention scores are computed (for the outputs' sidecars)."""
        ...
