"""Reports without figures, and figures drawn again from the outputs on disk (issue 16).

``write_subject_report(..., figures=False)`` (the participant level's ``--no-figures``) writes
the tables with a note in place of each figure and never imports matplotlib;
``redraw_figures`` (``--reports-only``) draws the attention PNGs from the statmaps written
earlier, without reprocessing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_reports import HAS_MODEL, check_html, participant_out  # noqa: F401 (fixture)

from bidsfm.errors import InputDataError
from bidsfm.reports import write_subject_report
from bidsfm.reports.subject import NO_FIGURES, redraw_figures


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_report_without_figures(participant_out, tmp_path):  # noqa: F811
    """No image at all, a note where each figure was, tables kept, matplotlib not imported."""
    out = _copy(participant_out, tmp_path)
    code = textwrap.dedent(f"""
        import json, sys
        from bidsfm.reports import write_subject_report
        path = write_subject_report({str(out)!r}, "01", figures=False)
        print(json.dumps({{"path": str(path), "mpl": "matplotlib" in sys.modules}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["mpl"] is False
    text = Path(info["path"]).read_text(encoding="utf-8")
    checker = check_html(text)
    assert checker.imgs == []
    note = NO_FIGURES.split(".")[0]
    # two ok runs: one note for the signal figures, one for the glass brain (with the model)
    assert text.count(note) == (4 if HAS_MODEL else 2)
    assert "Quality control" in text and "retained volumes" in text
    if HAS_MODEL:
        assert "top ROIs by |integrated-gradients attribution|" in text
    # the skipped run still says why it has nothing, not "figures not drawn"
    assert "not processed past QC" in text


def test_report_with_figures_is_unchanged_by_default(participant_out, tmp_path):  # noqa: F811
    out = _copy(participant_out, tmp_path)
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert NO_FIGURES.split(".")[0] not in text
    assert text.count('alt="carpet plot"') == 2


@pytest.mark.skipif(not HAS_MODEL, reason="no bundled model")
def test_redraw_figures_from_statmaps(participant_out, tmp_path):  # noqa: F811
    """The attention PNGs come back from the statmaps; nothing else is touched."""
    out = _copy(participant_out, tmp_path)
    figures_dir = out / "sub-01" / "figures"
    names = sorted(p.name for p in figures_dir.glob("*_attention.png"))
    assert len(names) == 2  # the two ok runs (placement figures are drawn while processing)
    shutil.rmtree(figures_dir)
    before = _files(out)
    written, problems = redraw_figures(out, "sub-01")
    assert problems == []
    assert sorted(p.name for p in written) == names
    assert all(p.parent == figures_dir for p in written)
    after = _files(out)
    assert {k: v for k, v in after.items() if not k.endswith(".png")} == before
    assert all(after[str(p.relative_to(out))].startswith(b"\x89PNG") for p in written)
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert text.count('alt="attention glass brain"') == 2


@pytest.mark.skipif(not HAS_MODEL, reason="no bundled model")
def test_redraw_figures_goes_on_after_a_bad_statmap(participant_out, tmp_path):  # noqa: F811
    out = _copy(participant_out, tmp_path)
    shutil.rmtree(out / "sub-01" / "figures")
    statmaps = sorted(out.rglob("*_statmap.nii.gz"))
    statmaps[0].write_bytes(b"not a nifti")
    written, problems = redraw_figures(out, "01")
    assert len(written) == 1 and len(problems) == 1
    assert statmaps[0].name in problems[0]


def test_redraw_figures_needs_the_participant(tmp_path):
    with pytest.raises(InputDataError, match="sub-02"):
        redraw_figures(tmp_path, "02")


# --------------------------------------------------------------------------- command line
_JOB = """
import json, sys
from bidsfm.cli import main
code = 0
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"matplotlib", "torch", "nipype",
                                                          "bids", "nilearn", "sklearn"})
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _job(args: list) -> dict:
    """Run ``bidsfm ARGS`` in a fresh process; exit code and heavy modules it imported."""
    res = subprocess.run([sys.executable, "-c", _JOB, *[str(a) for a in args]],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    info["log"] = res.stderr
    return info


@pytest.mark.skipif(not HAS_MODEL, reason="no bundled model")
def test_cli_no_figures_then_reports_only(tiny_ds, tmp_path):
    """--no-figures: no PNG, no matplotlib; --reports-only draws them from the outputs, touches
    nothing else and needs neither the input index, Nipype nor torch."""
    out = tmp_path / "out"
    job = _job([tiny_ds["root"], out, "participant", "--participant-label", "02", "-w",
                tmp_path / "work", "--no-figures", "--min-time", "0"])
    assert job["code"] == 0, job["log"][-2000:]
    assert "matplotlib" not in job["heavy"]
    assert list(out.rglob("*.png")) == []
    sidecars = sorted(out.rglob("*_embedding.json"))
    assert len(sidecars) == 2
    assert all(json.loads(p.read_text())["Precision"] == "float32" for p in sidecars)
    text = (out / "sub-02.html").read_text(encoding="utf-8")
    assert "<img" not in text and NO_FIGURES.split(".")[0] in text
    before = _files(out)

    job = _job(["/nonexistent/input", out, "participant", "--reports-only", "-w",
                tmp_path / "work2"])
    assert job["code"] == 0, job["log"][-2000:]
    assert job["heavy"] == ["matplotlib"]  # no pybids index, Nipype, torch or nilearn
    # no pybids index, no Nipype folder: at most matplotlib's font cache (MPLCONFIGDIR)
    work2 = tmp_path / "work2"
    assert not work2.exists() or [p.name for p in work2.iterdir()] == ["matplotlib"]
    pngs = sorted(out.rglob("*.png"))
    # both runs of sub-02 have model outputs (attention) and a label atlas (placement, drawn
    # from the brain mask of the input named in DatasetLinks and the atlas copy in sourcedata)
    assert len(pngs) == 4
    assert len([p for p in pngs if p.name.endswith("_desc-placement_bold.png")]) == 2
    after = _files(out)
    changed = sorted(k for k in after if before.get(k) != after[k])
    assert all(k.endswith((".png", ".html", "CITATION.md")) for k in changed), changed
    text = (out / "sub-02.html").read_text(encoding="utf-8")
    assert text.count('alt="attention glass brain"') == 2
    assert text.count('alt="carpet plot"') == 2
    assert text.count('alt="atlas placement"') == 2
    assert "[1/1] sub-02" in job["log"]

    # a normal rerun reuses the model outputs and draws a PNG that is missing
    pngs[0].unlink()
    job = _job([tiny_ds["root"], out, "participant", "--participant-label", "02", "-w",
                tmp_path / "work", "--min-time", "0"])
    assert job["code"] == 0
    assert sorted(out.rglob("*.png")) == pngs


def test_cli_reports_only_errors(tiny_ds, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    job = _job([tiny_ds["root"], empty, "participant", "--reports-only"])
    assert job["code"] == 2 and "no bidsfm outputs" in job["log"]
    job = _job([tiny_ds["root"], empty, "group", "--reports-only"])
    assert job["code"] == 2 and "group.json" in job["log"]


def test_cli_reports_only_unknown_participant(participant_out, tmp_path):  # noqa: F811
    out = _copy(participant_out, tmp_path)
    job = _job(["/nonexistent", out, "participant", "--reports-only",
                "--participant-label", "07"])
    assert job["code"] == 2 and "sub-07" in job["log"]


def test_cli_group_reports_only(tmp_path):
    from test_reports import make_group_outputs

    out = tmp_path / "out"
    make_group_outputs(out)
    job = _job(["/nonexistent", out, "group", "--reports-only"])
    assert job["code"] == 0, job["log"][-2000:]
    assert "torch" not in job["heavy"]
    check_html((out / "group.html").read_text(encoding="utf-8"))
    assert (out / "logs" / "CITATION.md").is_file()


def test_cli_model_none_imports_no_torch(tiny_ds, tmp_path):
    """Imports (issue 16): a job without a model never imports torch, nilearn or sklearn."""
    job = _job([tiny_ds["root"], tmp_path / "out", "participant", "--participant-label",
                "02", "-w", tmp_path / "work", "--model", "none", "--min-time", "0"])
    assert job["code"] == 0, job["log"][-2000:]
    assert not set(job["heavy"]) & {"torch", "nilearn", "sklearn"}, job["heavy"]


def test_reports_only_without_the_input_says_which_placement_figures_are_missing(
        tiny_ds, tmp_path):
    """The placement figure needs the run's brain mask: when the input dataset named in
    DatasetLinks is gone, --reports-only still draws the rest, names each run whose
    placement figure it could not draw and exits 1."""
    import shutil

    src = tmp_path / "input"
    shutil.copytree(tiny_ds["root"], src)
    out = tmp_path / "out"
    job = _job([src, out, "participant", "--participant-label", "02", "-w", tmp_path / "work",
                "--no-figures", "--min-time", "0", "--model", "none"])
    assert job["code"] == 0, job["log"][-2000:]
    shutil.rmtree(src)
    job = _job(["/nonexistent/input", out, "participant", "--reports-only", "-w",
                tmp_path / "work2"])
    assert job["code"] == 1
    assert job["log"].count("atlas placement figure not drawn") == 2, job["log"][-2000:]
    assert job["log"].count("input file not found") == 2
    assert list(out.rglob("*_desc-placement_bold.png")) == []
    assert (out / "sub-02.html").is_file()


def test_reports_written_by_several_processes_equal_one(tiny_ds, tmp_path):
    """--nprocs 2: the participants' reports are written by forked workers, with a progress
    line each (its own duration); the pages equal those one process writes."""
    import logging
    import re
    from types import SimpleNamespace

    from conftest import run_cli

    from bidsfm.participant import write_reports
    from bidsfm.progress import Steps

    first = tmp_path / "first"
    code, _ = run_cli([tiny_ds["root"], first, "participant", "--participant-label", "01", "02",
                       "-w", tmp_path / "work", "--min-time", "0", "--model", "none"])
    assert code == 0
    pages = {}
    for nprocs in (1, 2):
        out = _copy(first, tmp_path / f"n{nprocs}")
        labels = sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
        assert len(labels) >= 2
        for page in out.glob("sub-*.html"):
            page.unlink()
        config = SimpleNamespace(output_dir=out,
                                 execution=SimpleNamespace(nprocs=nprocs, figures=True))
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda r, records=records: records.append(r.getMessage())
        logger = logging.getLogger(f"test.reports.{nprocs}")
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        with Steps("reports", len(labels), logger, bar=False) as steps:
            steps.labels = {}
            write_reports(config, labels, steps)
        done = [r for r in records if "written (" in r]
        assert len(done) == len(labels), records
        pages[nprocs] = {p.name: re.sub(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC", "on <time>",
                                        p.read_text(encoding="utf-8").replace(str(out), "<OUT>"))
                         for p in out.glob("sub-*.html")}
    assert pages[1] == pages[2] and len(pages[1]) >= 2
