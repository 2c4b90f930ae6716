"""Group-level building blocks on synthetic data: targets, CV, metrics, normative, QC-FC, heads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bidsfm.group.targets import (
    BINARY,
    CONTINUOUS,
    MULTICLASS,
    TargetSpec,
    build_target,
    class_labels,
    detect_task_type,
    parse_target,
)


def _table(**cols) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    frame = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], **cols})
    return frame.astype(str).replace("nan", np.nan).set_index("participant_id")


@pytest.mark.parametrize("values,expected", [
    (["ASD", "TC", "ASD", None], BINARY),
    (["1", "2", "2", "1"], BINARY),
    (["a", "b", "c", "a"], MULTICLASS),
    (["7.5", "12", "30.1", "18"], CONTINUOUS),
    (["1", "2", "3", "4", "5"], CONTINUOUS),
])
def test_detect_task_type(values, expected):
    assert detect_task_type(pd.Series(values)) == expected


def test_parse_target_and_positive_label():
    assert parse_target("age") == TargetSpec("age", None)
    assert parse_target("dx:multiclass") == TargetSpec("dx", MULTICLASS)
    from bidsfm.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown task type 'ordinal'"):
        parse_target("age:ordinal")
    # the control-like label is the negative class whatever the counts or sort order
    assert class_labels(pd.Series(["TC", "ASD", "ASD", "ASD"]), BINARY) == ["TC", "ASD"]
    assert class_labels(pd.Series(["patient", "HC", "HC"]), BINARY) == ["HC", "patient"]
    # no control-like name: the less frequent value is positive
    assert class_labels(pd.Series(["x", "y", "y"]), BINARY) == ["y", "x"]


def test_build_target_alignment_and_errors():
    from bidsfm.errors import ConfigError

    table = _table(dx=["ASD", "TC", None, "TC", "ASD", "ASD"],
                   site=["a", "a", "b", "b", None, "b"])
    ids = ["sub-04", "sub-00", "sub-01", "sub-02", "sub-03", "sub-05", "sub-99"]
    t = build_target(TargetSpec("dx"), table, ids)  # ids: the embedding order
    assert t.task_type == BINARY and t.labels == ["TC", "ASD"]
    assert [ids[i] for i in t.rows] == t.ids == ["sub-04", "sub-00", "sub-01", "sub-03",
                                                 "sub-05"]
    assert list(t.y) == [1, 1, 0, 0, 1]
    assert t.n_missing == 2
    tg = build_target(TargetSpec("dx"), table, ids, group_column="site")
    assert "sub-04" not in tg.ids  # no site
    with pytest.raises(ConfigError, match="no such column"):
        build_target(TargetSpec("nope"), table, ids)
    with pytest.raises(ConfigError, match="at least 2 per class"):
        build_target(TargetSpec("dx"), _table(dx=["ASD", "TC", "TC"]),
                     ["sub-00", "sub-01", "sub-02"])


def _synthetic(n_per_class: int, dim: int = 40, shift: float = 1.5, seed: int = 0,
               n_classes: int = 2):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = rng.standard_normal((len(y), dim))
    for k in range(n_classes):
        x[y == k, 4 * k:4 * k + 4] += shift
    return x, y


def _target(y, labels, groups=None, task=BINARY):
    from bidsfm.group.targets import Target

    ids = [f"sub-{i:03d}" for i in range(len(y))]
    return Target("dx", task, ids, np.arange(len(y)), np.asarray(y), labels,
                  None if groups is None else np.asarray(groups), 0)


def cross_validate(t, x, **kw):
    """The group level's call of the evaluation module for one target."""
    from bidsfm.evaluation import cross_validate as cv

    return cv(t.task_type, np.asarray(x)[t.rows], t.y, t.labels, t.groups, **kw)


def test_few_shot_five_per_class():
    from bidsfm.evaluation import compute_metrics, uncertainty_statement

    x, y = _synthetic(5, dim=20, shift=2.5, seed=1)
    t = _target(y, ["TC", "ASD"])
    cv = cross_validate(t, x)
    assert cv["scheme"].startswith("stratified 5-fold") and "few-shot" in cv["scheme"]
    assert cv["n_folds"] == 5 and np.all(np.bincount(cv["fold"]) == 2)
    for f in range(5):  # one participant per class in every test fold
        assert sorted(y[cv["fold"] == f]) == [0, 1]
    m = compute_metrics(BINARY, y, cv["scores"], n_boot=200)
    assert m["auc"]["value"] > 0.9  # well-separated classes
    assert m["auc"]["ci_low"] <= m["auc"]["value"] <= m["auc"]["ci_high"]
    text = uncertainty_statement(BINARY, m, 10, {"TC": 5, "ASD": 5}, cv["scheme"])
    assert "10 labelled participants" in text and "Few labelled participants" in text
    # chance-level data: the statement says the interval includes chance
    rng = np.random.default_rng(3)
    xr = rng.standard_normal((10, 20))
    cvr = cross_validate(t, xr)
    mr = compute_metrics(BINARY, y, cvr["scores"], n_boot=200)
    assert "includes chance" in uncertainty_statement(BINARY, mr, 10, {"TC": 5, "ASD": 5},
                                                      cvr["scheme"])


