"""Tests for bidsfm.atlases: registry, offline cache, TemplateFlow, user files, resampling."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nb
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bidsfm import atlases
from bidsfm.atlases import (
    CC200_SHA256,
    CC200_URL,
    Atlas,
    atlas_cli,
    available_atlases,
    base,
    resample_labels,
    resolve_atlas,
    seed_cache,
    store,
)
from bidsfm.errors import AtlasNotFoundError
from bidsfm.utils import shared_data_dir

os.environ.setdefault("NIPYPE_NO_ET", "1")

SHARED = shared_data_dir()
SHARED_CC200 = SHARED / "atlases" / "CC200.nii.gz"
needs_shared = pytest.mark.skipif(not SHARED_CC200.is_file(),
                                  reason=f"{SHARED_CC200} not available")
#: The copy that ships inside the package (always there, no shared data needed).
CC200_FILE = atlases.BUNDLED_DIR / "CC200.nii.gz"

TPL_A = "MNI152NLin2009cAsym"
TPL_B = "MNI152NLin6Asym"
MNI2MM = np.array([[2.0, 0, 0, -96], [0, 2.0, 0, -132], [0, 0, 2.0, -78], [0, 0, 0, 1]])
MNI4MM = np.array([[4.0, 0, 0, -96], [0, 4.0, 0, -132], [0, 0, 4.0, -78], [0, 0, 0, 1]])


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Own cache and TemplateFlow home per test, never the network."""
    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "bidsfm_home"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    monkeypatch.setattr(base, "_WARNED", set())

    def _no_network(*args, **kwargs):
        raise AssertionError("the network must not be touched in tests")

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)


@pytest.fixture
def no_bundle(monkeypatch, tmp_path):
    """Hide the package's CC200 copy, to test the cache and download paths."""
    monkeypatch.setattr(atlases, "BUNDLED_DIR", tmp_path / "no_bundle")


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert "\n" not in msg
    assert "Traceback" not in msg
    return msg


# --------------------------------------------------------------------------------------------
# Synthetic images
# --------------------------------------------------------------------------------------------

def _block_labels(shape=(20, 24, 20), block=4) -> np.ndarray:
    """Label image made of block^3 cubes with labels 1..N, a zero border of one block."""
    data = np.zeros(shape, dtype=np.int16)
    label = 0
    for i in range(block, shape[0] - block, block):
        for j in range(block, shape[1] - block, block):
            for k in range(block, shape[2] - block, block):
                label += 1
                data[i:i + block, j:j + block, k:k + block] = label
    return data


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    aff = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    if affine is None:
        aff[:3, 3] = [-20, -24, -20]
    nb.Nifti1Image(data, aff).to_filename(path)
    return path


def _make_schaefer(home: Path, tpl: str, res: str | None, parcels=100, networks=7,
                   tsv=True) -> Path:
    desc = f"{parcels}Parcels{networks}Networks"
    folder = home / f"tpl-{tpl}"
    res_part = f"_res-{res}" if res else ""
    img = folder / f"tpl-{tpl}{res_part}_atlas-Schaefer2018_desc-{desc}_dseg.nii.gz"
    data = np.zeros((10, 12, 10), dtype=np.int16)
    data.reshape(-1)[:parcels] = np.arange(1, parcels + 1)
    _save(img, data)
    if tsv:
        names = [f"{networks}Networks_{'LH' if i <= parcels // 2 else 'RH'}_Vis_{i}"
                 for i in range(1, parcels + 1)]
        pd.DataFrame({"index": range(1, parcels + 1), "name": names,
                      "color": ["#000000"] * parcels}).to_csv(
            folder / f"tpl-{tpl}_atlas-Schaefer2018_desc-{desc}_dseg.tsv", sep="\t", index=False)
    return img


# --------------------------------------------------------------------------------------------
# Registry and CC200
# --------------------------------------------------------------------------------------------

def test_available_atlases():
    names = available_atlases()
    assert names[0] == "CC200"
    assert "Schaefer400x17" in names and "Schaefer100x7" in names and "Schaefer1000x17" in names
    assert [n for n in names if n.startswith("Tian")] == ["TianS1", "TianS2", "TianS3", "TianS4"]
    for name in ("Gordon333", "Glasser360", "HarvardOxfordCort", "HarvardOxfordSub", "AAL116",
                 "AAL3v1", "Power264", "DiFuMo64", "DiFuMo1024"):
        assert name in names
    assert len(names) == 1 + 10 * 2 + 4 + 7 + 5


