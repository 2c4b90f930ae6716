"""The group level end to end on a small demo dataset, then ``--heads`` at the participant level."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

GROUP_FILES = ("group_runs_qc.tsv", "group_desc-bidsfmfc_runs_embedding.tsv",
               "group_desc-bidsfmfc_runs_predictions.tsv",
               "group_desc-bidsfmfc_subjects_embedding.tsv", "group_exclusions.tsv",
               "group_atlas-CC200_qcfc.tsv", "group_atlas-CC200_qcfc.json", "group.json")
TARGET_FILES = ("predictions.tsv", "metrics.tsv", "metrics.json", "attention.tsv",
                "head/weights.safetensors", "head/card.json")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, session_env, shared_data):
    """5 demo participants (3 ASD, 2 TC; 3 sites), run-1 BOLD runs only, participant level."""
    from bidsfm.demo import make_fmriprep_dataset

    base = tmp_path_factory.mktemp("group")
    ds = make_fmriprep_dataset(base / "fmriprep", size="tiny", n_subjects=5, seed=0,
                               shared_data=shared_data)
    filt = base / "filter.json"
    filt.write_text(json.dumps({"bold": {"run": 1}}))
    out = base / "out"
    code, _ = run_cli([ds["root"], out, "participant", "-w", base / "work", "--min-time", "0",
                       "--bids-filter-file", filt])
    assert code == 0
    table = pd.read_csv(Path(ds["root"]) / "participants.tsv", sep="\t")
    extra = pd.DataFrame([{"participant_id": "sub-99", "site": "siteA", "diagnosis": "TC",
                           "age": 30.0, "sex": "M"}])
    ptsv = base / "participants.tsv"
    pd.concat([table, extra]).to_csv(ptsv, sep="\t", index=False)
    args = [ds["root"], out, "group", "--participants-tsv", ptsv, "--target", "diagnosis",
            "--target", "age", "--group-column", "site", "--reference", "diagnosis=ASD",
            "--attention-participants", "1", "--n-bootstrap", "100"]
    code, _ = run_cli(args)
    return {"ds": ds, "out": out, "base": base, "code": code, "args": args, "filter": filt,
            "table": table}


def test_group_tables(cohort):
    assert cohort["code"] == 0
    g = cohort["out"] / "group"
    for name in GROUP_FILES:
        assert (g / name).is_file(), name
    for target in ("diagnosis", "age"):
        for name in TARGET_FILES:
            assert (g / f"target-{target}" / name).is_file(), (target, name)
    assert (g / "target-diagnosis" / "figures" / "roc.png").is_file()
    assert (g / "target-age" / "figures" / "scatter.png").is_file()
    qc = pd.read_csv(g / "group_runs_qc.tsv", sep="\t", na_values="n/a")
    assert list(qc.columns[:4]) == ["participant_id", "session_id", "task", "run"]
    assert len(qc) == 7 and set(qc["participant_id"]) == {f"sub-0{i}" for i in range(1, 6)}
    emb = pd.read_csv(g / "group_desc-bidsfmfc_runs_embedding.tsv", sep="\t", na_values="n/a")
    subj = pd.read_csv(g / "group_desc-bidsfmfc_subjects_embedding.tsv", sep="\t")
    cols = [c for c in emb.columns if c.startswith("CC200_")]
    assert len(cols) == 200 * 201 // 2
    s1 = emb[emb["participant_id"] == "sub-01"]
    assert len(s1) == 2 and subj.set_index("participant_id").loc["sub-01", "n_runs"] == 2
    np.testing.assert_allclose(subj.set_index("participant_id").loc["sub-01", cols],
                               s1[cols].mean(), rtol=1e-4, atol=1e-5)
    # the run embedding equals the participant-level TSV
    run_file = next((cohort["out"] / "sub-02" / "func").glob("*_desc-bidsfmfc_embedding.tsv"))
    direct = pd.read_csv(run_file, sep="\t").iloc[0]
    np.testing.assert_allclose(emb[emb["participant_id"] == "sub-02"][cols].iloc[0], direct,
                               rtol=1e-5, atol=1e-6)
    preds = pd.read_csv(g / "group_desc-bidsfmfc_runs_predictions.tsv", sep="\t")
    assert {"head", "value", "probability", "probability_of"} <= set(preds.columns)
    excl = pd.read_csv(g / "group_exclusions.tsv", sep="\t")
    assert list(excl.columns[-4:]) == ["atlas", "stage", "status", "reason"]
    missing = excl[excl["participant_id"] == "sub-99"]
    assert list(missing["stage"]) == ["participant"] and list(missing["status"]) == ["missing"]
    meta = json.loads((g / "group.json").read_text())
    assert meta["n_participants"] == 5 and meta["model"]["name"] == "bidsfmfc"
    assert [t["column"] for t in meta["targets"]] == ["diagnosis", "age"]


def test_outputs_pass_the_bids_validator(cohort):
    """bids-validator-deno (the official validator, a test dependency) reports no error on a
    participant + group output: what no BIDS spec covers is in bidsfm's .bidsignore, and the
    atlases used form a valid BIDS-Atlas dataset in sourcedata/atlases."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("bids-validator-deno")
    assert exe.is_file(), "bids-validator-deno is a test dependency (pip install -e '.[test]')"
    out = cohort["out"]
    assert (out / "group" / "group.json").is_file() and (out / "group.html").is_file()
    for root in (out, out / "sourcedata" / "atlases"):
        proc = subprocess.run([str(exe), "--json", str(root)], capture_output=True, text=True,
                              timeout=300)
        report = json.loads(proc.stdout)
        errors = [(i["code"], i.get("location")) for i in report["issues"]["issues"]
                  if i["severity"] == "error"]
        assert errors == [], (root, errors[:10])
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "bidsfm" and desc["GeneratedBy"][0]["CodeURL"]
    assert desc["GeneratedBy"][1]["Name"] == "fMRIPrep"  # the input's provenance follows
    assert desc["SourceDatasets"][0]["URL"] == "bids:preprocessed:"
    assert (out / "README.md").is_file()
    ignored = (out / ".bidsignore").read_text().split()
    assert "*_relmat.tsv" in ignored and "group" in ignored


