"""Denoising of ROI time series: strategies, confound selection, cleaning.

Import what you need from here; the modules behind it each own one step:

* :mod:`~bidsfm.denoising.strategies`: what to regress and how to censor
  (:class:`DenoiseStrategy`, the nilearn :data:`PRESETS`, :func:`get_strategy` for a preset
  name or a user JSON file);
* :mod:`~bidsfm.denoising.confounds`: confound selection, the regressors and retained volumes
  of one run (:func:`load_confounds` -> :class:`ConfoundSelection`), from fMRIPrep's confounds
  TSV/JSON;
* :mod:`~bidsfm.denoising.signals`: :func:`clean_signals`, the one entry point of cleaning
  (checks, all-NaN ROIs), and :func:`dvars`;
* :mod:`~bidsfm.denoising.steps`: the numpy/scipy steps of ``nilearn.signal.clean`` that
  :func:`clean_signals` runs (detrend, Butterworth, censoring interpolation, confound projection,
  standardisation), tested against nilearn.

A run is denoised in two calls::

    from bidsfm.denoising import clean_signals, get_strategy, load_confounds

    selection = load_confounds(confounds_tsv, get_strategy("simple"), n_volumes=n)
    cleaned = clean_signals(roi_signals, t_r=2.0, confounds=selection.confounds,
                            sample_mask=selection.sample_mask)
"""

from bidsfm.denoising.confounds import ConfoundSelection, load_confounds
from bidsfm.denoising.signals import clean_signals, dvars
from bidsfm.denoising.strategies import (
    COMPCOR_TYPES,
    MODELS,
    PRESETS,
    DenoiseStrategy,
    get_strategy,
    load_strategy_file,
)

__all__ = [
    "COMPCOR_TYPES",
    "MODELS",
    "PRESETS",
    "ConfoundSelection",
    "DenoiseStrategy",
    "clean_signals",
    "dvars",
    "get_strategy",
    "load_confounds",
    "load_strategy_file",
]
