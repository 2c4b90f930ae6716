"""Writing bidsfm's BIDS derivatives: file names, labelled TSVs and dataset_description.json.

Every file is written atomically (temporary name in the same folder, then rename) and the
dataset description is updated under a file lock so that parallel participant jobs writing to
one output folder (a SLURM array) never corrupt it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ConfigError
from .utils import (
    tsv_rows,
    write_bytes_atomic,
    write_frame_atomic,
    write_json_atomic,
    write_text_atomic,
)

BIDS_VERSION = "1.11.0"


def run_dir(output_dir: str | Path, entities: dict[str, str]) -> Path:
    """Folder of a run's outputs: ``sub-X[/ses-Y]/func``."""
    out = Path(output_dir) / f"sub-{entities['subject']}"
    if entities.get("session"):
        out = out / f"ses-{entities['session']}"
    return out / "func"


# ---------------------------------------------------------------------------------------------
# Output names. Every file name bidsfm writes or reads is built here, so that the layout has one
# owner. Names follow XCP-D (0.10+) wherever XCP-D writes the same thing: the BIDS 1.11 ``atlas-``
# entity for the parcellation, ``stat-mean_timeseries``, ``stat-coverage_bold``,
# ``stat-pearsoncorrelation_relmat`` (BEP017). Entities bidsfm adds after the run's own come in
# this order: ``space``, ``atlas`` (BIDS entity order), then ``stat`` (BEP017/XCP-D), then
# ``desc`` (always last in BIDS).
# ---------------------------------------------------------------------------------------------

#: tail of a file name after ``_atlas-<A>``, per per-run output
RUN_OUTPUT_TAILS: dict[str, str] = {
    "timeseries": "_stat-mean_timeseries.tsv",
    "timeseries_json": "_stat-mean_timeseries.json",
    "coverage": "_stat-coverage_bold.tsv",
    "fc": "_stat-pearsoncorrelation_relmat.tsv",
    "fc_json": "_stat-pearsoncorrelation_relmat.json",
    "fcz": "_stat-pearsoncorrelation_desc-fisherz_relmat.tsv",
    "fcz_json": "_stat-pearsoncorrelation_desc-fisherz_relmat.json",
    "qc": "_qc.tsv",
    "qc_json": "_qc.json",
}
#: tail after ``_atlas-<A>`` of a model output, ``{model}`` = the model name
MODEL_OUTPUT_TAILS: dict[str, str] = {
    "embedding": "_desc-{model}_embedding.tsv",
    "embedding_json": "_desc-{model}_embedding.json",
    "predictions": "_desc-{model}_predictions.tsv",
    "attention": "_desc-{model}_attention.tsv",
    "statmap": "_stat-attention_desc-{model}_statmap.nii.gz",
    "statmap_json": "_stat-attention_desc-{model}_statmap.json",
}
#: tail of a run's figure in ``sub-X/figures/`` after ``<run>_space-<S>_atlas-<A>``
FIGURE_TAIL = "_desc-{model}_attention.png"
#: tail of the atlas-placement figure in ``sub-X/figures/`` (parcel borders on the run's mask)
PLACEMENT_FIGURE_TAIL = "_desc-placement_bold.png"
#: the entity naming the parcellation in output names (BIDS 1.11, XCP-D 0.10+)
ATLAS_ENTITY = "atlas"
_LABEL = re.compile(r"[A-Za-z0-9]+")
_MODEL_OUTPUT = re.compile(r"_desc-([A-Za-z0-9]+)_(embedding|predictions)\.tsv$")


