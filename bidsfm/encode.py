"""Encode all runs of a participant with a foundation model and write its derivatives.

Runs whose connectivity was written (status ``ok``) are read back from their FC TSVs (in the
model's atlas), encoded in one batch (CPU or GPU), and for each run bidsfm writes:

- ``*_desc-<MODEL>_embedding.tsv`` (+ .json): one row, the embedding (columns ``<ROI>_<k>``:
  the BrainMass embedding is an 8-dimensional readout per ROI token);
- ``*_desc-<MODEL>_predictions.tsv``: one row per head (``head``, ``value``, ``probability``);
- ``*_desc-<MODEL>_attention.tsv``: one row per ROI (``name``), one column per head
  (integrated-gradients attribution, see :mod:`bidsfm.models.attention`);
- ``*_stat-attention_desc-<MODEL>_statmap.nii.gz`` (+ .json): the same scores painted on the
  run's grid, one volume per head;
- ``sub-X/figures/*_desc-<MODEL>_attention.png``: glass brain of the statmap (one figure per
  run, a row per head; skipped with ``--no-figures``).

Runs that cannot be encoded (no connectivity, fewer volumes than the model's minimum) get the
reason in the ``model_status``/``model_reason`` columns of their QC table.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from .derivatives import bids_uri
from .discovery import BoldRun
from .pipeline import output_paths
from .utils import atomic_path, write_bytes_atomic, write_frame_atomic, write_json_atomic

LOGGER = logging.getLogger("bidsfm.encode")


def model_paths(run: BoldRun, model_name: str, atlas: str, output_dir: str | Path
                ) -> dict[str, Path]:
    """Paths of a run's model derivatives (see :mod:`bidsfm.derivatives`)."""
    from .derivatives import model_output_paths

    return model_output_paths(run, model_name, atlas, output_dir)


def read_fc(path: Path, roi_names: list[str]) -> np.ndarray:
    """A run's FC matrix in the model's ROI order, float32 (``n/a`` = NaN)."""
    from .derivatives import read_relmat

    return read_relmat(path, roi_names)[1].astype(np.float32)


#: share of the model's ROIs that must carry signal when the card states none
DEFAULT_MIN_VALID_ROI_FRACTION = 0.25


def usable_roi_fraction(fc: np.ndarray) -> float:
    """Share of ROIs with at least one finite, non-zero correlation to another ROI.

    ROIs outside the field of view, ``n/a`` (low coverage) or with a constant signal have no such
    correlation; a run with constant BOLD or a mask that covers no ROI has none at all. The
    rule is the encoders' own (:func:`bidsfm.models.brainmass.infer_valid_rois`).
    """
    import torch

    from .models.brainmass import infer_valid_rois

    if not np.size(fc):
        return 0.0
    return float(infer_valid_rois(torch.as_tensor(np.asarray(fc))).double().mean())


def _refuse_without_signal(todo: list, model, names: list[str], results: list
                           ) -> tuple[list, list[np.ndarray]]:
    """Leave out runs whose usable ROIs fall below the card's ``input.min_valid_roi_fraction``.

    Such a run would be encoded almost entirely from mask tokens and give a confident
    prediction about nothing; its QC table says why instead (``model_status`` skipped).
    Returns the runs kept and their FC matrices (read once, reused by FC models).
    """
    need = float(model.card.input.get("min_valid_roi_fraction",
                                      DEFAULT_MIN_VALID_ROI_FRACTION))
    keep, fcs = [], []
    for item in todo:
        fc = read_fc(item[2], names)
        frac = usable_roi_fraction(fc)
        if frac < need:
            reason = (f"only {frac:.0%} of the model's {len(names)} ROIs carry signal (no "
                      f"finite, non-zero correlation), below the {need:.0%} its card requires; "
                      "no model outputs written (check the mask's coverage and the BOLD data)")
            LOGGER.warning("%s: %s", item[0].prefix, reason)
            results.append({"run": item[0].prefix, "status": "skipped", "reason": reason,
                            "_qc": item[4]})
        else:
            keep.append(item)
            fcs.append(fc)
    return keep, fcs


def _input_hash(model_sha: str, fc_path: Path, extra: str = "") -> str:
    """Hash of the model, extra heads and the FC file's content (same in any output folder)."""
    from .utils import inputs_hash, sha256_file

    return inputs_hash(f"{model_sha}|{sha256_file(fc_path)}" + (f"|{extra}" if extra else ""))


