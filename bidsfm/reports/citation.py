"""``OUTPUT_DIR/logs/CITATION.md``: a methods paragraph written from the options actually used.

The text describes only what was run (atlas, denoising strategy and thresholds, filters, the
model and its training data, group analyses) and cites the matching papers and software, with
the installed versions. It is a draft for a methods section: users should check it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from ..utils import atomic_path
from .references import REFERENCES

#: alternative spellings accepted in ``options`` (CLI names -> ProcessingOptions names)
ALIASES = {"atlas": "atlases", "fd_thresh": "fd_threshold", "dvars_thresh": "dvars_threshold",
           "denoise_strategy": "strategy", "nuisance_regressors": "strategy",
           "target": "targets", "level": "analysis_level"}

_MOTION = {"basic": "the 6 motion parameters",
           "derivatives": "the 6 motion parameters and their temporal derivatives (12)",
           "power2": "the 6 motion parameters and their squares (12)",
           "full": "the 6 motion parameters, their temporal derivatives and the squares of "
                   "both (24 regressors)"}
_TISSUE = {"basic": "the mean {x}", "derivatives": "the mean {x} with their derivatives",
           "power2": "the mean {x} with their squares",
           "full": "the mean {x} with their derivatives and the squares of both"}
#: options that describe the processing of the runs (recorded in every run's QC JSON)
PROCESSING_KEYS = ("atlases", "strategy", "fd_threshold", "dvars_threshold", "dummy_scans",
                   "lower_bpf", "upper_bpf", "min_time", "min_coverage", "standardize",
                   "detrend")


class _Cites:
    """Collects the references used, in order of first use."""

    def __init__(self) -> None:
        self.used: list[str] = []

    def __call__(self, *keys: str) -> str:
        for k in keys:
            if k not in self.used:
                self.used.append(k)
        return "(" + "; ".join(REFERENCES[k][0] for k in keys) + ")"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "n/a"


def normalize_options(options: dict[str, Any]) -> dict[str, Any]:
    """Map CLI-style option names to the names used here (``atlas`` -> ``atlases`` …)."""
    out: dict[str, Any] = {}
    for key, value in dict(options or {}).items():
        name = ALIASES.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
        out[name] = value
    for key in ("atlases", "targets"):
        if isinstance(out.get(key), str):
            out[key] = [out[key]]
    if "no_qcfc" in out and "qcfc" not in out:
        out["qcfc"] = not out["no_qcfc"]
    return out


def _upstream(output_dir: Path) -> list[dict[str, Any]]:
    try:
        desc = json.loads((output_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return []
    gen = desc.get("GeneratedBy") if isinstance(desc, dict) else None
    return [g for g in (gen or []) if isinstance(g, dict) and g.get("Name") != "bidsfm"]


def _model_card(model: Any) -> Mapping[str, Any] | None:
    """The card of the model used (a dict given in options, or read from the registry)."""
    if isinstance(model, dict):
        if isinstance(model.get("card"), dict):
            return model["card"]
        if "path" not in model:
            return model
        model = model["path"]
    if model in (None, "", "none"):
        return None
    try:
        from ..models.card import DEFAULT_MODEL, list_models, model_dir, read_card

        if model == "auto":
            if DEFAULT_MODEL not in list_models():
                return None
            model = DEFAULT_MODEL
        return read_card(model_dir(str(model)))
    except Exception:  # an unknown model: described by name only
        return {"name": str(model)}


#: registry atlas (name pattern) -> (how to describe it, references to cite)
_ATLAS_WORDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (r"CC200", "the CC200 atlas (200 regions", ("cc200",)),
    (r"Schaefer(\d+)x(\d+)", "the Schaefer 2018 atlas ({0} parcels, {1} networks", ("schaefer",)),
    (r"TianS(\d)", "the Tian subcortex atlas (scale {0}", ("tian",)),
    (r"Gordon333", "the Gordon atlas (333 regions", ("gordon",)),
    (r"Glasser360", "the Glasser HCP-MMP1.0 atlas (360 regions, volumetric", ("glasser",)),
    (r"HarvardOxford(Cort|Sub)", "the Harvard-Oxford {0} atlas (max-probability, 25 %",
     ("desikan2006", "frazier2005", "makris2006", "goldstein2007")),
    (r"AAL116", "the AAL atlas (116 regions", ("aal",)),
    (r"AAL3v1", "the AAL3 atlas (166 regions", ("aal3",)),
    (r"Power264", "the Power atlas (264 spheres", ("power2011",)),
    (r"DiFuMo(\d+)", "the DiFuMo probabilistic atlas ({0} modes, weighted extraction",
     ("difumo",)),
)


def _registry_atlas(name: str, cite: _Cites) -> str | None:
    """Words and citations for a registry atlas name, None for anything else."""
    import re

    from ..atlases import REGISTRY

    for pattern, words, keys in _ATLAS_WORDS:
        m = re.fullmatch(pattern, name)
        if m:
            groups = [{"Cort": "cortical", "Sub": "subcortical"}.get(g, g) for g in m.groups()]
            record = REGISTRY.get(name)
            if record is not None and not record.releases:  # read from a TemplateFlow tree
                keys = (*keys, "templateflow")
            return f"{words.format(*groups)}; {cite(*keys)[1:-1]})"
    return None


def _atlas_sentence(atlases: list[str], cite: _Cites) -> str:
    from ..atlases import canonical_atlas_name

    parts = []
    for spec in atlases:
        name = str(spec).split("=")[0]
        try:
            canonical = canonical_atlas_name(name) if "=" not in str(spec) else None
        except Exception:  # a name the registry refuses: described as given
            canonical = None
        if canonical and "+" in canonical:
            pieces = [_registry_atlas(p, cite) for p in canonical.split("+")]
            parts.append(f"the {canonical} atlas, joining " + ", then ".join(pieces)
                         + " in one parcellation")
            continue
        described = _registry_atlas(canonical, cite) if canonical else None
        low = name.lower()
        if described is not None:
            parts.append(described)
        elif low.startswith("schaefer"):
            parts.append(f"the {name} atlas ({cite('schaefer', 'templateflow')[1:-1]})")
        elif low.startswith("tian"):
            parts.append(f"the {name} subcortical atlas ({cite('tian')[1:-1]})")
        else:
            parts.append(f"a user-provided atlas '{name}' (please cite its source)")
    return " and ".join(parts) if parts else "the requested atlas"


def _denoising(opts: dict[str, Any], cite: _Cites) -> str:
    from ..denoising import get_strategy

    spec = opts.get("strategy", "simple")
    try:
        strat = get_strategy(spec, fd_threshold=opts.get("fd_threshold"),
                             std_dvars_threshold=opts.get("dvars_threshold"))
    except Exception:
        return (f"Confounds were regressed out with the '{spec}' strategy (its definition could "
                "not be read when this text was written). ")
    regs = []
    if strat.motion:
        regs.append(_MOTION.get(strat.motion, strat.motion) + " " + cite("friston24"))
    if strat.wm_csf:
        regs.append(_TISSUE.get(strat.wm_csf, "{x}").format(
            x="white-matter and CSF signals"))
    if strat.global_signal:
        regs.append(_TISSUE.get(strat.global_signal, "{x}").format(x="global signal")
                    .replace("their", "its"))
    if strat.compcor:
        n = "all" if strat.n_compcor == "all" else str(strat.n_compcor)
        regs.append(f"{n} {strat.compcor} CompCor components {cite('compcor')}")
    if strat.high_pass:
        regs.append("fMRIPrep's discrete cosine basis (high-pass filtering)")
    if strat.extra_columns:
        regs.append("the user-selected columns " + ", ".join(strat.extra_columns))
    text = (f"Nuisance signals were removed with the '{strat.name}' denoising strategy, whose "
            f"presets follow nilearn's load_confounds_strategy {cite('wang2024')}")
    text += (": the regressors were " + "; ".join(regs) + ". " if regs
             else ": no confound was regressed. ")
    censor = []
    if strat.fd_threshold:
        censor.append(f"framewise displacement above {strat.fd_threshold:g} mm")
    if strat.std_dvars_threshold:
        censor.append(f"standardised DVARS above {strat.std_dvars_threshold:g}")
    if censor:
        seg = (f", and retained segments shorter than {strat.scrub} volumes were also removed"
               if strat.scrub else "")
        text += (f"Volumes with {' or '.join(censor)} were censored {cite('power2012')}{seg}. ")
    dummy = opts.get("dummy_scans", "auto")
    text += ("Non-steady-state volumes flagged by fMRIPrep were discarded. " if dummy == "auto"
             else f"The first {dummy} volumes were discarded. " if dummy not in (0, "0", None)
             else "")
    lo, hi = opts.get("lower_bpf"), opts.get("upper_bpf")
    if lo or hi:
        band = (f"{lo:g}-{hi:g} Hz band-pass" if lo and hi else
                f"{lo:g} Hz high-pass" if lo else f"{hi:g} Hz low-pass")
        text += f"A Butterworth {band} filter was applied. "
    if opts.get("detrend", True):
        text += "Linear trends were removed. "
    std = opts.get("standardize", "zscore_sample")
    if std == "zscore_sample":
        text += "Each ROI signal was z-scored. "
    elif std == "psc":
        text += "Each ROI signal was expressed as percent signal change. "
    text += ("Confound regression, filtering and censoring were done at the ROI level with "
             "bidsfm's own implementation of the signal cleaning of nilearn "
             f"{cite('nilearn')} (nilearn.signal.clean), tested to give the same values. ")
    return text


def _model_text(card: dict[str, Any], cite: _Cites) -> str:
    name, version = card.get("name", "?"), card.get("version", "")
    family = str(card.get("family", ""))
    text = f"Each run was encoded by the foundation model {name}" + (
        f" version {version}" if version else "")
    if family == "brainmass":
        text += (", a BrainMass-style encoder of the functional-connectivity matrix (FC rows "
                 f"as tokens, Transformer encoder) {cite('brainmass')}")
    elif family == "brainjepa":
        text += (", a Brain-JEPA-style encoder of the ROI time series {cite} ".format(
            cite=cite("brainjepa")).rstrip())
    pre = card.get("pretraining")
    if isinstance(pre, dict) and pre.get("objectives"):
        objectives = " and ".join(str(o) for o in pre["objectives"])
        byol = f" (BYOL: {cite('byol')[1:-1]})" if "byol" in objectives.lower() else ""
        text += f", pretrained with {objectives}{byol}"
    data = card.get("training_data")
    if isinstance(data, dict) and data.get("name"):
        dname = str(data["name"])
        abide = f" {cite('abide', 'abide_pcp')}" if "abide" in dname.lower() else ""
        n = data.get("n_participants")
        text += f" on {dname}" + (f" ({n} participants)" if n else "") + abide
    text += f", implemented in PyTorch {cite('pytorch')}. "
    heads = card.get("heads")
    if isinstance(heads, dict) and heads:
        text += ("Its linear heads (" + ", ".join(heads) + ") gave per-run predictions, which "
                 "are research outputs, not clinical diagnoses; their validation figures are "
                 "in the model card. ")
    text += ("Per-ROI attention maps are integrated-gradients attributions of each head "
             f"{cite('ig')}. ")
    return text


def group_record(output_dir: Path) -> dict[str, Any] | None:
    """What the group level actually did, from ``group/group.json`` and the targets' metrics.

    Returns ``None`` when there is no readable ``group.json``; otherwise a dict with
    ``targets`` (list of ``(column, description)`` for the targets that were analysed),
    ``reference`` (or ``None`` when no normative scores were written), ``qcfc`` (bool) and
    ``harmonization`` (``(method, column)`` or ``None``).
    """
    group = Path(output_dir) / "group"
    try:
        record = json.loads((group / "group.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    targets = []
    for t in record.get("targets") or []:
        if not isinstance(t, dict) or not t.get("column"):
            continue
        desc = str(t.get("task_type") or "")
        try:
            info = json.loads((group / str(t.get("folder", "")) / "metrics.json").read_text())
            cv = info.get("cv") if isinstance(info.get("cv"), dict) else {}
            scheme = cv.get("scheme")
            if scheme:
                desc += f"; {scheme}" + (f", {cv['n_folds']} folds" if cv.get("n_folds")
                                         else "")
        except (OSError, ValueError, AttributeError):
            pass
        targets.append((str(t["column"]), desc))
    normative = record.get("normative")
    reference = normative.get("reference") if isinstance(normative, dict) else None
    harm = record.get("harmonization")
    harmonization = (str(harm.get("method")), str(harm.get("column"))) if isinstance(
        harm, dict) and harm.get("method") else None
    return {"targets": targets, "reference": reference, "qcfc": bool(record.get("qcfc")),
            "harmonization": harmonization}


def _group_text(opts: dict[str, Any], cite: _Cites, record: dict[str, Any] | None) -> str:
    if record is not None:
        targets = [f"{c} ({d})" if d else c for c, d in record["targets"]]
        reference = record["reference"]
        qcfc = record["qcfc"]
        harmonization = record.get("harmonization")
    else:
        targets = [str(t) for t in (opts.get("targets") or [])]
        reference = opts.get("reference")
        qcfc = opts.get("qcfc", True)
        harmonization = ((str(opts.get("harmonize_method") or "combat"), str(opts["harmonize"]))
                         if opts.get("harmonize") else None)
    text = ("At the group level, the participants' outputs were gathered into group tables and "
            "each participant's embedding was the mean of its runs' embeddings. ")
    if harmonization and (targets or reference):
        method, column = harmonization
        if method == "combat":
            text += (f"Site effects ('{column}') were removed from the embeddings with ComBat "
                     f"{cite('combat', 'fortin2017', 'fortin2018')}, as implemented in "
                     f"neuroHarmonize {cite('neuroharmonize')}, with no covariates, fitted on "
                     "all participants without their labels. ")
        else:
            text += (f"Site effects ('{column}') were reduced by centring each site's "
                     "embeddings on the pooled mean, fitted on all participants without their "
                     "labels. ")
    if targets:
        col = opts.get("group_column")
        scheme = (f"cross-validation that never splits a '{col}' group between training and "
                  "test" if col else "k-fold cross-validation")
        text += (f"Prediction heads for {', '.join(targets)} were fitted on the frozen "
                 f"embeddings with scikit-learn {cite('sklearn')} and evaluated with {scheme}; "
                 "metrics of the out-of-fold predictions are given with bootstrap 95% "
                 f"confidence intervals {cite('bootstrap')}, and per-ROI attention of each new "
                 f"head by integrated gradients {cite('ig')}. ")
    if reference:
        text += (f"Normative deviation scores measured each participant's distance from the "
                 f"reference group ({reference}) in embedding space: a Mahalanobis distance "
                 f"with a Ledoit-Wolf shrinkage covariance {cite('ledoitwolf')}, reference "
                 "participants being scored out of sample. ")
    if qcfc:
        text += ("Residual motion effects were assessed with QC-FC, the correlation across "
                 f"participants of each FC edge with mean framewise displacement "
                 f"{cite('power2015', 'ciric2017')}. ")
    return text


def recorded_options(output_dir: Path) -> dict[str, Any]:
    """Processing options and model name recorded by the participant level in ``output_dir``.

    Read from the first run's QC JSON (``Options``) and embedding JSON (``Model``), so that the
    group level, which does not process runs itself, describes what was actually run.
    """
    out: dict[str, Any] = {}
    qc = next(Path(output_dir).glob("sub-*/**/func/*_qc.json"), None)
    emb = next(Path(output_dir).glob("sub-*/**/func/*_desc-*_embedding.json"), None)
    for path, key in ((qc, "Options"), (emb, "Model")):
        try:
            value = json.loads(path.read_text()).get(key) if path else None
        except (OSError, ValueError, AttributeError):
            value = None
        if key == "Options" and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k in PROCESSING_KEYS})
        elif isinstance(value, dict) and value.get("name"):
            out["model"] = value["name"]
    return out


def build_citation(output_dir: Path, options: dict[str, Any]) -> str:
    """Return the Markdown of ``CITATION.md`` for ``options`` (see :func:`write_citation`)."""
    output_dir = Path(output_dir)
    opts = normalize_options(options)
    if not all(k in opts for k in PROCESSING_KEYS) or "model" not in opts:
        recorded = recorded_options(output_dir)
        opts = {**recorded, **opts}
        opts.setdefault("model", None)
    cite = _Cites()
    upstream = _upstream(output_dir)
    fmriprep = next((g for g in upstream if str(g.get("Name", "")).lower() == "fmriprep"), None)
    atlases = [str(a) for a in (opts.get("atlases") or ["CC200"])]
    card = _model_card(opts.get("model"))
    if card and card.get("name") and opts.get("model") is not None:
        opts["model"] = str(card["name"])  # the model's name, not where it is installed
    if card and card.get("atlas"):
        atlas = card["atlas"].get("name") if isinstance(card["atlas"], dict) else card["atlas"]
        if atlas and atlas not in atlases:
            atlases.append(str(atlas))

    if fmriprep:
        ver = fmriprep.get("Version")
        intro = (f"Functional MRI data preprocessed with fMRIPrep{' ' + ver if ver else ''} "
                 f"{cite('fmriprep')} were")
    else:
        intro = "Preprocessed functional MRI data were"
    text = (f"{intro} further processed with bidsfm {__version__}, a BIDS App "
            f"{cite('bids', 'bidsapps')} built on Nipype {_version('nipype')} "
            f"{cite('nipype')}, nilearn {_version('nilearn')} {cite('nilearn')}, PyBIDS "
            f"{_version('pybids')} {cite('pybids')}, NiBabel {_version('nibabel')} "
            f"{cite('nibabel')} and NumPy {_version('numpy')} {cite('numpy')}; its time series, "
            f"coverage and connectivity files are named as XCP-D names them {cite('xcpd')}. ")
    cov = opts.get("min_coverage", 0.5)
    text += (f"For every preprocessed BOLD run, mean time series were extracted from "
             f"{_atlas_sentence(atlases, cite)}; regions with less than {100 * float(cov):g}% "
             "of their voxels inside the run's brain mask were set to missing. ")
    text += _denoising(opts, cite)
    min_time = opts.get("min_time", 60.0)
    if min_time:
        text += f"Runs with less than {float(min_time):g} s of retained data were excluded. "
    text += ("Functional connectivity was the Pearson correlation between ROI time series "
             "(also written Fisher z-transformed). ")
    paragraphs = [text]
    if card:
        paragraphs.append(_model_text(card, cite))
    if opts.get("analysis_level") == "group" or opts.get("targets") or opts.get("reference"):
        record = group_record(output_dir) if opts.get("analysis_level") == "group" else None
        paragraphs.append(_group_text(opts, cite, record))

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Methods and citations", "",
             f"Written by bidsfm {__version__} on {stamp} from the options of this run. It is a "
             "draft for a methods section: check it against your study before publishing.", "",
             "## Methods", ""]
    for para in paragraphs:
        lines += [para.strip(), ""]
    lines += ["## Options used", "", "| option | value |", "| --- | --- |"]
    for key, value in opts.items():
        shown = json.dumps(value, default=str) if not isinstance(value, str) else value
        lines.append(f"| {key} | {shown.replace('|', '/')} |")
    lines += ["", "## Software versions", "", "| package | version |", "| --- | --- |"]
    for dist in ("bidsfm", "nipype", "nilearn", "pybids", "nibabel", "numpy", "scipy",
                 "pandas", "scikit-learn", "torch"):
        lines.append(f"| {dist} | {_version(dist) if dist != 'bidsfm' else __version__} |")
    for g in upstream:
        lines.append(f"| {g.get('Name')} (input) | {g.get('Version', 'n/a')} |")
    lines += ["", "## References", ""]
    for key in cite.used:
        lines.append(f"- {REFERENCES[key][1]}")
    return "\n".join(lines) + "\n"


def write_citation(output_dir: Path, options: dict[str, Any]) -> Path:
    """Write ``OUTPUT_DIR/logs/CITATION.md``: methods text and references for ``options``.

    Parameters
    ----------
    output_dir : Path
        The bidsfm derivatives folder; its ``dataset_description.json`` (when present) tells
        which tool produced the input (fMRIPrep and its version).
    options : dict
        The options used. Recognised keys (CLI spellings such as ``atlas``, ``fd_thresh`` are
        accepted too): ``atlases``, ``strategy``, ``fd_threshold``, ``dvars_threshold``,
        ``dummy_scans``, ``lower_bpf``, ``upper_bpf``, ``min_time``, ``min_coverage``,
        ``standardize``, ``detrend``, ``model`` (name, folder, ``"none"`` or a card dict),
        and for the group level ``analysis_level``, ``targets``, ``group_column``,
        ``reference``, ``qcfc``. Processing options and the model that are not given are
        read from the participant level's outputs (:func:`recorded_options`); at the group
        level, the targets, reference and QC-FC actually written are read from
        ``group/group.json`` (:func:`group_record`) when it exists, so failed analyses are not
        described. Every option is also listed verbatim in the file.

    Returns
    -------
    Path
        The file written (atomically).
    """
    from ..locks import ExclusiveLock
    from ..utils import remove_stale_temps

    path = Path(output_dir) / "logs" / "CITATION.md"
    text = build_citation(Path(output_dir), options)
    path.parent.mkdir(parents=True, exist_ok=True)
    # participant jobs of one output folder (and the group level) share this file: under the
    # lock, a temporary file left by a killed job is removed and no live one is touched
    with ExclusiveLock(path.parent / ".CITATION.md.lock"):
        remove_stale_temps(path.parent, "CITATION.")
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return path
