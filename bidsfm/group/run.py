"""The group level: gather tables, fit heads on participants.tsv, normative scores, QC-FC.

Every output is written atomically under ``OUTPUT_DIR/group/`` and recomputed from the
participants' small TSVs on each call, so the level is idempotent and can be rerun whenever
more participants have finished. See docs/group.md.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import __version__
from ..derivatives import group_table_name
from ..errors import BidsfmError, ConfigError

LOGGER = logging.getLogger("bidsfm.group")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def find_participants_tsv(bids_dir: Path, override: Path | None,
                          derivatives: dict[str, str] | None = None) -> Path | None:
    """``--participants-tsv``, else BIDS_DIR/participants.tsv, else the fMRIPrep dataset's."""
    if override is not None:
        if not Path(override).is_file():
            raise ConfigError("participants table not found", path=override)
        return Path(override)
    cands = [bids_dir / "participants.tsv"]
    for path in (derivatives or {}).values():
        cands.append(Path(path) / "participants.tsv")
    cands.append(bids_dir / "derivatives" / "fmriprep" / "participants.tsv")
    return next((c for c in cands if c.is_file()), None)


def _resolve_group_model(spec: str, found: list[str]) -> tuple[str | None, dict | None]:
    """Name of the model whose embeddings the analyses use, and its card (if installed)."""
    from ..cli import _resolve_model

    if spec == "none" or not found:
        return None, None
    info = None
    if spec == "auto":
        from ..models.registry import DEFAULT_MODEL

        name = DEFAULT_MODEL if DEFAULT_MODEL in found else (found[0] if len(found) == 1
                                                            else None)
        if name is None:
            raise ConfigError(f"outputs of several models ({', '.join(found)}); choose one "
                              "with --model")
        try:
            info = _resolve_model(name)
        except ConfigError:
            info = None
    else:
        info = _resolve_model(spec)
        name = None if info is None else info["name"]
        if name not in found:
            raise ConfigError(f"no embeddings of model {name} in the output folder (found: "
                              f"{', '.join(found)})")
    card = None
    if info is not None:
        import json

        card = json.loads((Path(info["path"]) / "card.json").read_text())
    return name, card


