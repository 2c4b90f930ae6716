"""Benchmark: one full-size BOLD run through bidsfm vs decoding alone vs nilearn's masker.

Generates (once, under ``--work``) a synthetic fMRIPrep run with the demo generator: 97 x 115 x 97
voxels, 2 mm, float32, gzip, 300 volumes (and a 150-volume twin to show that memory does not
grow with run length). Each measurement is a separate Python process, timed from the outside
(wall time and peak resident memory of the whole process: interpreter start, imports, work):

(a)  decompressing the BOLD file with the decoder bidsfm uses (isal, single-thread and
     threaded reader): the floor;
(b)  bidsfm extraction + denoising + FC of the run with the core API
     (``bidsfm.pipeline.process_run``, outputs written), at 300 and 150 volumes;
(b') the ``bidsfm`` command line for that participant with ``--model none`` (adds pybids
     discovery, Nipype and the CLI);
(c)  nilearn: ``load_confounds_strategy`` + ``NiftiLabelsMasker`` (CC200, brain mask,
     detrend, z-score) + ``ConnectivityMeasure`` (Pearson), no outputs written.

Run by hand (never in the tests)::

    NIPYPE_NO_ET=1 BIDSFM_OFFLINE=1 .venv/bin/python benchmarks/extraction_speed.py \\
        --work /tmp/bidsfm-bench

Prints a markdown table. Timings depend on the machine and its load; ``uptime`` is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

STRATEGY = "simple"

DECODE = """
import sys
from isal import {module}
kw = {kwargs}
with {module}.open(sys.argv[1], "rb", **kw) as f:
    buf = bytearray({nbytes})
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(view)
        if not n:
            break
        total += n
print("decoded", total, "bytes")
"""

CORE = """
import json, sys
from bidsfm.discovery import BoldRun
from bidsfm.pipeline import ProcessingOptions, process_run
if len(sys.argv) > 4:  # experiment: smaller slabs in the atlas resampling (proposed default)
    import bidsfm.atlases
    bidsfm.atlases._resample_world.__defaults__ = (None, int(sys.argv[4]))
r = json.loads(sys.argv[1])
run = BoldRun(entities={"subject": r["subject"], "task": r["task"], "run": str(r["run"])},
              space="MNI152NLin2009cAsym", bold=r["bold"], mask=r["mask"],
              confounds=r["confounds"], confounds_json=r["confounds_json"],
              repetition_time=r["repetition_time"], res="2")
(res,) = process_run(run, ProcessingOptions(atlases=["CC200"], strategy=sys.argv[3]),
                     sys.argv[2])
assert res.status == "ok", res.reason
print("nilearn imported:", any(m.split(".")[0] == "nilearn" for m in sys.modules))
"""

BREAKDOWN = """
import json, sys, time
t0 = time.perf_counter()
stages = []
def mark(name):
    global t0
    t = time.perf_counter()
    stages.append((name, t - t0))
    t0 = t
import numpy as np
import pandas as pd
import nibabel
from bidsfm import atlases, connectivity, denoising, derivatives, extract
mark("imports (numpy, pandas, nibabel, bidsfm)")
r = json.loads(sys.argv[1])
img = extract.open_bold(r["bold"])
atlas = atlases.resolve_atlas("CC200", space="MNI152NLin2009cAsym")
labels, _ = atlases.resample_labels(atlas, img.affine, img.shape[:3],
                                    target_space="MNI152NLin2009cAsym")
mark("atlas resampling to the run grid")
mask = extract.load_mask(r["mask"], img.affine, img.shape)
proj = extract.project_labels(labels, atlas.labels["index"].to_numpy(), mask)
mark("brain mask and label projection")
sel = denoising.load_confounds(r["confounds"], denoising.get_strategy(sys.argv[2]),
                               n_volumes=img.shape[3], confounds_json=r["confounds_json"])
