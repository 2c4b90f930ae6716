"""How much bf16 inference moves the bundled models' outputs, measured on CPU (a GPU proxy).

On CUDA, ``--precision bf16`` runs the encoder under bfloat16 autocast; the default is float32
everywhere. With no GPU at hand, the same autocast on the CPU (``torch.autocast("cpu",
torch.bfloat16)``, what ``load_model(..., precision="bf16")`` does on a CPU) estimates the
difference: CPU and GPU bf16 kernels round differently in detail, so read it as the order of
magnitude, not the GPU's exact figure.

For real ABIDE runs (``../shared/data/abide``, CC200 time series, the first ``--per-site``
participants of every site) each bundled model embeds every run in float32 and in bf16, and
the script prints per model: the relative embedding difference ``||e_bf16 - e_fp32|| /
||e_fp32||`` (median, 95th percentile, max over runs), the largest change of each head's
output and how many runs change predicted label. Run by hand::

    NIPYPE_NO_ET=1 BIDSFM_OFFLINE=1 nice -n 19 .venv/bin/python benchmarks/precision_proxy.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def abide_runs(shared: Path | None, per_site: int, script: str):
    """The first ``per_site`` ABIDE participants without missing ROIs of each site: their
    table rows, CC200 time series (float64) and repetition times. ``shared`` is the shared data
    folder (default: ``BIDSFM_SHARED_DATA`` or ``../shared/data``); without the ABIDE series the
    script ``script`` exits with a message."""
    import numpy as np
    import pandas as pd

    from bidsfm.demo import resolve_shared_data

    shared = shared or resolve_shared_data()
    if shared is None or not (Path(shared) / "abide" / "cc200_timeseries.npz").is_file():
        sys.exit(f"{script}: ABIDE time series not found (../shared/data/abide); set "
                 "--shared-data")
    shared = Path(shared)

    table = pd.read_csv(shared / "abide" / "participants.tsv", sep="\t")
    table = table[table["zero_rois"] == 0] if "zero_rois" in table else table
    pick = table.groupby("site", sort=True).head(per_site)
    data = np.load(shared / "abide" / "cc200_timeseries.npz")
    series = [np.asarray(data[pid], dtype=np.float64) for pid in pick["participant_id"]]
    return pick, series, [float(t) for t in pick["repetition_time"]]


def main(argv: list[str] | None = None) -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared-data", type=Path, default=None,
                        help="shared data folder (default: BIDSFM_SHARED_DATA or ../shared/data)")
    parser.add_argument("--per-site", type=int, default=3,
                        help="participants per ABIDE site (16 sites)")
    parser.add_argument("--models", nargs="+", default=["bidsfmfc", "bidsfmts"])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from bidsfm.models.registry import list_models, load_model

    torch.set_num_threads(args.threads)
    pick, series, trs = abide_runs(args.shared_data, args.per_site, "precision_proxy")
    print(f"{len(series)} ABIDE runs ({pick['site'].nunique()} sites, {args.per_site} per "
          f"site), CC200; torch {torch.__version__}; {platform.node()}, {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print()
    print("| model | runs | relative embedding difference: median | 95th pct | max | head: "
          "largest output change | runs whose label changes |")
    print("| --- | ---: | ---: | ---: | ---: | --- | --- |")
    for name in args.models:
        if name not in list_models():
            print(f"| {name} | not bundled | | | | | |")
            continue
        out = {}
        for precision in ("float32", "bf16"):
            model = load_model(name, device="cpu", precision=precision)
            emb = model.embed(series, trs)
            out[precision] = (emb, model.head_outputs(emb), model)
        e32, e16 = out["float32"][0].astype(np.float64), out["bf16"][0].astype(np.float64)
        rel = np.linalg.norm(e16 - e32, axis=1) / np.linalg.norm(e32, axis=1)
        heads, flips = [], []
        model = out["float32"][2]
        for head, p32 in out["float32"][1].items():
            p16 = out["bf16"][1][head]
            kind = model.heads[head].kind
            if kind == "binary":
                heads.append(f"{head}: {np.max(np.abs(p16 - p32)):.4f} (probability)")
                flips.append(f"{head}: {int(np.sum((p16 >= 0.5) != (p32 >= 0.5)))}")
            elif p32.ndim == 2:
                heads.append(f"{head}: {np.max(np.abs(p16 - p32)):.4f} (probability)")
                flips.append(f"{head}: {int(np.sum(p16.argmax(1) != p32.argmax(1)))}")
            else:
                heads.append(f"{head}: {np.max(np.abs(p16 - p32)):.3f} "
                             f"({model.heads[head].meta().get('unit', 'value')})")
        print(f"| {name} | {len(series)} | {100 * np.median(rel):.2f} % | "
              f"{100 * np.percentile(rel, 95):.2f} % | {100 * rel.max():.2f} % | "
              f"{'; '.join(heads)} | {'; '.join(flips) or 'n/a'} |")


if __name__ == "__main__":
    main()
