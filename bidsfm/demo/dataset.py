"""Write a synthetic fMRIPrep derivatives dataset: per run the BOLD image, brain mask,
confounds and their sidecars; the generator's own files under ``sourcedata/bidsfm-demo/``;
and the manifest that lists them all."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bidsfm.utils import write_json_atomic, write_text_atomic

from .anatomy import Anatomy, build_anatomy
from .confounds import format_tsv, run_confounds
from .grid import world_coords
from .nifti import write_nifti
from .participants import participant_rows, write_top_level
from .presets import DEMO_ATLASES, SIZES, RunSpec, SubjectSpec, subject_specs
from .simulate import simulate_run
from .target_fc import has_abide_series

__all__ = ["DEMO_DIR", "make_fmriprep_dataset"]

#: Where the generator keeps what a real dataset would not have (ignored by BIDS tools).
DEMO_DIR = Path("sourcedata") / "bidsfm-demo"


@dataclass(frozen=True)
class _Layout:
    """Where and how the files of one dataset are written."""

    root: Path
    space: str
    res_ent: str  # "_res-2" on the 2 mm MNI152NLin2009cAsym grid, else ""
    ext: str
    space_code: int
    compress: bool
    dtype: str


def _check_arguments(size: str, n_subjects: int | None, dtype: str, n_volumes: int | None
                     ) -> int:
    """Validate the options and return the number of participants."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    if dtype not in ("float32", "int16"):
        raise ValueError(f"dtype must be 'float32' or 'int16', not {dtype!r}")
    n_sub = SIZES[size].n_subjects if n_subjects is None else int(n_subjects)
    if n_sub < 1:
        raise ValueError("n_subjects must be at least 1")
    if n_volumes is not None and int(n_volumes) < 30:
        raise ValueError(f"n_volumes must be at least 30, not {n_volumes}")
    return n_sub


