"""``--reports-only``: figures and reports rebuilt from the outputs on disk, nothing reprocessed.

Participant level: for every participant (``--participant-label`` or every ``sub-*`` folder of
the output), the attention PNGs are drawn again from the statmaps
(:func:`bidsfm.reports.subject.redraw_figures`) and the atlas placement PNGs from the brain mask
and the atlas recorded in each run's QC sidecar (:func:`redraw_placement_figures`: the mask is
read from the input dataset named in ``DatasetLinks``, the atlas from the output's own
``sourcedata/atlases`` copy, checked against the sha256 the run recorded), unless
``--no-figures``; then ``sub-<label>.html`` is written, and ``logs/CITATION.md`` from the options
recorded in the outputs. Group level: ``group.html`` and ``logs/CITATION.md`` from
``group/group.json``. Neither builds a pybids index or imports torch or Nipype.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..errors import ConfigError

LOGGER = logging.getLogger("bidsfm.reports")


def _participants(output_dir: Path, labels: list[str]) -> list[str]:
    found = sorted(p.name[4:] for p in output_dir.glob("sub-*") if p.is_dir())
    if not labels:
        return found
    missing = [label for label in labels if label not in found]
    if missing:
        raise ConfigError(f"--reports-only: no outputs for {', '.join('sub-' + m for m in missing)}"
                          f" in {output_dir}", remedy="Run the participant level for them first")
    return list(labels)


def rebuild_participant_reports(output_dir: str | Path, labels: list[str] | None = None, *,
                                figures: bool = True) -> list[str]:
    """Redraw the attention PNGs and rewrite ``sub-<label>.html`` of each participant.

    Parameters
    ----------
    output_dir : str or Path
        The bidsfm derivatives folder (written by the participant level).
    labels : list of str, optional
        Participant labels without ``sub-`` (default: every ``sub-*`` folder).
    figures : bool
        Draw the figures; ``False`` writes the reports without any (``--no-figures``).

    Returns
    -------
    list of str
        One line per problem (a statmap that cannot be drawn, a report that cannot be
        written); the other participants are still done.

    Raises
    ------
    ConfigError
        If the folder holds no bidsfm participant outputs, or none for a requested label.
    """
    from .citation import recorded_options, write_citation
    from .subject import redraw_figures, write_subject_report

    output_dir = Path(output_dir)
    participants = _participants(output_dir, list(labels or []))
    if not participants:
        raise ConfigError("--reports-only: no participant outputs (no sub-* folder)",
                          path=output_dir, remedy="Run the participant level first")
    problems: list[str] = []
    for k, label in enumerate(participants, start=1):
        n_png = 0
        if figures:
            written, bad = redraw_figures(output_dir, label)
            placed, bad_placed = redraw_placement_figures(output_dir, label)
            n_png = len(written) + len(placed)
            problems.extend(bad + bad_placed)
        try:
            page = write_subject_report(output_dir, label, figures=figures)
        except Exception as exc:  # one participant's report must not stop the others
            problems.append(f"sub-{label}: the HTML report could not be written "
                            f"({type(exc).__name__}: {exc})")
            continue
        LOGGER.info("[%d/%d] sub-%s: %s%s", k, len(participants), label, page.name,
                    f" and {n_png} figure(s)" if figures else " (no figures)")
    try:  # the options recorded in the outputs, in the order the participant level gives them
        recorded = recorded_options(output_dir)
        model = recorded.pop("model", "none")
        write_citation(output_dir, {**recorded, "analysis_level": "participant", "model": model})
    except Exception as exc:
        problems.append(f"logs/CITATION.md could not be written ({type(exc).__name__}: {exc})")
    return problems


def redraw_placement_figures(output_dir: str | Path, subject: str
                             ) -> tuple[list[Path], list[str]]:
    """Draw the atlas placement PNGs of a participant again (after ``--no-figures``).

    For every processed run and label atlas: the run's grid (the BOLD header) and brain mask
    from the input dataset its QC sidecar names (``Sources``, resolved with the output's
    ``DatasetLinks``), the atlas from ``sourcedata/atlases`` (the file the run read: its sha256
    must equal the one recorded), placed on the grid as during processing
    (:func:`bidsfm.atlases.place_atlas`) and drawn by
    :func:`bidsfm.reports.placement.write_placement_figure`.

    Parameters
    ----------
    output_dir : str or Path
        The bidsfm derivatives folder.
    subject : str
        Participant label, with or without ``sub-``.

    Returns
    -------
    written : list of Path
        The PNGs written.
    problems : list of str
        One line per run that could not be drawn (input moved, atlas changed...); the others
        are still drawn.
    """
    import nibabel as nib

    from ..atlases import place_atlas, resolve_atlas
    from ..derivatives import atlas_dataset_paths, resolve_bids_uri
    from ..extract import load_mask
    from .placement import write_placement_figure
    from .readers import read_json
    from .subject import find_runs, subject_folder

    output_dir = Path(output_dir)
    subject_dir = subject_folder(output_dir, subject)
    links = (read_json(output_dir / "dataset_description.json")[0] or {}).get("DatasetLinks") or {}
    written: list[Path] = []
    problems: list[str] = []
    for run in find_runs(subject_dir):
        qc_json = run.output("qc_json")
        meta = read_json(qc_json)[0] or {}
        atlas_meta = meta.get("Atlas") or {}
        if meta.get("Status") != "ok" or not atlas_meta.get("Name"):
            continue  # a skipped or failed run has no placement figure
        space = run.entities.get("space")
        template = atlas_meta.get("Template") or space
        image = atlas_dataset_paths(output_dir, atlas_meta["Name"], template)["image"]
        if not image.is_file():
            continue  # a probabilistic atlas (no placement figure) or no atlas copy
        try:
            sources = meta.get("Sources") or []
            if len(sources) < 2:
                raise ValueError("its QC sidecar names no BOLD file and brain mask")
            bold, mask_path = (resolve_bids_uri(u, links, output_dir)
                               for u in sources[:2])
            for needed in (bold, mask_path):
                if not needed.is_file():
                    raise ValueError(f"input file not found: {needed} (the input dataset "
                                     "recorded in dataset_description.json DatasetLinks: was "
                                     "it moved?)")
            atlas = resolve_atlas(f"{atlas_meta['Name']}={image}", space=space)
            if atlas.sha256 != atlas_meta.get("SHA256"):
                raise ValueError(f"{image} is not the atlas file the run read (sha256 differs)")
            header = nib.load(str(bold))
            shape = tuple(header.shape[:3])
            mask = load_mask(mask_path, header.affine, header.shape)
            projection, _info = place_atlas(atlas, header.affine, shape, mask,
                                            target_space=space)
            if getattr(projection, "labels", None) is None:
                continue
            written.append(write_placement_figure(run.placement_figure(subject_dir),
                                                  projection.labels, mask, header.affine))
        except ValueError as exc:
            problems.append(f"{qc_json.name}: atlas placement figure not drawn ({exc})")
        except Exception as exc:  # one run's inputs must not stop the others
            problems.append(f"{qc_json.name}: atlas placement figure not drawn "
                            f"({type(exc).__name__}: {exc})")
    return written, problems


def rebuild_group_report(output_dir: str | Path) -> list[str]:
    """Rewrite ``group.html`` and ``logs/CITATION.md`` from ``group/group.json``.

    Returns
    -------
    list of str
        One line per part that could not be written.

    Raises
    ------
    ConfigError
        If the group level has not written ``group/group.json``.
    """
    from .citation import write_citation
    from .group import write_group_report

    output_dir = Path(output_dir)
    record_path = output_dir / "group" / "group.json"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--reports-only: no readable group record ({exc})", path=record_path,
                          remedy="Run the group level first") from None
    options = record.get("options") if isinstance(record, dict) else None
    problems = []
    for name, call in (("group.html", lambda: write_group_report(output_dir)),
                       ("logs/CITATION.md", lambda: write_citation(
                           output_dir, {**(options if isinstance(options, dict) else {}),
                                        "level": "group"}))):
        try:
            call()
            LOGGER.info("%s written", name)
        except Exception as exc:
            problems.append(f"{name} could not be written ({type(exc).__name__}: {exc})")
    return problems
