"""Synthetic but realistic fMRIPrep derivatives, for the demo command, tests and benchmarks.

:func:`make_fmriprep_dataset` writes a small fMRIPrep-style derivatives tree: preprocessed BOLD
runs in MNI152NLin2009cAsym space with real NIfTI headers, brain masks, confounds TSV/JSON files
with fMRIPrep's column names (motion, tissue signals, DVARS, CompCor, cosine basis, outliers),
``participants.tsv`` and ``dataset_description.json``.

Signal model (per voxel, per volume)::

    x = baseline * (1 + non-steady-state + drift + ROI signal + global signal
                      + motion artefacts) + white noise

ROI signals are drawn from a multivariate normal with a realistic ROI covariance (the mean
Pearson FC of 100 ABIDE participants on CC200, shipped with the package as
``bidsfm/data/demo/cc200_abide_mean_fc.npy`` beside the bundled CC200 atlas, so no shared data
or network is needed; or, on request, a procedural parcellation and network covariance) and
smoothed in time (AR(1) with a time constant in seconds, so the spectrum does not depend on TR).
Everything the generator used to build a run that a real dataset would not have (the ROI label
image on the run grid and the target ROI correlation matrix) is written under
``sourcedata/bidsfm-demo/`` (ignored by BIDS tools) and listed in the returned manifest.

Images are streamed to disk volume by volume (gzip with mtime 0, so the bytes are reproducible),
so the full-size 2 mm preset needs memory for the in-mask time series only.

One concern per module, in the order the data flow:

- :mod:`~bidsfm.demo.presets`: size presets, the participant/run layout;
- :mod:`~bidsfm.demo.grid`: the MNI152NLin2009cAsym-like grids, nearest-neighbour resampling;
- :mod:`~bidsfm.demo.target_fc`: the target ROI correlation (bundled ABIDE mean FC, recomputed
  from the shared data, or procedural);
- :mod:`~bidsfm.demo.anatomy`: label image and tissue classes on a grid;
- :mod:`~bidsfm.demo.simulate`: the BOLD signal of one run;
- :mod:`~bidsfm.demo.confounds`: fMRIPrep-like confounds and their metadata;
- :mod:`~bidsfm.demo.nifti`: reproducible, streamed NIfTI writing;
- :mod:`~bidsfm.demo.participants`: ``dataset_description.json`` and the participants table;
- :mod:`~bidsfm.demo.dataset`: :func:`make_fmriprep_dataset` (files, sidecars, manifest);
- :mod:`~bidsfm.demo.cli`: ``bidsfm-demo`` (also ``python -m bidsfm.demo``).
"""

from __future__ import annotations

from .anatomy import Anatomy, build_anatomy
from .cli import main
from .confounds import cosine_basis
from .dataset import DEMO_DIR, make_fmriprep_dataset
from .grid import FOV_MM, ORIGIN_MM, grid_for_voxel_size
from .participants import FMRIPREP_VERSION
from .presets import DEMO_ATLASES, SIZES, RunSpec, SizePreset, SubjectSpec
from .target_fc import (
    BUNDLED_TARGET_FC,
    abide_target_corr,
    bundled_target_corr,
    resolve_shared_data,
    write_bundled_target_corr,
)

__all__ = [
    "BUNDLED_TARGET_FC", "DEMO_ATLASES", "DEMO_DIR", "FMRIPREP_VERSION", "FOV_MM", "ORIGIN_MM",
    "SIZES", "Anatomy", "RunSpec", "SizePreset", "SubjectSpec", "abide_target_corr",
    "build_anatomy", "bundled_target_corr", "cosine_basis", "grid_for_voxel_size", "main",
    "make_fmriprep_dataset", "resolve_shared_data", "write_bundled_target_corr",
]
