"""The real atlases of the registry: provenance, label tables, hemispheres, names, sources.

Files come from ``../shared/data/atlases`` (seeded into a private cache, sha256-verified); the
tests that need them skip when it is absent. Nothing is downloaded: the download path is
tested with a fake ``urlopen`` serving the shared copies.
"""

from __future__ import annotations

import io
import logging
import re
import urllib.request
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SHARED

from bidsfm import atlases
from bidsfm.atlases import base, registry, resolve_atlas
from bidsfm.atlases.labels import load_label_array, read_label_file
from bidsfm.atlases.registry import REGISTRY, all_files
from bidsfm.errors import AtlasNotFoundError

ATLASES = None if SHARED is None else SHARED / "atlases"
needs_shared = pytest.mark.skipif(ATLASES is None, reason="../shared/data not available")
#: Registry files that are not in ../shared/data/atlases (XCP-D's CBIG v0.14.3 copies at
#: 300, 500-900 parcels, verified when they were added: see docs/atlases.md).
NOT_IN_SHARED = {f"Schaefer{n}x17" for n in (300, 500, 600, 700, 800, 900)}
TPL_A, TPL_B = "MNI152NLin2009cAsym", "MNI152NLin6Asym"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "templateflow"))
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    monkeypatch.delenv("BIDSFM_ATLAS_PATH", raising=False)
    monkeypatch.setattr(base, "_WARNED", set())

    def _no_network(*args, **kwargs):
        raise AssertionError("the network must not be touched in tests")

    monkeypatch.setattr(urllib.request, "urlopen", _no_network)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> Path:
    """A cache holding every registry file found in ../shared/data/atlases."""
    if ATLASES is None:
        pytest.skip("../shared/data not available")
    import os

    home = tmp_path_factory.mktemp("seeded_home")
    old = os.environ.get("BIDSFM_HOME")
    os.environ["BIDSFM_HOME"] = str(home)
    try:
        for name, record in REGISTRY.items():
            if record.releases and name not in NOT_IN_SHARED:
                atlases.seed_folder(name, ATLASES)
    finally:
        if old is None:
            os.environ.pop("BIDSFM_HOME", None)
        else:
            os.environ["BIDSFM_HOME"] = old
    return home


def _shared_sources() -> dict[str, tuple[str, str, str]]:
    """relpath -> (repo, full commit, path) from ../shared/data/atlases/SOURCES.md."""
    text = (ATLASES / "SOURCES.md").read_text()
    line = text.split("Full commit ids:", 1)[1].splitlines()[0]
    commits = {(repo, commit[:12]): commit
               for repo, commit in re.findall(r"([\w.-]+/[\w.-]+) `([0-9a-f]{40})`", line)}
    out = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 9 or not cells[0].startswith("`"):
            continue
        m = re.match(r"([\w.-]+/[\w.-]+) @ `([0-9a-f]+)`", cells[5])
        if m:
            out[cells[0].strip("`")] = (m.group(1), commits[(m.group(1), m.group(2))],
                                        cells[6].strip("`"))
    assert commits and out  # both tables were found
    return out


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------

def test_urls_are_pinned_raw_github_files():
    for f in all_files().values():
        assert re.fullmatch(r"https://raw\.githubusercontent\.com/[\w.-]+/[\w.-]+/[0-9a-f]{40}/"
                            r"\S+", f.url), f.url
        assert f.url.endswith(f.path) and len(f.sha256) == 64
        assert f.path.rsplit("/", 1)[-1] == f.relpath.rsplit("/", 1)[-1]


@needs_shared
def test_registry_files_are_the_shared_copies():
    """sha256, repository, commit and path of every registry file equal ../shared's record."""
    import hashlib

    sources = _shared_sources()
    missing = []
    for relpath, f in all_files().items():
        path = ATLASES / relpath
        if not path.is_file():
            missing.append(relpath)
            continue
        assert hashlib.sha256(path.read_bytes()).hexdigest() == f.sha256, relpath
        if relpath == "CC200.nii.gz":  # described in ../shared/data/README.md, not SOURCES.md
            assert (f.repo, f.path) == ("preprocessed-connectomes-project/abide",
                                        "preprocessing/resources/abide_rois/CC200.nii.gz")
            continue
        assert sources[relpath] == (f.repo, f.commit, f.path), relpath
    expected = {f.relpath for n in NOT_IN_SHARED for r in REGISTRY[n].releases for f in r.files}
    assert set(missing) == expected


