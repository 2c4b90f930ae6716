"""An output folder that already holds a dataset: another tool's, another bidsfm's, or junk."""

from __future__ import annotations

import json

import pytest
from faultkit import assert_clean, assert_run_ok, error_lines, make_case

import bidsfm


@pytest.mark.parametrize("content,words", [
    (json.dumps({"Name": "x", "DatasetType": "derivative",
                 "GeneratedBy": [{"Name": "XCP-D", "Version": "0.10"}]}), "'XCP-D'"),
    (json.dumps({"Name": "raw", "BIDSVersion": "1.9.0"}), "bidsfm did not generate"),
    (json.dumps({"Name": "x", "GeneratedBy": "bidsfm"}), "bidsfm did not generate"),
    (json.dumps(["bidsfm"]), "not a JSON object"),
    ('{"Name": "half-written', "not a JSON object"),
])
def test_foreign_output_dataset_refused(content, words, tmp_path, tiny_ds, capsys):
    """Another tool's (or an unreadable) description: exit 2, one line, nothing written there
    (not even a lock file) and no work done."""
    case = make_case(tiny_ds, tmp_path)
    case.out.mkdir()
    desc = case.out / "dataset_description.json"
    desc.write_text(content)
    code, log = case.cli(capsys=capsys)
    assert code == 2
    lines = error_lines(log)
    assert len(lines) == 1 and "dataset_description.json" in lines[0] and words in lines[0]
    assert "empty output folder" in lines[0]
    assert desc.read_text() == content
    assert [p.name for p in case.out.iterdir()] == ["dataset_description.json"]
    assert not case.work.exists()


def test_older_bidsfm_output_accepted_and_updated(tmp_path, tiny_ds, capsys):
    """A description written by another bidsfm version is updated: version refreshed, name and
    other links kept, the input's GeneratedBy after bidsfm."""
    case = make_case(tiny_ds, tmp_path)
    case.out.mkdir()
    desc = case.out / "dataset_description.json"
    desc.write_text(json.dumps({
        "Name": "my study", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "bidsfm", "Version": "0.0.1"}],
        "DatasetLinks": {"atlases": "/data/atlases"}}))
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    new = json.loads(desc.read_text())
    assert {k: new["GeneratedBy"][0][k] for k in ("Name", "Version")} == {
        "Name": "bidsfm", "Version": bidsfm.__version__}
    assert new["GeneratedBy"][0]["CodeURL"]
    assert [g["Name"] for g in new["GeneratedBy"]][1:] == ["fMRIPrep"]
    assert new["Name"] == "my study"
    assert new["DatasetLinks"]["atlases"] == "/data/atlases"
    assert new["DatasetLinks"]["preprocessed"] == str(case.ds)
    for run in range(2):
        assert_run_ok(case, run)
    assert_clean(case.out)
