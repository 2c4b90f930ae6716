"""The group level as a recipe of named steps: gather tables, fit heads on participants.tsv,
normative scores, QC-FC.

:func:`run_group_level` runs, in order: :func:`check_inputs` (folders; options of the
participant level are warned about), :func:`validate_group_options`,
:func:`read_participants_table`, the collection of the participants' small TSVs
(:mod:`bidsfm.group.collect`) with this call's config written to ``logs/``,
:func:`resolve_group_model`, :func:`write_cohort_tables`, the analyses
(:mod:`bidsfm.group.analyses`: targets, normative scores, QC-FC), then :func:`write_record`
(``group/group.json``, stale outputs removed) and the reports.

Every output is written atomically under ``OUTPUT_DIR/group/`` and recomputed from the
participants' small TSVs on each call, so the level is idempotent and can be rerun whenever
more participants have finished. See docs/group.md.
"""

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
from .analyses import utc_now

if TYPE_CHECKING:
    from ..config import Config, GroupConfig
    from ..models.card import ModelCard

LOGGER = logging.getLogger("bidsfm.group")


def run_group_level(config: Config) -> int:
    """Run the group level; return the exit code (0 ok, 1 some analysis failed).

    Raises
    ------
    BidsfmError
        For problems that stop the whole level (no outputs, unreadable participants table,
        unknown target column).
    """
    from ..config import write_config
    from ..discovery import normalize_participant_labels
    from .analyses import qcfc
    from .collect import collect_outputs, write_table

    started = utc_now()
    check_inputs(config)
    if config.execution.reports_only:
        return group_reports_only(config.output_dir)
    output_dir = config.output_dir
    parsed = validate_group_options(config.group)
    if not output_dir.is_dir() or not any(output_dir.glob("sub-*")):
        raise ConfigError("no participant outputs (no sub-* folder)", path=output_dir,
                          remedy="Run the participant level first")
    labels = normalize_participant_labels(config.inputs.participant_label)
    # the participants table and the columns named by options are checked before any writing
    table, table_path = read_participants_table(config, parsed)
    t0 = time.time()
    nprocs = config.execution.nprocs
    coll = collect_outputs(output_dir, labels or None, nprocs=nprocs)
    LOGGER.info("collected %d QC row(s) of %d participant(s) in %.1f s", len(coll.qc),
                len(coll.participants), time.time() - t0)
    gdir = output_dir / "group"
    gdir.mkdir(parents=True, exist_ok=True)
    write_config(config)
    write_table(coll.qc, gdir / group_table_name("runs_qc"))
    model_name, model_card = resolve_group_model(config.model.model, sorted(coll.embeddings))
    write_cohort_tables(coll, gdir, table, table_path, labels, bool(parsed["needs_table"]),
                        nprocs=nprocs)
    outcome = run_analyses(config, parsed, coll, table, table_path, model_name, model_card)
    outcome["qcfc"] = {} if config.group.no_qcfc else qcfc(coll, gdir)
    record = build_record(config, started, table_path, coll, model_name, outcome)
    write_record(gdir, record)
    _reports(output_dir, record)
    LOGGER.info("group level done: %d participant(s), %d run row(s), %d target(s)%s. Outputs in "
                "%s", len(coll.participants), len(coll.qc), len(outcome["targets"]),
                f", {len(outcome['failures'])} failure(s)" if outcome["failures"] else "", gdir)
    return 1 if outcome["failures"] else 0


def check_inputs(config: Config) -> None:
    """Options of the participant level are warned about; the output folder may not be inside
    an input dataset, nor another tool's dataset.

    Raises
    ------
    ConfigError
        If the output folder is inside an input or belongs to another tool.
    """
    from ..derivatives import check_output_dataset
    from ..utils import refuse_inside_input

    if config.model.heads:
        LOGGER.warning("--heads is a participant-level option; ignored at the group level")
    if config.execution.no_figures:
        LOGGER.warning("--no-figures is a participant-level option; the group level draws its "
                       "figures")
    output_dir = config.output_dir
    inputs = [config.bids_dir, *(Path(p).absolute() for p in
                                 config.inputs.derivatives_map.values())]
    refuse_inside_input({"output": output_dir}, inputs)  # as the participant level does
    if output_dir.is_dir() and (output_dir / "dataset_description.json").is_file():
        check_output_dataset(output_dir)  # never write into another tool's dataset


def group_reports_only(output_dir: Path) -> int:
    """``--reports-only`` at the group level: ``group.html`` and CITATION.md; exit code."""
    from ..reports.rebuild import rebuild_group_report

    problems = rebuild_group_report(output_dir)
    for line in problems:
        LOGGER.error("%s", line)
    return 1 if problems else 0


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