def test_cc200_from_seeded_cache(tmp_path, monkeypatch, no_bundle):
    dest = seed_cache("CC200", CC200_FILE)
    assert dest == tmp_path / "bidsfm_home" / "atlases" / "CC200.nii.gz"
    atlas = resolve_atlas("cc200")
    assert isinstance(atlas, Atlas)
    assert atlas.name == "CC200" and atlas.image == dest
    assert atlas.template == "MNI152NLin6Asym"
    assert atlas.source == CC200_URL and atlas.sha256 == CC200_SHA256
    assert list(atlas.labels.columns) == ["index", "name"]
    assert atlas.labels["index"].tolist() == list(range(1, 201))
    assert atlas.labels["name"].iloc[0] == "CC200_001"
    assert atlas.labels["name"].iloc[-1] == "CC200_200"
    assert atlas.n_rois == 200
    # the bundled TSV agrees with the generated names
    shared_tsv = pd.read_csv(CC200_FILE.with_suffix("").with_suffix(".tsv"), sep="\t")
    assert shared_tsv["name"].tolist() == atlas.roi_names

    # verification is remembered: a second resolve does not hash again
    def _boom(path):
        raise AssertionError("should use the verification stamp")

    monkeypatch.setattr(store, "sha256_file", _boom)
    assert resolve_atlas("CC200").image == dest


def test_cc200_corrupt_cache_is_detected(tmp_path, no_bundle):
    dest = seed_cache("CC200", CC200_FILE)
    data = bytearray(dest.read_bytes())
    data[-1] ^= 0xFF
    dest.write_bytes(bytes(data))
    os.utime(dest, ns=(1, 1))  # a changed file invalidates the stamp
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("CC200")
    msg = _one_line(err.value)
    assert "wrong sha256" in msg and str(dest) in msg and CC200_URL in msg


def test_seed_wrong_sha256_fails_clearly(tmp_path):
    bad = tmp_path / "CC200.nii.gz"
    bad.write_bytes(b"not the atlas")
    with pytest.raises(AtlasNotFoundError) as err:
        seed_cache("CC200", bad)
    msg = _one_line(err.value)
    assert "sha256 mismatch" in msg and CC200_SHA256 in msg and str(bad) in msg
    assert CC200_URL in msg
    assert not (tmp_path / "bidsfm_home" / "atlases" / "CC200.nii.gz").exists()
    with pytest.raises(AtlasNotFoundError, match="unknown atlas"):
        seed_cache("NotAnAtlas", bad)
    with pytest.raises(AtlasNotFoundError, match="does not exist"):
        seed_cache("CC200", tmp_path / "missing.nii.gz")


def test_offline_miss_is_fast_and_one_line(tmp_path, no_bundle):
    t0 = time.monotonic()
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("CC200")
    assert time.monotonic() - t0 < 2.0
    msg = _one_line(err.value)
    assert CC200_URL in msg and CC200_SHA256 in msg
    assert str(tmp_path / "bidsfm_home" / "atlases" / "CC200.nii.gz") in msg
    assert "bidsfm-atlas seed CC200" in msg


def test_download_failure_is_one_line(tmp_path, monkeypatch, no_bundle):
    monkeypatch.delenv("BIDSFM_OFFLINE")
    calls = []

    def _down(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", _down)
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("CC200")
    msg = _one_line(err.value)
    assert "download failed" in msg and CC200_URL in msg
    assert calls == [(CC200_URL, store.DOWNLOAD_TIMEOUT)]
    assert store.DOWNLOAD_TIMEOUT <= 15
    assert not list((tmp_path / "bidsfm_home" / "atlases").glob("*CC200*"))


def test_failed_download_is_not_retried_at_once(tmp_path, monkeypatch, no_bundle):
    """Runs of a job on a node without network do not each wait for the timeout."""
    monkeypatch.delenv("BIDSFM_OFFLINE")
    calls = []

    def _down(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("Network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", _down)
    for _ in range(3):
        with pytest.raises(AtlasNotFoundError, match="download failed") as err:
            resolve_atlas("CC200")
    assert calls == [CC200_URL] and "retried after 600 s" in _one_line(err.value)
    monkeypatch.setattr(store, "RETRY_AFTER", 0.0)  # later: tried again, and it works
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(CC200_FILE.read_bytes()))
    assert resolve_atlas("CC200").image.is_relative_to(tmp_path / "bidsfm_home")
    assert not list((tmp_path / "bidsfm_home" / "atlases" / ".failed").iterdir())


def test_download_hang_is_bounded(tmp_path, monkeypatch, no_bundle):
    monkeypatch.delenv("BIDSFM_OFFLINE")
    monkeypatch.setattr(store, "DOWNLOAD_TIMEOUT", 0.2)

    def _hang(url, timeout=None):
        time.sleep(3)
        raise urllib.error.URLError("late")

    monkeypatch.setattr(urllib.request, "urlopen", _hang)
    t0 = time.monotonic()
    with pytest.raises(AtlasNotFoundError, match="no answer within") as err:
        resolve_atlas("CC200")
    assert time.monotonic() - t0 < 2.0
    _one_line(err.value)


def test_download_once_then_cached(tmp_path, monkeypatch, no_bundle):
    monkeypatch.delenv("BIDSFM_OFFLINE")
    payload = CC200_FILE.read_bytes()
    calls = []

    def _fake(url, timeout=None):
        calls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", _fake)
    atlas = resolve_atlas("CC200")
    assert atlas.image.read_bytes() == payload
    assert resolve_atlas("CC200").image == atlas.image
    assert calls == [CC200_URL]


def test_download_with_wrong_content_leaves_nothing(tmp_path, monkeypatch, no_bundle):
    monkeypatch.delenv("BIDSFM_OFFLINE")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"html"))
    with pytest.raises(AtlasNotFoundError, match="sha256"):
        resolve_atlas("CC200")
    folder = tmp_path / "bidsfm_home" / "atlases"
    left = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert [p.parent.name for p in left] == [".failed"]  # only the note of the failure


