"""Probabilistic (DiFuMo-style) atlases: weighted extraction equal to nilearn's NiftiMapsMasker.

No real DiFuMo file is reachable offline, so a small synthetic probabilistic atlas (overlapping
Gaussian maps, one of them outside the brain mask) is used, on the BOLD grid and on another
grid (maps resampled by trilinear interpolation, as NiftiMapsMasker does).
"""

from __future__ import annotations

import json
import urllib.request
import warnings
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest

from bidsfm.atlases import base, place_atlas, resample_maps, resolve_atlas
from bidsfm.errors import AtlasNotFoundError
from bidsfm.extract import extract_roi_signals, load_mask

TPL = "MNI152NLin2009cAsym"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    monkeypatch.setattr(base, "_WARNED", set())
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network"))


def _affine(size: float, origin) -> np.ndarray:
    aff = np.diag([size, size, size, 1.0])
    aff[:3, 3] = origin
    return aff


def _gaussian_maps(shape, affine, centres, sigma=7.0) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    maps = [np.exp(-((xyz - c) ** 2).sum(-1) / (2 * sigma ** 2)) for c in centres]
    out = np.stack(maps, -1).astype(np.float32)
    out[out < 0.05] = 0  # sparse maps, like DiFuMo's
    return out


CENTRES = [(-20, -10, 5), (18, -12, 8), (0, 20, 0), (-5, -30, -10), (10, 5, 15), (0, 0, 90)]


@pytest.fixture
def run_files(tmp_path):
    """A 4D BOLD run (3 mm), its brain mask, and maps (last one entirely outside the mask)."""
    rng = np.random.default_rng(0)
    shape, affine = (20, 24, 20), _affine(3.0, (-30, -36, -30))
    inside = _gaussian_maps(shape, affine, [(0, 0, 0)], sigma=18)[..., 0] > 0.3
    n_vol = 40
    maps = _gaussian_maps(shape, affine, CENTRES)
    sources = rng.normal(size=(n_vol, len(CENTRES)))
    data = 100 + (maps @ sources.T) * 5 + rng.normal(scale=0.5, size=shape + (n_vol,))
    bold = tmp_path / "bold.nii.gz"
    nb.Nifti1Image(data, affine).to_filename(bold)  # float64: nilearn then solves in float64
    mask = tmp_path / "mask.nii.gz"
    nb.Nifti1Image(inside.astype(np.uint8), affine).to_filename(mask)
    return {"bold": bold, "mask": mask, "shape": shape, "affine": affine}


def _write_maps(path: Path, maps: np.ndarray, affine: np.ndarray, names=None) -> Path:
    nb.Nifti1Image(maps, affine).to_filename(path)
    if names is not None:
        pd.DataFrame({"index": range(1, len(names) + 1), "name": names}).to_csv(
            path.with_name(path.name.replace(".nii.gz", ".tsv")), sep="\t", index=False)
    return path


def _nilearn(maps: Path, run: dict) -> np.ndarray:
    from nilearn.maskers import NiftiMapsMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masker = NiftiMapsMasker(str(maps), mask_img=str(run["mask"]), keep_masked_maps=True)
        return masker.fit_transform(str(run["bold"]))


def _ours(atlas, run, cache_dir=None) -> tuple[np.ndarray, dict]:
    img = nb.load(run["bold"])
    mask = load_mask(run["mask"], img.affine, img.shape)
    proj, info = place_atlas(atlas, img.affine, img.shape[:3], mask, target_space=TPL,
                             cache_dir=cache_dir)
    (signals,) = extract_roi_signals(run["bold"], mask, [proj], img=img)
    return signals, info, proj


def test_maps_on_the_bold_grid_equal_niftimapsmasker(tmp_path, run_files):
    maps = _gaussian_maps(run_files["shape"], run_files["affine"], CENTRES)
    path = _write_maps(tmp_path / f"tpl-{TPL}_atlas-Blobs_probseg.nii.gz", maps,
                       run_files["affine"], names=[f"blob{i}" for i in range(1, 7)])
    atlas = resolve_atlas(str(path))
    assert atlas.kind == "probseg" and atlas.n_rois == 6 and atlas.roi_names[0] == "blob1"
    ours, info, proj = _ours(atlas, run_files)
    ref = _nilearn(path, run_files)
    assert info["Method"] == "identical-grid"
    assert ours.shape == (40, 6)
    assert np.isnan(ours[:, 5]).all() and proj.coverage[5] == 0  # outside the brain mask
    np.testing.assert_allclose(ours[:, :5], ref[:, :5], rtol=1e-7, atol=1e-9)
    # not a plain weighted mean: the least-squares fit (the maps overlap)
    img = nb.load(run_files["bold"])
    mask = np.asarray(nb.load(run_files["mask"]).dataobj) > 0
    data = np.asarray(img.dataobj)[mask]
    w = maps[mask][:, 0]
    weighted_mean = (w @ data) / w.sum()
    assert not np.allclose(ours[:, 0], weighted_mean, rtol=1e-3)


