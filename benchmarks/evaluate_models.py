#!/usr/bin/env python
"""Leave-one-site-out evaluation of the bundled models against the strongest classical baselines.

    .venv/bin/python benchmarks/evaluate_models.py [--models bidsfmfc bidsfm/data/archive/...]
        [--shared-data PATH] [--repeats 5] [--json out.json] [--write-card]
        [--no-controls] [--no-identification]

One run, on ABIDE I CC200 (833 participants, 16 sites; ASD vs TC), with the same folds, the same
heads (L2 logistic regression, regularisation chosen by an inner site-grouped search on the
training sites, :func:`bidsfm.models.heads.fit_binary_head`) and the same bootstrap for every
row:

* classical rows: Pearson FC + LR; tangent-space FC + LR (reference = log-Euclidean mean fitted
  on the training sites of each fold only); both again with per-site centring (each site's
  features minus that site's mean: transductive, labels never used);
* each model's frozen embedding + the same probe, with and without the same centring;
* for the tangent model: controls — the same architecture with random weights (seed 0; same
  reference, its own readout axes fitted the same way) and a PCA of the input representation
  (tangent FC, fitted on all participants without labels) with as many components as the
  embedding has dimensions (capped at the number of participants minus one) and with 256;
* for every model and control row: the paired bootstrap 95 % CI of its AUC difference to the
  best classical row of the same kind (uncentred vs uncentred, centred vs centred);
* the regularisation chosen in every fold, and whether any fold picked an edge of the grid;
* the few-shot curve (k = 5, 10, 20, 50 per class drawn from the other sites) of every row;
* pipeline robustness on the participants with both PCP pipelines (nofilt_noglobal and
  filt_global): identification accuracy and differential identifiability of raw FC, tangent FC
  and each model's embedding.
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

import numpy as np  # noqa: E402

ARCHIVED_V1 = ROOT / "bidsfm" / "data" / "archive" / "bidsfmfc-1.0.0"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def centre_per_site(x: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Subtract each site's mean feature vector (no labels)."""
    out = np.array(x, dtype=np.float32, copy=True)
    for s in np.unique(sites):
        out[sites == s] -= out[sites == s].mean(axis=0)
    return out


class Row:
    """Features of one table row: fixed, or rebuilt per held-out site (tangent reference)."""

    def __init__(self, label: str, kind: str, fixed: np.ndarray | None = None,
                 per_fold: dict[str, np.ndarray] | None = None, centred: bool = False,
                 sites: np.ndarray | None = None) -> None:
        self.label, self.kind, self.centred = label, kind, centred
        self._fixed, self._per_fold, self._sites = fixed, per_fold, sites
        self._cache: dict[str, np.ndarray] = {}

    def features(self, site: str) -> np.ndarray:
        x = self._fixed if self._per_fold is None else self._per_fold[site]
        if not self.centred:
            return x
        key = "all" if self._per_fold is None else site
        if key not in self._cache:
            self._cache[key] = centre_per_site(x, self._sites)
        return self._cache[key]


def loso(row: Row, y: np.ndarray, sites: np.ndarray) -> dict:
    """Leave-one-site-out out-of-fold P(ASD), chosen C per fold, AUC with bootstrap CI."""
    from sklearn.metrics import roc_auc_score

    from bidsfm.evaluation import bootstrap_ci
    from bidsfm.models.heads import C_GRID, fit_binary_head

    oof = np.full(len(y), np.nan)
    chosen = {}
    for site in np.unique(sites):
        te = sites == site
        x = row.features(site)
        head = fit_binary_head("cv", x[~te], y[~te], ["TC", "ASD"], sites[~te])
        oof[te] = head.predict(x[te])
        chosen[str(site)] = head.info["C"]
    edges = sorted({s for s, c in chosen.items() if c in (C_GRID[0], C_GRID[-1])})
    return {"auc": float(roc_auc_score(y, oof)), "auc_ci95": bootstrap_ci(roc_auc_score, y, oof),
            "oof": oof, "C_per_site": chosen, "edge_folds": edges}


def tangent_per_fold(fc: np.ndarray, sites: np.ndarray, shrinkage: float
                     ) -> dict[str, np.ndarray]:
    """Tangent FC (upper triangle with diagonal) with a reference fitted per training fold."""
    from bidsfm.models.tangent import tangent_space
    from bidsfm.models.training.objective_tangent import fit_reference

    iu = np.triu_indices(fc.shape[1])
    out = {}
    for site in np.unique(sites):
        ref, fill = fit_reference(fc[sites != site], shrinkage)
        t = tangent_space(fc, ref, fill, shrinkage)
        out[str(site)] = t[:, iu[0], iu[1]].astype(np.float32)
    return out


