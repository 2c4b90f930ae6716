"""Resource limits: a run estimated to need more memory than ``--mem-mb`` fails up front."""

from __future__ import annotations

import re

import nibabel as nib
from faultkit import assert_clean, assert_one_error, assert_run_failed, assert_run_ok, make_case

from bidsfm.extract import BASE_MEMORY_MB, estimate_memory_mb


def test_estimate_grows_with_data():
    small = estimate_memory_mb((10, 10, 10, 100), 100)
    assert small >= BASE_MEMORY_MB
    assert estimate_memory_mb((97, 115, 97, 100), 100) > small  # bigger volumes
    assert estimate_memory_mb((10, 10, 10, 100_000), 400) > small  # longer runs, more ROIs
    assert estimate_memory_mb((10, 10, 10), 100) <= small  # a 3D shape counts one volume


def test_scheduler_hint_uses_the_same_estimate(tiny_ds):
    from bidsfm.discovery import BoldRun
    from bidsfm.workflow import _estimate_mem_gb

    run = tiny_ds["runs"][0]
    bold = BoldRun(entities={"subject": run["subject"], "task": run["task"]},
                   space="MNI152NLin2009cAsym", bold=run["bold"], mask=run["mask"],
                   confounds=run["confounds"], confounds_json=None, repetition_time=2.0)
    shape = nib.load(run["bold"]).shape
    assert _estimate_mem_gb(bold) == round(estimate_memory_mb(shape) / 1024, 2)


def test_mem_mb_too_small_fails_runs_with_the_figure(tmp_path, tiny_ds, capsys):
    """``--mem-mb 64``: each run fails on one line naming its BOLD file and the figure to rerun
    with (exit 1, QC error, nothing else written); rerunning with that figure processes them."""
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli("--mem-mb", "64", capsys=capsys)
    assert code == 1
    needs = []
    for run in range(2):
        line = assert_one_error(log, case.path(run, "bold"), "--mem-mb is 64",
                                "Rerun with --mem-mb >=")
        needs.append(int(re.search(r"--mem-mb >= (\d+)", line).group(1)))
        assert_run_failed(case, run, "--mem-mb")
    assert_clean(case.out)
    code, log = case.cli("--mem-mb", str(max(needs)), capsys=capsys)
    assert code == 0, log
    for run in range(2):
        assert_run_ok(case, run)


def test_mem_mb_must_be_positive(tmp_path, tiny_ds, capsys):
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli("--mem-mb", "0", capsys=capsys)
    assert code == 2 and "--mem-mb" in log
    assert not case.out.exists()