def _prepare_root(out_dir: str | Path, atlas: str, shared_data: str | Path | None
                  ) -> tuple[Path, Path | None]:
    """Create the dataset root, check the atlas; the ABIDE folder to recompute the FC from."""
    root = Path(out_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if atlas not in DEMO_ATLASES:
        raise ValueError(f"atlas must be one of {DEMO_ATLASES}, not {atlas!r}")
    if shared_data is not None and atlas == "CC200" and has_abide_series(shared_data):
        return root, Path(shared_data).resolve()
    return root, None


def _run_prefix(sub: str, spec: RunSpec) -> str:
    """``sub-X[_ses-Y]_task-Z[_run-N]`` of a run."""
    parts = [f"sub-{sub}"]
    if spec.session is not None:
        parts.append(f"ses-{spec.session}")
    parts.append(f"task-{spec.task}")
    if spec.run is not None:
        parts.append(f"run-{spec.run}")
    return "_".join(parts)


def _tsv_matrix(names: Sequence[str], mat: np.ndarray) -> str:
    """A square matrix as TSV with the names as header (``%.6f``)."""
    lines = ["\t".join(names)]
    lines += ["\t".join(f"{v:.6f}" for v in row) for row in mat]
    return "\n".join(lines) + "\n"


def _write_sourcedata(lay: _Layout, anat: Anatomy, voxel_size: float) -> tuple[Path, Path]:
    """Write the ROI label image (+ label table) and the target FC; return their paths."""
    demo_dir = lay.root / DEMO_DIR
    grid_tag = f"{voxel_size:g}mm"
    labels_path = (demo_dir / f"space-{lay.space}{lay.res_ent}_grid-{grid_tag}"
                   f"_seg-{anat.atlas}_dseg{lay.ext}")
    write_nifti(labels_path, np.asarray(anat.labels), anat.affine, compress=lay.compress,
                space_code=lay.space_code)
    write_text_atomic(labels_path.with_name(f"seg-{anat.atlas}_dseg.tsv"),
                      "index\tname\n" + "".join(f"{i}\t{nm}\n"
                                                for i, nm in enumerate(anat.roi_names, 1)))
    target_path = demo_dir / f"seg-{anat.atlas}_desc-target_relmat.tsv"
    write_text_atomic(target_path, _tsv_matrix(anat.roi_names, anat.target_corr))
    return labels_path, target_path


def _write_run(lay: _Layout, anat: Anatomy, subj: SubjectSpec, spec: RunSpec,
               rng: np.random.Generator, cut_z: float | None, labels_path: Path) -> dict:
    """Simulate one run, write its image, mask, confounds and sidecars; its manifest entry."""
    func = lay.root / f"sub-{subj.label}"
    if spec.session is not None:
        func = func / f"ses-{spec.session}"
    func = func / "func"
    stem = _run_prefix(subj.label, spec)
    bold = func / f"{stem}_space-{lay.space}{lay.res_ent}_desc-preproc_bold{lay.ext}"
    mask_p = func / f"{stem}_space-{lay.space}{lay.res_ent}_desc-brain_mask{lay.ext}"
    conf = func / f"{stem}_desc-confounds_timeseries.tsv"
    bold_json = bold.with_name(bold.name.split(".")[0] + ".json")
    res = simulate_run(bold, anat, spec, subj, rng, dtype=lay.dtype, compress=lay.compress,
                       space_code=lay.space_code, cut_z=cut_z)
    raw_uri = f"bids:raw:{'/'.join(func.relative_to(lay.root).parts)}/{stem}_bold.nii.gz"
    write_json_atomic(bold_json, {
        "RepetitionTime": subj.repetition_time,
        "TaskName": spec.task,
        "SkullStripped": False,
        "SliceTimingCorrected": False,
        "StartTime": 0,
        "Sources": [raw_uri],
    })
    mask = np.asarray(anat.mask).copy()
    if cut_z is not None:
        mask &= world_coords(anat.shape, anat.affine)[..., 2] <= cut_z
    write_nifti(mask_p, mask.astype(np.uint8), anat.affine, compress=lay.compress,
                space_code=lay.space_code)
    write_json_atomic(mask_p.with_name(mask_p.name.split(".")[0] + ".json"),
                      {"Type": "Brain", "RawSources": [raw_uri]})
    cols, meta = run_confounds(res, anat, subj.repetition_time, cut_z)
    write_text_atomic(conf, format_tsv(cols))
    write_json_atomic(conf.with_suffix(".json"), meta)
    return {
        "subject": subj.label, "session": spec.session, "task": spec.task,
        "run": spec.run, "bold": str(bold), "mask": str(mask_p),
        "confounds": str(conf), "confounds_json": str(conf.with_suffix(".json")),
        "bold_json": str(bold_json), "labels": str(labels_path),
        "repetition_time": subj.repetition_time, "n_volumes": spec.n_volumes,
        "n_nss": spec.n_nss, "motion": spec.motion, "fov_cut": subj.fov_cut,
        "n_motion_outliers": sum(1 for k in cols if k.startswith("motion_outlier")),
    }


def _write_runs(lay: _Layout, anat: Anatomy, subjects: Sequence[SubjectSpec], seed: int,
                labels_path: Path, progress: Any) -> list[dict]:
    """Write every run of every participant, telling ``progress``; the manifest entries."""
    if progress is None:
        import logging

        from bidsfm.progress import Steps

        progress = Steps("demo dataset", len(subjects), logging.getLogger("bidsfm.demo"),
                         bar=False)
    brain_top = float(world_coords(anat.shape, anat.affine)[..., 2][anat.brain].max())
    runs = []
    for si, subj in enumerate(subjects):
        item = f"sub-{subj.label}"
        progress.start(item, f"simulating {len(subj.runs)} run(s)")
        cut_z = brain_top - 15.0 if subj.fov_cut else None
        for ri, spec in enumerate(subj.runs):
            rng = np.random.default_rng([seed, si, ri, 2718])
            runs.append(_write_run(lay, anat, subj, spec, rng, cut_z, labels_path))
        progress.end(item, f"{len(subj.runs)} run(s) written")
    return runs


def make_fmriprep_dataset(out_dir: str | Path, *, size: str = "tiny",
                          n_subjects: int | None = None, seed: int = 0,
                          shared_data: str | Path | None = None, atlas: str = "CC200",
                          space: str = "MNI152NLin2009cAsym", dtype: str = "float32",
                          compress: bool = True, n_volumes: int | None = None,
                          progress: Any = None) -> dict:
    """Write a synthetic fMRIPrep derivatives dataset and return its manifest.

    Parameters
    ----------
    out_dir : str or Path
        Dataset root to create (existing files with the same names are replaced).
    size : {"tiny", "small", "full"}
        Preset: "tiny" (6 mm, 3 subjects, 70-100 volumes; for unit tests), "small" (4 mm,
        140-180 volumes; for the demo) or "full" (1 subject, one 300-volume run on the
        97 x 115 x 97 res-2 grid; for benchmarks).
    n_subjects : int, optional
        Number of participants (default: the preset's). Extra participants cycle through the
        preset's subject templates (sites, TRs and run layouts).
    seed : int
        Seed; the same seed gives byte-identical files.
    shared_data : str or Path, optional
        Not needed: the CC200 atlas and the mean ABIDE FC ship with the package. Given a
        directory with ``abide/cc200_timeseries.npz`` and ``abide/participants.tsv``, the target
        FC is recomputed from those series (equal to the bundled one within float16 rounding);
        a path without them is ignored.
    atlas : {"CC200", "procedural"}
        Parcellation the signals are planted in: CC200 (default) or a procedural one (about 100
        parcels of an ellipsoidal brain with a procedural network covariance).
    space : str
        Value of the ``space-`` entity.
    dtype : {"float32", "int16"}
        On-disk data type of BOLD images (int16 uses scl_slope).
    compress : bool
        Write ``.nii.gz`` (default) or ``.nii``.
    n_volumes : int, optional
        Length of every run (default: the preset's), e.g. to benchmark memory against run
        length. At least 30.
    progress : bidsfm.progress.Steps, optional
        Told when each participant starts and ends (``bidsfm-demo`` passes one: a bar on a
        terminal, a line per participant off it). Default: log lines to ``bidsfm.demo``.

    Returns
    -------
    dict
        Manifest: ``root``, ``size``, ``seed``, ``atlas`` ("CC200" or "procedural"),
        ``shared_data`` (the directory the target FC was recomputed from, else None),
        ``target_fc_source`` ("bundled", "abide" or "procedural"),
        ``roi_names``, ``target_fc`` (TSV of the target ROI correlation), ``voxel_size``,
        ``participants`` and ``runs``, a list of dicts with ``subject``, ``session``, ``task``,
        ``run`` (int or None), ``bold``, ``mask``, ``confounds``, ``confounds_json``,
        ``bold_json``, ``labels`` (the ROI label image on the run grid), ``repetition_time``,
        ``n_volumes``, ``n_nss``, ``motion``, ``fov_cut`` and ``n_motion_outliers``. It is also
        written to ``sourcedata/bidsfm-demo/manifest.json``.
    """
    n_sub = _check_arguments(size, n_subjects, dtype, n_volumes)
    preset = SIZES[size]
    root, shared_dir = _prepare_root(out_dir, atlas, shared_data)
    anat = build_anatomy(preset.voxel_size, None if shared_dir is None else str(shared_dir),
                         seed, atlas)
    subjects = subject_specs(size, n_sub, seed, None if n_volumes is None else int(n_volumes))
    res_ent = "_res-2" if (preset.voxel_size == 2.0 and space == "MNI152NLin2009cAsym") else ""
    lay = _Layout(root, space, res_ent, ".nii.gz" if compress else ".nii",
                  4 if space.upper().startswith("MNI") else 2, compress, dtype)
    write_top_level(root, subjects)
    labels_path, target_path = _write_sourcedata(lay, anat, preset.voxel_size)
    runs = _write_runs(lay, anat, subjects, seed, labels_path, progress)
    manifest = {
        "root": str(root), "size": size, "seed": seed, "space": space,
        "voxel_size": preset.voxel_size, "shape": list(anat.shape), "dtype": dtype,
        "atlas": anat.atlas, "shared_data": None if shared_dir is None else str(shared_dir),
        "target_fc_source": ("procedural" if atlas == "procedural"
                             else "bundled" if shared_dir is None else "abide"),
        "labels": str(labels_path), "target_fc": str(target_path),
        "roi_names": list(anat.roi_names), "participants": participant_rows(subjects),
        "runs": runs,
    }
    write_json_atomic(root / DEMO_DIR / "manifest.json", manifest)
    return manifest
