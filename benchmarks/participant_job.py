"""Benchmark: the whole ``bidsfm … participant`` job on one full-size run, beside its floors.

Generates (once, under ``--work``) one synthetic fMRIPrep run with the demo generator
(97 x 115 x 97 voxels, 2 mm, 300 volumes, float32, gzip) and times, each as a separate
Python process (interpreter start, imports and work included):

(a)  the decode floor: streaming the BOLD file through nibabel's gzip opener, and through
     python-isal's single-thread and threaded readers (bidsfm's decoders), into a one-volume
     buffer; the floor is the fastest;
(b)  the data plane alone: ``bidsfm.pipeline.process_run`` (extraction, denoising, FC, the
     run's derivatives written), CC200, strategy ``simple``; (b') the same with the atlas
     index already cached in the work folder, as for every run of a cohort after the first
     on its grid;
(c)  the command line, one participant: the default job (model, attention, figures and the
     subject report), and the same job with ``--no-figures`` and with ``--model none``;
(d)  nilearn: ``load_confounds_strategy`` + ``NiftiLabelsMasker`` (CC200, brain mask, detrend,
     z-score) + ``ConnectivityMeasure``, nothing written;

then the default job once more, instrumented, for a per-stage breakdown (imports, discovery,
atlas, extraction, cleaning, model, attention, figures, reports, writing, other). Each child
is started by a small launcher process that reports its wall time, and its CPU time and peak
resident memory from ``resource.getrusage(RUSAGE_CHILDREN)`` (the child and the children it
waited for). Run by hand, never in the tests::

    NIPYPE_NO_ET=1 BIDSFM_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/participant_job.py \\
        --work /tmp/bidsfm-job-bench

Prints markdown tables and the issue's ratios (docs/performance.md).

With ``--scaling N``, instead: N participants of one full-size run each (``--scaling-volumes``
volumes) and the default job over all of them with ``--nprocs 1`` and ``--nprocs 2`` (and
``--nprocs N`` where the machine has N cores): wall and CPU time, the speed-up over one
process and the peak memory of the largest process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# the decode loop (python-isal readers) and nilearn's pipeline, as extraction_speed.py times them
from extraction_speed import DECODE, NILEARN

STRATEGY = "simple"

DECODE_NIBABEL = """
import sys
from nibabel.openers import Opener
nbytes = int(sys.argv[2])
buf = bytearray(nbytes)
view = memoryview(buf)
total = 0
with Opener(sys.argv[1], "rb") as f:
    while True:
        n = f.readinto(view)
        if not n:
            break
        total += n
print("decoded", total, "bytes")
"""

DATA_PLANE = """
import json, sys
from bidsfm.discovery import BoldRun
from bidsfm.pipeline import ProcessingOptions, process_run
r = json.loads(sys.argv[1])
run = BoldRun(entities={"subject": r["subject"], "task": r["task"], "run": str(r["run"])},
              space="MNI152NLin2009cAsym", bold=r["bold"], mask=r["mask"],
              confounds=r["confounds"], confounds_json=r["confounds_json"],
              repetition_time=r["repetition_time"], res="2")
(res,) = process_run(run, ProcessingOptions(atlases=["CC200"], strategy=sys.argv[3]),
                     sys.argv[2], atlas_index_dir=sys.argv[4] if len(sys.argv) > 4 else None)
