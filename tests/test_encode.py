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
    assert "_atlas-CC200_desc-bidsfmfc_attention.tsv" in name
    assert "_stat-attention_desc-bidsfmfc_statmap.nii.gz" in _files(out, "*statmap.nii.gz")[0].name


def test_prediction_and_embedding_contents(encoded):
    out = encoded["out"]
    pred = pd.read_csv(_files(out, "*_predictions.tsv")[0], sep="\t", na_values="n/a")
    assert list(pred.columns) == ["head", "value", "probability", "probability_of"]
    pred = pred.set_index("head")
    assert list(pred.index) == ["diagnosis", "sex", "age"]
    assert 0 < pred.loc["diagnosis", "probability"] < 1 and 0 < pred.loc["sex", "probability"] < 1
    assert pred.loc["diagnosis", "value"] in ("ASD", "TC")
    assert pred.loc["diagnosis", "probability_of"] == "ASD"
    assert 0 < float(pred.loc["age", "value"]) < 100 and np.isnan(pred.loc["age", "probability"])
    emb = pd.read_csv(_files(out, "*_embedding.tsv")[0], sep="\t")
    # bidsfmfc 2.x: the refined tangent connectivity, upper triangle with the diagonal
    assert emb.shape == (1, 200 * 201 // 2)
    assert list(emb.columns[:2]) == ["CC200_001--CC200_001", "CC200_001--CC200_002"]
    meta = json.loads(_files(out, "*_embedding.json")[0].read_text())
    assert meta["Model"]["name"] == DEFAULT_MODEL and meta["Sources"][0].startswith("bids::")


def test_low_coverage_rois_have_no_attention(encoded):
    out = encoded["out"]
    run = next(p for p in _files(out, "sub-02_*_attention.tsv"))
    att = pd.read_csv(run, sep="\t", index_col=0, na_values="n/a").T  # rows: ROIs -> heads
    assert list(att.index) == ["diagnosis", "sex", "age"]
    cov = pd.read_csv(str(run).replace("_desc-bidsfmfc_attention.tsv", "_stat-coverage_bold.tsv"),
                      sep="\t", index_col="Node")["coverage"]
    low = cov.index[cov < 0.5]
    assert len(low) > 0
    assert att[low].isna().all().all()
    assert att.drop(columns=low).notna().all().all()
    stat = nib.load(str(run).replace("_desc-bidsfmfc_attention.tsv",
                                    "_stat-attention_desc-bidsfmfc_statmap.nii.gz"))
    assert stat.shape[3] == 3 and np.isfinite(stat.get_fdata()).all()


def test_qc_and_figures(encoded):
    out = encoded["out"]
    qc = pd.read_csv(_files(out, "sub-01_*_qc.tsv")[0], sep="\t", keep_default_na=False)
    assert qc.loc[0, "model"] == DEFAULT_MODEL and qc.loc[0, "model_status"] == "ok"
    figs = _files(out / "sub-01" / "figures", "*_desc-bidsfmfc_attention.png")
    assert len(figs) == 3 and figs[0].stat().st_size > 10_000


def test_inference_is_deterministic(encoded, tiny_ds, tmp_path, capsys):
    """A second, independent run on CPU gives the same embeddings, predictions and maps."""
    out2 = tmp_path / "out2"
    code, _ = run_cli([tiny_ds["root"], out2, "participant", "--participant-label", "01",
                       "-w", tmp_path / "w", "--min-time", "0", "--batch-size", "1"], capsys)
    assert code == 0
    for suffix in ("_embedding.tsv", "_predictions.tsv", "_attention.tsv"):
        for a in _files(encoded["out"] / "sub-01", f"*{suffix}"):
            b = out2 / a.relative_to(encoded["out"])
            assert a.read_bytes() == b.read_bytes(), a.name


def test_short_run_skipped_with_reason_in_qc(tmp_path, tiny_ds, capsys):
    """A run below the model's minimum gets its time series but no embedding, and says why."""
    out = tmp_path / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03",
                       "--denoise-strategy", "none", "--dummy-scans", "60",
                       "-w", tmp_path / "w", "--min-time", "0"], capsys)
    assert code == 0
    qcs = [pd.read_csv(p, sep="\t", keep_default_na=False) for p in _files(out, "*_qc.tsv")]
    short = [q for q in qcs if q.loc[0, "n_retained"] < 50]
    assert short, "expected a short run"
    for q in short:
        assert q.loc[0, "model_status"] == "skipped"
        assert "below the model's minimum" in q.loc[0, "model_reason"]


