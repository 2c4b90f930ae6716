"""The group report ``OUTPUT_DIR/group.html``, built from the tables under ``OUTPUT_DIR/group/``.

Sections: cohort summary, 2D embedding map (PCA of the subject embeddings, one panel per
target), one section per target (metrics with CIs, ROC / scatter figure, uncertainty statement,
attention top ROIs), normative deviation, QC-FC, and the run exclusions. A section whose files
are absent is replaced by a note saying which file is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..derivatives import ATLAS_ENTITY, group_table_name
from ..errors import InputDataError
from . import figures
from . import html as h
from .readers import entities, read_json, read_tsv

#: at most this many rows are printed for long tables (the full table is on disk)
MAX_ROWS = 50


def write_group_report(output_dir: Path) -> Path:
    """Write ``OUTPUT_DIR/group.html`` from the group-level tables in ``OUTPUT_DIR/group/``.

    Parameters
    ----------
    output_dir : Path
        The bidsfm derivatives folder (holding ``group/``).

    Returns
    -------
    Path
        The report written (atomically).

    Raises
    ------
    InputDataError
        If ``OUTPUT_DIR/group`` does not exist.
    """
    output_dir = Path(output_dir)
    group = output_dir / "group"
    if not group.is_dir():
        raise InputDataError("no group-level outputs", path=group,
                             remedy="Run 'bidsfm BIDS_DIR OUTPUT_DIR group' first")
    meta, meta_problem = read_json(group / "group.json")
    meta = meta or {}
    targets = _target_dirs(group, meta)
    sections = [
        ("cohort", "Cohort", _safe(_cohort, group, meta, meta_problem)),
        ("embedding", "Embedding map", _safe(_embedding, group, meta, targets)),
    ]
    for name, folder in targets:
        sections.append((f"target-{name}", f"Target: {name}", _safe(_target, folder)))
    normative = meta.get("normative") if "normative" in meta else True
    sections += [
        ("normative", "Normative deviation", _safe(_normative, group / "normative")
         if normative else h.note("No normative scores in this run (no --reference, or it "
                                   "failed: see the failures under Cohort).", "info")),
        ("qcfc", "QC-FC", _safe(_qcfc, group, meta)),
        ("exclusions", "Run exclusions", _safe(_exclusions, group)),
    ]
    body = "\n".join(h.section(title, inner, anchor) for anchor, title, inner in sections)
    toc = [(anchor, title) for anchor, title, _ in sections]
    model = meta.get("model")
    model_text = (model.get("name") if isinstance(model, dict) else model) or "no model"
    subtitle = f"{output_dir} · model {model_text}"
    text = h.page("bidsfm group report", subtitle, body, toc)
    return h.write_page(output_dir / "group.html", text)


def _target_columns(meta: dict[str, Any], targets: list[tuple[str, Path]]
                    ) -> list[tuple[str, Path | None]]:
    """(participants.tsv column, target folder) of every target, folders first."""
    out: list[tuple[str, Path | None]] = []
    for label, folder in targets:
        info, _ = read_json(folder / "metrics.json")
        column = (info or {}).get("target") or (info or {}).get("target_column") or label
        out.append((str(column), folder))
    listed = meta.get("targets")
    for t in listed if isinstance(listed, list) else []:
        column = t.get("column") if isinstance(t, dict) else t
        if column is not None and str(column) not in [c for c, _ in out]:
            out.append((str(column), None))
    return out


def _safe(builder, *args: Any) -> str:
    """A section's HTML, or a note naming the error: one bad table never loses the report."""
    try:
        return builder(*args)
    except Exception as exc:  # a damaged or unexpected table: say so in its section
        text = str(exc).splitlines()[0] if str(exc) else ""
        return h.note(f"This section could not be built ({type(exc).__name__}"
                      f"{': ' + text if text else ''}).", "bad")


def _target_dirs(group: Path, meta: dict[str, Any] | None = None) -> list[tuple[str, Path]]:
    """Target folders of the run described by group.json (all ``target-*`` without it).

    A ``target-*`` folder that group.json does not list was left by an earlier run with other
    ``--target`` options (the group level removes those; this also covers older outputs).
    """
    listed = (meta or {}).get("targets")
    if isinstance(listed, list):
        folders = [str(t.get("folder")) for t in listed if isinstance(t, dict)
                   and t.get("folder")]
        return [(f[len("target-"):], group / f) for f in folders
                if f.startswith("target-") and (group / f).is_dir()]
    out = []
    for folder in sorted(group.glob("target-*")):
        if folder.is_dir():
            out.append((folder.name[len("target-"):], folder))
    return out


