"""The subject report ``OUTPUT_DIR/sub-<label>.html``, built from the derivatives on disk.

For every run (and session) and atlas: a summary, the QC table, a carpet plot of the denoised
ROI signals, the FC matrix, per-ROI coverage, the model's predictions (with the model card's
leave-one-site-out figures and a research-use caveat) and the attention glass brain. Missing
pieces (``--model none``, skipped or interrupted runs, unreadable files) are shown as notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..derivatives import (
    ATLAS_ENTITY,
    FIGURE_TAIL,
    MODEL_OUTPUT_TAILS,
    PLACEMENT_FIGURE_TAIL,
    RUN_OUTPUT_TAILS,
    output_base,
)
from ..errors import ConfigError, InputDataError
from . import figures
from . import html as h
from .readers import entities, read_json, read_tsv

QC_SUFFIX = RUN_OUTPUT_TAILS["qc"]
#: the note shown in place of figures in a report written with ``--no-figures``
NO_FIGURES = ("Figures not drawn (--no-figures). Draw them from the outputs on disk, without "
              "reprocessing, with: bidsfm BIDS_DIR OUTPUT_DIR participant --reports-only.")
TS_SUFFIX = RUN_OUTPUT_TAILS["timeseries"]
_LABEL = re.compile(r"[A-Za-z0-9]+")  # used with fullmatch: "$" accepts a trailing newline
#: run entities shown in titles, in BIDS order
RUN_ENTITIES = ("ses", "task", "acq", "ce", "rec", "dir", "run", "echo", "part")


@dataclass
class RunOutputs:
    """The files of one run and atlas in a subject's derivatives.

    Attributes
    ----------
    base : Path
        Common path prefix, ``…/<run>_space-<S>_atlas-<ATLAS>``.
    entities : dict
        Entities parsed from the file name.
    complete : bool
        Whether the QC table (written last) exists.
    """

    base: Path
    entities: dict[str, str] = field(default_factory=dict)
    complete: bool = True

    def path(self, suffix: str) -> Path:
        """Sibling file ``<base><suffix>``."""
        return self.base.parent / (self.base.name + suffix)

    def output(self, kind: str, model: str | None = None) -> Path:
        """The run's output of ``kind`` (a key of ``RUN_OUTPUT_TAILS``, or of
        ``MODEL_OUTPUT_TAILS`` with ``model``; see :mod:`bidsfm.derivatives`)."""
        if model is not None:
            return self.path(MODEL_OUTPUT_TAILS[kind].format(model=model))
        return self.path(RUN_OUTPUT_TAILS[kind])

    def placement_figure(self, subject_dir: Path) -> Path:
        """The atlas placement PNG of the run in ``sub-X/figures/``."""
        return subject_dir / "figures" / (self.base.name + PLACEMENT_FIGURE_TAIL)

    @property
    def atlas(self) -> str:
        """Atlas name."""
        return self.entities.get(ATLAS_ENTITY, "?")

    @property
    def label(self) -> str:
        """Short run label (``ses-1 task-rest run-1``)."""
        parts = [f"{k}-{self.entities[k]}" for k in RUN_ENTITIES if k in self.entities]
        return " ".join(parts) or self.base.name

    @property
    def anchor(self) -> str:
        """HTML id of the run's section."""
        return re.sub(r"[^A-Za-z0-9_-]", "-", self.base.name)

    def sort_key(self) -> tuple:
        """Order: session, task, other entities, run number, atlas."""
        run = self.entities.get("run", "")
        return tuple(self.entities.get(k, "") for k in ("ses", "task", "acq", "dir")) + (
            int(run) if run.isdigit() else 0, run, self.atlas)


def normalize_subject(subject: str) -> str:
    """Return the bare participant label (``"sub-01"`` or ``"01"`` -> ``"01"``).

    Raises
    ------
    ConfigError
        If the label is not letters and digits.
    """
    label = str(subject)
    label = label[4:] if label.startswith("sub-") else label
    if not _LABEL.fullmatch(label):
        raise ConfigError(f"participant label {subject!r} is not a BIDS label (letters and "
                          "digits only)")
    return label


