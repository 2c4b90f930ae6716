"""Discovery of one participant in a many-subject tree indexes only that participant."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("NIPYPE_NO_ET", "1")

from bidsfm.discovery import build_layout, collect_runs, list_participants  # noqa: E402

N_SUBJECTS = 40


def _tree(root: Path, n: int = N_SUBJECTS) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep", "BIDSVersion": "1.9.0", "DatasetType": "derivative"}))
    for i in range(1, n + 1):
        sub = f"sub-{i:03d}"
        func = root / sub / "func"
        func.mkdir(parents=True)
        (root / f"{sub}.html").write_text("")
        for run in (1, 2):
            stem = f"{sub}_task-rest_run-{run}"
            (func / f"{stem}_desc-confounds_timeseries.tsv").write_text("trans_x\n0\n")
            (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
            for space in ("MNI152NLin2009cAsym_res-2", "T1w"):
                (func / f"{stem}_space-{space}_desc-preproc_bold.nii.gz").write_bytes(b"")
                (func / f"{stem}_space-{space}_desc-preproc_bold.json").write_text(
                    json.dumps({"RepetitionTime": 2.0}))
                (func / f"{stem}_space-{space}_desc-brain_mask.nii.gz").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return _tree(tmp_path_factory.mktemp("scale") / "fmriprep")


def _check_runs(root: Path, runs, problems, label: str) -> None:
    assert not problems
    assert [r.entities["run"] for r in runs] == ["1", "2"]
    for r in runs:
        assert r.subject == label
        for key in ("bold", "mask", "confounds"):
            path = Path(getattr(r, key))
            assert path.parent == root / f"sub-{label}" / "func"  # real paths, not the view
            assert path.is_file()
            assert r.relpaths[key] == f"sub-{label}/func/{path.name}"
        assert r.repetition_time == 2.0
        assert Path(r.confounds_json).is_file()


def test_one_participant_indexed_only(tree):
    assert len(list_participants(tree)) == N_SUBJECTS
    layout = build_layout(tree, ["017"], None)
    assert layout.get_subjects() == ["017"]
    files = [f for f in layout.get(return_type="file")
             if not f.endswith("dataset_description.json")]
    assert files and all("/sub-017/" in f for f in files)
    runs, problems = collect_runs(layout, tree, "017")
    _check_runs(tree, runs, problems, "017")
    assert runs[0].bold.endswith("sub-017_task-rest_run-1_space-MNI152NLin2009cAsym_res-2_"
                                 "desc-preproc_bold.nii.gz")


def test_database_dir_reused_and_several_participants(tree, tmp_path):
    for _ in range(2):  # the second call reuses the SQLite index and the view
        layout = build_layout(tree, ["003", "031"], tmp_path / "db")
        assert sorted(layout.get_subjects()) == ["003", "031"]
        for label in ("003", "031"):
            runs, problems = collect_runs(layout, tree, label)
            _check_runs(tree, runs, problems, label)
    assert not list(tree.rglob("*.sqlite"))  # nothing written into the input dataset


def test_without_symlinks_falls_back_to_the_real_root(tree, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    layout = build_layout(tree, ["009"], None)
    assert layout.get_subjects() == ["009"]
    runs, problems = collect_runs(layout, tree, "009")
    _check_runs(tree, runs, problems, "009")


def test_all_participants_when_none_requested(tmp_path):
    root = _tree(tmp_path / "small", n=3)
    layout = build_layout(root, [], None)
    assert sorted(layout.get_subjects()) == ["001", "002", "003"]
    runs, problems = collect_runs(layout, root, "002")
    _check_runs(root, runs, problems, "002")


def test_view_and_regex_indexing_agree(tree):
    with_view = collect_runs(build_layout(tree, ["021"], None), tree, "021")[0]
    without = collect_runs(build_layout(tree, ["021"], None, view=False), tree, "021")[0]
    assert [r.to_dict() for r in with_view] == [r.to_dict() for r in without]