def identification(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Identification accuracy (both directions) and differential identifiability (x100).

    Rows of ``a`` and ``b`` are the same participants under two pipelines. Similarity is the
    Pearson correlation of feature vectors (Finn et al. 2015); differential identifiability is
    mean same-person minus mean different-person similarity (Amico & Goni 2018), given raw and
    after centring each pipeline on its cohort mean.
    """
    def one(x, z):
        x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
        z = (z - z.mean(1, keepdims=True)) / z.std(1, keepdims=True)
        s = x @ z.T / x.shape[1]
        n = len(s)
        acc = 0.5 * (np.mean(s.argmax(1) == np.arange(n)) + np.mean(s.argmax(0) == np.arange(n)))
        off = ~np.eye(n, dtype=bool)
        return float(acc), float(100 * (np.diag(s).mean() - s[off].mean()))

    acc, idiff = one(a, b)
    acc_c, idiff_c = one(a - a.mean(0), b - b.mean(0))
    return {"n": int(len(a)), "accuracy": acc, "idiff": idiff, "accuracy_centred": acc_c,
            "idiff_centred": idiff_c}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bidsfmfc", str(ARCHIVED_V1)])
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--write-card", action="store_true",
                        help="store the table in the first model's card (bundled model only)")
    parser.add_argument("--no-controls", action="store_true")
    parser.add_argument("--no-identification", action="store_true")
    parser.add_argument("--no-few-shot", action="store_true")
    args = parser.parse_args()

    import torch

    from bidsfm.evaluation import few_shot_curve, paired_bootstrap_auc_difference
    from bidsfm.models.heads import C_GRID
    from bidsfm.models.registry import load_model, model_dir
    from bidsfm.models.tangent import DEFAULT_SHRINKAGE, tangent_space
    from bidsfm.models.training.build_tangent import fit_readout, tangent_embeddings
    from bidsfm.models.training.data import full_fc, load_abide_views

    torch.set_num_threads(2)
    t0 = time.time()
    pheno, views = load_abide_views(args.shared_data)
    y = (pheno["diagnosis"].astype(str) == "ASD").astype(int).to_numpy()
    sites = pheno["site"].astype(str).to_numpy()
    fc = full_fc(views[0])
    iu1 = np.triu_indices(fc.shape[1], k=1)
    pearson = np.nan_to_num(fc[:, iu1[0], iu1[1]]).astype(np.float32)
    log("tangent references per fold")
    tan_folds = tangent_per_fold(fc, sites, DEFAULT_SHRINKAGE)
    rows: list[Row] = []
    for centred in (False, True):
        suffix = ", centred per site" if centred else ""
        rows.append(Row(f"Pearson FC + LR{suffix}", "classical", fixed=pearson,
                        centred=centred, sites=sites))
        rows.append(Row(f"tangent FC + LR{suffix}", "classical", per_fold=tan_folds,
                        centred=centred, sites=sites))
    info: dict[str, dict] = {}
    models = {}
    for spec in args.models:
        model = load_model(spec)
        label = f"{model.name} {model.card['version']}"
        models[label] = model
        t1 = time.time()
        emb = model.encode(fc)
        info[label] = {"sha256": model.card["sha256"], "embedding_size": int(emb.shape[1]),
                       "path": str(model_dir(spec))}
        log(f"{label}: embedding {emb.shape[1]} values in {time.time() - t1:.0f} s")
        for centred in (False, True):
            suffix = ", centred per site" if centred else ""
            rows.append(Row(f"{label} embedding + LR{suffix}", "model", fixed=emb,
                            centred=centred, sites=sites))
        is_tangent = model.card.get("encoder_config", {}).get("kind") == "tangent"
        if is_tangent and not args.no_controls:
            from bidsfm.models.tangentmass import TangentMassEncoder

            torch.manual_seed(0)
            rnd = TangentMassEncoder(model.encoder.config)
            rnd.set_reference(model.encoder.whiten, model.encoder.fill)
            rnd.eval()
            fit_readout(rnd, fc)
            emb0 = tangent_embeddings(rnd, fc)
            ref_t = tangent_space(fc, model.encoder.reference(), model.encoder.fill.numpy(),
                                  model.encoder.config.shrinkage)
            iu = np.triu_indices(fc.shape[1])
            tan_all = ref_t[:, iu[0], iu[1]]
            ncomp = min(emb.shape[1], len(tan_all) - 1)
            from sklearn.decomposition import PCA

            scores = PCA(n_components=ncomp, random_state=0).fit_transform(tan_all)
            info[label]["pca_components"] = int(ncomp)
            # as many dimensions as the embedding (capped at N - 1), and the 256 of the issue
            pcas = {d: scores[:, :d].astype(np.float32) for d in sorted({ncomp, min(256, ncomp)})}
            for centred in (False, True):
                suffix = ", centred per site" if centred else ""
                rows.append(Row(f"control: {label} architecture, random weights{suffix}",
                                "control", fixed=emb0, centred=centred, sites=sites))
                for d, pca in pcas.items():
                    rows.append(Row(f"control: PCA of tangent FC ({d} dims){suffix}",
                                    "control", fixed=pca, centred=centred, sites=sites))
    results: dict[str, dict] = {}
    for row in rows:
        t1 = time.time()
        res = loso(row, y, sites)
        res["kind"], res["centred"] = row.kind, row.centred
        results[row.label] = res
        log(f"{row.label}: AUC {res['auc']:.3f} ({time.time() - t1:.0f} s)")
    best = {}
    for centred in (False, True):
        cands = {k: r for k, r in results.items() if r["kind"] == "classical"
                 and r["centred"] == centred}
        best[centred] = max(cands, key=lambda k: cands[k]["auc"])
    for res in results.values():
        if res["kind"] == "classical":
            continue
        ref = results[best[res["centred"]]]
        res["vs_best_classical"] = {"row": best[res["centred"]],
                                    "difference_ci95": paired_bootstrap_auc_difference(
                                        y, res["oof"], ref["oof"])}
    print("\nLeave-one-site-out ASD vs TC (ABIDE I, 833 participants, 16 sites):\n")
    print("| features + probe | AUC (95% CI) | difference to the best classical row of the "
          "same kind (paired 95% CI) | folds at a grid edge |")
    print("| --- | --- | --- | --- |")
    for label, res in results.items():
        lo, hi = res["auc_ci95"]
        if "vs_best_classical" in res:
            d, dlo, dhi = res["vs_best_classical"]["difference_ci95"]
            diff = f"{d:+.3f} ({dlo:+.3f} to {dhi:+.3f}) vs {res['vs_best_classical']['row']}"
        else:
            diff = "(best of its kind)" if label in best.values() else ""
        print(f"| {label} | {res['auc']:.3f} ({lo:.3f}-{hi:.3f}) | {diff} | "
              f"{len(res['edge_folds'])} of 16 |")
    chosen = sorted({c for r in results.values() for c in r["C_per_site"].values()})
    print(f"\nRegularisation grid C = {C_GRID[0]:g} ... {C_GRID[-1]:g} ({len(C_GRID)} values); "
          f"values chosen over all rows and folds: {', '.join(f'{c:g}' for c in chosen)}")
    curves = {}
    if not args.no_few_shot:
        print("\nFew-shot (k per class drawn from the other sites; pooled LOSO AUC, mean +- sd "
              f"over {args.repeats} repeats):\n")
        print("| features | k=5 | k=10 | k=20 | k=50 |")
        print("| --- | --- | --- | --- | --- |")
        for row in rows:
            curves[row.label] = c = few_shot_curve(row.features, y, sites,
                                                   repeats=args.repeats)
            print(f"| {row.label} | " + " | ".join(f"{c[k]['auc_mean']:.3f} +- "
                                                   f"{c[k]['auc_sd']:.3f}" for k in sorted(c))
                  + " |", flush=True)
    ident = {}
    if not args.no_identification and any(s is not None for s in views[1]):
        both = np.array([s is not None for s in views[1]])
        fc2 = full_fc([s for s in views[1] if s is not None])
        fc1 = fc[both]
        ident["raw Pearson FC"] = identification(
            np.nan_to_num(fc1[:, iu1[0], iu1[1]]), np.nan_to_num(fc2[:, iu1[0], iu1[1]]))
        for label, model in models.items():
            if model.card.get("encoder_config", {}).get("kind") == "tangent":
                enc = model.encoder
                iu = np.triu_indices(fc.shape[1])
                t1 = tangent_space(fc1, enc.reference(), enc.fill.numpy(), enc.config.shrinkage)
                t2 = tangent_space(fc2, enc.reference(), enc.fill.numpy(), enc.config.shrinkage)
                ident["tangent FC"] = identification(t1[:, iu[0], iu[1]], t2[:, iu[0], iu[1]])
            ident[f"{label} embedding"] = identification(model.encode(fc1), model.encode(fc2))
        print(f"\nPipeline robustness ({int(both.sum())} participants with both PCP pipelines; "
              "nearest neighbour by Pearson correlation of the features; Idiff = 100 x (mean "
              "same-person - mean other-person similarity)):\n")
        print("| features | identification accuracy | Idiff | identification (pipelines "
              "centred) | Idiff (centred) |")
        print("| --- | --- | --- | --- | --- |")
        for label, r in ident.items():
            print(f"| {label} | {r['accuracy']:.3f} | {r['idiff']:.1f} | "
                  f"{r['accuracy_centred']:.3f} | {r['idiff_centred']:.1f} |")
    print(f"\n({time.time() - t0:.0f} s)")
    out = {"loso": {k: {kk: vv for kk, vv in v.items() if kk != "oof"}
                    for k, v in results.items()},
           "best_classical": {"uncentred": best[False], "centred": best[True]},
           "few_shot": curves, "identification": ident, "models": info,
           "c_grid": list(C_GRID), "seconds": round(time.time() - t0, 1)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
    if args.write_card:
        from bidsfm.utils import write_json_atomic

        card_path = Path(info[next(iter(info))]["path"]) / "card.json"
        card = json.loads(card_path.read_text())
        card.setdefault("validation", {})["benchmark"] = {
            "script": "benchmarks/evaluate_models.py", **json.loads(json.dumps(out,
                                                                              default=str))}
        write_json_atomic(card_path, card)


if __name__ == "__main__":
    main()
