"""Save a group-level head (safetensors + card) and load it back for ``--heads``.

A head folder holds ``weights.safetensors`` (tensors ``heads.<name>.mean|scale|coef|intercept``)
and ``card.json``: the head's name, kind, labels, task type, the model it applies to (name,
version, sha256 of the model weights, embedding size), the cross-validation figures, the number
of participants it was fitted on and the sha256 of its own weights. A head fitted on one model's
embeddings is meaningless on another's, so loading checks the model name and sha256.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..models.heads import LinearHead
from ..models.weights import CARD, WEIGHTS, read_weights, write_weights_folder

if TYPE_CHECKING:
    from ..models.card import ModelCard

_LOGGER = logging.getLogger("bidsfm")


def save_head(folder: str | Path, head: LinearHead, model_card: dict[str, Any],
              info: dict[str, Any]) -> Path:
    """Write ``weights.safetensors`` then ``card.json`` atomically; return the folder."""
    card = {"name": head.name, **head.meta(),
            "model": {k: model_card.get(k) for k in ("name", "version", "sha256")},
            "embedding_size": int(len(head.mean)), **info}
    return write_weights_folder(folder, head.to_tensors(), card)


def _head_folder(path: str | Path) -> Path:
    path = Path(path)
    if path.is_file() and path.name in (CARD, WEIGHTS):
        path = path.parent
    if (path / "head" / CARD).is_file():  # group/target-X/ given
        path = path / "head"
    return path


def read_head_card(path: str | Path) -> dict[str, Any]:
    """The card of a head folder.

    Raises
    ------
    ConfigError
        If the folder has no readable card.
    """
    folder = _head_folder(path)
    try:
        card = json.loads((folder / CARD).read_text())
        if not isinstance(card, dict) or "name" not in card or "kind" not in card:
            raise ValueError("not a head card (no name/kind)")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the head card ({type(exc).__name__}: {exc})",
                          path=folder / CARD, remedy="Pass a head folder written by the group "
                          "level (group/target-<COLUMN>/head)") from None
    return card


def check_head_model(card: dict[str, Any], model_card: dict[str, Any], path: str | Path
                     ) -> None:
    """Raise ConfigError unless the head was fitted on this model's embeddings."""
    want = card.get("model") or {}
    if want.get("name") != model_card.get("name") or want.get("sha256") != model_card.get(
            "sha256"):
        raise ConfigError(
            f"head {card.get('name')!r} was fitted on embeddings of model {want.get('name')} "
            f"(sha256 {str(want.get('sha256'))[:12]}), not of {model_card.get('name')} "
            f"(sha256 {str(model_card.get('sha256'))[:12]})", path=_head_folder(path),
            remedy="Use --model with the model the head was fitted on, or refit the head with "
                   "the group level")


def load_head(path: str | Path, model_card: dict[str, Any], name: str | None = None
              ) -> LinearHead:
    """Load a head folder, checking it belongs to the model and its weights are intact.

    Parameters
    ----------
    path : str or Path
        Head folder (or its card.json, or the ``group/target-<COLUMN>`` folder).
    model_card : dict
        Card of the model in use.
    name : str, optional
        Name to give the head (default: the card's).

    Raises
    ------
    ConfigError
        If the card or weights are unreadable, corrupt, or for another model.
    """
    folder = _head_folder(path)
    card = read_head_card(folder)
    check_head_model(card, model_card, folder)
    weights = folder / WEIGHTS
    tensors = read_weights(folder, card, "head", remedy="Refit the head with the group level")
    try:
        head = LinearHead.from_tensors(card["name"], tensors, card)
    except Exception as exc:  # tensors missing or of the wrong shape for the card
        raise ConfigError(f"cannot read the head weights ({type(exc).__name__}: {exc})",
                          path=weights) from None
    size = model_card.get("embedding_size")
    if size and len(head.mean) != int(size):
        raise ConfigError(f"head expects embeddings of size {len(head.mean)}, the model gives "
                          f"{size}", path=weights)
    if name:
        head.name = name
    return head


def resolve_heads(specs: tuple[str, ...], model: ModelCard | None) -> list[str]:
    """Check ``--heads`` values against the model; return ``NAME=PATH`` strings.

    A head whose name is already taken (a head of the model, or an earlier ``--heads``) is
    renamed ``<name>_2``, ``<name>_3``... unless ``NAME=`` was given.

    Raises
    ------
    ConfigError
        If there is no model, or a head cannot be read or was fitted on another model.
    """
    from ..utils import BIDS_LABEL

    if not specs:
        return []
    if model is None:
        raise ConfigError("--heads needs a model (--model is none or unavailable)")
    card = model
    taken = set(card.heads)
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not BIDS_LABEL.fullmatch(name.replace("_", "")):
            name, path = "", spec
        head_card = read_head_card(path)
        check_head_model(head_card, card, path)
        harm = head_card.get("harmonization")
        if isinstance(harm, dict) and harm.get("method"):
            _LOGGER.warning("head %s was fitted on site-harmonised embeddings (%s by %s); here "
                            "it sees this run's raw embedding, so its outputs keep this site's "
                            "offset (see docs/group.md)", head_card["name"], harm.get("method"),
                            harm.get("column"))
        final = name or str(head_card["name"])
        if final in taken:
            if name:
                raise ConfigError(f"--heads {spec}: head name {final!r} is already used")
            k = 2
            while f"{final}_{k}" in taken:
                k += 1
            _LOGGER.info("head %s from %s is written as %s_%d (the name is taken)", final,
                         path, final, k)
            final = f"{final}_{k}"
        taken.add(final)
        out.append(f"{final}={Path(path).absolute()}")
    return out