@needs_shared
def test_every_release_reads_with_its_label_table(seeded):
    """Each release: labels table rows = the atlas's ROIs = the image's non-zero values."""
    for name, record in REGISTRY.items():
        for release in record.releases:
            if name in NOT_IN_SHARED:
                continue
            image = seeded / "atlases" / release.image.relpath
            values = set(np.unique(load_label_array(image)).tolist()) - {0}
            if release.labels is None:
                assert values == set(range(1, record.n_rois + 1)), name
                continue
            labels = read_label_file(seeded / "atlases" / release.labels.relpath,
                                     release.label_format)
            assert len(labels) == record.n_rois, name
            assert set(labels["index"]) == values, (name, release.image.relpath)
            assert labels["name"].str.len().min() > 0


def _centroid_x(image: Path) -> dict[int, float]:
    img = nb.load(str(image))
    data = load_label_array(image)
    ijk = np.argwhere(data > 0)
    lab = data[data > 0]
    x = ijk @ img.affine[0, :3] + img.affine[0, 3]
    sums = np.bincount(lab, weights=x)
    counts = np.bincount(lab)
    return {int(v): sums[v] / counts[v] for v in np.unique(lab)}


_LEFT = re.compile(r"(^|_)(LH|L|Left)(_|$)|-lh$|_L$")
_RIGHT = re.compile(r"(^|_)(RH|R|Right)(_|$)|-rh$|_R$")


@needs_shared
@pytest.mark.parametrize("name", ["Schaefer400x17", "Schaefer200x7", "TianS3", "Gordon333",
                                  "Glasser360", "HarvardOxfordSub", "AAL116", "AAL3v1"])
def test_hemisphere_names_match_the_image(seeded, monkeypatch, name):
    """A ROI named left lies at x < 0, one named right at x > 0 (catches the HO L/R swap)."""
    monkeypatch.setenv("BIDSFM_HOME", str(seeded))
    for space in (TPL_B, TPL_A, "MNIColin27"):
        atlas = resolve_atlas(name, space=space)
        cx = _centroid_x(atlas.image)
        checked = 0
        for index, roi in zip(atlas.labels["index"], atlas.labels["name"], strict=True):
            if int(index) not in cx:
                continue
            if _LEFT.search(roi):
                assert cx[int(index)] < 0, (name, atlas.template, roi)
                checked += 1
            elif _RIGHT.search(roi):
                assert cx[int(index)] > 0, (name, atlas.template, roi)
                checked += 1
        assert checked >= 0.8 * atlas.n_rois or name == "HarvardOxfordSub" and checked == 14


@needs_shared
def test_harvard_oxford_subcortical_names_are_fixed(seeded, monkeypatch):
    import pandas as pd

    monkeypatch.setenv("BIDSFM_HOME", str(seeded))
    atlas = resolve_atlas("HarvardOxfordSub")
    fixed = pd.read_csv(ATLASES / "harvardoxford" / "HarvardOxfordsub-maxprob_labels_LRfixed.tsv",
                        sep="\t")
    assert atlas.labels["index"].tolist() == fixed["index"].tolist()
    assert atlas.labels["name"].tolist() == fixed["name"].tolist()
    assert atlas.roi_names[0] == "Left_Cerebral_White_Matter"
    assert "Left and Right" in atlas.note


# --------------------------------------------------------------------------------------------
# Names and sources
# --------------------------------------------------------------------------------------------