def derivative_name(prefix: str, *, space: str | None = None, atlas: str | None = None,
                    stat: str | None = None, desc: str | None = None,
                    suffix: str, extension: str = ".tsv") -> str:
    """Build an output file name with entities in BIDS order.

    ``prefix`` holds the run entities (``sub-01_ses-1_task-rest_run-1``); the derivative
    entities follow as ``space``, ``atlas``, ``stat``, ``desc``, e.g.
    ``sub-01_task-rest_space-MNI152NLin2009cAsym_atlas-CC200_stat-mean_timeseries.tsv``.

    Raises
    ------
    ValueError
        If an entity value is not a BIDS label (letters and digits only).
    """
    parts = [prefix]
    for key, value in (("space", space), (ATLAS_ENTITY, atlas), ("stat", stat),
                       ("desc", desc)):
        if value:
            if not _LABEL.fullmatch(value):
                raise ValueError(f"{key}-{value!r} is not a BIDS label (letters and digits)")
            parts.append(f"{key}-{value}")
    return "_".join(parts) + f"_{suffix}{extension}"


def _run_base(run: Any, atlas: str, output_dir: str | Path) -> Path:
    """``<func folder>/<run>_space-<S>_atlas-<A>``: what every per-run output name starts with."""
    if not _LABEL.fullmatch(atlas):
        raise ValueError(f"atlas name {atlas!r} is not a BIDS label (letters and digits)")
    head = derivative_name(run.prefix, space=run.space, atlas=atlas, suffix="x", extension="")
    return run_dir(output_dir, run.entities) / head[: -len("_x")]


def run_output_paths(run: Any, atlas: str, output_dir: str | Path) -> dict[str, Path]:
    """Paths of every derivative of a run for one atlas (keys of :data:`RUN_OUTPUT_TAILS`).

    ``run`` is a :class:`bidsfm.discovery.BoldRun` (``prefix``, ``space``, ``entities``).
    """
    base = _run_base(run, atlas, output_dir)
    return {key: base.with_name(base.name + tail) for key, tail in RUN_OUTPUT_TAILS.items()}


def model_output_paths(run: Any, model: str, atlas: str, output_dir: str | Path
                       ) -> dict[str, Path]:
    """Paths of a run's model derivatives (keys of :data:`MODEL_OUTPUT_TAILS`)."""
    if not _LABEL.fullmatch(model):
        raise ValueError(f"model name {model!r} is not a BIDS label (letters and digits)")
    base = _run_base(run, atlas, output_dir)
    return {key: base.with_name(base.name + tail.format(model=model))
            for key, tail in MODEL_OUTPUT_TAILS.items()}


def figure_path(run: Any, model: str, atlas: str, output_dir: str | Path) -> Path:
    """``sub-X/figures/<run>_space-<S>_atlas-<A>_desc-<MODEL>_attention.png``."""
    base = _run_base(run, atlas, output_dir)
    return (Path(output_dir) / f"sub-{run.entities['subject']}" / "figures"
            / (base.name + FIGURE_TAIL.format(model=model)))


def placement_figure_path(run: Any, atlas: str, output_dir: str | Path) -> Path:
    """``sub-X/figures/<run>_space-<S>_atlas-<A>_desc-placement_bold.png``."""
    base = _run_base(run, atlas, output_dir)
    return (Path(output_dir) / f"sub-{run.entities['subject']}" / "figures"
            / (base.name + PLACEMENT_FIGURE_TAIL))