def subject_folder(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>``, which must exist (ConfigError for a bad label)."""
    label = normalize_subject(subject)
    subject_dir = output_dir / f"sub-{label}"
    if not subject_dir.is_dir():
        raise InputDataError(f"no outputs for participant sub-{label}", path=subject_dir,
                             remedy="Run the participant level for this participant first")
    return subject_dir


def find_runs(subject_dir: Path) -> list[RunOutputs]:
    """Every run/atlas with a QC table, plus interrupted ones (time series but no QC table)."""
    found: dict[Path, RunOutputs] = {}
    for qc in subject_dir.rglob(f"*{QC_SUFFIX}"):
        if qc.name.startswith(".") or output_base(qc.name) is None:
            continue
        base = qc.parent / qc.name[: -len(QC_SUFFIX)]
        found[base] = RunOutputs(base, entities(base.name), complete=True)
    for ts in subject_dir.rglob(f"*{TS_SUFFIX}"):
        base = ts.parent / ts.name[: -len(TS_SUFFIX)]
        if base not in found and not ts.name.startswith(".") and output_base(ts.name):
            found[base] = RunOutputs(base, entities(base.name), complete=False)
    return sorted(found.values(), key=RunOutputs.sort_key)


def write_subject_report(output_dir: Path, subject: str, *, figures: bool = True) -> Path:
    """Write ``OUTPUT_DIR/sub-<label>.html`` from the subject's derivatives on disk.

    Parameters
    ----------
    output_dir : Path
        The bidsfm derivatives folder.
    subject : str
        Participant label, with or without ``sub-``.
    figures : bool
        Draw and embed the figures (carpet plot, FC matrix, coverage, attention glass brain).
        ``False`` (``--no-figures``) writes the tables and a note in place of each figure,
        without importing matplotlib.

    Returns
    -------
    Path
        The report written (atomically).

    Raises
    ------
    ConfigError
        If the label is invalid.
    InputDataError
        If the output folder holds no ``sub-<label>`` folder.
    """
    output_dir = Path(output_dir)
    subject_dir = subject_folder(output_dir, subject)
    runs = find_runs(subject_dir)
    body = [_summary(runs, subject_dir, output_dir)]
    body += [_run_section(run, subject_dir, figures) for run in runs]
    toc = [("summary", "Summary")] + [(r.anchor, f"{r.label} ({r.atlas})") for r in runs]
    desc, _ = read_json(output_dir / "dataset_description.json")
    tools = ", ".join(f"{g.get('Name')} {g.get('Version', '')}".strip()
                      for g in (desc or {}).get("GeneratedBy", []) if isinstance(g, dict))
    subtitle = f"{len(runs)} run(s) x atlas in {output_dir}" + (f" · {tools}" if tools else "")
    text = h.page(f"bidsfm report: {subject_dir.name}", subtitle, "\n".join(body), toc)
    return h.write_page(output_dir / f"{subject_dir.name}.html", text)


def _qc_row(run: RunOutputs) -> tuple[dict[str, Any], str | None]:
    if not run.complete:
        return {}, None
    frame, problem = read_tsv(run.path(QC_SUFFIX))
    if frame is None:
        return {}, problem
    if len(frame) == 0:
        return {}, f"{run.path(QC_SUFFIX).name}: empty table"
    row = frame.iloc[0].to_dict()
    return {k: (None if (isinstance(v, float) and np.isnan(v)) or v == "" else v)
            for k, v in row.items()}, None


def _status(run: RunOutputs, qc: dict[str, Any]) -> str:
    if not run.complete:
        return "incomplete"
    return str(qc.get("status") or "missing")


def _summary(runs: list[RunOutputs], subject_dir: Path, output_dir: Path) -> str:
    if not runs:
        return h.section("Summary", h.note(
            f"{subject_dir}: no run outputs (no *_qc.tsv or *_stat-mean_timeseries.tsv); the "
            "participant level has not written anything for this participant yet.", "warn"),
            "summary")
    rows = []
    counts: dict[str, int] = {}
    for run in runs:
        qc, _ = _qc_row(run)
        status = _status(run, qc)
        counts[status] = counts.get(status, 0) + 1
        link = f'<a href="#{h.esc(run.anchor)}">{h.esc(run.label)}</a>'
        rows.append([link, run.atlas, h.status_span(status), qc.get("n_retained"),
                     qc.get("retained_seconds"), qc.get("n_censored"), qc.get("mean_fd"),
                     qc.get("n_rois_low_coverage"), h.status_span(qc.get("model_status"))
                     if qc.get("model_status") else "<span>n/a</span>"])
    text = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    body = f"<p>{len(runs)} run(s) x atlas: {h.esc(text)}.</p>"
    body += h.table(["run", "atlas", "status", "retained volumes", "retained (s)", "censored",
                     "mean FD (mm)", "low-coverage ROIs", "model"], rows,
                    raw_columns=(0, 2, 8))
    if any(_status(r, _qc_row(r)[0]) != "ok" for r in runs):
        body += h.note("Runs that are not 'ok' have no connectivity or model outputs; the "
                       "reason is given in their section.", "warn")
    return h.section("Summary", body, "summary")


def _run_section(run: RunOutputs, subject_dir: Path, figures: bool = True) -> str:
    qc, problem = _qc_row(run)
    status = _status(run, qc)
    parts: list[str] = []
    if not run.complete:
        parts.append(h.note(f"{run.path(QC_SUFFIX).name}: no QC table — the run was "
                            "interrupted or is still being processed; rerun the participant "
                            "level to complete it.", "warn"))
    elif problem:
        parts.append(h.note(problem, "bad"))
    elif status != "ok":
        kind = "bad" if status == "error" else "warn"
        parts.append(h.note(f"Run {status}: {qc.get('reason') or 'no reason recorded'}", kind))
    figs = _signal_figures(run, qc, status, subject_dir, figures)
    parts.append('<div class="grid"><div>' + _qc_table(run, qc) + "</div>" + figs[0] + "</div>")
    if len(figs) > 1:
        parts.append('<div class="grid">' + "".join(figs[1:]) + "</div>")
    parts.append(_model_part(run, qc, subject_dir, figures))
    title = f"{run.label} · {run.atlas}"
    return h.section(title, "".join(parts), run.anchor, css_class="run")


def _qc_table(run: RunOutputs, qc: dict[str, Any]) -> str:
    if not qc:
        return ""
    meta, _ = read_json(run.output("qc_json"))
    options = (meta or {}).get("Options", {}) if isinstance(meta, dict) else {}
    strategy = options.get("strategy") if isinstance(options, dict) else None
    low = qc.get("low_coverage_rois") or ""
    low_list = [x for x in str(low).split(",") if x]
    low_text = ", ".join(low_list[:12]) + (f" … (+{len(low_list) - 12})"
                                           if len(low_list) > 12 else "")
    dvars = (None if qc.get("mean_dvars_before") is None else
             f"{h.fmt(qc.get('mean_dvars_before'))} → {h.fmt(qc.get('mean_dvars_after'))}")
    pairs = [
        ("status", h.status_span(qc.get("status"))),
        ("reason", qc.get("reason")),
        ("space", qc.get("space")),
        ("repetition time (s)", qc.get("repetition_time")),
        ("volumes: total / dummy / censored / retained",
         " / ".join(h.fmt(qc.get(k)) for k in ("n_volumes", "n_dummy", "n_censored",
                                                "n_retained"))),
        ("retained data (s)", qc.get("retained_seconds")),
        ("framewise displacement mean / max (mm)",
         f"{h.fmt(qc.get('mean_fd'))} / {h.fmt(qc.get('max_fd'))}"),
        ("ROI DVARS before → after denoising", dvars),
        ("denoising strategy", strategy),
        ("low-coverage ROIs (n/a)", None if qc.get("n_rois") is None else
         f"{h.fmt(qc.get('n_rois_low_coverage'))} of {h.fmt(qc.get('n_rois'))} (coverage < "
         f"{h.fmt(qc.get('min_coverage'))})" + (f": {low_text}" if low_text else "")),
        ("atlas to run grid", qc.get("atlas_transform")),
    ]
    if "model" in qc:
        model_status = h.status_span(qc.get("model_status")) + (
            f" {h.esc(qc.get('model_reason'))}" if qc.get("model_reason") else "")
        pairs.append((f"model {h.fmt(qc.get('model'))}", model_status))
    raw = ("status", f"model {h.fmt(qc.get('model'))}")
    return "<h4>Quality control</h4>" + h.kv_table(
        [(k, v) for k, v in pairs if v not in (None, "")], raw_keys=raw)


def _signal_figures(run: RunOutputs, qc: dict[str, Any], status: str, subject_dir: Path,
                    figures_on: bool = True) -> list[str]:
    """HTML of the carpet plot, FC matrix and coverage figures (or notes saying why not)."""
    if status in ("skipped", "error") and not run.path(TS_SUFFIX).is_file():
        return [h.note("No time series, connectivity or coverage for this run (not processed "
                       "past QC).", "warn")]
    if not figures_on:
        return [h.note(NO_FIGURES)]
    figs: list[str] = []
    ts, problem = read_tsv(run.path(TS_SUFFIX))
    meta, _ = read_json(run.output("timeseries_json"))
    tr = (meta or {}).get("RepetitionTime") or qc.get("repetition_time")
    try:
        tr = float(tr) if tr is not None else None
    except (TypeError, ValueError):
        tr = None
    if ts is not None and len(ts):
        png = figures.carpet(ts.to_numpy(dtype=float), tr, "Denoised ROI signals (carpet plot)")
        figs.append(h.figure(png, "carpet plot", f"Carpet plot: {ts.shape[1]} ROIs x "
                             f"{ts.shape[0]} retained volumes (dummy and censored volumes "
                             "removed; red rows = low-coverage ROIs, n/a)."))
    else:
        figs.append(h.note(problem or f"{run.path(TS_SUFFIX).name}: no rows", "warn"))
    fc, problem = read_tsv(run.output("fc"), index_col=0)
    if fc is not None:
        png = figures.matrix(fc.to_numpy(dtype=float), "Functional connectivity")
        finite = fc.to_numpy(dtype=float)
        off = finite[~np.eye(finite.shape[0], dtype=bool)] if finite.ndim == 2 and \
            finite.shape[0] == finite.shape[1] else finite.ravel()
        off = off[np.isfinite(off)]
        mean_r = f"; mean off-diagonal r = {off.mean():.3f}" if off.size else ""
        figs.append(h.figure(png, "FC matrix", f"Pearson correlation matrix "
                             f"({fc.shape[0]} x {fc.shape[1]} ROIs, grey = n/a){mean_r}."))
    else:
        figs.append(h.note(problem or "", "warn"))
    cov, problem = read_tsv(run.output("coverage"))
    if cov is not None and len(cov):
        thr = qc.get("min_coverage")
        thr = float(thr) if h._is_number(thr) else 0.5
        vals = (cov["coverage"] if "coverage" in cov.columns else cov.iloc[0]).to_numpy(
            dtype=float)
        png = figures.coverage(vals, thr, "ROI coverage")
        figs.append(h.figure(png, "ROI coverage", f"Fraction of each ROI inside the brain "
                             f"mask; {int((vals < thr).sum())} ROI(s) below {thr:g}."))
    else:
        figs.append(h.note(problem or "coverage table is empty", "warn"))
    png_path = run.placement_figure(subject_dir)
    if png_path.is_file():
        how = qc.get("atlas_transform") or "see the QC table"
        figs.append(h.figure_file(png_path, "atlas placement", f"Atlas {run.atlas} on this "
                                  "run's grid: brain mask in grey, parcel borders in colour, "
                                  f"parcel voxels outside the mask in red. Placement: {how}."))
    return figs


def _model_name(run: RunOutputs, qc: dict[str, Any]) -> str | None:
    model = qc.get("model")
    if model:
        return str(model)
    hits = sorted(run.base.parent.glob(run.base.name + MODEL_OUTPUT_TAILS["predictions"].format(
        model="*")))
    return entities(hits[0].name).get("desc") if hits else None


def _model_part(run: RunOutputs, qc: dict[str, Any], subject_dir: Path,
                figures: bool = True) -> str:
    model = _model_name(run, qc)
    head = "<h4>Foundation model</h4>"
    if model is None:
        return head + h.note("No model outputs for this run (the participant level ran with "
                             "--model none, or this atlas is not the model's).")
    pred_path = run.output("predictions", model)
    if qc.get("model_status") in ("skipped", "error") or not pred_path.is_file():
        reason = qc.get("model_reason") or f"{pred_path.name} not found"
        kind = "bad" if qc.get("model_status") == "error" else "warn"
        return head + h.note(f"Model {model}: no predictions for this run — {reason}.", kind)
    parts = [head]
    emb_meta, _ = read_json(run.output("embedding_json", model))
    info = (emb_meta or {}).get("Model") or {}
    if info:
        parts.append(f"<p>Model <code>{h.esc(info.get('name'))}</code> version "
                     f"{h.esc(info.get('version'))} ({h.esc(info.get('family'))}).</p>")
    parts.append(h.note("These predictions are research outputs of a model trained on another "
                        "cohort (see the model card); they are not clinical diagnoses. The "
                        "validation column gives the head's leave-one-site-out figures.",
                        "warn"))
    preds, problem = read_tsv(pred_path)
    if preds is None:
        parts.append(h.note(problem or "", "bad"))
    else:
        heads_meta = (emb_meta or {}).get("Heads") or {}
        rows = []
        for rec in preds.to_dict("records"):
            prob = rec.get("probability")
            prob_text = (f"P({h.fmt(rec.get('probability_of'))}) = {h.fmt(prob)}"
                         if h._is_number(prob) and not np.isnan(float(prob)) else "n/a")
            meta = heads_meta.get(str(rec.get("head")))
            unit = meta.get("unit") if isinstance(meta, dict) else None
            value = f"{h.fmt(rec.get('value'))} {unit}" if unit else rec.get("value")
            rows.append([rec.get("head"), value, prob_text, _validation_text(meta)])
        parts.append(h.table(["head", "prediction", "probability", "validation (card)"],
                             rows))
    parts.append(_attention_part(run, model, subject_dir, figures))
    return "".join(parts)


def _validation_text(meta: Any) -> str:
    val = meta.get("validation") if isinstance(meta, dict) else None
    if not isinstance(val, dict):
        return "n/a"
    scheme = val.get("scheme", "")
    if "auc" in val:
        ci = val.get("auc_ci95") or []
        ci_text = f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if len(ci) == 2 else ""
        return f"AUC {float(val['auc']):.3f}{ci_text}, {scheme}, n={val.get('n', '?')}"
    if "mae" in val:
        return (f"MAE {float(val['mae']):.2f}, r {float(val.get('r', np.nan)):.2f}, {scheme}, "
                f"n={val.get('n', '?')}")
    return scheme or "n/a"


def _attention_part(run: RunOutputs, model: str, subject_dir: Path,
                    figures: bool = True) -> str:
    parts = ["<h4>ROI attention</h4>"]
    att, problem = read_tsv(run.output("attention", model), index_col=0)
    if att is not None and att.shape[1]:
        rows = []
        for head in att.columns:
            col = att[head].astype(float).dropna()
            top = col.reindex(col.abs().sort_values(ascending=False).index)[:5]
            rows.append([head, ", ".join(f"{name} ({val:+.3g})" for name, val in top.items())])
        parts.append(h.table(["head", "top ROIs by |integrated-gradients attribution|"], rows))
    elif problem:
        parts.append(h.note(problem, "warn"))
    png_path = _figure_path(run, model, subject_dir)
    statmap = run.output("statmap", model)
    caption = ("Integrated-gradients attribution of each head to each ROI: signed maximum "
               "projections on a glass brain, one row per head (red: pushes the head's output "
               "up, blue: down).")
    if not figures:
        if statmap.is_file():
            parts.append(h.note(NO_FIGURES))
        else:
            parts.append(h.note("No attention map for this run.", "warn"))
    elif png_path.is_file():
        parts.append(h.figure_file(png_path, "attention glass brain", caption))
    elif statmap.is_file():
        try:
            png = _glass_brain(run, model)
            parts.append(h.figure(png, "attention glass brain", caption))
        except Exception as exc:  # a corrupt statmap must not stop the report
            parts.append(h.note(f"{statmap.name}: cannot be rendered ({type(exc).__name__})",
                                "warn"))
    else:
        parts.append(h.note("No attention map for this run.", "warn"))
    return "".join(parts)


def _figure_path(run: RunOutputs, model: str, subject_dir: Path) -> Path:
    """The run's attention PNG in ``sub-X/figures/`` (name from :mod:`bidsfm.derivatives`)."""
    return subject_dir / "figures" / (run.base.name + FIGURE_TAIL.format(model=model))


def _glass_brain(run: RunOutputs, model: str) -> bytes:
    """PNG of the run's attention statmap (heads named by its sidecar)."""
    meta, _ = read_json(run.output("statmap_json", model))
    heads = [str(x) for x in (meta or {}).get("Heads", [])]
    return figures.glass_brain(str(run.output("statmap", model)), heads,
                               f"ROI attribution ({model})")


def redraw_figures(output_dir: Path, subject: str) -> tuple[list[Path], list[str]]:
    """Draw the attention PNGs of a participant again from the statmaps on disk.

    Used by ``--reports-only`` (and after ``--no-figures``): every run with an attention
    statmap gets ``sub-<label>/figures/<run>_…_desc-<MODEL>_attention.png`` (written
    atomically), without reprocessing anything.

    Parameters
    ----------
    output_dir : Path
        The bidsfm derivatives folder.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    written : list of Path
        The PNGs written.
    problems : list of str
        One line per statmap that could not be drawn (the others are still drawn).

    Raises
    ------
    ConfigError
        If the label is invalid.
    InputDataError
        If the output folder holds no ``sub-<label>`` folder.
    """
    from ..utils import write_bytes_atomic

    output_dir = Path(output_dir)
    subject_dir = subject_folder(output_dir, subject)
    written, problems = [], []
    for run in find_runs(subject_dir):
        qc, _ = _qc_row(run)
        model = _model_name(run, qc)
        if model is None or not run.output("statmap", model).is_file():
            continue
        path = _figure_path(run, model, subject_dir)
        try:
            png = _glass_brain(run, model)
        except Exception as exc:  # one unreadable statmap must not stop the others
            problems.append(f"{run.output('statmap', model)}: cannot be drawn "
                            f"({type(exc).__name__}: {exc})")
            continue
        written.append(write_bytes_atomic(path, png))
    return written, problems
