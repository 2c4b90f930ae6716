"""Inputs as users really have them (issue 14, "Inputs"; issue 17, implausible TR).

Real fMRIPrep files of five versions (1.5.3, 20.1.0, 20.2.3, 22.0.2, 23.1.3) are in
``tests/data/fmriprep`` (sources in ``tests/data/SOURCES.md``): confounds TSV/JSON (truncated to
30 volumes), dataset descriptions, derivative and raw BOLD sidecars. Each is placed in a small
fMRIPrep tree beside a synthetic 30-volume BOLD image and brain mask.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import clone_dataset, run_cli

from bidsfm.denoising import DenoiseStrategy, load_confounds
from bidsfm.derivatives import ensure_dataset_description, input_generated_by
from bidsfm.discovery import (
    TR_RANGE,
    build_layout,
    check_space,
    collect_runs,
    content_problem,
    locate_raw_dataset,
    raw_sidecars,
    resolve_repetition_time,
)
from bidsfm.errors import ConfigError, InputDataError

DATA = Path(__file__).parent / "data" / "fmriprep"
SPACE = "MNI152NLin2009cAsym"
N_VOL = 30

#: version -> (participant, run prefix, confounds suffix, RepetitionTime of the real sidecars)
REAL = {
    "v1.5.3": ("130", "sub-130_task-sharedreward_run-01", "regressors", 2.02),
    "v20.1.0": ("104", "sub-104_task-trust_run-1", "regressors", 2.02),
    "v22.0.2": ("10017", "sub-10017_task-sharedreward_acq-mb1me1", "timeseries", 3.39),
    "v23.1.3": ("10572", "sub-10572_task-doors_run-1", "timeseries", 1.615),
}
#: the symlink fMRIPrep 20.2.3's confounds TSV is in the DataLad dataset
#: courtois-neuromod/physiopy_tutorial (content never fetched), as ``git ls-tree`` shows it
ANNEX_TARGET = ("../../../../../.git/annex/objects/Z8/4P/SHA256E-s2608624--106a80e17a323775a1163"
                "439558f9f14e8d69636e151698267230ac32324b708.tsv/SHA256E-s2608624--106a80e17a3237"
                "75a1163439558f9f14e8d69636e151698267230ac32324b708.tsv")


def _nifti(path: Path, shape: tuple, tr: float | None, dtype=np.float32, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = (100 + rng.standard_normal(shape)).astype(dtype) if len(shape) == 4 else \
        np.ones(shape, dtype=np.uint8)
    img = nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]) @ np.array(
        [[1, 0, 0, -20], [0, 1, 0, -24], [0, 0, 1, -16], [0, 0, 0, 1.0]]))
    img.header.set_xyzt_units("mm", "sec")
    if len(shape) == 4:
        img.header["pixdim"][4] = 0.0 if tr is None else tr  # 0: no TR in the header
    path.parent.mkdir(parents=True, exist_ok=True)
    img.to_filename(str(path))


def real_tree(version: str, root: Path, *, header_tr: float | None = "real",
              derivative_sidecar: bool = True, raw: bool = True) -> dict:
    """An fMRIPrep tree holding a version's real files and a synthetic 30-volume BOLD run."""
    sub, prefix, suffix, tr = REAL[version]
    src = DATA / version
    deriv = root / "derivatives" / "fmriprep"
    func = deriv / f"sub-{sub}" / "func"
    func.mkdir(parents=True)
    shutil.copy(src / "dataset_description.json", deriv)
    for f in (src / f"sub-{sub}" / "func").iterdir():
        if "confounds" in f.name:
            shutil.copy(f, func / f.name)
    bold = func / f"{prefix}_space-{SPACE}_desc-preproc_bold.nii.gz"
    _nifti(bold, (10, 12, 8, N_VOL), tr if header_tr == "real" else header_tr)
    _nifti(func / f"{prefix}_space-{SPACE}_desc-brain_mask.nii.gz", (10, 12, 8), None)
    real_sidecar = src / f"sub-{sub}" / "func" / bold.name.replace(".nii.gz", ".json")
    if derivative_sidecar and real_sidecar.is_file():
        shutil.copy(real_sidecar, func)
    if raw and (src / "rawdata").is_dir():
        shutil.copytree(src / "rawdata", root, dirs_exist_ok=True)
    return {"root": root, "deriv": deriv, "bold": bold, "sub": sub, "tr": tr,
            "confounds": func / f"{prefix}_desc-confounds_{suffix}.tsv"}