def remove_model_outputs(qc_path: str | Path, model: str = "*", *,
                         placement: bool = False) -> list[Path]:
    """Remove the model outputs (and their attention figure) of one run and atlas.

    ``qc_path`` is the run's QC table for that atlas (``run_output_paths(...)["qc"]``);
    ``model`` a model name or ``*`` for every model. With ``placement`` the atlas placement
    figure goes too. For runs that are now skipped or failed, so that no output of an earlier
    attempt stays beside a QC table that says there is none. Returns the removed files.
    """
    qc_path = Path(qc_path)
    base = output_base(qc_path.name)
    if base is None:
        return []
    subject = next((p for p in qc_path.parents if p.name.startswith("sub-")), None)
    patterns = [(qc_path.parent, base + tail.format(model=model))
                for tail in MODEL_OUTPUT_TAILS.values()]
    if subject is not None:
        patterns.append((subject / "figures", base + FIGURE_TAIL.format(model=model)))
        if placement:
            patterns.append((subject / "figures", base + PLACEMENT_FIGURE_TAIL))
    removed = []
    for folder, pattern in patterns:
        for path in folder.glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def sibling_output(path: str | Path, kind: str) -> Path:
    """The output of kind ``kind`` (a :data:`RUN_OUTPUT_TAILS` key) of the same run and atlas.

    ``path`` is any per-run output (or model output) of bidsfm; e.g. the time series beside a
    connectivity matrix: ``sibling_output(fc_path, "timeseries")``.

    Raises
    ------
    ValueError
        If ``path`` is not named as a bidsfm per-run output.
    """
    path = Path(path)
    base = output_base(path.name)
    if base is None:
        raise ValueError(f"{path.name} is not a bidsfm per-run output name")
    return path.with_name(base + RUN_OUTPUT_TAILS[kind])


def output_glob(kind: str, atlas: str = "*") -> str:
    """Glob pattern of a per-run output kind (:data:`RUN_OUTPUT_TAILS`) for one or every atlas,
    e.g. ``*_atlas-CC200_stat-mean_timeseries.tsv``."""
    return f"*_{ATLAS_ENTITY}-{atlas}{RUN_OUTPUT_TAILS[kind]}"


def output_base(name: str) -> str | None:
    """The ``<run>_space-<S>_atlas-<A>`` part of a per-run output name (None if it is not one)."""
    key = f"_{ATLAS_ENTITY}-"
    at = name.find(key)
    if at < 0:
        return None
    end = name.find("_", at + len(key))
    return name[:end] if end > 0 else None


def parse_name(name: str) -> tuple[dict[str, str], str]:
    """Entities (``{"sub": "01", "task": "rest", "atlas": "CC200", ...}``) and suffix of a name."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    ents = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if sep:
            ents[key] = value
    return ents, parts[-1]


def match_model_output(name: str) -> tuple[str, str, str] | None:
    """``(model, kind, base)`` of an embedding or predictions file name, else None."""
    m = _MODEL_OUTPUT.search(name)
    if not m:
        return None
    return m.group(1), m.group(2), name[: m.start()]


def group_table_name(kind: str, *, model: str | None = None, atlas: str | None = None) -> str:
    """File name of a group-level table in ``OUTPUT_DIR/group/``.

    ``kind`` is ``runs_qc``, ``exclusions``, ``runs_embedding``, ``subjects_embedding``,
    ``runs_predictions`` (these three with ``model``) or ``qcfc`` / ``qcfc_json`` (with
    ``atlas``).
    """
    if kind in ("runs_embedding", "subjects_embedding", "runs_predictions"):
        what, suffix = kind.split("_")
        return f"group_desc-{model}_{what}_{suffix}.tsv"
    if kind in ("qcfc", "qcfc_json"):
        return f"group_{ATLAS_ENTITY}-{atlas}_qcfc" + (".json" if kind == "qcfc_json" else ".tsv")
    if kind in ("runs_qc", "exclusions"):
        return f"group_{kind}.tsv"
    raise ValueError(f"unknown group table {kind!r}")


# ---------------------------------------------------------------------------------------------
# Readers of bidsfm's own outputs (one place, used by the model stage, the group level, the
# reports and the tools).
# ---------------------------------------------------------------------------------------------

def read_relmat(path: str | Path, roi_names: Sequence[str] | None = None
                ) -> tuple[list[str], np.ndarray]:
    """Read a ``*_relmat.tsv``: ROI names and the (R, R) matrix (``n/a`` = NaN).

    The first column (``Node``) holds the row names and the header the column names, as XCP-D
    writes them. With ``roi_names`` the columns must be exactly those names in that order.

    Raises
    ------
    InputDataError
        If the file cannot be read, is not square, its row and column names differ, or its
        columns are not ``roi_names``.
    """
    import pandas as pd

    from .errors import InputDataError

    try:
        frame = pd.read_csv(path, sep="\t", index_col=0, na_values=["n/a"],
                            keep_default_na=False)
        mat = frame.to_numpy(dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputDataError(f"connectivity matrix cannot be read ({exc})", path=path) from exc
    names = [str(c) for c in frame.columns]
    if mat.shape[0] != mat.shape[1] or [str(i) for i in frame.index] != names:
        raise InputDataError(f"connectivity matrix is {mat.shape[0]}x{mat.shape[1]} with row "
                             "names that are not its column names; expected a square relmat "
                             "with a Node column", path=path,
                             remedy="Rerun the participant level for this run")
    if roi_names is not None and names != list(roi_names):
        raise InputDataError(
            "connectivity columns are not the expected ROIs in the expected order "
            f"({len(names)} columns, {len(roi_names)} ROIs expected)", path=path,
            remedy="Rerun the participant level for this run with the model's atlas")
    return names, mat


def read_timeseries(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``*_stat-mean_timeseries.tsv``: ROI names and the (T, R) array (``n/a`` = NaN)."""
    import pandas as pd

    from .errors import InputDataError

    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        return [str(c) for c in frame.columns], frame.to_numpy(dtype=np.float64)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise InputDataError(f"time series cannot be read ({exc})", path=path) from exc


