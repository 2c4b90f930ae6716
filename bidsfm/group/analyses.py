"""The group level's analyses: heads on ``--target`` columns, ``--reference`` normative scores,
``--harmonize`` site harmonisation, QC-FC (each called by :mod:`bidsfm.group.run`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .. import __version__
from ..derivatives import group_table_name
from ..errors import BidsfmError, ConfigError

if TYPE_CHECKING:
    from ..config import GroupConfig
    from ..models.card import ModelCard

LOGGER = logging.getLogger("bidsfm.group")


def utc_now() -> str:
    """The time now, UTC, ``YYYY-mm-ddTHH:MM:SSZ``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def run_targets(specs, table, table_path, ids, emb, gdir: Path, model, model_card,
                fc_by_participant, config: GroupConfig, attention_steps: int,
                harmonization) -> tuple[list[dict[str, Any]], list[str]]:
    """Every ``--target`` in turn (a failure is logged and listed, the others go on); the
    summaries of those done and the failure lines."""
    from ..progress import Steps

    done: list[dict[str, Any]] = []
    failures: list[str] = []
    with Steps("group targets", len(specs), LOGGER) as steps:
        for spec in specs:
            steps.start(f"target {spec.column}", "cross-validated head, metrics with "
                        "bootstrap intervals, figure, final head, attention")
            try:
                done.append(one_target(spec, table, table_path, ids, emb, gdir, model,
                                       model_card, fc_by_participant, config,
                                       attention_steps, harmonization))
                steps.end(f"target {spec.column}", "done")
            except (BidsfmError, ValueError) as exc:
                msg = exc.one_line() if isinstance(exc, BidsfmError) else str(exc)
                steps.end(f"target {spec.column}", "failed", logging.ERROR)
                LOGGER.error("target %s: %s", spec.column, msg)
                failures.append(f"target {spec.column}: {msg}")
    return done, failures


def one_target(spec, table, table_path, ids, emb, gdir, model, model_card, fc_by_participant,
               config: GroupConfig, attention_steps: int, harmonization=None
               ) -> dict[str, Any]:
    """Fit, cross-validate and save the head of one ``--target`` (:func:`run_target`)."""
    from .target_analysis import run_target, target_label
    from .targets import build_target

    target = build_target(spec, table, ids, config.group_column, table_path)
    LOGGER.info("target %s: %s, %d labelled participant(s)", target.column, target.task_type,
                len(target.y))
    provenance = {"participants_tsv": str(table_path), "created": utc_now(),
                  "bidsfm_version": __version__}
    return run_target(target, emb, ids, gdir / f"target-{target_label(spec.column)}",
                      model=model, model_card=model_card,
                      fc_by_participant=fc_by_participant, group_column=config.group_column,
                      n_folds=config.n_folds, n_boot=int(config.n_bootstrap),
                      attention_participants=int(config.attention_participants),
                      attention_steps=int(attention_steps), provenance=provenance,
                      harmonization=brief(harmonization))


def normative(reference, table, table_path, ids, emb, cols, gdir, harmonization=None
               ) -> dict[str, Any]:
    from ..utils import write_json_atomic
    from .collect import write_table
    from .normative import normative_scores, roi_contributions

    column, value = reference
    if column not in table:
        raise ConfigError(f"--reference {column}={value}: no such column", path=table_path)
    vals = table[column].reindex(ids).astype(str).str.strip().to_numpy()
    is_ref = vals == value
    res = normative_scores(emb, is_ref)
    folder = gdir / "normative"
    write_table(pd.DataFrame({"participant_id": ids, "is_reference": is_ref.astype(int),
                              "score": res["score"], "percentile": res["percentile"],
                              "p": res["p"]}), folder / "deviation.tsv")
    rois, contrib = roi_contributions(res["terms"], cols)
    per_roi = len(rois) > 1  # FC-model columns are <ROI>_<k>; emb_### columns have no ROI
    if per_roi:
        write_table(pd.concat([pd.DataFrame({"participant_id": ids}),
                               pd.DataFrame(contrib, columns=rois)], axis=1),
                    folder / "roi_contributions.tsv")
    else:
        (folder / "roi_contributions.tsv").unlink(missing_ok=True)
    from .normative import __doc__ as method_doc

    method = {"reference": f"{column}={value}", "n_reference": int(res["n_reference"]),
              "n_scored": len(ids), "score": "squared Mahalanobis distance of the "
              "subject embedding (runs averaged, centred on the reference mean) under the "
              "Ledoit-Wolf shrunk reference covariance",
              "ledoit_wolf_shrinkage": res["shrinkage"],
              "reference_scores": f"out of sample: {res['scheme']}",
              "percentile": "percentage of out-of-sample reference scores below the score",
              "p": "empirical upper-tail p = (1 + #reference scores >= score) / (1 + m), the "
                   "participant itself left out",
              "roi_contributions": "score = sum_j z_j (S^-1 z)_j; the terms of each ROI's "
                                   "embedding columns summed (additive, may be negative)"
                                   if per_roi else "not available: the embedding columns are "
                                   "not per-ROI blocks for this model",
              "details": " ".join((method_doc or "").split())}
    if res["warnings"]:
        method["warnings"] = res["warnings"]
        for text in res["warnings"]:
            LOGGER.warning("normative (--reference %s=%s): %s", column, value, text)
    if harmonization:
        method["harmonization"] = brief(harmonization)
    write_json_atomic(folder / "method.json", method)
    return {"reference": method["reference"], "n_reference": method["n_reference"],
            "folder": "normative/"}