def test_unknown_spec_lists_known_names():
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("Brainnetome246")
    msg = _one_line(err.value)
    assert "Brainnetome246" in msg and "CC200" in msg and "Schaefer400x17" in msg
    assert "AAL116" in msg and "TianS1" in msg and "Power264" in msg


# --------------------------------------------------------------------------------------------
# The bundled CC200: no shared data, no network, no cache
# --------------------------------------------------------------------------------------------

def test_bundled_cc200_without_shared_data_or_network(tmp_path, monkeypatch):
    """A fresh clone: BIDSFM_SHARED_DATA empty, empty cache, offline -> the package's CC200."""
    empty = tmp_path / "no_shared"
    empty.mkdir()
    monkeypatch.setenv("BIDSFM_SHARED_DATA", str(empty))
    atlas = resolve_atlas("CC200", space=TPL_A)
    package = Path(atlases.__file__).parents[1]  # bidsfm/
    assert atlas.image == CC200_FILE and CC200_FILE.is_relative_to(package)
    assert atlas.sha256 == CC200_SHA256 == store.sha256_file(atlas.image)
    assert atlas.template == "MNI152NLin6Asym" and atlas.source == CC200_URL
    assert atlas.roi_names[0] == "CC200_001" and atlas.n_rois == 200
    assert not (tmp_path / "bidsfm_home").exists()  # nothing written to the cache
    assert not list(CC200_FILE.parent.glob(".*verified*"))  # nor into the package
    runner = CliRunner()
    res = runner.invoke(atlas_cli, ["where", "cc200"])
    assert res.exit_code == 0 and res.output.strip() == str(CC200_FILE)
    res = runner.invoke(atlas_cli, ["list"])
    assert f"CC200\tbundled: {CC200_FILE}" in res.output


def test_bundled_files_provenance():
    """Every bundled file is listed in SOURCES.md with its sha256 and size, and is small."""
    from bidsfm.atlases.registry import BUNDLED, all_files

    folder = atlases.BUNDLED_DIR
    sources = (folder / "SOURCES.md").read_text()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "SOURCES.md")
    rel = [p.relative_to(folder).as_posix() for p in files]
    assert sorted(rel) == sorted([*BUNDLED, "CC200.tsv"])
    assert sum(p.stat().st_size for p in files) < 1_000_000
    registry = all_files()
    for path, name in zip(files, rel, strict=True):
        assert f"`{name}`" in sources
        assert store.sha256_file(path) in sources, name
        assert str(path.stat().st_size) in sources, name
        if name != "CC200.tsv":  # the registry's sha256 is the file's
            assert registry[name].sha256 == store.sha256_file(path), name
    assert CC200_URL in sources and "Craddock" in sources
    tsv = pd.read_csv(folder / "CC200.tsv", sep="\t")
    assert tsv["index"].tolist() == list(range(1, 201))
    assert tsv["name"].tolist() == [f"CC200_{i:03d}" for i in range(1, 201)]
    assert sorted(set(np.unique(np.asarray(nb.load(CC200_FILE).dataobj))) - {0}) == list(
        range(1, 201))


@needs_shared
def test_bundled_cc200_is_the_shared_file():
    assert CC200_FILE.read_bytes() == SHARED_CC200.read_bytes()
    assert (CC200_FILE.with_name("CC200.tsv").read_bytes()
            == SHARED_CC200.with_name("CC200.tsv").read_bytes())