def test_atlas_dataset_holds_the_atlas_used(cohort):
    import hashlib

    import nibabel as nib

    root = cohort["out"] / "sourcedata" / "atlases"
    image = root / "tpl-MNI152NLin6Asym" / "anat" / "tpl-MNI152NLin6Asym_atlas-CC200_dseg.nii.gz"
    side = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    labels = pd.read_csv(image.with_name(image.name.replace(".nii.gz", ".tsv")), sep="\t")
    ts_meta = json.loads(next(cohort["out"].rglob(
        "*_atlas-CC200_stat-mean_timeseries.json")).read_text())
    # the sidecar's sha256 is the one every run records for the atlas it used
    assert side["SHA256"] == ts_meta["Atlas"]["SHA256"]
    assert len(labels) == 200 and list(labels.columns) == ["index", "name"]
    assert labels["name"].iloc[0] == "CC200_001"
    data = np.asarray(nib.load(image).dataobj)
    assert sorted(set(np.unique(data)) - {0}) == list(labels["index"])
    # the stored file is the file the runs used, byte for byte
    assert hashlib.sha256(image.read_bytes()).hexdigest() == side["SHA256"]
    assert json.loads((root / "atlas-CC200_description.json").read_text())["Name"] == "CC200"


def test_target_outputs(cohort):
    from bidsfm.models.registry import load_model

    t = cohort["out"] / "group" / "target-diagnosis"
    m = json.loads((t / "metrics.json").read_text())
    assert m["task_type"] == "binary" and m["classes"] == ["TC", "ASD"]
    assert m["n"] == 5 and m["n_per_class"] == {"TC": 2, "ASD": 3}
    assert m["cv"]["scheme"].startswith("leave-one-group-out (3 groups)")
    assert "5 labelled participants" in m["uncertainty"]
    assert set(m["metrics"]) == {"auc", "balanced_accuracy", "f1"}
    preds = pd.read_csv(t / "predictions.tsv", sep="\t")
    assert list(preds.columns) == ["participant_id", "site", "true", "predicted", "probability",
                                   "fold"]
    # leave-one-group-out: participants of one site share a fold
    assert preds.groupby("site")["fold"].nunique().max() == 1
    metrics = pd.read_csv(t / "metrics.tsv", sep="\t")
    assert list(metrics.columns) == ["metric", "value", "ci_low", "ci_high"]
    card = json.loads((t / "head" / "card.json").read_text())
    model = load_model("bidsfmfc")
    assert card["model"]["sha256"] == model.card["sha256"]
    assert card["labels"] == ["TC", "ASD"] and card["n"] == 5
    att = pd.read_csv(t / "attention.tsv", sep="\t", na_values="n/a")
    assert list(att["name"]) == model.roi_names and att["attention"].notna().sum() > 100
    age = json.loads((cohort["out"] / "group" / "target-age" / "metrics.json").read_text())
    assert age["task_type"] == "continuous" and {"mae", "r", "r2"} <= set(age["metrics"])
    dev = pd.read_csv(cohort["out"] / "group" / "normative" / "deviation.tsv", sep="\t")
    assert list(dev.columns) == ["participant_id", "is_reference", "score", "percentile", "p"]
    assert dev["is_reference"].sum() == 3
    roi = pd.read_csv(cohort["out"] / "group" / "normative" / "roi_contributions.tsv", sep="\t")
    assert roi.shape == (5, 201)
    np.testing.assert_allclose(roi.iloc[:, 1:].sum(axis=1), dev["score"], rtol=1e-4)
    qcfc = json.loads((cohort["out"] / "group" / "group_atlas-CC200_qcfc.json").read_text())
    assert qcfc["n_participants"] == 5 and 0 <= qcfc["fraction_p05"] <= 1


