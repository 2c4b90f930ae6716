"""Three participant jobs started at once on one output folder (a SLURM array)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from faultkit import assert_clean, run_outputs


def test_parallel_participant_jobs(tmp_path, tiny_ds):
    out = tmp_path / "out"
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    procs = {}
    for label in ("01", "02", "03"):
        cmd = [sys.executable, "-m", "bidsfm.cli", str(tiny_ds["root"]), str(out), "participant",
               "--participant-label", label, "-w", str(tmp_path / f"work{label}"),
               "--min-time", "0", "--model", "none"]
        procs[label] = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    logs = {label: proc.communicate(timeout=300)[0] for label, proc in procs.items()}
    for label, proc in procs.items():
        assert proc.returncode == 0, (label, logs[label][-2000:])
        assert "Traceback" not in logs[label]
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative"
    assert [g["Name"] for g in desc["GeneratedBy"]][:2] == ["bidsfm", "fMRIPrep"]
    for run in tiny_ds["runs"]:
        for path in run_outputs(out, run):
            assert path.is_file(), path
    top = sorted(p.name for p in out.iterdir())
    assert top == [".bidsignore", ".dataset_description.json.lock", "README.md",
                   "dataset_description.json", "logs", "sourcedata", "sub-01", "sub-01.html",
                   "sub-02", "sub-02.html", "sub-03", "sub-03.html"]
    assert_clean(out)
