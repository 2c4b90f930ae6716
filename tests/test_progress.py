"""Progress lines and bars (issue 16): the user sees each step of a long job.

Off a terminal every step start and end is one log line ``[k/N] item: what``; on a terminal a
transient rich bar shows the current step and the ends are logged.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from types import SimpleNamespace

import pytest

from bidsfm import progress
from bidsfm.progress import NipypeSteps, Steps

LOG = logging.getLogger("bidsfm.test_progress")


def test_steps_off_a_terminal_log_each_start_and_end(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Steps("job", 2, LOG, bar=False) as steps:
        steps.start("run-1", "extracting")
        steps.end("run-1", "1 ok")
        steps.start("run-2", "extracting")
        steps.end("run-2", "1 error", logging.WARNING)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[1/2] run-1: extracting"
    assert lines[1].startswith("[1/2] run-1: 1 ok (") and lines[1].endswith(" s)")
    assert lines[2] == "[2/2] run-2: extracting"
    assert lines[3].startswith("[2/2] run-2: 1 error")
    assert caplog.records[3].levelno == logging.WARNING


def test_steps_on_a_terminal_draw_a_bar(caplog, monkeypatch):
    from rich.console import Console

    buf = io.StringIO()
    monkeypatch.setattr(progress, "_CONSOLE", Console(file=buf, force_terminal=True,
                                                      width=100))
    caplog.set_level(logging.INFO, logger=LOG.name)
    with Steps("participant job", 2, LOG, bar=True) as steps:
        steps.start("run-1", "extracting")
        steps._progress.refresh()
        drawn = buf.getvalue()
        steps.end("run-1", "1 ok")
    assert "participant job: run-1 (extracting)" in drawn and "0/2" in drawn
    # on a terminal the starts are in the bar, the ends in the log
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["[1/2] run-1: 1 ok"]


def _node(fullname: str, results=None, broken: bool = False):
    if broken:
        return SimpleNamespace(fullname=fullname)  # no result attribute
    return SimpleNamespace(fullname=fullname,
                           result=SimpleNamespace(outputs=SimpleNamespace(results=results)))


def test_nipype_callback_counts_only_bidsfm_nodes(caplog):
    caplog.set_level(logging.INFO, logger=LOG.name)
    labels = {"sub_01_wf.run_000_sub_01_task_rest": ("sub-01_task-rest", "extraction"),
              "sub_01_wf.encode_model": ("sub-01", "model m on 1 run(s)")}
    steps = NipypeSteps(labels, LOG, bar=False)
    with steps:
        run = _node("bidsfm_wf.sub_01_wf.run_000_sub_01_task_rest",
                    [{"status": "ok", "atlas": "CC200"}, {"status": "skipped"}])
        steps.callback(run, "start")
        steps.callback(_node("bidsfm_wf.sub_01_wf.gather_runs", []), "start")  # not counted
        steps.callback(run, "end")
        enc = _node("bidsfm_wf.sub_01_wf.encode_model", broken=True)
        steps.callback(enc, "start")
        steps.callback(enc, "exception")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[1/2] sub-01_task-rest: extraction"
    assert lines[1].startswith("[1/2] sub-01_task-rest: 1 ok, 1 skipped (")
    assert lines[2] == "[2/2] sub-01: model m on 1 run(s)"
    assert lines[3].startswith("[2/2] sub-01: crashed") and caplog.records[3].levelno == 40
    assert steps.done_count == 2


def test_nipype_callback_never_raises():
    steps = NipypeSteps({"a.b": ("x", "y")}, LOG, bar=False)
    steps.callback(object(), "start")  # no fullname at all
    steps.callback(_node("w.a.b", broken=True), "end")  # no result: "finished"
    assert steps.done_count == 1


def test_demo_generator_reports_each_participant(tmp_path, caplog):
    from bidsfm.demo import make_fmriprep_dataset

    caplog.set_level(logging.INFO, logger="bidsfm.demo")
    make_fmriprep_dataset(tmp_path / "ds", size="tiny", n_subjects=2, atlas="procedural")
    lines = [r.getMessage() for r in caplog.records if r.name == "bidsfm.demo"]
    assert [x.split(":")[0] for x in lines] == ["[1/2] sub-01"] * 2 + ["[2/2] sub-02"] * 2
    assert "run(s) written" in lines[1]


@pytest.mark.parametrize("argv", [["--size", "tiny", "--n-subjects", "2",
                                   "--atlas", "procedural"]])
def test_demo_command_line_prints_progress(tmp_path, argv):
    res = subprocess.run([sys.executable, "-m", "bidsfm.demo", str(tmp_path / "ds"), *argv],
                         capture_output=True, text=True, check=True)
    assert "[1/2] sub-01: simulating" in res.stderr
    assert "[2/2] sub-02:" in res.stderr and "run(s) written" in res.stderr



def test_participant_level_reports_each_run(tiny_ds, tmp_path, capsys):
    """One line when each run, the model stage and the report start and end (off a terminal)."""
    from conftest import run_cli

    code, log = run_cli([tiny_ds["root"], tmp_path / "out", "participant",
                         "--participant-label", "02", "-w", tmp_path / "work", "--model",
                         "none", "--min-time", "0"], capsys)
    assert code == 0, log[-2000:]
    lines = [line.split(" INFO ", 1)[1] for line in log.splitlines() if " INFO [" in line]
    assert lines[0] == "[1/3] sub-02_task-nback: extraction, denoising, connectivity"
    assert lines[1].startswith("[1/3] sub-02_task-nback: 1 ok (")
    assert lines[2] == "[2/3] sub-02_task-rest_run-1: extraction, denoising, connectivity"
    assert lines[3].startswith("[2/3] sub-02_task-rest_run-1: 1 ok (")
    assert lines[4] == "[3/3] sub-02: HTML report"
    assert lines[5].startswith("[3/3] sub-02: sub-02.html written (")
