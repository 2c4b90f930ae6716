"""Labels and names that become paths, and input datasets that must never be written to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from faultkit import assert_clean, assert_run_ok, error_lines, make_case, tree_state


@pytest.mark.parametrize("option,value,what", [
    ("--participant-label", "../x", "participant"),
    ("--participant-label", "a/b", "participant"),
    ("--participant-label", "sub-01/..", "participant"),
    ("--session-label", "../x", "session"),
    ("-t", "../x", "task"),
])
def test_label_with_path_characters_is_usage_error(option, value, what, tmp_path, tiny_ds,
                                                   capsys):
    """A label with path characters: exit 2, one line, nothing written (not even the index)."""
    case = make_case(tiny_ds, tmp_path)
    extra = [option, value] if option != "--participant-label" else []
    participant = value if option == "--participant-label" else None
    code, log = case.cli(*extra, participant=participant, capsys=capsys)
    assert code == 2
    lines = error_lines(log)
    assert len(lines) == 1 and f"invalid {what} label {value!r}" in lines[0], lines
    assert "letters and digits" in lines[0]
    assert not case.out.exists() and not case.work.exists()


def _files_outside(root, allowed):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not any(a in p.parents for a in allowed))


def test_atlas_name_cannot_escape_output(tmp_path, tiny_ds, capsys):
    """``--atlas ../evil=PATH``: the name is reduced to its letters and digits (``evil``); every
    file is written inside the output folder."""
    case = make_case(tiny_ds, tmp_path / "sandbox")
    atlas = tmp_path / "sandbox" / "atlas.nii.gz"
    atlas.write_bytes(Path(tiny_ds["runs"][0]["labels"]).read_bytes())  # on the run grid
    before = _files_outside(tmp_path, [case.out, case.work, case.ds])
    code, log = case.cli("--atlas", f"../evil={atlas}", "--atlas", f"..={atlas}",
                         capsys=capsys)
    assert code == 1  # the second atlas has no usable name: one line, the first is processed
    lines = error_lines(log)
    assert len(lines) == 1 and "alphanumeric atlas name" in lines[0], lines
    assert _files_outside(tmp_path, [case.out, case.work, case.ds]) == before
    for run in range(2):
        assert_run_ok(case, run, "evil")
    assert {p.name for p in case.out.iterdir()} <= {"dataset_description.json",
                                                   ".dataset_description.json.lock", "sub-03",
                                                   "sub-03.html", "logs", ".bidsignore",
                                                   "README.md", "sourcedata"}
    assert_clean(case.out)


def test_symlinked_read_only_input_is_never_written(tmp_path, tiny_ds, capsys):
    """A read-only input reached through a symlink (whose NIfTIs are symlinks too) is processed
    and not one entry under it is created or modified."""
    case = make_case(tiny_ds, tmp_path)
    link = tmp_path / "input_link"
    link.symlink_to(case.ds, target_is_directory=True)
    case.ds = link
    real = link.resolve()
    for dirpath, dirnames, filenames in os.walk(real):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    os.chmod(real, 0o555)
    before = tree_state(real)
    try:
        code, log = case.cli(capsys=capsys)
        assert code == 0, log
        assert tree_state(real) == before
    finally:
        os.chmod(real, 0o755)
        for dirpath, dirnames, _files in os.walk(real):
            for name in dirnames:
                os.chmod(os.path.join(dirpath, name), 0o755)
    for run in range(2):
        assert_run_ok(case, run)
    assert_clean(case.out)