def _missing(path: Path, problem: str | None, what: str) -> str:
    text = problem or f"{path.name}: not found"
    return h.note(f"{what} omitted — {text} (in {path.parent}).", "warn")


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, dict):
        text = ", ".join(f"{k}: {_short(v, 40)}" for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        text = ", ".join(_short(v, 40) for v in value)
    else:
        text = h.fmt(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _flat(d: dict[str, Any], skip: tuple[str, ...] = (), limit: int = 300
          ) -> list[tuple[str, str]]:
    """Key/value rows of a JSON object; nested objects become ``key · subkey`` rows."""
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        if key in skip:
            continue
        name = str(key).replace("_", " ")
        if isinstance(value, dict) and value:
            rows += [(f"{name} · {k}", v) for k, v in _flat(value, (), limit)]
        else:
            rows.append((name, _short(value, limit)))
    return rows


def _cohort(group: Path, meta: dict[str, Any], problem: str | None) -> str:
    parts = []
    if problem:
        parts.append(_missing(group / "group.json", problem, "Run description"))
    else:
        failures = meta.get("failures")
        if isinstance(failures, list) and failures:
            items = "".join(f"<li>{h.esc(f)}</li>" for f in failures)
            parts.append('<div class="note bad">The group level reported '
                         f'{len(failures)} failure(s):<ul class="failures">{items}</ul></div>')
        harm = meta.get("harmonization")
        if isinstance(harm, dict) and harm.get("method"):
            parts.append(h.note(
                f"Site harmonisation: the embeddings were harmonised across "
                f"'{harm.get('column')}' by {harm.get('method')} "
                f"({harm.get('n_sites')} sites, {harm.get('n_adjusted')} participants) before "
                "the heads and normative scores, without labels.", "info"))
        targets = meta.get("targets")
        rows = _flat(meta, ("options", "failures", "targets"))
        if isinstance(targets, list):
            rows.append(("targets", ", ".join(
                str(t.get("column")) + (f" ({t.get('task_type')})" if t.get("task_type") else "")
                if isinstance(t, dict) else str(t) for t in targets) or "none"))
        parts.append(h.kv_table(rows))
        if isinstance(meta.get("options"), dict):
            parts.append("<h4>Options</h4>" + h.kv_table(_flat(meta["options"])))
    qc, qc_problem = read_tsv(group / group_table_name("runs_qc"))
    if qc is None:
        parts.append(_missing(group / group_table_name("runs_qc"), qc_problem, "Run QC summary"))
        return "".join(parts)
    n_part = qc["participant_id"].nunique() if "participant_id" in qc else "n/a"
    rows = []
    by = "atlas" if "atlas" in qc else None
    for atlas, sub in (qc.groupby(by) if by else [("", qc)]):
        status = sub["status"].astype(str) if "status" in sub else None
        counts = status.value_counts().to_dict() if status is not None else {}
        fd = pd.to_numeric(sub["mean_fd"], errors="coerce") if "mean_fd" in sub else None
        rows.append([atlas, len(sub), counts.get("ok", 0), counts.get("skipped", 0),
                     counts.get("error", 0),
                     float(np.nanmedian(fd)) if fd is not None and fd.notna().any() else None])
    parts.append(f"<h4>Runs</h4><p>{h.esc(n_part)} participant(s), {len(qc)} run x atlas "
                 "row(s) in <code>group_runs_qc.tsv</code>.</p>")
    parts.append(h.table(["atlas", "runs", "ok", "skipped", "error", "median mean FD (mm)"],
                         rows))
    all_fd = pd.to_numeric(qc["mean_fd"], errors="coerce") if "mean_fd" in qc else None
    if all_fd is not None and all_fd.notna().any():
        png = figures.histogram(all_fd.dropna().to_numpy(dtype=float),
                                "Mean framewise displacement per run", "mean FD (mm)")
        parts.append(h.figure(png, "mean FD histogram", "Distribution of the runs' mean "
                              "framewise displacement (from fMRIPrep's confounds)."))
    return "".join(parts)


def _participants_table(meta: dict[str, Any]):
    path = meta.get("participants_tsv")
    if not path:
        return None, "group.json gives no participants_tsv"
    frame, problem = read_tsv(Path(path), dtype=str)
    if frame is None or "participant_id" not in frame:
        return None, problem or f"{Path(path).name}: no participant_id column"
    frame["participant_id"] = [p if p.startswith("sub-") else f"sub-{p}"
                               for p in frame["participant_id"].astype(str)]
    return frame.drop_duplicates("participant_id").set_index("participant_id"), None


def _target_labels(name: str, folder: Path | None, participants) -> tuple[dict, str]:
    """Per-participant values of a target and whether they are categorical or continuous."""
    values: dict[str, Any] = {}
    kind = ""
    if folder is not None:
        info, _ = read_json(folder / "metrics.json")
        task = str(_first(info or {}, ("task_type", "task", "type", "kind")) or "")
        if task:
            kind = "continuous" if task.startswith(("cont", "regr")) else "categorical"
    if participants is not None and name in participants.columns:
        for pid, val in participants[name].items():
            if isinstance(val, str) and val not in ("", "n/a"):
                values[pid] = val
    elif folder is not None:
        preds, _ = read_tsv(folder / "predictions.tsv", dtype={"participant_id": str})
        if preds is not None and "true" in preds:
            values = {p: v for p, v in zip(preds["participant_id"], preds["true"],
                                                  strict=True)
                      if not (isinstance(v, float) and np.isnan(v))}
    if not kind:
        numeric = [_as_float(v) for v in values.values()]
        ok = [v for v in numeric if v is not None]
        kind = ("continuous" if values and len(ok) == len(numeric) and len(set(ok)) > 5
                else "categorical")
    if kind == "continuous":
        values = {k: _as_float(v) for k, v in values.items() if _as_float(v) is not None}
    return values, kind


def _as_float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        if d.get(k) not in (None, ""):
            return d[k]
    return None


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal-component scores of the rows of ``x`` and their variance fractions.

    Columns are centred (not scaled); missing values are replaced by the column mean. Uses the
    SVD of the centred matrix, so the result equals scikit-learn's ``PCA(2)`` up to sign.

    Parameters
    ----------
    x : np.ndarray
        Data, shape (n_samples, n_features), n_samples >= 2.

    Returns
    -------
    scores : np.ndarray
        Shape (n_samples, 2) (second column zero if only one component exists).
    explained : np.ndarray
        Fraction of the total variance of each of the two components.
    """
    x = np.asarray(x, dtype=float)
    mean = np.nanmean(np.where(np.isfinite(x), x, np.nan), axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    x = np.where(np.isfinite(x), x, mean)
    xc = x - mean
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    scores = np.zeros((x.shape[0], 2))
    k = min(2, s.size)
    scores[:, :k] = u[:, :k] * s[:k]
    var = s ** 2
    explained = np.zeros(2)
    if var.sum() > 0:
        explained[:k] = var[:k] / var.sum()
    return scores, explained


def _embedding(group: Path, meta: dict[str, Any], targets: list[tuple[str, Path]]) -> str:
    files = sorted(group.glob(group_table_name("subjects_embedding", model="*")))
    if not files:
        return _missing(group / group_table_name("subjects_embedding", model="<MODEL>"), None,
                        "Embedding map")
    participants, p_problem = _participants_table(meta)
    columns = _target_columns(meta, targets)
    parts = []
    for path in files:
        model = entities(path.name).get("desc", "?")
        frame, problem = read_tsv(path, dtype={"participant_id": str})
        if frame is None or "participant_id" not in frame:
            parts.append(_missing(path, problem or "no participant_id column", "Embedding map"))
            continue
        cols = [c for c in frame.columns if c not in ("participant_id", "n_runs")]
        if len(frame) < 3 or not cols:
            parts.append(h.note(f"{path.name}: {len(frame)} participant(s); the embedding map "
                                "needs at least 3.", "warn"))
            continue
        xy, explained = pca_2d(frame[cols].to_numpy(dtype=float))
        pids = list(frame["participant_id"])
        panels = []
        for column, folder in columns:
            values, kind = _target_labels(column, folder, participants)
            panels.append((column, [values.get(p) for p in pids], kind))
        if not panels:
            panels = [("participants", ["all"] * len(pids), "none")]
        png = figures.embedding_map(xy, panels, explained)
        caption = (f"PCA of the {len(pids)} participants' embeddings ({model}, runs averaged, "
                   f"{len(cols)} dimensions), " + (
                       "one panel per target coloured by its value; grey crosses: participants "
                       "without a label." if columns else "no target given."))
        parts.append(h.figure(png, f"embedding map {model}", caption))
    if participants is None and columns:
        parts.append(h.note(f"participants.tsv not used ({p_problem}); colours come from the "
                            "targets' prediction tables.", "info"))
    return "".join(parts)


def _target(folder: Path) -> str:
    parts = []
    info, problem = read_json(folder / "metrics.json")
    if info is None:
        parts.append(_missing(folder / "metrics.json", problem, "Target description"))
    else:
        statement = _first(info, ("uncertainty", "uncertainty_statement"))
        parts.append(h.kv_table(_flat(info, ("metrics", "uncertainty",
                                             "uncertainty_statement"))))
        if statement:
            parts.append(h.note(f"Uncertainty: {statement}", "warn"))
    metrics, problem = read_tsv(folder / "metrics.tsv")
    if metrics is None:
        parts.append(_missing(folder / "metrics.tsv", problem, "Metric table"))
    else:
        rows = [[r.get("metric"), r.get("value"), r.get("ci_low"), r.get("ci_high")]
                for r in metrics.to_dict("records")]
        parts.append("<h4>Out-of-fold metrics</h4>" + h.table(
            ["metric", "value", "95% CI low", "95% CI high"], rows))
    figs = [p for p in (folder / "figures" / "roc.png", folder / "figures" / "scatter.png")
            if p.is_file()]
    grid = []
    for fig in figs:
        what = "ROC curve" if fig.stem == "roc" else "predicted vs true"
        grid.append(h.figure_file(fig, what, f"{what} of the out-of-fold predictions."))
    if not figs:
        grid.append(_missing(folder / "figures" / "roc.png", "no roc.png or scatter.png",
                             "Figure"))
    grid.append(_attention(folder / "attention.tsv"))
    parts.append('<div class="grid">' + "".join(grid) + "</div>")
    head = folder / "head"
    if (head / "weights.safetensors").is_file():
        parts.append(f"<p>Fitted head: <code>{h.esc(head)}</code> (use it at the participant "
                     "level with <code>--heads</code>).</p>")
    return "".join(parts)


def _attention(path: Path) -> str:
    att, problem = read_tsv(path)
    if att is None or "attention" not in att or "name" not in att:
        return "<div>" + _missing(path, problem or "no name/attention column",
                                  "Attention") + "</div>"
    vals = att.set_index("name")["attention"].astype(float).dropna()
    top = vals.reindex(vals.abs().sort_values(ascending=False).index)[:10]
    rows = [[i + 1, name, val] for i, (name, val) in enumerate(top.items())]
    return ("<div><h4>Top ROIs by |attention|</h4>"
            + h.table(["rank", "ROI", "attention"], rows) + "</div>")


def _normative(folder: Path) -> str:
    parts = []
    method, _ = read_json(folder / "method.json")
    if method:
        parts.append(h.kv_table(_flat(method, limit=400)))
    dev, problem = read_tsv(folder / "deviation.tsv", dtype={"participant_id": str})
    if dev is None or "score" not in dev:
        parts.append(_missing(folder / "deviation.tsv", problem or "no score column",
                              "Normative deviation"))
        return "".join(parts)
    score = dev["score"].astype(float)
    ref = dev["is_reference"].astype(str).str.lower().isin(("true", "1", "yes")) \
        if "is_reference" in dev else None
    groups = None
    if ref is not None and ref.any():
        groups = {"reference (out-of-sample)": score[ref].to_numpy(),
                  "others": score[~ref].to_numpy()}
    png = figures.histogram(score.to_numpy(), "Deviation from the reference", "score",
                            groups=groups)
    grid = [h.figure(png, "deviation histogram", "Deviation scores of every participant "
                     "(reference participants scored without themselves).")]
    top = dev.assign(_s=score).sort_values("_s", ascending=False).head(10)
    cols = [c for c in ("participant_id", "is_reference", "score", "percentile", "p")
            if c in dev]
    contrib, _ = read_tsv(folder / "roi_contributions.tsv", dtype={"participant_id": str})
    rows = []
    for rec in top.to_dict("records"):
        row = [rec.get(c) for c in cols]
        if contrib is not None and "participant_id" in contrib:
            match = contrib[contrib["participant_id"] == rec.get("participant_id")]
            if len(match):
                vals = match.drop(columns="participant_id").iloc[0].astype(float).dropna()
                row.append(", ".join(vals.sort_values(ascending=False).index[:3]))
        rows.append(row)
    header = cols + (["top ROIs"] if rows and len(rows[0]) > len(cols) else [])
    grid.append("<div><h4>Most deviant participants</h4>" + h.table(header, rows) + "</div>")
    parts.append('<div class="grid">' + "".join(grid) + "</div>")
    return "".join(parts)


def _qcfc(group: Path, meta: dict[str, Any] | None = None) -> str:
    files = sorted(group.glob(group_table_name("qcfc", atlas="*")))
    listed = (meta or {}).get("qcfc")
    if isinstance(listed, dict):  # only the atlases of this run (not tables left by another)
        files = [f for f in files if entities(f.name).get(ATLAS_ENTITY) in listed]
    if not files:
        return _missing(group / group_table_name("qcfc", atlas="<ATLAS>"), None, "QC-FC")
    parts = []
    for path in files:
        atlas = entities(path.name).get(ATLAS_ENTITY, "?")
        table, problem = read_tsv(path)
        info, _ = read_json(path.with_suffix(".json"))
        if table is None or "r" not in table:
            parts.append(_missing(path, problem or "no r column", f"QC-FC ({atlas})"))
            continue
        r = table["r"].to_numpy(dtype=float)
        finite = r[np.isfinite(r)]
        med = float(np.median(np.abs(finite))) if finite.size else float("nan")
        png = figures.histogram(r, f"QC-FC, {atlas}: correlation of each edge with mean FD",
                                "r (edge FC vs mean FD across participants)", vline=0.0)
        grid = [h.figure(png, f"QC-FC histogram {atlas}",
                         f"{finite.size} edges; median |r| = {med:.3f}.")]
        pairs = [("edges", finite.size), ("median |r| (from the table)", med)]
        if info:
            pairs += _flat(info)
        grid.append("<div>" + h.kv_table(pairs) + "</div>")
        parts.append(f"<h3>{h.esc(atlas)}</h3>" + '<div class="grid">' + "".join(grid)
                     + "</div>")
    return "".join(parts)


def _exclusions(group: Path) -> str:
    path = group / "group_exclusions.tsv"
    table, problem = read_tsv(path, dtype=str)
    if table is None:
        return _missing(path, problem, "Exclusions")
    if not len(table):
        return "<p>No run was excluded.</p>"
    parts = []
    if "reason" in table:
        counts = table.fillna("n/a").groupby(
            [c for c in ("stage", "status") if c in table] + ["reason"]).size()
        rows = [list(k if isinstance(k, tuple) else (k,)) + [v] for k, v in counts.items()]
        header = [c for c in ("stage", "status") if c in table] + ["reason", "runs"]
        parts.append("<h4>By reason</h4>" + h.table(header, rows[:MAX_ROWS]))
    cols = list(table.columns)
    status_col = cols.index("status") if "status" in cols else -1
    rows = []
    for rec in table.head(MAX_ROWS).to_dict("records"):
        row = [rec.get(c) for c in cols]
        if status_col >= 0:
            row[status_col] = h.status_span(row[status_col])
        rows.append(row)
    parts.append(f"<h4>Excluded runs ({len(table)})</h4>"
                 + h.table(cols, rows, raw_columns=(status_col,) if status_col >= 0 else ()))
    if len(table) > MAX_ROWS:
        parts.append(h.note(f"First {MAX_ROWS} of {len(table)} rows; the full table is "
                            f"{path}.", "info"))
    return "".join(parts)