def _collect(deriv: Path, sub: str, space: str = SPACE, raw_dir: Path | None = None):
    layout = build_layout(deriv, [sub], None)
    kwargs = {} if raw_dir is None else {"raw_dir": raw_dir}
    return collect_runs(layout, deriv, sub, space=space, **kwargs)


# --------------------------------------------------------------------------------------------
# 3. confounds of every fMRIPrep from 1.2 (desc-confounds_regressors) to today


@pytest.mark.parametrize("version", sorted(REAL))
def test_real_confounds_of_each_version_are_found_and_match_nilearn(version, tmp_path):
    """fMRIPrep 1.5.3 and 20.1.0 name the file desc-confounds_regressors.tsv (refused before);
    22.0.2 and 23.1.3 desc-confounds_timeseries.tsv. Discovery finds each, and the selection
    equals nilearn's on the same real file."""
    tree = real_tree(version, tmp_path)
    runs, problems = _collect(tree["deriv"], tree["sub"],
                              raw_dir=locate_raw_dataset(tree["root"], tree["deriv"]))
    assert problems == [] and len(runs) == 1
    run = runs[0]
    assert Path(run.confounds) == tree["confounds"]
    assert run.confounds_json and Path(run.confounds_json).is_file()
    assert run.repetition_time == pytest.approx(tree["tr"])

    from nilearn.interfaces.fmriprep import load_confounds as nilearn_load_confounds

    # strategies small enough for 30 volumes (the presets need more than 30 regressors)
    cases = [
        (DenoiseStrategy("basic", motion="basic", wm_csf="basic", high_pass=True),
         {"strategy": ("motion", "wm_csf", "high_pass"), "motion": "basic", "wm_csf": "basic"}),
        (DenoiseStrategy("scrub", motion="basic", global_signal="basic", scrub=3,
                         fd_threshold=0.5, std_dvars_threshold=2.0),
         {"strategy": ("motion", "global_signal", "scrub"), "motion": "basic",
          "global_signal": "basic", "scrub": 3, "fd_threshold": 0.5,
          "std_dvars_threshold": 2.0}),
        (DenoiseStrategy("compcor", motion="basic", high_pass=True, compcor="anat_combined",
                         n_compcor=2),
         {"strategy": ("motion", "high_pass", "compcor"), "motion": "basic",
          "compcor": "anat_combined", "n_compcor": 2}),
    ]
    for strategy, kwargs in cases:
        ours = load_confounds(run.confounds, strategy, n_volumes=N_VOL,
                              confounds_json=run.confounds_json)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref, mask = nilearn_load_confounds(run.bold, **kwargs)
        expected = np.arange(N_VOL) if mask is None else np.asarray(mask)
        np.testing.assert_array_equal(ours.sample_mask, expected)
        assert sorted(ours.columns_used) == sorted(ref.columns), strategy.name
        np.testing.assert_allclose(ours.confounds[sorted(ref.columns)].to_numpy(),
                                   ref[sorted(ref.columns)].to_numpy(float), atol=1e-10)


