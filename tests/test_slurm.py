"""The SLURM recipe on a real single-node SLURM cluster started by the test.

scripts/start_slurm.sh starts munged, slurmctld and slurmd (Debian's slurm-wlm + munge, as root,
state in a temporary folder, free ports); workflows/slurm/submit_cohort.sh submits the tiny
demo cohort (2 participants) as an array job plus the dependent group job; the test waits for
them, checks every participant's outputs, the job states, and that the group job started only
after the last array task ended. scripts/stop_slurm.sh stops the daemons at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150

pytestmark = [
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="slurmctld not installed (Debian: apt-get install slurm-wlm munge)"),
    pytest.mark.skipif(shutil.which("munged") is None,
                       reason="munged not installed (Debian: apt-get install munge)"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0,
                       reason="a test SLURM cluster needs root (munged runs as munge, slurmd "
                              "as root)"),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A running single-node SLURM cluster; yields the environment that talks to it."""
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, SLURM_CTLD_PORT=str(_free_port()), SLURMD_PORT=str(_free_port()))
    start = subprocess.run(["bash", str(REPO / "scripts" / "start_slurm.sh"), str(state)],
                           env=env, capture_output=True, text=True, timeout=90)
    try:
        assert start.returncode == 0, f"start_slurm.sh failed: {start.stderr}"
        env["SLURM_CONF"] = str(state / "slurm.conf")
        env.setdefault("LOGNAME", "root")  # Nipype's SLURM plugin and sbatch want it
        yield env
    finally:
        subprocess.run(["bash", str(REPO / "scripts" / "stop_slurm.sh"), str(state)], env=env,
                       capture_output=True, text=True, timeout=60)


def _job(env: dict, job_id: str) -> dict[str, str]:
    """``scontrol show job -o`` as a dict (one record; array tasks are queried one by one)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0]))


def _array_tasks(env: dict, array_id: str) -> list[dict[str, str]]:
    out = subprocess.run(["scontrol", "-o", "show", "job", array_id], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in out.splitlines() if line]


def _when(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S")


def test_submit_cohort_on_real_slurm(slurm, tmp_path, session_env, shared_data):
    from bidsfm.demo import make_fmriprep_dataset

    manifest = make_fmriprep_dataset(tmp_path / "fmriprep", size="tiny", n_subjects=2, seed=3,
                                     shared_data=shared_data)
    bids = tmp_path / "fmriprep"
    out = tmp_path / "out"
    runs = {sub: sorted(p.name for p in (bids / f"sub-{sub}").rglob("*_desc-preproc_bold.nii.gz"))
            for sub in ("01", "02")}
    assert all(runs.values()), manifest
    env = dict(slurm, BIDSFM_HOME=os.environ["BIDSFM_HOME"], BIDSFM_OFFLINE="1",
               TEMPLATEFLOW_HOME=os.environ["TEMPLATEFLOW_HOME"], NIPYPE_NO_ET="1")
    bidsfm = Path(sys.executable).with_name("bidsfm")
    res = subprocess.run(
        ["bash", str(REPO / "workflows" / "slurm" / "submit_cohort.sh"), "-c", str(bidsfm),
         "-a", "--model none", "-s", "--cpus-per-task=1 --mem=1G --time=00:10:00",
         "--group-sbatch-args", "--cpus-per-task=1 --mem=1G", "-w", str(tmp_path / "work"),
         str(bids), str(out)],
        env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    array_id = re.search(r"array job (\d+):", res.stdout).group(1)
    group_id = re.search(r"group job (\d+):", res.stdout).group(1)

    deadline = time.monotonic() + TIMEOUT_S
    while True:
        queued = subprocess.run(["squeue", "-h", "-o", "%i %T"], env=env, capture_output=True,
                                text=True, timeout=30).stdout.strip()
        if not queued:
            break
        assert time.monotonic() < deadline, f"jobs still queued after {TIMEOUT_S} s: {queued}"
        time.sleep(1)

    logs = tmp_path / "work" / "slurm"
    log_text = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}"
                         for p in sorted(logs.glob("*.log")))
    tasks = _array_tasks(env, array_id)
    assert len(tasks) == 2, log_text
    for task in tasks:
        assert (task["JobState"], task["ExitCode"]) == ("COMPLETED", "0:0"), log_text
    group = _job(env, group_id)
    assert group["Dependency"] in ("(null)", ""), group
    assert (group["JobState"], group["ExitCode"]) == ("COMPLETED", "0:0"), log_text
    # the group job started only once every participant task had ended
    assert _when(group["StartTime"]) >= max(_when(t["EndTime"]) for t in tasks)

    for sub, bolds in runs.items():
        for suffix in ("_stat-mean_timeseries.tsv",
                       "_atlas-CC200_stat-pearsoncorrelation_relmat.tsv",
                       "_qc.tsv"):
            got = sorted((out / f"sub-{sub}").rglob(f"*{suffix}"))
            assert len(got) == len(bolds), (sub, suffix, log_text)
            assert all(p.stat().st_size > 0 for p in got)
        assert f"-> sub-{sub} on" in log_text
    assert (out / "dataset_description.json").is_file()
    assert (out / "group" / "group_runs_qc.tsv").is_file(), log_text
    assert not list(out.rglob("*.tmp*")), "partial files left in the output"