def test_corrupt_bundled_copy_is_ignored(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "pkg_atlases"
    folder.mkdir()
    data = bytearray(CC200_FILE.read_bytes())
    data[-1] ^= 0xFF
    (folder / "CC200.nii.gz").write_bytes(bytes(data))
    monkeypatch.setattr(atlases, "BUNDLED_DIR", folder)
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        with pytest.raises(AtlasNotFoundError, match="not available offline") as err:
            resolve_atlas("CC200")
    _one_line(err.value)
    assert "bundled CC200 atlas has the wrong sha256" in caplog.text
    dest = seed_cache("CC200", CC200_FILE)  # the cache still works behind it
    assert resolve_atlas("CC200").image == dest


# --------------------------------------------------------------------------------------------
# Names as users type them
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("typed, canonical", [
    ("CC200", "CC200"), ("cc200", "CC200"), ("CC-200", "CC200"), ("Craddock200", "CC200"),
    ("Schaefer400", "Schaefer400x17"),  # was read as 40 parcels and 0 networks
    ("schaefer400", "Schaefer400x17"), ("SCHAEFER1000", "Schaefer1000x17"),
    ("Schaefer400x17", "Schaefer400x17"), ("Schaefer400x7", "Schaefer400x7"),
    ("Schaefer2018_400Parcels_17Networks", "Schaefer400x17"),
    ("Schaefer2018_400Parcels_7Networks", "Schaefer400x7"),
    ("Schaefer2018_400Parcels7Networks", "Schaefer400x7"),
    ("schaefer2018-200parcels-7networks", "Schaefer200x7"),
    ("Schaefer2018_1000Parcels", "Schaefer1000x17"),
    ("400Parcels7Networks", "Schaefer400x7"),
    ("atlas-Schaefer2018_desc-400Parcels17Networks", "Schaefer400x17"),
    ("Schaefer 400 x 7", "Schaefer400x7"), ("Schaefer_400_17", "Schaefer400x17"),
    ("Schaefer400_7N", "Schaefer400x7"),
    # XCP-D < 0.7: Schaefer{1..10}17 = {100..1000} parcels, 17 networks
    ("Schaefer117", "Schaefer100x17"), ("Schaefer417", "Schaefer400x17"),
    ("Schaefer1017", "Schaefer1000x17"),
    ("400", None), ("Foo", None), ("", None),
])
def test_canonical_atlas_name(typed, canonical):
    assert atlases.canonical_atlas_name(typed) == canonical


def test_normalise_atlas_spec_for_deduplication(tmp_path):
    specs = ["cc200", "CC200", "Schaefer400", "Schaefer2018_400Parcels_17Networks",
             "schaefer400x7", "Gordon", "4S456Parcels", "Nope", f"Mine={tmp_path}/a.nii.gz",
             "x/CC200.nii.gz", "tian_s3+Schaefer400"]
    assert [atlases.normalise_atlas_spec(s) for s in specs] == [
        "CC200", "CC200", "Schaefer400x17", "Schaefer400x17", "Schaefer400x7", "Gordon333",
        "4S456Parcels", "Nope", f"Mine={tmp_path}/a.nii.gz", "x/CC200.nii.gz",
        "TianS3+Schaefer400x17"]


def test_schaefer_short_name_resolves_17_networks(tmp_path):
    home = tmp_path / "templateflow"
    img17 = _make_schaefer(home, TPL_A, "02", parcels=100, networks=17)
    img7 = _make_schaefer(home, TPL_A, "02", parcels=100, networks=7)
    for typed in ("Schaefer100", "schaefer2018_100parcels_17networks", "Schaefer117"):
        atlas = resolve_atlas(typed)
        assert atlas.name == "Schaefer100x17" and atlas.image == img17 and atlas.n_rois == 100
    assert atlases.SCHAEFER_DEFAULT_NETWORKS == 17
    assert resolve_atlas("Schaefer2018_100Parcels_7Networks").image == img7
    # the package's own Schaefer400x17 comes before a TemplateFlow copy
    _make_schaefer(home, TPL_A, "02", parcels=400, networks=17)
    for typed in ("Schaefer400", "Schaefer417"):
        atlas = resolve_atlas(typed, space=TPL_A)
        assert atlas.name == "Schaefer400x17" and atlas.n_rois == 400
        assert atlas.image.is_relative_to(atlases.BUNDLED_DIR)


@pytest.mark.parametrize("typed, message", [
    ("Schaefer450", "no Schaefer2018 atlas with 450 parcels and 17 networks"),
    ("Schaefer400x8", "no Schaefer2018 atlas with 400 parcels and 8 networks"),
    ("Schaefer2018", "needs a parcel count"),
])
def test_schaefer_impossible_counts(typed, message):
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas(typed)
    msg = _one_line(err.value)
    assert message in msg and "100, 200, ..., 1000" in msg


@pytest.mark.parametrize("typed", [
    "4S156Parcels", "4S456Parcels", "4s1056parcels", "HCP", "MIDB", "MyersLabonte",
])
def test_known_but_not_shipped_names(typed):
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas(typed)
    msg = _one_line(err.value)
    assert f"atlas {typed!r}" in msg and "recognised but not shipped" in msg
    assert "NAME=PATH" in msg and "CC200" in msg and "Schaefer" in msg
    assert "BIDSFM_ATLAS_PATH" in msg


@pytest.mark.parametrize("typed, advice", [
    ("HarvardOxford", "HarvardOxfordCort"), ("subcortical", "TianS1"), ("DiFuMo", "DiFuMo64"),
])
def test_ambiguous_names_say_what_to_type(typed, advice):
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas(typed)
    msg = _one_line(err.value)
    assert repr(typed) in msg or typed in msg
    assert advice in msg


def test_unknown_name_lists_valid_names():
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("Shaefer400")
    msg = _one_line(err.value)
    assert "unknown atlas 'Shaefer400'" in msg and "did you mean Schaefer400?" in msg
    assert "Valid names: CC200 (bundled)" in msg and "Schaefer400 = Schaefer400x17" in msg
    assert "4S156Parcels" in msg and "Gordon" in msg  # listed as not shipped yet


def test_not_shipped_name_as_user_file(tmp_path):
    img = _save(tmp_path / "gordon333.nii.gz", _block_labels())
    assert resolve_atlas(f"Gordon={img}").name == "Gordon"


# --------------------------------------------------------------------------------------------
# Schaefer from TemplateFlow
# --------------------------------------------------------------------------------------------

def test_schaefer_template_and_resolution_preference(tmp_path):
    home = tmp_path / "templateflow"
    a2 = _make_schaefer(home, TPL_A, "02")
    _make_schaefer(home, TPL_A, "01")
    b1 = _make_schaefer(home, TPL_B, "01")

    atlas = resolve_atlas("Schaefer100x7")
    assert atlas.image == a2 and atlas.template == TPL_A
    assert atlas.name == "Schaefer100x7"
    assert atlas.source == f"TemplateFlow:tpl-{TPL_A}/{a2.name}"
    assert atlas.labels["index"].tolist() == list(range(1, 101))
    assert atlas.labels["name"].iloc[0] == "7Networks_LH_Vis_1"
    assert len(atlas.sha256) == 64

    # the run's own space comes first; the long alias is the same atlas
    atlas = resolve_atlas("Schaefer2018_100Parcels7Networks", space=TPL_B)
    assert atlas.image == b1 and atlas.template == TPL_B and atlas.name == "Schaefer100x7"
    # a space without the atlas falls back to the default order
    assert resolve_atlas("schaefer100x7", space="MNIPediatricAsym:cohort-2").image == a2


def test_schaefer_ignores_placeholders(tmp_path):
    home = tmp_path / "templateflow"
    a1 = _make_schaefer(home, TPL_A, "01")
    folder = home / f"tpl-{TPL_A}"
    name = "atlas-Schaefer2018_desc-100Parcels7Networks_dseg.nii.gz"
    (folder / f"tpl-{TPL_A}_res-02_{name}").symlink_to(folder / ".git/annex/objects/missing")
    assert resolve_atlas("Schaefer100x7").image == a1
    (folder / f"tpl-{TPL_A}_res-02_{name}").unlink()
    (folder / f"tpl-{TPL_A}_res-02_{name}").write_bytes(b"")
    assert resolve_atlas("Schaefer100x7").image == a1
    # any other resolution is used when neither 02 nor 01 is there
    a1.unlink()
    a3 = _make_schaefer(home, TPL_A, "03")
    assert resolve_atlas("Schaefer100x7").image == a3


def test_schaefer_without_tsv_generates_names(tmp_path, caplog):
    _make_schaefer(tmp_path / "templateflow", TPL_A, "02", tsv=False)
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        atlas = resolve_atlas("Schaefer100x7")
    assert atlas.labels["name"].iloc[4] == "Schaefer100x7_005"
    assert "no label TSV" in caplog.text


def test_schaefer_missing_names_file_and_fetch(tmp_path):
    """Schaefer300x7 has no registry file: it comes from TemplateFlow only."""
    home = tmp_path / "templateflow"
    _make_schaefer(home, TPL_A, "02", parcels=100, networks=7)
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("Schaefer300x7", space=TPL_B)
    msg = _one_line(err.value)
    expected = (home / f"tpl-{TPL_B}" /
                f"tpl-{TPL_B}_res-02_atlas-Schaefer2018_desc-300Parcels7Networks_dseg.nii.gz")
    assert str(expected) in msg
    assert f"TEMPLATEFLOW_HOME={home}" in msg
    assert "templateflow.api" in msg and "desc='300Parcels7Networks'" in msg


def test_schaefer_invalid_combination():
    with pytest.raises(AtlasNotFoundError, match="100, 200"):
        resolve_atlas("Schaefer450x7")
    with pytest.raises(AtlasNotFoundError, match="7 or 17"):
        resolve_atlas("Schaefer400x8")


# --------------------------------------------------------------------------------------------
# User atlases
# --------------------------------------------------------------------------------------------

def test_user_atlas_with_tsv(tmp_path, caplog):
    img = _save(tmp_path / "atlas-Mine_space-MNI152NLin2009cAsym_res-2_dseg.nii.gz",
                _block_labels())
    n = int(_block_labels().max())
    pd.DataFrame({"index": list(range(1, n + 2)),
                  "label": [f"roi{i}" for i in range(1, n + 2)]}).to_csv(
        tmp_path / "atlas-Mine_dseg.tsv", sep="\t", index=False)
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        atlas = resolve_atlas(str(img))
    assert atlas.name == "Mine" and atlas.template == TPL_A
    assert atlas.labels["name"].tolist()[:2] == ["roi1", "roi2"]
    assert len(atlas.labels) == n + 1  # the absent label keeps its row ...
    assert "absent from the image" in caplog.text  # ... with a warning
    assert atlas.source == str(img.resolve()) and len(atlas.sha256) == 64


def test_user_atlas_with_same_name_tsv():
    atlas = resolve_atlas(str(CC200_FILE))  # CC200.tsv beside it, read-only
    assert atlas.name == "CC200" and atlas.template is None
    assert atlas.labels["index"].tolist() == list(range(1, 201))
    assert atlas.labels["name"].iloc[199] == "CC200_200"
    assert list(atlas.labels.columns) == ["index", "name"]


def test_user_atlas_without_tsv_and_named(tmp_path):
    data = _block_labels()
    data[data == 3] = 0  # non-contiguous labels
    img = _save(tmp_path / "my-parc.nii", data)
    atlas = resolve_atlas(str(img))
    assert atlas.name == "myparc" and atlas.template is None
    values = sorted(set(np.unique(data)) - {0})
    assert atlas.labels["index"].tolist() == values
    assert atlas.labels["name"].iloc[2] == "myparc_004"


def test_user_atlas_named_spec(tmp_path):
    img = _save(tmp_path / f"tpl-{TPL_B}_thing.nii.gz", _block_labels())
    atlas = resolve_atlas(f"Custom={img}")
    assert atlas.name == "Custom" and atlas.template == TPL_B
    assert atlas.labels["name"].iloc[0] == "Custom_001"


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((4, 4, 4, 2, 2), dtype=np.int16), "not a 3D label image"),
        (np.full((4, 4, 4), 1.5, dtype=np.float32), "non-integer"),
        (np.zeros((4, 4, 4), dtype=np.int16), "no labels"),
    ],
)
def test_user_atlas_errors(tmp_path, data, message):
    img = _save(tmp_path / "bad.nii.gz", data)
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas(str(img))
    msg = _one_line(err.value)
    assert message in msg and str(img) in msg