def test_old_confounds_name_runs_end_to_end(tmp_path, tiny_ds, capsys):
    """A whole dataset with fMRIPrep <= 20.1 names is processed (it was refused run by run)."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    for tsv in ds.rglob("*desc-confounds_timeseries.*"):
        tsv.rename(tsv.with_name(tsv.name.replace("_timeseries", "_regressors")))
    code, log = run_cli([ds, tmp_path / "out", "participant", "--participant-label", "03",
                         "-w", tmp_path / "w", "--min-time", "0", "--model", "none"], capsys)
    assert code == 0, log
    qcs = list((tmp_path / "out").rglob("*_qc.tsv"))
    assert qcs and all(pd.read_csv(q, sep="\t")["status"].iloc[0] == "ok" for q in qcs)


# --------------------------------------------------------------------------------------------
# 4. provenance of old dataset descriptions


@pytest.mark.parametrize("version,expected", [
    ("v1.5.3", "1.5.3"), ("v20.1.0", "20.1.0"), ("v20.2.3", "20.2.3"), ("v22.0.2", "22.0.2"),
    ("v23.1.3", "23.1.3")])
def test_generated_by_from_real_descriptions(version, expected, tmp_path):
    """fMRIPrep <= 20.1 writes PipelineDescription, later ones GeneratedBy: both end up after
    bidsfm in the output's GeneratedBy (the old form was dropped before)."""
    src = DATA / version
    entries = input_generated_by(src)
    assert entries and entries[0]["Name"] == "fMRIPrep" and entries[0]["Version"] == expected
    assert entries[0]["CodeURL"].endswith(f"{expected}.tar.gz")
    out = tmp_path / "out"
    ensure_dataset_description(out, src, {"preprocessed": str(src)})
    desc = json.loads((out / "dataset_description.json").read_text())
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["bidsfm", "fMRIPrep"]
    assert desc["GeneratedBy"][1]["Version"] == expected


# --------------------------------------------------------------------------------------------
# 5. RepetitionTime: derivative sidecar, raw sidecars (inheritance), NIfTI header


def test_tr_from_raw_sidecar_when_derivative_has_none(tmp_path):
    """fMRIPrep 20.1.0 outputs kept without their BOLD sidecar: the raw run-01 sidecar applies
    to fMRIPrep's run-1 and gives 2.02 s, which the header confirms."""
    tree = real_tree("v20.1.0", tmp_path)
    raw = locate_raw_dataset(tree["root"], tree["deriv"])
    assert raw == tree["root"]
    runs, problems = _collect(tree["deriv"], tree["sub"], raw_dir=raw)
    assert problems == []
    assert runs[0].repetition_time == pytest.approx(2.02)
    assert runs[0].repetition_time_source.startswith("raw sidecar (sub-104_task-trust_run-01_")
    assert "NIfTI header" in runs[0].repetition_time_source


@pytest.mark.parametrize("version,applies", [
    # top-level task sidecar and the subject's own: the subject's wins (inheritance)
    ("v22.0.2", ["task-sharedreward_acq-mb1me1_bold.json",
                 "sub-10017_task-sharedreward_acq-mb1me1_bold.json"]),
    # multi-echo raw data: the echo-1 sidecar does not apply to the combined run
    ("v23.1.3", ["task-doors_bold.json"]),
])
def test_raw_sidecar_inheritance(version, applies, tmp_path):
    tree = real_tree(version, tmp_path, header_tr=None)
    raw = locate_raw_dataset(None, tree["deriv"])  # found as <raw>/derivatives/fmriprep
    assert raw == tree["root"]
    ents = {"subject": tree["sub"], **dict(p.split("-") for p in
                                           tree["bold"].name.split("_")[1:-3])}
    ents = {{"acq": "acquisition"}.get(k, k): v for k, v in ents.items()}
    assert [p.name for p in raw_sidecars(raw, ents)] == applies
    tr, source = resolve_repetition_time(tree["bold"], ents, raw)
    assert tr == pytest.approx(tree["tr"]) and source.startswith("raw sidecar")


