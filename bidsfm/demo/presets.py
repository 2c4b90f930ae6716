"""Size presets and the participant/run layout of a synthetic dataset.

Three participant templates (sites A, B and C, each with its repetition time and run layout)
repeat for as many participants as asked; diagnosis alternates ASD/TC and age and sex are drawn
with the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["DEMO_ATLASES", "SIZES", "RunSpec", "SizePreset", "SubjectSpec", "subject_specs"]

#: Parcellations the generator can plant signals in.
DEMO_ATLASES = ("CC200", "procedural")


@dataclass(frozen=True)
class RunSpec:
    """One BOLD run to generate."""

    session: str | None
    task: str
    run: int | None
    n_volumes: int
    n_nss: int
    motion: str  # "low", "spikes" or "heavy"


@dataclass(frozen=True)
class SubjectSpec:
    """One participant to generate."""

    label: str
    site: str
    diagnosis: str
    age: float
    sex: str
    repetition_time: float
    fov_cut: bool
    runs: tuple[RunSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SizePreset:
    """Grid and run-length settings of a size preset."""

    voxel_size: float
    volumes: dict[str, int]  # per site template ("A", "B", "C", "nback")
    n_subjects: int


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(6.0, {"A": 80, "B": 90, "C": 100, "nback": 70}, 3),
    "small": SizePreset(4.0, {"A": 150, "B": 160, "C": 180, "nback": 140}, 3),
    "full": SizePreset(2.0, {"A": 300}, 1),
}

# site template -> (site name, repetition time in s)
_SITES = {"A": ("siteA", 2.0), "B": ("siteB", 1.5), "C": ("siteC", 0.8)}


def _template_runs(size: str, templ: str, vols: dict[str, int]
                   ) -> tuple[tuple[RunSpec, ...], bool]:
    """Runs and field-of-view cut of one participant template."""
    if size == "full":
        return (RunSpec(None, "rest", 1, vols["A"], 2, "spikes"),), False
    if templ == "A":
        return (
            RunSpec("1", "rest", 1, vols["A"], 2, "low"),
            RunSpec("1", "rest", 2, vols["A"], 0, "spikes"),
            RunSpec("2", "rest", 1, vols["A"], 1, "low"),
        ), False
    if templ == "B":
        return (
            RunSpec(None, "rest", 1, vols["B"], 3, "spikes"),
            RunSpec(None, "nback", None, vols["nback"], 1, "low"),
        ), True
    return (
        RunSpec(None, "rest", 1, vols["C"], 2, "spikes"),
        RunSpec(None, "rest", 2, vols["C"], 0, "heavy"),
    ), False


def subject_specs(size: str, n_subjects: int, seed: int, n_volumes: int | None = None
                  ) -> list[SubjectSpec]:
    """Build the participant/run list of a size preset.

    Parameters
    ----------
    size : {"tiny", "small", "full"}
        The preset (:data:`SIZES`).
    n_subjects : int
        Number of participants; they cycle through the templates A, B and C.
    seed : int
        Seed of the ages and sexes.
    n_volumes : int, optional
        Length of every run (default: the preset's lengths).

    Returns
    -------
    list of SubjectSpec
        Participants ``01``, ``02``, ... with their runs.
    """
    preset = SIZES[size]
    vols = preset.volumes if n_volumes is None else dict.fromkeys(preset.volumes, n_volumes)
    rng = np.random.default_rng([seed, 7919])
    specs = []
    for i in range(n_subjects):
        templ = "ABC"[i % 3]
        site, tr = _SITES[templ]
        diagnosis = ("ASD", "TC")[i % 2]
        age = round(float(rng.uniform(7.0, 40.0)), 1)
        sex = "M" if rng.random() < 0.7 else "F"
        runs, fov_cut = _template_runs(size, templ, vols)
        specs.append(SubjectSpec(f"{i + 1:02d}", site, diagnosis, age, sex, tr, fov_cut, runs))
    return specs
