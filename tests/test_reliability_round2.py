"""Reliability, round two (issue 17): resume, stray files, paths, locks, one-line errors.

Each test runs the ``bidsfm`` command line on a clone of one participant of the tiny synthetic
fMRIPrep dataset (see ``tests/faults/faultkit.py``) and checks one promise of
docs/reliability.md. Output names are read back from the output folder (``*_qc.tsv``), never
spelled here, so the tests do not depend on the naming scheme.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "faults"))

from faultkit import assert_clean, make_case  # noqa: E402


def _files(out: Path) -> set[str]:
    """Relative paths of every file under ``out`` (lock files and the per-call
    ``logs/config-<time>-<id>.json`` aside)."""
    return {str(p.relative_to(out)) for p in out.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")
            and not (p.parent.name == "logs" and p.name.startswith("config-"))}


def _statuses(out: Path) -> dict[str, str]:
    """``status`` of each run QC table under ``out``, by run prefix (``sub-03_task-rest_run-1``)."""
    got = {}
    for qc in sorted(out.rglob("sub-*_qc.tsv")):
        row = pd.read_csv(qc, sep="\t", keep_default_na=False).iloc[0]
        got[qc.name.split("_space-")[0]] = row["status"]
    return got


def test_rerun_after_output_deleted_writes_everything(tmp_path, tiny_ds, capsys):
    """The outputs on disk are the only truth: with the work folder kept, a rerun after the
    output folder was deleted writes every output again (Nipype's node cache said 'done')."""
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    first = _files(case.out)
    assert len(_statuses(case.out)) == 2
    shutil.rmtree(case.out)
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert _files(case.out) == first
    assert set(_statuses(case.out).values()) == {"ok"}
    assert_clean(case.out)


def test_transient_failure_is_retried(tmp_path, tiny_ds, capsys):
    """A failure fixed later (the participant's output folder could not be created) is not
    repeated from Nipype's cache: the rerun processes every run."""
    case = make_case(tiny_ds, tmp_path)
    case.out.mkdir()
    (case.out / "sub-03").write_text("not a folder")  # every write of sub-03 fails
    code, log = case.cli(capsys=capsys)
    assert code == 1, log
    (case.out / "sub-03").unlink()
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert _statuses(case.out) == {"sub-03_task-rest_run-1": "ok",
                                   "sub-03_task-rest_run-2": "ok"}


@pytest.mark.parametrize("spec", ["MNI152NLin2009cAsym\n", "MNI152NLin2009cAsym:res-2\n",
                                  "MNI152NLin2009cAsym:res-../x"])
def test_space_label_with_newline_or_path_refused(spec):
    """``--space`` labels are checked with a full match: a trailing newline (accepted by
    ``re.match`` with ``$``) or path characters in ``res-`` are a usage error."""
    from bidsfm.discovery import parse_space
    from bidsfm.errors import ConfigError

    with pytest.raises(ConfigError, match="invalid --space"):
        parse_space(spec)


def test_labels_are_checked_with_fullmatch():
    """The command line's and the report's label patterns are full matches: a value ending in
    a newline is not a label (``re.match`` with ``$`` accepted it)."""
    from bidsfm.cli import expand_greedy
    from bidsfm.errors import ConfigError
    from bidsfm.reports.subject import normalize_subject

    with pytest.raises(ConfigError, match="not a BIDS label"):
        normalize_subject("sub-01\n")

    from bidsfm.utils import BIDS_LABEL

    assert BIDS_LABEL.fullmatch("CC200\n") is None
    assert expand_greedy(["--participant-label", "01", "02\n"]) == [
        "--participant-label", "01", "02\n"]


def test_relative_paths_work_from_any_folder(tmp_path, tiny_ds, capsys, monkeypatch):
    """``--atlas NAME=PATH``, ``--denoise-strategy FILE``, ``--model DIR`` and a model card's
    atlas file given as relative paths (the card's relative to its folder) are made absolute
    when the command line is read: every run is processed (the Nipype nodes, each in its own
    folder, could not find them before)."""
    import json

    from bidsfm.models.registry import CARD, DEFAULT_MODEL, MODELS_DIR, list_models

    if DEFAULT_MODEL not in list_models():
        pytest.skip("bundled model not present")
    case = make_case(tiny_ds, tmp_path)
    (tmp_path / "in").mkdir()
    shutil.copy(tiny_ds["runs"][0]["labels"], tmp_path / "in" / "tiny.nii.gz")
    (tmp_path / "in" / "strategy.json").write_text(json.dumps(
        {"motion": "basic", "wm_csf": "basic"}))
    model = tmp_path / "in" / "model"
    shutil.copytree(MODELS_DIR / DEFAULT_MODEL, model)
    card = json.loads((model / CARD).read_text())
    atlas_dir = Path(__file__).resolve().parents[1] / "bidsfm" / "data" / "atlases"
    stem = f"tpl-{card['atlas']['template']}_atlas-{card['atlas']['name']}_dseg"
    shutil.copy(atlas_dir / "CC200.nii.gz", model / f"{stem}.nii.gz")
    shutil.copy(atlas_dir / "CC200.tsv", model / f"{stem}.tsv")
    card["atlas"]["user_file"] = f"{stem}.nii.gz"
    (model / CARD).write_text(json.dumps(card))
    monkeypatch.chdir(tmp_path)
    code, log = case.cli("--atlas", "tiny=in/tiny.nii.gz", "--denoise-strategy",
                         "in/strategy.json", model="in/model", capsys=capsys)
    assert code == 0, log
    qc = {p.name: pd.read_csv(p, sep="\t", keep_default_na=False).iloc[0]
          for p in case.out.rglob("sub-*_qc.tsv")}
    assert len(qc) == 4 and {r["status"] for r in qc.values()} == {"ok"}, qc
    assert {r.get("model_status") for r in qc.values() if "CC200" in r["atlas"]} == {"ok"}
    assert len(list(case.out.rglob(f"*desc-{card['name']}*embedding.tsv"))) == 2


def test_absolute_paths_of_the_command_line(tmp_path, monkeypatch):
    """Every path option is made absolute; registry names and presets are kept."""
    from bidsfm.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text("{}")
    (tmp_path / "m").mkdir()
    got = absolute_paths({
        "atlas": ("CC200", "Schaefer400", "X=a/x.nii.gz", "b/y.nii.gz", "/abs/z.nii.gz"),
        "strategy": "s.json", "model": "m", "heads": ("h", "NAME=g/h"),
        "bids_filter_file": Path("f.json"), "bids_database_dir": Path("db"),
        "participants_tsv": None, "use_plugin": None})
    assert got["atlas"] == ("CC200", "Schaefer400", f"X={tmp_path}/a/x.nii.gz",
                            f"{tmp_path}/b/y.nii.gz", "/abs/z.nii.gz")
    assert got["strategy"] == f"{tmp_path}/s.json" and got["model"] == f"{tmp_path}/m"
    assert got["heads"] == (f"{tmp_path}/h", f"NAME={tmp_path}/g/h")
    assert got["bids_filter_file"] == tmp_path / "f.json"
    assert got["bids_database_dir"] == tmp_path / "db"
    for preset in ("simple", "scrubbing+gsr"):
        assert absolute_paths({"strategy": preset})["strategy"] == preset
    assert absolute_paths({"model": "auto"})["model"] == "auto"


def test_failure_qc_named_by_atlas_label_never_escapes(tmp_path, tiny_ds, monkeypatch):
    """A run whose atlas cannot be resolved gets a failure QC table named after the atlas
    name, a BIDS label: the raw spec ``X=../../x.nii.gz`` wrote folders named after it and QC
    files outside the output folder."""
    from bidsfm.discovery import build_layout, collect_runs
    from bidsfm.pipeline import ProcessingOptions, process_run

    root = Path(tiny_ds["root"])
    runs, _ = collect_runs(build_layout(root, ["03"], None), root, "03")
    out = tmp_path / "a" / "b" / "out"
    monkeypatch.chdir(tmp_path)
    opts = ProcessingOptions(atlases=["X=../../x.nii.gz", "../y/Sch.nii.gz"], min_time=0)
    results = process_run(runs[0], opts, out)
    assert [(r.atlas, r.status) for r in results] == [("X", "error"), ("Sch", "error")]
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(out in p.parents for p in written), written
    names = sorted(p.name for p in written)
    assert len(names) == 4 and all("=" not in n and ".." not in n for n in names), names
    assert all("-X_" in n or "-Sch_" in n for n in names), names


def test_group_level_into_the_input_refused(tmp_path, tiny_ds, capsys):
    """``bidsfm DS DS group`` (OUTPUT_DIR = the input) is refused as the participant level
    refuses it: it wrote ``group/``, ``group.html`` and ``logs/`` into the input dataset."""
    from conftest import run_cli
    from faultkit import error_lines, tree_state

    case = make_case(tiny_ds, tmp_path)
    before = tree_state(case.ds)
    for out in (case.ds, case.ds / "derivatives" / "bidsfm"):
        code, log = run_cli([case.ds, out, "group"], capsys)
        assert code == 2, log
        lines = error_lines(log)
        assert len(lines) == 1 and "inside the input dataset" in lines[0], lines
    assert tree_state(case.ds) == before


def test_bids_database_dir_inside_input_refused(tmp_path, tiny_ds, capsys):
    """``--bids-database-dir`` inside the input dataset is refused before anything is written
    (an index and a symlink view were written into the input)."""
    from faultkit import error_lines, tree_state

    case = make_case(tiny_ds, tmp_path)
    before = tree_state(case.ds)
    code, log = case.cli("--bids-database-dir", case.ds / "code" / "db", capsys=capsys)
    assert code == 2, log
    lines = error_lines(log)
    assert len(lines) == 1 and "BIDS database folder" in lines[0], lines
    assert tree_state(case.ds) == before
    assert not case.out.exists()


# --- temporary files and locks ------------------------------------------------------------

def _temp(folder: Path, stem: str, suffix: str = ".tsv") -> Path:
    """A temporary file named as bidsfm.utils.atomic_path names them."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{stem}.k1ll3d_x.tmp{suffix}"
    path.write_text("partial")
    return path


def test_temp_name_pattern_and_entity_boundary(tmp_path):
    """Only bidsfm's own temporary names are removed, and a run's prefix stops at an entity
    boundary (run-1 never removes run-10's live temporary files)."""
    from bidsfm.utils import atomic_path, remove_stale_temps, temp_stem

    with atomic_path(tmp_path / "sub-01_task-rest_run-1_relmat.tsv") as tmp:
        assert temp_stem(tmp.name) == "sub-01_task-rest_run-1_relmat"
    own = _temp(tmp_path, "sub-01_task-rest_run-1_stat-mean_timeseries")
    run10 = _temp(tmp_path, "sub-01_task-rest_run-10_stat-mean_timeseries")
    users = [tmp_path / n for n in ("notes.tmp.txt", ".sub-01_task-rest_run-1.tmp",
                                    ".sub-01_task-rest_run-1_x.tmp.tsv", "a.k1ll3d_x.tmp.tsv")]
    for p in users:
        p.write_text("mine")
    assert remove_stale_temps(tmp_path, "sub-01_task-rest_run-1") == 1
    assert not own.exists() and run10.exists() and all(p.exists() for p in users)
    assert remove_stale_temps(tmp_path) == 1 and not run10.exists()
    assert all(p.exists() for p in users)


def test_rerun_removes_stale_temporary_files(tmp_path, tiny_ds, capsys):
    """A successful rerun removes the temporary files a killed job left in the participant's
    folder, of its report and of the shared files; a user's files and another participant's
    temporary files are kept."""
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    sub = case.out / "sub-03"
    stale = [_temp(sub / "func", "sub-03_task-rest_run-1_space-X_relmat"),
             _temp(sub / "func", "sub-03_task-rest_run-2_qc", ".json"),
             _temp(sub / "figures", "sub-03_task-rest_run-1_desc-x", ".png"),
             _temp(case.out, "sub-03", ".html"), _temp(case.out / "logs", "CITATION", ".md"),
             _temp(case.out, "dataset_description", ".json"), _temp(case.out, "README", ".md"),
             _temp(case.out, ""),  # .bidsignore's
             _temp(case.out / "sourcedata" / "atlases" / "tpl-X", "tpl-X_atlas-CC200_dseg",
                   ".nii.gz")]
    kept = [_temp(case.out, "sub-02", ".html"), sub / "func" / "notes.tmp.txt"]
    kept[1].write_text("a user's file")
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_busy_participant_is_left_to_its_job(tmp_path, tiny_ds, capsys):
    """Another job holding sub-03's lock: one clear line naming the lock, nothing of sub-03
    touched (not even its stale temporary files), the other participant processed; exit 1.
    Once the lock is released, a rerun processes sub-03 and leaves no lock file."""
    from conftest import clone_dataset
    from faultkit import error_lines

    from bidsfm.locks import ExclusiveLock, participant_lock_path

    case = make_case(tiny_ds, tmp_path)
    shutil.rmtree(case.ds)
    clone_dataset(tiny_ds["root"], case.ds, ["02", "03"])
    case.out.mkdir()
    live = _temp(case.out / "sub-03" / "func", "sub-03_task-rest_run-1_relmat")
    other = ExclusiveLock(participant_lock_path(case.out, "03"))
    assert other.acquire(timeout=0)
    try:
        code, log = case.cli("--participant-label", "02", capsys=capsys)
        assert code == 1, log
        assert "Traceback" not in log
        lines = error_lines(log)
        assert len(lines) == 1, lines
        assert "another bidsfm job is processing sub-03 (lock " in lines[0], lines
        assert str(other.path) in lines[0] and f"pid {os.getpid()}" in lines[0]
        assert live.exists()
        assert set(_statuses(case.out).values()) == {"ok"}
        assert {k.split("_")[0] for k in _statuses(case.out)} == {"sub-02"}
    finally:
        other.release()
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert _statuses(case.out)["sub-03_task-rest_run-1"] == "ok"
    assert not list(case.out.glob(".sub-*.lock")) and not live.exists()


def test_stale_lock_file_of_a_killed_job_is_taken(tmp_path, tiny_ds, capsys):
    """A lock file left by a killed job (nobody holds its lock) does not block the rerun."""
    from bidsfm.locks import participant_lock_path

    case = make_case(tiny_ds, tmp_path)
    case.out.mkdir()
    participant_lock_path(case.out, "03").write_text("pid 1 on a-dead-node\n")
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert not participant_lock_path(case.out, "03").exists()


def test_lock_removed_on_release_is_not_shared(tmp_path):
    """A waiter that opened the lock file just before its holder removed it takes a fresh
    lock file; two holders never coexist."""
    from bidsfm.locks import ExclusiveLock

    path = tmp_path / ".sub-01.lock"
    first, second = ExclusiveLock(path), ExclusiveLock(path)
    assert first.acquire(timeout=0)
    assert not second.acquire(timeout=0.2)
    first.release()
    assert not path.exists()
    assert second.acquire(timeout=0) and path.exists()
    assert not ExclusiveLock(path).acquire(timeout=0)
    second.release()


def test_two_layouts_of_one_index_folder_do_not_share_a_database(tmp_path, tiny_ds):
    """Two jobs indexing the same participants into one --bids-database-dir (or work folder)
    at once: the second gets its own index (they shared one SQLite file: sqlite errors), which
    is removed when its job ends; the shared one stays for reuse."""
    import subprocess

    script = (
        "import sys\nfrom pathlib import Path\n"
        "from bidsfm.discovery import build_layout, collect_runs\n"
        "root, db = Path(sys.argv[1]), Path(sys.argv[2])\n"
        "layouts = [build_layout(root, ['03'], db) for _ in range(2)]\n"
        "dbs = {str(l.connection_manager.engine.url) for l in layouts}\n"
        "assert len(dbs) == 2, dbs\n"
        "for layout in layouts:\n"
        "    runs, problems = collect_runs(layout, root, '03')\n"
        "    assert len(runs) == 2 and not problems, problems\n"
        "print(len([p for p in db.iterdir() if p.name.startswith('layout-')]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_ds["root"]),
                           str(tmp_path / "db")], capture_output=True, text=True,
                          env={**os.environ, "NIPYPE_NO_ET": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "2"
    left = sorted((tmp_path / "db").iterdir())  # no private index, no lock file
    assert len(left) == 1 and "." not in left[0].name and (left[0] / "index").is_dir(), left


# --- errors that were tracebacks ----------------------------------------------------------

def _no_space(monkeypatch, where: str = ""):
    """Make every temporary file under a folder whose path holds ``where`` fail as on a full
    disk (bidsfm writes every file through one)."""
    import errno
    import tempfile

    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        folder = str(kwargs.get("dir", ""))
        if where in folder:
            raise OSError(errno.ENOSPC, "No space left on device", folder)
        return real(*args, **kwargs)

    monkeypatch.setattr("bidsfm.utils.tempfile.mkstemp", mkstemp)


def test_full_output_folder_is_one_line_exit_2(tmp_path, tiny_ds, capsys, monkeypatch):
    """An output folder that cannot be written at all (full disk): one line naming it, the
    reason and what to do; exit 2 (was 'internal error, please report' with a traceback)."""
    from faultkit import error_lines

    case = make_case(tiny_ds, tmp_path)
    _no_space(monkeypatch)
    code, log = case.cli(capsys=capsys)
    assert code == 2, log
    assert "Traceback" not in log and "internal error" not in log
    lines = error_lines(log)
    assert len(lines) == 1, lines
    assert "cannot write to the output folder" in lines[0]
    assert "No space left on device" in lines[0] and "Free disk space" in lines[0]


def test_output_folder_full_mid_job_fails_runs_on_one_line(tmp_path, tiny_ds, capsys,
                                                           monkeypatch):
    """The disk fills up once the job has started: each run fails with one line saying so
    (no traceback, no 'internal error'), exit 1; after space is freed a rerun completes."""
    case = make_case(tiny_ds, tmp_path)
    _no_space(monkeypatch, where="sub-03")
    code, log = case.cli(capsys=capsys)
    assert code == 1, log
    assert "Traceback" not in log and "internal error" not in log
    runs = [ln for ln in log.splitlines() if " ERROR " in ln]
    assert runs and all("No space left on device" in ln for ln in runs), runs
    monkeypatch.undo()
    code, log = case.cli(capsys=capsys)
    assert code == 0, log
    assert set(_statuses(case.out).values()) == {"ok"}


def test_non_finite_roi_error_names_the_roi():
    """A signal column mixing finite and non-finite values is named (ROI name, 1-based
    column); the message gave a bare 0-based index."""
    import numpy as np

    from bidsfm.denoising import clean_signals
    from bidsfm.errors import InputDataError

    x = np.random.default_rng(0).normal(size=(50, 4))
    x[7, 2] = np.nan
    with pytest.raises(InputDataError, match=r"ROI 'CC200_003', column 3 of 4, non-finite "
                                             r"in 1 of 50 volumes"):
        clean_signals(x, t_r=2.0, roi_names=["CC200_001", "CC200_002", "CC200_003", "x"])
    with pytest.raises(InputDataError, match=r"\(first: column 3 of 4,"):
        clean_signals(x, t_r=2.0)


def test_bold_sidecar_json_array_fails_that_run_only(tmp_path, tiny_ds, capsys):
    """One BOLD sidecar holding a JSON array: that run is reported on one line naming the file
    and the others go on (it stopped the whole job, for every participant)."""
    from faultkit import error_lines

    case = make_case(tiny_ds, tmp_path)
    bold = case.path(0, "bold")
    sidecar = bold.with_name(bold.name.replace(".nii.gz", ".json"))
    sidecar.unlink()
    sidecar.write_text('[{"RepetitionTime": 2.0}]')
    code, log = case.cli(capsys=capsys)
    assert code == 1, log
    assert "Traceback" not in log
    lines = error_lines(log)
    assert len(lines) == 1 and sidecar.name in lines[0] and "not an object" in lines[0], lines
    assert _statuses(case.out) == {"sub-03_task-rest_run-2": "ok"}


def test_symlink_loop_in_a_subject_folder(tmp_path, tiny_ds, capsys):
    """A folder symlink back to a folder above it (``sub-03/func/loop -> ..``) is one warning
    and is not indexed: the runs are processed once (pybids followed it, indexing every file
    again at each level: thousands of 'several BOLD files' errors, a slower job, exit 1)."""
    case = make_case(tiny_ds, tmp_path)
    (case.ds / "sub-03" / "func" / "loop").symlink_to("..", target_is_directory=True)
    (case.ds / "sub-03" / "self").symlink_to("self")  # a file link to itself: ignored
    code, log = case.cli(capsys=capsys)
    assert code == 0, log[-3000:]
    warnings = [ln for ln in log.splitlines() if " WARNING " in ln and "loop" in ln]
    assert len(warnings) == 1 and "sub-03/func/loop" in warnings[0], warnings
    assert len(log.splitlines()) < 10, log[-3000:]
    assert set(_statuses(case.out).values()) == {"ok"} and len(_statuses(case.out)) == 2


def test_symlink_loops_through_two_links(tmp_path):
    """A cycle through two links (one leaving the dataset and one coming back) is found; a
    link to a folder elsewhere is followed as before."""
    from bidsfm.discovery import symlink_loops

    sub = tmp_path / "ds" / "sub-01"
    (sub / "func").mkdir(parents=True)
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    (sub / "anat").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "back").symlink_to(sub, target_is_directory=True)
    loops = symlink_loops(sub)
    assert [(p.relative_to(sub).as_posix(), t) for p, t in loops] == [
        ("anat/back", sub.resolve())]


@pytest.mark.parametrize("content,words", [
    ('{"bold": "sub-03"}', "'bold' entry is \"sub-03\", not an object"),
    ('"task-rest"', "must hold a JSON object"),
    ('{"bold": {"foo": "x"}}', "unknown BIDS entity 'foo'"),
    ('{"bold": {"tsk": "rest"}}', "(did you mean 'task'?)"),
    ('{"bold": {"task": {"a": 1}}}', "expected a label, a number"),
    ('{"t1w": ["x"], "bold": {"task": "rest"}}', "'t1w' entry is [\"x\"]"),
])
def test_bad_bids_filter_file_is_one_line(content, words, tmp_path, tiny_ds, capsys):
    """A filter file with an unknown entity, or a string where an object is expected, is one
    line naming the file, exit 2 (was an internal error with a traceback, exit 3)."""
    from faultkit import error_lines

    case = make_case(tiny_ds, tmp_path)
    filters = tmp_path / "filters.json"
    filters.write_text(content)
    code, log = case.cli("--bids-filter-file", filters, capsys=capsys)
    assert code == 2, log
    assert "Traceback" not in log
    lines = error_lines(log)
    assert len(lines) == 1 and str(filters) in lines[0] and words in lines[0], lines
    assert not case.out.exists()


# --- every write under OUTPUT_DIR or the work folder ---------------------------------------

#: run as ``python TRACER ARGS...``: the bidsfm command line with an audit hook (PEP 578) that
#: logs every file-system write (open for writing, rename/replace, link, mkdir, remove, rmdir,
#: chmod, truncate, utime, rmtree) with its absolute path to $BIDSFM_TRACE
TRACER = '''
import os, sys
LOG = os.open(os.environ["BIDSFM_TRACE"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
SECOND = ("os.rename", "os.link", "os.symlink")
FIRST = ("os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.truncate", "os.utime",
         "shutil.rmtree")

def record(event, path):
    if path is None or isinstance(path, int):
        return
    path = os.path.abspath(os.fsdecode(os.fspath(path)))
    os.write(LOG, f"{event}\\t{path}\\n".encode())

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & FLAGS:
            record(event, path)
    elif event in SECOND:
        record(event, args[1])
    elif event in FIRST:
        record(event, args[0])

sys.addaudithook(hook)
from bidsfm.cli import main
main(sys.argv[1:])
'''


def test_every_write_is_under_output_or_work(tmp_path, tiny_ds):
    """Hostile runs traced with an audit hook: relative paths from another folder, an atlas
    name with path characters, a truncated BOLD, a symlink loop, the group level, refused
    command lines. Every file-system write is under OUTPUT_DIR or the work folder."""
    import subprocess

    ds = tmp_path / "ds"
    from conftest import clone_dataset

    clone_dataset(tiny_ds["root"], ds, ["03"])
    (ds / "sub-03" / "func" / "loop").symlink_to("..", target_is_directory=True)
    bold = next(ds.glob("sub-03/func/*run-1*desc-preproc_bold.nii.gz"))
    data = bold.read_bytes()
    bold.unlink()
    bold.write_bytes(data[: len(data) // 2])
    (tmp_path / "in").mkdir()
    shutil.copy(tiny_ds["runs"][0]["labels"], tmp_path / "in" / "tiny.nii.gz")
    (tmp_path / "in" / "strategy.json").write_text('{"motion": "basic"}')
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "tracer.py").write_text(TRACER)
    trace = tmp_path / "trace.tsv"
    env = {**os.environ, "NIPYPE_NO_ET": "1", "BIDSFM_OFFLINE": "1", "BIDSFM_TRACE": str(trace),
           "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(tmp_path / "home")}
    env.pop("MPLCONFIGDIR", None)
    out, work = tmp_path / "out", tmp_path / "work"
    runs = [
        (["../ds", "../out", "participant", "-w", "../work", "--min-time", "0",
          "--atlas", "tiny=../in/tiny.nii.gz", "--atlas", "../evil=../in/tiny.nii.gz",
          "--denoise-strategy", "../in/strategy.json"], 1),
        (["../ds", "../out", "group", "-w", "../work"], 0),
        (["../ds", "../ds", "group"], 2),
        (["../ds", "../out", "participant", "-w", "../work", "--atlas",
          "X=../../x.nii.gz", "--model", "none"], 2),
    ]
    for args, expected in runs:
        proc = subprocess.run([sys.executable, str(tmp_path / "tracer.py"), *args], cwd=cwd,
                              env=env, capture_output=True, text=True)
        assert proc.returncode == expected, (args, proc.stderr[-3000:])
    writes = [line.split("\t") for line in trace.read_text().splitlines()]
    assert any(Path(p).is_relative_to(out) for _, p in writes)  # the trace works
    allowed = [Path(os.path.realpath(a)) for a in (out, work)]

    def entry(path: str) -> Path:  # the entry written (a link itself, not its target)
        return Path(os.path.realpath(os.path.dirname(path))) / os.path.basename(path)

    outside = sorted({(event, p) for event, p in writes if p != os.devnull
                      and not any(entry(p).is_relative_to(a) for a in allowed)})
    assert outside == [], outside


def test_write_bytes_atomic_renders_first_and_cleans_up(tmp_path, monkeypatch):
    """Content rendered in memory is written in one go; a failed rename leaves neither the
    final file nor a temporary one (the TSV writers render their tables first, so a temporary
    file exists only for one write and a rename)."""
    import pandas as pd

    from bidsfm import utils

    target = tmp_path / "sub-01_x.tsv"
    utils.write_frame_atomic(target, pd.DataFrame({"a": [1.0, float("nan")]}), na_rep="n/a")
    assert target.read_text() == "a\n1.0\nn/a\n"

    def fail(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(utils.os, "replace", fail)
    with pytest.raises(OSError):
        utils.write_bytes_atomic(tmp_path / "sub-01_y.tsv", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub-01_x.tsv"]
