"""CPU/GPU agreement of the bundled models, and what batching runs buys on a GPU.

Two steps, because the GPU machine has no ``../shared`` and no network:

1. here, on a CPU with the shared data, ``export`` writes real ABIDE runs (CC200 time series,
   the first ``--per-site`` participants without missing ROIs of each of the 16 sites) and this
   CPU's float32 outputs of each bundled model (embeddings, head outputs, integrated-gradients
   attributions with the default 32 steps) to one ``.npz``;
2. on the GPU machine, ``compare`` recomputes the same outputs with float32 on its CPU, float32
   on the GPU and bf16 on the GPU, prints how far each is from the exported CPU reference
   (relative embedding difference, largest head-output change, runs whose predicted label
   changes, relative attribution difference and the lowest per-run correlation of the
   attributions), then times the default model's model stage (encode + heads + attention of
   every head) for a cohort of runs: one participant (2 runs) at a time as before, and all runs
   together as the participant level does on a GPU now.

Run by hand::

    NIPYPE_NO_ET=1 .venv/bin/python benchmarks/gpu_agreement.py export --out .gpu/abide.npz
    python3 benchmarks/gpu_agreement.py compare --inputs .gpu/abide.npz   # on the GPU machine
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = ("bidsfmfc", "bidsfmts")


def _inputs(model, series, trs):
    """The model's input for a list of runs (FC matrices, or prepared windows)."""
    if hasattr(model, "prepare"):
        return model.prepare(series, trs)
    return model.fc_from_series(series, trs)


def _outputs(model, series, trs, steps: int) -> dict:
    """Embeddings, head outputs and attributions of every head (float64 arrays)."""
    import numpy as np

    x = _inputs(model, series, trs)
    emb = model.encode(x)
    out = {"emb": np.asarray(emb, dtype=np.float64)}
    for head, values in model.head_outputs(emb).items():
        out[f"head:{head}"] = np.asarray(values, dtype=np.float64)
    for head, values in model.attributions(x, steps=steps).items():
        out[f"attr:{head}"] = np.asarray(values, dtype=np.float64)
    return out


def export(args: argparse.Namespace) -> None:
    """Write the runs and this CPU's float32 outputs."""
    import numpy as np
    import torch
    from precision_proxy import abide_runs

    from bidsfm.models.registry import load_model

    torch.set_num_threads(args.threads)
    pick, series, trs = abide_runs(args.shared_data, args.per_site, "gpu_agreement")
    data: dict[str, np.ndarray] = {
        "participants": np.asarray(pick["participant_id"], dtype=str),
        "sites": np.asarray(pick["site"], dtype=str),
        "trs": np.asarray(trs, dtype=np.float64),
        "lengths": np.asarray([len(s) for s in series]),
        "series": np.concatenate(series).astype(np.float32),
        "torch": np.asarray(torch.__version__),
    }
    for name in MODELS:
        t0 = time.perf_counter()
        for key, value in _outputs(load_model(name, device="cpu"), series, trs,
                                   args.steps).items():
            data[f"{name}|{key}"] = value
        print(f"{name}: {len(series)} runs on the CPU in {time.perf_counter() - t0:.1f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **data)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")