def _extra_heads_key(model) -> str:
    """Names and weight hashes of heads added with ``--heads`` (not in the model card)."""
    bundled = set(model.card.heads)
    return "|".join(f"{n}:{h.info.get('sha256', '')}" for n, h in model.heads.items()
                    if n not in bundled)


def _prediction_row(head, name: str, value) -> dict[str, Any]:
    """One row of the predictions TSV for a head's output on one run."""
    from .models.heads import MULTICLASS

    if head.kind == "binary":
        value = float(value)
        return {"head": name, "value": head.labels[int(value >= 0.5)], "probability": value,
                "probability_of": head.labels[1]}
    if head.kind == MULTICLASS:
        k = int(np.argmax(value))
        return {"head": name, "value": head.labels[k], "probability": float(value[k]),
                "probability_of": head.labels[k]}
    return {"head": name, "value": f"{float(value):.6g}", "probability": np.nan,
            "probability_of": np.nan}


def _head_attributions(model, fcs, preds: dict[str, np.ndarray],
                       steps: int) -> dict[str, np.ndarray]:
    """(B, R) attribution of every head, all heads from shared forward passes
    (:meth:`FoundationModel.attributions`); for a multi-class head, of each run's predicted
    class."""
    from .models.heads import MULTICLASS

    spec: dict[str, Any] = {}
    for name, head in model.heads.items():
        if head.kind == MULTICLASS:
            classes = {int(k): head.class_head(int(k))
                       for k in np.unique(np.asarray(preds[name]).argmax(axis=1))}
            spec[name] = [classes[int(k)] for k in np.asarray(preds[name]).argmax(axis=1)]
        else:
            spec[name] = head
    return model.attributions(fcs, spec, steps=steps) if spec else {}


def _complete(paths: dict[str, Path], phash: str) -> bool:
    try:
        meta = json.loads(paths["embedding_json"].read_text())
    except (OSError, ValueError):
        return False
    return meta.get("ParametersHash") == phash and all(p.is_file() for p in paths.values())


#: runs encoded (and their outputs written) together: a job that encodes a whole cohort on a
#: GPU keeps this many runs' inputs and attributions in memory, and what it has finished stays
#: written if it is stopped. A participant's runs (on the CPU) are far fewer.
RUNS_PER_CHUNK = 256


def encode_participant(runs: list[BoldRun], model, output_dir: str | Path,
                       attention_steps: int = 32, batch_size: int = 64,
                       figures: bool = True) -> list[dict[str, Any]]:
    """Encode every processed run of one participant in one batch and write the outputs.

    Parameters
    ----------
    runs : list of BoldRun
        The participant's runs (their FC outputs must exist).
    model : bidsfm.models.card.Model
        Loaded model (:func:`bidsfm.models.registry.load_model`).
    output_dir : str or Path
        bidsfm derivatives root.
    attention_steps : int
        Integrated-gradients steps.
    batch_size : int
        FC matrices per forward pass.
    figures : bool
        Write the glass-brain PNGs.

    Returns
    -------
    list of dict
        One per run: ``run``, ``status`` (``ok``, ``reused``, ``skipped``), ``reason``.
    """
    results: list[dict[str, Any]] = []
    try:
        return _encode(runs, model, output_dir, attention_steps, batch_size, figures, results)
    finally:
        for res in results:
            _record_in_qc(res, model.name)


def _record_in_qc(res: dict[str, Any], model_name: str) -> None:
    """Add the model's status and reason to the run's QC table (atomically)."""
    import pandas as pd

    qc = res.pop("_qc", None)
    if qc is None or not Path(qc).is_file():
        return
    if res["status"] == "skipped":  # no model outputs of an earlier attempt may stay behind
        from .derivatives import remove_model_outputs

        remove_model_outputs(qc, model_name)
    table = pd.read_csv(qc, sep="\t", keep_default_na=False)
    table["model"] = model_name
    # outputs reused from an earlier (possibly killed) job are the same files a clean run
    # writes: the QC table says "ok" either way, so a resumed job equals a clean one
    table["model_status"] = "ok" if res["status"] == "reused" else res["status"]
    table["model_reason"] = res.get("reason") or "n/a"
    write_frame_atomic(qc, table.replace("", "n/a"))