def read_coverage(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a ``*_stat-coverage_bold.tsv`` (XCP-D layout: ``Node``, ``coverage`` rows)."""
    import pandas as pd

    from .errors import InputDataError

    try:
        frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
        names = [str(v) for v in frame["Node"]]
        return names, frame["coverage"].to_numpy(dtype=np.float64)
    except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
        raise InputDataError(f"coverage table cannot be read ({exc})", path=path) from exc


def write_coverage(path: str | Path, names: Sequence[str], coverage: np.ndarray) -> Path:
    """Write per-ROI coverage as XCP-D does: one row per ROI, columns ``Node`` and ``coverage``."""
    import pandas as pd

    frame = pd.DataFrame({"Node": list(names),
                          "coverage": np.asarray(coverage, dtype=np.float64)})
    return write_frame_atomic(path, frame, na_rep="n/a", float_format="%.8g")


def write_tsv_atomic(path: str | Path, data: np.ndarray, columns: Sequence[str], *,
                     index: Sequence[str] | None = None, index_name: str = "Node") -> Path:
    """Write a 2D array as a labelled TSV (``n/a`` for NaN), atomically.

    Parameters
    ----------
    path : str or Path
        Destination.
    data : np.ndarray
        2D values.
    columns : sequence of str
        Header (ROI names).
    index : sequence of str, optional
        Row labels written as a first column called ``index_name`` (for square matrices).
    """
    text = tsv_text(data, columns, index=index, index_name=index_name)
    if text is not None:
        return write_text_atomic(path, text)
    import pandas as pd

    frame = pd.DataFrame(np.asarray(data), columns=list(columns))
    if index is not None:
        frame.insert(0, index_name, list(index))
    return write_frame_atomic(path, frame, na_rep="n/a", float_format="%.8g")


def tsv_text(data: np.ndarray, columns: Sequence[str], *, index: Sequence[str] | None = None,
             index_name: str = "Node") -> str | None:
    """The text pandas writes for :func:`write_tsv_atomic` (``%.8g`` floats, ``n/a`` for NaN),
    formatted one row at a time, several times faster than ``DataFrame.to_csv``.

    Returns None where pandas' output would need more than this does: a non-float array, or
    names that the CSV writer would quote (tab, quote, newline, empty); the caller then uses
    pandas. ``tests/test_derivatives.py`` holds it to pandas, byte for byte.
    """
    arr = np.asarray(data)
    if (arr.ndim != 2 or arr.dtype.kind != "f" or arr.shape[1] != len(columns)
            or arr.shape[1] == 0):
        return None
    names = [str(c) for c in columns]
    lead = None if index is None else [str(i) for i in index]
    if lead is not None and (len(lead) != arr.shape[0]):
        return None
    for name in names + (lead or []) + ([str(index_name)] if lead is not None else []):
        if not name or any(c in name for c in '\t\n\r"'):
            return None
    lines = ["\t".join(([str(index_name)] if lead is not None else []) + names)]
    lines += tsv_rows(arr, "%.8g", lead)
    return "\n".join(lines) + "\n"


def code_url() -> str:
    """Where the code that wrote the outputs can be found, for ``GeneratedBy.CodeURL``.

    ``$BIDSFM_CODE_URL`` when set (a site that deploys bidsfm from its own repository says so
    there), else a ``Source``/``Homepage`` URL declared in the installed package's metadata,
    else a ``file://`` URL of the installed package folder (the exact code that ran; inside a
    container, a path in the image).
    """
    import os

    env = os.environ.get("BIDSFM_CODE_URL", "").strip()
    if env:
        return env
    try:
        from importlib.metadata import metadata

        for entry in metadata("bidsfm").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() in ("source", "homepage", "repository") and url.strip():
                return url.strip()
    except Exception:  # noqa: BLE001 - metadata is optional (source checkout)
        pass
    return Path(__file__).resolve().parent.as_uri()


def container_info() -> dict[str, str] | None:
    """``GeneratedBy.Container`` when bidsfm runs in its container image, else None.

    Apptainer/Singularity set ``APPTAINER_CONTAINER``/``SINGULARITY_CONTAINER`` (the image
    path); bidsfm's Docker image sets ``BIDSFM_CONTAINER=docker``.
    """
    import os

    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(var):
            return {"Type": "apptainer", "URI": Path(os.environ[var]).resolve().as_uri()}
    if os.environ.get("BIDSFM_CONTAINER") == "docker":
        return {"Type": "docker", "Tag": f"bidsfm:{__version__}"}
    return None


def generated_by() -> dict[str, Any]:
    """The ``GeneratedBy`` entry describing this bidsfm version (and its container)."""
    entry: dict[str, Any] = {"Name": "bidsfm", "Version": __version__, "CodeURL": code_url()}
    container = container_info()
    if container:
        entry["Container"] = container
    return entry


#: what no BIDS specification covers (BIDS 1.11 has no rule for ROI time series, relationship
#: matrices, model outputs, reports or group tables): listed in the output's ``.bidsignore``
#: so that the BIDS validator checks everything else
BIDSIGNORE_PATTERNS = (
    "*.html", "logs/", "figures", "group",
    "*_timeseries.tsv", "*_timeseries.json", "*_relmat.tsv", "*_relmat.json",
    "*_stat-coverage_bold.tsv", "*_qc.tsv", "*_qc.json",
    "*_embedding.tsv", "*_embedding.json", "*_predictions.tsv", "*_attention.tsv",
    "*_statmap.nii.gz", "*_statmap.json",
)

OUTPUT_README = """# bidsfm outputs

