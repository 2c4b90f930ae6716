"""The top-level files of a synthetic dataset: ``dataset_description.json`` and the
participants table (``participants.tsv`` with its ``participants.json`` data dictionary)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bidsfm.utils import write_json_atomic, write_text_atomic

from .presets import SubjectSpec

__all__ = ["FMRIPREP_VERSION", "participant_rows", "write_top_level"]

#: fMRIPrep version the synthetic derivatives claim to come from.
FMRIPREP_VERSION = "24.1.1"

_PARTICIPANTS_JSON = {
    "participant_id": {"Description": "Participant identifier (sub-<label>)."},
    "site": {"Description": "Acquisition site (repetition time differs between sites)."},
    "diagnosis": {"Description": "Diagnostic group.",
                  "Levels": {"ASD": "autism spectrum disorder", "TC": "typical control"}},
    "age": {"Description": "Age at scan.", "Units": "year"},
    "sex": {"Description": "Sex.", "Levels": {"M": "male", "F": "female"}},
}


def participant_rows(subjects: Sequence[SubjectSpec]) -> list[dict]:
    """The participants as the manifest lists them.

    Parameters
    ----------
    subjects : sequence of SubjectSpec
        The generated participants.

    Returns
    -------
    list of dict
        ``participant_id``, ``site``, ``diagnosis``, ``age``, ``sex`` and ``repetition_time``
        of each.
    """
    return [{"participant_id": f"sub-{s.label}", "site": s.site, "diagnosis": s.diagnosis,
             "age": s.age, "sex": s.sex, "repetition_time": s.repetition_time}
            for s in subjects]


def write_top_level(root: Path, subjects: Sequence[SubjectSpec]) -> None:
    """Write ``dataset_description.json``, ``participants.tsv`` and ``participants.json``.

    Parameters
    ----------
    root : Path
        Dataset root.
    subjects : sequence of SubjectSpec
        The generated participants (one row each: id, site, diagnosis, age, sex).
    """
    write_json_atomic(root / "dataset_description.json", {
        "Name": "bidsfm demo: synthetic fMRIPrep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": FMRIPREP_VERSION,
                         "CodeURL": "https://github.com/nipreps/fmriprep"}],
        "HowToAcknowledge": "Synthetic data made by bidsfm.demo; not real participants.",
    })
    lines = ["participant_id\tsite\tdiagnosis\tage\tsex"]
    for s in subjects:
        lines.append(f"sub-{s.label}\t{s.site}\t{s.diagnosis}\t{s.age:.1f}\t{s.sex}")
    write_text_atomic(root / "participants.tsv", "\n".join(lines) + "\n")
    write_json_atomic(root / "participants.json", _PARTICIPANTS_JSON)