def test_user_atlas_float_integers_and_missing_file(tmp_path):
    img = _save(tmp_path / "floaty.nii.gz", _block_labels().astype(np.float32))
    assert resolve_atlas(str(img)).labels["index"].iloc[0] == 1
    with pytest.raises(AtlasNotFoundError, match="not found") as err:
        resolve_atlas(str(tmp_path / "nope.nii.gz"))
    _one_line(err.value)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------

def _nilearn_nearest(image: Path, affine: np.ndarray, shape) -> np.ndarray:
    from nilearn.image import resample_to_img

    target = nb.Nifti1Image(np.zeros(shape, dtype=np.float32), affine)
    out = resample_to_img(str(image), target, interpolation="nearest",
                          force_resample=True, copy_header=True)
    return np.asarray(out.dataobj).astype(np.int32)


@pytest.mark.parametrize("affine, shape", [(MNI4MM, (49, 58, 49)), (MNI2MM, (97, 115, 97))])
def test_resample_cc200_matches_nilearn(affine, shape):
    seed_cache("CC200", CC200_FILE)
    atlas = resolve_atlas("CC200")
    ours, info = resample_labels(atlas, affine, shape, target_space="MNI152NLin6Asym")
    ref = _nilearn_nearest(atlas.image, affine, shape)
    assert ours.dtype == np.int32 and ours.shape == shape
    assert (ours == ref).mean() >= 0.999
    assert info == {"AtlasSpace": "MNI152NLin6Asym", "TargetSpace": "MNI152NLin6Asym",
                    "Method": "nearest-neighbour-resampling"}


