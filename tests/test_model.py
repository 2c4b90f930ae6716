"""The bundled FC model: card, loading, encoding, heads, attribution (planted-signal test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bidsfm.errors import ConfigError
from bidsfm.models.registry import DEFAULT_MODEL, list_models, load_model, model_dir

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in list_models(),
                                reason="bundled model not present")


def _loadings(seed=7, r=200, n_factors=12):
    """A fixed network structure: each factor loads on a random set of ROIs."""
    rng = np.random.default_rng(seed)
    loadings = np.zeros((n_factors, r))
    for k in range(n_factors):
        members = rng.choice(r, size=r // n_factors + 5, replace=False)
        loadings[k, members] = rng.uniform(0.5, 1.0, members.size)
    return loadings


def _series(rng, n, planted=(), strength=0.0, t=200, r=200):
    """Time series with a shared network structure; ``planted`` ROIs get an extra signal."""
    loadings = _loadings(r=r)
    n_factors = loadings.shape[0]
    out = []
    for _ in range(n):
        ts = rng.normal(size=(t, n_factors)) @ loadings + rng.normal(size=(t, r))
        if planted:
            shared = rng.normal(size=(t, 1))
            ts[:, list(planted)] += strength * shared
        out.append(ts)
    return out


def test_card_is_complete(model):
    card = model.card
    for key in ("name", "version", "family", "atlas", "input", "embedding_size", "heads",
                "training_data", "licence", "sha256", "encoder_config", "citation"):
        assert key in card, key
    assert card["atlas"]["name"] == "CC200" and len(card["atlas"]["roi_names"]) == 200
    assert "ABIDE" in card["training_data"]["name"]
    assert "Di Martino" in " ".join(card["training_data"]["citation"])
    for head in ("diagnosis", "sex", "age"):
        val = card["heads"][head]["validation"]
        assert val["scheme"] == "leave-one-site-out"
        assert val["n_sites"] >= 2
    folder = model_dir(DEFAULT_MODEL)
    assert (folder / "weights.safetensors").stat().st_size < 25e6


def test_missing_rois_are_masked_not_zero(model):
    from bidsfm.models.brainmass import fc_from_timeseries

    rng = np.random.default_rng(0)
    fc = np.asarray(fc_from_timeseries(_series(rng, 1)[0]))
    a = fc.copy()
    a[5, :] = a[:, 5] = np.nan
    b = a.copy()
    b[5, :] = b[:, 5] = 0.0  # zeros would be a different (wrong) input
    ea, eb = model.encode(np.stack([a, a]))
    assert np.allclose(ea, eb)  # deterministic, batch-consistent
    e_nan = model.encode(a[None])[0]
    e_zero = model.encode(b[None])[0]
    assert np.isfinite(e_nan).all()
    # an all-zero row is also treated as missing: same embedding as NaN
    assert np.allclose(e_nan, e_zero, atol=1e-5)
    assert not np.allclose(model.encode(fc[None])[0], e_nan)


def test_integrated_gradients_completeness(model):
    from bidsfm.models.brainmass import fc_from_timeseries

    rng = np.random.default_rng(1)
    fc = np.stack([np.asarray(fc_from_timeseries(s)) for s in _series(rng, 2)])
    attr = model.attribution(fc, "age", steps=64)
    head = model.heads["age"]
    full = head.decision(model.encode(fc))
    base = head.decision(model.encode(np.broadcast_to(model.reference_fc, fc.shape).copy()))
    gap = full - base
    assert np.allclose(np.nansum(attr, axis=1), gap, atol=0.05 * np.abs(gap).max() + 1e-3)


def test_planted_signal_ranks_top(model):
    """A head trained on data whose classes differ only in a few ROIs ranks those ROIs first."""
    from bidsfm.models.brainmass import fc_from_timeseries
    from bidsfm.models.heads import fit_binary_head

    rng = np.random.default_rng(42)
    planted = (17, 83, 150)
    neg = _series(rng, 60)
    pos = _series(rng, 60, planted=planted, strength=1.5)
    fc = np.stack([np.asarray(fc_from_timeseries(s)) for s in neg + pos])
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    emb = model.encode(fc)
    model.heads["planted"] = fit_binary_head("planted", emb, y, ["neg", "pos"])
    reference = fc[:60].mean(axis=0)  # the reference group of this cohort
    try:
        attr = model.attribution(fc[60:72], "planted", steps=16, baseline=reference)
    finally:
        del model.heads["planted"]
    score = np.abs(attr).mean(axis=0)
    top = set(np.argsort(score)[::-1][:len(planted)])
    assert top == set(planted), (sorted(top), np.sort(score)[::-1][:6])


def test_load_rejects_tampered_weights(tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(model_dir(DEFAULT_MODEL), folder)
    with open(folder / "weights.safetensors", "r+b") as f:
        f.seek(-16, 2)
        f.write(b"\x00" * 16)
    with pytest.raises(ConfigError, match="sha256"):
        load_model(folder)
    card = json.loads((folder / "card.json").read_text())
    card["sha256"] = None
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ConfigError, match="unknown model"):
        load_model(tmp_path / "nope")
