"""HTML reports and CITATION.md: content, missing pieces, validity, and rendering in Chromium.

The subject report is built from a real participant-level run of the tiny demo dataset
(sub-01: three runs, one skipped by --min-time). The group report is built from group tables
written here with numpy in the fixed group layout (docs/reports.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from bidsfm.errors import ConfigError, InputDataError
from bidsfm.models.registry import DEFAULT_MODEL, list_models
from bidsfm.reports import write_citation, write_group_report, write_subject_report
from bidsfm.reports.subject import normalize_subject

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
HAS_MODEL = DEFAULT_MODEL in list_models()


# --------------------------------------------------------------------------- helpers
class _Checker(HTMLParser):
    """Minimal HTML5 well-formedness check: balanced non-void tags, unique ids, images."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: set[str] = set()
        self.imgs: list[dict] = []
        self.scripts = 0
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            if attrs["id"] in self.ids:
                self.errors.append(f"duplicate id {attrs['id']}")
            self.ids.add(attrs["id"])
        if tag == "img":
            self.imgs.append(attrs)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            val = attrs.get(key) or ""
            if val and not val.startswith(("#", "data:image/png;base64,")):
                self.external.append(val)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()


def check_html(text: str) -> _Checker:
    """Parse a report and assert it is a well-formed, self-contained HTML5 page."""
    assert text.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in text and '<meta charset="utf-8">' in text
    checker = _Checker()
    checker.feed(text)
    checker.close()
    assert not checker.errors, checker.errors[:5]
    assert not checker.stack, checker.stack
    assert checker.scripts == 0 and not checker.external, checker.external[:3]
    assert all(i.get("alt") for i in checker.imgs)
    return checker


def chromium_binary() -> str | None:
    """Debian's chromium (or chromium-browser) on PATH."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium with the flags of the brief (no network, no first-run UI)."""
    exe = chromium_binary()
    assert exe is not None
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


IMG_PROBE = ("<script>window.addEventListener('load', function () {"
             "var imgs = Array.prototype.slice.call(document.images);"
             "var bad = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });"
             "document.title = 'IMGCHECK ' + imgs.length + ' ' + bad.length; });</script>")


def images_loaded(report: Path, tmp: Path) -> tuple[int, int]:
    """(number of images, number that failed to load) as seen by Chromium."""
    probe = tmp / ("probe-" + report.name)
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", IMG_PROBE + "</body>"),
                     encoding="utf-8")
    res = chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()],
                   tmp / "profile-dom")
    match = re.search(r"<title>IMGCHECK (\d+) (\d+)</title>", res.stdout)
    assert match, (res.returncode, res.stderr[-2000:])
    return int(match.group(1)), int(match.group(2))


def screenshot(report: Path, png: Path, tmp: Path) -> None:
    """Full-page screenshot (1280 px wide); also copied to $BIDSFM_SCREENSHOT_DIR if set."""
    res = chromium(["--window-size=1280,4000", f"--screenshot={png}", report.as_uri()],
                   tmp / "profile-shot")
    assert png.is_file() and png.stat().st_size > 10_000, res.stderr[-2000:]
    dest = os.environ.get("BIDSFM_SCREENSHOT_DIR")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(dest) / png.name)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def participant_out(tmp_path_factory, tiny_ds) -> Path:
    """sub-01 of the tiny dataset: two runs ok (with the model), ses-1 run-2 skipped."""
    out = tmp_path_factory.mktemp("reports") / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                       "-w", out.parent / "work", "--denoise-strategy", "scrubbing",
                       "--min-time", "150"])
    assert code == 0
    return out


def _write_tsv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False, na_rep="n/a")