def test_resample_identical_grid_is_exact():
    seed_cache("CC200", CC200_FILE)
    atlas = resolve_atlas("CC200")
    img = nb.load(atlas.image)
    ours, info = resample_labels(atlas, img.affine, img.shape[:3] + (5,))
    assert info["Method"] == "identical-grid" and info["TargetSpace"] is None
    np.testing.assert_array_equal(ours, np.asarray(img.dataobj))
    np.testing.assert_array_equal(ours, _nilearn_nearest(atlas.image, img.affine, img.shape))


def test_resample_oblique_grid_matches_nilearn(tmp_path):
    img = _save(tmp_path / "atlas-Blocks_dseg.nii.gz", _block_labels())
    atlas = resolve_atlas(str(img))
    rot = nb.eulerangles.euler2mat(0.2, -0.1, 0.15) * 1.7
    affine = nb.affines.from_matvec(rot, [-22.0, -25.0, -19.0])
    ours, info = resample_labels(atlas, affine, (25, 30, 24))
    ref = _nilearn_nearest(img, affine, (25, 30, 24))
    assert (ours == ref).mean() >= 0.999
    assert info["Method"] == "nearest-neighbour-resampling"


def _atlas_in(tmp_path: Path, template: str) -> Atlas:
    img = _save(tmp_path / f"tpl-{template}_atlas-Blocks_dseg.nii.gz", _block_labels())
    return resolve_atlas(str(img))


