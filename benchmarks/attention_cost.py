"""Time and peak memory of the model stage (encode, heads, integrated gradients) on one run.

Run by hand (a few minutes)::

    nice -n 19 python benchmarks/attention_cost.py [--reps 3] [--steps 32]
    git show <rev>:bidsfm/models/attention.py > /tmp/old_attention.py
    nice -n 19 python benchmarks/attention_cost.py --impl /tmp/old_attention.py --compare

Each repetition is a fresh process: it loads the bundled model and the Pearson FC of one real
ABIDE run (CC200, the first participant of ``../shared/data/abide/cc200_timeseries.npz``), then
times the model stage as ``bidsfm participant`` runs it: the embedding, the heads' outputs and
the integrated-gradients attention of every head. Memory is the process's peak resident set
(``ru_maxrss``), printed beside the resident set just before the stage (model and data loaded),
so the difference is what the stage adds.

``--impl FILE`` times another version of :mod:`bidsfm.models.attention` (its
``integrated_gradients``, one head at a time), e.g. an older commit's, with the same model and
data; with ``--compare`` this checkout and FILE are timed alternately, repetition by repetition
(fairer on a shared machine). The default times :meth:`FoundationModel.attributions` (every head
in one call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    """Current resident set of this process (MB), from /proc."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _child(steps: int, impl: str | None) -> dict:
    import resource

    import numpy as np

    from bidsfm.models.brainmass import fc_from_timeseries
    from bidsfm.models.registry import load_model
    from bidsfm.utils import shared_data_dir

    model = load_model()
    with np.load(shared_data_dir() / "abide" / "cc200_timeseries.npz") as npz:
        ts = np.asarray(npz[sorted(npz.files)[0]], dtype=np.float64)
    fc = np.asarray(fc_from_timeseries(ts), dtype=np.float32)[None]
    if impl:
        import importlib.util

        spec = importlib.util.spec_from_file_location("attention_impl", impl)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)

        def attend():
            return {h: mod.integrated_gradients(model, fc, h, steps=steps) for h in model.heads}
    else:
        def attend():
            return model.attributions(fc, steps=steps)
    import torch

    torch.zeros(1).requires_grad_(True).sum().backward()  # autograd's first-use cost
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    emb = model.encode(fc)
    model.head_outputs(emb)
    t1 = time.perf_counter()
    c1 = time.process_time()
    attr = attend()
    t2 = time.perf_counter()
    cpu = time.process_time() - c1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    return {"encode_s": t1 - t0, "attention_s": t2 - t1, "attention_cpu_s": cpu,
            "rss_before_mb": rss0,
            "peak_mb": peak, "threads": torch.get_num_threads(),
            "checksum": {h: float(np.nansum(np.abs(a))) for h, a in attr.items()}}


def main(argv: list[str] | None = None) -> int:
    """Run the repetitions in fresh processes and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--impl", type=Path, default=None,
                        help="another attention.py to time (one head at a time)")
    parser.add_argument("--compare", action="store_true",
                        help="with --impl: time this checkout and FILE, alternating")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the children (default: torch's own choice)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        print(json.dumps(_child(args.steps, str(args.impl) if args.impl else None)))
        return 0
    impls: list[Path | None] = [None] if args.impl is None else (
        [None, args.impl] if args.compare else [args.impl])
    rows: dict[Path | None, list[dict]] = {i: [] for i in impls}
    for _ in range(args.reps):
        for impl in impls:  # alternated, so that a shared machine's load hits both alike
            cmd = [sys.executable, __file__, "--child", "--steps", str(args.steps),
                   "--threads", str(args.threads)]
            if impl:
                cmd += ["--impl", str(impl)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            rows[impl].append(json.loads(out.strip().splitlines()[-1]))
    for impl in impls:
        _print_table(rows[impl], args.steps, str(impl) if impl else
                     "this checkout: attributions (all heads at once)")
    return 0


def _print_table(rows: list[dict], steps: int, label: str) -> None:
    """One table of repetitions with their medians."""
    print(f"\nmodel stage on one run, {steps} steps, {rows[0]['threads']} torch threads: {label}")
    print(f"{'rep':>3}  {'encode s':>8}  {'attention s':>11}  {'attention CPU s':>15}  "
          f"{'RSS before MB':>13}  {'peak MB':>7}")
    for i, r in enumerate(rows):
        print(f"{i:>3}  {r['encode_s']:8.3f}  {r['attention_s']:11.3f}  "
              f"{r['attention_cpu_s']:15.3f}  {r['rss_before_mb']:13.0f}  {r['peak_mb']:7.0f}")
    med = {k: statistics.median(r[k] for r in rows)
           for k in ("encode_s", "attention_s", "attention_cpu_s", "rss_before_mb", "peak_mb")}
    print(f"med  {med['encode_s']:8.3f}  {med['attention_s']:11.3f}  "
          f"{med['attention_cpu_s']:15.3f}  {med['rss_before_mb']:13.0f}  {med['peak_mb']:7.0f}")
    print("checksums (sum |score| per head):", rows[0]["checksum"])


if __name__ == "__main__":
    sys.exit(main())