assert res.status == "ok", res.reason
"""

#: the instrumented job: every interval of the main thread is charged to the innermost active
#: stage; module imports (top-level ``_find_and_load`` calls) are a stage of their own, so
#: the other stages are net of the imports made inside them. Functions are found by their
#: qualified name in the module that defines them (wherever the code moves) and wrapped as soon
#: as that module is imported, so ``from .x import f`` bindings see the wrapper.
BREAKDOWN = r'''
import importlib._bootstrap as _bs
import inspect, json, sys, threading, time

STAGES = {
    "discovery": ["build_layout", "collect_runs", "list_participants", "locate_fmriprep",
                  "locate_raw_dataset"],
    "atlas": ["resolve_atlas", "resample_labels"],
    "extraction": ["extract_roi_signals"],
    "cleaning": ["load_confounds", "clean_signals", "pearson_fc", "fisher_z"],
    "writing": ["write_json_atomic", "write_text_atomic", "write_tsv_atomic", "write_coverage",
                "ensure_dataset_description", "_record_in_qc"],
    "model": ["load_model", "read_fc", "FoundationModel.encode", "FoundationModel.head_outputs",
              "TimeSeriesModel.encode"],
    "attention": ["_head_attributions", "_write_statmap"],
    "figures": ["_write_figure", "glass_brain_png", "carpet", "matrix", "coverage"],
    "reports": ["write_subject_report", "write_citation"],
}
#: generic names only count in these modules
ONLY_IN = {"carpet": "bidsfm.reports", "matrix": "bidsfm.reports",
           "coverage": "bidsfm.reports", "read_fc": "bidsfm.encode"}
TARGETS = {name: stage for stage, names in STAGES.items() for name in names}
MAIN = threading.get_ident()
acc = {}
stack = [["other", time.perf_counter()]]
found = set()


def push(name):
    now = time.perf_counter()
    top = stack[-1]
    acc[top[0]] = acc.get(top[0], 0.0) + now - top[1]
    stack.append([name, now])


def pop():
    now = time.perf_counter()
    name, start = stack.pop()
    acc[name] = acc.get(name, 0.0) + now - start
    stack[-1][1] = now


def timed(stage, fn):
    def wrapper(*args, **kwargs):
        if threading.get_ident() != MAIN:
            return fn(*args, **kwargs)
        push(stage)
        try:
            return fn(*args, **kwargs)
        finally:
            pop()
    wrapper.__wrapped__ = fn
    wrapper.__name__, wrapper.__qualname__ = fn.__name__, fn.__qualname__
    return wrapper


def patch(module):
    name = module.__name__
    for attr, obj in list(vars(module).items()):
        if inspect.isclass(obj) and obj.__module__ == name:
            for meth, fn in list(vars(obj).items()):
                qual = f"{obj.__name__}.{meth}"
                if inspect.isfunction(fn) and qual in TARGETS:
                    setattr(obj, meth, timed(TARGETS[qual], fn))
                    found.add(qual)
        elif (inspect.isfunction(obj) and obj.__module__ == name and obj.__qualname__ in TARGETS
              and name.startswith(ONLY_IN.get(obj.__qualname__, "bidsfm"))
              and not hasattr(obj, "__wrapped__")):
            setattr(module, attr, timed(TARGETS[obj.__qualname__], obj))
            found.add(obj.__qualname__)


_orig = _bs._find_and_load


def _find_and_load(name, import_):
    outer = threading.get_ident() == MAIN and stack[-1][0] != "imports"
    if outer:
        push("imports")
    try:
        module = _orig(name, import_)
    finally:
        if outer:
            pop()
    if name.startswith("bidsfm"):
        patch(module)
    return module


_bs._find_and_load = _find_and_load
t0 = time.perf_counter()
code = 0
try:
    from bidsfm.cli import main
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
total = time.perf_counter() - t0
while len(stack) > 1:
    pop()
acc["other"] = acc.get("other", 0.0) + time.perf_counter() - stack[0][1]
print(json.dumps({"stages": acc, "total": total, "code": code,
                  "missing": sorted(set(TARGETS) - found)}))
'''

#: a small launcher that runs one measured command and reports its rusage: measured from a
#: small process, so that the child's peak RSS does not start from the benchmark's own (Linux
#: keeps the larger of the parent's and the child's peak across fork and exec)
LAUNCH = """
import json, os, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": wall, "cpu": u.ru_utime + u.ru_stime, "rss_kb": u.ru_maxrss,
                  "rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}))
