#!/usr/bin/env python
"""Train the bundled FC model (bidsfmfc) on ABIDE CC200 and write it into the package.

    .venv/bin/python scripts/train_fc_model.py [--shared-data ../shared/data] [--epochs 60]

Pretrains the BrainMass-style encoder (LRA + MRM), fits the diagnosis/sex/age heads on the
frozen embeddings, evaluates them leave-one-site-out (with the raw-FC baseline) and writes
bidsfm/data/models/bidsfmfc/{weights.safetensors,card.json}. Prints the evaluation table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=None,
                        help="folder with abide/ (default ../shared/data)")
    parser.add_argument("--out", default=str(ROOT / "bidsfm" / "data" / "models" / "bidsfmfc"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--warmup-epochs", type=float, default=3.0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ff-dim", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-subjects", type=int, default=None)
    args = parser.parse_args()

    import torch

    from bidsfm.models.brainmass import BrainMassConfig
    from bidsfm.models.build import build_fc_model, format_table
    from bidsfm.models.pretrain import PretrainConfig

    torch.set_num_threads(args.threads)
    model_cfg = BrainMassConfig(n_rois=200, n_layers=args.layers, n_heads=args.heads,
                                ff_dim=args.ff_dim)
    kw = {"epochs": args.epochs, "batch_size": args.batch_size, "seed": args.seed,
          "device": args.device, "warmup_epochs": args.warmup_epochs}
    if args.lr is not None:
        kw["lr"] = args.lr
    pre_cfg = PretrainConfig(**kw)
    out = Path(args.out)
    card = build_fc_model(out, shared_data=args.shared_data, model_cfg=model_cfg,
                          pretrain_cfg=pre_cfg, max_subjects=args.max_subjects,
                          log_path=out / "pretrain_log.tsv")
    results = {card["name"]: {h: m["validation"] for h, m in card["heads"].items()}}
    if card["validation"].get("fc_baseline"):
        results["raw FC (upper triangle)"] = card["validation"]["fc_baseline"]
    print(format_table(results))
    print(json.dumps({"weights_sha256": card["sha256"],
                      "weights_mb": round((out / "weights.safetensors").stat().st_size / 1e6, 2),
                      "pretrain_seconds": card["pretraining"]["seconds"]}))


if __name__ == "__main__":
    main()