def resolve_group_model(spec: str, found: list[str]) -> tuple[str | None, ModelCard | None]:
    """Name of the model whose embeddings the analyses use, and its card (if installed)."""
    from ..models.card import DEFAULT_MODEL, resolve_model

    if spec == "none" or not found:
        return None, None
    card = None
    if spec == "auto":
        name = DEFAULT_MODEL if DEFAULT_MODEL in found else (found[0] if len(found) == 1
                                                            else None)
        if name is None:
            raise ConfigError(f"outputs of several models ({', '.join(found)}); choose one "
                              "with --model")
        try:
            card = resolve_model(name)
        except ConfigError:
            card = None
    else:
        card = resolve_model(spec)
        name = None if card is None else card.name
        if name not in found:
            raise ConfigError(f"no embeddings of model {name} in the output folder (found: "
                              f"{', '.join(found)})")
    return name, card


def validate_group_options(options: GroupConfig) -> dict[str, Any]:
    """Parse ``--target``/``--reference``/``--harmonize`` values up front (bad: ConfigError)."""
    from .harmonize import DEFAULT_METHOD, METHODS
    from .normative import parse_reference
    from .targets import parse_target

    specs = [parse_target(t) for t in options.target]
    seen: set[str] = set()
    for s in specs:
        if s.column in seen:
            raise ConfigError(f"--target {s.column} given twice")
        seen.add(s.column)
    ref = parse_reference(options.reference) if options.reference else None
    column = str(options.harmonize).strip() if options.harmonize else None
    method = str(options.harmonize_method or DEFAULT_METHOD).lower()
    method = "centre" if method == "center" else method
    if method not in METHODS:
        raise ConfigError(f"--harmonize-method {method}: unknown (choose from "
                          f"{', '.join(METHODS)})")
    return {"targets": specs, "reference": ref,
            "harmonize": (column, method) if column else None,
            "needs_table": bool(specs or ref)}


def read_participants_table(config: Config, parsed: dict[str, Any]
                            ) -> tuple[pd.DataFrame | None, Path | None]:
    """participants.tsv (:func:`find_participants_tsv`) and its path, the columns named by the
    options checked; an unreadable table not needed by an option is only warned about.

    Raises
    ------
    ConfigError
        If ``--target``/``--reference`` need a table that is missing or unreadable, or a named
        column is not in it.
    """
    table = None
    table_path = find_participants_tsv(config.bids_dir, config.group.participants_tsv,
                                       config.inputs.derivatives_map)
    needs_table = parsed["needs_table"]
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
                          path=config.bids_dir, remedy="Pass --participants-tsv PATH")
    if needs_table:
        _check_columns(parsed, config.group.group_column, table, table_path)
    elif parsed["harmonize"]:
        LOGGER.warning("--harmonize %s has no effect without --target or --reference",
                       parsed["harmonize"][0])
    return table, table_path


def write_cohort_tables(coll, gdir: Path, table: pd.DataFrame | None, table_path: Path | None,
                        labels: list[str], needs_table: bool, nprocs: int = 1) -> None:
    """The embedding and prediction tables of every model, and the exclusions table (with the
    participants missing from, or not listed in, participants.tsv); the wide embedding tables
    formatted by ``nprocs`` processes."""
    from .collect import subject_embeddings, subject_table_from_runs, write_table

    for name, (ents, values, cols) in coll.embeddings.items():
        frame = pd.concat([ents.reset_index(drop=True),
                           pd.DataFrame(values, columns=cols)], axis=1)
        runs_path = write_table(frame, gdir / group_table_name("runs_embedding", model=name),
                                nprocs)
        del frame
        ids, mean, n_runs = subject_embeddings(ents, values)
        subj_path = gdir / group_table_name("subjects_embedding", model=name)
        if not subject_table_from_runs(runs_path, subj_path, ents, ids, n_runs):
            subj = pd.concat([pd.DataFrame({"participant_id": ids, "n_runs": n_runs}),
                              pd.DataFrame(mean, columns=cols)], axis=1)
            write_table(subj, subj_path, nprocs)
    for name, frame in coll.predictions.items():
        write_table(frame, gdir / group_table_name("runs_predictions", model=name))
    if table is not None:
        _participants_vs_table(coll, table, table_path, labels, needs_table)
    _write_exclusions(coll.exclusions, gdir / group_table_name("exclusions"))