def test_grouped_cv_matches_leave_site_out_reference():
    from bidsfm.evaluation import leave_site_out, make_folds

    x, y = _synthetic(12, seed=2, shift=0.6)
    sites = np.array(["a", "b", "c", "d"] * 6)
    t = _target(y, ["TC", "ASD"], groups=sites)
    folds, scheme = make_folds(t.task_type, t.y, t.groups)
    assert scheme.startswith("leave-one-group-out (4 groups)")
    for tr, te in folds:
        assert not set(sites[tr]) & set(sites[te])
    cv = cross_validate(t, x)
    ref = leave_site_out(x, y, sites, BINARY, labels=["TC", "ASD"])["oof"]
    np.testing.assert_allclose(cv["scores"], ref, rtol=1e-10)


def test_stratified_kfold_for_larger_cohorts_and_continuous():
    from bidsfm.evaluation import compute_metrics

    x, y = _synthetic(15, seed=4)
    cv = cross_validate(_target(y, ["TC", "ASD"]), x)
    assert cv["scheme"].startswith("stratified 5-fold")
    rng = np.random.default_rng(5)
    xc = rng.standard_normal((30, 20))
    val = xc[:, 0] * 3 + 0.3 * rng.standard_normal(30)
    tc = _target(val, [], task=CONTINUOUS)
    cvc = cross_validate(tc, xc)
    assert cvc["scheme"].startswith("5-fold")
    m = compute_metrics(CONTINUOUS, val, cvc["scores"], n_boot=100)
    assert m["r"]["value"] > 0.8 and m["mae"]["value"] < m["mae_predict_mean"]["value"]
    expected_r2 = 1 - np.sum((val - cvc["scores"]) ** 2) / np.sum((val - val.mean()) ** 2)
    assert m["r2"]["value"] == pytest.approx(expected_r2)


@pytest.mark.parametrize("task", [BINARY, MULTICLASS])
def test_metrics_match_sklearn(task):
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    from bidsfm.evaluation import compute_metrics

    rng = np.random.default_rng(11)
    k = 2 if task == BINARY else 3
    y = rng.integers(0, k, 60)
    if task == BINARY:
        s = np.round(rng.random(60) * 0.6 + 0.3 * y, 1)  # ties included
        pred = (s >= 0.5).astype(int)
        ref = {"auc": roc_auc_score(y, s), "f1": f1_score(y, pred)}
    else:
        s = rng.dirichlet(np.ones(3), 60) + np.eye(3)[y] * 0.3
        pred = s.argmax(axis=1)
        ref = {"auc": roc_auc_score(y, s / s.sum(1, keepdims=True), multi_class="ovr"),
               "f1": f1_score(y, pred, average="macro")}
    ref["balanced_accuracy"] = balanced_accuracy_score(y, pred)
    m = compute_metrics(task, y, s, n_classes=k, n_boot=20)
    for name, value in ref.items():
        assert m[name]["value"] == pytest.approx(value, abs=1e-12), name


def test_multiclass_head_and_metrics():
    from sklearn.metrics import roc_auc_score

    from bidsfm.evaluation import compute_metrics

    x, y = _synthetic(8, n_classes=3, seed=6)
    t = _target(y, ["a", "b", "c"], task=MULTICLASS)
    cv = cross_validate(t, x)
    assert cv["scores"].shape == (24, 3)
    np.testing.assert_allclose(cv["scores"].sum(axis=1), 1.0)
    m = compute_metrics(MULTICLASS, y, cv["scores"], n_classes=3, n_boot=50)
    ref = roc_auc_score(y, cv["scores"], multi_class="ovr", average="macro")
    assert m["auc"]["value"] == pytest.approx(ref)
    assert m["balanced_accuracy"]["value"] > 0.8