def test_tr_from_nifti_header_and_recorded(tmp_path, tiny_ds, capsys):
    """No RepetitionTime in any sidecar: the header's is used, and the QC table and the time
    series sidecar say so (before: the run was refused)."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    for sidecar in ds.rglob("*desc-preproc_bold.json"):
        meta = json.loads(sidecar.read_text())
        meta.pop("RepetitionTime")
        sidecar.write_text(json.dumps(meta))
    code, log = run_cli([ds, tmp_path / "out", "participant", "--participant-label", "03",
                         "-w", tmp_path / "w", "--min-time", "0", "--model", "none"], capsys)
    assert code == 0, log
    qc = pd.read_csv(next((tmp_path / "out").rglob("*_qc.tsv")), sep="\t")
    assert qc["repetition_time_source"].iloc[0].startswith("NIfTI header")
    ts = json.loads(next((tmp_path / "out").rglob("*_timeseries.json")).read_text())
    assert ts["RepetitionTimeSource"].startswith("NIfTI header")


def test_tr_sources_disagree(tmp_path):
    """Derivative sidecar 2.02 s (real, fMRIPrep 1.5.3) but the header says 2.5 s: refused,
    naming both."""
    tree = real_tree("v1.5.3", tmp_path, header_tr=2.5)
    runs, problems = _collect(tree["deriv"], tree["sub"])
    assert runs == [] and len(problems) == 1
    msg = problems[0].message
    assert "disagrees" in msg and "2.02 s" in msg and "2.5 s" in msg and "\n" not in msg


def test_tr_raw_and_derivative_disagree(tmp_path):
    tree = real_tree("v1.5.3", tmp_path, header_tr=None)
    raw_json = next((tmp_path / "sub-130").rglob("*_bold.json"))
    meta = json.loads(raw_json.read_text())
    meta["RepetitionTime"] = 1.0
    raw_json.write_text(json.dumps(meta))
    with pytest.raises(InputDataError, match="disagrees") as exc:
        resolve_repetition_time(tree["bold"], {"subject": "130", "task": "sharedreward",
                                               "run": "01"}, tmp_path)
    assert raw_json.name in str(exc.value)


@pytest.mark.parametrize("raw_value,words", [
    ("2000", "milliseconds"), ("true", "not a number"), ("Infinity", "not a positive"),
    ("1e-300", "shorter than"), ('"2.0"', "not a number"), ("NaN", "not a positive"),
    ("-1", "not a positive"), ("0", "not a positive"), ("null", "not a number"),
    ("45", "longer than")])
def test_implausible_tr_refused(raw_value, words, tmp_path):
    """Issue 17: 2000 (ms) ran as 2000 s, true became 1 s, Infinity broke the report later,
    1e-300 was accepted. Each is now one line naming the sidecar and the accepted range."""
    tree = real_tree("v1.5.3", tmp_path, header_tr=None)
    sidecar = tree["bold"].with_name(tree["bold"].name.replace(".nii.gz", ".json"))
    sidecar.write_text(sidecar.read_text().replace("2.02", raw_value))
    runs, problems = _collect(tree["deriv"], tree["sub"])
    assert runs == [] and len(problems) == 1
    msg = problems[0].message
    assert msg.startswith(str(sidecar)) and words in msg and "\n" not in msg
    assert f"{TR_RANGE[0]:g} s to {TR_RANGE[1]:g} s" in msg


# --------------------------------------------------------------------------------------------
# 6. DataLad clones without 'datalad get'


def test_datalad_dangling_confounds_says_datalad_get(tmp_path, tiny_ds, capsys):
    """The confounds TSV is an annex symlink with no content (as in the real DataLad dataset
    courtois-neuromod/physiopy_tutorial): the error says the content is not present and how to
    get it, and never 'rerun fMRIPrep'."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    tsv = sorted(ds.rglob("*desc-confounds_timeseries.tsv"))[0]
    tsv.unlink()
    tsv.symlink_to(ANNEX_TARGET)
    code, log = run_cli([ds, tmp_path / "out", "participant", "--participant-label", "03",
                         "-w", tmp_path / "w", "--min-time", "0", "--model", "none"], capsys)
    assert code == 1
    lines = [ln for ln in log.splitlines() if tsv.name in ln and "ERROR" in ln]
    assert len(lines) == 1, log
    assert "not present" in lines[0] and f"datalad get {tsv}" in lines[0]
    assert "rerun fMRIPrep" not in log


