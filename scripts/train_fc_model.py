#!/usr/bin/env python
"""Train the bundled FC model (bidsfmfc 2.x, tangent-space encoder) on ABIDE and write it.

    .venv/bin/python scripts/train_fc_model.py [--shared-data ../shared/data] [--epochs 5]
        [--out bidsfm/data/models/bidsfmfc] [--device auto] [--readout-dim 0]

Fits the tangent reference of the 833 ABIDE participants, pretrains the encoder to map one real
preprocessing view of a participant (PCP nofilt_noglobal or filt_global, 20 % of time points
dropped, 25 % of ROIs masked) to the other (:mod:`bidsfm.models.training.objective_tangent`),
fits the readout axes (no labels), evaluates the diagnosis/sex/age heads leave-one-site-out, fits
them on all participants and writes weights.safetensors, card.json and pretrain_log.tsv. Prints the
heads' table and the training time. The full comparison with the classical baselines and the
controls is ``benchmarks/evaluate_models.py --write-card``.

The recipe of bidsfmfc 1.0 (BrainMass encoder on Pearson FC, BYOL + MRM) is
``bidsfm.models.training.build_fc.build_fc_model``; its weights are kept in
bidsfm/data/archive/bidsfmfc-1.0.0 (``--model bidsfm/data/archive/bidsfmfc-1.0.0``).
"""

from __future__ import annotations

import argparse
import json
import logging
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
    parser.add_argument("--version", default="2.0.0")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ff-dim", type=int, default=512)
    parser.add_argument("--readout-dim", type=int, default=0,
                        help="axes per ROI row in the embedding (0 = whole upper triangle)")
    parser.add_argument("--target", choices=["cross", "consensus", "primary"],
                        default="consensus")
    parser.add_argument("--schedule", choices=["cosine", "constant"], default="constant")
    parser.add_argument("--clip-grad", type=float, default=0.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-subjects", type=int, default=None)
    args = parser.parse_args()

    import torch

    from bidsfm.models.tangentmass import TangentMassConfig
    from bidsfm.models.training.abide import format_table
    from bidsfm.models.training.build_tangent import build_tangent_fc_model
    from bidsfm.models.training.configs import TangentPretrainConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    model_cfg = TangentMassConfig(n_rois=200, n_layers=args.layers, n_heads=args.heads,
                                  ff_dim=args.ff_dim, readout_dim=args.readout_dim)
    pre_cfg = TangentPretrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                    seed=args.seed, device=args.device, target=args.target,
                                    schedule=args.schedule, clip_grad=args.clip_grad)
    out = Path(args.out)
    card = build_tangent_fc_model(out, shared_data=args.shared_data, model_cfg=model_cfg,
                                  pretrain_cfg=pre_cfg, version=args.version,
                                  max_subjects=args.max_subjects,
                                  log_path=out / "pretrain_log.tsv")
    print(format_table({f"{card['name']} {card['version']}": card["validation"]["heads"]}))
    print(json.dumps({"weights_sha256": card["sha256"],
                      "weights_mb": round((out / "weights.safetensors").stat().st_size / 1e6, 2),
                      "pretrain_seconds": card["pretraining"]["seconds"]}))


if __name__ == "__main__":
    main()