"""

STAGE_ORDER = ["imports", "discovery", "atlas", "extraction", "cleaning", "writing", "model",
               "attention", "figures", "reports", "other"]
STAGE_TEXT = {
    "imports": "imports (all modules, wherever first imported)",
    "discovery": "discovery (pybids index, run collection)",
    "atlas": "atlas resolution and resampling (data plane + statmap)",
    "extraction": "extraction (decode + project, streaming)",
    "cleaning": "cleaning + FC (confounds, denoising, Pearson, Fisher z)",
    "writing": "writing (TSV/JSON derivatives, QC, dataset description)",
    "model": "model (load, encode, heads)",
    "attention": "attention (integrated gradients, statmap)",
    "figures": "figures (glass brain, carpet, FC, coverage)",
    "reports": "reports (subject HTML, CITATION.md), figures excluded",
    "other": "other (Nipype engine, CLI, mask, confounds checks, ...)",
}


def measure(cmd: list[str], env: dict[str, str], cwd: str | None = None) -> dict:
    """Run ``cmd`` under :data:`LAUNCH`: wall time, CPU time and peak RSS of that child.

    Peak RSS and CPU time come from the launcher's ``getrusage(RUSAGE_CHILDREN)`` (the
    measured process and the children it waited for).
    """
    proc = subprocess.run([sys.executable, "-c", LAUNCH, *cmd], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)
    data = json.loads(proc.stdout)
    if data["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited {data['rc']}:\n"
                           f"{data['stdout'][-2000:]}\n{data['stderr'][-4000:]}")
    # Linux: ru_maxrss in KiB
    return {"wall": data["wall"], "cpu": data["cpu"], "rss_mb": data["rss_kb"] / 1024,
            "stdout": data["stdout"], "stderr": data["stderr"]}


def prepare(work: Path, n_volumes: int) -> dict:
    """Generate the full-size run once (reused when its manifest is present)."""
    from bidsfm.demo import make_fmriprep_dataset

    root = work / f"fmriprep-{n_volumes}"
    manifest = root / "sourcedata" / "bidsfm-demo" / "manifest.json"
    if manifest.is_file():
        man = json.loads(manifest.read_text())
    else:
        print(f"generating the full-size run ({n_volumes} volumes) in {root} ...", flush=True)
        t0 = time.perf_counter()
        man = make_fmriprep_dataset(root, size="full", seed=0, n_volumes=n_volumes)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return {**man["runs"][0], "root": man["root"], "shape": man["shape"]}


def scaling(work: Path, env: dict[str, str], n_participants: int, n_volumes: int) -> None:
    """Time the default job over ``n_participants`` participants per ``--nprocs``."""
    from bidsfm.demo import make_fmriprep_dataset

    root = work / f"fmriprep-scaling-{n_participants}x{n_volumes}"
    if not (root / "sourcedata" / "bidsfm-demo" / "manifest.json").is_file():
        print(f"generating {n_participants} full-size runs ({n_volumes} volumes) in {root} ...",
              flush=True)
        make_fmriprep_dataset(root, size="full", n_subjects=n_participants, seed=0,
                              n_volumes=n_volumes)
    bidsfm = str(Path(sys.executable).with_name("bidsfm"))
    counts = sorted({1, 2, min(n_participants, os.cpu_count() or 1)})
    rows = []
    for nprocs in counts:
        out = Path(tempfile.mkdtemp(prefix="scale-", dir=work))
        try:
            res = measure([bidsfm, str(root), str(out / "out"), "participant", "-w",
                           str(out / "work"), "--nprocs", str(nprocs)], env, cwd=str(out))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(f"  --nprocs {nprocs}: {res['wall']:.2f} s, CPU {res['cpu']:.2f} s, "
              f"{res['rss_mb']:.0f} MB", flush=True)
        rows.append((nprocs, res))
    load = os.getloadavg()
    print()
    print(f"{n_participants} participants x 1 run (97x115x97, {n_volumes} volumes), default "
          f"job (model, attention, figures, reports). Machine: {platform.node()}, "
          f"{os.cpu_count()} CPUs; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.")
    print()
    print("| --nprocs | wall (s) | CPU user+sys (s) | speed-up over --nprocs 1 | "
          "peak RSS of the largest process (MB) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    base = rows[0][1]["wall"]
    for nprocs, res in rows:
        print(f"| {nprocs} | {res['wall']:.2f} | {res['cpu']:.2f} | {base / res['wall']:.2f} | "
              f"{res['rss_mb']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) /
                        "bidsfm-job-bench", help="where the synthetic run is kept")
    parser.add_argument("--volumes", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1,
                        help="measurements per row; the fastest is reported")
    parser.add_argument("--skip-nilearn", action="store_true")
    parser.add_argument("--note", default="", help="a line printed under the machine line "
                        "(e.g. what else ran on the machine)")
    parser.add_argument("--scaling", type=int, default=0, metavar="N",
                        help="instead: N participants, the default job per --nprocs")
    parser.add_argument("--scaling-volumes", type=int, default=150)
    args = parser.parse_args(argv)

    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "BIDSFM_HOME": str(work / "home"), "BIDSFM_OFFLINE": "1",
           "NIPYPE_NO_ET": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    os.environ.update({k: env[k] for k in ("BIDSFM_HOME", "BIDSFM_OFFLINE", "NIPYPE_NO_ET")})
    if args.scaling:
        scaling(work, env, args.scaling, args.scaling_volumes)
        return
    run = prepare(work, args.volumes)
    shape = run["shape"]
    nbytes = 4 * shape[0] * shape[1] * shape[2]
    py = sys.executable
    bidsfm = str(Path(py).with_name("bidsfm"))
    from bidsfm.atlases import resolve_atlas

    atlas_path = str(resolve_atlas("CC200").image)

    # the atlas index cache of row (b'): filled once by a run that is not measured
    warm_index = work / "atlas_index_warm"
    if not warm_index.is_dir():
        out = Path(tempfile.mkdtemp(prefix="warm-", dir=work))
        subprocess.run([py, "-c", DATA_PLANE, json.dumps(run), str(out), STRATEGY,
                        str(warm_index)], env=env, check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)

    def cli(out: Path, *extra: str) -> list[str]:
        return [bidsfm, run["root"], str(out / "out"), "participant", "--participant-label",
                run["subject"], "-w", str(out / "work"), *extra]

    rows = [
        ("(a) decode: nibabel's gzip opener", lambda out: [py, "-c", DECODE_NIBABEL,
                                                          run["bold"], str(nbytes)]),
        ("(a) decode: python-isal igzip, one thread",
         lambda out: [py, "-c", DECODE.format(module="igzip", kwargs="{}", nbytes=nbytes),
                      run["bold"]]),
        ("(a) decode: python-isal threaded reader (bidsfm's default with 2+ CPUs)",
         lambda out: [py, "-c", DECODE.format(module="igzip_threaded",
                                              kwargs="{'threads': 1, 'block_size': 1 << 20}",
                                              nbytes=nbytes), run["bold"]]),
        ("(b) data plane: process_run (extraction, cleaning, FC, derivatives)",
         lambda out: [py, "-c", DATA_PLANE, json.dumps(run), str(out), STRATEGY]),
        ("(b') data plane, atlas index cached (a cohort's runs after the first on a grid)",
         lambda out: [py, "-c", DATA_PLANE, json.dumps(run), str(out), STRATEGY,
                      str(warm_index)]),
        ("(c) bidsfm participant, default (model, attention, figures, report)",
         lambda out: cli(out)),
        ("(c) bidsfm participant --no-figures", lambda out: cli(out, "--no-figures")),
        ("(c) bidsfm participant --model none", lambda out: cli(out, "--model", "none")),
    ]
    if not args.skip_nilearn:
        rows.append(("(d) nilearn NiftiLabelsMasker + load_confounds_strategy",
                     lambda out: [py, "-c", NILEARN, json.dumps(run), atlas_path, STRATEGY]))

    results: dict[str, dict] = {}
    for name, make in rows:
        for _ in range(args.repeat):
            out = Path(tempfile.mkdtemp(prefix="job-", dir=work))
            try:
                res = measure(make(out), env, cwd=str(out))
            finally:
                shutil.rmtree(out, ignore_errors=True)
            print(f"  {name}: {res['wall']:.2f} s, CPU {res['cpu']:.2f} s, "
                  f"{res['rss_mb']:.0f} MB", flush=True)
            if name not in results or res["wall"] < results[name]["wall"]:
                results[name] = res

    out = Path(tempfile.mkdtemp(prefix="job-", dir=work))
    try:
        inst = measure([py, "-c", BREAKDOWN, *cli(out)[1:]], env, cwd=str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    breakdown = json.loads(inst["stdout"].strip().splitlines()[-1])

    floor = min(r["wall"] for n, r in results.items() if n.startswith("(a)"))
    plane = next(r for n, r in results.items() if n.startswith("(b)"))
    warm = next(r for n, r in results.items() if n.startswith("(b')"))
    job = next(r for n, r in results.items() if n.startswith("(c) bidsfm participant, default"))
    load = os.getloadavg()
    size_mb = Path(run["bold"]).stat().st_size / 2**20
    print()
    print(f"Run: {shape[0]}x{shape[1]}x{shape[2]} voxels, 2 mm, {args.volumes} volumes, "
          f"float32, gzip ({size_mb:.0f} MiB); atlas CC200; strategy {STRATEGY}; default "
          "model.")
    print(f"Machine: {platform.node()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"best of {args.repeat}.")
    if args.note:
        print(args.note)
    print()
    print("| measurement | wall (s) | CPU user+sys (s) | peak RSS (MB) | wall / data plane (b) "
          "| wall / decode floor (a) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['wall']:.2f} | {r['cpu']:.2f} | {r['rss_mb']:.0f} | "
              f"{r['wall'] / plane['wall']:.2f} | {r['wall'] / floor:.2f} |")
    print()
    print(f"Stages of the default job, one instrumented process ({breakdown['total']:.2f} s "
          f"inside Python, {inst['wall']:.2f} s wall, {inst['rss_mb']:.0f} MB; each stage net "
          "of the imports made inside it):")
    print()
    print("| stage | s | share |")
    print("| --- | ---: | ---: |")
    stages = breakdown["stages"]
    total = sum(stages.values()) or 1.0
    for key in STAGE_ORDER + sorted(set(stages) - set(STAGE_ORDER)):
        if key in stages:
            print(f"| {STAGE_TEXT.get(key, key)} | {stages[key]:.2f} | "
                  f"{100 * stages[key] / total:.0f} % |")
    if breakdown["missing"]:
        print(f"\n(hooks not found, not timed: {', '.join(breakdown['missing'])})")
    print()
    print(f"whole job / data plane = {job['wall'] / plane['wall']:.2f} (target <= 1.5); by CPU "
          f"time {job['cpu'] / plane['cpu']:.2f}")
    floor_cpu = min(r["cpu"] for n, r in results.items() if n.startswith("(a)"))
    print(f"data plane / decode floor = {plane['wall'] / floor:.2f} (target <= 1.5); by CPU "
          f"time {plane['cpu'] / floor_cpu:.2f}; with the atlas index cached "
          f"{warm['wall'] / floor:.2f}")
    print(f"peak RSS of the whole job = {job['rss_mb']:.0f} MB (target < 500)")


if __name__ == "__main__":
    main()
