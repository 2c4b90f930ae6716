"""Writing an imported model folder: its atlas record, provenance and the atomic save.

The result is a model folder (``weights.safetensors`` + ``card.json``, see
:mod:`bidsfm.models.registry`) that ``bidsfm ... --model FOLDER`` runs; it is written into a
temporary sibling folder and renamed into place, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...references import reference

__all__ = ["LICENCE", "NO_HEADS", "SCHAEFER_CITATION", "TIAN_CITATION", "custom_layout_remedy",
           "atlas_card", "check_label", "prepare_out", "save_folder", "source_record"]

SCHAEFER_CITATION = reference("schaefer")
TIAN_CITATION = reference("tian")
LICENCE = ("As the source checkpoint's: obtaining it and complying with its licence and the "
           "terms of the data it was trained on are the user's responsibility. bidsfm only "
           "converted the tensors.")
NO_HEADS = ("No prediction heads: the official checkpoint is an encoder only. Fit heads on "
            "this model's embeddings (participant-level *_embedding.tsv) with bidsfm's group "
            "level or any linear model.")


def custom_layout_remedy(also: str = "") -> str:
    """What to do when a checkpoint is not in the official layout (``also``: another option
    the custom import needs, e.g. ``" and --heads (not stored in the weights)"``)."""
    return ("If the checkpoint was trained with another layout on purpose, pass "
            f"--allow-custom-layout{also} to import the layout its shapes imply; otherwise "
            "check that the file is complete and unmodified")


def atlas_card(spec: str, n_rois: int, published: str, path: str | Path) -> dict[str, Any]:
    """Resolve ``spec`` now (ROI names and order), check its ROI count, describe it for the card.

    Parameters
    ----------
    spec : str
        Atlas spec for :func:`bidsfm.atlases.resolve_atlas` (a name, a path or NAME=PATH).
    n_rois : int
        The checkpoint's ROI count.
    published : str
        The atlas the published model used (named in the error when the counts differ).
    path : str or Path
        The checkpoint (named in errors).

    Returns
    -------
    dict
        The card's ``atlas`` entry (name, ROI names and order, template, source, sha256,
        ``run_with``: the ``--atlas`` option to run the model with).

    Raises
    ------
    ConfigError
        If the atlas cannot be resolved or has another ROI count.
    """
    from ...atlases import resolve_atlas
    from ...errors import AtlasNotFoundError

    try:
        atlas = resolve_atlas(spec)
    except AtlasNotFoundError as err:
        raise ConfigError(f"cannot resolve the model's atlas {spec!r} to record its ROI order "
                          f"({err.one_line()})", path=path,
                          remedy="Make the atlas available (see docs/importing.md) or pass "
                          "another one with --atlas NAME=PATH") from None
    if atlas.n_rois != n_rois:
        raise ConfigError(f"the checkpoint has {n_rois} ROIs but atlas {atlas.name} has "
                          f"{atlas.n_rois}", path=path,
                          remedy=f"Pass the atlas the model was trained on ({published})")
    named = "=" in spec and not Path(spec).exists()
    card = {"name": atlas.name, "n_rois": int(atlas.n_rois), "roi_names": atlas.roi_names,
            "roi_order": "ascending label value of the atlas image (its label table order)",
            "template": atlas.template, "source": atlas.source, "sha256": atlas.sha256,
            "published_atlas": published}
    if named or _looks_like_path(spec):
        image = Path(spec.partition("=")[2] if named else spec).expanduser().resolve()
        card["user_file"] = str(image)
        card["run_with"] = f"--atlas {atlas.name}={image}"
    else:
        card["run_with"] = f"--atlas {atlas.name}"
    return card


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or bool(re.search(r"\.nii(\.gz)?$", spec, re.I))


def check_label(value: str, what: str) -> str:
    """Return ``value`` if it is letters and digits only (it becomes a ``desc-`` entity).

    Raises
    ------
    ConfigError
        Otherwise (a trailing newline is not accepted either).
    """
    if not re.fullmatch(r"[A-Za-z0-9]+", value or ""):
        raise ConfigError(f"{what} {value!r} must be letters and digits only (it becomes the "
                          "desc- entity of output file names)")
    return value


def prepare_out(out_dir: str | Path) -> Path:
    """The output folder, which must not exist or be empty; its parent is created.

    Raises
    ------
    ConfigError
        If it exists and is not an empty folder.
    """
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output folder exists and is not empty", path=out,
                          remedy="Choose a new folder (imports never overwrite a model)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def save_folder(out: Path, card: dict[str, Any], encoder: Any,
                extra: dict[str, Any] | None = None) -> Path:
    """Write the model into a temporary sibling folder, then rename it to ``out`` (atomic).

    Parameters
    ----------
    out : Path
        Checked by :func:`prepare_out`.
    card : dict
        The model card.
    encoder : torch.nn.Module
        The encoder with the imported weights.
    extra : dict, optional
        Keyword arguments of :func:`bidsfm.models.registry.save_model` (``extra_tensors``).

    Returns
    -------
    Path
        ``out``.
    """
    from ..registry import save_model

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_model(tmp, card, encoder, [], **(extra or {}))
        if out.exists():
            out.rmdir()  # empty (checked by prepare_out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def source_record(path: Path, key: str, kind: str, dropped: list[str]) -> dict[str, Any]:
    """The card's ``source``: checkpoint file name and sha256, entry used, what was dropped,
    bidsfm version and UTC time of the import."""
    from ... import __version__
    from ...utils import sha256_file

    return {"kind": kind, "file": path.name, "sha256": sha256_file(path), "state_key": key,
            "dropped": dropped, "imported_by": f"bidsfm-import {__version__}",
            "imported_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
