"""The participant level end to end through the command line (Nipype Linear plugin)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import clone_dataset, run_cli

SUFFIXES = ("_stat-mean_timeseries.tsv", "_stat-mean_timeseries.json",
            "_stat-coverage_bold.tsv", "_stat-pearsoncorrelation_relmat.tsv",
            "_stat-pearsoncorrelation_relmat.json",
            "_stat-pearsoncorrelation_desc-fisherz_relmat.tsv",
                "_stat-pearsoncorrelation_desc-fisherz_relmat.json", "_qc.tsv", "_qc.json")


def _expected(run: dict, out: Path, atlas: str = "CC200") -> list[Path]:
    parts = [f"sub-{run['subject']}"]
    if run["session"]:
        parts.append(f"ses-{run['session']}")
    parts.append(f"task-{run['task']}")
    if run["run"] is not None:
        parts.append(f"run-{run['run']}")
    folder = out / f"sub-{run['subject']}"
    if run["session"]:
        folder = folder / f"ses-{run['session']}"
    stem = "_".join(parts) + f"_space-MNI152NLin2009cAsym_atlas-{atlas}"
    return [folder / "func" / (stem + s) for s in SUFFIXES]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_ds):
    """One participant-level run over the whole tiny dataset."""
    out = tmp_path_factory.mktemp("full") / "out"
    work = out.parent / "work"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "-w", work, "--min-time", "0"])
    return {"code": code, "out": out, "work": work}


def test_every_run_has_every_output(full_run, tiny_ds):
    assert full_run["code"] == 0
    out = full_run["out"]
    for run in tiny_ds["runs"]:
        for path in _expected(run, out):
            assert path.is_file(), path
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers
    # the call's options, as run, are in logs/ (docs/usage.md)
    configs = sorted((out / "logs").glob("config-*.json"))
    assert len(configs) == 1
    config = json.loads(configs[0].read_text())
    assert config["run"]["analysis_level"] == "participant"
    assert config["processing"]["min_time"] == 0.0 and config["model"]["attention_steps"] == 32


def test_output_contents(full_run, tiny_ds):
    out = full_run["out"]
    run = tiny_ds["runs"][0]
    ts_path, ts_json = _expected(run, out)[:2]
    ts = pd.read_csv(ts_path, sep="\t", na_values="n/a")
    assert list(ts.columns) == [f"CC200_{i:03d}" for i in range(1, 201)]
    meta = json.loads(ts_json.read_text())
    assert meta["SamplingFrequency"] == pytest.approx(1 / run["repetition_time"])
    assert all(s.startswith("bids:preprocessed:sub-") for s in meta["Sources"])
    assert len(meta["RetainedVolumes"]) == len(ts)
    assert meta["Atlas"]["Transform"]["Method"].startswith("world-coordinates")
    fc = pd.read_csv(_expected(run, out)[3], sep="\t", index_col=0, na_values="n/a")
    assert fc.shape == (200, 200) and fc.index[0] == "CC200_001"
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert [g["Name"] for g in desc["GeneratedBy"]][:2] == ["bidsfm", "fMRIPrep"]
    assert desc["DatasetLinks"]["preprocessed"] == str(Path(tiny_ds["root"]).absolute())


def test_low_coverage_rois_are_na(full_run, tiny_ds):
    run = next(r for r in tiny_ds["runs"] if r["subject"] == "02")
    paths = _expected(run, full_run["out"])
    cov = pd.read_csv(paths[2], sep="\t", index_col="Node")["coverage"]  # XCP-D's layout
    ts = pd.read_csv(paths[0], sep="\t", na_values="n/a")
    low = cov.index[cov < 0.5]
    assert len(low) > 0  # sub-02's field of view is cut
    assert ts[low].isna().all().all()
    assert ts.drop(columns=low).notna().all().all()
    qc = pd.read_csv(next(p for p in paths if p.name.endswith("_qc.tsv")), sep="\t")
    assert qc.loc[0, "n_rois_low_coverage"] == len(low)


def test_rerun_resumes_and_option_change_reprocesses(full_run, tiny_ds, capsys):
    out, work = full_run["out"], full_run["work"]
    ts = _expected(tiny_ds["runs"][0], out)[0]
    before = ts.stat().st_mtime_ns
    code, _ = run_cli([tiny_ds["root"], out, "participant", "-w", work, "--min-time", "0",
                       "--participant-label", "01"], capsys)
    assert code == 0
    assert ts.stat().st_mtime_ns == before  # complete outputs are not rewritten
    code, _ = run_cli([tiny_ds["root"], out, "participant", "-w", work, "--min-time", "0",
                       "--participant-label", "sub-01", "--denoise-strategy", "simple+gsr"],
                      capsys)
    assert code == 0
    assert ts.stat().st_mtime_ns != before
    meta = json.loads(ts.with_suffix(".json").read_text())
    assert "global_signal" in meta["ConfoundsUsed"]


def test_selection_session_task(tmp_path, tiny_ds, capsys):
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01", "02",
                         "--session-label", "1", "-t", "rest", "-w", tmp_path / "w",
                         "--min-time", "0"], capsys)
    assert code == 1  # sub-02 has no session 1: reported, the rest is processed
    assert "sub-02: no desc-preproc_bold run" in log
    written = sorted(p.name for p in out.rglob("*_stat-mean_timeseries.tsv"))
    assert all("sub-01_ses-1" in n for n in written)
    assert len(written) == 2
    assert not (out / "sub-02").exists()  # sub-02 has no session 1


def test_missing_confounds_and_tr(tmp_path, tiny_ds, capsys):
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["01", "03"])
    runs = [r for r in tiny_ds["runs"] if r["subject"] in ("01", "03")]
    conf = Path(runs[0]["confounds"].replace(tiny_ds["root"], str(ds)))
    conf.unlink()
    sidecar = Path(runs[-1]["bold_json"].replace(tiny_ds["root"], str(ds)))
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTime"] *= 1000  # milliseconds (a missing TR falls back to the NIfTI header)
    sidecar.write_text(json.dumps(meta))
    out = tmp_path / "out"
    code, log = run_cli([ds, out, "participant", "-w", tmp_path / "w", "--min-time", "0"], capsys)
    assert code == 1
    conf_lines = [ln for ln in log.splitlines() if "no confounds file" in ln]
    assert len(conf_lines) == 1 and conf.name.split("_desc-")[0] in conf_lines[0]
    assert "Restore fMRIPrep's confounds" in conf_lines[0]
    tr_lines = [ln for ln in log.splitlines() if "RepetitionTime" in ln and "ERROR" in ln]
    assert len(tr_lines) == 1 and sidecar.name in tr_lines[0]
    written = list(out.rglob("*_stat-mean_timeseries.tsv"))
    assert len(written) == len(runs) - 2  # the others are still written


def test_unknown_participant(tmp_path, tiny_ds, capsys):
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03", "99",
                         "-w", tmp_path / "w", "--min-time", "0"], capsys)
    assert code == 1
    lines = [ln for ln in log.splitlines() if "sub-99" in ln]
    assert len(lines) == 1 and "not found" in lines[0] and "--participant-label" in lines[0]
    assert len(list(out.rglob("sub-03_*_stat-mean_timeseries.tsv"))) == 2


def test_bad_participant_label_is_usage_error(tmp_path, tiny_ds, capsys):
    code, log = run_cli([tiny_ds["root"], tmp_path / "out", "participant",
                         "--participant-label", "../etc", "-w", tmp_path / "w"], capsys)
    assert code == 2
    assert "invalid participant label" in log
    assert not (tmp_path / "out").exists()


def test_atlas_not_available_offline(tmp_path, tiny_ds, capsys):
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03",
                         "--atlas", "CC200", "--atlas", "Schaefer300x7", "-w", tmp_path / "w",
                         "--min-time", "0"], capsys)
    assert code == 1
    lines = [ln for ln in log.splitlines() if "Schaefer" in ln and "ERROR" in ln]
    assert len(lines) == 1 and "TEMPLATEFLOW_HOME" in lines[0]
    assert len(list(out.rglob("*atlas-CC200_stat-mean_timeseries.tsv"))) == 2


def test_no_atlas_at_all(tmp_path, tiny_ds, capsys, monkeypatch):
    from bidsfm import atlases

    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "empty_home"))
    # a damaged install: without the CC200 copy that ships with bidsfm
    monkeypatch.setattr(atlases, "BUNDLED_DIR", tmp_path / "no_bundled_atlases")
    code, log = run_cli([tiny_ds["root"], tmp_path / "out", "participant",
                         "--participant-label", "03", "-w", tmp_path / "w"], capsys)
    assert code == 2
    line = next(ln for ln in log.splitlines() if "CC200" in ln and "offline" in ln)
    assert "bidsfm-atlas seed CC200" in line


def test_default_atlas_ships_with_bidsfm(tmp_path, tiny_ds, capsys, monkeypatch):
    """No cache, no shared data, offline: the default CC200 comes from the package."""
    monkeypatch.setenv("BIDSFM_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv("BIDSFM_SHARED_DATA", str(tmp_path / "no_shared"))
    monkeypatch.setenv("BIDSFM_OFFLINE", "1")
    code, log = run_cli([tiny_ds["root"], tmp_path / "out", "participant",
                         "--participant-label", "03", "--atlas", "cc200", "-w", tmp_path / "w",
                         "--min-time", "0", "--model", "none"], capsys)
    assert code == 0, log
    assert len(list((tmp_path / "out").rglob("*CC200*_timeseries.tsv"))) == 2
    assert not (tmp_path / "empty_home" / "atlases").exists()


def test_raw_bids_with_derivatives(tmp_path, tiny_ds, capsys):
    raw = tmp_path / "raw"
    (raw / "derivatives").mkdir(parents=True)
    (raw / "dataset_description.json").write_text(json.dumps(
        {"Name": "raw", "BIDSVersion": "1.9.0", "DatasetType": "raw"}))
    (raw / "sub-03").mkdir()
    clone_dataset(tiny_ds["root"], raw / "derivatives" / "fmriprep", ["03"])
    out = tmp_path / "out"
    code, _ = run_cli([raw, out, "participant", "-w", tmp_path / "w", "--min-time", "0"], capsys)
    assert code == 0
    assert len(list(out.rglob("*_stat-mean_timeseries.tsv"))) == 2
    links = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert links["raw"] == str(raw)
    # and with -d fmriprep=PATH
    out2 = tmp_path / "out2"
    code, _ = run_cli([raw, out2, "participant", "-d",
                       f"fmriprep={raw / 'derivatives' / 'fmriprep'}", "-w", tmp_path / "w2",
                       "--min-time", "0"], capsys)
    assert code == 0
    assert len(list(out2.rglob("*_stat-mean_timeseries.tsv"))) == 2


def test_output_inside_input_refused(tmp_path, tiny_ds, capsys):
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    code, log = run_cli([ds, ds / "derivatives" / "bidsfm", "participant", "-w",
                         tmp_path / "w"], capsys)
    assert code == 2 and "inside the input" in log
    assert not (ds / "derivatives").exists()


def test_filter_file_config_file_and_multiproc(tmp_path, tiny_ds, capsys):
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"bold": {"run": 1}}))
    cfg = tmp_path / "bidsfm.toml"
    cfg.write_text('denoise_strategy = "scrubbing"\nmin_time = 0\nnprocs = 2\n'
                   'participant_label = ["01"]\n')
    out = tmp_path / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--config-file", cfg,
                       "--bids-filter-file", filt, "-w", tmp_path / "w"], capsys)
    assert code == 0
    written = sorted(p.name for p in out.rglob("*_stat-mean_timeseries.tsv"))
    assert len(written) == 2 and all("run-1" in n for n in written)
    meta = json.loads(next(out.rglob("*_stat-mean_timeseries.json")).read_text())
    assert meta["Strategy"]["name"] == "scrubbing"


def test_dataset_description_parallel_writers(tmp_path):
    """Several jobs creating the description at once give one valid file."""
    from concurrent.futures import ProcessPoolExecutor

    from bidsfm.derivatives import ensure_dataset_description

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24"}]}))
    out = tmp_path / "out"
    with ProcessPoolExecutor(4) as ex:
        list(ex.map(ensure_dataset_description, [out] * 8, [inp] * 8,
                    [{"preprocessed": str(inp)}] * 8))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Name"] == "bidsfm"
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_foreign_output_dataset_refused(tmp_path, tiny_ds, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "GeneratedBy": [{"Name": "XCP-D"}]}))
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03",
                         "-w", tmp_path / "w"], capsys)
    assert code == 2 and "XCP-D" in log


def test_atlas_placement_figure_in_report(full_run, tiny_ds):
    """Issue 14: the subject report shows where the atlas landed on each run's mask."""
    out = full_run["out"]
    for run in tiny_ds["runs"]:
        base = _expected(run, out)[0].name.replace("_stat-mean_timeseries.tsv", "")
        png = out / f"sub-{run['subject']}" / "figures" / f"{base}_desc-placement_bold.png"
        assert png.read_bytes().startswith(b"\x89PNG"), png
    text = (out / "sub-01.html").read_text(encoding="utf-8")
    n_runs = sum(r["subject"] == "01" for r in tiny_ds["runs"])
    assert text.count('alt="atlas placement"') == n_runs
    assert "parcel voxels outside the mask in red" in text
