"""Weights folders: ``weights.safetensors`` beside a ``card.json`` that records their sha256.

A model folder (:mod:`bidsfm.models.registry`) and a head folder fitted by the group level
(:mod:`bidsfm.group.heads_io`) are both such a folder. This module owns how one is written (the
weights first, then the card with their sha256, each atomically) and how the weights are read
back: present, with the card's sha256, and from safetensors only (never a pickle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

WEIGHTS = "weights.safetensors"
CARD = "card.json"


def write_weights_folder(folder: str | Path, tensors: dict[str, np.ndarray],
                         card: dict[str, Any]) -> Path:
    """Write ``tensors`` to ``weights.safetensors``, then ``card`` with their ``sha256``.

    Parameters
    ----------
    folder : str or Path
        The folder (created when missing).
    tensors : dict of str to numpy.ndarray
        Contiguous arrays, stored under their names.
    card : dict
        The card; its ``sha256`` key is set (kept in place when present, else appended).

    Returns
    -------
    Path
        The folder.
    """
    from safetensors.numpy import save_file

    from ..utils import atomic_path, sha256_file, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(folder / CARD, {**card, "sha256": sha256_file(folder / WEIGHTS)})
    return folder


def read_weights(folder: str | Path, card: dict[str, Any], what: str, remedy: str
                 ) -> dict[str, np.ndarray]:
    """The tensors of ``folder``'s ``weights.safetensors``, checked against ``card``.

    Parameters
    ----------
    folder : str or Path
        The weights folder.
    card : dict
        Its card; when it has a ``sha256``, the weights must have it.
    what : str
        ``model`` or ``head``, for the messages.
    remedy : str
        What the user should do when the weights are missing or damaged.

    Returns
    -------
    dict of str to numpy.ndarray

    Raises
    ------
    ConfigError
        When the file is missing, its sha256 is not the card's, or it is not a safetensors file
        (it is never unpickled).
    """
    from safetensors.numpy import load_file

    from ..utils import sha256_file

    weights = Path(folder) / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{what} weights are missing", path=weights, remedy=remedy)
    expected = card.get("sha256")
    if expected:
        digest = sha256_file(weights)
        if digest != expected:
            raise ConfigError(f"{what} weights sha256 {digest[:12]}... does not match the card's "
                              f"{str(expected)[:12]}... (a damaged file, or another {what}'s)",
                              path=weights, remedy=remedy)
    try:
        return load_file(str(weights))
    except Exception as exc:  # SafetensorError, OSError, ValueError: never fall back to pickle
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"{what} weights are not a valid safetensors file "
                          f"({type(exc).__name__}: {first})", path=weights,
                          remedy=f"bidsfm only loads safetensors; {remedy[:1].lower()}"
                                 f"{remedy[1:]}") from None