def test_maps_on_another_grid_equal_niftimapsmasker(tmp_path, run_files):
    """Maps at 4 mm on a shifted grid: trilinear resampling onto the BOLD grid, as nilearn."""
    affine = _affine(4.0, (-33, -39, -35))
    maps = _gaussian_maps((16, 19, 17), affine, CENTRES)
    path = _write_maps(tmp_path / f"tpl-{TPL}_atlas-Blobs4_probseg.nii.gz", maps, affine)
    atlas = resolve_atlas(str(path))
    ours, info, proj = _ours(atlas, run_files)
    ref = _nilearn(path, run_files)
    assert info == {"AtlasSpace": TPL, "TargetSpace": TPL, "Method": "trilinear-resampling"}
    np.testing.assert_allclose(ours[:, :5], ref[:, :5], rtol=1e-5, atol=1e-6)
    assert 0 < proj.coverage[0] <= 1 and proj.coverage[5] == 0


def test_maps_through_the_index_cache_are_identical(tmp_path, run_files, monkeypatch):
    from bidsfm.atlases import placement

    affine = _affine(4.0, (-33, -39, -35))
    path = _write_maps(tmp_path / f"tpl-{TPL}_atlas-B_probseg.nii.gz",
                       _gaussian_maps((16, 19, 17), affine, CENTRES), affine)
    atlas = resolve_atlas(str(path))
    first, info1, _ = _ours(atlas, run_files, cache_dir=tmp_path / "idx")
    assert len(list((tmp_path / "idx").glob("B_probseg_*.npz"))) == 1
    monkeypatch.setattr(placement, "_resample_maps_world",
                        lambda *a, **k: pytest.fail("the cached maps must be read"))
    second, info2, _ = _ours(atlas, run_files, cache_dir=tmp_path / "idx")
    np.testing.assert_array_equal(first, second)
    assert info1 == info2


def test_templateflow_difumo_with_its_tsv(tmp_path, run_files):
    """DiFuMo from a TemplateFlow tree; its TSV names maps with Component/Difumo_names."""
    folder = tmp_path / "templateflow" / f"tpl-{TPL}"
    folder.mkdir(parents=True)
    maps = np.zeros(run_files["shape"] + (64,), dtype=np.float32)
    maps[..., :6] = _gaussian_maps(run_files["shape"], run_files["affine"], CENTRES)
    for k in range(6, 64):
        maps[10, 12, 10 - k % 5, k] = 1.0 + k
    nb.Nifti1Image(maps, run_files["affine"]).to_filename(
        folder / f"tpl-{TPL}_res-02_atlas-DiFuMo_desc-64dimensions_probseg.nii.gz")
    (folder / f"tpl-{TPL}_atlas-DiFuMo_desc-64dimensions_probseg.tsv").write_text(
        "Component\tDifumo_names\n" + "".join(f"{k}\tMode {k}\n" for k in range(1, 65)))
    atlas = resolve_atlas("difumo_64", space=TPL)
    assert atlas.name == "DiFuMo64" and atlas.kind == "probseg" and atlas.n_rois == 64
    assert atlas.roi_names[:2] == ["Mode 1", "Mode 2"]
    assert atlas.source.startswith("TemplateFlow:tpl-")
    ours, info, _ = _ours(atlas, run_files)
    assert ours.shape == (40, 64) and info["Method"] == "identical-grid"


def test_empty_or_malformed_maps_fail_clearly(tmp_path, run_files):
    path = _write_maps(tmp_path / "empty_probseg.nii.gz",
                       np.zeros(run_files["shape"] + (3,), np.float32), run_files["affine"])
    atlas = resolve_atlas(str(path))
    with pytest.raises(AtlasNotFoundError, match="only empty maps"):
        resample_maps(atlas, run_files["affine"], run_files["shape"])
    maps = _gaussian_maps(run_files["shape"], run_files["affine"], CENTRES[:2])
    path = _write_maps(tmp_path / "two_probseg.nii.gz", maps, run_files["affine"],
                       names=["a", "b", "c"])  # a table naming a third map the image lacks
    with pytest.raises(AtlasNotFoundError, match="names maps the 4D image does not have"):
        resolve_atlas(str(path))


def test_a_run_with_a_probabilistic_atlas(tmp_path, tiny_ds, session_env):
    """The participant level with a 4D atlas: outputs per map, placement stated."""
    from bidsfm.discovery import build_layout, collect_runs
    from bidsfm.pipeline import ProcessingOptions, output_paths, process_run

    root = Path(tiny_ds["root"])
    runs, _ = collect_runs(build_layout(root, ["03"], None), root, "03")
    run = runs[0]
    affine = _affine(5.0, (-60, -80, -40))
    maps = _gaussian_maps((26, 32, 24), affine, CENTRES[:5], sigma=12)
    path = _write_maps(tmp_path / f"tpl-{TPL}_atlas-Modes_probseg.nii.gz", maps, affine,
                       names=[f"mode{i}" for i in range(1, 6)])
    opts = ProcessingOptions(atlases=[str(path)], min_time=0)
    (res,) = process_run(run, opts, tmp_path / "out", atlas_index_dir=tmp_path / "work" / "ix")
    assert res.status == "ok", res.reason
    paths = output_paths(run, "Modes", tmp_path / "out")
    ts = pd.read_csv(paths["timeseries"], sep="\t", na_values="n/a")
    assert list(ts.columns) == [f"mode{i}" for i in range(1, 6)]
    assert np.isfinite(ts.to_numpy()).all()
    qc = pd.read_csv(paths["qc"], sep="\t")
    assert qc["atlas_transform"].iloc[0] == "trilinear-resampling"
    meta = json.loads(paths["timeseries_json"].read_text())
    assert meta["Atlas"]["Transform"]["Method"] == "trilinear-resampling"
    assert list((tmp_path / "work" / "ix").glob("Modes_probseg_*.npz"))
