"""Site harmonisation (``--harmonize``): centring, ComBat via neuroHarmonize, CLI, real ABIDE FC."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from bidsfm.group.harmonize import DEFAULT_METHOD, harmonize, harmonize_with_info


def _planted(seed: int = 0, n_sites: int = 4, per_site: int = 30, dim: int = 60):
    """Features with a label effect (features 0-4) and additive + multiplicative site effects.

    Labels are balanced within every site, so removing site effects cannot remove them.
    """
    rng = np.random.default_rng(seed)
    sites = np.repeat([f"s{k}" for k in range(n_sites)], per_site)
    y = np.tile(np.repeat([0, 1], per_site // 2), n_sites)
    noise = rng.standard_normal((len(y), dim))
    scale = rng.uniform(0.4, 2.5, (n_sites, dim))  # multiplicative site effect
    shift = rng.normal(0.0, 3.0, (n_sites, dim))  # additive site effect
    k = np.unique(sites, return_inverse=True)[1]
    x = 5.0 + noise * scale[k] + shift[k]
    x[:, :5] += 1.5 * y[:, None] * scale[k, :5]
    return x, sites, y


def _site_sd_ratio(x: np.ndarray, sites: np.ndarray, y: np.ndarray) -> float:
    """Median over features of max/min within-site SD (label effect removed within site)."""
    sds = []
    for s in np.unique(sites):
        rows = sites == s
        r = x[rows].copy()
        for c in (0, 1):
            r[y[rows] == c] -= r[y[rows] == c].mean(axis=0)
        sds.append(r.std(axis=0))
    sds = np.array(sds)
    return float(np.median(sds.max(axis=0) / sds.min(axis=0)))


def _effect(x: np.ndarray, y: np.ndarray, cols) -> float:
    """Mean Cohen's d of the label over the given features."""
    a, b = x[y == 1][:, cols], x[y == 0][:, cols]
    pooled = np.sqrt((a.var(axis=0, ddof=1) + b.var(axis=0, ddof=1)) / 2)
    return float(np.mean((a.mean(axis=0) - b.mean(axis=0)) / pooled))