@needs_shared
@pytest.mark.parametrize("typed, name, n, template, first", [
    ("Gordon", "Gordon333", 333, TPL_B, "L_Default_1"),
    ("glasser", "Glasser360", 360, TPL_B, "Right_V1"),
    ("HCP-MMP1", "Glasser360", 360, TPL_B, "Right_V1"),
    ("Tian", "TianS3", 50, TPL_B, "HIP-head-m-rh"),
    ("Tian_Subcortex_S1_3T", "TianS1", 16, TPL_B, "HIP-rh"),
    ("HarvardOxford_cortical", "HarvardOxfordCort", 48, TPL_B, "Frontal_Pole"),
    ("AAL", "AAL116", 116, "MNIColin27", "Precentral_L"),
    ("aal3v1", "AAL3v1", 166, "MNIColin27", "Precentral_L"),
    ("Power", "Power264", 264, TPL_B, "Uncertain_1"),
    ("Schaefer1000x7", "Schaefer1000x7", 1000, TPL_B, "7Networks_LH_Vis_1"),
    ("Schaefer200x7", "Schaefer200x7", 200, TPL_B, "7Networks_LH_Vis_1"),
])
def test_names_users_type(seeded, monkeypatch, typed, name, n, template, first):
    monkeypatch.setenv("BIDSFM_HOME", str(seeded))
    atlas = resolve_atlas(typed, space=template)
    assert (atlas.name, atlas.n_rois, atlas.template, atlas.roi_names[0]) == (
        name, n, template, first)
    assert atlas.image.is_relative_to(seeded) and atlas.source.startswith("https://")


@needs_shared
def test_the_runs_own_template_comes_first(seeded, monkeypatch, caplog):
    monkeypatch.setenv("BIDSFM_HOME", str(seeded))
    assert resolve_atlas("TianS3", space=TPL_B).image.name == "Tian_Subcortex_S3_3T.nii"
    atlas = resolve_atlas("TianS3", space=TPL_A)
    assert atlas.template == TPL_A and atlas.image.is_relative_to(atlases.BUNDLED_DIR)
    gordon = resolve_atlas("Gordon333", space=TPL_A)
    assert gordon.template == TPL_A and "xcpEngine" in gordon.note
    # an empty cache: the bundled 2009c Tian stands in for the MNI152NLin6Asym release, saying so
    monkeypatch.setenv("BIDSFM_HOME", str(seeded.parent / "empty"))
    with caplog.at_level(logging.WARNING, logger="bidsfm.atlases"):
        atlas = resolve_atlas("TianS3", space=TPL_B)
    assert atlas.template == TPL_A
    assert "bidsfm-atlas fetch TianS3 --space MNI152NLin6Asym" in caplog.text


def test_fetch_downloads_into_the_cache(tmp_path, monkeypatch, shared_data):
    """`bidsfm-atlas fetch` (fake network serving the shared copies), then offline use."""
    by_url = {f.url: shared_data / "atlases" / f.relpath for f in all_files().values()}
    calls = []

    def _serve(url, timeout=None):
        calls.append(url)
        return io.BytesIO(by_url[url].read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", _serve)
    runner = CliRunner()
    res = runner.invoke(atlases.atlas_cli, ["fetch", "TianS2", "--space", TPL_B])
    assert res.exit_code == 1 and "BIDSFM_OFFLINE" in res.output and not calls
    monkeypatch.delenv("BIDSFM_OFFLINE")
    res = runner.invoke(atlases.atlas_cli, ["fetch", "TianS2", "--space", TPL_B])
    assert res.exit_code == 0, res.output
    releases = [r for r in REGISTRY["TianS2"].releases if r.template == TPL_B]
    assert calls == [r.image.url for r in releases]  # the label table ships with the package
    release = releases[0]
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    atlas = resolve_atlas("TianS2", space=TPL_B)
    assert atlas.image == tmp_path / "home" / "atlases" / release.image.relpath
    res = runner.invoke(atlases.atlas_cli, ["list"])
    assert f"TianS2\tbundled: {atlases.BUNDLED_DIR}" in res.output and "cached:" in res.output
    # a TemplateFlow-only atlas is not fetched by bidsfm
    res = runner.invoke(atlases.atlas_cli, ["fetch", "Schaefer300x7"])
    assert res.exit_code == 1 and "templateflow.api" in res.output


def test_download_of_a_missing_release_when_online(tmp_path, monkeypatch, shared_data):
    by_url = {f.url: shared_data / "atlases" / f.relpath for f in all_files().values()}
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(by_url[url].read_bytes()))
    monkeypatch.delenv("BIDSFM_OFFLINE")
    atlas = resolve_atlas("Power264", space=TPL_A)  # only an MNI152NLin6Asym release exists
    assert atlas.template == TPL_B and atlas.n_rois == 264
    assert atlas.image.is_relative_to(tmp_path / "home")