This is a BIDS derivatives dataset written by bidsfm {version} from fMRIPrep outputs
(see `dataset_description.json`: `GeneratedBy`, `DatasetLinks`, `SourceDatasets`).

For each preprocessed BOLD run and atlas: denoised ROI time series
(`*_atlas-<A>_stat-mean_timeseries.tsv`), ROI coverage (`*_stat-coverage_bold.tsv`),
Pearson and Fisher-z connectivity (`*_stat-pearsoncorrelation[_desc-fisherz]_relmat.tsv`,
named as XCP-D names them), a QC table (`*_qc.tsv`) and, with a foundation model, embeddings,
predictions and ROI attention (`*_desc-<MODEL>_*`). `sub-<label>.html` are the participant
reports; `group/` and `group.html` the group level; `logs/CITATION.md` the methods text.
The atlases used are in `sourcedata/atlases/` (a BIDS-Atlas dataset with each atlas's
image, labels, source and sha256). Files that no BIDS specification covers yet are listed in
`.bidsignore`.

Model predictions are research outputs, not clinical diagnoses.
"""


def source_datasets(input_dir: str | Path) -> list[dict[str, str]]:
    """``SourceDatasets`` of the output: the input dataset as a BIDS URI, with its DOI and the
    version of the pipeline that made it when its description states them."""
    entry: dict[str, str] = {"URL": "bids:preprocessed:"}
    try:
        meta: Any = json.loads((Path(input_dir) / "dataset_description.json").read_text())
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict):
        doi = meta.get("DatasetDOI")
        if isinstance(doi, str) and doi.strip():
            entry["DOI"] = doi.strip()
    upstream = input_generated_by(input_dir)
    if upstream and upstream[0].get("Version"):
        entry["Version"] = str(upstream[0]["Version"])
    return [entry]


def write_dataset_files(output_dir: str | Path) -> None:
    """Write the output's ``README.md`` and ``.bidsignore`` when missing or out of date."""
    out = Path(output_dir)
    readme = OUTPUT_README.format(version=__version__)
    for path, text in ((out / "README.md", readme),
                       (out / ".bidsignore", "\n".join(BIDSIGNORE_PATTERNS) + "\n")):
        try:
            current = path.read_text()
        except (OSError, UnicodeDecodeError):
            current = None
        if current != text:
            write_text_atomic(path, text)