def test_python_api(tiny_ds, encoded):
    import bidsfm.models

    assert DEFAULT_MODEL in bidsfm.models.available()
    model = bidsfm.models.load(DEFAULT_MODEL, device="cpu")
    ts_path = _files(encoded["out"] / "sub-01", "*_stat-mean_timeseries.tsv")[0]
    ts = pd.read_csv(ts_path, sep="\t", na_values="n/a").to_numpy()
    emb = model.embed([ts, ts], [2.0, 2.0])
    assert emb.shape == (2, 200 * 201 // 2) and np.allclose(emb[0], emb[1])
    saved = pd.read_csv(str(ts_path).replace("_stat-mean_timeseries.tsv",
                                             "_desc-bidsfmfc_embedding.tsv"), sep="\t")
    assert np.allclose(emb[0], saved.to_numpy()[0], atol=1e-5)
    table = model.predict([ts], [2.0])
    assert list(table.columns) == ["diagnosis_P(ASD)", "sex_P(F)", "age"]
    att = model.attention([ts], [2.0], "diagnosis", steps=8)
    assert att.shape == (1, 200)


def test_runs_of_all_participants_encoded_together(encoded, tiny_ds, tmp_path, capsys,
                                                    monkeypatch, caplog):
    """On a GPU (forced here on the CPU) one model node encodes the runs of every participant
    of the job: the outputs are those of one node per participant."""
    import logging

    import bidsfm.models.device as device_mod

    monkeypatch.setattr(device_mod, "uses_gpu", lambda device: True)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="bidsfm"):
        code, text = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                              "02", "-w", tmp_path / "work", "--min-time", "0"], capsys)
    assert code == 0, text
    assert "2 participant(s)" in text and "run(s) together" in text, text
    nodes = {p.name for p in (tmp_path / "work" / "bidsfm_wf").iterdir()}
    assert "encode_model" in nodes  # one node at the top of the workflow...
    assert not list((tmp_path / "work" / "bidsfm_wf").glob("sub_*_wf/encode_model"))
    ref = encoded["out"]
    for pattern in ("*_embedding.tsv", "*_predictions.tsv", "*_attention.tsv"):
        got = sorted(out.rglob(pattern))
        assert len(got) == len(_files(ref, pattern)) > 2
        for path in got:  # ...whose outputs equal those of one node per participant, to the
            # float32 round-off of a larger batch (5 runs in one forward pass instead of 3 + 2)
            a = pd.read_csv(path, sep="\t", na_values="n/a")
            b = pd.read_csv(ref / path.relative_to(out), sep="\t", na_values="n/a")
            assert list(a.columns) == list(b.columns)
            num = a.select_dtypes("number").columns
            pd.testing.assert_frame_equal(a.drop(columns=num), b.drop(columns=num))
            np.testing.assert_allclose(a[num].to_numpy(float), b[num].to_numpy(float),
                                       rtol=1e-4, atol=1e-6, err_msg=path.name)


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


def test_run_without_usable_signal_is_not_encoded(tmp_path, tiny_ds, capsys):
    """Constant BOLD: no ROI carries signal; the model refuses it and the QC says why."""
    from conftest import clone_dataset

    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", subjects=["01"])
    bold = sorted(ds.rglob("sub-01*_desc-preproc_bold.nii.gz"))[0]
    img = nib.load(bold)
    data = np.full(img.shape, 1000.0, dtype=np.float32)
    bold.unlink()  # a symlink into the shared fixture: replace it, never write through it
    nib.save(nib.Nifti1Image(data, img.affine, img.header), bold)
    out = tmp_path / "out"
    run_cli([ds, out, "participant", "--participant-label", "01", "-w", tmp_path / "w",
             "--min-time", "0"], capsys)
    prefix = bold.name.split("_space-")[0]
    qc = [pd.read_csv(p, sep="\t", keep_default_na=False) for p in _files(out, f"{prefix}*_qc.tsv")]
    assert qc, "the constant run must still get a QC table"
    q = qc[0].loc[0]
    assert q["model_status"] != "ok"
    assert not _files(out, f"{prefix}*_desc-{DEFAULT_MODEL}_embedding.tsv")
    assert not _files(out, f"{prefix}*_desc-{DEFAULT_MODEL}_predictions.tsv")
    others = [p for p in _files(out, f"*_desc-{DEFAULT_MODEL}_embedding.tsv")
              if not p.name.startswith(prefix)]
    assert others, "the subject's other runs are still encoded"


