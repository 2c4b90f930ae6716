"""Fault injection on images: broken BOLD files, foreign grids, masks and atlases."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from faultkit import (
    assert_clean,
    assert_one_error,
    assert_run_failed,
    assert_run_ok,
    make_case,
    replace_bytes,
    replace_nifti,
)


def _truncate(path):
    data = path.read_bytes()
    replace_bytes(path, data[: len(data) // 2])


def _random_bytes(path):
    replace_bytes(path, np.random.default_rng(0).bytes(60_000))


def _random_gzip(path):
    replace_bytes(path, gzip.compress(np.random.default_rng(1).bytes(60_000)))


def _nan_inf(path, mask_path):
    img = nib.load(path)
    data = img.get_fdata(dtype=np.float32)
    inside = np.argwhere(nib.load(mask_path).get_fdata() > 0)
    data[tuple(inside[0]) + (5,)] = np.nan
    data[tuple(inside[1]) + (9,)] = np.inf
    replace_nifti(path, nib.Nifti1Image(data, img.affine, img.header))


def _three_d(path):
    img = nib.load(path)
    replace_nifti(path, nib.Nifti1Image(img.get_fdata(dtype=np.float32)[..., 0], img.affine))


BOLD_FAULTS = {
    "truncated": (lambda c: _truncate(c.path(0, "bold")), "truncated or corrupt"),
    "random_bytes": (lambda c: _random_bytes(c.path(0, "bold")), "cannot read BOLD image"),
    "random_gzip": (lambda c: _random_gzip(c.path(0, "bold")), "cannot read BOLD image"),
    "nan_inf": (lambda c: _nan_inf(c.path(0, "bold"), c.path(0, "mask")), "non-finite"),
    "three_d": (lambda c: _three_d(c.path(0, "bold")), "expected 4D"),
}


@pytest.mark.parametrize("fault", sorted(BOLD_FAULTS))
def test_broken_bold(fault, tmp_path, tiny_ds, capsys):
    """A broken BOLD file fails its run with one line; the other run is written; exit 1."""
    case = make_case(tiny_ds, tmp_path)
    damage, words = BOLD_FAULTS[fault]
    damage(case)
    code, log = case.cli(capsys=capsys)
    assert code == 1
    line = assert_one_error(log, case.path(0, "bold"), words)
    assert "rerun fMRIPrep" in line or "Check" in line or "Pass" in line  # what to do
    assert_run_failed(case, 0, words)
    assert_run_ok(case, 1)
    assert_clean(case.out)


def test_run_on_another_grid_just_works(tmp_path, tiny_ds, capsys):
    """A 5 mm, shifted copy of a run (grid unlike the other runs and the atlas) gives every
    output: the atlas is resampled per run."""
    from scipy.ndimage import map_coordinates

    case = make_case(tiny_ds, tmp_path)
    old = nib.load(case.path(0, "bold"))
    zooms = np.diag(old.affine)[:3]
    affine = np.diag(np.r_[np.sign(zooms) * 5.0, 1.0])
    affine[:3, 3] = old.affine[:3, 3] + 1.0  # 5 mm voxels, origin shifted by 1 mm
    shape = tuple(int(np.ceil(n * abs(z) / 5.0)) for n, z in zip(old.shape[:3], zooms,
                                                                  strict=True))
    ijk = np.indices(shape).reshape(3, -1)
    coords = (np.linalg.inv(old.affine) @ affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3]
    new_run = {**case.runs[0], "run": 3}
    for key, order in (("bold", 1), ("mask", 0)):
        src = case.path(0, key)
        data = np.asarray(nib.load(src).dataobj, dtype=np.float32)
        vols = data[..., None] if data.ndim == 3 else data
        out = np.stack([map_coordinates(vols[..., t], coords, order=order).reshape(shape)
                        for t in range(vols.shape[3])], axis=-1)
        if key == "mask":
            img = nib.Nifti1Image((out[..., 0] > 0.5).astype(np.uint8), affine)
        else:
            img = nib.Nifti1Image(out, affine, old.header)
        dst = src.with_name(src.name.replace("run-1", "run-3"))
        nib.save(img, str(dst))
        sidecar = src.with_name(src.name.replace(".nii.gz", ".json"))
        sidecar.with_name(dst.name.replace(".nii.gz", ".json")).write_text(sidecar.read_text())
    for key in ("confounds", "confounds_json"):
        src = case.path(0, key)
        src.with_name(src.name.replace("run-1", "run-3")).write_text(src.read_text())
    case.runs.append(new_run)
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    for i in range(3):
        assert_run_ok(case, i)
    ts = pd.read_csv(case.outputs(2)[0], sep="\t", na_values="n/a")
    assert ts.shape == (100 - case.runs[0]["n_nss"], 200)
    cov = pd.read_csv(case.outputs(2)[2], sep="\t", index_col="Node")["coverage"]
    assert (cov > 0.5).sum() > 150  # the 5 mm grid still covers the brain
    assert case.qc(2)["atlas_transform"] == case.qc(0)["atlas_transform"]
    assert_clean(case.out)


def test_mask_not_on_bold_grid(tmp_path, tiny_ds, capsys):
    from nilearn.image import resample_img

    case = make_case(tiny_ds, tmp_path)
    mask = case.path(0, "mask")
    img = resample_img(nib.load(mask), target_affine=np.diag([5.0, 5.0, 5.0]),
                       interpolation="nearest", force_resample=True, copy_header=True)
    replace_nifti(mask, img)
    code, log = case.cli(capsys=capsys)
    assert code == 1
    assert_one_error(log, mask, "not on the BOLD grid", "desc-brain_mask written by fMRIPrep")
    assert_run_failed(case, 0, "not on the BOLD grid")
    assert_run_ok(case, 1)
    assert_clean(case.out)


def test_atlas_labels_outside_brain(tmp_path, tiny_ds, capsys):
    """A user atlas with ROIs outside the mask (on the grid) and off the grid: those ROIs are
    n/a with coverage 0; every column is kept; the runs are ok."""
    case = make_case(tiny_ds, tmp_path)
    bold = nib.load(case.path(0, "bold"))
    mask = nib.load(case.path(0, "mask")).get_fdata() > 0
    pad = 10  # the atlas grid extends 10 voxels beyond the BOLD grid on every side
    labels = np.zeros(tuple(s + 2 * pad for s in mask.shape), dtype=np.int16)
    inner = labels[pad:-pad, pad:-pad, pad:-pad]
    xs = np.nonzero(mask)[0]
    cut = np.median(xs)
    grid = np.indices(mask.shape)
    inner[mask & (grid[0] < cut)] = 1
    inner[mask & (grid[0] >= cut)] = 2
    inner[:2, :2, :2] = 3  # on the BOLD grid, outside the brain mask
    assert not mask[:2, :2, :2].any()
    labels[:3, :3, :3] = 4  # off the BOLD grid altogether
    affine = bold.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    atlas = tmp_path / "edge.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(atlas))

    code, log = case.cli("--atlas", f"edge={atlas}", capsys=capsys)
    assert code == 0, log
    names = ["edge_001", "edge_002", "edge_003", "edge_004"]
    for run in range(2):
        assert_run_ok(case, run, "edge")
        outs = case.outputs(run, "edge")
        ts = pd.read_csv(outs[0], sep="\t", na_values="n/a")
        assert list(ts.columns) == names
        assert ts[names[:2]].notna().all().all() and ts[names[2:]].isna().all().all()
        cov = pd.read_csv(outs[2], sep="\t", index_col="Node")["coverage"]
        assert list(cov.index) == names and (cov[names[2:]] == 0).all()
        fc = pd.read_csv(outs[3], sep="\t", index_col=0, na_values="n/a")
        assert fc.shape == (4, 4) and fc.loc[names[2:]].isna().all().all()
        qc = case.qc(run, "edge")
        assert qc["n_rois"] == 4 and qc["n_rois_low_coverage"] == 2
        assert qc["low_coverage_rois"] == "edge_003,edge_004"
    assert_clean(case.out)