mark("confounds TSV and strategy")
(raw,) = extract.extract_roi_signals(r["bold"], mask, [proj], img=img)
mark("streaming extraction (decode + project)")
clean = denoising.clean_signals(raw, t_r=r["repetition_time"], confounds=sel.confounds,
                                sample_mask=sel.sample_mask)
fc = connectivity.pearson_fc(clean)
mark("cleaning + FC")
names = atlas.labels["name"].astype(str).tolist()
derivatives.write_tsv_atomic(sys.argv[3] + "/ts.tsv", clean, names)
derivatives.write_tsv_atomic(sys.argv[3] + "/fc.tsv", fc, names, index=names)
derivatives.write_tsv_atomic(sys.argv[3] + "/fcz.tsv", connectivity.fisher_z(fc), names,
                             index=names)
mark("writing 3 TSVs (pandas to_csv)")
print(json.dumps(stages))
"""

NILEARN = """
import json, sys, warnings
import numpy as np
from nilearn.connectome import ConnectivityMeasure
from nilearn.interfaces.fmriprep import load_confounds_strategy
from nilearn.maskers import NiftiLabelsMasker
from sklearn.covariance import EmpiricalCovariance
warnings.simplefilter("ignore")
r = json.loads(sys.argv[1])
conf, sample_mask = load_confounds_strategy(r["bold"], denoise_strategy=sys.argv[3])
masker = NiftiLabelsMasker(sys.argv[2], mask_img=r["mask"], detrend=True,
                           standardize="zscore_sample", t_r=r["repetition_time"])
ts = masker.fit_transform(r["bold"], confounds=conf, sample_mask=sample_mask)
fc = ConnectivityMeasure(kind="correlation",
                         cov_estimator=EmpiricalCovariance()).fit_transform([ts])[0]
print("nilearn", ts.shape, fc.shape)
"""


def measure(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` as a child process; return its wall time (s) and peak RSS (MB)."""
    gnu_time = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists()
                                         else None)
    if gnu_time:
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as log:
            start = time.perf_counter()
            proc = subprocess.run([gnu_time, "-v", "-o", log.name, *cmd], env=env,
                                  capture_output=True, text=True)
            wall = time.perf_counter() - start
            report = Path(log.name).read_text()
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed:\n{proc.stdout}\n{proc.stderr}")
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report).group(1))
        elapsed = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", report)
        h, m, s = (float(x) if x else 0.0 for x in elapsed.groups())
        cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", report).group(1))
                  for kind in ("User", "System"))
        return {"wall": h * 3600 + m * 60 + s, "outer_wall": wall, "rss_mb": rss / 1024,
                "cpu": cpu, "stdout": proc.stdout}
    # no GNU time: a wrapper process reports its only child's rusage
    wrapper = textwrap.dedent("""
        import json, resource, subprocess, sys, time
        t = time.perf_counter()
        p = subprocess.run(sys.argv[1:], capture_output=True, text=True)
        w = time.perf_counter() - t
        u = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(json.dumps({"wall": w, "rss_kb": u.ru_maxrss, "cpu": u.ru_utime + u.ru_stime,
                          "rc": p.returncode, "out": p.stdout, "err": p.stderr}))
    """)
    proc = subprocess.run([sys.executable, "-c", wrapper, *cmd], env=env, capture_output=True,
                          text=True, check=True)
    data = json.loads(proc.stdout)
    if data["rc"] != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{data['out']}\n{data['err']}")
    return {"wall": data["wall"], "outer_wall": data["wall"], "rss_mb": data["rss_kb"] / 1024,
            "cpu": data["cpu"], "stdout": data["out"]}