def test_seed_verifies_and_fills_the_cache(tmp_path, shared_data):
    runner = CliRunner()
    res = runner.invoke(atlases.atlas_cli, ["seed", "Gordon", str(shared_data / "atlases")])
    assert res.exit_code == 0, res.output
    assert len(res.output.splitlines()) == 4  # 3 images + 1 label table
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"no")
    res = runner.invoke(atlases.atlas_cli, ["seed", "Gordon333", str(bad)])
    assert res.exit_code == 1 and "sha256 mismatch for Gordon333" in res.output
    assert "gordon333NodeNames.txt" in res.output
    assert resolve_atlas("Gordon", space=TPL_A).template == TPL_A


def test_missing_release_message_names_every_way_to_get_it(tmp_path):
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("Glasser", space=TPL_B)
    msg = str(err.value)
    assert "\n" not in msg and "BIDSFM_OFFLINE is set" in msg
    assert "bidsfm-atlas fetch Glasser360" in msg and "bidsfm-atlas seed Glasser360" in msg
    assert "glasser360NodeNames.txt" in msg and "BIDSFM_ATLAS_PATH" in msg
    assert str(tmp_path / "home" / "atlases") in msg


# --------------------------------------------------------------------------------------------
# Combined atlases
# --------------------------------------------------------------------------------------------

def _nilearn_nearest(image: Path, affine: np.ndarray, shape) -> np.ndarray:
    from nilearn.image import resample_to_img

    target = nb.Nifti1Image(np.zeros(shape, dtype=np.float32), affine)
    out = resample_to_img(str(image), target, interpolation="nearest", force_resample=True,
                          copy_header=True)
    return np.asarray(out.dataobj).astype(np.int32)


def test_schaefer_plus_tian_from_the_package_alone(tmp_path):
    """TianS3+Schaefer400x17 (Brain-JEPA's 450 ROIs), offline, with an empty cache."""
    atlas = resolve_atlas("tian_s3+schaefer400", space=TPL_A)
    assert atlas.name == "TianS3Schaefer400x17" and atlas.n_rois == 450
    assert atlas.template == TPL_A and [p.name for p in atlas.parts] == ["TianS3",
                                                                          "Schaefer400x17"]
    assert atlas.roi_names[0] == "HIP-head-m-rh" and atlas.roi_names[50].startswith(
        "17Networks_LH_")
    assert atlas.labels["index"].tolist() == list(range(1, 451))
    tian, schaefer = atlas.parts
    data = load_label_array(atlas.image)
    t = load_label_array(tian.image)
    s = load_label_array(schaefer.image)
    expected = np.where(t > 0, t, np.where(s > 0, s + 50, 0))  # Tian keeps overlaps
    np.testing.assert_array_equal(data, expected)
    assert ((t > 0) & (s > 0)).any()  # the parts do overlap: the rule matters
    # the same file and sha256 on a second resolve (the runs' sidecars name it)
    again = resolve_atlas("TianS3+Schaefer400x17", space=TPL_A)
    assert again.image == atlas.image and again.sha256 == atlas.sha256
    assert atlases.store.sha256_file(atlas.image) == atlas.sha256
    # placed on a 4 mm run grid like any atlas
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = [-96, -132, -78]
    labels, info = atlases.resample_labels(atlas, affine, (49, 58, 49), target_space=TPL_A)
    assert (labels == _nilearn_nearest(atlas.image, affine, (49, 58, 49))).mean() >= 0.999
    assert info["Method"] == "nearest-neighbour-resampling" and "joined by bidsfm" in info[
        "AtlasRelease"]


def test_combined_file_already_in_the_cache_is_used(tmp_path, monkeypatch):
    """A joined atlas baked into a (read-only) cache, e.g. a container image, is read there."""
    from bidsfm.atlases import combine

    first = resolve_atlas("TianS1+Schaefer400x17", space=TPL_A)
    assert first.image.parent == tmp_path / "home" / "atlases" / "combined"
    monkeypatch.setattr(combine, "_folder", lambda: pytest.fail("no new file is needed"))
    assert resolve_atlas("TianS1+Schaefer400x17", space=TPL_A).image == first.image


