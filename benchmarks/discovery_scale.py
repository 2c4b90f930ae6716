"""Benchmark: collect one participant's runs from a 5,000-subject fMRIPrep tree.

Builds (once, under ``--work``) an fMRIPrep-like derivatives tree of empty-but-valid files with
real-looking names: per subject an ``anat`` folder, two resting-state runs with BOLD, brain
mask, BOLD sidecar (with ``RepetitionTime``), confounds TSV and JSON, in two spaces, plus the
``sub-<label>.html`` report and ``figures`` folder. Then times, each in a fresh process, the
code path the ``bidsfm`` command line uses for ``--participant-label``: list the ``sub-*``
folders, build the pybids index restricted to the participant
(:func:`bidsfm.discovery.build_layout`) and collect its runs
(:func:`bidsfm.discovery.collect_runs`); in memory and with an SQLite index (what the command
line does, in its work folder), and, for comparison, the former indexing of the whole root with
an ignore pattern for the other participants (``view=False``).

Run by hand::

    NIPYPE_NO_ET=1 .venv/bin/python benchmarks/discovery_scale.py --work /tmp/bidsfm-disc

Prints a markdown table. Target: under 2 s for one participant.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPACES = ("MNI152NLin2009cAsym_res-2", "T1w")

COLLECT = """
import json, sys, time
t0 = time.perf_counter()
from pathlib import Path
import bids.layout  # noqa: F401 (imported by build_layout; timed here with the imports)
from bidsfm.discovery import build_layout, collect_runs, list_participants
t_import = time.perf_counter() - t0
root = Path(sys.argv[1])
label = sys.argv[2]
t1 = time.perf_counter()
available = list_participants(root)
assert label in available
t2 = time.perf_counter()
layout = build_layout(root, [label], Path(sys.argv[3]) if sys.argv[3] != "-" else None,
                      view=sys.argv[4] == "view")
t3 = time.perf_counter()
runs, problems = collect_runs(layout, root, label)
t4 = time.perf_counter()
print(json.dumps({"import": t_import, "list": t2 - t1, "index": t3 - t2, "collect": t4 - t3,
                  "total": t4 - t0, "n_runs": len(runs), "n_problems": len(problems),
                  "n_participants": len(available)}))
"""


def build_tree(root: Path, n_subjects: int) -> None:
    """Write an fMRIPrep-like tree of ``n_subjects`` participants with tiny files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "fMRIPrep - synthetic scale test", "BIDSVersion": "1.9.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep", "Version": "24.1"}]}))
    bold_meta = json.dumps({"RepetitionTime": 2.0, "TaskName": "rest"})
    conf_tsv = "framewise_displacement\ttrans_x\nn/a\t0.0\n0.1\t0.01\n"
    for i in range(1, n_subjects + 1):
        sub = f"sub-{i:05d}"
        anat = root / sub / "anat"
        func = root / sub / "func"
        figs = root / sub / "figures"
        for d in (anat, func, figs):
            d.mkdir(parents=True, exist_ok=True)
        (root / f"{sub}.html").write_text("<html></html>")
        (figs / f"{sub}_desc-summary_T1w.html").write_text("")
        for name in (f"{sub}_desc-preproc_T1w.nii.gz", f"{sub}_desc-brain_mask.nii.gz",
                     f"{sub}_dseg.nii.gz"):
            (anat / name).write_bytes(b"")
        (anat / f"{sub}_desc-preproc_T1w.json").write_text("{}")
        for run in (1, 2):
            stem = f"{sub}_task-rest_run-{run}"
            (func / f"{stem}_desc-confounds_timeseries.tsv").write_text(conf_tsv)
            (func / f"{stem}_desc-confounds_timeseries.json").write_text("{}")
            for space in SPACES:
                (func / f"{stem}_space-{space}_desc-preproc_bold.nii.gz").write_bytes(b"")
                (func / f"{stem}_space-{space}_desc-preproc_bold.json").write_text(bold_meta)
                (func / f"{stem}_space-{space}_desc-brain_mask.nii.gz").write_bytes(b"")
    (root / ".complete").write_text(str(n_subjects))


def main(argv: list[str] | None = None) -> None:
    """Build the tree if needed, time the collection of one participant, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) /
                        "bidsfm-discovery-bench")
    parser.add_argument("--subjects", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    root = args.work.absolute() / f"fmriprep-{args.subjects}"
    marker = root / ".complete"
    if not (marker.is_file() and marker.read_text() == str(args.subjects)):
        print(f"building a {args.subjects}-subject tree in {root} ...", flush=True)
        t0 = time.perf_counter()
        build_tree(root, args.subjects)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    n_files = sum(len(files) for _, _, files in os.walk(root))
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    label = f"{args.subjects // 2:05d}"
    rows = []
    kinds = {("-", "view"): "in-memory index, participant view",
             ("db", "view"): "SQLite index in a new work dir, participant view",
             ("-", "regex"): "in-memory index, whole root with an ignore regex (before)"}
    for db, how in kinds:
        for rep in range(args.repeat):
            db_dir = "-" if db == "-" else tempfile.mkdtemp(prefix="bids_db-", dir=args.work)
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", COLLECT, str(root), label, db_dir, how],
                                 env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if out.returncode != 0:
                sys.exit(out.stderr)
            res = json.loads(out.stdout.strip().splitlines()[-1])
            assert res["n_runs"] == 2 and res["n_problems"] == 0, res
            rows.append((kinds[db, how], rep, wall, res))
    load = os.getloadavg()
    print()
    print(f"Tree: {args.subjects} participants, {n_files} files; collecting sub-{label} "
          f"(2 runs). Machine: {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    print()
    print("| index | try | process wall (s) | imports incl. pybids (s) | list sub-* (s) "
          "| index (s) "
          "| collect runs (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, rep, wall, r in rows:
        print(f"| {kind} | {rep + 1} | {wall:.2f} | {r['import']:.2f} | {r['list']:.3f} | "
              f"{r['index']:.2f} | {r['collect']:.2f} |")
    print()
    for kind in kinds.values():
        best = min(w for k, _, w, _ in rows if k == kind)
        print(f"best whole-process time to collect one participant of {args.subjects}, "
              f"{kind}: {best:.2f} s (target < 2 s)")


if __name__ == "__main__":
    main()
