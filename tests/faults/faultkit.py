"""Helpers of the fault-injection suite: clone a tiny dataset, break one file, run the CLI.

Each fault test clones one participant of the session's tiny dataset (``tiny_ds``), damages one
file of its first run, runs ``bidsfm`` in-process and checks the contract of
``docs/reliability.md``: one log line naming the file, the problem and what to do; the other
run goes on; the documented exit code; nothing partial left in the output folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from conftest import clone_dataset, run_cli

#: run outputs of one atlas (see docs/outputs.md), by suffix after ``_atlas-<ATLAS>``
RUN_SUFFIXES = ("_stat-mean_timeseries.tsv", "_stat-mean_timeseries.json",
                "_stat-coverage_bold.tsv", "_stat-pearsoncorrelation_relmat.tsv",
                "_stat-pearsoncorrelation_relmat.json",
                "_stat-pearsoncorrelation_desc-fisherz_relmat.tsv",
                "_stat-pearsoncorrelation_desc-fisherz_relmat.json", "_qc.tsv", "_qc.json")
SPACE = "MNI152NLin2009cAsym"


@dataclass
class FaultCase:
    """A cloned dataset with one participant, its runs, and where the CLI writes."""

    ds: Path
    out: Path
    work: Path
    runs: list[dict[str, Any]]

    def path(self, run: int, key: str) -> Path:
        """Path in the clone of a manifest file (``bold``, ``mask``, ``confounds``...)."""
        return self.ds / Path(self.runs[run][key]).relative_to(self.runs[run]["root"])

    def prefix(self, run: int) -> str:
        """``sub-X[_ses-Y]_task-Z[_run-N]`` of a run."""
        return prefix_of(self.runs[run])

    def outputs(self, run: int, atlas: str = "CC200") -> list[Path]:
        """Every run-level output of ``run`` for ``atlas``."""
        return run_outputs(self.out, self.runs[run], atlas)

    def qc(self, run: int, atlas: str = "CC200") -> pd.Series:
        """The QC row of a run."""
        qc = [p for p in self.outputs(run, atlas) if p.name.endswith("_qc.tsv")][0]
        return pd.read_csv(qc, sep="\t", keep_default_na=False).iloc[0]

    def cli(self, *extra: Any, capsys=None, model: str = "none",
            participant: str | None = None) -> tuple[int, str]:
        """Run the participant level on the clone (``--min-time 0``, no model by default)."""
        label = participant or self.runs[0]["subject"]
        args = [self.ds, self.out, "participant", "--participant-label", label,
                "-w", self.work, "--min-time", "0", "--model", model, *extra]
        return run_cli(args, capsys)


def prefix_of(run: dict[str, Any]) -> str:
    """``sub-X[_ses-Y]_task-Z[_run-N]`` of a manifest run."""
    parts = [f"sub-{run['subject']}"]
    if run.get("session"):
        parts.append(f"ses-{run['session']}")
    parts.append(f"task-{run['task']}")
    if run.get("run") is not None:
        parts.append(f"run-{run['run']}")
    return "_".join(parts)


def run_outputs(out: Path, run: dict[str, Any], atlas: str = "CC200") -> list[Path]:
    """Expected run-level outputs of a manifest run for one atlas."""
    folder = out / f"sub-{run['subject']}"
    if run.get("session"):
        folder = folder / f"ses-{run['session']}"
    stem = f"{prefix_of(run)}_space-{SPACE}_atlas-{atlas}"
    return [folder / "func" / (stem + s) for s in RUN_SUFFIXES]


def make_case(tiny_ds: dict, tmp_path: Path, subject: str = "03") -> FaultCase:
    """Clone one participant of the tiny dataset into ``tmp_path/ds``."""
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", [subject])
    runs = [{**r, "root": tiny_ds["root"]} for r in tiny_ds["runs"] if r["subject"] == subject]
    return FaultCase(ds=ds, out=tmp_path / "out", work=tmp_path / "work", runs=runs)


def replace_bytes(path: Path, data: bytes) -> None:
    """Replace a (possibly symlinked) file of a clone by new content."""
    path.unlink()
    path.write_bytes(data)


def replace_nifti(path: Path, img) -> None:
    """Replace a (possibly symlinked) NIfTI of a clone by ``img``."""
    import nibabel as nib

    path.unlink()
    nib.save(img, str(path))


def error_lines(log: str) -> list[str]:
    """Lines reporting an error (logged ``ERROR`` or the CLI's ``bidsfm: error:``)."""
    return [ln for ln in log.splitlines() if " ERROR " in ln or ln.startswith("bidsfm: error")]


def assert_one_error(log: str, path: Path | str, *words: str) -> str:
    """Exactly one error line names ``path``'s file and holds ``words``; no traceback."""
    assert "Traceback" not in log, log
    name = Path(path).name
    lines = [ln for ln in error_lines(log) if name in ln]
    assert len(lines) == 1, (name, error_lines(log))
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def assert_run_failed(case: FaultCase, run: int, *words: str) -> None:
    """The run has a QC table with status ``error`` (reason holding ``words``), nothing else."""
    outs = case.outputs(run)
    qc = case.qc(run)
    assert qc["status"] == "error", qc.to_dict()
    for word in words:
        assert word in qc["reason"], (word, qc["reason"])
    assert "\n" not in qc["reason"]
    left = [p.name for p in outs if p.exists() and not p.name.endswith(("_qc.tsv", "_qc.json"))]
    assert not left, left


def assert_run_ok(case: FaultCase, run: int, atlas: str = "CC200") -> None:
    """Every output of the run exists and its QC status is ``ok``."""
    for p in case.outputs(run, atlas):
        assert p.is_file(), p
    assert case.qc(run, atlas)["status"] == "ok"


def assert_clean(out: Path) -> None:
    """No temporary file anywhere in the output; every TSV parses completely."""
    if not out.exists():
        return
    temps = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not temps, temps
    for p in out.rglob("*.tsv"):
        pd.read_csv(p, sep="\t")


def tree_state(root: Path) -> dict[str, tuple]:
    """(type, size, mtime) of every entry under ``root`` (links and their targets)."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            entry: tuple = (st.st_mode, st.st_size, st.st_mtime_ns)
            if p.is_symlink():
                target = p.resolve()
                tst = target.stat()
                entry += (str(target), tst.st_size, tst.st_mtime_ns)
            state[str(p.relative_to(root))] = entry
    st = root.lstat()
    state["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state