def _encode(runs, model, output_dir, attention_steps, batch_size, figures, results):
    atlas = model.atlas
    todo: list[tuple[BoldRun, dict[str, Path], Path, str, Path]] = []
    for run in runs:
        paths = output_paths(run, atlas, output_dir)
        try:
            qc = json.loads(paths["qc_json"].read_text())
        except (OSError, ValueError):
            qc = {}
        if qc.get("Status") != "ok":
            results.append({"run": run.prefix, "status": "skipped",
                            "reason": "no connectivity for this run (see its QC table)",
                            "_qc": paths["qc"]})
            continue
        n_ret = len(json.loads(paths["timeseries_json"].read_text()).get("RetainedVolumes", []))
        if n_ret < model.min_volumes:
            reason = (f"{n_ret} retained volumes, below the model's minimum of "
                      f"{model.min_volumes}; no embedding written")
            LOGGER.warning("%s: %s", run.prefix, reason)
            results.append({"run": run.prefix, "status": "skipped", "reason": reason,
                            "_qc": paths["qc"]})
            continue
        mpaths = model_paths(run, model.name, atlas, output_dir)
        phash = _input_hash(model.card.get("sha256", ""), paths["fc"], _extra_heads_key(model)
                            + _precision_key(model))
        if _complete(mpaths, phash):
            if figures:  # outputs of a --no-figures job: draw the missing PNG from the statmap
                _redraw_missing_figure(run, model, mpaths, output_dir)
            results.append({"run": run.prefix, "status": "reused", "reason": "",
                            "_qc": paths["qc"]})
            continue
        todo.append((run, mpaths, paths["fc"], phash, paths["qc"]))
    for start in range(0, len(todo), RUNS_PER_CHUNK):
        _encode_chunk(todo[start:start + RUNS_PER_CHUNK], model, output_dir, attention_steps,
                      batch_size, figures, results)
    return results


def _encode_chunk(todo, model, output_dir, attention_steps, batch_size, figures,
                  results) -> None:
    """Encode and write the outputs of some runs (at most :data:`RUNS_PER_CHUNK`), adding a
    result per run to ``results``."""
    import pandas as pd

    atlas, names = model.atlas, model.roi_names
    todo, fc_list = _refuse_without_signal(todo, model, names, results)
    if not todo:
        return

    # the model's inputs: FC models take the FC matrices just read; time-series models read
    # each run's denoised series + RepetitionTime (next to the FC) and may leave runs out
    fcs, short = model.read_inputs([item[2] for item in todo], fc_list)
    for j in sorted(short, reverse=True):
        LOGGER.warning("%s: %s", todo[j][0].prefix, short[j])
        results.append({"run": todo[j][0].prefix, "status": "skipped", "reason": short[j],
                        "_qc": todo.pop(j)[4]})
    if not todo:
        return
    emb = model.encode(fcs, batch_size=batch_size)
    preds = model.head_outputs(emb)
    heads = list(model.heads)
    attr = _head_attributions(model, fcs, preds, attention_steps)
    emb_cols = model.embedding_columns(emb.shape[1])
    from .derivatives import write_tsv_atomic

    for i, (run, mpaths, fc_path, phash, qc_path) in enumerate(todo):
        write_tsv_atomic(mpaths["embedding"], emb[i][None, :], emb_cols)
        rows = [_prediction_row(model.heads[h], h, preds[h][i]) for h in heads]
        write_frame_atomic(mpaths["predictions"], pd.DataFrame(
            rows, columns=["head", "value", "probability", "probability_of"]),
            float_format="%.6g", na_rep="n/a")
        att = np.stack([attr[h][i] for h in heads]) if heads else np.zeros((0, len(names)))
        write_tsv_atomic(mpaths["attention"], att.T, heads, index=names, index_name="name")
        statmap = _write_statmap(run, model, att, heads, mpaths)
        if figures and heads:
            _write_figure(statmap, heads, run, model.name, model.atlas, output_dir)
        else:  # --no-figures: an earlier run's PNG would show another statmap
            _remove_figure(run, model.name, model.atlas, output_dir)
        rel = os.path.relpath(fc_path, output_dir)
        write_json_atomic(mpaths["embedding_json"], {
            "Model": model.card.provenance("name", "version", "family", "sha256"),
            "Atlas": atlas, "EmbeddingSize": int(emb.shape[1]),
            "Sources": [bids_uri("", rel)], "ParametersHash": phash,
            "Heads": {h: model.heads[h].meta() for h in heads},
            "Attribution": model.attribution_method(attention_steps),
            "Precision": model.precision,
        })
        results.append({"run": run.prefix, "status": "ok", "reason": "", "_qc": qc_path})


