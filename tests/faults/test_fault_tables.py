"""Fault injection on confounds tables and sidecars, and runs with too little data."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from faultkit import (
    assert_clean,
    assert_one_error,
    assert_run_failed,
    assert_run_ok,
    make_case,
    replace_nifti,
)


def _edit_confounds(case, edit) -> None:
    path = case.path(0, "confounds")
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    edit(table).to_csv(path, sep="\t", index=False, na_rep="n/a")


def _drop_translations(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c.startswith("trans_")])


def _drop_rows(table: pd.DataFrame) -> pd.DataFrame:
    return table.iloc[:-5]


def _text_value(table: pd.DataFrame) -> pd.DataFrame:
    table["rot_x"] = table["rot_x"].astype(object)
    table.loc[7, "rot_x"] = "abc"
    return table


CONFOUND_FAULTS = {
    "missing_columns": (_drop_translations, ("lacks", "trans_x", "unmodified")),
    "wrong_row_count": (_drop_rows, ("95 rows", "100 volumes", "same sub/ses/task/run")),
    "non_numeric": (_text_value, ("rot_x", "'abc'", "volume 7", "as fMRIPrep wrote it")),
}


@pytest.mark.parametrize("fault", sorted(CONFOUND_FAULTS))
def test_bad_confounds(fault, tmp_path, tiny_ds, capsys):
    case = make_case(tiny_ds, tmp_path)
    edit, words = CONFOUND_FAULTS[fault]
    _edit_confounds(case, edit)
    code, log = case.cli(capsys=capsys)
    assert code == 1
    assert_one_error(log, case.path(0, "confounds"), *words)
    assert_run_failed(case, 0, words[0])
    assert_run_ok(case, 1)
    assert_clean(case.out)


@pytest.mark.parametrize("value", [0, -2.0, "two", 2000, True, 1e-300])
def test_bad_repetition_time(value, tmp_path, tiny_ds, capsys):
    """A RepetitionTime that cannot be a TR of fMRI (not a number, not positive, outside 0.05 s
    to 30 s: 2000 meaning ms, true, 1e-300): one line naming the sidecar and the accepted
    range; the run is not processed (reported at discovery, so it has no QC table); the other
    run is; exit 1."""
    case = make_case(tiny_ds, tmp_path)
    sidecar = case.path(0, "bold_json")
    meta = json.loads(sidecar.read_text())
    meta["RepetitionTime"] = value
    sidecar.write_text(json.dumps(meta))
    code, log = case.cli(capsys=capsys)
    assert code == 1
    assert_one_error(log, sidecar, "RepetitionTime", "seconds", "0.05 s to 30 s")
    assert not any(p.exists() for p in case.outputs(0))
    assert_run_ok(case, 1)
    assert_clean(case.out)


def test_missing_repetition_time_everywhere(tmp_path, tiny_ds, capsys):
    """No RepetitionTime in the sidecar and none in the NIfTI header (pixdim[4] = 0): one line
    naming the sidecar; exit 1. (With the header's TR present, it is used: see
    tests/test_inputs.py::test_tr_from_nifti_header_and_recorded.)"""
    case = make_case(tiny_ds, tmp_path)
    sidecar = case.path(0, "bold_json")
    meta = json.loads(sidecar.read_text())
    del meta["RepetitionTime"]
    sidecar.write_text(json.dumps(meta))
    bold = case.path(0, "bold")
    img = nib.load(str(bold))
    img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
    img.header["pixdim"][4] = 0.0
    replace_nifti(bold, img)
    code, log = case.cli(capsys=capsys)
    assert code == 1
    assert_one_error(log, sidecar, "RepetitionTime is missing", "Add RepetitionTime (seconds)")
    assert_run_ok(case, 1)
    assert_clean(case.out)


def test_fewer_volumes_than_regressors(tmp_path, tiny_ds, capsys):
    """A 12-volume run with the 27 regressors of 'simple': one line, run failed, exit 1."""
    case = make_case(tiny_ds, tmp_path)
    bold = case.path(0, "bold")
    img = nib.load(bold)
    replace_nifti(bold, nib.Nifti1Image(np.asarray(img.dataobj)[..., :12], img.affine,
                                        img.header))
    _edit_confounds(case, lambda t: t.iloc[:12])
    code, log = case.cli(capsys=capsys)
    assert code == 1
    assert_one_error(log, case.path(0, "confounds"), "volumes are retained for",
                     "regressors", "fewer regressors")
    assert_run_failed(case, 0, "regressors")
    assert_run_ok(case, 1)
    assert_clean(case.out)


def test_every_volume_censored(tmp_path, tiny_ds, capsys):
    """Scrubbing at FD > 0.0001 mm censors every volume of both runs: one line each, exit 1."""
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli("--denoise-strategy", "scrubbing", "--fd-thresh", "0.0001",
                         capsys=capsys)
    assert code == 1
    for run in range(2):
        assert_one_error(log, case.path(run, "confounds"), "every volume is removed",
                         "relax the FD/DVARS thresholds")
        assert_run_failed(case, run, "every volume is removed")
    assert_clean(case.out)