@pytest.mark.parametrize("kind", ["symlink", "pointer"])
def test_datalad_bold_not_fetched(kind, tmp_path):
    bold = tmp_path / "sub-01_task-rest_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    if kind == "symlink":
        bold.symlink_to("../../.git/annex/objects/Wg/J3/SHA256E-s1029428917--e5e4.nii.gz/"
                        "SHA256E-s1029428917--e5e4.nii.gz")
    else:  # unlocked annex (adjusted branch): a pointer file
        bold.write_text("/annex/objects/MD5E-s693--78caf2feeae594babb97041aa2bd8ed0.nii.gz\n")
    err = content_problem(bold, "BOLD image")
    assert err is not None and "not present" in err.one_line()
    assert "datalad get" in err.one_line()
    assert content_problem(DATA / "v20.2.3" / "dataset_description.json", "x") is None


# --------------------------------------------------------------------------------------------
# 2. only the exact desc-preproc BOLD


def test_user_desc_preproc_variant_ignored(tmp_path, tiny_ds, caplog):
    """A user's ..._desc-preproc-smooth90_bold.nii.gz (seen in a real OpenNeuro derivatives
    tree) sorts before fMRIPrep's file; it was taken instead, with a 'several resolutions'
    warning."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    bold = sorted(ds.rglob("*_desc-preproc_bold.nii.gz"))[0]
    other = sorted(ds.rglob("*_desc-preproc_bold.nii.gz"))[1]
    fake = bold.with_name(bold.name.replace("desc-preproc_", "desc-preproc-smooth90_"))
    fake.symlink_to(os.readlink(other))
    with caplog.at_level(logging.INFO, logger="bidsfm.discovery"):
        runs, problems = _collect(ds, "03")
    assert problems == []
    assert str(bold) in [r.bold for r in runs] and str(fake) not in [r.bold for r in runs]
    assert not any("several resolutions" in r.getMessage() for r in caplog.records)


def test_real_ambiguity_names_the_files(tmp_path, tiny_ds):
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    bold = sorted(ds.rglob("*_desc-preproc_bold.nii.gz"))[0]
    twin = bold.with_name(bold.name.replace(".nii.gz", ".nii"))
    nib.save(nib.load(str(bold)), str(twin))
    runs, problems = _collect(ds, "03")
    assert len(problems) == 1 and str(bold) not in [r.bold for r in runs]
    assert bold.name in problems[0].message and twin.name in problems[0].message


# --------------------------------------------------------------------------------------------
# 1. non-template spaces; world coordinates only between MNI templates


@pytest.mark.parametrize("space", ["T1w", "boldref", "fsnative", "fsaverage5", "fsLR", "anat"])
def test_non_template_space_refused(space):
    with pytest.raises(ConfigError) as exc:
        check_space(space)
    assert space in exc.value.one_line() and "\n" not in exc.value.one_line()


def test_space_t1w_refused_on_the_command_line(tmp_path, tiny_ds, capsys):
    """T1w runs present: they were processed with the MNI atlas laid on by world coordinates and
    reported ok. Now: exit 2, one line, nothing written."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    for f in list(ds.rglob(f"*space-{SPACE}_*")):
        f.rename(f.with_name(f.name.replace(f"space-{SPACE}", "space-T1w")))
    out = tmp_path / "out"
    code, log = run_cli([ds, out, "participant", "--participant-label", "03", "-w",
                         tmp_path / "w", "--space", "T1w", "--model", "none"], capsys)
    assert code == 2
    assert "T1w" in log and "non-template" in log and "Traceback" not in log
    assert not out.exists() or not list(out.rglob("*_qc.tsv"))


