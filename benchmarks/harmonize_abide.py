#!/usr/bin/env python
"""Site harmonisation on ABIDE I CC200: leave-one-site-out ASD vs TC AUC with none/centre/combat.

    nice -n 10 .venv/bin/python benchmarks/harmonize_abide.py [--shared-data PATH]
        [--methods none centre combat] [--json out.json]

Features: the Pearson FC upper triangle (19,900 edges, all time points; ROIs outside a
participant's field of view set to 0, as in ``bidsfm.models.training.abide.fc_baseline``) of the 833
participants in ``../shared/data/abide``. Harmonisation (``bidsfm.group.harmonize``) is fitted
once on all 833 participants and the site column, without labels. The head is the group
level's L2 logistic regression, scored by ``bidsfm.evaluation.leave_site_out`` (a head refitted
without each site, its regularisation chosen by an inner site-grouped cross-validation).

Also printed: how well the site can be predicted from the features (5-fold stratified
accuracy of a multinomial logistic regression on 50 principal components, PCA fitted inside
each fold; chance = the largest site's share), which harmonisation should bring down.
Prints a markdown table (run by hand; the result is quoted in docs/group.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def site_accuracy(feats, sites, seed: int = 0) -> float:
    """5-fold stratified accuracy of predicting the site (PCA-50 + logistic regression)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), PCA(n_components=50, random_state=seed),
                         LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    return float(cross_val_score(pipe, feats, sites, cv=folds).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--methods", nargs="+", default=["none", "centre", "combat"])
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import numpy as np

    from bidsfm.evaluation import leave_site_out
    from bidsfm.group.harmonize import harmonize_with_info
    from bidsfm.models.training.data import full_fc, load_abide

    t0 = time.time()
    pheno, series = load_abide(args.shared_data)
    fc = full_fc(series)
    iu = np.triu_indices(fc.shape[1], k=1)
    feats = np.nan_to_num(fc[:, iu[0], iu[1]], nan=0.0).astype(np.float64)
    del fc, series
    sites = pheno["site"].astype(str).to_numpy()
    y = (pheno["diagnosis"].astype(str) == "ASD").astype(int).to_numpy()
    chance = float(np.unique(sites, return_counts=True)[1].max() / len(sites))
    print(f"loaded {len(y)} participants, {len(np.unique(sites))} sites, {feats.shape[1]} "
          f"edges in {time.time() - t0:.0f} s", flush=True)

    rows = []
    for method in args.methods:
        t1 = time.time()
        if method == "none":
            x, info = feats, {}
        else:
            x, info = harmonize_with_info(feats, sites, method)
        t_fit = time.time() - t1
        acc = site_accuracy(x, sites)
        t2 = time.time()
        res = leave_site_out(x, y, sites, "binary", labels=["TC", "ASD"])
        row = {"method": method, "auc": res["auc"], "auc_ci95": list(res["auc_ci95"]),
               "balanced_accuracy": res["balanced_accuracy"],
               "auc_mean_over_sites": res["auc_mean_over_sites"],
               "site_accuracy": acc, "harmonise_s": t_fit, "loso_s": time.time() - t2,
               "n_unadjusted": len(info.get("unadjusted", []))}
        rows.append(row)
        print(json.dumps(row), flush=True)

    base = next((r["auc"] for r in rows if r["method"] == "none"), None)
    print(f"\n| harmonisation (fitted on all {len(y)}, no labels) | LOSO AUC (95% CI) | "
          "gain vs none | balanced accuracy | mean AUC over sites | site accuracy "
          f"(chance {chance:.3f}) | harmonise (s) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        gain = "" if base is None or r["method"] == "none" else f"{r['auc'] - base:+.3f}"
        print(f"| {r['method']} | {r['auc']:.3f} ({r['auc_ci95'][0]:.3f}-{r['auc_ci95'][1]:.3f})"
              f" | {gain} | {r['balanced_accuracy']:.3f} | {r['auc_mean_over_sites']:.3f} | "
              f"{r['site_accuracy']:.3f} | {r['harmonise_s']:.1f} |")
    print(f"\ntotal {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