def prepare(work: Path, volumes: list[int]) -> dict[int, dict]:
    """Seed CC200 and generate one full-size run per run length (reused when present)."""
    from bidsfm.atlases import seed_cache
    from bidsfm.demo import make_fmriprep_dataset, resolve_shared_data

    shared = resolve_shared_data()
    if shared is None:
        sys.exit("shared data (atlases/CC200.nii.gz) not found: set BIDSFM_SHARED_DATA")
    seed_cache("CC200", shared / "atlases" / "CC200.nii.gz")
    runs = {}
    for n in volumes:
        root = work / f"fmriprep-{n}"
        manifest = root / "sourcedata" / "bidsfm-demo" / "manifest.json"
        if manifest.is_file():
            man = json.loads(manifest.read_text())
        else:
            print(f"generating the full-size run with {n} volumes in {root} ...", flush=True)
            t0 = time.perf_counter()
            man = make_fmriprep_dataset(root, size="full", seed=0, shared_data=shared,
                                        n_volumes=n)
            print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
        runs[n] = {**man["runs"][0], "root": man["root"], "shape": man["shape"]}
    return runs


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) /
                        "bidsfm-extraction-bench", help="where the synthetic runs are kept")
    parser.add_argument("--volumes", type=int, nargs="+", default=[300, 150])
    parser.add_argument("--repeat", type=int, default=2,
                        help="measurements per row; the fastest is reported")
    parser.add_argument("--skip-nilearn", action="store_true")
    parser.add_argument("--skip-cli", action="store_true")
    parser.add_argument("--resample-slab", type=int, default=None, metavar="VOXELS",
                        help="also run (b) with bidsfm.atlases._resample_world working in "
                             "slabs of this many voxels (its default is 2,000,000)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also time the stages of (b) in one process")
    args = parser.parse_args(argv)

    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BIDSFM_HOME": str(work / "home"), "BIDSFM_OFFLINE": "1",
           "NIPYPE_NO_ET": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    os.environ.update({k: env[k] for k in ("BIDSFM_HOME", "BIDSFM_OFFLINE", "NIPYPE_NO_ET")})
    runs = prepare(work, args.volumes)
    main_n = args.volumes[0]
    run = runs[main_n]
    shape = run["shape"]
    nbytes = 4 * shape[0] * shape[1] * shape[2]
    py = sys.executable
    from bidsfm.atlases import resolve_atlas
    from bidsfm.extract import gzip_decoder

    atlas_path = str(resolve_atlas("CC200").image)

    def rows():
        yield ("(a) decode, isal igzip (1 thread)",
               [py, "-c", DECODE.format(module="igzip", kwargs="{}", nbytes=nbytes),
                run["bold"]], None)
        yield ("(a) decode, isal threaded reader",
               [py, "-c", DECODE.format(module="igzip_threaded",
                                        kwargs="{'threads': 1, 'block_size': 1 << 20}",
                                        nbytes=nbytes), run["bold"]], None)
        for n in args.volumes:
            yield (f"(b) bidsfm process_run, {n} volumes", None, n)
        yield (f"(b) bidsfm process_run, {main_n} volumes, threaded isal decoder",
               "isal-threaded", main_n)
        if args.resample_slab:
            yield (f"(b) bidsfm process_run, {main_n} volumes, atlas resampled in slabs of "
                   f"{args.resample_slab} voxels", "slab", main_n)
        if not args.skip_cli:
            yield ("(b') bidsfm CLI, one participant, --model none", "cli", main_n)
        yield ("import numpy + pandas + nibabel only (no work)",
               [py, "-c", "import numpy, pandas, nibabel"], None)
        if not args.skip_nilearn:
            yield ("import nilearn.maskers only (no work)",
                   [py, "-c", "import nilearn.maskers, nilearn.interfaces.fmriprep"], None)
            yield ("(c) nilearn NiftiLabelsMasker + load_confounds_strategy",
                   [py, "-c", NILEARN, json.dumps(run), atlas_path, STRATEGY], None)

    results = []
    for name, cmd, n in rows():
        best = None
        for _ in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
            child_env = env
            if cmd in (None, "isal-threaded", "slab"):
                this = [py, "-c", CORE, json.dumps(runs[n]), str(out), STRATEGY]
                if cmd == "slab":
                    this.append(str(args.resample_slab))
                if cmd == "isal-threaded":
                    child_env = {**env, "BIDSFM_GZIP_DECODER": "isal-threaded"}
            elif cmd == "cli":
                this = [str(Path(py).with_name("bidsfm")), runs[n]["root"], str(out),
                        "participant", "--participant-label", "01", "--model", "none",
                        "--atlas", "CC200", "--denoise-strategy", STRATEGY,
                        "-w", str(out / "work")]
            else:
                this = cmd
            res = measure(this, child_env)
            shutil.rmtree(out, ignore_errors=True)
            if "nilearn imported: True" in res["stdout"]:
                raise RuntimeError("the bidsfm hot path imported nilearn")
            if best is None or res["wall"] < best["wall"]:
                best = res
            print(f"  {name}: {res['wall']:.2f} s, CPU {res['cpu']:.2f} s, {res['rss_mb']:.0f} MB",
                  flush=True)
        results.append((name, best))

    floor = min(r["wall"] for name, r in results if name.startswith("(a)"))
    results = [x for x in results if not x[0].startswith("import")] + \
        [x for x in results if x[0].startswith("import")]
    by = dict(results)
    core = by.get(f"(b) bidsfm process_run, {main_n} volumes")
    nil = next((r for name, r in results if name.startswith("(c)")), None)
    load = os.getloadavg()
    size_mb = Path(run["bold"]).stat().st_size / 2**20
    print()
    print(f"Run: {shape[0]}x{shape[1]}x{shape[2]} voxels, 2 mm, {main_n} volumes, float32, "
          f"gzip ({size_mb:.0f} MiB); atlas CC200; strategy {STRATEGY}; bidsfm decoder "
          f"{gzip_decoder()}.")
    print(f"Machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or ''} "
          f"Python {platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; best of "
          f"{args.repeat}.")
    print()
    print("| measurement | wall (s) | CPU user+sys (s) | peak RSS (MB) | wall / floor (a) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in results:
        print(f"| {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_mb']:.0f} | "
              f"{r['wall'] / floor:.2f} |")
    print()
    if core is not None:
        floor_cpu = min(r["cpu"] for name, r in results if name.startswith("(a)"))
        print(f"b / a = {core['wall'] / floor:.2f} (target <= 1.3); by CPU time "
              f"{core['cpu'] / floor_cpu:.2f}")
        threaded = by.get(f"(b) bidsfm process_run, {main_n} volumes, threaded isal decoder")
        if threaded is not None:
            print(f"b / a with the threaded decoder = {threaded['wall'] / floor:.2f}; by CPU "
                  f"time {threaded['cpu'] / floor_cpu:.2f}")
        if nil is not None:
            print(f"c / b = {nil['wall'] / core['wall']:.1f} (target >= 8); by CPU time "
                  f"{nil['cpu'] / core['cpu']:.1f}")
        print(f"peak RSS of (b) = {core['rss_mb']:.0f} MB (target < 200)")
    if len(args.volumes) > 1:
        mems = ", ".join(f"{n} volumes: {by[f'(b) bidsfm process_run, {n} volumes']['rss_mb']:.0f}"
                         " MB" for n in args.volumes)
        print(f"peak RSS of (b) by run length: {mems}")
    if args.breakdown:
        out = Path(tempfile.mkdtemp(prefix="out-", dir=work))
        proc = subprocess.run([py, "-c", BREAKDOWN, json.dumps(run), STRATEGY, str(out)],
                              env=env, capture_output=True, text=True, check=True)
        shutil.rmtree(out, ignore_errors=True)
        stages = json.loads(proc.stdout.strip().splitlines()[-1])
        print()
        print("Stages of (b), in one process (python start-up not included):")
        print()
        print("| stage | s |")
        print("| --- | ---: |")
        for name, sec in stages:
            print(f"| {name} | {sec:.2f} |")


if __name__ == "__main__":
    main()