def test_world_coordinates_refused_between_non_mni_templates(tmp_path, tiny_ds, capsys):
    """Runs in a template that is not an adult MNI template, CC200 (MNI152NLin6Asym) and no
    transform: each run fails with one line; nothing is placed by world coordinates."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    for f in list(ds.rglob(f"*space-{SPACE}_*")):
        f.rename(f.with_name(f.name.replace(f"space-{SPACE}", "space-MNIPediatricAsym")))
    code, log = run_cli([ds, tmp_path / "out", "participant", "--participant-label", "03",
                         "-w", tmp_path / "w", "--space", "MNIPediatricAsym", "--min-time", "0",
                         "--model", "none"], capsys)
    assert code == 1
    qcs = list((tmp_path / "out").rglob("*_qc.tsv"))
    assert qcs
    for q in qcs:
        row = pd.read_csv(q, sep="\t").iloc[0]
        assert row["status"] == "error" and "only accepted between two MNI" in row["reason"]
    assert not list((tmp_path / "out").rglob("*_relmat.tsv"))


def test_world_coordinates_between_mni_templates_is_stated(tmp_path, tiny_ds, capsys):
    """CC200 (MNI152NLin6Asym) on MNI152NLin2009cAsym runs: accepted, and said in the QC table
    and the sidecar."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    code, log = run_cli([ds, tmp_path / "out", "participant", "--participant-label", "03",
                         "-w", tmp_path / "w", "--min-time", "0", "--model", "none"], capsys)
    assert code == 0, log
    row = pd.read_csv(next((tmp_path / "out").rglob("*_qc.tsv")), sep="\t").iloc[0]
    assert row["atlas_transform"].startswith("world-coordinates (MNI152NLin6Asym atlas on "
                                             "MNI152NLin2009cAsym data")
    meta = json.loads(next((tmp_path / "out").rglob("*_timeseries.json")).read_text())
    assert meta["Atlas"]["Transform"]["WorldCoordinates"] is True


# --------------------------------------------------------------------------------------------
# 7. exit code when no run matches the requested space


def test_no_run_in_requested_space_is_exit_2(tmp_path, tiny_ds, capsys):
    """docs/usage.md: 'no input found' is exit 2 (it was 1); the message lists the spaces that
    do exist; nothing is written."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    out = tmp_path / "out"
    code, log = run_cli([ds, out, "participant", "--participant-label", "03", "-w",
                         tmp_path / "w", "--space", "MNI152NLin6Asym", "--model", "none"], capsys)
    assert code == 2, log
    assert f"its runs are in space {SPACE}" in log
    assert not (out / "dataset_description.json").exists()


# 8. one atlas per name: spellings de-duplicated, two files under one name refused


def test_atlas_spellings_are_one_atlas(tmp_path, tiny_ds, capsys):
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    out = tmp_path / "out"
    code, log = run_cli([ds, out, "participant", "--participant-label", "03", "-w",
                         tmp_path / "w", "--atlas", "cc200", "--atlas", "CC-200", "--model",
                         "none", "--min-time", "0"], capsys)
    assert code == 0, log
    qc = sorted(out.rglob("*_qc.tsv"))
    assert qc and all("_atlas-CC200_" in p.name for p in qc)
    rows = pd.concat([pd.read_csv(p, sep="\t") for p in qc])
    assert len(rows) == len(qc)  # one QC row per run: CC200 processed once
    assert "atlases CC200;" in log


def test_two_atlas_files_under_one_name_refused(tmp_path, tiny_ds, capsys):
    """They silently overwrote each other's outputs (issue 17)."""
    from bidsfm.atlases import bundled_image

    src = bundled_image("CC200")
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    shutil.copy(src, a)
    img = nib.load(src)
    data = np.asarray(img.dataobj).copy()
    data[data == 1] = 0  # a different file
    nib.save(nib.Nifti1Image(data, img.affine), b)
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    out = tmp_path / "out"
    code, log = run_cli([ds, out, "participant", "--participant-label", "03", "-w",
                         tmp_path / "w", "--atlas", f"X={a}", "--atlas", f"X={b}", "--model",
                         "none"], capsys)
    assert code == 2, log
    assert "are both named 'X'" in log
    assert not list(out.rglob("*_qc.tsv"))
