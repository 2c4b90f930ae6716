"""The whole per-run chain against nilearn as the reference implementation.

bidsfm's time series must equal nilearn's NiftiLabelsMasker + load_confounds_strategy +
signal.clean on the same run, atlas (resampled to the run grid) and strategy, and its FC must
equal nilearn's ConnectivityMeasure(kind="correlation") with the empirical covariance.
"""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsfm.discovery import build_layout, collect_runs
from bidsfm.pipeline import ProcessingOptions, output_paths, process_run


def _run(tiny_ds, subject, run_filter):
    from pathlib import Path

    root = Path(tiny_ds["root"])
    layout = build_layout(root, [subject], None)
    runs, problems = collect_runs(layout, root, subject)
    assert not problems
    return next(r for r in runs if run_filter(r))


def _reference(run, labels_img, strategy, *, low_pass=None, high_pass=None):
    from nilearn.interfaces.fmriprep import load_confounds_strategy
    from nilearn.maskers import NiftiLabelsMasker

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base, gsr, _ = strategy.partition("+gsr")
        extra = {"global_signal": "basic"} if gsr else {}
        conf, sample_mask = load_confounds_strategy(run.bold, denoise_strategy=base, **extra)
        masker = NiftiLabelsMasker(labels_img, mask_img=run.mask, detrend=True,
                                   standardize="zscore_sample", t_r=run.repetition_time,
                                   low_pass=low_pass, high_pass=high_pass)
        ts = masker.fit_transform(run.bold, confounds=conf,
                                  sample_mask=None if sample_mask is None else sample_mask.copy())
    return ts, masker


@pytest.mark.parametrize("subject,which,strategy,bpf", [
    ("01", lambda r: r.entities.get("session") == "1" and r.entities.get("run") == "1",
     "simple", None),
    ("03", lambda r: r.entities.get("run") == "2", "scrubbing", None),
    ("02", lambda r: r.entities["task"] == "rest", "compcor", None),
    ("01", lambda r: r.entities.get("session") == "2", "simple+gsr", (0.01, 0.1)),
])
def test_timeseries_and_fc_match_nilearn(tmp_path, tiny_ds, subject, which, strategy, bpf):
    from bidsfm.atlases import resample_labels, resolve_atlas

    run = _run(tiny_ds, subject, which)
    lower, upper = bpf if bpf else (None, None)
    opts = ProcessingOptions(strategy=strategy, min_time=0, lower_bpf=lower, upper_bpf=upper)
    out = tmp_path / "out"
    (res,) = process_run(run, opts, out)
    assert res.status == "ok", res.reason
    paths = output_paths(run, "CC200", out)
    ours = pd.read_csv(paths["timeseries"], sep="\t", na_values="n/a")
    coverage = pd.read_csv(paths["coverage"], sep="\t")["coverage"].to_numpy()

    # reference: nilearn on the same atlas grid, without the ROIs we mark n/a
    atlas = resolve_atlas("CC200", space=run.space)
    img = nib.load(run.bold)
    labels, _info = resample_labels(atlas, img.affine, img.shape[:3], target_space=run.space)
    values = atlas.labels["index"].to_numpy()
    low = values[coverage < opts.min_coverage]
    labels = np.where(np.isin(labels, low), 0, labels)
    labels_img = nib.Nifti1Image(labels.astype(np.int32), img.affine)
    ref, masker = _reference(run, labels_img, strategy, low_pass=upper, high_pass=lower)

    mask = nib.load(run.mask).get_fdata() > 0
    present = np.unique(labels[mask])
    present = present[present > 0]
    assert ref.shape[1] == present.size
    cols = [int(np.flatnonzero(values == v)[0]) for v in present]
    ours_v = ours.to_numpy()[:, cols]
    assert ours.shape[0] == ref.shape[0]
    assert np.isfinite(ours_v).all()
    # every ROI not in `present` is n/a in our output (fixed column count)
    others = np.setdiff1d(np.arange(values.size), cols)
    assert np.isnan(ours.to_numpy()[:, others]).all()
    err = np.max(np.abs(ours_v - ref))
    assert err <= 1e-4 * np.max(np.abs(ref)), err

    # FC: equal to nilearn's ConnectivityMeasure on the same time series
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    fc = pd.read_csv(paths["fc"], sep="\t", index_col=0, na_values="n/a").to_numpy()
    ref_fc = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(),
                                 standardize="zscore_sample").fit_transform([ref])[0]
    assert np.max(np.abs(fc[np.ix_(cols, cols)] - ref_fc)) < 1e-4
    assert np.isnan(fc[others]).all()


def test_scrubbing_censors_heavy_motion_run(tmp_path, tiny_ds):
    run = _run(tiny_ds, "03", lambda r: r.entities.get("run") == "2")
    (res,) = process_run(run, ProcessingOptions(strategy="scrubbing", min_time=0),
                         tmp_path / "out")
    assert res.status == "ok"
    qc = pd.read_csv(output_paths(run, "CC200", tmp_path / "out")["qc"], sep="\t")
    assert qc.loc[0, "n_censored"] > 0
    assert qc.loc[0, "n_retained"] + qc.loc[0, "n_censored"] + qc.loc[0, "n_dummy"] == \
        qc.loc[0, "n_volumes"]


def test_min_time_skips_with_reason(tmp_path, tiny_ds):
    run = _run(tiny_ds, "03", lambda r: r.entities.get("run") == "1")
    (res,) = process_run(run, ProcessingOptions(min_time=1000), tmp_path / "out")
    assert res.status == "skipped"
    paths = output_paths(run, "CC200", tmp_path / "out")
    qc = pd.read_csv(paths["qc"], sep="\t")
    assert qc.loc[0, "status"] == "skipped"
    assert "--min-time" in qc.loc[0, "reason"]
    assert not paths["timeseries"].exists()


def test_process_run_does_not_import_nilearn(tmp_path, tiny_ds):
    """The per-run hot path (extraction, cleaning with a band-pass and censoring, FC) runs in a
    fresh process without importing nilearn (or scikit-learn), nor what a run does not need:
    click (the atlas command line), matplotlib and the report writers."""
    import json
    import os
    import subprocess
    import sys

    run = _run(tiny_ds, "03", lambda r: r.entities.get("run") == "2")
    code = (
        "import json, sys\n"
        "from bidsfm.discovery import BoldRun\n"
        "from bidsfm.pipeline import ProcessingOptions, process_run\n"
        "run = BoldRun.from_dict(json.loads(sys.argv[1]))\n"
        "opts = ProcessingOptions(strategy='scrubbing', min_time=0, lower_bpf=0.01,"
        " upper_bpf=0.08)\n"
        "(res,) = process_run(run, opts, sys.argv[2])\n"
        "assert res.status == 'ok', res.reason\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'nilearn', 'sklearn',"
        " 'click', 'matplotlib'} | {m for m in sys.modules if m in ('bidsfm.reports.subject',"
        " 'bidsfm.atlases.cli')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, json.dumps(run.to_dict()),
                          str(tmp_path / "out")], capture_output=True, text=True,
                         env=dict(os.environ), check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