def _series(data) -> tuple[list, list[float]]:
    import numpy as np

    bounds = np.cumsum(np.concatenate([[0], data["lengths"]]))
    flat = data["series"].astype(np.float64)
    return ([flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
            [float(t) for t in data["trs"]])


def _differences(model, new: dict, ref: dict) -> str:
    """One table row's cells: how far ``new`` is from ``ref``."""
    import numpy as np

    e, r = new["emb"], ref["emb"]
    rel = np.linalg.norm(e - r, axis=1) / np.linalg.norm(r, axis=1)
    heads, flips, att_rel, att_corr = [], [], [], []
    for key in ref:
        if key.startswith("head:"):
            name = key[5:]
            a, b = new[key], ref[key]
            heads.append(f"{name} {np.max(np.abs(a - b)):.2g}")
            if model.heads[name].kind == "binary":
                flips.append(f"{name} {int(np.sum((a >= 0.5) != (b >= 0.5)))}")
        elif key.startswith("attr:"):
            a, b = new[key], ref[key]
            ok = ~np.isnan(b)
            diff = np.where(ok, a - b, 0.0)
            att_rel.append(np.linalg.norm(diff, axis=1) / np.linalg.norm(np.where(ok, b, 0.0),
                                                                        axis=1))
            att_corr.append([np.corrcoef(a[i][ok[i]], b[i][ok[i]])[0, 1] for i in range(len(a))])
    att_rel_all = np.concatenate(att_rel)
    return (f"{100 * np.median(rel):.3g} % | {100 * rel.max():.3g} % | {'; '.join(heads)} | "
            f"{'; '.join(flips)} | {100 * np.median(att_rel_all):.3g} % | "
            f"{100 * att_rel_all.max():.3g} % | {np.min(att_corr):.6f}")


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _time_stage(model, fcs, group: int, runs_per_pass: int | None, steps: int,
                device: str) -> float:
    """Seconds for the model stage of ``fcs``, ``group`` runs per call (a participant's runs,
    or all of them)."""
    _sync(device)
    t0 = time.perf_counter()
    for a in range(0, len(fcs), group):
        x = fcs[a:a + group]
        emb = model.encode(x, batch_size=64)
        model.head_outputs(emb)
        model.attributions(x, steps=steps, runs_per_pass=runs_per_pass)
    _sync(device)
    return time.perf_counter() - t0


def compare(args: argparse.Namespace) -> None:
    """Recompute on this machine's CPU and GPU, print agreement and timing tables."""
    import numpy as np
    import torch

    from bidsfm.models.registry import load_model

    data = np.load(args.inputs)
    series, trs = _series(data)
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else "no GPU"
    print(f"{len(series)} ABIDE runs ({len(set(data['sites']))} sites), CC200; reference: "
          f"float32 on the exporting CPU (torch {data['torch']}); here: torch "
          f"{torch.__version__}, {gpu}, {os.cpu_count()} CPUs, {platform.node()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.steps} IG steps")
    print()
    print("| model | computed with | compared with | embedding rel. diff: median | max | "
          "head outputs: largest change | runs whose label changes | attribution rel. diff: "
          "median | max | lowest per-run attribution correlation |")
    print("| --- | --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
    torch.set_num_threads(args.threads)
    for name in args.models:
        ref = {k.split("|", 1)[1]: data[k] for k in data.files if k.startswith(f"{name}|")}
        runs = [("cpu", "float32")] if name in args.cpu_models else []
        runs += [("cuda", "float32"), ("cuda", "bf16")] if cuda else []
        here: dict[tuple[str, str], dict] = {}
        for device, precision in runs:
            model = load_model(name, device=device, precision=precision)
            here[(device, precision)] = _outputs(model, series, trs, args.steps)
            row = f"| {name} | {device} {precision} |"
            print(f"{row} exporting CPU float32 | "
                  f"{_differences(model, here[(device, precision)], ref)} |")
            if device == "cuda" and ("cpu", "float32") in here:
                cpu = here[("cpu", "float32")]
                print(f"{row} this CPU float32 | "
                      f"{_differences(model, here[(device, precision)], cpu)} |")
    device = "cuda" if cuda else args.timing_device
    if device is None:
        print("\nno GPU: timing skipped")
        return
    print()
    print(f"Model stage of {args.cohort} runs (the {len(series)} ABIDE runs repeated) with "
          f"bidsfmfc on the {device.upper()}: encode + heads + attention of every head "
          f"({args.steps} steps). One warm-up pass first; best of 2.")
    print()
    print("| precision | runs per call | runs per attention pass | wall (s) | runs/s | "
          "peak GPU memory (GB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for precision in ("float32", "bf16"):
        model = load_model("bidsfmfc", device=device, precision=precision)
        fc = model.fc_from_series(series, trs)
        fcs = np.concatenate([fc] * (args.cohort // len(fc) + 1))[:args.cohort]
        _time_stage(model, fcs[:8], 2, 1, args.steps, device)  # warm-up (kernels, allocator)
        for group, rpp in ((2, 1), (2, None), (args.cohort, 1), (args.cohort, 16),
                           (args.cohort, 64)):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            best = min(_time_stage(model, fcs, group, rpp, args.steps, device)
                       for _ in range(2))
            peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else float("nan")
            label = "1 (as on the CPU)" if rpp == 1 else (
                f"{rpp}" if rpp else "default: 16, at most the runs per call")
            who = "2 (one participant)" if group == 2 else f"{group} (all together)"
            print(f"| {precision} | {who} | {label} | {best:.2f} | {args.cohort / best:.1f} | "
                  f"{peak:.2f} |")
    # batched attention on the GPU equals one run at a time to float32 round-off
    model = load_model("bidsfmfc", device=device)
    fc = model.fc_from_series(series[:32], trs[:32])
    one = model.attributions(fc, steps=args.steps, runs_per_pass=1)
    many = model.attributions(fc, steps=args.steps, runs_per_pass=16)
    worst = max(float(np.nanmax(np.abs(one[h] - many[h])) / np.nanmax(np.abs(one[h])))
                for h in one)
    print(f"\nGPU attention, 16 runs per pass vs 1: largest difference {worst:.2e} of the "
          "largest score")


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run ``export`` or ``compare``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="runs + this CPU's float32 outputs (here)")
    exp.add_argument("--out", type=Path, required=True)
    exp.add_argument("--shared-data", type=Path, default=None,
                     help="shared data folder (default: BIDSFM_SHARED_DATA or ../shared/data)")
    exp.add_argument("--per-site", type=int, default=3, help="participants per ABIDE site")
    cmp_ = sub.add_parser("compare", help="CPU/GPU agreement and GPU timing (GPU machine)")
    cmp_.add_argument("--inputs", type=Path, required=True)
    cmp_.add_argument("--cohort", type=int, default=512, help="runs in the timing cohort")
    cmp_.add_argument("--models", nargs="+", default=list(MODELS))
    cmp_.add_argument("--cpu-models", nargs="*", default=["bidsfmfc"],
                      help="models also recomputed on this machine's CPU (bidsfmts takes "
                           "minutes there)")
    cmp_.add_argument("--timing-device", default=None,
                      help="without a GPU, time on this device anyway (a smoke test: cpu)")
    for p in (exp, cmp_):
        p.add_argument("--steps", type=int, default=32, help="integrated-gradients steps")
        p.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    args = parser.parse_args(argv)
    export(args) if args.command == "export" else compare(args)


if __name__ == "__main__":
    main()