def make_group_outputs(out: Path, n: int = 30, n_rois: int = 20, seed: int = 0) -> dict:
    """Write the group layout (docs/reports.md) with synthetic but consistent numbers."""
    rng = np.random.default_rng(seed)
    group = out / "group"
    pids = [f"sub-{i:02d}" for i in range(1, n + 1)]
    diagnosis = np.array(["ASD", "TC"])[np.arange(n) % 2]
    site = np.array(["siteA", "siteB", "siteC"])[np.arange(n) % 3]
    age = np.round(rng.uniform(8, 40, n), 1)
    participants = pd.DataFrame({"participant_id": pids, "site": site,
                                 "diagnosis": diagnosis, "age": age})
    participants.loc[3, "diagnosis"] = "n/a"  # one participant without a label
    _write_tsv(out.parent / "participants.tsv", participants)
    names = [f"CC200_{i:03d}" for i in range(1, n_rois + 1)]
    emb_cols = [f"{r}_{k}" for r in names for k in range(8)]
    shift = np.where(diagnosis == "ASD", 0.8, 0.0)[:, None]
    emb = rng.normal(size=(n, len(emb_cols))) + shift
    _write_tsv(group / f"group_desc-{DEFAULT_MODEL}_subjects_embedding.tsv",
               pd.DataFrame(emb, columns=emb_cols).assign(n_runs=2).pipe(
                   lambda f: f.insert(0, "participant_id", pids) or f))
    runs = []
    for i, p in enumerate(pids):
        for r in (1, 2):
            skipped = (i == 5 and r == 2)
            runs.append({"participant_id": p, "session_id": "n/a", "task": "rest", "run": r,
                         "status": "skipped" if skipped else "ok",
                         "reason": "only 40 s retained, below --min-time 60 s" if skipped else "",
                         "atlas": "CC200", "mean_fd": rng.gamma(2.0, 0.08),
                         "n_retained": 150})
    _write_tsv(group / "group_runs_qc.tsv", pd.DataFrame(runs))
    _write_tsv(group / "group_exclusions.tsv", pd.DataFrame([
        {"participant_id": "sub-06", "session_id": "n/a", "task": "rest", "run": 2,
         "atlas": "CC200", "stage": "run", "status": "skipped",
         "reason": "only 40 s retained, below --min-time 60 s"},
        {"participant_id": "sub-09", "session_id": "n/a", "task": "rest", "run": 1,
         "atlas": "CC200", "stage": "model", "status": "error",
         "reason": "<script>alert('x')</script> & bad"}]))
    iu = np.triu_indices(200, 1)
    r = np.tanh(rng.normal(0.05, 0.1, iu[0].size))
    _write_tsv(group / "group_atlas-CC200_qcfc.tsv", pd.DataFrame({
        "roi_a": [f"CC200_{a + 1:03d}" for a in iu[0]],
        "roi_b": [f"CC200_{b + 1:03d}" for b in iu[1]], "r": r,
        "p": rng.uniform(0, 1, r.size)}))
    (group / "group_atlas-CC200_qcfc.json").write_text(json.dumps({
        "n_participants": n, "median_abs_r": float(np.median(np.abs(r))),
        "fraction_p05": 0.07, "method": "Pearson correlation of edge FC with mean FD"}))
    # one classification target, one continuous target
    tdir = group / "target-diagnosis"
    labelled = [i for i in range(n) if participants.loc[i, "diagnosis"] != "n/a"]
    y = (diagnosis[labelled] == "ASD").astype(int)
    prob = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, y.size), 0.01, 0.99)
    _write_tsv(tdir / "predictions.tsv", pd.DataFrame({
        "participant_id": [pids[i] for i in labelled], "site": site[labelled],
        "true": diagnosis[labelled], "predicted": np.where(prob >= 0.5, "ASD", "TC"),
        "probability": prob, "fold": np.arange(y.size) % 3}))
    _write_tsv(tdir / "metrics.tsv", pd.DataFrame({
        "metric": ["auc", "balanced_accuracy", "f1"], "value": [0.81, 0.72, 0.7],
        "ci_low": [0.62, 0.55, 0.5], "ci_high": [0.95, 0.88, 0.86]}))
    (tdir / "metrics.json").write_text(json.dumps({
        "target": "diagnosis", "task_type": "binary", "classes": ["TC", "ASD"],
        "n_per_class": {"TC": 15, "ASD": 14},
        "cv": {"scheme": "leave-one-group-out (site)", "n_folds": 3, "group_column": "site"},
        "uncertainty": "29 labelled participants: the AUC's 95% CI spans 0.33; treat as "
                       "exploratory.", "metrics": {"auc": {"value": 0.81}}}))
    _write_tsv(tdir / "attention.tsv", pd.DataFrame({"name": names,
                                                     "attention": rng.normal(size=n_rois)}))
    (tdir / "figures").mkdir(parents=True, exist_ok=True)
    _png(tdir / "figures" / "roc.png", "ROC")
    (tdir / "head").mkdir()
    (tdir / "head" / "weights.safetensors").write_bytes(b"\0" * 16)
    adir = group / "target-age"
    _write_tsv(adir / "metrics.tsv", pd.DataFrame({
        "metric": ["mae", "r"], "value": [5.1, 0.4], "ci_low": [4.0, 0.1],
        "ci_high": [6.3, 0.65]}))
    (adir / "metrics.json").write_text(json.dumps({"target": "age", "task_type": "continuous",
                                                   "n": n}))
    _png(adir / "figures" / "scatter.png", "scatter")
    # normative deviation with one planted outlier
    score = rng.chisquare(5, n)
    score[7] = 60.0
    is_ref = diagnosis == "TC"
    _write_tsv(group / "normative" / "deviation.tsv", pd.DataFrame({
        "participant_id": pids, "is_reference": is_ref, "score": score,
        "percentile": 100 * rng.uniform(size=n), "p": rng.uniform(size=n)}))
    contrib = pd.DataFrame(rng.normal(size=(n, n_rois)), columns=names)
    contrib.insert(0, "participant_id", pids)
    _write_tsv(group / "normative" / "roi_contributions.tsv", contrib)
    (group / "normative" / "method.json").write_text(json.dumps(
        {"method": "Ledoit-Wolf Mahalanobis distance", "reference": "diagnosis=TC"}))
    (group / "group.json").write_text(json.dumps({
        "bidsfm_version": "0.1.0", "model": {"name": DEFAULT_MODEL, "version": "1.0.0"},
        "n_participants": n, "n_runs": 2 * n,
        "targets": [{"column": "diagnosis", "task_type": "binary",
                     "folder": "target-diagnosis"},
                    {"column": "age", "task_type": "continuous", "folder": "target-age"}],
        "participants_tsv": str(out.parent / "participants.tsv"),
        "failures": [], "normative": {"reference": "diagnosis=TC", "n_reference": 15},
        "qcfc": {"CC200": {"n_participants": n, "median_abs_r": float(np.median(np.abs(r)))}},
        "options": {"target": ["diagnosis", "age"], "group_column": "site",
                    "reference": "diagnosis=TC"}}))
    return {"n": n, "pids": pids}


