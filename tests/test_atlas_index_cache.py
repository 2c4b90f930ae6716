"""The resampled atlas index, cached per (atlas sha256, grid, placement) in the work folder."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from test_atlases import _write_itk_h5

from bidsfm.atlases import base, placement, resample_labels, resolve_atlas, template_transform_path

TPL_A, TPL_B = "MNI152NLin2009cAsym", "MNI152NLin6Asym"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    monkeypatch.setattr(base, "_WARNED", set())
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network"))


def _grid(size: float) -> np.ndarray:
    aff = np.diag([size, size, size, 1.0])
    aff[:3, 3] = [-96, -132, -78]
    return aff


def _no_resampling(monkeypatch):
    monkeypatch.setattr(placement, "resample_world",
                        lambda *a, **k: pytest.fail("the cached index must be read"))


def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    atlas = resolve_atlas("CC200")
    cache = tmp_path / "work" / "atlas_index"
    first, info = resample_labels(atlas, _grid(4.0), (49, 58, 49), target_space=TPL_B,
                                  cache_dir=cache)
    files = list(cache.glob("CC200_dseg_*.npz"))
    assert len(files) == 1 and files[0].stat().st_size < 100_000
    _no_resampling(monkeypatch)
    second, info2 = resample_labels(atlas, _grid(4.0), (49, 58, 49), target_space=TPL_B,
                                    cache_dir=cache)
    np.testing.assert_array_equal(first, second)
    assert second.dtype == np.int32 and info2 == info
    # another grid is another entry (and needs resampling)
    with pytest.raises(pytest.fail.Exception, match="cached index"):
        resample_labels(atlas, _grid(3.0), (65, 77, 65), target_space=TPL_B, cache_dir=cache)


def test_world_coordinate_placement_is_cached_and_still_said(tmp_path, monkeypatch, caplog):
    atlas = resolve_atlas("CC200")
    cache = tmp_path / "idx"
    first, info = resample_labels(atlas, _grid(4.0), (49, 58, 49), target_space=TPL_A,
                                  cache_dir=cache)
    assert info["Method"] == placement.WORLD
    monkeypatch.setattr(base, "_WARNED", set())
    _no_resampling(monkeypatch)
    with caplog.at_level("WARNING", logger="bidsfm.atlases"):
        second, info2 = resample_labels(atlas, _grid(4.0), (49, 58, 49), target_space=TPL_A,
                                        cache_dir=cache)
    np.testing.assert_array_equal(first, second)
    assert info2 == info and "world coordinates" in caplog.text


def test_damaged_cache_entry_is_recomputed(tmp_path):
    atlas = resolve_atlas("CC200")
    cache = tmp_path / "idx"
    first, _ = resample_labels(atlas, _grid(4.0), (49, 58, 49), cache_dir=cache)
    (entry,) = cache.glob("*.npz")
    entry.write_bytes(b"not an npz")
    again, _ = resample_labels(atlas, _grid(4.0), (49, 58, 49), cache_dir=cache)
    np.testing.assert_array_equal(first, again)
    assert np.load(entry)["labels"].shape == (49, 58, 49)  # rewritten


def test_a_new_transform_file_is_a_new_entry(tmp_path, monkeypatch):
    pytest.importorskip("nitransforms")
    data = np.zeros((20, 24, 20), dtype=np.int16)
    data[4:16, 4:20, 4:16] = np.arange(1, 13).repeat(192).reshape(12, 16, 12)
    img = tmp_path / f"tpl-{TPL_B}_atlas-Blocks_dseg.nii.gz"
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-20, -24, -20]
    nb.Nifti1Image(data, aff).to_filename(img)
    atlas = resolve_atlas(str(img))
    xfm = template_transform_path(TPL_A, TPL_B)
    _write_itk_h5(xfm, translation_lps=[4.0, 0.0, 0.0])
    cache = tmp_path / "idx"
    one, info = resample_labels(atlas, aff, (20, 24, 20), target_space=TPL_A, cache_dir=cache)
    assert info["Method"] == "template-transform"
    _write_itk_h5(xfm, translation_lps=[-4.0, 0.0, 0.0])  # another transform, same path
    os.utime(xfm, ns=(1, 1))
    two, _ = resample_labels(atlas, aff, (20, 24, 20), target_space=TPL_A, cache_dir=cache)
    assert not np.array_equal(one, two) and len(list(cache.glob("*.npz"))) == 2


def test_second_run_reads_the_cache_and_writes_identical_outputs(tmp_path, tiny_ds, monkeypatch,
                                                                 session_env):
    """process_run twice on one grid (two output folders, one work folder)."""
    from bidsfm.discovery import build_layout, collect_runs
    from bidsfm.pipeline import ProcessingOptions, output_paths, process_run

    root = Path(tiny_ds["root"])
    runs, _ = collect_runs(build_layout(root, ["03"], None), root, "03")
    opts = ProcessingOptions(atlases=["CC200", "TianS3+Schaefer400x17"], min_time=0)
    index = tmp_path / "work" / "atlas_index"
    first = process_run(runs[0], opts, tmp_path / "out1", atlas_index_dir=index)
    assert [r.status for r in first] == ["ok", "ok"]
    assert len(list(index.glob("*.npz"))) == 2
    _no_resampling(monkeypatch)
    second = process_run(runs[0], opts, tmp_path / "out2", atlas_index_dir=index)
    assert [r.status for r in second] == ["ok", "ok"]
    for atlas in ("CC200", "TianS3Schaefer400x17"):
        a = output_paths(runs[0], atlas, tmp_path / "out1")
        b = output_paths(runs[0], atlas, tmp_path / "out2")
        for key in ("timeseries", "coverage", "fc", "fcz", "timeseries_json"):
            assert a[key].read_bytes() == b[key].read_bytes(), (atlas, key)
