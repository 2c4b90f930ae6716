#!/usr/bin/env python
"""Train the bundled time-series model (bidsfmts) on ABIDE CC200 and write it into the package.

    nice -n 10 .venv/bin/python scripts/train_ts_model.py [--shared-data ../shared/data]
        [--epochs 12] [--threads 2] [--max-minutes 45]

Computes the CC200 functional gradients from the ABIDE group FC, resamples every run to the
target TR, JEPA-pretrains the Brain-JEPA-style encoder (spatiotemporal masking, EMA target),
fits the connectivity readout's axes (no labels), embeds every run (windows averaged), fits the
diagnosis/sex/age heads on the frozen embeddings, evaluates them leave-one-site-out beside the
same architecture with random weights (the pretraining's starting point) and writes
bidsfm/data/models/bidsfmts/{weights.safetensors,card.json,pretrain_log.tsv}. Prints the
evaluation table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=None,
                        help="folder with abide/ (default ../shared/data)")
    parser.add_argument("--out", default=str(ROOT / "bidsfm" / "data" / "models" / "bidsfmts"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--target-tr", type=float, default=2.0)
    parser.add_argument("--readout", choices=["mean", "connectivity"], default="connectivity")
    parser.add_argument("--readout-dim", type=int, default=8,
                        help="axes per ROI of the connectivity readout (0: upper triangle)")
    parser.add_argument("--var-weight", type=float, default=1.0,
                        help="weight of the variance hinge on context tokens (0: plain JEPA)")
    parser.add_argument("--cov-weight", type=float, default=0.04)
    parser.add_argument("--predictor-dim", type=int, default=32)
    parser.add_argument("--predictor-depth", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-subjects", type=int, default=None)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop pretraining after the epoch that passes this budget")
    args = parser.parse_args()

    import torch

    from bidsfm.models.brainjepa import BrainJEPAConfig
    from bidsfm.models.resample import InputSpec
    from bidsfm.models.training.abide import format_table
    from bidsfm.models.training.build_ts import build_ts_model
    from bidsfm.models.training.configs import JEPAConfig

    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t_start:7.0f} s] {msg}", flush=True)

    spec = InputSpec(target_tr=args.target_tr, n_frames=args.frames, window_stride=args.stride)
    enc_cfg = BrainJEPAConfig(n_rois=200, n_frames=args.frames, patch_size=args.patch,
                              embed_dim=args.dim, depth=args.depth, n_heads=args.heads,
                              readout=args.readout, readout_dim=args.readout_dim)
    jepa_cfg = JEPAConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          warmup_epochs=args.warmup_epochs, predictor_dim=args.predictor_dim,
                          predictor_depth=args.predictor_depth, seed=args.seed,
                          var_weight=args.var_weight, cov_weight=args.cov_weight,
                          device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    card = build_ts_model(out, shared_data=args.shared_data, enc_cfg=enc_cfg,
                          jepa_cfg=jepa_cfg, spec=spec, max_subjects=args.max_subjects,
                          log_path=out / "pretrain_log.tsv",
                          max_seconds=None if args.max_minutes is None
                          else 60 * args.max_minutes, log=log)
    results = {card["name"]: {h: m["validation"] for h, m in card["heads"].items()}}
    control = card["validation"].get("random_weight_control")
    if control:
        results["same architecture, random weights (control)"] = control
    print(format_table(results))
    print(json.dumps({"weights_sha256": card["sha256"],
                      "weights_mb": round((out / "weights.safetensors").stat().st_size / 1e6, 2),
                      "pretrain_seconds": card["pretraining"]["seconds"],
                      "epochs_run": card["pretraining"]["epochs_run"]}))


if __name__ == "__main__":
    main()