def test_combined_parts_must_share_a_template():
    with pytest.raises(AtlasNotFoundError) as err:
        resolve_atlas("Gordon333+Schaefer400x17", space=TPL_B)
    msg = str(err.value)
    assert "no template holds every part" in msg and "Gordon333: not available offline" in msg
    with pytest.raises(AtlasNotFoundError, match="probabilistic"):
        resolve_atlas("DiFuMo64+CC200")


# --------------------------------------------------------------------------------------------
# BIDS-Atlas folders
# --------------------------------------------------------------------------------------------

def _write_bids_atlas(root: Path, label: str, template: str, n: int = 6, desc: str | None = None
                      ) -> Path:
    folder = root / f"atlas-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    d = f"_desc-{desc}" if desc else ""
    data = np.zeros((16, 16, 16), dtype=np.int16)
    data.reshape(-1)[:n * 10] = np.repeat(np.arange(1, n + 1), 10)
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    affine[:3, 3] = -24
    image = folder / f"atlas-{label}_space-{template}_res-02{d}_dseg.nii.gz"
    nb.Nifti1Image(data, affine).to_filename(image)
    (folder / f"atlas-{label}{d}_dseg.tsv").write_text(
        "index\tlabel\n" + "".join(f"{i}\t{label}_roi{i}\n" for i in range(1, n + 1)))
    return image


def test_bids_atlas_folder_on_the_search_path(tmp_path, monkeypatch):
    """XCP-D's AtlasPack names (4S456Parcels) and registry atlases from a BIDS-Atlas folder."""
    pack = tmp_path / "AtlasPack"
    image = _write_bids_atlas(pack, "4S456Parcels", TPL_B)
    gordon = _write_bids_atlas(pack, "Gordon", TPL_B, n=333)
    with pytest.raises(AtlasNotFoundError, match="recognised but not shipped"):
        resolve_atlas("4S456Parcels")
    monkeypatch.setenv("BIDSFM_ATLAS_PATH", str(pack))
    atlas = resolve_atlas("4S456Parcels", space=TPL_B)
    assert atlas.name == "4S456Parcels" and atlas.image == image and atlas.template == TPL_B
    assert atlas.roi_names[:2] == ["4S456Parcels_roi1", "4S456Parcels_roi2"]
    found = resolve_atlas("Gordon", space=TPL_B)
    assert found.name == "Gordon333" and found.image == gordon and found.n_rois == 333
    # a folder given directly, and NAME=DIR
    assert resolve_atlas(str(pack / "atlas-4S456Parcels")).image == image
    with pytest.raises(AtlasNotFoundError, match="several atlases"):
        resolve_atlas(str(pack))
    assert resolve_atlas(f"Gordon={pack}", space=TPL_B).image == gordon


def test_atlas_label_and_absolute_spec_for_combined_names(tmp_path):
    assert atlases.atlas_label("tian_s3+schaefer400") == "TianS3Schaefer400x17"
    assert atlases.absolute_atlas_spec("TianS3+Schaefer400x17", tmp_path) == (
        "TianS3+Schaefer400x17")
    assert registry.get_record("TianS3").n_rois == 50


def test_methods_text_describes_and_cites_each_atlas(tmp_path):
    """CITATION.md named TianS3+Schaefer400x17 'a subcortical atlas' citing Tian only."""
    from bidsfm.reports.citation import write_citation

    text = write_citation(tmp_path, {"atlases": ["CC200", "tian_s3+schaefer400", "Gordon",
                                                 "HarvardOxfordSub", "Power264"],
                                     "strategy": "simple"}).read_text(encoding="utf-8")
    assert ("the TianS3+Schaefer400x17 atlas, joining the Tian subcortex atlas (scale 3; Tian "
            "et al. 2020), then the Schaefer 2018 atlas (400 parcels, 17 networks; Schaefer et "
            "al. 2018)") in text
    for reference in ("Tian Y., Margulies D.S.", "Schaefer A. et al. (2018)", "Gordon E.M.",
                      "Desikan R.S.", "Makris N.", "Power J.D. et al. (2011)", "Craddock R.C."):
        assert reference in text
    assert "user-provided" not in text and "Ciric R. et al. (2022)" not in text
