"""Group level on bad or changing inputs (issue 17 and 14): each test failed before its fix.

The cohorts are fabricated participant outputs (QC tables written by the participant level's
own writer, one-row embeddings, FC relmats): no BOLD is processed, so every test takes seconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

MODEL = "testfm"  # not an installed model: the group level needs no weights
N_ROIS, K = 10, 8
ROIS = [f"R{r:02d}" for r in range(N_ROIS)]
EMB_COLS = [f"{r}_{k}" for r in ROIS for k in range(K)]


def _strict_json(path: Path):
    """Parse with a strict parser: bare NaN / Infinity are errors, as in JavaScript or jq."""
    def refuse(token):
        raise ValueError(f"{path}: {token} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def _run(sub: str, run: int):
    from bidsfm.discovery import BoldRun

    return BoldRun(entities={"subject": sub, "task": "rest", "run": str(run)},
                   space="MNI152NLin2009cAsym", bold=f"/in/sub-{sub}_bold.nii.gz", mask="",
                   confounds="", confounds_json=None, repetition_time=2.0)


def _write_run(out: Path, sub: str, run: int, atlases: list[str], rng, shift: float = 0.0,
               status: str = "ok") -> None:
    """One run's outputs for every atlas, as the participant level writes them."""
    from bidsfm.pipeline import ProcessingOptions, _qc_row, _write_failure, _write_qc, output_paths

    brun = _run(sub, run)
    options = ProcessingOptions(atlases=list(atlases))
    for atlas in atlases:
        paths = output_paths(brun, atlas, out)
        if status == "error":
            _write_failure(paths, brun, atlas, f"{brun.bold}: cannot read BOLD data (EOFError)",
                           options)
            continue
        fd = float(rng.gamma(2.0, 0.08))
        row = _qc_row(status="ok", atlas=atlas, space=brun.space, repetition_time=2.0,
                      n_volumes=100, n_dummy=0, n_censored=0, n_retained=100,
                      retained_seconds=200.0, mean_fd=fd, max_fd=fd * 3, n_rois=N_ROIS,
                      n_rois_low_coverage=0, min_coverage=0.5, atlas_transform="identical")
        _write_qc(paths, row, {"ParametersHash": "x", "Status": "ok",
                               "Options": options.to_dict()})
        fc = np.corrcoef(rng.standard_normal((N_ROIS, 50)) + 0.3 * rng.standard_normal(50))
        pd.DataFrame(fc, index=ROIS, columns=ROIS).to_csv(paths["fc"], sep="\t",
                                                          float_format="%.6g")
        if atlas != atlases[0]:
            continue
        stem = str(paths["qc"])[: -len("_qc.tsv")]
        emb = rng.standard_normal(len(EMB_COLS)) + shift
        Path(f"{stem}_desc-{MODEL}_embedding.tsv").write_text(
            "\t".join(EMB_COLS) + "\n" + "\t".join(f"{v:.6g}" for v in emb) + "\n")
        Path(f"{stem}_desc-{MODEL}_predictions.tsv").write_text(
            "head\tvalue\tprobability\tprobability_of\ndiagnosis\tASD\t0.6\tASD\n")