def input_generated_by(input_dir: str | Path) -> list[dict[str, Any]]:
    """The provenance entries of the input dataset, for the output's ``GeneratedBy``.

    Read from ``GeneratedBy`` (BIDS 1.4 and later, fMRIPrep 20.2 and later) or, for older
    derivatives (fMRIPrep 1.x to 20.1), from ``PipelineDescription`` (Name, Version, CodeURL;
    a top-level ``CodeURL`` is used when the pipeline entry has none). An unreadable or absent
    description gives an empty list.
    """
    path = Path(input_dir) / "dataset_description.json"
    try:
        meta: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict):
        return []
    generated = meta.get("GeneratedBy")
    if isinstance(generated, list) and generated:
        return [dict(g) for g in generated if isinstance(g, dict) and g.get("Name")]
    legacy = meta.get("PipelineDescription")
    if isinstance(legacy, dict) and legacy.get("Name"):
        entry = {k: legacy[k] for k in ("Name", "Version", "Description", "CodeURL",
                                        "Container") if legacy.get(k) not in (None, "")}
        if "CodeURL" not in entry and isinstance(meta.get("CodeURL"), str):
            entry["CodeURL"] = meta["CodeURL"]
        return [entry]
    return []


def check_output_dataset(output_dir: str | Path) -> dict[str, Any]:
    """Read the output folder's ``dataset_description.json`` and check that bidsfm wrote it.

    Called before anything is written (and again under the lock when updating it), so that a
    folder holding another tool's dataset is left exactly as it was.

    Returns
    -------
    dict
        The existing description, or an empty dict when there is none.

    Raises
    ------
    ConfigError
        If the description was written by another tool or cannot be read.
    """
    path = Path(output_dir) / "dataset_description.json"
    if not path.is_file():
        return {}
    try:
        loaded: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        loaded = None
    if not isinstance(loaded, dict):  # never overwrite what we cannot read
        raise ConfigError(
            "output folder holds a dataset_description.json that is not a JSON object",
            path=path, remedy="Fix or remove it if bidsfm wrote this folder, otherwise choose an "
            "empty output folder for bidsfm")
    generated = loaded.get("GeneratedBy")
    first = generated[0] if isinstance(generated, list) and generated else {}
    who = first.get("Name") if isinstance(first, dict) else None
    if who != "bidsfm":
        problem = (f"output folder already holds a dataset generated by {who!r}" if who else
                   "output folder already holds a dataset that bidsfm did not generate (its "
                   "GeneratedBy does not start with bidsfm)")
        raise ConfigError(problem, path=path, remedy="Choose an empty output folder for bidsfm")
    return loaded


