#!/usr/bin/env python
"""Inference throughput of a bundled FC model: runs per second, CPU (and GPU when present).

    .venv/bin/python benchmarks/inference_throughput.py [--model bidsfmfc] [--runs 256]
        [--threads 2] [--device cpu|cuda|all]

Times, on synthetic FC matrices of the model's size (after one warm-up pass):
  embed       - encoder forward + heads, batch size 1 / 16 / 64
  attribution - integrated gradients for every head (32 steps), per run
and prints a table of runs per second. The pipeline's per-run cost before the model
(reading the BOLD file, denoising) is measured by the extraction benchmarks, not here.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _fc(n, r, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.normal(size=(150, 12)) @ rng.normal(size=(12, r)) + rng.normal(size=(150, r))
        out.append(np.corrcoef(x.T).astype("float32"))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bidsfmfc")
    parser.add_argument("--runs", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="all")
    args = parser.parse_args()

    import torch

    from bidsfm.models.registry import load_model

    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit("inference_throughput: --device cuda but no CUDA device is visible")
    if args.device == "all" and "cuda" not in devices:
        print("(no CUDA device visible: GPU rows not measured)")
    elif "cuda" in devices:
        print(f"GPU: {torch.cuda.get_device_name(0)}; encoder in float32 (the default precision)")
    model = load_model(args.model)
    r = len(model.roi_names)
    fc = _fc(args.runs, r)
    print(f"model {model.name}; {args.runs} runs of {r}x{r} FC; torch {torch.__version__}; "
          f"{platform.processor() or platform.machine()}, {args.threads} CPU threads")
    print("| device | task | batch | runs/s |")
    print("| --- | --- | --- | --- |")
    for dev in devices:
        model.to(dev)
        for bs in (1, 16, 64):
            model.encode(fc[:bs], batch_size=bs)  # warm-up
            if dev == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            emb = model.encode(fc, batch_size=bs)
            model.head_outputs(emb)
            if dev == "cuda":
                torch.cuda.synchronize()
            print(f"| {dev} | embed + heads | {bs} | {args.runs / (time.perf_counter() - t):.1f} |")
        n_att = min(args.runs, 16)
        model.attributions(fc[:1], steps=32)  # warm-up
        t = time.perf_counter()
        model.attributions(fc[:n_att], steps=32)  # every head, shared forward passes
        if dev == "cuda":
            torch.cuda.synchronize()
        rate = n_att / (time.perf_counter() - t)
        task = f"attribution, {len(model.heads)} heads x 32 steps"
        print(f"| {dev} | {task} | per run | {rate:.2f} |")


if __name__ == "__main__":
    main()
