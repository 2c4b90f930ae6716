"""Cross-validated evaluation of heads on frozen embeddings, for model cards, benchmarks and
the group level alike (import everything from ``bidsfm.evaluation``).

**Task types**: ``binary``, ``multiclass`` and ``continuous`` (:data:`TASK_TYPES`, the words the
group level writes to ``metrics.json``); :func:`~bidsfm.models.heads.task_type` maps a card's
``regression`` to ``continuous``.

**Folds** (:mod:`.crossval`): leave-one-group-out or grouped k-fold with a group (site)
column, stratified or shuffled k-fold otherwise; every fold refits the head from scratch with
its own inner hyper-parameter search (:func:`fit_head`, :func:`out_of_fold`).

**Summaries** of the out-of-fold predictions:

- :func:`cross_validate` + :func:`compute_metrics` + :func:`uncertainty_statement`
  (:mod:`.metrics`; the group level's ``--target``): AUC, balanced accuracy, F1 or MAE, r, R^2
  with participant-bootstrap intervals;
- :func:`leave_site_out` (:mod:`.sites`; model cards and benchmarks): leave-one-site-out AUC or
  MAE and r with :func:`bootstrap_ci` intervals, per-site figures;
- :func:`few_shot_curve`, :func:`paired_bootstrap_auc_difference` (benchmarks).
"""

from __future__ import annotations

from ..models.heads import BINARY, CONTINUOUS, MULTICLASS, TASK_TYPES
from .crossval import MAX_LOGO_GROUPS, cross_validate, fit_head, make_folds, out_of_fold
from .metrics import compute_metrics, roc_auc, uncertainty_statement
from .sites import bootstrap_ci, few_shot_curve, leave_site_out, paired_bootstrap_auc_difference

__all__ = ["BINARY", "MULTICLASS", "CONTINUOUS", "TASK_TYPES", "MAX_LOGO_GROUPS", "make_folds",
           "fit_head", "out_of_fold", "cross_validate", "leave_site_out", "roc_auc",
           "compute_metrics", "uncertainty_statement", "bootstrap_ci",
           "paired_bootstrap_auc_difference", "few_shot_curve"]
