"""Participant level with the bundled model: embeddings, predictions, attention maps."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from bidsfm.models.registry import DEFAULT_MODEL, list_models

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in list_models(),
                                reason="bundled model not present")


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, tiny_ds):
    out = tmp_path_factory.mktemp("enc") / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01", "02",
                       "-w", out.parent / "work", "--min-time", "0"])
    return {"code": code, "out": out}


def _files(out, pattern):
    return sorted(out.rglob(pattern))


def test_model_outputs_for_every_run(encoded, tiny_ds):
    assert encoded["code"] == 0
    out = encoded["out"]
    n_runs = sum(r["subject"] in ("01", "02") for r in tiny_ds["runs"])
    for suffix in ("embedding.tsv", "embedding.json", "predictions.tsv", "attention.tsv",
                   "statmap.nii.gz", "statmap.json"):
        assert len(_files(out, f"*_desc-{DEFAULT_MODEL}*_{suffix}")) == n_runs, suffix
    name = _files(out, "*_attention.tsv")[0].name
    assert "_seg-CC200_desc-bidsfmfc_attention.tsv" in name
    assert "_desc-bidsfmfc_stat-attention_statmap.nii.gz" in _files(out, "*statmap.nii.gz")[0].name


def test_prediction_and_embedding_contents(encoded):
    out = encoded["out"]
    pred = pd.read_csv(_files(out, "*_predictions.tsv")[0], sep="\t")
    assert list(pred["head"]) == ["diagnosis", "sex", "age"]
    probs = pred.set_index("head")["value"]
    assert 0 < probs["diagnosis"] < 1 and 0 < probs["sex"] < 1
    assert 0 < probs["age"] < 100
    emb = pd.read_csv(_files(out, "*_embedding.tsv")[0], sep="\t")
    assert emb.shape == (1, 1600) and emb.columns[0] == "CC200_001_0"
    meta = json.loads(_files(out, "*_embedding.json")[0].read_text())
    assert meta["Model"]["name"] == DEFAULT_MODEL and meta["Sources"][0].startswith("bids::")


def test_low_coverage_rois_have_no_attention(encoded):
    out = encoded["out"]
    run = next(p for p in _files(out, "sub-02_*_attention.tsv"))
    att = pd.read_csv(run, sep="\t", index_col=0, na_values="n/a")
    cov = pd.read_csv(str(run).replace("_desc-bidsfmfc_attention.tsv", "_stat-coverage_bold.tsv"),
                      sep="\t").iloc[0]
    low = cov.index[cov < 0.5]
    assert len(low) > 0
    assert att[low].isna().all().all()
    assert att.drop(columns=low).notna().all().all()
    stat = nib.load(str(run).replace("_attention.tsv", "_stat-attention_statmap.nii.gz"))
    assert stat.shape[3] == 3 and np.isfinite(stat.get_fdata()).all()


def test_rerun_reuses_model_outputs(encoded, tiny_ds, capsys):
    out = encoded["out"]
    emb = _files(out, "*_embedding.tsv")[0]
    before = emb.stat().st_mtime_ns
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01", "02",
                       "-w", out.parent / "work2", "--min-time", "0"], capsys)
    assert code == 0 and emb.stat().st_mtime_ns == before


def test_model_none(tmp_path, tiny_ds, capsys):
    out = tmp_path / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03",
                       "--model", "none", "-w", tmp_path / "w", "--min-time", "0"], capsys)
    assert code == 0
    assert not _files(out, "*_embedding.tsv") and _files(out, "*_timeseries.tsv")


def test_unknown_model_is_usage_error(tmp_path, tiny_ds, capsys):
    code, log = run_cli([tiny_ds["root"], tmp_path / "out", "participant", "--participant-label",
                         "03", "--model", "nosuchmodel", "-w", tmp_path / "w"], capsys)
    assert code == 2 and "unknown model" in log
