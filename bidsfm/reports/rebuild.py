"""``--reports-only``: figures and reports rebuilt from the outputs on disk, nothing reprocessed.

Participant level: for every participant (``--participant-label`` or every ``sub-*`` folder of
the output), the attention PNGs are drawn again from the statmaps
(:func:`bidsfm.reports.subject.redraw_figures`, unless ``--no-figures``) and ``sub-<label>.html``
is written; then ``logs/CITATION.md`` from the options recorded in the outputs. Group level:
``group.html`` and ``logs/CITATION.md`` from ``group/group.json``. Neither reads the input
dataset, builds a pybids index or imports torch or Nipype.
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
    from .citation import write_citation
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
            n_png = len(written)
            problems.extend(bad)
        try:
            page = write_subject_report(output_dir, label, figures=figures)
        except Exception as exc:  # one participant's report must not stop the others
            problems.append(f"sub-{label}: the HTML report could not be written "
                            f"({type(exc).__name__}: {exc})")
            continue
        LOGGER.info("[%d/%d] sub-%s: %s%s", k, len(participants), label, page.name,
                    f" and {n_png} attention figure(s)" if figures else " (no figures)")
    try:
        write_citation(output_dir, {"analysis_level": "participant"})
    except Exception as exc:
        problems.append(f"logs/CITATION.md could not be written ({type(exc).__name__}: {exc})")
    return problems


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