def fabricate_cohort(root: Path, n: int = 10, atlases=("CC200",), failed=(), seed: int = 0
                     ) -> tuple[Path, Path]:
    """``n`` participants x 2 runs; ``failed`` = [(participant index, run)] fail.

    Returns (output folder, participants.tsv): diagnosis ASD/TC alternating, age, site A/B.
    """
    rng = np.random.default_rng(seed)
    out = root / "out"
    rows = []
    for i in range(1, n + 1):
        sub = f"{i:02d}"
        asd = i % 2 == 0
        for run in (1, 2):
            _write_run(out, sub, run, list(atlases), rng, shift=0.5 if asd else 0.0,
                       status="error" if (i, run) in failed else "ok")
        rows.append({"participant_id": f"sub-{sub}", "diagnosis": "ASD" if asd else "TC",
                     "age": f"{20 + 2.5 * i + rng.standard_normal():.2f}",
                     "site": "A" if i <= n // 2 else "B"})
    table = root / "participants.tsv"
    pd.DataFrame(rows).to_csv(table, sep="\t", index=False)
    (root / "bids").mkdir(exist_ok=True)
    return out, table


def _group(root: Path, out: Path, *args, capsys=None) -> tuple[int, str]:
    return run_cli([root / "bids", out, "group", "--n-bootstrap", "20",
                    "--attention-participants", "0", *[str(a) for a in args]], capsys)


# -- 1. normative scores agree with scikit-learn's LedoitWolf Mahalanobis ---------------------

def _real_like(n: int, p: int, seed: int) -> np.ndarray:
    """Embedding-like rows: a large common mean, a few strong shared factors, uneven scales."""
    rng = np.random.default_rng(seed)
    common = rng.standard_normal(p) * 2.0
    loadings = rng.standard_normal((4, p)) * rng.gamma(1.0, 1.0, p)
    scores = rng.standard_normal((n, 4))
    noise = rng.standard_normal((n, p)) * rng.gamma(2.0, 0.1, p)
    return np.maximum(common + scores @ loadings + noise, 0.0) + 0.01 * (common + noise)


@pytest.mark.parametrize("m,p", [(3, 1600), (4, 400), (12, 400), (40, 12)])
def test_normative_scores_match_sklearn_ledoit_wolf(m, p):
    """Every participant's score, the reference participants' own (out-of-sample) included.

    (3, 1600) is the demo cohort's case: leave-one-out fits on 2 participants have shrinkage
    0, where the old Woodbury solve gave scores of +-1e12 (sklearn: ~1e-3).
    """
    from sklearn.covariance import LedoitWolf

    from bidsfm.group.normative import normative_scores

    emb = _real_like(m + 5, p, seed=m)
    is_ref = np.zeros(m + 5, bool)
    is_ref[:m] = True
    res = normative_scores(emb, is_ref)
    expected = np.empty(m + 5)
    for i in range(m):
        others = emb[[j for j in range(m) if j != i]]
        expected[i] = LedoitWolf().fit(others).mahalanobis(emb[i:i + 1])[0]
    expected[m:] = LedoitWolf().fit(emb[:m]).mahalanobis(emb[m:])
    assert np.all(np.isfinite(res["score"])) and np.all(res["score"] >= 0)
    np.testing.assert_allclose(res["score"], expected, rtol=1e-6,
                               atol=1e-9 * float(np.max(expected)))
    np.testing.assert_allclose(res["terms"].sum(axis=1), res["score"])
    # a fit on 2 participants is singular: said in the result (and so in method.json)
    assert bool(res["warnings"]) == (m == 3)


def test_normative_singular_reference_is_recorded(tmp_path, session_env):
    out, table = fabricate_cohort(tmp_path, n=6)
    frame = pd.read_csv(table, sep="\t")
    frame["group"] = ["ref", "ref", "ref", "x", "x", "x"]
    frame.to_csv(table, sep="\t", index=False)
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--reference", "group=ref")
    assert code == 0
    dev = pd.read_csv(out / "group" / "normative" / "deviation.tsv", sep="\t")
    assert np.isfinite(dev["score"]).all() and (dev["score"] >= 0).all()
    method = _strict_json(out / "group" / "normative" / "method.json")
    assert "singular" in method["warnings"][0]


# -- 2. participants.tsv: duplicates, unlisted participants, empty ids ------------------------

def test_conflicting_duplicate_row_is_an_error(tmp_path):
    from bidsfm.errors import ConfigError
    from bidsfm.group.targets import read_participants

    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tdiagnosis\tage\n01\tASD\t20\nsub-02\tTC\t30\n"
                    "sub-01\tTC\t20\n")
    with pytest.raises(ConfigError) as info:
        read_participants(path)
    line = info.value.one_line()
    assert "\n" not in line and str(path) in line and "sub-01" in line
    assert "diagnosis" in line and "'ASD' vs 'TC'" in line


def test_identical_duplicate_rows_collapse_with_warning(tmp_path, caplog):
    from bidsfm.group.targets import read_participants

    path = tmp_path / "participants.tsv"
    path.write_text("participant_id\tdiagnosis\tage\n01\tASD\tn/a\nsub-02\tTC\t30\n"
                    "sub-01\tASD\t\n")
    with caplog.at_level(logging.WARNING, logger="bidsfm.group"):
        table = read_participants(path)
    assert list(table.index) == ["sub-01", "sub-02"]
    assert "sub-01" in caplog.text and "more than once" in caplog.text


def test_empty_participant_id_is_a_one_line_error(tmp_path, session_env, capsys):
    out, table = fabricate_cohort(tmp_path, n=6)
    text = table.read_text().splitlines()
    text[3] = "\t" + text[3].split("\t", 1)[1]  # third participant's id cell emptied
    table.write_text("\n".join(text) + "\n")
    code, err = _group(tmp_path, out, "--participants-tsv", table, "--target", "diagnosis",
                       capsys=capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if "error" in ln]
    assert len(lines) == 1 and str(table) in lines[0] and "participant_id" in lines[0]
    assert "Traceback" not in err
    # not needed without --target/--reference: a warning, and the level goes on
    code, _ = _group(tmp_path, out, "--participants-tsv", table)
    assert code == 0 and (out / "group.html").is_file()


def test_participants_without_a_row_are_reported(tmp_path, session_env, capsys):
    out, table = fabricate_cohort(tmp_path, n=10)
    frame = pd.read_csv(table, sep="\t")
    frame[frame["participant_id"] != "sub-07"].to_csv(table, sep="\t", index=False)
    code, err = _group(tmp_path, out, "--participants-tsv", table, "--target", "diagnosis",
                       capsys=capsys)
    assert code == 0
    warning = [ln for ln in err.splitlines() if "WARNING" in ln and "sub-07" in ln]
    assert warning and "no row" in warning[0]
    excl = pd.read_csv(out / "group" / "group_exclusions.tsv", sep="\t")
    row = excl[excl["participant_id"] == "sub-07"]
    assert list(row["stage"]) == ["participant"] and list(row["status"]) == ["unlisted"]


# -- 3. a failed run: n/a cells, and the group level and its report still work -------------

def test_failed_run_qc_is_na_and_group_report_is_written(tmp_path, session_env):
    out, table = fabricate_cohort(tmp_path, n=8, failed=[(3, 2)])
    qc = next(out.rglob("sub-03_task-rest_run-2_*_qc.tsv"))
    header, values = qc.read_text().splitlines()
    cells = values.split("\t")
    assert cells[0] == "error" and "" not in cells, "empty cells in a failed run's QC row"
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--target", "diagnosis",
                     "--reference", "diagnosis=TC")
    assert code == 0
    g = out / "group"
    runs = g / "group_runs_qc.tsv"
    assert all("" not in line.split("\t") for line in runs.read_text().splitlines())
    html = (out / "group.html").read_text()
    assert "could not be built" not in html and "Target: diagnosis" in html
    excl = pd.read_csv(g / "group_exclusions.tsv", sep="\t")
    failed = excl[(excl["participant_id"] == "sub-03") & (excl["stage"] == "run")]
    assert list(failed["status"]) == ["error"] and "EOFError" in failed["reason"].iloc[0]


