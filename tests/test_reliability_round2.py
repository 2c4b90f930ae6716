"""Reliability, round two (issue 17): resume, stray files, paths, locks, one-line errors.

Each test runs the ``bidsfm`` command line on a clone of one participant of the tiny synthetic
fMRIPrep dataset (see ``tests/faults/faultkit.py``) and checks one promise of
docs/reliability.md. Output names are read back from the output folder (``*_qc.tsv``), never
spelled here, so the tests do not depend on the naming scheme.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).parent / "faults"))

from faultkit import assert_clean, make_case  # noqa: E402


def _files(out: Path) -> set[str]:
    """Relative paths of every file under ``out`` (lock files aside)."""
    return {str(p.relative_to(out)) for p in out.rglob("*")
            if p.is_file() and not p.name.endswith(".lock")}


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
    """The command line's label patterns are full matches: a value ending in a newline is not
    a label (``re.match`` with ``$`` accepted it)."""
    from bidsfm.cli import _BIDS_LABEL, expand_greedy

    assert _BIDS_LABEL.fullmatch("CC200\n") is None
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
    from bidsfm.cli import absolute_paths

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