def validate_group_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Parse ``--target``/``--reference``/``--harmonize`` values up front (bad: ConfigError)."""
    from .harmonize import DEFAULT_METHOD, METHODS
    from .normative import parse_reference
    from .targets import parse_target

    specs = [parse_target(t) for t in opts.get("target") or ()]
    seen: set[str] = set()
    for s in specs:
        if s.column in seen:
            raise ConfigError(f"--target {s.column} given twice")
        seen.add(s.column)
    ref = parse_reference(opts["reference"]) if opts.get("reference") else None
    column = str(opts["harmonize"]).strip() if opts.get("harmonize") else None
    method = str(opts.get("harmonize_method") or DEFAULT_METHOD).lower()
    method = "centre" if method == "center" else method
    if method not in METHODS:
        raise ConfigError(f"--harmonize-method {method}: unknown (choose from "
                          f"{', '.join(METHODS)})")
    return {"targets": specs, "reference": ref,
            "harmonize": (column, method) if column else None}


def run_group_level(bids_dir: Path, output_dir: Path, **opts: Any) -> int:
    """Run the group level; return the exit code (0 ok, 1 some analysis failed).

    Raises
    ------
    BidsfmError
        For problems that stop the whole level (no outputs, unreadable participants table,
        unknown target column).
    """
    from ..discovery import normalize_participant_labels
    from .collect import collect_outputs, subject_embeddings, write_table

    started = _now()
    bids_dir = Path(bids_dir).absolute()
    output_dir = Path(output_dir).absolute()
    parsed = validate_group_options(opts)
    if not output_dir.is_dir() or not any(output_dir.glob("sub-*")):
        raise ConfigError("no participant outputs (no sub-* folder)", path=output_dir,
                          remedy="Run the participant level first")
    labels = normalize_participant_labels(opts.get("participant_label") or ())
    # the participants table and the columns named by options are checked before any writing
    table = None
    table_path = find_participants_tsv(bids_dir, opts.get("participants_tsv"),
                                       opts.get("derivatives_map"))
    needs_table = bool(parsed["targets"] or parsed["reference"])
    if table_path is not None:
        from .targets import read_participants

        try:
            table = read_participants(table_path)
        except ConfigError as exc:
            if needs_table:
                raise
            # only used to list participants without outputs: report it and go on
            LOGGER.warning("participants table not used: %s", exc.one_line())
            table_path = None
    if needs_table and table is None:
        raise ConfigError("--target/--reference need participants.tsv, and none was found",
                          path=bids_dir, remedy="Pass --participants-tsv PATH")
    if needs_table:
        _check_columns(parsed, opts.get("group_column"), table, table_path)
    elif parsed["harmonize"]:
        LOGGER.warning("--harmonize %s has no effect without --target or --reference",
                       parsed["harmonize"][0])
    t0 = time.time()
    coll = collect_outputs(output_dir, labels or None)
    LOGGER.info("collected %d QC row(s) of %d participant(s) in %.1f s", len(coll.qc),
                len(coll.participants), time.time() - t0)
    gdir = output_dir / "group"
    gdir.mkdir(parents=True, exist_ok=True)
    write_table(coll.qc, gdir / group_table_name("runs_qc"))

    model_name, model_card = _resolve_group_model(str(opts.get("model") or "auto"),
                                                  sorted(coll.embeddings))
    for name, (ents, values, cols) in coll.embeddings.items():
        frame = pd.concat([ents.reset_index(drop=True),
                           pd.DataFrame(values, columns=cols)], axis=1)
        write_table(frame, gdir / group_table_name("runs_embedding", model=name))
        ids, mean, n_runs = subject_embeddings(ents, values)
        subj = pd.concat([pd.DataFrame({"participant_id": ids, "n_runs": n_runs}),
                          pd.DataFrame(mean, columns=cols)], axis=1)
        write_table(subj, gdir / group_table_name("subjects_embedding", model=name))
    for name, frame in coll.predictions.items():
        write_table(frame, gdir / group_table_name("runs_predictions", model=name))

    if table is not None:
        _participants_vs_table(coll, table, table_path, labels, needs_table)
    _write_exclusions(coll.exclusions, gdir / group_table_name("exclusions"))

    failures: list[str] = []
    done_targets: list[dict[str, Any]] = []
    normative: dict[str, Any] | None = None
    harmonization: dict[str, Any] | None = None
    if needs_table and model_name is None:
        raise ConfigError("--target/--reference need model embeddings, and the output folder "
                          "has none", path=output_dir,
                          remedy="Run the participant level with a model (--model)")
    if needs_table:
        ents, values, cols = coll.embeddings[model_name]
        ids, emb, _n = subject_embeddings(ents, values)
        if parsed["harmonize"]:
            emb, harmonization = _harmonize(parsed["harmonize"], table, table_path, ids, emb,
                                            model_name)
        fc_by_participant = _fc_by_participant(coll, ents, model_card, model_name)
        model = _load_model(model_card, opts) if (opts.get("attention_participants", 0)
                                                  and parsed["targets"]) else None
        if model_card is None:
            model_card = _card_from_embedding_json(output_dir, model_name)
        from ..progress import Steps

        with Steps("group targets", len(parsed["targets"]), LOGGER) as steps:
            for spec in parsed["targets"]:
                steps.start(f"target {spec.column}", "cross-validated head, metrics with "
                            "bootstrap intervals, figure, final head, attention")
                try:
                    done_targets.append(_one_target(spec, table, table_path, ids, emb, gdir,
                                                    model, model_card, fc_by_participant,
                                                    opts, harmonization))
                    steps.end(f"target {spec.column}", "done")
                except (BidsfmError, ValueError) as exc:
                    msg = exc.one_line() if isinstance(exc, BidsfmError) else str(exc)
                    steps.end(f"target {spec.column}", "failed", logging.ERROR)
                    LOGGER.error("target %s: %s", spec.column, msg)
                    failures.append(f"target {spec.column}: {msg}")
        if parsed["reference"]:
            try:
                normative = _normative(parsed["reference"], table, table_path, ids, emb, cols,
                                       gdir, harmonization)
            except (BidsfmError, ValueError) as exc:
                msg = exc.one_line() if isinstance(exc, BidsfmError) else str(exc)
                LOGGER.error("normative: %s", msg)
                failures.append(f"normative: {msg}")

    qcfc = {}
    if not opts.get("no_qcfc"):
        qcfc = _qcfc(coll, gdir)

    from ..utils import write_json_atomic

    n_subjects = 0
    if model_name is not None:
        n_subjects = len(set(coll.embeddings[model_name][0]["participant_id"]))
    record = {
        "BidsfmVersion": __version__, "started": started, "finished": _now(),
        "bids_dir": str(bids_dir), "participants_tsv": None if table_path is None
        else str(table_path),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in
                    _group_options(opts).items()},
        "model": None if model_name is None else {
            k: (model_card or {}).get(k) for k in ("name", "version", "sha256")} | {
            "name": model_name},
        "models_collected": sorted(set(coll.embeddings) | set(coll.predictions)),
        "n_participants": len(coll.participants), "n_participants_with_embedding": n_subjects,
        "n_runs": int(len(coll.qc)), "n_exclusions": len(coll.exclusions),
        "targets": [{"column": t["target"], "task_type": t["task_type"],
                     "folder": f"target-{_label(t['target'])}"} for t in done_targets],
        "harmonization": harmonization,
        "normative": normative, "qcfc": qcfc, "failures": failures,
    }
    removed = remove_stale_outputs(gdir, record)
    if removed:
        LOGGER.info("removed %d group output(s) that this run did not produce (left by an "
                    "earlier run with other options): %s", len(removed), ", ".join(removed))
    write_json_atomic(gdir / "group.json", record)
    _reports(output_dir, record)
    LOGGER.info("group level done: %d participant(s), %d run row(s), %d target(s)%s. Outputs in "
                "%s", len(coll.participants), len(coll.qc), len(done_targets),
                f", {len(failures)} failure(s)" if failures else "", gdir)
    return 1 if failures else 0


def current_outputs(record: dict[str, Any]) -> set[str]:
    """Names of the entries of ``group/`` that the run described by ``record`` wrote."""
    names = {"group.json", group_table_name("runs_qc"), group_table_name("exclusions")}
    for model in record.get("models_collected") or ():
        names |= {group_table_name(kind, model=model) for kind in (
            "runs_embedding", "subjects_embedding", "runs_predictions")}
    for atlas in record.get("qcfc") or {}:
        names |= {group_table_name("qcfc", atlas=atlas),
                  group_table_name("qcfc_json", atlas=atlas)}
    for t in record.get("targets") or ():
        names.add(t["folder"])
    if record.get("normative"):
        names.add("normative")
    return names


def remove_stale_outputs(gdir: Path, record: dict[str, Any]) -> list[str]:
    """Delete the group level's own outputs that this run did not write; return their names.

    ``group/`` is recomputed on every call, so a ``target-<COLUMN>`` folder of a target not
    requested (or failed) this time, ``normative/`` without ``--reference``, or the tables of
    a model or atlas no longer present would describe another cohort or other options. Only
    names the group level writes are considered (``group_*.tsv``, ``group_*.json``,
    ``target-*``, ``normative``); any other file a user put there is left alone. Hidden
    temporary files of a killed group level (``.<name>.<random>.tmp<ext>``) are removed too.
    """
    import re
    import shutil

    keep = current_outputs(record)
    from ..utils import remove_stale_temps, temp_stem

    own = re.compile(r"(group_.+\.(tsv|json)|target-[^/]+|normative)")
    removed = []
    for entry in sorted(gdir.iterdir()):
        name = entry.name
        if temp_stem(name) is not None:
            if entry.is_file() and not entry.is_symlink():
                entry.unlink(missing_ok=True)
            continue
        if name in keep or not own.fullmatch(name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(name)
    for folder in [gdir / n for n in keep if (gdir / n).is_dir()]:
        remove_stale_temps(folder, recursive=True)
    return removed


def _participants_vs_table(coll, table: pd.DataFrame, table_path: Path, labels,
                           needs_table: bool) -> None:
    """List participants without outputs, and participants with outputs but no table row.

    Both go into the exclusions table (stage ``participant``); the second also gets a
    warning, since their runs are in the group tables but no target value can reach them.
    """
    seen = set(coll.participants)
    for pid in table.index:
        if pid not in seen and (not labels or pid[4:] in labels):
            coll.exclusions.append({"participant_id": pid, "atlas": "n/a",
                                    "stage": "participant", "status": "missing",
                                    "reason": "listed in participants.tsv but no outputs in "
                                              "the output folder"})
    unlisted = [pid for pid in coll.participants if pid not in table.index]
    if not unlisted:
        return
    effect = ("no --target value or --group-column value: left out of every head; scored as a "
              "non-reference participant by --reference" if needs_table
              else "no participants.tsv values")
    LOGGER.warning("%d participant(s) have outputs but no row in %s (%s): %s", len(unlisted),
                   table_path, effect,
                   ", ".join(unlisted[:20]) + (" ..." if len(unlisted) > 20 else ""))
    for pid in unlisted:
        coll.exclusions.append({"participant_id": pid, "atlas": "n/a", "stage": "participant",
                                "status": "unlisted",
                                "reason": f"has outputs but no row in {Path(table_path).name} "
                                          f"({effect})"})


def _check_columns(parsed: dict[str, Any], group_column: str | None, table: pd.DataFrame,
                   table_path: Path) -> None:
    """Every column named by --target/--group-column/--reference exists (else ConfigError)."""
    names = [("--target", s.column) for s in parsed["targets"]]
    if parsed.get("harmonize"):
        names.append(("--harmonize", parsed["harmonize"][0]))
    if group_column:
        names.append(("--group-column", group_column))
    if parsed["reference"]:
        names.append(("--reference", parsed["reference"][0]))
    for option, column in names:
        if column not in table:
            raise ConfigError(f"{option} {column}: no such column (columns: "
                              f"{', '.join(table.columns)})", path=table_path)


def _label(column: str) -> str:
    from .target_analysis import target_label

    return target_label(column)


def _group_options(opts: dict[str, Any]) -> dict[str, Any]:
    keys = ("participant_label", "target", "group_column", "reference", "participants_tsv",
            "n_folds", "n_bootstrap", "attention_participants", "attention_steps", "model",
            "harmonize", "harmonize_method", "no_qcfc")
    return {k: (str(opts[k]) if isinstance(opts.get(k), Path) else opts.get(k)) for k in keys}


def _write_exclusions(rows: list[dict[str, str]], path: Path) -> None:
    from .collect import _order, write_table

    cols = ["atlas", "stage", "status", "reason"]
    frame = _order(pd.DataFrame(rows)) if rows else pd.DataFrame(
        columns=["participant_id", "session_id", "task", "run"] + cols)
    for c in cols:
        if c not in frame:
            frame[c] = np.nan
    ents = [c for c in frame.columns if c not in cols]
    write_table(frame[ents + cols], path)


def _fc_by_participant(coll, ents: pd.DataFrame, model_card, model_name: str
                       ) -> dict[str, list[Path]]:
    """FC TSVs (model atlas) of the runs that have an embedding, by participant."""
    from ..derivatives import parse_name
    from .collect import entity_columns

    atlas = (model_card or {}).get("atlas", {}).get("name")
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


def _load_model(model_card, opts):
    if model_card is None:
        LOGGER.warning("the model is not installed here: no attention for the new heads")
        return None
    from ..models.pretrain import resolve_device
    from ..models.registry import load_model, model_dir

    folder = model_dir(model_card["name"]) if opts.get("model") in (None, "auto") else \
        model_dir(opts["model"])
    return load_model(folder, device=str(resolve_device(opts.get("device") or "cpu")))


def _card_from_embedding_json(output_dir: Path, model_name: str) -> dict[str, Any]:
    """Model name/version/sha256 from one embedding sidecar (the model is not installed)."""
    import json

    for path in output_dir.glob(f"sub-*/**/*_desc-{model_name}_embedding.json"):
        try:
            return dict(json.loads(path.read_text()).get("Model") or {})
        except (OSError, ValueError):
            continue
    return {"name": model_name}


def _one_target(spec, table, table_path, ids, emb, gdir, model, model_card, fc_by_participant,
                opts, harmonization=None) -> dict[str, Any]:
    from .target_analysis import run_target
    from .targets import build_target

    target = build_target(spec, table, ids, opts.get("group_column"), table_path)
    LOGGER.info("target %s: %s, %d labelled participant(s)", target.column, target.task_type,
                len(target.y))
    provenance = {"participants_tsv": str(table_path), "created": _now(),
                  "bidsfm_version": __version__}
    return run_target(target, emb, ids, gdir / f"target-{_label(spec.column)}", model=model,
                      model_card=model_card, fc_by_participant=fc_by_participant,
                      group_column=opts.get("group_column"), n_folds=opts.get("n_folds"),
                      n_boot=int(opts.get("n_bootstrap", 1000)),
                      attention_participants=int(opts.get("attention_participants", 0)),
                      attention_steps=int(opts.get("attention_steps", 32)),
                      provenance=provenance, harmonization=_brief(harmonization))


def _normative(reference, table, table_path, ids, emb, cols, gdir, harmonization=None
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
        method["harmonization"] = _brief(harmonization)
    write_json_atomic(folder / "method.json", method)
    return {"reference": method["reference"], "n_reference": method["n_reference"],
            "folder": "normative/"}


def _harmonize(spec: tuple[str, str], table: pd.DataFrame, table_path: Path, ids: list[str],
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


def _brief(harmonization: dict[str, Any] | None) -> dict[str, Any] | None:
    """The part of the group.json record that target and normative files repeat."""
    if not harmonization:
        return None
    return {k: harmonization[k] for k in ("column", "method", "description", "fitted_on",
                                          "shared_across_folds")}


def _qcfc(coll, gdir: Path) -> dict[str, Any]:
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


def _reports(output_dir: Path, record: dict[str, Any]) -> None:
    """Group report and citation text (the reports module, when installed)."""
    from ..utils import remove_stale_temps

    remove_stale_temps(output_dir, "group.")  # temps left by a killed report
    # logs/CITATION.md's are removed by write_citation, under the lock it shares with the
    # participant jobs that may be writing it now
    try:
        from .. import reports
    except ImportError:
        LOGGER.info("bidsfm.reports is not available: no group.html")
        return
    for fn, args in (("write_group_report", (output_dir,)),
                     ("write_citation", (output_dir, record["options"] | {"level": "group"}))):
        try:
            getattr(reports, fn)(*args)
        except Exception as exc:  # a report failure never fails the group level
            LOGGER.warning("%s failed (%s: %s)", fn, type(exc).__name__, exc)