def test_group_report_with_legacy_empty_cells(tmp_path, session_env):
    """QC tables written before the fix (empty cells in failed rows) still give a report."""
    out, table = fabricate_cohort(tmp_path, n=6, failed=[(2, 1)])
    qc = next(out.rglob("sub-02_task-rest_run-1_*_qc.tsv"))
    qc.write_text(qc.read_text().replace("n/a", ""))
    code, _ = _group(tmp_path, out, "--participants-tsv", table)
    assert code == 0 and (out / "group.html").is_file()
    assert "could not be built" not in (out / "group.html").read_text()
    runs = (out / "group" / "group_runs_qc.tsv").read_text().splitlines()
    assert all("" not in line.split("\t") for line in runs)


def test_one_broken_table_does_not_lose_the_report(tmp_path, session_env):
    """A section whose table cannot be used becomes a note; the other sections are written."""
    from bidsfm.reports.group import write_group_report

    out, table = fabricate_cohort(tmp_path, n=6)
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--reference", "diagnosis=TC")
    assert code == 0
    dev = out / "group" / "normative" / "deviation.tsv"
    frame = pd.read_csv(dev, sep="\t", dtype=str)
    frame.loc[0, "score"] = "garbage"
    frame.to_csv(dev, sep="\t", index=False)
    write_group_report(out)
    html = (out / "group.html").read_text()
    assert "could not be built" in html
    assert "Run exclusions" in html and "group_runs_qc.tsv" in html


# -- 4. stale group outputs and atlases no longer requested ----------------------------------

