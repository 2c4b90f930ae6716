#!/usr/bin/env python
"""Reproduce the bundled model's leave-site-out ASD figures through the group level on ABIDE.

    nice -n 10 .venv/bin/python benchmarks/group_abide.py [--shared-data PATH] [--keep DIR]
        [--attention-participants 20] [--device auto] [--max-subjects N]

Builds bidsfm-style participant outputs from the ABIDE I CC200 time series (833 participants,
16 sites; ``../shared/data/abide``) in a temporary folder: for each participant one run with
its QC table (``mean_fd`` from the phenotype file), its Pearson FC relmat (all time points, as
``benchmarks/evaluate_fc_model.py`` computes it), and the bundled model's embedding and
predictions. It writes ``participants.tsv`` and runs the group level with
``--target diagnosis --group-column site --reference diagnosis=TC``, then prints the group
head's leave-one-site-out AUC and balanced accuracy beside the model card's probe figures,
which ``benchmarks/evaluate_fc_model.py`` recomputes (row "(b) ... embedding + linear probe"),
and the QC-FC summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPACE = "MNI152NLin6Asym"


def build_outputs(root: Path, shared_data: str | None, device: str,
                  max_subjects: int | None) -> tuple[Path, Path, int]:
    """Write participant outputs under ``root/out`` and a BIDS folder with participants.tsv."""
    import numpy as np
    import pandas as pd

    import bidsfm.models
    from bidsfm.derivatives import write_tsv_atomic
    from bidsfm.models.training.data import full_fc, load_abide

    pheno, series = load_abide(shared_data, max_subjects)
    model = bidsfm.models.load("bidsfmfc", device=device)
    fc = full_fc(series)
    emb = model.encode(fc)
    preds = model.head_outputs(emb)
    names = model.roi_names
    emb_cols = [f"{n}_{k}" for n in names for k in range(emb.shape[1] // len(names))]
    out = root / "out"
    for i, row in pheno.iterrows():
        sub = str(row["participant_id"])
        func = out / sub / "func"
        func.mkdir(parents=True, exist_ok=True)
        stem = f"{sub}_task-rest_space-{SPACE}_seg-CC200"
        tr = float(row["repetition_time"])
        n_vol = int(row["n_volumes"])
        qc = {"status": "ok", "reason": "", "atlas": "CC200", "space": SPACE,
              "repetition_time": tr, "n_volumes": n_vol, "n_dummy": 0, "n_censored": 0,
              "n_retained": n_vol, "retained_seconds": n_vol * tr,
              "mean_fd": row["mean_fd"], "n_rois": 200,
              "n_rois_low_coverage": int(row["zero_rois"]), "model": model.name,
              "model_status": "ok", "model_reason": ""}
        pd.DataFrame([qc]).to_csv(func / f"{stem}_qc.tsv", sep="\t", index=False,
                                  na_rep="n/a")
        write_tsv_atomic(func / f"{stem}_meas-PearsonCorrelation_relmat.tsv", fc[i], names,
                         index=names, index_name="Node")
        write_tsv_atomic(func / f"{stem}_desc-{model.name}_embedding.tsv", emb[i][None, :],
                         emb_cols)
        rows = []
        for h, head in model.heads.items():
            v = float(preds[h][i])
            if head.kind == "binary":
                rows.append([h, head.labels[int(v >= 0.5)], f"{v:.6g}", head.labels[1]])
            else:
                rows.append([h, f"{v:.6g}", "n/a", "n/a"])
        pd.DataFrame(rows, columns=["head", "value", "probability", "probability_of"]).to_csv(
            func / f"{stem}_desc-{model.name}_predictions.tsv", sep="\t", index=False)
    bids = root / "bids"
    bids.mkdir(parents=True, exist_ok=True)
    pheno.to_csv(bids / "participants.tsv", sep="\t", index=False, na_rep="n/a")
    (out / "dataset_description.json").write_text(json.dumps({
        "Name": "ABIDE I CC200 (bidsfm group benchmark)", "BIDSVersion": "1.10.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "bidsfm"}]}))
    assert np.isfinite(emb).all()
    return bids, out, len(pheno)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--keep", default=None, help="build under this folder and keep it")
    parser.add_argument("--attention-participants", type=int, default=20)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-subjects", type=int, default=None)
    args = parser.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bidsfm").setLevel(logging.INFO)
    from bidsfm.config import build_config
    from bidsfm.group.run import run_group_level
    from bidsfm.models.registry import load_model

    t0 = time.time()
    with tempfile.TemporaryDirectory(dir=args.keep) as tmp:
        root = Path(args.keep) / "abide_group" if args.keep else Path(tmp)
        bids, out, n = build_outputs(root, args.shared_data, args.device, args.max_subjects)
        t_build = time.time() - t0
        t1 = time.time()
        code = run_group_level(build_config(bids, out, "group", {
            "target": ("diagnosis",), "group_column": "site", "reference": "diagnosis=TC",
            "model": "auto", "attention_participants": args.attention_participants,
            "n_bootstrap": 1000, "device": args.device}))
        t_group = time.time() - t1
        g = out / "group"
        m = json.loads((g / "target-diagnosis" / "metrics.json").read_text())
        qcfc = json.loads((g / "group_seg-CC200_qcfc.json").read_text())
        import pandas as pd

        dev = pd.read_csv(g / "normative" / "deviation.tsv", sep="\t")
        pheno = pd.read_csv(bids / "participants.tsv", sep="\t").set_index("participant_id")
    card = load_model("bidsfmfc").card["heads"]["diagnosis"]["validation"]
    auc, bacc = m["metrics"]["auc"], m["metrics"]["balanced_accuracy"]
    print(f"ABIDE I: {n} participants, group level exit code {code}; CV scheme: "
          f"{m['cv']['scheme']}\n")
    print("| ASD vs TC, leave-one-site-out | AUC (95% CI) | balanced accuracy (95% CI) |")
    print("| --- | --- | --- |")
    print(f"| group level `--target diagnosis --group-column site` | {auc['value']:.3f} "
          f"({auc['ci_low']:.3f}-{auc['ci_high']:.3f}) | {bacc['value']:.3f} "
          f"({bacc['ci_low']:.3f}-{bacc['ci_high']:.3f}) |")
    lo, hi = card["auc_ci95"]
    print(f"| model card / benchmarks/evaluate_fc_model.py (b) embedding + linear probe | "
          f"{card['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {card['balanced_accuracy']:.3f} |")
    print(f"\ndifference in AUC: {auc['value'] - card['auc']:+.4f}")
    print(f"\nQC-FC (CC200, {qcfc['n_participants']} participants): median |r| "
          f"{qcfc['median_abs_r']:.3f}, edges with p < 0.05: {100 * qcfc['fraction_p05']:.1f}%")
    from bidsfm.evaluation import roc_auc

    dx = pheno.loc[dev["participant_id"], "diagnosis"].to_numpy()
    asd = dx == "ASD"
    print(f"normative (reference diagnosis=TC, TC scored out of sample): {len(dev)} "
          f"participants; median percentile ASD {dev['percentile'][asd].median():.1f}, TC "
          f"{dev['percentile'][~asd].median():.1f}; AUC of the score for ASD vs TC "
          f"{roc_auc(asd.astype(int), dev['score'].to_numpy()):.3f}; p < 0.05: ASD "
          f"{100 * (dev['p'][asd] < 0.05).mean():.1f}%, "
          f"TC {100 * (dev['p'][~asd] < 0.05).mean():.1f}%")
    print(f"\nuncertainty statement: {m['uncertainty']}")
    print(f"\n(build {t_build:.0f} s, group level {t_group:.0f} s)")


if __name__ == "__main__":
    main()
