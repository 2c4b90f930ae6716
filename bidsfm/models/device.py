"""Where a model runs: ``auto`` -> CUDA when available, else CPU (inference and training)."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError


def resolve_device(device: str) -> Any:
    """Return the :class:`torch.device` named by ``device``.

    Parameters
    ----------
    device : str
        ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    torch.device

    Raises
    ------
    ConfigError
        When CUDA is requested but not available.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available",
                          remedy="Use --device cpu or auto")
    return dev