def ensure_dataset_description(output_dir: str | Path, input_dir: str | Path,
                               dataset_links: dict[str, str]) -> Path:
    """Create or update ``dataset_description.json`` of the output dataset, under a file lock.

    The description lists bidsfm first in ``GeneratedBy`` followed by the input dataset's own
    entries, and ``DatasetLinks`` to the inputs. An existing description written by bidsfm is
    updated (links merged, version refreshed); one written by another tool, or one that cannot
    be read, is refused (see :func:`check_output_dataset`) so that bidsfm never mixes its
    outputs into someone else's dataset.

    Raises
    ------
    ConfigError
        If the output folder holds another tool's dataset or an unreadable description.
    """
    from filelock import FileLock

    output_dir = Path(output_dir)
    check_output_dataset(output_dir)  # before creating the lock file in someone else's folder
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "dataset_description.json"
    with FileLock(str(output_dir / ".dataset_description.json.lock"), timeout=120):
        existing = check_output_dataset(output_dir)
        upstream = input_generated_by(input_dir)
        old_links = existing.get("DatasetLinks")
        links = dict(old_links) if isinstance(old_links, dict) else {}
        links.update(dataset_links)
        desc = {
            "Name": existing.get("Name", "bidsfm outputs"),
            "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by()] + [
                g for g in upstream if isinstance(g, dict) and g.get("Name") != "bidsfm"],
            "SourceDatasets": source_datasets(input_dir),
            "DatasetLinks": links,
            "HowToAcknowledge": "Please cite bidsfm and the tools listed in GeneratedBy; see "
                                "logs/CITATION.md when present.",
        }
        if desc != existing:
            write_json_atomic(path, desc)
        write_dataset_files(output_dir)
    return path


ATLAS_README = """# Atlases used by bidsfm

A BIDS-Atlas dataset (BIDS 1.11) holding each atlas that bidsfm laid on the runs of the
enclosing output dataset: `tpl-<template>/anat/tpl-<template>_atlas-<name>_dseg.nii.gz` (the
label image), `_dseg.tsv` (`index`, `name`), `_dseg.json` (source and sha256 of the file as
read) and `atlas-<name>_description.json`. How each atlas was placed on each run (identical
grid, resampling, template transform or world coordinates) is in the run's own sidecars.
"""

#: where the atlases used are written, as a BIDS-Atlas dataset (XCP-D's place for them)
ATLAS_DATASET = Path("sourcedata") / "atlases"


def atlas_dataset_paths(output_dir: str | Path, atlas_name: str, template: str,
                        suffix: str = "dseg") -> dict[str, Path]:
    """Files of one atlas in the output's BIDS-Atlas dataset (``sourcedata/atlases``):
    ``atlas-<A>_description.json`` and ``tpl-<T>/anat/tpl-<T>_atlas-<A>_<suffix>.*`` (BIDS 1.11
    atlas layout; ``dseg`` for a label image, ``probseg`` for probabilistic maps)."""
    root = Path(output_dir) / ATLAS_DATASET
    stem = (root / f"tpl-{template}" / "anat"
            / f"tpl-{template}_{ATLAS_ENTITY}-{atlas_name}_{suffix}")
    return {"root": root,
            "description": root / f"atlas-{atlas_name}_description.json",
            "image": stem.with_name(stem.name + ".nii.gz"),
            "labels": stem.with_name(stem.name + ".tsv"),
            "sidecar": stem.with_name(stem.name + ".json")}


