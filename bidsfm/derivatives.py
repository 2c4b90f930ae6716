"""Writing bidsfm's BIDS derivatives: file names, labelled TSVs and dataset_description.json.

Every file is written atomically (temporary name in the same folder, then rename) and the
dataset description is updated under a file lock so that parallel participant jobs writing to
one output folder (a SLURM array) never corrupt it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import ConfigError
from .utils import atomic_path, write_json_atomic

BIDS_VERSION = "1.10.0"


def run_dir(output_dir: str | Path, entities: dict[str, str]) -> Path:
    """Folder of a run's outputs: ``sub-X[/ses-Y]/func``."""
    out = Path(output_dir) / f"sub-{entities['subject']}"
    if entities.get("session"):
        out = out / f"ses-{entities['session']}"
    return out / "func"


def derivative_name(prefix: str, *, space: str | None = None, seg: str | None = None,
                    stat: str | None = None, meas: str | None = None, desc: str | None = None,
                    suffix: str, extension: str = ".tsv") -> str:
    """Build an output file name with entities in BIDS order.

    ``prefix`` holds the run entities (``sub-01_ses-1_task-rest_run-1``); the derivative
    entities follow as ``space``, ``seg``, ``desc``, ``stat``, ``meas`` (the order of the
    design's examples, e.g. ``_seg-CC200_desc-MODEL_stat-attention_statmap.nii.gz``).
    """
    parts = [prefix]
    for key, value in (("space", space), ("seg", seg), ("desc", desc), ("stat", stat),
                       ("meas", meas)):
        if value:
            parts.append(f"{key}-{value}")
    return "_".join(parts) + f"_{suffix}{extension}"


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
    import pandas as pd

    frame = pd.DataFrame(np.asarray(data), columns=list(columns))
    if index is not None:
        frame.insert(0, index_name, list(index))
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.8g")
    return Path(path)


def generated_by() -> dict[str, Any]:
    """The ``GeneratedBy`` entry describing this bidsfm version."""
    return {"Name": "bidsfm", "Version": __version__}


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
            "DatasetLinks": links,
            "HowToAcknowledge": "Please cite bidsfm and the tools listed in GeneratedBy; see "
                                "logs/CITATION.md when present.",
        }
        if desc != existing:
            write_json_atomic(path, desc)
    return path


def bids_uri(dataset: str, relpath: str) -> str:
    """A BIDS URI (``bids:<dataset>:<relative path>``)."""
    return f"bids:{dataset}:{relpath}"