def test_group_report_written(cohort):
    import bidsfm.reports as reports

    if not hasattr(reports, "write_group_report"):
        pytest.skip("bidsfm.reports has no write_group_report yet")
    assert (cohort["out"] / "group.html").is_file()


def test_unknown_target_column_is_usage_error(cohort, capsys):
    g = cohort["out"] / "group"
    before = (g / "group_runs_qc.tsv").stat().st_mtime_ns
    args = [a if a != "age" else "agee" for a in cohort["args"]]
    capsys.readouterr()
    code, text = run_cli(args, capsys)
    assert code == 2
    assert "--target agee: no such column" in text and "participants.tsv" in text
    assert (g / "group_runs_qc.tsv").stat().st_mtime_ns == before  # nothing rewritten


def test_rerun_is_idempotent(cohort):
    g = cohort["out"] / "group"
    names = [n for n in GROUP_FILES if n != "group.json"] + [
        "target-diagnosis/predictions.tsv", "target-diagnosis/metrics.tsv",
        "normative/deviation.tsv", "target-diagnosis/head/weights.safetensors"]
    before = {n: (g / n).read_bytes() for n in names}
    code, _ = run_cli(cohort["args"])
    assert code == 0
    for n in names:
        assert (g / n).read_bytes() == before[n], n
    assert not [p for p in g.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("method", ["centre", "combat"])
def test_group_harmonize_site(cohort, tmp_path, capsys, caplog, method):
    """--harmonize site on a copy of the outputs: heads and normative scores use harmonised
    embeddings; group.json, metrics.json, the head card and group.html record it."""
    out = tmp_path / "out"
    shutil.copytree(cohort["out"], out)
    ptsv = cohort["args"][cohort["args"].index("--participants-tsv") + 1]
    args = [cohort["ds"]["root"], out, "group", "--participants-tsv", ptsv, "--target",
            "diagnosis", "--group-column", "site", "--reference", "diagnosis=ASD",
            "--n-bootstrap", "100", "--harmonize", "site", "--harmonize-method", method,
            "--attention-participants", "0", "--no-qcfc"]
    code, _ = run_cli(args)
    assert code == 0
    g = out / "group"
    meta = json.loads((g / "group.json").read_text())
    harm = meta["harmonization"]
    assert harm["column"] == "site" and harm["method"] == method
    assert meta["options"]["harmonize"] == "site"
    assert meta["options"]["harmonize_method"] == method
    # sites A and B have 2 participants each; site C's single participant is left as it is
    assert harm["n_sites"] == 2 and harm["n_adjusted"] == 4
    assert harm["unadjusted_participants"] == ["sub-03"] and harm["unadjusted_sites"] == ["siteC"]
    assert "no target labels" in harm["fitted_on"]
    metrics = json.loads((g / "target-diagnosis" / "metrics.json").read_text())
    assert metrics["harmonization"]["method"] == method
    card = json.loads((g / "target-diagnosis" / "head" / "card.json").read_text())
    assert card["harmonization"]["column"] == "site"
    norm = json.loads((g / "normative" / "method.json").read_text())
    assert norm["harmonization"]["method"] == method
    # the heads saw other features than without --harmonize
    raw = pd.read_csv(cohort["out"] / "group" / "target-diagnosis" / "predictions.tsv", sep="\t")
    new = pd.read_csv(g / "target-diagnosis" / "predictions.tsv", sep="\t")
    assert not np.allclose(raw["probability"], new["probability"])
    # the raw subject table is unchanged
    name = "group_desc-bidsfmfc_subjects_embedding.tsv"
    assert (g / name).read_bytes() == (cohort["out"] / "group" / name).read_bytes()
    html = (out / "group.html").read_text()
    assert "Site harmonisation" in html and method in html
    cit = (out / "logs" / "CITATION.md").read_text()
    assert ("ComBat" in cit and "Pomponio" in cit) == (method == "combat")
    assert ("centring each site" in cit) == (method == "centre")
    # --heads with this head warns that the participant level sees raw embeddings
    from bidsfm.group.heads_io import resolve_heads
    from bidsfm.models.card import resolve_model

    logger = logging.getLogger("bidsfm")  # the CLI's logger does not propagate
    logger.addHandler(caplog.handler)
    try:
        resolve_heads((str(g / "target-diagnosis" / "head"),), resolve_model("bidsfmfc"))
    finally:
        logger.removeHandler(caplog.handler)
    assert "fitted on site-harmonised embeddings" in caplog.text
    # an unknown column is a usage error before anything is written
    capsys.readouterr()
    code, text = run_cli([a if a != "site" else "scanner" for a in args], capsys)
    assert code == 2 and "--harmonize scanner: no such column" in text


def test_participant_level_with_heads(cohort, tmp_path, capsys):
    from bidsfm.group.heads_io import load_head
    from bidsfm.models.registry import load_model

    head_dir = cohort["out"] / "group" / "target-diagnosis" / "head"
    out = cohort["out"]
    base = [cohort["ds"]["root"], out, "participant", "-w", cohort["base"] / "work",
            "--min-time", "0", "--bids-filter-file", cohort["filter"],
            "--participant-label", "02"]
    code, _ = run_cli(base + ["--heads", head_dir])
    assert code == 0
    run_file = next((out / "sub-02" / "func").glob("*_desc-bidsfmfc_predictions.tsv"))
    preds = pd.read_csv(run_file, sep="\t").set_index("head")
    assert "diagnosis_2" in preds.index and "diagnosis" in preds.index  # bundled head kept
    emb = pd.read_csv(str(run_file).replace("_predictions", "_embedding"), sep="\t").to_numpy()
    head = load_head(head_dir, load_model("bidsfmfc").card)
    assert preds.loc["diagnosis_2", "probability"] == pytest.approx(
        float(head.predict(emb)[0]), abs=1e-5)
    att = pd.read_csv(str(run_file).replace("_predictions", "_attention"), sep="\t")
    assert "diagnosis_2" in att.columns
    # a head fitted on another model's embeddings is refused up front (exit 2, one line)
    other = tmp_path / "other_head"
    shutil.copytree(head_dir, other)
    card = json.loads((other / "card.json").read_text())
    card["model"]["sha256"] = "0" * 64
    (other / "card.json").write_text(json.dumps(card))
    capsys.readouterr()
    code, text = run_cli(base + ["--heads", other], capsys)
    assert code == 2
    assert "was fitted on embeddings of model bidsfmfc (sha256 000000000000)" in text


def test_group_level_reports_each_target(cohort, capsys):
    """Progress (issue 16): a line when each target starts and ends (a target takes about a
    minute on a real cohort)."""
    code, log = run_cli(cohort["args"], capsys)
    assert code == cohort["code"]
    assert "[1/2] target diagnosis: cross-validated head" in log
    assert "[2/2] target age: cross-validated head" in log
    assert "[1/2] target diagnosis: done (" in log and "[2/2] target age: done (" in log
