"""Tangent-space FC (bidsfm.models.tangent) and the tangent encoder of bidsfmfc 2.x."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _series(n_sub=6, t=120, r=12, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(r, r)) / np.sqrt(r)
    return [rng.normal(size=(t, r)) @ (np.eye(r) + 0.5 * mix) for _ in range(n_sub)]


def test_tangent_matches_nilearn():
    """Same covariances and reference -> the same tangent matrices as nilearn."""
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    from bidsfm.models.tangent import tangent_space

    series = _series()
    cm = ConnectivityMeasure(kind="tangent", cov_estimator=EmpiricalCovariance(),
                             standardize=False)
    ref_out = cm.fit_transform(series)
    covs = ConnectivityMeasure(kind="covariance", cov_estimator=EmpiricalCovariance(),
                               standardize=False).fit_transform(series)
    ours = tangent_space(covs, cm.mean_, fill=np.eye(12), shrinkage=0.0)
    np.testing.assert_allclose(ours, ref_out, atol=1e-6)


def test_reference_maps_to_zero_and_missing_rois_are_filled():
    from bidsfm.models.tangent import tangent_space, whitener
    from bidsfm.models.training.objective_tangent import fit_reference

    fc = np.stack([np.corrcoef(s.T) for s in _series(r=10)])
    fc[0, 3, :] = np.nan
    fc[0, :, 3] = np.nan
    ref, fill = fit_reference(fc, 0.3)
    assert np.all(np.isfinite(ref)) and np.all(np.isfinite(fill))
    t = tangent_space(fc, ref, fill, 0.3)
    assert np.all(np.isfinite(t))
    np.testing.assert_allclose(t, np.swapaxes(t, 1, 2), atol=1e-10)
    # the reference itself (as a prepared matrix) maps to ~0
    w = whitener(ref)
    np.testing.assert_allclose(w @ ref @ w, np.eye(10), atol=1e-8)


def test_torch_tangent_equals_numpy():
    from bidsfm.models.tangent import tangent_space, tangent_torch, whitener
    from bidsfm.models.training.objective_tangent import fit_reference

    fc = np.stack([np.corrcoef(s.T) for s in _series(r=10)])
    fc[1, 2, :] = np.nan
    fc[1, :, 2] = np.nan
    ref, fill = fit_reference(fc, 0.3)
    a = tangent_space(fc, ref, fill, 0.3)
    b = tangent_torch(torch.as_tensor(fc), torch.as_tensor(whitener(ref)),
                      torch.as_tensor(fill), 0.3).numpy()
    np.testing.assert_allclose(a, b, atol=1e-8)


def _encoder(k=4, r=16):
    from bidsfm.models.tangentmass import TangentMassConfig, TangentMassEncoder

    torch.manual_seed(0)
    return TangentMassEncoder(TangentMassConfig(n_rois=r, n_layers=1, n_heads=4, ff_dim=32,
                                                readout_dim=k)).eval()


def test_encoder_embedding_missing_rois_and_shapes():
    enc = _encoder(k=0)
    fc = torch.as_tensor(np.stack([np.corrcoef(s.T) for s in _series(n_sub=3, r=16)]),
                         dtype=torch.float32)
    emb = enc.embed(fc)
    assert emb.shape == (3, 16 * 17 // 2) and torch.isfinite(emb).all()
    # a missing ROI: whatever its row holds, the other ROIs' embedding is unchanged... and the
    # value in its row/column does not matter
    a = fc.clone()
    a[0, 5, :] = float("nan")
    a[0, :, 5] = float("nan")
    b = a.clone()
    b[0, 5, 7] = b[0, 7, 5] = 0.3  # a stray finite entry of a missing ROI's row: ignored
    valid = torch.ones(3, 16, dtype=torch.bool)
    valid[0, 5] = False
    np.testing.assert_allclose(enc.embed(a, valid).detach().numpy(),
                               enc.embed(b, valid).detach().numpy(), atol=1e-6)


def test_integrated_gradients_complete_in_tangent_space():
    """IG scores of a tangent encoder sum to head(run) - head(reference)."""
    from bidsfm.models.attention import integrated_gradients
    from bidsfm.models.heads import BINARY, LinearHead
    from bidsfm.models.registry import FoundationModel

    enc = _encoder(k=4)
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 4)))[0]
    enc.set_readout(basis)
    rng = np.random.default_rng(2)
    head = LinearHead("h", BINARY, ["a", "b"], np.zeros(64), np.ones(64),
                      rng.normal(size=64), 0.1)
    card = {"name": "t", "atlas": {"name": "X", "roi_names": [f"r{i}" for i in range(16)]},
            "input": {"min_volumes": 10}}
    model = FoundationModel(card=card, encoder=enc, heads={"h": head})
    fc = np.stack([np.corrcoef(s.T) for s in _series(n_sub=2, r=16)]).astype(np.float32)
    scores = integrated_gradients(model, fc, "h", steps=256)
    emb = model.encode(fc)
    zero = enc.embed_tangent(torch.zeros(1, 16, 16), torch.ones(1, 16, dtype=torch.bool))
    expect = head.decision(emb) - head.decision(zero.detach().numpy())
    np.testing.assert_allclose(scores.sum(axis=1), expect, rtol=0.02, atol=1e-3)


def test_embedding_columns_and_edge_contributions():
    from bidsfm.group.normative import roi_contributions

    enc = _encoder(k=0, r=16)
    names = [f"r{i}" for i in range(16)]
    cols = enc.embedding_columns(names)
    assert len(cols) == enc.embedding_dim == 136 and cols[:2] == ["r0--r0", "r0--r1"]
    terms = np.random.default_rng(0).normal(size=(3, len(cols)))
    rois, contrib = roi_contributions(terms, cols)
    assert rois == names
    np.testing.assert_allclose(contrib.sum(axis=1), terms.sum(axis=1))


def test_pretraining_is_deterministic_and_does_not_collapse():
    from bidsfm.models.tangentmass import TangentMassConfig
    from bidsfm.models.training.configs import TangentPretrainConfig
    from bidsfm.models.training.objective_tangent import pretrain_tangent

    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16)) / 4
    first = [rng.normal(size=(60, 16)) @ (np.eye(16) + mix * rng.uniform(0, 1)) for _ in range(12)]
    second = [s + 0.3 * rng.normal(size=s.shape) if i % 3 else None for i, s in enumerate(first)]
    cfg = TangentMassConfig(n_rois=16, n_layers=1, n_heads=4, ff_dim=32)
    pcfg = TangentPretrainConfig(epochs=2, batch_size=4, device="cpu")
    enc1, logs1 = pretrain_tangent([first, second], cfg, pcfg, progress=False)
    enc2, logs2 = pretrain_tangent([first, second], cfg, pcfg, progress=False)
    assert [r["loss"] for r in logs1] == [r["loss"] for r in logs2]
    for a, b in zip(enc1.state_dict().values(), enc2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert logs1[-1]["emb_sd"] > 0.2 * logs1[-1]["input_sd"]


def _bundled_tangent_model():
    from bidsfm.models.registry import load_model

    model = load_model("bidsfmfc")
    if model.card.get("encoder_config", {}).get("kind") != "tangent":
        pytest.skip("the bundled bidsfmfc is not a tangent model")
    return model


def test_bundled_model_on_real_abide_runs(abide_small):
    """Real ABIDE runs: finite embeddings with spread, missing ROIs handled, reference ~ 0."""
    model = _bundled_tangent_model()
    pheno, series = abide_small
    fc = model.fc_from_series(series)
    emb = model.encode(fc)
    assert emb.shape == (len(series), 200 * 201 // 2) and np.all(np.isfinite(emb))
    assert emb.std(axis=0).mean() > 0.01  # no collapse: participants differ
    # the model's own reference maps to (nearly) the zero tangent matrix
    t = model.encoder.tangent(torch.as_tensor(model.encoder.fill[None].numpy()))
    assert float(t.abs().mean()) < 0.05
    out = model.predict(series, None)
    assert out["diagnosis_P(ASD)"].between(0, 1).all()


@pytest.fixture(scope="module")
def abide_small(shared_data):
    """12 real ABIDE participants from 3 sites (some with ROIs outside the field of view)."""
    from bidsfm.models.training.data import load_abide

    if not (shared_data / "abide" / "cc200_timeseries.npz").is_file():
        pytest.skip("ABIDE data not available")
    pheno, series = load_abide(shared_data)
    pick = pheno.groupby("site").head(4).index[:12].to_numpy()
    if not (pheno.loc[pick, "zero_rois"] > 0).any():
        pick = np.concatenate([pick[:-1], [int(np.flatnonzero(pheno["zero_rois"] > 0)[0])]])
    return pheno.loc[pick].reset_index(drop=True), [series[i] for i in pick]
