"""Checkpoints of every training run: one loadable model folder, the same for both families.

A pretrained encoder is saved as a model folder, ``weights.safetensors`` (tensors under
``encoder.``, plus any extra tensors such as ``gradients``) and ``card.json`` (sha256 of the
weights filled in), written by :func:`bidsfm.models.registry.save_model`. So the output of
``bidsfm-pretrain`` (without heads) and of the ABIDE recipes (with heads) is what
``bidsfm.models.load(FOLDER)`` and ``bidsfm --model FOLDER`` read. Nothing is pickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_pretrained", "load_encoder", "pretrained_card"]


def pretrained_card(name: str, family: str, description: str, atlas: dict[str, Any],
                    input_card: dict[str, Any], encoder_config: dict[str, Any],
                    embedding_size: int, pretraining: dict[str, Any],
                    **sections: Any) -> dict[str, Any]:
    """The card of an encoder pretrained by ``bidsfm-pretrain`` (no heads yet).

    Parameters
    ----------
    name : str
        Model name (the output folder's name; used in the ``desc-`` entity of outputs).
    family : str
        ``brainmass`` (FC input) or ``brainjepa`` (time-series input).
    description : str
        One sentence for a reader.
    atlas : dict
        :func:`~bidsfm.models.training.cards.atlas_card`.
    input_card : dict
        The input contract (:mod:`.cards`).
    encoder_config : dict
        The encoder configuration's ``to_dict()``.
    embedding_size : int
        Length of the embedding.
    pretraining : dict
        Objective, hyper-parameters, epochs, data.
    **sections
        Further card sections (``readout``, ``gradients``...), placed before ``pretraining``.

    Returns
    -------
    dict
    """
    return {"name": name, "version": "0.1.0", "family": family, "description": description,
            "atlas": atlas, "input": input_card, "encoder_config": encoder_config,
            "embedding_size": int(embedding_size), **sections, "pretraining": pretraining}


def save_pretrained(out_dir: str | Path, card: dict[str, Any], encoder: Any,
                    extra_tensors: dict[str, np.ndarray] | None = None) -> Path:
    """Write a headless model folder (``weights.safetensors`` + ``card.json``).

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created).
    card : dict
        Its card (:func:`pretrained_card`).
    encoder : torch.nn.Module
        The encoder (its state dict is stored in float32).
    extra_tensors : dict, optional
        More tensors, stored under their own names (e.g. ``gradients``).

    Returns
    -------
    Path
        ``out_dir``.
    """
    from ..registry import save_model

    return save_model(out_dir, card, encoder, [], extra_tensors=extra_tensors)


def load_encoder(folder: str | Path, device: str = "cpu") -> Any:
    """The encoder of a model folder written by :func:`save_pretrained` or a recipe.

    Parameters
    ----------
    folder : str or Path
        Folder holding ``card.json`` and ``weights.safetensors``.
    device : str
        Where to put the weights.

    Returns
    -------
    torch.nn.Module
        In eval mode.

    Raises
    ------
    ConfigError
        When a file is missing, the weights do not match the card's sha256, or the tensors do
        not match the card's ``encoder_config`` (every problem listed).
    """
    from ..registry import load_model

    return load_model(folder, device=device).encoder