def harmonize(spec: tuple[str, str], table: pd.DataFrame, table_path: Path, ids: list[str],
               emb: np.ndarray, model_name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Site-harmonised subject embeddings (label-free) and the group.json record.

    Raises
    ------
    ConfigError
        If the column cannot be harmonised (fewer than two sites with two participants).
    """
    from .harmonize import harmonize_with_info

    column, method = spec
    sites = table[column].reindex(ids).to_numpy(dtype=object)
    try:
        out, info = harmonize_with_info(emb, sites, method)
    except ValueError as exc:
        raise ConfigError(f"--harmonize {column}: {exc}", path=table_path) from None
    left = [ids[i] for i in info["unadjusted"]]
    if left:
        LOGGER.warning("--harmonize %s: %d participant(s) left unadjusted (no %s, or a %s with "
                       "fewer than %d participants): %s", column, len(left), column, column,
                       info["min_site_size"], ", ".join(left))
    LOGGER.info("--harmonize %s: %s across %d %s value(s), %d participant(s)", column, method,
                info["n_sites"], column, info["n_adjusted"])
    record = {
        "column": column, "method": method,
        "description": HARMONIZE_METHODS[method],
        "features": f"subject embeddings of model {model_name} (runs averaged)",
        "used_by": "the heads of every --target (cross-validation and the final head) and the "
                   "--reference normative scores; the group tables keep the raw embeddings",
        "fitted_on": f"all {len(ids)} participants with an embedding (both sides of every "
                     "cross-validation fold), from the embeddings and the "
                     f"{column} column only; no target labels",
        "shared_across_folds": HARMONIZE_SHARED[method],
        "n_sites": info["n_sites"], "sites": info["sites"],
        "n_adjusted": info["n_adjusted"], "unadjusted_participants": left,
        "unadjusted_sites": info["unadjusted_sites"], "min_site_size": info["min_site_size"],
        "n_constant_features": info["n_constant_features"],
    }
    return out, record


HARMONIZE_METHODS = {
    "combat": "ComBat (Johnson et al. 2007; Fortin et al. 2018) with parametric empirical "
              "Bayes, as implemented by neuroHarmonize (Pomponio et al. 2020), the site as the "
              "only variable (no biological covariates)",
    "centre": "per-site centring: each site's mean feature vector replaced by the pooled mean",
}


HARMONIZE_SHARED = {
    "combat": "per feature: the pooled mean and variance over all participants, each site's "
              "location and scale and their empirical Bayes priors (computed from every "
              "participant's features, held-out sites included)",
    "centre": "the mean feature vector of each site and the pooled mean, over all participants "
              "(held-out sites included)",
}


def brief(harmonization: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of the group.json record that target and normative files repeat."""
    if not harmonization:
        return None
    return {k: harmonization[k] for k in ("column", "method", "description", "fitted_on",
                                          "shared_across_folds")}


def fc_by_participant(coll, ents: pd.DataFrame, model_card: ModelCard | None, model_name: str
                       ) -> dict[str, list[Path]]:
    """FC TSVs (model atlas) of the runs that have an embedding, by participant."""
    from ..derivatives import parse_name
    from .collect import entity_columns

    atlas = None if model_card is None else model_card.atlas_name
    if atlas is None and len(ents):
        atlas = str(ents["atlas"].iloc[0])
    keys = {tuple(str(v) for v in row) for row in
            ents.drop(columns=["atlas"]).fillna("").itertuples(index=False)}
    cols = [c for c in ents.columns if c != "atlas"]
    out: dict[str, list[Path]] = {}
    for _key, path in coll.fc_files.get(atlas, []):
        e = entity_columns(parse_name(path.name)[0])
        if tuple(e.get(c, "") for c in cols) in keys:
            out.setdefault(e["participant_id"], []).append(path)
    return out


def load_model(model_card: ModelCard | None, device: str):
    """The installed model of ``model_card`` on ``device`` (None when it is not installed)."""
    if model_card is None:
        LOGGER.warning("the model is not installed here: no attention for the new heads")
        return None
    from ..models.device import resolve_device
    from ..models.registry import load_model as load

    return load(model_card.folder, device=str(resolve_device(device or "cpu")))


def card_from_embedding_json(output_dir: Path, model_name: str) -> dict[str, Any]:
    """Model name/version/sha256 from one embedding sidecar (the model is not installed)."""
    import json

    for path in output_dir.glob(f"sub-*/**/*_desc-{model_name}_embedding.json"):
        try:
            return dict(json.loads(path.read_text()).get("Model") or {})
        except (OSError, ValueError):
            continue
    return {"name": model_name}


def qcfc(coll, gdir: Path) -> dict[str, Any]:
    """QC-FC tables of each atlas (3 participants at least); the group.json summary."""
    from ..utils import write_json_atomic
    from .collect import write_table
    from .qcfc import edge_correlations, qcfc_summary, qcfc_table, subject_fc

    out = {}
    if coll.qc.empty or "mean_fd" not in coll.qc:
        return out
    for atlas, files in sorted(coll.fc_files.items()):
        ids, rois, fc, fd = subject_fc(files, coll.qc, atlas)
        if len(ids) < 3:
            LOGGER.warning("QC-FC (%s): %d participant(s) with connectivity; at least 3 needed",
                           atlas, len(ids))
            continue
        r, p, _n = edge_correlations(fc, fd)
        write_table(qcfc_table(rois, r, p), gdir / group_table_name("qcfc", atlas=atlas))
        summary = qcfc_summary(r, p, len(ids), atlas, fd)
        write_json_atomic(gdir / group_table_name("qcfc_json", atlas=atlas), summary)
        out[atlas] = {k: summary[k] for k in ("n_participants", "median_abs_r",
                                              "fraction_p05")}
    return out