def _precision_key(model) -> str:
    """Part of the parameters hash for the inference precision (empty for float32, so that
    float32 outputs written before ``--precision`` existed are reused)."""
    precision = model.precision
    return "" if precision == "float32" else f"|precision:{precision}"


def _write_statmap(run: BoldRun, model, att: np.ndarray, heads: list[str],
                   mpaths: dict[str, Path]):
    """Paint per-ROI scores on the run's grid (one volume per head)."""
    import nibabel as nib

    from .atlases import resample_labels, resolve_atlas

    img = nib.load(run.bold)
    atlas = resolve_atlas(model.atlas_spec, space=run.space)
    labels, _ = resample_labels(atlas, img.affine, tuple(img.shape[:3]), target_space=run.space)
    index = atlas.labels["index"].to_numpy()
    lookup = np.zeros(int(max(index.max(), labels.max())) + 1, dtype=np.int64)
    lookup[index] = np.arange(1, index.size + 1)
    pos = lookup[np.clip(labels, 0, None)]
    vols = np.zeros(labels.shape + (max(len(heads), 1),), dtype=np.float32)
    for k in range(len(heads)):
        table = np.concatenate([[0.0], np.nan_to_num(att[k], nan=0.0)]).astype(np.float32)
        vols[..., k] = table[pos]
    out = nib.Nifti1Image(vols, img.affine)
    out.header.set_xyzt_units("mm")
    with atomic_path(mpaths["statmap"]) as tmp:
        nib.save(out, str(tmp))
    write_json_atomic(mpaths["statmap_json"], {
        "Heads": heads, "Description": "integrated-gradients attribution per ROI, one volume "
        "per head (in the order of Heads), painted on the BOLD grid; 0 outside ROIs and for n/a "
        "ROIs", "Model": model.name})
    return out


def _write_figure(statmap, heads: list[str], run: BoldRun, model_name: str, atlas: str,
                  output_dir: str | Path) -> Path:
    """Glass brain of the attention statmap, one row per head, in sub-X/figures/.

    Drawn from the statmap in memory with plain matplotlib (:func:`bidsfm.reports.figures.
    glass_brain_png`: signed maximum-intensity projections on a brain outline), no nilearn.
    """
    from .derivatives import figure_path
    from .reports.figures import glass_brain_png
    from .utils import remove_stale_temps

    path = figure_path(run, model_name, atlas, output_dir)
    remove_stale_temps(path.parent, run.prefix)
    png = glass_brain_png(np.asarray(statmap.dataobj), statmap.affine, heads,
                          f"ROI attribution ({model_name})")
    return write_bytes_atomic(path, png)


def _remove_figure(run: BoldRun, model_name: str, atlas: str, output_dir: str | Path) -> None:
    """Remove the run's attention PNG (outputs rewritten with ``--no-figures``)."""
    from .derivatives import figure_path

    figure_path(run, model_name, atlas, output_dir).unlink(missing_ok=True)


def _redraw_missing_figure(run: BoldRun, model, mpaths: dict[str, Path],
                           output_dir: str | Path) -> None:
    """Draw the PNG of reused model outputs from their statmap when it is missing."""
    import nibabel as nib

    from .derivatives import figure_path

    if figure_path(run, model.name, model.atlas, output_dir).is_file():
        return
    try:
        heads = [str(h) for h in json.loads(mpaths["statmap_json"].read_text())["Heads"]]
        if heads:
            _write_figure(nib.load(str(mpaths["statmap"])), heads, run, model.name,
                          model.atlas, output_dir)
    except Exception as exc:  # a picture never fails the run (e.g. an unreadable statmap)
        LOGGER.warning("%s: the attention figure could not be drawn (%s: %s)", run.prefix,
                       type(exc).__name__, exc)
