"""The group level: cohort tables, heads fitted on participants.tsv, normative deviation, QC-FC.

Modules
-------
``collect``
    Gather the participants' small TSVs into group tables (no BOLD is read).
``targets``, ``figures``, ``attention``, ``target_analysis``
    ``--target``: task type, cross-validated heads and metrics with intervals (through
    :mod:`bidsfm.evaluation`, shared with the model cards and benchmarks), ROC/scatter,
    per-ROI attention and the fitted head.
``harmonize``
    ``--harmonize``: label-free site harmonisation of the features (ComBat or per-site
    centring) before the heads and normative scores; :func:`harmonize.harmonize` for scripts.
``heads_io``
    Save a head (safetensors + card) and load it for ``--heads`` at the participant level.
``normative``
    ``--reference``: Mahalanobis deviation from a reference group with per-ROI contributions.
``qcfc``
    QC-FC (edge-wise correlation of FC with mean framewise displacement).
``analyses``
    The analyses the level runs: targets, normative scores, harmonisation, QC-FC.
``run``
    :func:`run_group_level(config) <bidsfm.group.run.run_group_level>`, the level as a recipe
    of named steps, called by the command line with a :class:`bidsfm.config.Config`.
"""

from __future__ import annotations

from typing import Any


def run_group_level(*args: Any, **kwargs: Any) -> int:
    """See :func:`bidsfm.group.run.run_group_level`."""
    from .run import run_group_level as _run

    return _run(*args, **kwargs)