def test_rerun_without_target_removes_stale_group_outputs(tmp_path, session_env):
    out, table = fabricate_cohort(tmp_path, n=10)
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--target", "diagnosis",
                     "--target", "age", "--reference", "diagnosis=TC")
    assert code == 0
    g = out / "group"
    assert (g / "target-diagnosis").is_dir() and (g / "normative").is_dir()
    (g / "my_notes.txt").write_text("kept")  # not a group-level output: left alone
    (g / ".group_runs_qc.abc123de.tmp.tsv").write_text("partial")  # a killed group level's
    (out / ".group.abc123de.tmp.html").write_text("partial")
    (out / "logs" / ".CITATION.abc123de.tmp.md").write_text("partial")
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--target", "age")
    assert code == 0
    assert not (g / "target-diagnosis").exists() and not (g / "normative").exists()
    assert (g / "target-age" / "metrics.json").is_file() and (g / "my_notes.txt").is_file()
    assert not list(g.glob(".*.tmp*")) and not list(out.glob(".*.tmp*"))
    assert not list((out / "logs").glob(".*.tmp*"))
    html = (out / "group.html").read_text()
    assert "Target: age" in html and "Target: diagnosis" not in html
    code, _ = _group(tmp_path, out, "--participants-tsv", table)
    assert code == 0 and not list(g.glob("target-*"))
    assert "Target:" not in (out / "group.html").read_text()


def test_report_ignores_target_folders_not_in_group_json(tmp_path, session_env):
    """Older outputs (or a folder copied in) that group.json does not list are not shown."""
    from bidsfm.reports.group import write_group_report

    out, table = fabricate_cohort(tmp_path, n=6)
    assert _group(tmp_path, out, "--participants-tsv", table)[0] == 0
    (out / "group" / "target-old").mkdir()
    (out / "group" / "target-old" / "metrics.json").write_text("{}")
    write_group_report(out)
    assert "Target: old" not in (out / "group.html").read_text()


def test_atlas_no_longer_requested_is_not_collected(tmp_path, session_env):
    out, table = fabricate_cohort(tmp_path, n=6, atlases=("CC200", "Extra"))
    # the participant level is rerun with --atlas CC200 only: newer CC200 outputs
    rng = np.random.default_rng(5)
    later = os.stat(next(out.rglob("*_qc.json"))).st_mtime + 10
    for i in range(1, 7):
        for run in (1, 2):
            _write_run(out, f"{i:02d}", run, ["CC200"], rng)
    for side in out.rglob("*atlas-CC200*_qc.json"):
        os.utime(side, (later, later))
    code, _ = _group(tmp_path, out, "--participants-tsv", table)
    assert code == 0
    g = out / "group"
    qc = pd.read_csv(g / "group_runs_qc.tsv", sep="\t")
    assert set(qc["atlas"]) == {"CC200"} and len(qc) == 12
    assert (g / "group_atlas-CC200_qcfc.tsv").is_file()
    assert not (g / "group_atlas-Extra_qcfc.tsv").exists()
    excl = pd.read_csv(g / "group_exclusions.tsv", sep="\t")
    stale = excl[excl["status"] == "stale"]
    assert len(stale) == 12 and set(stale["atlas"]) == {"Extra"}
    assert "not requested" in stale["reason"].iloc[0]


def test_two_atlases_of_one_call_are_both_collected(tmp_path, session_env):
    out, table = fabricate_cohort(tmp_path, n=6, atlases=("CC200", "Extra"))
    assert _group(tmp_path, out, "--participants-tsv", table)[0] == 0
    qc = pd.read_csv(out / "group" / "group_runs_qc.tsv", sep="\t")
    assert set(qc["atlas"]) == {"CC200", "Extra"} and len(qc) == 24
    assert (out / "group" / "group_atlas-Extra_qcfc.tsv").is_file()


# -- 5. strict JSON -------------------------------------------------------------------------

def test_write_json_atomic_is_strict(tmp_path):
    from bidsfm.utils import write_json_atomic

    path = write_json_atomic(tmp_path / "x.json", {
        "nan": float("nan"), "inf": [float("inf"), -np.inf], "np": np.float32(0.25),
        "arr": np.array([1.0, np.nan]), "int": np.int64(3), "nested": {"r": np.float64("nan")}})
    data = _strict_json(path)
    assert data == {"nan": None, "inf": [None, None], "np": 0.25, "arr": [1.0, None],
                    "int": 3, "nested": {"r": None}}


def test_group_json_files_are_strict_json(tmp_path, session_env):
    """A continuous target wrote bare NaN into metrics.json and head/card.json."""
    out, table = fabricate_cohort(tmp_path, n=10)
    code, _ = _group(tmp_path, out, "--participants-tsv", table, "--target", "age",
                     "--target", "diagnosis", "--reference", "diagnosis=TC")
    assert code == 0
    files = sorted((out / "group").rglob("*.json"))
    assert {"metrics.json", "card.json", "group.json", "method.json"} <= {f.name for f in files}
    for path in files:
        _strict_json(path)