def write_atlas_dataset(output_dir: str | Path, atlas: Any, run_space: str) -> Path:
    """Write an atlas used by a run into the output's BIDS-Atlas dataset, once.

    The label image (gzipped NIfTI, as read), its labels table (``index``, ``name``) and a
    sidecar with the source, sha256 and template, under ``sourcedata/atlases`` (with its own
    ``dataset_description.json``), as XCP-D does. An atlas without a known template (a user
    file without ``tpl-``/``space-``) is filed under the run's space, where bidsfm placed it.
    Idempotent and safe for parallel jobs (file lock); returns the image path.
    """
    import gzip
    import hashlib

    from filelock import FileLock

    template = atlas.template or run_space
    raw = Path(atlas.image).read_bytes()
    probabilistic = getattr(atlas, "kind", "dseg") == "probseg"
    paths = atlas_dataset_paths(output_dir, atlas.name, template,
                                suffix="probseg" if probabilistic else "dseg")
    sha = hashlib.sha256(raw).hexdigest()
    meta = {"Atlas": atlas.name, "Template": template, "SpatialReference": template,
            "Source": str(atlas.source),
            "SHA256": sha, "NumberOfROIs": int(len(atlas.labels)),
            "Compressed": "as read" if raw[:2] == b"\x1f\x8b" else "gzipped by bidsfm",
            **({"Labels": [str(n) for n in atlas.labels["name"]]} if probabilistic else {}),
            "Description": f"Label image of atlas {atlas.name} as read by bidsfm (the file "
                           "whose sha256 is given); each run's sidecars record how it was "
                           "placed on the run's grid."}
    try:
        current = json.loads(paths["sidecar"].read_text())
    except (OSError, ValueError):
        current = None
    if current == meta and paths["image"].is_file() and (probabilistic
                                                         or paths["labels"].is_file()):
        return paths["image"]
    root = paths["root"]
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".atlases.lock"), timeout=120):
        desc = root / "dataset_description.json"
        if not desc.is_file():
            write_json_atomic(desc, {"Name": "Atlases used by bidsfm", "BIDSVersion": BIDS_VERSION,
                                     "DatasetType": "derivative",
                                     "GeneratedBy": [generated_by()]})
            write_text_atomic(root / "README.md", ATLAS_README)
        paths["image"].parent.mkdir(parents=True, exist_ok=True)
        # the file as read (its sha256 is the one the runs' sidecars record); an
        # uncompressed .nii is gzipped (without name or time stamp)
        write_bytes_atomic(paths["image"],
                           raw if raw[:2] == b"\x1f\x8b" else gzip.compress(raw, mtime=0))
        if not probabilistic:  # (BIDS has no probseg .tsv: the map names are in the JSON)
            labels = atlas.labels[["index", "name"]]
            write_frame_atomic(paths["labels"], labels)
        write_json_atomic(paths["description"], {
            "Name": atlas.name, "SpatialReference": template,
            "ReferencesAndLinks": [str(atlas.source)],
            "Description": f"{atlas.name} parcellation ({len(atlas.labels)} ROIs) in "
                           f"{template}; see the dseg sidecar for the file's sha256."})
        write_json_atomic(paths["sidecar"], meta)
    return paths["image"]


def bids_uri(dataset: str, relpath: str) -> str:
    """A BIDS URI (``bids:<dataset>:<relative path>``)."""
    return f"bids:{dataset}:{relpath}"


def resolve_bids_uri(uri: str, links: dict[str, str], root: str | Path) -> Path:
    """The file a :func:`bids_uri` of the dataset at ``root`` names, through its
    ``DatasetLinks`` (a relative link is relative to ``root``).

    Raises
    ------
    ValueError
        If ``uri`` is not a BIDS URI or names a dataset ``links`` does not hold.
    """
    parts = str(uri).split(":", 2)
    if len(parts) != 3 or parts[0] != "bids" or parts[1] not in links:
        raise ValueError(f"cannot resolve {uri!r} (no such entry in DatasetLinks)")
    return Path(root) / links[parts[1]] / parts[2]