def test_resample_other_template_without_transform_warns_once(tmp_path, caplog):
    atlas = _atlas_in(tmp_path, TPL_B)
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        out1, info = resample_labels(atlas, nb.load(atlas.image).affine, (20, 24, 20),
                                     target_space=TPL_A)
        resample_labels(atlas, nb.load(atlas.image).affine, (20, 24, 20), target_space=TPL_A)
    assert info == {"AtlasSpace": TPL_B, "TargetSpace": TPL_A,
                    "Method": "world-coordinates (no template transform available)"}
    np.testing.assert_array_equal(out1, _block_labels())
    warnings = [r for r in caplog.records if "world coordinates" in r.getMessage()]
    assert len(warnings) == 1
    assert "_from-MNI152NLin6Asym_mode-image_xfm.h5" in warnings[0].getMessage()


def test_resample_transform_present_but_nitransforms_missing(tmp_path, monkeypatch, caplog):
    atlas = _atlas_in(tmp_path, TPL_B)
    xfm = atlases.template_transform_path(TPL_A, TPL_B)
    xfm.parent.mkdir(parents=True)
    xfm.write_bytes(b"\x89HDF placeholder")
    monkeypatch.setitem(sys.modules, "nitransforms", None)
    monkeypatch.setitem(sys.modules, "nitransforms.manip", None)
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        _, info = resample_labels(atlas, nb.load(atlas.image).affine, (20, 24, 20),
                                  target_space=TPL_A)
    assert info["Method"] == "world-coordinates (no template transform available)"
    assert "nitransforms is not installed" in caplog.text


def _write_itk_h5(path: Path, translation_lps=None, field_lps=None, field_affine=None,
                  matrix_lps=None, center_lps=None) -> None:
    """Write an ITK composite transform (as ANTs does): affine first, displacement field second.

    ITK stores parameters in LPS; a displacement field's fixed parameters are size, origin,
    spacing and direction, its vectors interleaved per voxel with x fastest.
    """
    h5py = pytest.importorskip("h5py")
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        group = f.create_group("TransformGroup")
        group.create_group("0").create_dataset(
            "TransformType", data=[b"CompositeTransform_double_3_3"])
        n = 1
        if translation_lps is not None:
            g = group.create_group(str(n))
            n += 1
            g.create_dataset("TransformType", data=[b"AffineTransform_double_3_3"])
            matrix = np.eye(3) if matrix_lps is None else np.asarray(matrix_lps, float)
            center = np.zeros(3) if center_lps is None else np.asarray(center_lps, float)
            g.create_dataset("TransformParameters",
                             data=np.r_[matrix.ravel(), np.asarray(translation_lps, float)])
            g.create_dataset("TransformFixedParameters", data=center)
        if field_lps is not None:
            g = group.create_group(str(n))
            g.create_dataset("TransformType", data=[b"DisplacementFieldTransform_double_3_3"])
            lps_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ field_affine
            zooms = np.linalg.norm(lps_affine[:3, :3], axis=0)
            fixed = np.r_[field_lps.shape[:3], lps_affine[:3, 3], zooms,
                          (lps_affine[:3, :3] / zooms).ravel()]
            g.create_dataset("TransformFixedParameters", data=fixed)
            g.create_dataset("TransformParameters",
                             data=np.moveaxis(field_lps, -1, 0).reshape(-1, order="F"))


