"""Atlases the user gives: a label image (``PATH``, ``NAME=PATH``) or a BIDS-Atlas folder.

A BIDS-Atlas folder (as XCP-D's AtlasPack, TemplateFlow-style trees, or the ``atlases/``
folder a bidsfm or XCP-D run writes) holds ``*atlas-<label>[_space-<tpl>][_res-<r>]
[_desc-<d>]_dseg.nii.gz`` (or ``_probseg``) images and ``atlas-<label>_dseg.tsv`` label tables.
Folders listed in ``BIDSFM_ATLAS_PATH`` (separated by ``:``) are searched by atlas name, and
``--atlas DIR`` or ``--atlas NAME=DIR`` read one atlas from a folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bidsfm.errors import AtlasNotFoundError
from bidsfm.utils import sha256_file

from .base import LOGGER, Atlas, alnum, entity, strip_nifti, template_id, usable
from .labels import generated_labels, image_kind, image_label_values, read_label_tsv

#: Environment variable listing BIDS-Atlas folders searched by name.
ATLAS_PATH_ENV = "BIDSFM_ATLAS_PATH"

_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def _suffix(filename: str) -> str:
    return strip_nifti(filename).rsplit("_", 1)[-1]


def label_table_for(path: Path, root: Path | None = None) -> Path | None:
    """The label TSV of an atlas image: same name, then BIDS-Atlas names up to ``root``.

    Tried in order: ``<stem>.tsv``; the stem without ``space``/``tpl``/``res``/``den``/``cohort``
    entities; then ``atlas-<label>[_desc-<d>]_<suffix>.tsv`` (and its ``tpl-<T>_`` form) in the
    image's folder and each parent up to ``root``.
    """
    stem = strip_nifti(path.name)
    candidates = [path.with_name(stem + ".tsv")]
    reduced = re.sub(r"_(?:space|tpl|res|den|cohort)-[A-Za-z0-9]+", "", "_" + stem)[1:]
    reduced = re.sub(r"^(?:space|tpl|res|den|cohort)-[A-Za-z0-9]+_", "", reduced)
    if reduced and reduced != stem:
        candidates.append(path.with_name(reduced + ".tsv"))
    label, desc, tpl = entity(stem, "atlas"), entity(stem, "desc"), entity(stem, "tpl")
    if label:
        names = [f"atlas-{label}" + (f"_desc-{desc}" if desc else "") + f"_{_suffix(stem)}.tsv"]
        if tpl:
            names.append(f"tpl-{tpl}_{names[0]}")
        folder = path.parent
        while True:
            candidates += [folder / n for n in names]
            if root is None or folder == root or folder.parent == folder or \
                    not folder.is_relative_to(root):
                break
            folder = folder.parent
    return next((c for c in candidates if usable(c)), None)


def resolve_user_file(path: Path, name: str | None = None, root: Path | None = None,
                      source: str | None = None) -> Atlas:
    """Read a user's atlas image (3D labels or 4D probabilistic maps) and its label table.

    Parameters
    ----------
    path : Path
        The image.
    name : str, optional
        Atlas name (reduced to letters and digits); else the ``atlas-`` entity, else the file
        name.
    root : Path, optional
        BIDS-Atlas folder the image was found in (label tables are looked up to there).
    source : str, optional
        Text for the sidecars' ``Source`` (default: the resolved path).

    Raises
    ------
    AtlasNotFoundError
        Missing or empty file, unreadable image or label table, no labels.
    """
    if not usable(path):
        from .names import known_names_text

        raise AtlasNotFoundError(
            "atlas file not found or empty", path=path,
            remedy=f"Give an existing 3D integer label NIfTI, or one of {known_names_text()}",
        )
    filename = path.name
    if name is not None:
        atlas_name = alnum(name)
    else:
        atlas_name = alnum(entity(filename, "atlas") or "") or alnum(strip_nifti(filename))
    if not atlas_name:
        raise AtlasNotFoundError(
            "cannot derive an alphanumeric atlas name", path=path,
            remedy="Give it as NAME=PATH with an alphanumeric NAME",
        )
    template = entity(filename, "tpl") or entity(filename, "space")
    kind = image_kind(path)
    values = image_label_values(path)
    if not values:
        raise AtlasNotFoundError(
            "atlas image contains no labels (all voxels are 0)", path=path,
            remedy="Give a label image with positive integer ROI values",
        )
    tsv = label_table_for(path, root)
    if tsv is not None:
        labels = read_label_tsv(tsv)
        if labels.empty:
            raise AtlasNotFoundError("atlas label table has no rows", path=tsv)
        present = set(values)
        absent = [int(i) for i in labels["index"] if int(i) not in present]
        if absent:
            LOGGER.warning(
                "%s: %d label(s) of %s are absent from the image (e.g. %s); their ROIs stay "
                "in the outputs as n/a", path, len(absent), tsv.name, absent[:5],
            )
        unnamed = sorted(present - {int(i) for i in labels["index"]})
        if unnamed:
            LOGGER.warning(
                "%s: %d image label(s) are not in %s (e.g. %s) and are ignored",
                path, len(unnamed), tsv.name, unnamed[:5],
            )
        if kind == "probseg" and absent:
            raise AtlasNotFoundError(
                f"label table {tsv.name} names maps the 4D image does not have "
                f"(e.g. {absent[:3]})", path=path,
                remedy="Index k of a probabilistic atlas's table is its k-th volume (1-based)")
    else:
        labels = generated_labels(atlas_name, values)
    return Atlas(name=atlas_name, image=path, labels=labels, template=template,
                 source=source or str(path.resolve()), sha256=sha256_file(path), kind=kind)


def atlas_search_path() -> list[Path]:
    """Folders listed in ``BIDSFM_ATLAS_PATH`` that exist."""
    raw = os.environ.get(ATLAS_PATH_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip() and
            Path(p).expanduser().is_dir()]


def _atlas_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*atlas-*") if _NIFTI_RE.search(p.name)
                  and _suffix(p.name) in ("dseg", "probseg") and usable(p))


def _res_rank(path: Path) -> int:
    res = entity(path.name, "res")
    return {"02": 0, "2": 0, "01": 1, "1": 1}.get(res or "", 2)


def find_in_folder(folder: Path, label: str, desc: str | None = None,
                   templates: tuple[str, ...] = ()) -> tuple[Path, str | None] | None:
    """An image of atlas ``label`` (and ``desc``) in a BIDS-Atlas folder.

    Parameters
    ----------
    folder : Path
    label : str
        The ``atlas-`` entity (case-insensitive).
    desc : str, optional
        The ``desc-`` entity, when the atlas is named by it (``Schaefer2018`` +
        ``400Parcels17Networks``).
    templates : tuple of str
        Preferred templates, best first.

    Returns
    -------
    (Path, template) or None
    """
    hits = []
    for image in _atlas_images(folder):
        if (entity(image.name, "atlas") or "").lower() != label.lower():
            continue
        if desc is not None and (entity(image.name, "desc") or "").lower() != desc.lower():
            continue
        tpl = entity(image.name, "space") or entity(image.name, "tpl")
        rank = templates.index(tpl) if tpl in templates else len(templates)
        hits.append((rank, _res_rank(image), str(image), image, tpl))
    if not hits:
        return None
    _, _, _, image, tpl = min(hits)
    return image, tpl


def resolve_folder(folder: Path, name: str | None = None, space: str | None = None) -> Atlas:
    """Read one atlas from a BIDS-Atlas folder (``--atlas DIR`` or ``--atlas NAME=DIR``).

    Raises
    ------
    AtlasNotFoundError
        No atlas (or several, without a NAME) in the folder.
    """
    tpl = template_id(space)
    templates = (tpl,) if tpl else ()
    if name is None:
        labels = sorted({entity(p.name, "atlas") for p in _atlas_images(folder)} - {None})
        if len(labels) != 1:
            raise AtlasNotFoundError(
                "folder holds no atlas image" if not labels else
                f"folder holds several atlases ({', '.join(labels[:6])})", path=folder,
                remedy="Give NAME=DIR with the atlas- label to use, or the image file")
        name = labels[0]
    found = find_in_folder(folder, alnum(name), templates=templates)
    if found is None:
        raise AtlasNotFoundError(f"no atlas-{alnum(name)} image in this folder", path=folder,
                                 remedy="Check the atlas- label of its files")
    return resolve_user_file(found[0], name=name, root=folder)
