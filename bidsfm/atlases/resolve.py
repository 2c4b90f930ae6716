"""Turn an ``--atlas`` value into an :class:`~bidsfm.atlases.base.Atlas`, offline first.

For a registry atlas, the release in the run's own template is preferred. Sources, in order:
the package's copy, the cache, a TemplateFlow tree, a BIDS-Atlas folder on
``BIDSFM_ATLAS_PATH``; then, unless ``BIDSFM_OFFLINE=1``, a download of the run template's
release into the cache; then a local release in another template (placed on the run by
:mod:`bidsfm.atlases.placement`, which says how); then any download. A missing atlas is a
one-line :class:`~bidsfm.errors.AtlasNotFoundError` saying what to fetch and where to put it.
"""

from __future__ import annotations

import re
from pathlib import Path

from bidsfm.errors import AtlasNotFoundError

from .base import LOGGER, Atlas, alnum, offline, template_id, templateflow_home, warn_once
from .labels import generated_labels, read_label_file, read_label_tsv
from .names import (
    NAMED_PATH_RE,
    NIFTI_RE,
    SCHAEFER_PARCELS,
    canonical_atlas_name,
    known_names_text,
    not_provided,
)
from .registry import REGISTRY, AtlasRecord, Release, available_atlases
from .store import download, local_path
from .templateflow import expected_image, fetch_command, source_label
from .templateflow import find as tf_find
from .userfiles import atlas_search_path, find_in_folder, resolve_folder, resolve_user_file


def resolve_atlas(spec: str, *, space: str | None = None) -> Atlas:
    """Resolve an atlas specification offline-first.

    Parameters
    ----------
    spec : str
        A registry name in any spelling (``CC200``, ``Schaefer400``, ``TianS3``,
        ``Schaefer2018_400Parcels17Networks``...), several joined by ``+``
        (``TianS3+Schaefer400x17``: one atlas, ROIs in that order), a path to a 3D integer
        label NIfTI or 4D probabilistic maps, a BIDS-Atlas folder, or ``NAME=PATH``.
    space : str, optional
        The run's template space (e.g. ``"MNI152NLin2009cAsym"``); releases in that template
        are preferred.

    Returns
    -------
    Atlas

    Raises
    ------
    AtlasNotFoundError
        When the atlas cannot be found or is invalid; the message is one line saying what to
        fetch and where to put it.
    """
    spec = str(spec).strip()
    if not spec:
        raise AtlasNotFoundError(
            "empty atlas name", remedy=f"Use one of {known_names_text()}, or a label NIfTI path")
    named = NAMED_PATH_RE.match(spec)
    if named:
        target = Path(named.group(2)).expanduser()
        if target.is_dir():
            return resolve_folder(target, name=named.group(1), space=space)
        return resolve_user_file(target, name=named.group(1))
    if "=" in spec and not Path(spec).expanduser().exists():
        # NAME=PATH whose NAME holds path characters (``../evil=atlas.nii.gz``): the name is
        # reduced to its letters and digits, so it can never point outside the output folder
        name, _, path = spec.partition("=")
        return resolve_user_file(Path(path).expanduser(), name=name)
    if NIFTI_RE.search(spec) or "/" in spec or "\\" in spec:
        path = Path(spec).expanduser()
        return resolve_folder(path, space=space) if path.is_dir() else resolve_user_file(path)
    try:
        canonical = canonical_atlas_name(spec)
    except AtlasNotFoundError:
        if Path(spec).expanduser().is_file():
            return resolve_user_file(Path(spec).expanduser())
        if not_provided(spec) is not None:  # e.g. XCP-D's 4S456Parcels from AtlasPack
            found = _from_atlas_path(spec, alnum(spec), None, space)
            if found is not None:
                return found
        raise
    if canonical is None:
        if Path(spec).expanduser().is_file():
            return resolve_user_file(Path(spec).expanduser())
        found = _from_atlas_path(spec, alnum(spec), None, space)
        if found is not None:
            return found
        raise _unknown(spec)
    if canonical.replace("+", "").lower() != spec.replace("+", "").lower():
        LOGGER.info("atlas %r read as %s", spec, canonical)
    if "+" in canonical:
        return resolve_combined(canonical.split("+"), space=space)
    return resolve_registry(canonical, space=space)