def run_analyses(config: Config, parsed: dict[str, Any], coll, table, table_path,
                 model_name: str | None, model_card: ModelCard | None) -> dict[str, Any]:
    """Targets and normative scores on the (optionally harmonised) subject embeddings:
    ``{"targets": [...], "normative": ..., "harmonization": ..., "failures": [...]}``.

    Raises
    ------
    ConfigError
        If they need embeddings and the output folder has none, or ``--harmonize`` fails.
    """
    from . import analyses
    from .collect import subject_embeddings

    out: dict[str, Any] = {"targets": [], "normative": None, "harmonization": None,
                           "failures": [], "model_card": model_card}
    if not parsed["needs_table"]:
        return out
    if model_name is None:
        raise ConfigError("--target/--reference need model embeddings, and the output folder "
                          "has none", path=config.output_dir,
                          remedy="Run the participant level with a model (--model)")
    gdir = config.output_dir / "group"
    ents, values, cols = coll.embeddings[model_name]
    ids, emb, _n = subject_embeddings(ents, values)
    if parsed["harmonize"]:
        emb, out["harmonization"] = analyses.harmonize(parsed["harmonize"], table, table_path,
                                                       ids, emb, model_name)
    fc_by_participant = analyses.fc_by_participant(coll, ents, model_card, model_name)
    model = analyses.load_model(model_card, config.model.device) if (
        config.group.attention_participants and parsed["targets"]) else None
    # the model's name, version and sha256 from an embedding sidecar if it is not installed
    card = model_card if model_card is not None else analyses.card_from_embedding_json(
        config.output_dir, model_name)
    out["model_card"] = card
    out["targets"], out["failures"] = analyses.run_targets(
        parsed["targets"], table, table_path, ids, emb, gdir, model, card, fc_by_participant,
        config.group, config.model.attention_steps, out["harmonization"])
    if parsed["reference"]:
        try:
            out["normative"] = analyses.normative(parsed["reference"], table, table_path, ids,
                                                  emb, cols, gdir, out["harmonization"])
        except (BidsfmError, ValueError) as exc:
            msg = exc.one_line() if isinstance(exc, BidsfmError) else str(exc)
            LOGGER.error("normative: %s", msg)
            out["failures"].append(f"normative: {msg}")
    return out


def build_record(config: Config, started: str, table_path: Path | None, coll,
                 model_name: str | None, outcome: dict[str, Any]) -> dict[str, Any]:
    """The content of ``group/group.json``: what was run, on what, and what came out."""
    from .target_analysis import target_label

    model_card = outcome.get("model_card")
    n_subjects = 0
    if model_name is not None:
        n_subjects = len(set(coll.embeddings[model_name][0]["participant_id"]))
    return {
        "BidsfmVersion": __version__, "started": started, "finished": utc_now(),
        "bids_dir": str(config.bids_dir), "participants_tsv": None if table_path is None
        else str(table_path),
        "options": group_options(config),
        "model": None if model_name is None else {
            k: (model_card or {}).get(k) for k in ("name", "version", "sha256")} | {
            "name": model_name},
        "models_collected": sorted(set(coll.embeddings) | set(coll.predictions)),
        "n_participants": len(coll.participants), "n_participants_with_embedding": n_subjects,
        "n_runs": int(len(coll.qc)), "n_exclusions": len(coll.exclusions),
        "targets": [{"column": t["target"], "task_type": t["task_type"],
                     "folder": f"target-{target_label(t['target'])}"}
                    for t in outcome["targets"]],
        "harmonization": outcome["harmonization"],
        "normative": outcome["normative"], "qcfc": outcome["qcfc"],
        "failures": outcome["failures"],
    }


def group_options(config: Config) -> dict[str, Any]:
    """The options group.json records (JSON values; ``attention_steps`` is the value used)."""
    group, model = config.group, config.model
    values = {"participant_label": config.inputs.participant_label, "target": group.target,
              "group_column": group.group_column, "reference": group.reference,
              "participants_tsv": group.participants_tsv, "n_folds": group.n_folds,
              "n_bootstrap": group.n_bootstrap,
              "attention_participants": group.attention_participants,
              "attention_steps": model.attention_steps, "model": model.model,
              "harmonize": group.harmonize, "harmonize_method": group.harmonize_method,
              "no_qcfc": group.no_qcfc}
    return {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v
            for k, v in values.items()}


def write_record(gdir: Path, record: dict[str, Any]) -> None:
    """Remove the group outputs this call did not produce, then write ``group.json``."""
    from ..utils import write_json_atomic

    removed = remove_stale_outputs(gdir, record)
    if removed:
        LOGGER.info("removed %d group output(s) that this run did not produce (left by an "
                    "earlier run with other options): %s", len(removed), ", ".join(removed))
    write_json_atomic(gdir / "group.json", record)


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


def _write_exclusions(rows: list[dict[str, str]], path: Path) -> None:
    from .collect import order_columns, write_table

    cols = ["atlas", "stage", "status", "reason"]
    frame = order_columns(pd.DataFrame(rows)) if rows else pd.DataFrame(
        columns=["participant_id", "session_id", "task", "run"] + cols)
    for c in cols:
        if c not in frame:
            frame[c] = np.nan
    ents = [c for c in frame.columns if c not in cols]
    write_table(frame[ents + cols], path)


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