def test_centre_removes_site_means_exactly():
    x, sites, _y = _planted(1)
    out = harmonize(x, sites, "centre")
    grand = x.mean(axis=0)
    for s in np.unique(sites):
        np.testing.assert_allclose(out[sites == s].mean(axis=0), grand, atol=1e-10)
    # within a site only the offset changes
    rows = sites == "s2"
    np.testing.assert_allclose(out[rows] - out[rows].mean(axis=0),
                               x[rows] - x[rows].mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(harmonize(x, sites, "center"), out)  # US spelling accepted


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # neuroHarmonize's np.matrix
def test_combat_matches_neuroharmonize_called_directly():
    from neuroHarmonize import harmonizationLearn

    x, sites, _y = _planted(2, dim=30)
    _model, direct = harmonizationLearn(x, pd.DataFrame({"SITE": sites}))
    np.testing.assert_allclose(harmonize(x, sites, "combat"), direct, rtol=1e-10, atol=1e-10)


def test_combat_removes_planted_site_effect_and_keeps_label_effect():
    x, sites, y = _planted(3)
    before_sd = _site_sd_ratio(x, sites, y)
    out = harmonize(x, sites, "combat")
    grand = x.mean(axis=0)
    site_means = np.array([out[sites == s].mean(axis=0) for s in np.unique(sites)])
    raw_means = np.array([x[sites == s].mean(axis=0) for s in np.unique(sites)])
    # additive: the sites' mean offsets shrink by more than 20x (EB shrinkage leaves a little)
    assert np.abs(site_means - grand).mean() < np.abs(raw_means - grand).mean() / 20
    # multiplicative: within-site spreads become alike; centring does not touch them
    assert before_sd > 2.5
    assert _site_sd_ratio(out, sites, y) < 1.5
    assert _site_sd_ratio(harmonize(x, sites, "centre"), sites, y) == pytest.approx(before_sd)
    # the label effect survives (features 0-4), and the others stay null
    assert _effect(out, y, slice(0, 5)) > 0.8 * _effect(x, y, slice(0, 5)) > 0.3
    assert abs(_effect(out, y, slice(5, None))) < 0.1


def test_small_or_missing_sites_and_constant_features_are_left_unchanged():
    x, sites, _y = _planted(4, n_sites=3, per_site=10, dim=20)
    x[:, 7] = 2.0  # constant feature
    sites = sites.astype(object)
    x = np.vstack([x, x[:2] + 10.0])
    sites = np.concatenate([sites, ["lonely", None]])
    for method in ("centre", "combat"):
        out, info = harmonize_with_info(x, sites, method)
        assert info["unadjusted"] == [30, 31] and info["unadjusted_sites"] == ["lonely"]
        assert info["n_sites"] == 3 and info["n_adjusted"] == 30
        np.testing.assert_array_equal(out[30:], x[30:])
        np.testing.assert_allclose(out[:30, 7], 2.0)
        assert np.isfinite(out).all()
    assert harmonize_with_info(x, sites, "combat")[1]["n_constant_features"] == 1
    with pytest.raises(ValueError, match="at least 2 sites"):
        harmonize(x[:12], ["a"] * 10 + ["b", "c"], "centre")
    with pytest.raises(ValueError, match="unknown harmonisation method"):
        harmonize(x, sites, "zscore")
    with pytest.raises(ValueError, match="NaN"):
        harmonize(np.full((4, 2), np.nan), ["a", "a", "b", "b"], "centre")


def test_cli_options_and_config_file(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import bidsfm.cli as cli_mod
    from bidsfm.config import GroupConfig
    from bidsfm.group.run import validate_group_options

    assert cli_mod.DEFAULT_HARMONIZE_METHOD == DEFAULT_METHOD
    seen = {}

    def fake_group(config):
        seen.update(dataclasses.asdict(config.group))
        return 0

    monkeypatch.setattr(cli_mod, "run_group", fake_group)
    base = [str(tmp_path / "in"), str(tmp_path / "out"), "group"]
    r = CliRunner().invoke(cli_mod.cli, base + ["--harmonize", "site", "--harmonize-method",
                                                "centre"])
    assert r.exit_code == 0, r.output
    assert seen["harmonize"] == "site" and seen["harmonize_method"] == "centre"
    r = CliRunner().invoke(cli_mod.cli, base)
    assert r.exit_code == 0 and seen["harmonize"] is None
    assert seen["harmonize_method"] == DEFAULT_METHOD
    for name, text in (("c.json", json.dumps({"harmonize": "scanner",
                                               "harmonize-method": "combat"})),
                       ("c.toml", 'harmonize = "scanner"\nharmonize_method = "combat"\n')):
        (tmp_path / name).write_text(text)
        seen.clear()
        r = CliRunner().invoke(cli_mod.cli, base + ["--config-file", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
        assert seen["harmonize"] == "scanner" and seen["harmonize_method"] == "combat"
    r = CliRunner().invoke(cli_mod.cli, base + ["--harmonize", "site", "--harmonize-method",
                                                "zscore"])
    assert r.exit_code == 2 and "zscore" in r.output
    parsed = validate_group_options(GroupConfig(harmonize=" site ", harmonize_method="center"))
    assert parsed["harmonize"] == ("site", "centre")
    assert validate_group_options(GroupConfig())["harmonize"] is None


def _abide_subset(sites: list[str]):
    from conftest import SHARED

    folder = None if SHARED is None else SHARED / "abide"
    if folder is None or not (folder / "cc200_timeseries.npz").is_file():
        pytest.skip("../shared/data/abide not available")
    pheno = pd.read_csv(folder / "participants.tsv", sep="\t")
    pheno = pheno[pheno["site"].isin(sites)].reset_index(drop=True)
    iu = np.triu_indices(200, k=1)
    feats = []
    with np.load(folder / "cc200_timeseries.npz") as npz:
        for pid in pheno["participant_id"]:
            ts = npz[pid].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                fc = np.corrcoef(ts.T)
            feats.append(np.nan_to_num(fc[iu], nan=0.0))
    return np.array(feats), pheno["site"].astype(str).to_numpy()


def _site_accuracy(x: np.ndarray, sites: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    z = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    u, s, _vt = np.linalg.svd(z, full_matrices=False)
    pcs = u[:, :20] * s[:20]  # label-free principal components
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    return float(cross_val_score(LogisticRegression(max_iter=2000), pcs, sites, cv=folds).mean())


def test_real_abide_fc_site_classifier_drops():
    x, sites = _abide_subset(["CALTECH", "LEUVEN_1", "OHSU", "SBL"])
    chance = np.unique(sites, return_counts=True)[1].max() / len(sites)
    raw = _site_accuracy(x, sites)
    assert raw > 0.9  # the site is written all over raw FC
    for method in ("centre", "combat"):
        acc = _site_accuracy(harmonize(x, sites, method), sites)
        assert acc < chance + 0.05, (method, acc, chance)