def _unknown(spec: str) -> AtlasNotFoundError:
    import difflib

    candidates = [*available_atlases(), *(f"Schaefer{n}" for n in SCHAEFER_PARCELS)]
    close = difflib.get_close_matches(spec, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return AtlasNotFoundError(
        f"unknown atlas {spec!r}{hint}",
        remedy=f"Valid names: {known_names_text()}; or give a path to a 3D integer label "
        "NIfTI (optionally NAME=PATH, with an index/name TSV beside it), or a BIDS-Atlas "
        "folder (--atlas DIR, or BIDSFM_ATLAS_PATH)",
    )


# --------------------------------------------------------------------------------------------
# Registry atlases
# --------------------------------------------------------------------------------------------


def _labels_for(record: AtlasRecord, release: Release, labels_path: Path | None):
    if release.labels is None:
        return generated_labels(record.name, range(1, record.n_rois + 1))
    labels = read_label_file(labels_path, release.label_format)
    if len(labels) != record.n_rois:
        raise AtlasNotFoundError(
            f"label table of {record.name} has {len(labels)} rows, expected {record.n_rois}",
            path=labels_path, remedy="The file looks damaged; delete it and fetch it again")
    return labels


def _from_release(record: AtlasRecord, release: Release, allow_download: bool
                  ) -> Atlas | None:
    """The atlas from one registry release if its files are local (or downloaded)."""
    paths: list[Path] = []
    for remote in release.files:
        found = local_path(remote, record.name)
        if found is None:
            if not allow_download:
                return None
            paths.append(download(remote, record.name))
        else:
            paths.append(found[0])
    labels = _labels_for(record, release, paths[1] if len(paths) > 1 else None)
    return Atlas(name=record.name, image=paths[0], labels=labels, template=release.template,
                 source=release.image.url, sha256=release.image.sha256, kind=record.kind,
                 note=release.note)


def _from_templateflow(record: AtlasRecord, tpl: str) -> Atlas | None:
    if record.templateflow is None:
        return None
    found = tf_find(tpl, *record.templateflow, suffix=record.kind)
    if found is None:
        return None
    image, tsv = found
    if tsv is not None:
        labels = read_label_tsv(tsv)
    else:
        LOGGER.warning("%s: no label TSV beside it in TemplateFlow; ROI names are generated",
                       image)
        from .labels import image_label_values

        labels = generated_labels(record.name, image_label_values(image))
    from bidsfm.utils import sha256_file

    return Atlas(name=record.name, image=image, labels=labels, template=tpl,
                 source=source_label(image), sha256=sha256_file(image), kind=record.kind)


def _bids_labels(record: AtlasRecord) -> list[tuple[str, str | None]]:
    """``(atlas, desc)`` entity pairs a BIDS-Atlas folder may use for a registry atlas."""
    out: list[tuple[str, str | None]] = [(record.name, None)]
    if record.templateflow is not None:
        out.append(record.templateflow)
    m = re.fullmatch(r"Schaefer(\d+)x(\d+)", record.name)
    if m:
        out.append(("Schaefer2018v0143", f"{m.group(1)}Parcels{m.group(2)}Networks"))
    if record.name == "TianS3":
        out.append(("Tian", None))  # XCP-D's Tian is scale 3 (50 ROIs)
    if record.name in ("Gordon333", "Glasser360"):
        out.append((record.name[:-3], None))
    return out


def _from_atlas_path(typed: str, label: str, desc: str | None, space: str | None,
                     templates: tuple[str, ...] = ()) -> Atlas | None:
    """An atlas found by its ``atlas-`` label in the BIDSFM_ATLAS_PATH folders."""
    tpl = template_id(space)
    prefer = ((tpl,) if tpl else ()) + templates
    for folder in atlas_search_path():
        found = find_in_folder(folder, label, desc, templates=prefer)
        if found is not None:
            if templates and found[1] not in templates:
                continue
            LOGGER.info("atlas %s read from the BIDS-Atlas folder %s", typed, folder)
            return resolve_user_file(found[0], name=alnum(typed), root=folder)
    return None


def _local(record: AtlasRecord, tpl: str) -> Atlas | None:
    """The atlas in template ``tpl`` from a local source, None if none has it."""
    for release in record.releases:
        if release.template == tpl:
            atlas = _from_release(record, release, allow_download=False)
            if atlas is not None:
                return atlas
    atlas = _from_templateflow(record, tpl)
    if atlas is not None:
        return atlas
    for label, desc in _bids_labels(record):
        atlas = _from_atlas_path(record.name, label, desc, None, templates=(tpl,))
        if atlas is not None:
            return atlas
    return None


def resolve_registry(name: str, *, space: str | None = None) -> Atlas:
    """Resolve a registry atlas (see the module docstring for the order of sources).

    Parameters
    ----------
    name : str
        A registry name (:func:`~bidsfm.atlases.names.canonical_atlas_name`).
    space : str, optional
        The run's template.

    Raises
    ------
    AtlasNotFoundError
        Not available offline (the message says what to fetch).
    """
    record = REGISTRY[name]
    tpl = template_id(space)
    order = list(dict.fromkeys([t for t in (tpl, *record.templates) if t]))
    if tpl is not None:
        atlas = _local(record, tpl)
        if atlas is not None:
            return atlas
    reasons: list[str] = []
    if tpl is not None and not offline():
        for release in (r for r in record.releases if r.template == tpl):
            try:
                return _from_release(record, release, allow_download=True)
            except AtlasNotFoundError as err:
                reasons.append(err.problem)
                break
    for t in order:
        if t == tpl:
            continue
        atlas = _local(record, t)
        if atlas is not None:
            if tpl is not None and any(r.template == tpl for r in record.releases):
                warn_once(("other-template", record.name, tpl),
                          "%s: its %s release is not available offline; using its %s release "
                          "(run `bidsfm-atlas fetch %s --space %s` to get the run's own)",
                          record.name, tpl, t, record.name, tpl)
            return atlas
    if not offline() and not reasons:
        for release in sorted(record.releases, key=lambda r: order.index(r.template)
                              if r.template in order else len(order)):
            try:
                return _from_release(record, release, allow_download=True)
            except AtlasNotFoundError as err:
                reasons.append(err.problem)
                break
    raise _missing(record, order, reasons[0] if reasons else "BIDSFM_OFFLINE is set"
                   if offline() else "no copy found")


def _missing(record: AtlasRecord, order: list[str], reason: str) -> AtlasNotFoundError:
    from .store import cache_path

    parts = []
    if record.releases:
        release = next((r for t in order for r in record.releases if r.template == t),
                       record.releases[0])
        files = " and ".join(f"{f.url} (sha256 {f.sha256})" for f in release.files)
        parts.append(
            f"Run `bidsfm-atlas fetch {record.name}` on a machine with internet access, or "
            f"download {files} and run `bidsfm-atlas seed {record.name} FILE...` (the cache "
            f"keeps it as {cache_path(release.image)})")
    if record.templateflow is not None:
        tpl = order[0]
        fetch = fetch_command(tpl, *record.templateflow, suffix=record.kind)
        parts.append(
            f"{'or ' if parts else ''}use TemplateFlow's copy: on a machine with internet run "
            f"`{fetch}` and copy the "
            f"resulting tpl-{tpl} "
            f"folder into {templateflow_home()} (TEMPLATEFLOW_HOME), expected e.g. at "
            f"{expected_image(tpl, *record.templateflow, suffix=record.kind)}")
    parts.append("or put a BIDS-Atlas folder holding it on BIDSFM_ATLAS_PATH")
    where = ("not in TemplateFlow (TEMPLATEFLOW_HOME=" + str(templateflow_home()) +
             f"; templates tried: {', '.join(order)})") if not record.releases else reason
    return AtlasNotFoundError(f"{record.name} atlas not available offline ({where})",
                              remedy="; ".join(parts))


def bundled_image(name: str) -> Path | None:
    """The package's own verified copy of a registry atlas image, None if it ships none."""
    from .store import bundled_path

    for release in REGISTRY[name].releases:
        path = bundled_path(release.image, name)
        if path is not None:
            return path
    return None


# --------------------------------------------------------------------------------------------
# Combined atlases (A+B)
# --------------------------------------------------------------------------------------------


def resolve_combined(names: list[str], *, space: str | None = None) -> Atlas:
    """Resolve registry atlases in one template and join them (:mod:`bidsfm.atlases.combine`).

    The template is the run's when every part is available in it (locally, or by download
    when allowed), else the first template of the parts' registry order in which all are.

    Raises
    ------
    AtlasNotFoundError
        No template holds every part; the message says which part is where.
    """
    from .combine import combine

    records = [REGISTRY[n] for n in names]
    tpl = template_id(space)
    candidates = list(dict.fromkeys(t for t in (tpl, *(t for r in records for t in r.templates))
                                    if t))
    for allow_download in (False, True):
        if allow_download and offline():
            break
        for t in candidates:
            parts = [_local(r, t) for r in records]
            if allow_download:
                try:
                    parts = [p or next(_from_release(r, rel, True) for rel in r.releases
                                       if rel.template == t)
                             for p, r in zip(parts, records, strict=True)]
                except (StopIteration, AtlasNotFoundError):
                    continue
            if all(parts):
                if tpl is not None and t != tpl:
                    warn_once(("combined-template", "+".join(names), tpl),
                              "%s: not every part is available in %s; joining them in %s",
                              "+".join(names), tpl, t)
                return combine(parts)
    where = []
    for r in records:
        have = [t for t in candidates if _local(r, t) is not None]
        where.append(f"{r.name}: {', '.join(have) or 'not available offline'}")
    raise AtlasNotFoundError(
        f"no template holds every part of {'+'.join(names)} ({'; '.join(where)})",
        remedy=f"Fetch the parts in one template, e.g. `bidsfm-atlas fetch {' '.join(names)} "
        f"--space {candidates[0]}` on a machine with internet access")