def test_itk_transform_conventions(tmp_path):
    """Points map as ITK does: y = A(W(x)), affine y = M (x - c) + c + t, all in LPS."""
    pytest.importorskip("nitransforms")
    flip = np.diag([-1.0, -1.0, 1.0])
    matrix = nb.eulerangles.euler2mat(0.1, -0.2, 0.05) * 1.1
    center, trans = np.array([3.0, -5.0, 7.0]), np.array([1.0, 2.0, -3.0])
    field_grid = np.diag([5.0, 5.0, 5.0, 1.0])
    field_grid[:3, 3] = [-50, -50, -50]
    disp = np.array([0.5, -1.5, 2.0])  # LPS
    field = np.broadcast_to(disp, (21, 21, 21, 3)).copy()
    xfm = tmp_path / "xfm.h5"
    _write_itk_h5(xfm, translation_lps=trans, matrix_lps=matrix, center_lps=center,
                  field_lps=field, field_affine=field_grid)
    mapping = atlases._load_itk_mapping(xfm)
    x_ras = np.array([[0.0, 0.0, 0.0], [10.0, -20.0, 15.0], [-7.3, 4.4, 1.9]])
    warped = x_ras @ flip.T + disp  # W, in LPS
    expected = ((warped - center) @ matrix.T + center + trans) @ flip.T  # A, back to RAS
    np.testing.assert_allclose(mapping(x_ras), expected, atol=1e-4)


def test_resample_applies_template_transform(tmp_path):
    pytest.importorskip("nitransforms")
    atlas = _atlas_in(tmp_path, TPL_B)
    # target-space point x maps to atlas-space point x + (-4, 0, +6) mm (RAS) via the affine,
    # after a constant displacement field of (-2, +4, 0) mm (RAS): total shift (-6, +4, +6)
    field_grid = np.diag([4.0, 4.0, 4.0, 1.0])
    field_grid[:3, 3] = [-60, -60, -60]
    field = np.zeros((31, 31, 31, 3))
    field[..., 0], field[..., 1] = 2.0, -4.0  # LPS
    xfm = atlases.template_transform_path(TPL_A, TPL_B)
    _write_itk_h5(xfm, translation_lps=[4.0, 0.0, 6.0], field_lps=field,
                  field_affine=field_grid)

    target_affine = MNI4MM.copy()
    target_affine[:3, 3] = [-24, -28, -24]
    shape = (13, 14, 12)
    out, info = resample_labels(atlas, target_affine, shape, target_space=TPL_A)
    assert info == {"AtlasSpace": TPL_B, "TargetSpace": TPL_A, "Method": "template-transform",
                    "Transform": str(xfm)}
    shifted = target_affine.copy()
    shifted[:3, 3] += [-6.0, 4.0, 6.0]
    expected = _nilearn_nearest(atlas.image, shifted, shape)
    assert expected.any()
    np.testing.assert_array_equal(out, expected)
    assert not np.array_equal(out, _nilearn_nearest(atlas.image, target_affine, shape))


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def test_cli_list_and_errors(tmp_path, no_bundle):
    runner = CliRunner()
    res = runner.invoke(atlas_cli, ["list"])
    assert res.exit_code == 0
    assert "CC200\tnot cached" in res.output and "Schaefer400x17\t" in res.output

    res = runner.invoke(atlas_cli, ["where", "CC200"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert CC200_URL in res.output and res.output.count("\n") == 1

    res = runner.invoke(atlas_cli, ["where", "Nope"])
    assert res.exit_code == 1 and "unknown atlas" in res.output

    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"x")
    res = runner.invoke(atlas_cli, ["seed", "CC200", str(bad)])
    assert res.exit_code == 1 and "sha256 mismatch" in res.output


def test_cli_seed_and_where(tmp_path, no_bundle):
    runner = CliRunner()
    res = runner.invoke(atlas_cli, ["seed", "CC200", str(CC200_FILE)])
    assert res.exit_code == 0, res.output
    dest = tmp_path / "bidsfm_home" / "atlases" / "CC200.nii.gz"
    assert res.output.strip() == str(dest)
    res = runner.invoke(atlas_cli, ["where", "CC200"])
    assert res.exit_code == 0 and res.output.strip() == str(dest)
    res = runner.invoke(atlas_cli, ["list"])
    assert f"CC200\tcached: {dest}" in res.output


def test_main_entry_point(capsys):
    with pytest.raises(SystemExit) as exc:
        atlases.main(["list"])
    assert exc.value.code == 0
    assert "CC200" in capsys.readouterr().out
