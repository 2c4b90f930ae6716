"""Tests of the synthetic fMRIPrep derivatives generator (bidsfm.demo)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

from bidsfm import demo  # noqa: E402
from bidsfm.atlases import CC200_SHA256  # noqa: E402

SPACE = "MNI152NLin2009cAsym"
HAVE_SHARED = demo.resolve_shared_data() is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """The tiny preset with its defaults (the bundled CC200 and ABIDE mean FC)."""
    return demo.make_fmriprep_dataset(tmp_path_factory.mktemp("tiny") / "fmriprep", size="tiny")


@pytest.fixture(scope="module")
def fallback(tmp_path_factory) -> dict:
    """The tiny preset with the procedural parcellation, two subjects."""
    return demo.make_fmriprep_dataset(tmp_path_factory.mktemp("proc") / "fmriprep", size="tiny",
                                      n_subjects=2, atlas="procedural")


def _run(man: dict, subject: str, session: str | None, task: str, run: int | None) -> dict:
    for r in man["runs"]:
        if (r["subject"], r["session"], r["task"], r["run"]) == (subject, session, task, run):
            return r
    raise AssertionError(f"run not in manifest: {subject} {session} {task} {run}")


def _read_tsv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    return rows[0], rows[1:]


def _confounds_df(path: str | Path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values="n/a", keep_default_na=False)


def _fc_vs_target(man: dict, run: dict, strategy: str | None) -> float:
    """Correlation between the upper triangles of the run's FC and the target FC."""
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiLabelsMasker

    conf, sample_mask = None, None
    if strategy is not None:
        conf, sample_mask = load_confounds_strategy(run["bold"], strategy)
    masker = NiftiLabelsMasker(run["labels"], mask_img=run["mask"], keep_masked_labels=True,
                               t_r=run["repetition_time"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = masker.fit_transform(run["bold"], confounds=conf, sample_mask=sample_mask)
    if strategy is None:
        ts = ts[run["n_nss"]:]
    target = np.loadtxt(man["target_fc"], skiprows=1, delimiter="\t")
    assert ts.shape[1] == target.shape[0]
    iu = np.triu_indices(target.shape[0], 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fc = np.corrcoef(ts.T)[iu]
    ok = np.isfinite(fc)
    return float(np.corrcoef(fc[ok], target[iu][ok])[0, 1])


# ------------------------------------------------------------------------------------------
# layout
# ------------------------------------------------------------------------------------------


def test_grid_matches_mni_res2():
    shape, affine = demo.grid_for_voxel_size(2.0)
    assert shape == (97, 115, 97)
    np.testing.assert_allclose(affine, [[2, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78],
                                        [0, 0, 0, 1]])
    shape6, affine6 = demo.grid_for_voxel_size(6.0)
    assert shape6 == (33, 39, 33)
    np.testing.assert_allclose(affine6[:3, 3], [-96, -132, -78])


def test_layout_and_names(tiny):
    root = Path(tiny["root"])
    desc = json.loads((root / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert desc["BIDSVersion"] == "1.9.0"
    assert desc["GeneratedBy"][0]["Name"] == "fMRIPrep"
    assert desc["GeneratedBy"][0]["Version"] == "24.1.1"

    header, rows = _read_tsv(root / "participants.tsv")
    assert header == ["participant_id", "site", "diagnosis", "age", "sex"]
    assert [r[0] for r in rows] == ["sub-01", "sub-02", "sub-03"]
    assert len({r[1] for r in rows}) >= 2
    assert {r[2] for r in rows} == {"ASD", "TC"}
    assert all(float(r[3]) > 0 and r[4] in ("M", "F") for r in rows)
    pjson = json.loads((root / "participants.json").read_text())
    assert set(header) <= set(pjson)

    func1 = root / "sub-01" / "ses-1" / "func"
    expected = [
        func1 / f"sub-01_ses-1_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz",
        func1 / f"sub-01_ses-1_task-rest_run-1_space-{SPACE}_desc-preproc_bold.json",
        func1 / f"sub-01_ses-1_task-rest_run-1_space-{SPACE}_desc-brain_mask.nii.gz",
        func1 / f"sub-01_ses-1_task-rest_run-1_space-{SPACE}_desc-brain_mask.json",
        func1 / "sub-01_ses-1_task-rest_run-1_desc-confounds_timeseries.tsv",
        func1 / "sub-01_ses-1_task-rest_run-1_desc-confounds_timeseries.json",
        func1 / f"sub-01_ses-1_task-rest_run-2_space-{SPACE}_desc-preproc_bold.nii.gz",
        root / "sub-01" / "ses-2" / "func"
        / f"sub-01_ses-2_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz",
        root / "sub-02" / "func" / f"sub-02_task-rest_run-1_space-{SPACE}_desc-preproc_bold.nii.gz",
        root / "sub-02" / "func" / f"sub-02_task-nback_space-{SPACE}_desc-preproc_bold.nii.gz",
        root / "sub-02" / "func" / "sub-02_task-nback_desc-confounds_timeseries.tsv",
        root / "sub-03" / "func" / f"sub-03_task-rest_run-2_space-{SPACE}_desc-preproc_bold.nii.gz",
    ]
    for p in expected:
        assert p.is_file(), p
        assert p.stat().st_size > 0
    assert not list(root.rglob("*_res-*"))  # non-standard grid: no res- entity
    assert not (root / "sub-02" / "ses-1").exists()
    assert len(tiny["runs"]) == 7
    for r in tiny["runs"]:
        for key in ("bold", "mask", "confounds", "labels"):
            assert Path(r[key]).is_file()
        assert 60 <= r["n_volumes"] <= 100
    # no temporary files left behind
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]


# ------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------


def test_bold_and_mask_headers(tiny):
    trs = {}
    labels = nib.load(tiny["labels"])
    for r in tiny["runs"]:
        img = nib.load(r["bold"])
        hdr = img.header
        assert img.ndim == 4 and img.shape[3] == r["n_volumes"]
        assert img.get_data_dtype() == np.float32
        sidecar = json.loads(Path(r["bold_json"]).read_text())
        assert sidecar["RepetitionTime"] == r["repetition_time"]
        assert sidecar["TaskName"] == r["task"]
        assert sidecar["SkullStripped"] is False and sidecar["StartTime"] == 0
        assert hdr.get_zooms()[3] == pytest.approx(r["repetition_time"])
        assert hdr.get_zooms()[:3] == pytest.approx((6.0, 6.0, 6.0))
        assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 4
        assert hdr.get_xyzt_units() == ("mm", "sec")
        mask = nib.load(r["mask"])
        assert mask.ndim == 3 and mask.shape == img.shape[:3]
        assert mask.get_data_dtype() == np.uint8
        np.testing.assert_allclose(mask.affine, img.affine)
        np.testing.assert_allclose(labels.affine, img.affine)
        m = np.asarray(mask.dataobj) > 0
        assert m.sum() > 1000
        lab = np.asarray(labels.dataobj)
        assert ((lab == 0) & m).any()  # some mask voxels carry no label
        data = np.asarray(img.dataobj)
        assert np.isfinite(data).all()
        gm_mean = data[(lab > 0) & m, -1].mean()
        assert 700 < gm_mean < 1300
        trs[r["subject"]] = r["repetition_time"]
    assert len(set(trs.values())) == 3  # TR differs between subjects


def test_fov_cut_gives_low_coverage(tiny):
    lab = np.asarray(nib.load(tiny["labels"]).dataobj)
    cut = [r for r in tiny["runs"] if r["fov_cut"]]
    assert cut
    mask = np.asarray(nib.load(cut[0]["mask"]).dataobj) > 0
    ids = np.unique(lab[lab > 0])
    coverage = np.array([mask[lab == i].mean() for i in ids])
    assert (coverage < 0.5).sum() >= 1
    assert (coverage == 1).mean() > 0.8
    full = next(r for r in tiny["runs"] if not r["fov_cut"])
    assert np.asarray(nib.load(full["mask"]).dataobj).sum() > mask.sum()


# ------------------------------------------------------------------------------------------
# confounds
# ------------------------------------------------------------------------------------------

BASE_COLUMNS = ["global_signal", "csf", "white_matter", "csf_wm", "trans_x", "trans_y",
                "trans_z", "rot_x", "rot_y", "rot_z"]


def test_confounds_columns(tiny):
    for r in tiny["runs"]:
        header, rows = _read_tsv(r["confounds"])
        assert len(rows) == r["n_volumes"]
        for base in BASE_COLUMNS:
            for suffix in ("", "_derivative1", "_power2", "_derivative1_power2"):
                assert base + suffix in header
        for col in ("framewise_displacement", "rmsd", "dvars", "std_dvars", "tcompcor",
                    "cosine00"):
            assert col in header
        for prefix, n_min in (("a_comp_cor", 10), ("c_comp_cor", 5), ("w_comp_cor", 5),
                              ("t_comp_cor", 5)):
            for j in range(n_min):
                assert f"{prefix}_{j:02d}" in header
        first = dict(zip(header, rows[0], strict=True))
        second = dict(zip(header, rows[1], strict=True))
        for col in header:
            if "derivative1" in col or col in ("framewise_displacement", "dvars", "std_dvars"):
                assert first[col] == "n/a", col
                assert second[col] != "n/a", col
            elif col != "rmsd":
                assert first[col] != "n/a", col
        nss_cols = [c for c in header if c.startswith("non_steady_state_outlier")]
        assert len(nss_cols) == r["n_nss"]


def test_confound_values_are_consistent(tiny):
    r = _run(tiny, "01", "1", "rest", 2)  # the run with a few high-motion volumes
    df = _confounds_df(r["confounds"])
    d = df[["trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z"]].diff().abs()
    fd = d.iloc[:, :3].sum(1) + 50 * d.iloc[:, 3:].sum(1)
    np.testing.assert_allclose(df["framewise_displacement"][1:], fd[1:], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(df["trans_x_derivative1"][1:], df["trans_x"].diff()[1:],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(df["csf_power2"], df["csf"] ** 2, rtol=1e-6)
    # global signal is the mean of the data inside the brain mask
    data = np.asarray(nib.load(r["bold"]).dataobj)
    mask = np.asarray(nib.load(r["mask"]).dataobj) > 0
    np.testing.assert_allclose(df["global_signal"], data[mask].mean(0), rtol=1e-5)
    # motion outliers: FD > 0.5 mm or std_dvars > 1.5, one-hot columns
    expected = np.flatnonzero((df["framewise_displacement"].fillna(0) > 0.5)
                              | (df["std_dvars"].fillna(0) > 1.5))
    outl = df[[c for c in df.columns if c.startswith("motion_outlier")]].to_numpy()
    assert outl.shape[1] == len(expected) >= 3
    np.testing.assert_array_equal(np.flatnonzero(outl.sum(1)), expected)
    assert (df["framewise_displacement"] > 0.5).sum() >= 2
    # CompCor columns are orthonormal
    acc = df[[c for c in df.columns if c.startswith("a_comp_cor")]].to_numpy()
    np.testing.assert_allclose(acc.T @ acc, np.eye(acc.shape[1]), atol=1e-6)
    # the non-steady-state volumes are clearly brighter
    nss = _run(tiny, "01", "1", "rest", 1)
    gs = _confounds_df(nss["confounds"])["global_signal"].to_numpy()
    assert nss["n_nss"] > 0 and gs[0] > 1.2 * np.median(gs)


def test_heavy_motion_run(tiny):
    fd = {(r["subject"], r["session"], r["task"], r["run"]):
          float(_confounds_df(r["confounds"])["framewise_displacement"].mean())
          for r in tiny["runs"]}
    heavy = [k for k, r in zip(fd, tiny["runs"], strict=True) if r["motion"] == "heavy"]
    assert len(heavy) == 1
    assert fd[heavy[0]] > 0.3
    assert sorted(fd.values())[-2] < fd[heavy[0]]
    # every subject has a run with scrubbable volumes
    for sub in ("01", "02", "03"):
        assert any(r["n_motion_outliers"] >= 3 for r in tiny["runs"] if r["subject"] == sub)


def test_compcor_json(tiny):
    r = tiny["runs"][0]
    meta = json.loads(Path(r["confounds_json"]).read_text())
    header, _ = _read_tsv(r["confounds"])
    for col in header:
        if "comp_cor" not in col:
            continue
        entry = meta[col]
        assert entry["Retained"] is True
        assert {"SingularValue", "VarianceExplained", "CumulativeVarianceExplained"} <= set(entry)
        if col.startswith("t_"):
            assert entry["Method"] == "tCompCor" and "Mask" not in entry
        else:
            want = {"a": "combined", "c": "CSF", "w": "WM"}[col[0]]
            assert entry["Method"] == "aCompCor" and entry["Mask"] == want
    assert all(k in header for k in meta if "comp_cor" in k)


@pytest.mark.parametrize("strategy", ["simple", "scrubbing", "compcor"])
def test_nilearn_load_confounds_strategy(tiny, strategy):
    from nilearn.interfaces.fmriprep import load_confounds_strategy

    r = _run(tiny, "03", None, "rest", 1)
    kwargs = {"n_compcor": "all"} if strategy == "compcor" else {}
    conf, sample_mask = load_confounds_strategy(r["bold"], strategy, **kwargs)
    assert conf.shape[0] == r["n_volumes"]
    assert not conf.isna().any().any()
    assert sample_mask is not None  # non-steady-state volumes are dropped
    if strategy == "simple":
        assert len(sample_mask) == r["n_volumes"] - r["n_nss"]
        assert "trans_x_derivative1_power2" in conf and "cosine00" in conf
    elif strategy == "scrubbing":
        assert len(sample_mask) < r["n_volumes"] - r["n_nss"]
    else:
        assert sum(c.startswith("a_comp_cor") for c in conf.columns) >= 10


# ------------------------------------------------------------------------------------------
# signal model
# ------------------------------------------------------------------------------------------


def test_fc_follows_target(tiny):
    r = _run(tiny, "01", "1", "rest", 1)
    assert _fc_vs_target(tiny, r, "simple") > 0.3
    # motion matters: on the heavy-motion run cleaning clearly improves the FC
    heavy = next(x for x in tiny["runs"] if x["motion"] == "heavy")
    raw, clean = _fc_vs_target(tiny, heavy, None), _fc_vs_target(tiny, heavy, "simple")
    assert clean > 0.3 and clean > raw + 0.1


def test_default_uses_bundled_cc200(tiny):
    assert tiny["atlas"] == "CC200"
    assert tiny["target_fc_source"] == "bundled" and tiny["shared_data"] is None
    assert len(tiny["roi_names"]) == 200
    lab = np.asarray(nib.load(tiny["labels"]).dataobj)
    assert set(np.unique(lab)) == set(range(201))
    target = np.loadtxt(tiny["target_fc"], skiprows=1, delimiter="\t")
    assert target.shape == (200, 200)
    np.testing.assert_allclose(np.diag(target), 1.0, atol=1e-6)
    assert np.linalg.eigvalsh(target).min() > 0


def test_procedural_atlas(fallback):
    assert fallback["atlas"] == "procedural"
    assert fallback["shared_data"] is None and fallback["target_fc_source"] == "procedural"
    n_roi = len(fallback["roi_names"])
    assert 80 <= n_roi <= 120
    lab = np.asarray(nib.load(fallback["labels"]).dataobj)
    assert len(np.unique(lab)) == n_roi + 1
    assert len(fallback["participants"]) == 2
    r = _run(fallback, "01", "1", "rest", 1)
    assert _fc_vs_target(fallback, r, "simple") > 0.3


# ------------------------------------------------------------------------------------------
# what ships with the package: no shared data, no network
# ------------------------------------------------------------------------------------------

_FRESH_CLONE_SCRIPT = r"""
import json, os, socket, sys
attempts = []
def _refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("network disabled in this test")
socket.socket.connect = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
import bidsfm
from bidsfm.atlases import resolve_atlas
from bidsfm.demo import main
atlas = resolve_atlas("CC200", space="MNI152NLin2009cAsym")
main([sys.argv[1], "--size", "tiny", "--n-subjects", "1"])
joined = resolve_atlas("TianS3+Schaefer400x17", space="MNI152NLin2009cAsym")
print(json.dumps({"package": bidsfm.__file__, "atlas_image": str(atlas.image),
                  "atlas_sha256": atlas.sha256, "attempts": attempts,
                  "joined": [str(p.image) for p in joined.parts] + [str(joined.image)],
                  "joined_rois": joined.n_rois, "joined_template": joined.template}))
"""


def test_fresh_clone_without_shared_data_or_network(tmp_path):
    """The package alone (copied where no ../shared exists), BIDSFM_SHARED_DATA an empty folder,
    an empty cache and every socket refused: atlas resolution and the generator still work and
    plant the ABIDE-derived FC in CC200."""
    clone = tmp_path / "clone"
    src = Path(demo.__file__).resolve().parents[1]  # the bidsfm package (demo/ is in it)
    shutil.copytree(src, clone / "bidsfm", ignore=shutil.ignore_patterns(
        "__pycache__", "models", "archive"))  # the demo needs neither the models nor archive
    assert not (tmp_path / "shared").exists()
    empty = tmp_path / "empty_shared"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("BIDSFM_OFFLINE", "BIDSFM_SHARED_DATA", "BIDSFM_HOME", "PYTHONPATH")}
    env.update(PYTHONPATH=str(clone), BIDSFM_SHARED_DATA=str(empty),
               BIDSFM_HOME=str(tmp_path / "home"), TEMPLATEFLOW_HOME=str(tmp_path / "tf"),
               NIPYPE_NO_ET="1")
    out = tmp_path / "ds"
    proc = subprocess.run([sys.executable, "-c", _FRESH_CLONE_SCRIPT, str(out)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(info["package"]).is_relative_to(clone)  # the copy, not the checkout
    assert Path(info["atlas_image"]) == clone / "bidsfm" / "data" / "atlases" / "CC200.nii.gz"
    assert info["atlas_sha256"] == CC200_SHA256
    assert info["attempts"] == []  # nothing even tried the network
    assert "atlas CC200" in proc.stdout
    # the demo's second atlas: Tian S3 + Schaefer400x17 from the package, joined once in the cache
    tian, schaefer, joined = (Path(p) for p in info["joined"])
    assert tian.is_relative_to(clone / "bidsfm" / "data" / "atlases")
    assert schaefer.is_relative_to(clone / "bidsfm" / "data" / "atlases")
    assert info["joined_rois"] == 450 and info["joined_template"] == "MNI152NLin2009cAsym"
    assert joined.parent == tmp_path / "home" / "atlases" / "combined"
    written = {p.relative_to(tmp_path / "home").parts[:2] for p in (tmp_path / "home").rglob("*")
               if p.is_file()}
    assert written == {("atlases", "combined")}  # nothing else was needed in the cache
    man = json.loads((out / "sourcedata" / "bidsfm-demo" / "manifest.json").read_text())
    assert man["atlas"] == "CC200" and man["target_fc_source"] == "bundled"
    assert len(man["roi_names"]) == 200 and man["shared_data"] is None
    target = np.loadtxt(man["target_fc"], skiprows=1, delimiter="\t")
    np.testing.assert_allclose(target, demo.bundled_target_corr(), atol=2e-6)
    r = _run(man, "01", "1", "rest", 1)
    assert _fc_vs_target(man, r, "simple") > 0.3


def test_bundled_target_fc_provenance():
    from bidsfm.utils import sha256_file

    path = demo.BUNDLED_TARGET_FC
    sources = (path.parent / "SOURCES.md").read_text()
    assert f"`{path.name}`" in sources and sha256_file(path) in sources
    assert str(path.stat().st_size) in sources and path.stat().st_size < 50_000
    raw = np.load(path, allow_pickle=False)
    assert raw.dtype == np.float16 and raw.shape == (200 * 199 // 2,)
    corr = demo.bundled_target_corr()
    assert corr.shape == (200, 200) and not corr.flags.writeable
    np.testing.assert_allclose(np.diag(corr), 1.0)
    np.testing.assert_allclose(corr, corr.T)
    assert np.linalg.eigvalsh(corr).min() > 0.05 - 1e-9


@pytest.mark.skipif(not HAVE_SHARED, reason="shared data (CC200 + ABIDE) not available")
def test_bundled_target_fc_equals_abide(tmp_path):
    """The shipped file is what the ABIDE series give, byte for byte when rewritten."""
    shared = demo.resolve_shared_data()
    np.testing.assert_allclose(demo.bundled_target_corr(), demo.abide_target_corr(str(shared)),
                               atol=3e-4)
    again = demo.write_bundled_target_corr(shared, tmp_path / "fc.npy")
    assert again.read_bytes() == demo.BUNDLED_TARGET_FC.read_bytes()
    man = demo.make_fmriprep_dataset(tmp_path / "ds", n_subjects=1, shared_data=shared)
    assert man["target_fc_source"] == "abide" and man["shared_data"] == str(shared.resolve())
    target = np.loadtxt(man["target_fc"], skiprows=1, delimiter="\t")
    np.testing.assert_allclose(target, demo.abide_target_corr(str(shared)), atol=2e-6)


# ------------------------------------------------------------------------------------------
# options, determinism, CLI
# ------------------------------------------------------------------------------------------


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


def test_deterministic(tmp_path):
    kw = {"size": "tiny", "n_subjects": 1, "seed": 3, "atlas": "procedural"}
    a = demo.make_fmriprep_dataset(tmp_path / "a", **kw)
    b = demo.make_fmriprep_dataset(tmp_path / "b", **kw)
    fa, fb = _all_files(Path(a["root"])), _all_files(Path(b["root"]))
    assert fa.keys() == fb.keys() and len(fa) > 10
    assert all(fa[k] == fb[k] for k in fa)
    c = demo.make_fmriprep_dataset(tmp_path / "c", **{**kw, "seed": 4})
    fc = _all_files(Path(c["root"]))
    bold = next(k for k in fa if k.endswith("_bold.nii.gz"))
    assert fc[bold] != fa[bold]


def test_int16_uncompressed(tmp_path):
    man = demo.make_fmriprep_dataset(tmp_path / "ds", n_subjects=1, dtype="int16",
                                     compress=False, atlas="procedural")
    r = man["runs"][0]
    assert r["bold"].endswith("_desc-preproc_bold.nii") and r["mask"].endswith("_mask.nii")
    img = nib.load(r["bold"])
    assert img.get_data_dtype() == np.int16
    assert img.dataobj.slope != 1.0 and img.dataobj.slope > 0
    data = img.get_fdata(dtype=np.float32)
    mask = np.asarray(nib.load(r["mask"]).dataobj) > 0
    assert 500 < data[mask].mean() < 1500
    df = _confounds_df(r["confounds"])
    np.testing.assert_allclose(df["global_signal"], data[mask].mean(0), rtol=1e-4)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="size"):
        demo.make_fmriprep_dataset(tmp_path, size="huge")
    with pytest.raises(ValueError, match="dtype"):
        demo.make_fmriprep_dataset(tmp_path, dtype="float64")


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    demo.main([str(out), "--n-subjects", "1", "--seed", "1", "--atlas", "procedural",
               "--shared-data", str(tmp_path / "none"), "--no-compress"])
    text = capsys.readouterr().out
    assert str(out) in text and "3 runs" in text and "atlas procedural" in text
    assert (out / "dataset_description.json").is_file()
    assert list(out.rglob("*_desc-preproc_bold.nii"))
    with pytest.raises(SystemExit) as exc:
        demo.main([str(out), "--size", "huge"])
    assert exc.value.code != 0
    with pytest.raises(ValueError, match="atlas must be one of"):
        demo.make_fmriprep_dataset(tmp_path / "x", atlas="Schaefer400")
