#!/usr/bin/env python
"""Leave-one-site-out evaluation of the time-series model (bidsfmts) on ABIDE CC200.

(The comparison of the FC models with the classical baselines, controls and paired CIs is
``benchmarks/evaluate_models.py``; this script keeps the time-series model's own table, its
random-weight control and the TR-robustness check, and accepts FC models too.)

    .venv/bin/python benchmarks/evaluate_ts_model.py [--models bidsfmts]
        [--shared-data PATH] [--skip-baseline] [--repeats 5] [--tr-check 60] [--json out.json]

Prints, over the 16 ABIDE sites and with the same heads, folds and bootstrap for every row
(:func:`bidsfm.models.training.abide.evaluate`):
  (a) raw Pearson FC (upper triangle) + linear heads (the literature's baseline);
  (b) each model's frozen embedding + linear probe, leave-one-site-out (heads refitted without
      each site, inner site-grouped search of the regularisation);
for time-series models a control row: the same architecture with random (untrained) weights;
then the few-shot diagnosis curve of every row, and for time-series models a TR-robustness
check on real runs: cosine similarity between the embedding of a run and of the same run
resampled to another TR and back (and of the run as if acquired at TR 3 s), against the
similarity between different participants (embeddings centred on the cohort mean).
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


def model_embeddings(model, series, trs):
    """Embeddings of the ABIDE runs with a model of either family."""
    from bidsfm.models.training.build_ts import abide_ts_embeddings
    from bidsfm.models.training.data import full_fc

    if getattr(model, "input_kind", "fc") == "timeseries":
        return abide_ts_embeddings(model.encoder, series, trs, model.spec)
    return model.encode(full_fc(series))


def tr_robustness(model, series, trs, n: int = 60, seed: int = 0) -> dict[str, float]:
    """Cosine similarities (centred embeddings) for TR round trips vs between participants."""
    import numpy as np

    from bidsfm.models.resample import resample_run

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(series), size=min(n, len(series)), replace=False)
    base = model.embed([series[i] for i in pick], [float(trs[i]) for i in pick])
    other_tr = [2.5 if abs(trs[i] - 2.5) > 0.1 else 1.5 for i in pick]
    trip = model.embed([resample_run(resample_run(series[i], trs[i], t), t, trs[i])
                        for i, t in zip(pick, other_tr, strict=True)],
                       [float(trs[i]) for i in pick])
    at3 = model.embed([resample_run(series[i], trs[i], 3.0) for i in pick], [3.0] * len(pick))
    centre = base.mean(axis=0)

    def cos(a, b):
        a, b = a - centre, b - centre
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    perm = np.roll(np.arange(len(pick)), 1)
    return {"n": int(len(pick)),
            "roundtrip_cos_mean": float(cos(base, trip).mean()),
            "roundtrip_cos_min": float(cos(base, trip).min()),
            "as_if_tr3_cos_mean": float(cos(base, at3).mean()),
            "between_participants_cos_mean": float(cos(base, base[perm]).mean()),
            "between_participants_cos_max": float(cos(base, base[perm]).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bidsfmts"])
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tr-check", type=int, default=60,
                        help="participants in the TR-robustness check (0 = skip)")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-random-control", action="store_true",
                        help="skip the control row of time-series models: the same "
                             "architecture with random (untrained, seed 0) weights")
    args = parser.parse_args()

    import numpy as np

    from bidsfm.models.registry import load_model
    from bidsfm.models.training.abide import (
        evaluate,
        fc_baseline,
        few_shot,
        format_few_shot_table,
        format_table,
    )
    from bidsfm.models.training.data import full_fc, load_abide

    t0 = time.time()
    pheno, series = load_abide(args.shared_data)
    trs = pheno["repetition_time"].astype(float).to_numpy()
    print(f"ABIDE I: {len(pheno)} participants, {pheno['site'].nunique()} sites, TR "
          f"{trs.min():g}-{trs.max():g} s\n")
    results, curves, embs, robust = {}, {}, {}, {}
    if not args.skip_baseline:
        fc = full_fc(series)
        results["(a) raw FC + linear head"] = fc_baseline(fc, pheno)
        iu = np.triu_indices(fc.shape[1], k=1)
        embs["raw FC"] = np.nan_to_num(fc[:, iu[0], iu[1]])
    for name in args.models:
        model = load_model(name)
        t1 = time.time()
        emb = model_embeddings(model, series, trs)
        embs[f"{name} embedding"] = emb
        print(f"model {name} {model.card['version']} ({model.card['family']}, sha256 "
              f"{model.card['sha256'][:12]}): embedding size {emb.shape[1]}, embedded in "
              f"{time.time() - t1:.0f} s")
        results[f"(b) {name} embedding + linear probe"] = res = evaluate(emb, pheno)
        stored = {h: m["validation"] for h, m in model.card.get("heads", {}).items()}
        for head, r in res.items():
            key = "auc" if "auc" in r else "mae"
            if head in stored:
                print(f"  check: {head} {key} recomputed {r[key]:.4f}, model card "
                      f"{stored[head][key]:.4f}")
        is_ts = getattr(model, "input_kind", "fc") == "timeseries"
        if is_ts and not args.no_random_control:
            import dataclasses

            import torch

            from bidsfm.models.brainjepa import BrainJEPAEncoder

            torch.manual_seed(0)
            rnd = BrainJEPAEncoder(model.encoder.config, model.encoder.gradients.cpu().numpy())
            if rnd.config.readout == "connectivity" and rnd.config.readout_dim:
                # the control gets its own readout axes, fitted the same way (no labels)
                from bidsfm.models.training.build_ts import (
                    fit_abide_readout,
                    prepare_abide_windows,
                )

                fit_abide_readout(rnd.eval(), prepare_abide_windows(series, trs, model.spec))
            control = dataclasses.replace(model, encoder=rnd.eval())
            label = f"(b0) {name} architecture, random weights (control)"
            embs[f"{name} random-weight control"] = emb0 = model_embeddings(control, series,
                                                                            trs)
            results[label] = evaluate(emb0, pheno)
        if is_ts and args.tr_check > 0:
            robust[name] = tr_robustness(model, series, trs, n=args.tr_check)
    print("\nLeave-one-site-out:\n")
    print(format_table(results))
    print("\nFew-shot diagnosis (k per class from the other sites; pooled LOSO AUC, "
          f"mean +- sd over {args.repeats} repeats):\n")
    for label, emb in embs.items():
        curves[label] = few_shot(emb, pheno, repeats=args.repeats)
    print(format_few_shot_table(curves))
    for name, r in robust.items():
        print(f"\nTR robustness of {name} ({r['n']} ABIDE runs; cosine similarity of centred "
              "embeddings):")
        print(f"- run vs the same run resampled to another TR and back: mean "
              f"{r['roundtrip_cos_mean']:.3f}, min {r['roundtrip_cos_min']:.3f}")
        print(f"- run vs the same run resampled to TR 3 s (embedded at TR 3 s): mean "
              f"{r['as_if_tr3_cos_mean']:.3f}")
        print(f"- run vs another participant's run: mean "
              f"{r['between_participants_cos_mean']:.3f}, max "
              f"{r['between_participants_cos_max']:.3f}")
    print(f"\n({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"loso": results, "few_shot": curves,
                                               "tr_robustness": robust}, indent=2,
                                              default=str))


if __name__ == "__main__":
    main()
