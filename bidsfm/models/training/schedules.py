"""Learning-rate and EMA-momentum schedules and AdamW parameter groups of every objective.

One copy for the three objectives (:mod:`.objective_brainmass`, :mod:`.objective_jepa`,
:mod:`.objective_tangent`); each reads its own hyper-parameters from :mod:`.configs`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["warmup_steps", "warmup_cosine_lr", "cosine_momentum", "linear_momentum",
           "param_groups", "set_lr"]


def warmup_steps(warmup_epochs: float, steps_per_epoch: int, total: int) -> int:
    """Steps of the linear warm-up: ``warmup_epochs`` epochs, at most ``total - 1`` steps.

    Parameters
    ----------
    warmup_epochs : float
        Length of the warm-up in epochs.
    steps_per_epoch, total : int
        Optimiser steps per epoch and in the whole run.

    Returns
    -------
    int
    """
    return min(int(round(warmup_epochs * steps_per_epoch)), total - 1)


def warmup_cosine_lr(step: int, total: int, warmup: int, peak: float,
                     floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor``.

    Parameters
    ----------
    step : int
        Zero-based optimiser step.
    total : int
        Steps in the whole run.
    warmup : int
        Warm-up steps (0: none).
    peak : float
        Learning rate at the end of the warm-up.
    floor : float
        Learning rate at the end of the decay.

    Returns
    -------
    float
        The learning rate of ``step``.
    """
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_momentum(step: int, total: int, base: float) -> float:
    """EMA momentum rising from ``base`` to 1 on a cosine schedule (BYOL, BrainMass).

    Parameters
    ----------
    step, total : int
        Steps done and steps in the whole run.
    base : float
        Momentum at step 0.

    Returns
    -------
    float
    """
    return 1.0 - (1.0 - base) * 0.5 * (1.0 + math.cos(math.pi * step / max(1, total)))


def linear_momentum(step: int, total: int, start: float, end: float) -> float:
    """EMA momentum rising linearly from ``start`` to ``end`` over the run (I-JEPA, Brain-JEPA).

    Parameters
    ----------
    step, total : int
        Steps done and steps in the whole run.
    start, end : float
        Momentum at step 0 and at the last step.

    Returns
    -------
    float
    """
    return start + (end - start) * step / total


def param_groups(named: Iterable[tuple[str, Any]], weight_decay: float,
                 no_decay_suffixes: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weight matrices only.

    Biases and norms (fewer than 2 dimensions) and the parameters whose name ends with one of
    ``no_decay_suffixes`` (mask tokens, ROI embeddings) get no weight decay.

    Parameters
    ----------
    named : iterable of (str, torch.nn.Parameter)
        The trainable parameters, in a fixed order.
    weight_decay : float
        Decay of the first group.
    no_decay_suffixes : tuple of str
        Name endings exempt from weight decay.

    Returns
    -------
    list of dict
        ``[{"params": decayed, "weight_decay": weight_decay},
        {"params": the others, "weight_decay": 0.0}]``.
    """
    decay, no_decay = [], []
    for name, p in named:
        if p.ndim < 2 or (no_decay_suffixes and name.endswith(no_decay_suffixes)):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def set_lr(optimizer: Any, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
