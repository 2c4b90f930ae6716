"""Brain-network foundation models (the only part of bidsfm that imports torch).

Modules
-------
``bidsfm.models.brainmass``
    BrainMass-style FC encoder (Yang et al., IEEE TMI 2024) and a batched Pearson-FC helper.
``bidsfm.models.brainjepa``
    Brain-JEPA-style time-series encoder (Dong et al., NeurIPS 2024): (ROI, time-patch)
    tokens, brain-gradient positioning, official ViT-S/B/L layouts.
``bidsfm.models.training``
    Pretraining of both families (and of the tangent FC encoder), the ABIDE recipes of the
    bundled models and the ``bidsfm-pretrain`` command; never imported at inference.
``bidsfm.models.device``
    ``auto``/``cpu``/``cuda`` device choice.
``bidsfm.models.gradients``
    Functional gradients (diffusion maps) of any atlas (``bidsfm-gradients``).
``bidsfm.models.resample``
    TR-aware input of time-series models: resampling, normalisation, windows.
``bidsfm.models.registry``
    Bundled models (weights + card): :class:`~bidsfm.models.registry.FoundationModel` (FC
    input, family ``brainmass``) and :class:`~bidsfm.models.registry.TimeSeriesModel`
    (time-series input, family ``brainjepa``), chosen by the card's ``family``.

Notebook API (the same for both kinds of model)::

    import bidsfm.models
    bidsfm.models.available()                      # ['bidsfmfc', 'bidsfmts']
    model = bidsfm.models.load("bidsfmfc", device="auto")
    emb = model.embed(timeseries, repetition_times)          # (n_runs, 1600)
    table = model.predict(timeseries, repetition_times)      # one row per run
    att = model.attention(timeseries, repetition_times, "diagnosis")  # (n_runs, n_rois)

``timeseries`` is a list of (n_volumes, n_rois) arrays in the model's ROI order (NaN columns
for missing ROIs); ``repetition_times`` (seconds, one per run) are required by time-series
models, which resample every run to their target TR. Torch is imported only when a model is
loaded, so ``import bidsfm.models`` stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def available() -> list[str]:
    """Names of the bundled models."""
    from .registry import list_models

    return list_models()


def load(name_or_path: str | Path = "bidsfmfc", device: str = "auto") -> Any:
    """Load a bundled model (or a model folder) on ``device`` (auto, cpu, cuda).

    Returns
    -------
    bidsfm.models.registry.FoundationModel or bidsfm.models.registry.TimeSeriesModel
    """
    from .device import resolve_device
    from .registry import load_model

    return load_model(name_or_path, device=str(resolve_device(device)))
