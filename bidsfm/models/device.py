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


def uses_gpu(device: str) -> bool:
    """Whether the model will run on a GPU: ``cuda``/``cuda:N``, or ``auto`` with CUDA present.

    Asked before any worker process starts (the participant level encodes the runs of all
    participants together on a GPU), so for ``auto`` CUDA is looked for through NVML
    (``PYTORCH_NVML_BASED_CUDA_CHECK``), which does not initialise CUDA in this process:
    initialising it here would break CUDA in the workers Nipype forks.

    Parameters
    ----------
    device : str
        The ``--device`` option.

    Returns
    -------
    bool
    """
    import os

    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    import torch

    if not torch.backends.cuda.is_built():
        return False
    key = "PYTORCH_NVML_BASED_CUDA_CHECK"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        return bool(torch.cuda.is_available())
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