def _png(path: Path, text: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_title(text)
    fig.savefig(path, dpi=60)
    plt.close(fig)


@pytest.fixture(scope="module")
def group_out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("group") / "out"
    make_group_outputs(out)
    return out


# --------------------------------------------------------------------------- subject report
@pytest.mark.skipif(not HAS_MODEL, reason="bundled model not present")
def test_subject_report_content(participant_out):
    path = write_subject_report(participant_out, "sub-01")
    assert path == participant_out / "sub-01.html"
    assert normalize_subject("01") == normalize_subject("sub-01") == "01"
    text = path.read_text(encoding="utf-8")
    checker = check_html(text)
    # two ok runs: carpet, FC, coverage, atlas placement, glass brain each; the skipped run
    # has none
    assert len(checker.imgs) == 10
    assert all(i["src"].startswith("data:image/png;base64,") for i in checker.imgs)
    assert text.count('alt="carpet plot"') == 2 and text.count('alt="FC matrix"') == 2
    assert text.count('alt="attention glass brain"') == 2
    assert "ses-1 task-rest run-2" in text and "below --min-time 150 s" in text
    assert '<span class="status-skipped">skipped</span>' in text
    assert "not clinical diagnoses" in text and "leave-one-site-out" in text
    assert "P(ASD)" in text and "diagnosis" in text
    assert not list(participant_out.glob(".sub-01*.tmp*"))


@pytest.mark.skipif(not HAS_MODEL, reason="bundled model not present")
def test_subject_report_missing_pieces(participant_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(participant_out, out)
    func = out / "sub-01" / "ses-1" / "func"
    # run-1: glass-brain PNG removed -> rendered from the statmap
    for png in (out / "sub-01" / "figures").glob("*ses-1*run-1*.png"):
        png.unlink()
    # ses-2: as with --model none (no model files, no model columns)
    ses2 = out / "sub-01" / "ses-2" / "func"
    for f in ses2.glob("*_desc-bidsfmfc_*"):
        f.unlink()
    qc2 = next(ses2.glob("*_qc.tsv"))
    table = pd.read_csv(qc2, sep="\t", keep_default_na=False)
    table.drop(columns=["model", "model_status", "model_reason"]).to_csv(qc2, sep="\t",
                                                                          index=False)
    (next(ses2.glob("*_stat-coverage_bold.tsv"))).write_bytes(b"\x00\xff garbage")
    # an interrupted run: time series written, QC table not yet
    extra = func / "sub-01_ses-1_task-rest_run-3_space-MNI152NLin2009cAsym_atlas-CC200"
    shutil.copy(next(func.glob("*run-1*_stat-mean_timeseries.tsv")),
                str(extra) + "_stat-mean_timeseries.tsv")
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    checker = check_html(text)
    assert "No model outputs for this run" in text
    assert "no QC table" in text and '<span class="status-incomplete">' in text
    assert "_stat-coverage_bold.tsv: cannot be read" in text or "coverage" in text
    assert text.count('alt="attention glass brain"') == 1  # rendered from the statmap
    assert len(checker.imgs) >= 6


def test_subject_report_errors(tmp_path):
    with pytest.raises(ConfigError, match="not a BIDS label"):
        write_subject_report(tmp_path, "../etc")
    with pytest.raises(InputDataError, match="sub-99"):
        write_subject_report(tmp_path, "99")
    (tmp_path / "sub-98").mkdir()
    text = write_subject_report(tmp_path, "98").read_text(encoding="utf-8")
    check_html(text)
    assert "no run outputs" in text


# --------------------------------------------------------------------------- group report
def test_group_report_content(group_out):
    path = write_group_report(group_out)
    assert path == group_out / "group.html"
    text = path.read_text(encoding="utf-8")
    checker = check_html(text)
    # FD histogram, embedding map, ROC, scatter, deviation histogram, QC-FC histogram
    assert len(checker.imgs) == 6
    for anchor in ("cohort", "embedding", "target-diagnosis", "target-age", "normative",
                   "qcfc", "exclusions"):
        assert f'id="{anchor}"' in text
    assert "0.81" in text and "0.62" in text  # metric with its CI
    assert "leave-one-group-out (site)" in text and "diagnosis (binary)" in text
    assert "treat as exploratory" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; bad" in text
    assert "sub-08" in text  # the planted most deviant participant is listed
    assert text.index("sub-08") < text.index("Excluded runs")
    assert "median |r|" in text


def test_group_report_omits_missing_parts(group_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(group_out, out)
    shutil.rmtree(out / "group" / "normative")
    for f in (out / "group").glob("group_atlas-*_qcfc.*"):
        f.unlink()
    (out / "group" / "target-diagnosis" / "metrics.tsv").unlink()
    (out / "group" / "group.json").write_text("{not json")
    text = write_group_report(out).read_text(encoding="utf-8")
    check_html(text)
    assert "Normative deviation omitted" in text and "QC-FC omitted" in text
    assert "Metric table omitted" in text and "group.json: cannot be read" in text
    with pytest.raises(InputDataError, match="group"):
        write_group_report(tmp_path / "nothing")


@pytest.mark.skipif(not HAS_MODEL, reason="bundled model not present")
def test_real_group_level_writes_report(participant_out, tiny_ds, capsys):
    """The group level (bidsfm.group) on real participant outputs calls the report writers."""
    pytest.importorskip("bidsfm.group.run")
    code, log = run_cli([tiny_ds["root"], participant_out, "group"], capsys)
    assert code == 0, log[-2000:]
    text = (participant_out / "group.html").read_text(encoding="utf-8")
    checker = check_html(text)
    assert len(checker.imgs) >= 1  # the mean-FD histogram
    assert "below --min-time 150 s" in text  # the skipped run is in the exclusions
    assert "needs at least 3" in text  # one participant: no embedding map, said so
    citation = (participant_out / "logs" / "CITATION.md").read_text(encoding="utf-8")
    assert "scrubbing" in citation and "less than 150 s" in citation  # recorded options
    record = json.loads((participant_out / "group" / "group.json").read_text())
    # only what the group level did is described (QC-FC needs several participants)
    assert ("Power et al. 2015" in citation) == bool(record.get("qcfc"))
    assert "Prediction heads" not in citation


def test_pca_matches_sklearn():
    from sklearn.decomposition import PCA

    from bidsfm.reports.group import pca_2d

    x = np.random.default_rng(3).normal(size=(25, 40))
    scores, explained = pca_2d(x)
    ref = PCA(n_components=2, svd_solver="full").fit(x)
    ref_scores = ref.transform(x)
    for k in range(2):
        sign = np.sign(scores[:, k] @ ref_scores[:, k])
        np.testing.assert_allclose(sign * scores[:, k], ref_scores[:, k], atol=1e-10)
    np.testing.assert_allclose(explained, ref.explained_variance_ratio_, rtol=1e-10)


# --------------------------------------------------------------------------- CITATION.md
def test_citation_from_options(tmp_path):
    (tmp_path / "dataset_description.json").write_text(json.dumps({
        "Name": "x", "GeneratedBy": [{"Name": "bidsfm"}, {"Name": "fMRIPrep",
                                                          "Version": "23.2.0"}]}))
    path = write_citation(tmp_path, {"atlas": ["CC200"], "strategy": "scrubbing",
                                     "fd_thresh": 0.3, "dvars_thresh": None,
                                     "lower_bpf": 0.01, "upper_bpf": 0.1, "min_time": 120,
                                     "model": DEFAULT_MODEL if HAS_MODEL else "none"})
    assert path == tmp_path / "logs" / "CITATION.md"
    text = path.read_text(encoding="utf-8")
    assert "fMRIPrep 23.2.0 (Esteban et al. 2019)" in text
    assert "framewise displacement above 0.3 mm" in text  # override of the preset's 0.5
    assert "standardised DVARS above 1.5" in text and "0.01-0.1 Hz band-pass" in text
    assert "less than 120 s" in text
    for ref in ("Craddock R.C., James G.A.", "Gorgolewski K.J. et al. (2016)",
                "Gorgolewski K. et al. (2011)", "Yarkoni T. et al. (2019)",
                "Abraham A. et al. (2014)", "Power J.D., Barnes K.A."):
        assert ref in text
    if HAS_MODEL:
        assert "Yang Y. et al. (2024) BrainMass" in text and "Di Martino A. et al. (2014)" in text
        assert "Sundararajan M." in text
    assert "Schaefer A." not in text and "Dong Z." not in text and "Ledoit" not in text
    assert not list((tmp_path / "logs").glob(".*tmp*"))


def test_citation_group_and_other_models(tmp_path):
    card = {"name": "jepa", "version": "0.1", "family": "brainjepa",
            "atlas": {"name": "Schaefer400x17"}}
    text = write_citation(tmp_path, {"atlases": ["Tian3"], "strategy": "compcor",
                                     "model": card, "analysis_level": "group",
                                     "targets": ["diagnosis"], "group_column": "site",
                                     "reference": "diagnosis=TC"}).read_text(encoding="utf-8")
    assert "Dong Z. et al. (2024) Brain-JEPA" in text and "Schaefer A. et al. (2018)" in text
    assert "Tian Y., Margulies D.S." in text and "Behzadi Y." in text
    assert "Ledoit O., Wolf M. (2004)" in text and "Pedregosa F." in text
    assert "Esteban" not in text  # the input tool is unknown here
    assert "Yang Y." not in text


def test_citation_describes_what_the_group_level_did(group_out, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(group_out, out)
    opts = {"level": "group", "target": ["diagnosis", "age", "sex"], "group_column": "site",
            "reference": "diagnosis=TC", "no_qcfc": False, "model": "none"}
    text = write_citation(out, opts).read_text(encoding="utf-8")
    methods = text.split("## Options used")[0]
    # sex was requested but not analysed (absent from group.json): not described
    assert "diagnosis (binary; leave-one-group-out (site), 3 folds), age (continuous)" in methods
    assert "sex" not in methods
    assert "Ledoit O., Wolf M. (2004)" in text and "Ciric R. et al. (2017)" in text
    record = json.loads((out / "group" / "group.json").read_text())
    record.update(normative=None, qcfc={})  # both failed
    (out / "group" / "group.json").write_text(json.dumps(record))
    text = write_citation(out, opts).read_text(encoding="utf-8")
    assert "Ledoit" not in text and "QC-FC" not in text.split("## Options used")[0]


# --------------------------------------------------------------------------- Chromium
@pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary on PATH "
                    "(apt-get install chromium); the CI installs it")
@pytest.mark.skipif(not HAS_MODEL, reason="bundled model not present")
def test_reports_render_in_chromium(participant_out, group_out, tmp_path):
    subject = participant_out / "sub-01.html"  # written by the participant level
    if not subject.is_file():
        subject = write_subject_report(participant_out, "01")
    group = write_group_report(group_out)
    for report, expected in ((subject, 10), (group, 6)):
        n, bad = images_loaded(report, tmp_path)
        assert (n, bad) == (expected, 0), report
    screenshot(subject, tmp_path / "report_sub-01.png", tmp_path)
    screenshot(group, tmp_path / "report_group.png", tmp_path)
