"""A participant job killed (SIGKILL) at random points never leaves partial outputs, and the
rerun produces the same outputs as an uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import clone_dataset

TRIALS = int(os.environ.get("BIDSFM_CRASH_TRIALS", "6"))


def _cmd(ds, out, work):
    return [sys.executable, "-m", "bidsfm.cli", str(ds), str(out), "participant",
            "--participant-label", "03", "-w", str(work), "--min-time", "0"]


def _snapshot(out: Path) -> dict[str, bytes]:
    """Every output file; the per-call logs/config-<time>-<id>.json left aside (each call
    writes its own, docs/usage.md)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock")
            and not (p.parent.name == "logs" and p.name.startswith("config-"))}


def _check_no_partial(out: Path) -> None:
    import pandas as pd

    for p in out.rglob("*"):
        if p.is_file() and p.suffix == ".tsv":
            assert not p.name.startswith("."), p
            pd.read_csv(p, sep="\t")  # every visible TSV parses completely


def test_sigkill_then_rerun_equals_clean_run(tmp_path, tiny_ds):
    ds = clone_dataset(tiny_ds["root"], tmp_path / "ds", ["03"])
    env = {**os.environ, "NIPYPE_NO_ET": "1"}
    ref_out = tmp_path / "ref"
    subprocess.run(_cmd(ds, ref_out, tmp_path / "wref"), env=env, check=True,
                   capture_output=True)
    reference = _snapshot(ref_out)
    assert any(k.endswith("_embedding.tsv") or k.endswith("_timeseries.tsv") for k in reference)

    rng = np.random.default_rng(0)
    out, work = tmp_path / "out", tmp_path / "work"
    for _ in range(TRIALS):
        proc = subprocess.Popen(_cmd(ds, out, work), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.0, 12.0)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            _check_no_partial(out)
    final = subprocess.run(_cmd(ds, out, work), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-2000:]
    assert not [p for p in out.rglob(".*tmp*")], "temporary files left behind"
    result = _snapshot(out)
    assert sorted(result) == sorted(reference)
    for name, data in reference.items():
        if name.endswith(".png"):
            continue  # rendered figures may differ in encoder metadata
        if name == "logs/CITATION.md":
            continue  # records the time it was written
        if name.endswith(".html"):  # the report names its output folder and the time
            stamp = re.compile(rb"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?")
            got = stamp.sub(b"T", result[name].replace(bytes(out), bytes(ref_out)))
            assert got == stamp.sub(b"T", data), name
            continue
        assert result[name] == data, name