def test_head_save_load_and_model_check(tmp_path):
    from bidsfm.errors import ConfigError
    from bidsfm.group.heads_io import load_head, save_head
    from bidsfm.models.heads import fit_multiclass_head

    x, y = _synthetic(6, n_classes=3, seed=7)
    head = fit_multiclass_head("grp", x, y, ["a", "b", "c"])
    card = {"name": "m1", "version": "1", "sha256": "ab" * 32, "embedding_size": 40}
    save_head(tmp_path / "head", head, card, {"n": 18})
    loaded = load_head(tmp_path / "head", card)
    np.testing.assert_allclose(loaded.predict(x), head.predict(x), rtol=1e-5, atol=1e-6)
    assert loaded.labels == ["a", "b", "c"]
    # centred logit of class k: differences between classes are preserved
    d = head.decision(x)
    c0 = head.class_head(0).decision(x)
    np.testing.assert_allclose(c0, d[:, 0] - d.mean(axis=1), atol=1e-9)
    with pytest.raises(ConfigError, match="fitted on embeddings of model m1"):
        load_head(tmp_path / "head", {**card, "sha256": "cd" * 32})
    (tmp_path / "head" / "weights.safetensors").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="sha256"):
        load_head(tmp_path / "head", card)


def test_normative_planted_outlier_and_roi_contributions():
    from bidsfm.group.normative import normative_scores, roi_contributions

    rng = np.random.default_rng(8)
    n_rois, k = 10, 8
    cols = [f"R{r:02d}_{j}" for r in range(n_rois) for j in range(k)]
    emb = rng.standard_normal((60, n_rois * k))
    is_ref = np.zeros(60, bool)
    is_ref[:40] = True
    emb[50, 3 * k:4 * k] += 6.0  # a non-reference participant deviating in ROI R03
    res = normative_scores(emb, is_ref)
    assert int(np.argmax(res["score"])) == 50
    assert res["percentile"][50] == 100.0
    assert res["p"][50] == pytest.approx(1 / 41)
    rois, contrib = roi_contributions(res["terms"], cols)
    np.testing.assert_allclose(contrib.sum(axis=1), res["score"])
    assert rois[int(np.argmax(contrib[50]))] == "R03"
    # reference participants are scored out of sample: participant 0 by a fit without it
    from sklearn.covariance import LedoitWolf

    ref = emb[1:40]
    z = emb[0] - ref.mean(axis=0)
    prec = LedoitWolf(assume_centered=True).fit(ref - ref.mean(axis=0)).precision_
    assert res["score"][0] == pytest.approx(z @ prec @ z)


def test_ledoit_wolf_matches_sklearn():
    from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

    from bidsfm.group.normative import _Reference, lw_shrinkage

    rng = np.random.default_rng(10)
    for m, p in ((15, 60), (200, 12)):
        ref = rng.standard_normal((m, p)) @ rng.standard_normal((p, p)) * 0.3
        z = ref - ref.mean(axis=0)
        assert lw_shrinkage(z) == pytest.approx(ledoit_wolf_shrinkage(z, assume_centered=True),
                                                rel=1e-9)
        x = rng.standard_normal((4, p))
        prec = LedoitWolf(assume_centered=True).fit(z).precision_
        xc = x - ref.mean(axis=0)
        np.testing.assert_allclose(_Reference(ref).terms(x), xc * (xc @ prec), rtol=1e-6,
                                   atol=1e-9)


def test_qcfc_matches_scipy():
    from scipy import stats

    from bidsfm.group.qcfc import edge_correlations

    rng = np.random.default_rng(9)
    fd = rng.gamma(2, 0.1, 25)
    fc = rng.standard_normal((25, 30)) + np.outer(fd, np.linspace(0, 3, 30))
    fc[[2, 7], 4] = np.nan  # an ROI missing in two participants
    r, p, n = edge_correlations(fc, fd)
    for j in range(30):
        ok = np.isfinite(fc[:, j])
        ref = stats.pearsonr(fc[ok, j], fd[ok])
        assert r[j] == pytest.approx(ref.statistic, abs=1e-10)
        assert p[j] == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)
    assert n[4] == 23 and n[0] == 25