def test_usable_roi_fraction():
    from bidsfm.encode import usable_roi_fraction

    fc = np.corrcoef(np.random.default_rng(0).normal(size=(50, 10)).T)
    assert usable_roi_fraction(fc) == 1.0
    fc[:4, :] = fc[:, :4] = np.nan
    assert usable_roi_fraction(fc) == 0.6
    assert usable_roi_fraction(np.full((10, 10), np.nan)) == 0.0


def test_no_model_outputs_of_runs_now_skipped(tmp_path, tiny_ds, capsys):
    """Issue 17: after an option change makes a run too short for the model (or for
    --min-time), its model outputs and figures of the earlier job were left beside a QC table
    saying there are none."""
    out = tmp_path / "out"
    args = [tiny_ds["root"], out, "participant", "--participant-label", "03",
            "--denoise-strategy", "none", "-w", tmp_path / "w"]
    code, _ = run_cli(args + ["--min-time", "0"], capsys)
    assert code == 0
    n_runs = len(_files(out, "*_qc.tsv"))
    assert len(_files(out, "*_desc-bidsfmfc_embedding.tsv")) == n_runs
    assert len(_files(out, "*_desc-bidsfmfc_attention.png")) == n_runs

    code, _ = run_cli(args + ["--min-time", "0", "--dummy-scans", "60"], capsys)  # model-short
    assert code == 0
    statuses = []
    for qc_path in _files(out, "*_qc.tsv"):
        q = pd.read_csv(qc_path, sep="\t", keep_default_na=False)
        base = qc_path.name[: -len("_qc.tsv")]
        left = [p.name for p in out.rglob(base + "_*") if "bidsfmfc" in p.name]
        statuses.append(q.loc[0, "model_status"])
        if q.loc[0, "model_status"] == "skipped":
            assert left == [], left
        else:  # embedding (+ json), predictions, attention, statmap (+ json)
            assert len(left) == 6, left
    assert "skipped" in statuses

    code, _ = run_cli(args + ["--min-time", "10000"], capsys)  # every run skipped
    assert code == 0
    assert not [p for p in out.rglob("*bidsfmfc*") if p.is_file()]
    assert not list(out.rglob("*_desc-placement_bold.png"))
    assert len(_files(out, "*_qc.tsv")) == n_runs


def test_runs_encoded_in_chunks(encoded, tiny_ds, tmp_path, capsys, monkeypatch):
    """A cohort encoded together (on a GPU) is encoded and written RUNS_PER_CHUNK runs at a
    time; the outputs are those of one chunk (to float32 round-off of the batch size)."""
    import bidsfm.encode as encode
    import bidsfm.models.device as device_mod

    monkeypatch.setattr(device_mod, "uses_gpu", lambda device: True)
    monkeypatch.setattr(encode, "RUNS_PER_CHUNK", 2)
    chunks: list[int] = []
    original = encode._encode_chunk

    def counting(todo, *args):
        chunks.append(len(todo))
        return original(todo, *args)

    monkeypatch.setattr(encode, "_encode_chunk", counting)
    out = tmp_path / "out"
    code, text = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                          "02", "-w", tmp_path / "work", "--min-time", "0"], capsys)
    assert code == 0, text
    n_runs = len(_files(encoded["out"], "*_embedding.tsv"))
    assert sum(chunks) == n_runs and max(chunks) == 2 and len(chunks) == (n_runs + 1) // 2
    for path in sorted(out.rglob("*_predictions.tsv")):
        a = pd.read_csv(path, sep="\t", na_values="n/a")
        b = pd.read_csv(encoded["out"] / path.relative_to(out), sep="\t", na_values="n/a")
        np.testing.assert_allclose(a["probability"].to_numpy(float),
                                   b["probability"].to_numpy(float), rtol=1e-4)
    qc = pd.concat([pd.read_csv(p, sep="\t") for p in out.rglob("*_atlas-CC200_qc.tsv")])
    assert set(qc["model_status"]) == {"ok"}
