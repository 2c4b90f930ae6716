#!/usr/bin/env python
"""Time the group level's collection of participant outputs for growing cohorts.

    nice -n 10 .venv/bin/python benchmarks/group_scale.py [--sizes 100 1000 10000]
        [--runs-per-participant 2] [--embedding-size 20100] [--keep DIR]

For each N, fabricates N participants' output TSVs in a temporary folder exactly as the
participant level names and writes them (per run: the one-row QC table, a one-row embedding
with ``--embedding-size`` columns, a three-row predictions table; no BOLD, no FC matrices), then
times :func:`bidsfm.group.collect.collect_outputs` plus writing the group tables
(runs QC, runs embedding, subject embedding, predictions, exclusions) and prints a table:
participants, runs, seconds, runs per second, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QC_HEADER = ("status\treason\tatlas\tspace\trepetition_time\tn_volumes\tn_dummy\tn_censored\t"
             "n_retained\tretained_seconds\tmean_fd\tmax_fd\tmean_dvars_before\t"
             "mean_dvars_after\tn_rois\tn_rois_low_coverage\tlow_coverage_rois\tmin_coverage\t"
             "atlas_transform\tmodel\tmodel_status\tmodel_reason")


def fabricate(root: Path, n_participants: int, runs: int, emb_size: int, seed: int = 0) -> int:
    """Write the output TSVs of ``n_participants`` x ``runs`` runs; return the run count."""
    import numpy as np

    rng = np.random.default_rng(seed)
    # column names as the bundled bidsfmfc 2.x writes them (ROI pairs), as many as asked for
    pairs = [(a, b) for a in range(1, 201) for b in range(a, 201)]
    names = [f"CC200_{a:03d}--CC200_{b:03d}" for a, b in pairs]
    names += [f"emb_{k}" for k in range(len(names), emb_size)]
    header = "\t".join(names[:emb_size])
    for i in range(n_participants):
        sub = f"sub-{i + 1:05d}"
        func = root / sub / "func"
        func.mkdir(parents=True)
        for r in range(1, runs + 1):
            stem = f"{sub}_task-rest_run-{r}_space-MNI152NLin2009cAsym_atlas-CC200"
            status = "skipped" if rng.random() < 0.03 else "ok"
            reason = "retained 40 s < --min-time 60 s" if status == "skipped" else ""
            fd = rng.gamma(2.0, 0.08)
            (func / f"{stem}_qc.tsv").write_text(
                QC_HEADER + "\n" + f"{status}\t{reason}\tCC200\tMNI152NLin2009cAsym\t2\t200\t2\t"
                f"10\t188\t376\t{fd:.4f}\t{fd * 4:.4f}\t1.2\t1.0\t200\t0\t\t0.5\t"
                f"identical-grid\tbidsfmfc\t{'ok' if status == 'ok' else 'skipped'}\t\n")
            if status != "ok":
                continue
            emb = rng.standard_normal(emb_size)
            (func / f"{stem}_desc-bidsfmfc_embedding.tsv").write_text(
                header + "\n" + "\t".join(f"{v:.8g}" for v in emb) + "\n")
            p = float(rng.random())
            (func / f"{stem}_desc-bidsfmfc_predictions.tsv").write_text(
                "head\tvalue\tprobability\tprobability_of\n"
                f"diagnosis\t{'ASD' if p >= 0.5 else 'TC'}\t{p:.6g}\tASD\n"
                f"sex\tM\t0.2\tF\nage\t{20 + 10 * p:.6g}\tn/a\tn/a\n")
    return n_participants * runs


def time_collection(root: Path, nprocs: int = 1) -> tuple[float, float, float, int]:
    """Seconds to collect, seconds to write the group tables, peak MB (this process and its
    largest worker); rows collected."""

    from bidsfm.derivatives import group_table_name
    from bidsfm.group.collect import collect_outputs, write_table
    from bidsfm.group.run import write_cohort_tables

    t0 = time.perf_counter()
    coll = collect_outputs(root, nprocs=nprocs)
    t1 = time.perf_counter()
    gdir = root / "group"
    gdir.mkdir(parents=True, exist_ok=True)
    write_table(coll.qc, gdir / group_table_name("runs_qc"))
    write_cohort_tables(coll, gdir, None, None, [], False, nprocs=nprocs)
    t2 = time.perf_counter()
    peak = max(resource.getrusage(who).ru_maxrss / 1024  # kB on Linux
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return t1 - t0, t2 - t1, peak, len(coll.qc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--runs-per-participant", type=int, default=2)
    parser.add_argument("--embedding-size", type=int, default=20100,
                        help="embedding columns per run (bundled bidsfmfc 2.x: 20100)")
    parser.add_argument("--keep", default=None, help="fabricate under this folder and keep it")
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1],
                        help="processes (the group level's --nprocs); one row per value")
    args = parser.parse_args()
    print(f"embedding columns: {args.embedding_size}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| participants | runs | --nprocs | collect (s) | write group tables (s) | total (s) | "
          "runs / s | peak RSS so far (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in args.sizes:
        with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
            root = Path(tmp) / "out"
            runs = fabricate(root, n, args.runs_per_participant, args.embedding_size)
            for nprocs in args.nprocs:
                collect, write, peak, rows = time_collection(root, nprocs)
                assert rows == runs, (rows, runs)
                total = collect + write
                print(f"| {n} | {runs} | {nprocs} | {collect:.1f} | {write:.1f} | {total:.1f} | "
                      f"{runs / total:.0f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