def test_collect_fabricated_outputs(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from group_scale import fabricate

    from bidsfm.group.collect import collect_outputs, subject_embeddings

    fabricate(tmp_path, 12, 2, 16, seed=0)
    coll = collect_outputs(tmp_path)
    assert len(coll.qc) == 24
    assert list(coll.qc.columns[:4]) == ["participant_id", "session_id", "task", "run"]
    skipped = coll.qc[coll.qc["status"] != "ok"]
    ents, values, cols = coll.embeddings["bidsfmfc"]
    assert len(ents) == 24 - len(skipped) and values.shape[1] == 16
    assert {e["status"] for e in coll.exclusions} <= {"skipped"}
    assert len([e for e in coll.exclusions if e["stage"] == "run"]) == len(skipped)
    ids, mean, n_runs = subject_embeddings(ents, values)
    first = ents["participant_id"] == ids[0]
    np.testing.assert_allclose(mean[0], values[first.to_numpy()].mean(axis=0))
    assert n_runs.sum() == len(ents)
    only = collect_outputs(tmp_path, ["00001"])
    assert set(only.qc["participant_id"]) == {"sub-00001"}


def test_parallel_collection_and_tables_equal_one_process(tmp_path, monkeypatch):
    """--nprocs at the group level: embeddings parsed by forked workers and the wide tables
    formatted by them give the same collection and the same bytes as one process, unreadable
    embeddings included."""
    import sys
    from pathlib import Path

    import pandas as pd

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from group_scale import fabricate

    import bidsfm.group.collect as collect
    from bidsfm.group.run import write_cohort_tables

    monkeypatch.setattr(collect, "PARALLEL_MIN_FILES", 4)
    monkeypatch.setattr(collect, "PARALLEL_MIN_ROWS", 4)
    fabricate(tmp_path / "out", 15, 2, 60, seed=3)
    embs = sorted((tmp_path / "out").rglob("*_embedding.tsv"))
    header, row = embs[3].read_text().split("\n")[:2]
    embs[3].write_text(header + "\n" + row.rsplit("\t", 1)[0] + "\n")  # a value missing
    header, row = embs[5].read_text().split("\n")[:2]
    cells = row.split("\t")
    cells[0] = cells[7] = "n/a"
    embs[5].write_text(header + "\n" + "\t".join(cells) + "\n")  # NaN values
    runs = {}
    for nprocs in (1, 2):
        coll = collect.collect_outputs(tmp_path / "out", nprocs=nprocs)
        gdir = tmp_path / f"group{nprocs}"
        gdir.mkdir()
        write_cohort_tables(coll, gdir, None, None, [], False, nprocs=nprocs)
        runs[nprocs] = (coll, {p.name: p.read_bytes() for p in gdir.iterdir()})
    (c1, files1), (c2, files2) = runs[1], runs[2]
    ents1, values1, cols1 = c1.embeddings["bidsfmfc"]
    ents2, values2, cols2 = c2.embeddings["bidsfmfc"]
    pd.testing.assert_frame_equal(ents1, ents2)
    np.testing.assert_array_equal(values1, values2)
    assert cols1 == cols2 and np.isnan(values1).any()
    assert c1.exclusions == c2.exclusions
    assert any("unreadable embedding" in e["reason"] for e in c1.exclusions)
    assert sorted(files1) == sorted(files2) and len(files1) >= 3
    for name in files1:
        assert files1[name] == files2[name], name
    table = files1[next(n for n in files1 if "runs_embedding" in n)].decode()
    assert "\tn/a" in table and len(table.splitlines()) == len(ents1) + 1


@pytest.mark.parametrize("width", [16, 60])  # pandas' writer (< 50 columns) and the row writer
def test_subject_table_copied_from_runs_equals_formatted(tmp_path, monkeypatch, width):
    """One run per participant: the subject table is the runs table's rows with other lead
    columns (nothing formatted twice); the bytes are those of formatting the run means. Two
    runs for a participant: the means are formatted as before."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from group_scale import fabricate

    import bidsfm.group.collect as collect
    import bidsfm.group.run as run_mod

    for runs, copies in ((1, True), (2, False)):
        root = tmp_path / f"r{runs}"
        fabricate(root / "out", 9, runs, width, seed=5)
        emb = sorted((root / "out").rglob("*_embedding.tsv"))[0]
        header, row = emb.read_text().split("\n")[:2]
        emb.write_text(header + "\n" + "n/a\t" + row.split("\t", 1)[1] + "\n")
        coll = collect.collect_outputs(root / "out")
        called = []
        original = collect.subject_table_from_runs

        def spy(*args, original=original, called=called):
            called.append(original(*args))
            return called[-1]

        tables = {}
        for mode in ("copy", "format"):
            gdir = root / mode
            gdir.mkdir()
            monkeypatch.setattr(collect, "subject_table_from_runs",
                                spy if mode == "copy" else (lambda *a: False))
            run_mod.write_cohort_tables(coll, gdir, None, None, [], False)
            tables[mode] = next(gdir.glob("*subjects_embedding.tsv")).read_bytes()
        assert called == [copies]
        assert tables["copy"] == tables["format"]
        assert b"\tn/a" in tables["copy"] or runs == 2
