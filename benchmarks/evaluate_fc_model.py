#!/usr/bin/env python
"""Leave-one-site-out evaluation of a bundled FC model on ABIDE CC200, printed as a table.

    .venv/bin/python benchmarks/evaluate_fc_model.py [--model bidsfmfc] [--shared-data PATH]
                                                     [--no-baseline]

Recomputes, from the data, the figures stored in the model card: for each head (diagnosis,
sex, age) a head is refitted on the frozen embeddings of 15 sites and scored on the 16th;
pooled out-of-fold AUC / balanced accuracy (binary) or MAE / r (age) with 95% bootstrap
intervals, and the mean AUC over sites. The baseline fits the same heads on the raw FC upper
triangle (the literature reports about 0.70 AUC for ASD vs TC leave-site-out).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="bidsfmfc")
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from bidsfm.models.build import evaluate, fc_baseline, format_table, full_fc, load_abide
    from bidsfm.models.registry import load_model

    model = load_model(args.model)
    pheno, series = load_abide(args.shared_data)
    fc = full_fc(series)
    emb = model.encode(fc)
    results = {model.name: evaluate(emb, pheno)}
    if not args.no_baseline:
        results["raw FC (upper triangle)"] = fc_baseline(fc, pheno)
    print(f"ABIDE I, {len(pheno)} participants, {pheno['site'].nunique()} sites, "
          f"embedding size {emb.shape[1]}")
    print(format_table(results))
    stored = {h: m["validation"] for h, m in model.card["heads"].items()}
    for head, r in results[model.name].items():
        key = "auc" if "auc" in r else "mae"
        print(f"{head}: {key} recomputed {r[key]:.4f}, card {stored[head][key]:.4f}, "
              f"match={np.isclose(r[key], stored[head][key], atol=1e-6)}")


if __name__ == "__main__":
    main()
