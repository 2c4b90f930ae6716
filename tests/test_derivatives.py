"""Output names and readers (bidsfm/derivatives.py): the one module that owns the layout."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bidsfm.derivatives import (
    derivative_name,
    figure_path,
    group_table_name,
    match_model_output,
    model_output_paths,
    output_base,
    parse_name,
    read_coverage,
    read_relmat,
    run_output_paths,
    sibling_output,
    write_coverage,
    write_tsv_atomic,
)
from bidsfm.errors import InputDataError


@dataclass
class _Run:
    prefix: str = "sub-01_ses-1_task-rest_run-2"
    space: str = "MNI152NLin2009cAsym"
    entities: dict = field(default_factory=lambda: {"subject": "01", "session": "1"})


def test_names_follow_xcpd_with_the_atlas_entity(tmp_path):
    paths = run_output_paths(_Run(), "Schaefer400x17", tmp_path)
    stem = "sub-01_ses-1_task-rest_run-2_space-MNI152NLin2009cAsym_atlas-Schaefer400x17"
    folder = tmp_path / "sub-01" / "ses-1" / "func"
    # XCP-D 0.10+ names for the same files (docs/outputs.md)
    assert paths["timeseries"] == folder / f"{stem}_stat-mean_timeseries.tsv"
    assert paths["coverage"] == folder / f"{stem}_stat-coverage_bold.tsv"
    assert paths["fc"] == folder / f"{stem}_stat-pearsoncorrelation_relmat.tsv"
    assert paths["fcz"] == folder / f"{stem}_stat-pearsoncorrelation_desc-fisherz_relmat.tsv"
    assert paths["qc"] == folder / f"{stem}_qc.tsv"
    model = model_output_paths(_Run(), "bidsfmfc", "CC200", tmp_path)
    assert model["statmap"].name.endswith(
        "_atlas-CC200_stat-attention_desc-bidsfmfc_statmap.nii.gz")
    assert model["embedding"].name.endswith("_atlas-CC200_desc-bidsfmfc_embedding.tsv")
    fig = figure_path(_Run(), "bidsfmfc", "CC200", tmp_path)
    assert fig.parent == tmp_path / "sub-01" / "figures"
    assert fig.name.endswith("_atlas-CC200_desc-bidsfmfc_attention.png")


def test_entity_order_and_labels():
    assert derivative_name("sub-1_task-a", desc="x", stat="mean", atlas="A", space="S",
                           suffix="timeseries") == \
        "sub-1_task-a_space-S_atlas-A_stat-mean_desc-x_timeseries.tsv"
    for bad in ("CC200\n", "../x", "a_b", "a-b", ""):
        if bad:
            with pytest.raises(ValueError, match="not a BIDS label"):
                run_output_paths(_Run(), bad, "/tmp")
    with pytest.raises(ValueError, match="not a BIDS label"):
        model_output_paths(_Run(), "model\n", "CC200", "/tmp")


def test_parsing_names_back(tmp_path):
    paths = run_output_paths(_Run(), "CC200", tmp_path)
    model = model_output_paths(_Run(), "bidsfmfc", "CC200", tmp_path)
    base = "sub-01_ses-1_task-rest_run-2_space-MNI152NLin2009cAsym_atlas-CC200"
    for p in list(paths.values()) + list(model.values()):
        assert output_base(p.name) == base
    assert sibling_output(paths["fc"], "timeseries") == paths["timeseries"]
    assert sibling_output(model["attention"], "coverage") == paths["coverage"]
    assert match_model_output(model["predictions"].name) == ("bidsfmfc", "predictions", base)
    assert match_model_output(paths["fc"].name) is None
    ents, suffix = parse_name(paths["fcz"].name)
    assert (ents["atlas"], ents["stat"], ents["desc"], suffix) == (
        "CC200", "pearsoncorrelation", "fisherz", "relmat")
    # an old (bidsfm 0.1, seg-) name is not read as an output
    assert output_base("sub-01_task-rest_space-X_seg-CC200_qc.tsv") is None
    with pytest.raises(ValueError):
        sibling_output(tmp_path / "sub-01_task-rest_bold.nii.gz", "fc")
    assert group_table_name("qcfc", atlas="CC200") == "group_atlas-CC200_qcfc.tsv"
    assert group_table_name("runs_embedding", model="m") == "group_desc-m_runs_embedding.tsv"


def test_relmat_and_coverage_round_trip(tmp_path):
    names = ["A", "B", "C"]
    mat = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, np.nan], [np.nan, np.nan, np.nan]])
    path = tmp_path / "x_relmat.tsv"
    write_tsv_atomic(path, mat, names, index=names)
    assert path.read_text().splitlines()[0] == "Node\tA\tB\tC"
    got_names, got = read_relmat(path, names)
    assert got_names == names and np.array_equal(np.isnan(got), np.isnan(mat))
    assert np.allclose(np.nan_to_num(got), np.nan_to_num(mat))
    with pytest.raises(InputDataError, match="expected ROIs"):
        read_relmat(path, ["A", "C", "B"])
    pd.DataFrame(mat[:2], columns=names).to_csv(tmp_path / "bad.tsv", sep="\t")
    with pytest.raises(InputDataError, match="bad.tsv"):
        read_relmat(tmp_path / "bad.tsv")
    cov = tmp_path / "c_bold.tsv"
    write_coverage(cov, names, np.array([1.0, 0.25, 0.0]))
    assert cov.read_text().splitlines()[:2] == ["Node\tcoverage", "A\t1"]
    got_names, values = read_coverage(cov)
    assert got_names == names and np.allclose(values, [1.0, 0.25, 0.0])


@dataclass
class _Atlas:
    name: str
    image: object
    labels: pd.DataFrame
    template: str | None
    source: str
    kind: str = "dseg"


def _validate(root):
    import json
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("bids-validator-deno")
    proc = subprocess.run([str(exe), "--json", str(root)], capture_output=True, text=True,
                          timeout=300)
    issues = json.loads(proc.stdout)["issues"]["issues"]
    return [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]


def test_atlas_dataset_label_and_probabilistic(tmp_path):
    """A label atlas without a template is filed under the run's space; 4D maps are a probseg
    (names in the JSON, as BIDS has no probseg TSV); the dataset passes the validator."""
    import hashlib
    import json

    import nibabel as nib

    from bidsfm.derivatives import ATLAS_DATASET, write_atlas_dataset

    rng = np.random.default_rng(0)
    lab = rng.integers(0, 4, size=(6, 7, 5)).astype(np.int16)
    lab[0, 0, 0], lab[1, 0, 0], lab[2, 0, 0] = 1, 2, 3
    nib.save(nib.Nifti1Image(lab, np.eye(4)), tmp_path / "mine.nii")
    maps = rng.random((6, 7, 5, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(maps, np.eye(4)), tmp_path / "maps.nii.gz")
    names = pd.DataFrame({"index": [1, 2, 3], "name": ["a", "b", "c"]})
    out = tmp_path / "out"
    img = write_atlas_dataset(out, _Atlas("Mine", tmp_path / "mine.nii", names, None, "user"),
                              "MNI152NLin2009cAsym")
    assert img.name == "tpl-MNI152NLin2009cAsym_atlas-Mine_dseg.nii.gz"
    assert np.array_equal(np.asarray(nib.load(img).dataobj), lab)  # .nii gzipped, same data
    side = json.loads(img.with_name(img.name.replace(".nii.gz", ".json")).read_text())
    assert side["SHA256"] == hashlib.sha256((tmp_path / "mine.nii").read_bytes()).hexdigest()
    prob = write_atlas_dataset(out, _Atlas("Maps", tmp_path / "maps.nii.gz", names,
                                           "MNI152NLin6Asym", "user", kind="probseg"), "X")
    assert prob.name == "tpl-MNI152NLin6Asym_atlas-Maps_probseg.nii.gz"
    meta = json.loads(prob.with_name(prob.name.replace(".nii.gz", ".json")).read_text())
    assert meta["Labels"] == ["a", "b", "c"]
    assert not list(prob.parent.glob("*probseg.tsv"))
    assert _validate(out / ATLAS_DATASET) == []
    before = {p: p.stat().st_mtime_ns for p in (out / ATLAS_DATASET).rglob("*") if p.is_file()}
    write_atlas_dataset(out, _Atlas("Maps", tmp_path / "maps.nii.gz", names,
                                    "MNI152NLin6Asym", "user", kind="probseg"), "X")
    after = {p: p.stat().st_mtime_ns for p in (out / ATLAS_DATASET).rglob("*") if p.is_file()}
    assert before == after  # written once


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("with_index", [False, True])
def test_tsv_text_equals_pandas(tmp_path, dtype, with_index):
    """write_tsv_atomic formats rows itself (5-10x faster than DataFrame.to_csv); the bytes are
    pandas' (``%.8g``, ``n/a``), for NaN, -0, infinities, tiny and huge values, ROI names with
    spaces and punctuation; names pandas would quote go through pandas."""
    from bidsfm.derivatives import tsv_text, write_tsv_atomic

    rng = np.random.default_rng(3)
    data = rng.standard_normal((7, 5)) * 10.0 ** rng.integers(-12, 12, (7, 5))
    data[0, :] = [np.nan, -0.0, np.inf, -np.inf, 0.0]
    data[1, :] = [1e-300, 1e300, 123456789.0, -1 / 3, 2 / 3]
    with np.errstate(over="ignore"):  # 1e300 is inf in float32
        data = data.astype(dtype)
    names = ["CC200_001", "Left Hippocampus", "7Networks_LH_Vis_1", "a,b", "R-Thal (ant.)"]
    rows = [f"row {i}" for i in range(7)] if with_index else None

    def by_pandas(columns, index, values=data):
        frame = pd.DataFrame(values, columns=list(columns))
        if index is not None:
            frame.insert(0, "Node", list(index))
        return frame.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.8g")

    assert tsv_text(data, names, index=rows) == by_pandas(names, rows)
    assert tsv_text(data[:0], names, index=[] if with_index else None) == by_pandas(
        names, [] if with_index else None, data[:0])
    # names the CSV writer would quote: pandas writes the file
    quoted = ["tab\there", 'quote"d', "", "new\nline", "ok"]
    assert tsv_text(data, quoted) is None
    path = write_tsv_atomic(tmp_path / "q.tsv", data, quoted, index=rows)
    assert path.read_text() == by_pandas(quoted, rows)
    path = write_tsv_atomic(tmp_path / "a.tsv", data, names, index=rows)
    assert path.read_text() == by_pandas(names, rows)
    assert tsv_text(np.arange(10).reshape(2, 5), names) is None  # integers: pandas


def test_resolve_bids_uri(tmp_path):
    """The inverse of bids_uri through DatasetLinks: absolute links as bidsfm writes them,
    relative ones from the dataset root; other URIs are refused."""
    from bidsfm.derivatives import bids_uri, resolve_bids_uri

    rel = "sub-01/func/sub-01_task-rest_desc-brain_mask.nii.gz"
    links = {"preprocessed": "/data/fmriprep", "raw": "../raw"}
    assert resolve_bids_uri(bids_uri("preprocessed", rel), links, tmp_path) == Path(
        "/data/fmriprep") / rel
    assert resolve_bids_uri(bids_uri("raw", rel), links, tmp_path) == tmp_path / "../raw" / rel
    for bad in ("sub-01/x.nii.gz", bids_uri("other", rel), "file:///data/x"):
        with pytest.raises(ValueError, match="cannot resolve"):
            resolve_bids_uri(bad, links, tmp_path)
