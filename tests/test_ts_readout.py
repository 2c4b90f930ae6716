"""Connectivity readout of the time-series encoder and the JEPA variance-covariance term."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bidsfm.errors import ConfigError  # noqa: E402
from bidsfm.models.brainjepa import (  # noqa: E402
    BrainJEPAConfig,
    BrainJEPAEncoder,
    fit_connectivity_readout,
)
from bidsfm.models.training.configs import JEPAConfig  # noqa: E402
from bidsfm.models.training.jepa_masks import sample_masks  # noqa: E402
from bidsfm.models.training.objective_jepa import JEPAPretrainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

R, G, T, P = 10, 4, 32, 8
GRADS = np.random.default_rng(0).standard_normal((R, G)).astype(np.float32)


def _cfg(**kw) -> BrainJEPAConfig:
    return BrainJEPAConfig(n_rois=R, n_frames=T, patch_size=P, embed_dim=16, depth=2, n_heads=2,
                           n_gradients=G, **kw)


def _encoder(seed: int = 0, **kw) -> BrainJEPAEncoder:
    torch.manual_seed(seed)
    return BrainJEPAEncoder(_cfg(**kw), GRADS).eval()


def _reference_connectivity(tokens: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Plain numpy: ROI trajectories centred over valid ROIs, Pearson r, Fisher z."""
    n_p = T // P
    out = np.zeros((tokens.shape[0], R, R))
    for b in range(tokens.shape[0]):
        traj = tokens[b].reshape(R, n_p * tokens.shape[-1]).astype(np.float64)
        v = valid[b]
        traj = traj - traj[v].mean(axis=0)
        r = np.corrcoef(traj[v])
        z = np.arctanh(np.clip(r, -0.999, 0.999))
        np.fill_diagonal(z, 0.0)
        out[b][np.ix_(v, v)] = z
    return out


def test_mean_readout_is_the_default_and_official():
    assert BrainJEPAConfig.official("small").readout == "mean"
    enc = _encoder()
    assert enc.embedding_dim == 16
    with pytest.raises(ValueError, match="readout must be one of"):
        _cfg(readout="cls")
    with pytest.raises(ValueError, match="readout_dim must be in"):
        _cfg(readout="connectivity", readout_dim=R + 1)


def test_connectivity_readout_equals_numpy_reference():
    enc = _encoder(readout="connectivity")
    assert enc.embedding_dim == R * (R - 1) // 2
    x = torch.randn(3, R, T)
    valid = torch.ones(3, R, dtype=torch.bool)
    valid[1, [2, 5]] = False
    with torch.no_grad():
        tokens = enc(x, valid)
        emb = enc.embed(x, valid).numpy()
    ref = _reference_connectivity(tokens.numpy(), valid.numpy())
    iu = np.triu_indices(R, 1)
    np.testing.assert_allclose(emb, ref[:, iu[0], iu[1]], atol=1e-4)
    assert np.all(ref[1][[2, 5]] == 0)


def test_missing_rois_do_not_influence_the_connectivity_embedding():
    enc = _encoder(readout="connectivity")
    x = torch.randn(2, R, T)
    valid = torch.ones(2, R, dtype=torch.bool)
    valid[:, [1, 4]] = False
    x2 = x.clone()
    x2[:, [1, 4]] = torch.randn(2, 2, T) * 5
    with torch.no_grad():
        assert torch.allclose(enc.embed(x, valid), enc.embed(x2, valid), atol=1e-5)
        assert not torch.allclose(enc.embed(x), enc.embed(x2), atol=1e-3)


def _prepared_runs(n: int = 12, seed: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(n):
        w = rng.standard_normal((1 + i % 3, R, T)).astype(np.float32)
        v = np.ones(R, dtype=bool)
        if i == 4:
            v[7] = False
            w[:, 7] = 0.0
        runs.append((w, v))
    return runs


def test_fitted_readout_axes_and_projection():
    enc = _encoder(readout="connectivity", readout_dim=3)
    assert enc.embedding_dim == R * 3
    runs = _prepared_runs()
    centre, basis, explained = fit_connectivity_readout(enc, runs)
    assert centre.shape == (R, R) and basis.shape == (R, 3)
    np.testing.assert_allclose(basis.T @ basis, np.eye(3), atol=1e-5)
    assert np.all(np.diff(explained) <= 1e-9) and 0 < explained.sum() <= 1
    assert np.allclose(centre, centre.T, atol=1e-5)
    again = fit_connectivity_readout(enc, runs)
    assert np.array_equal(basis, again[1])                       # deterministic, signs fixed
    enc.set_readout(centre, basis)
    x = torch.from_numpy(runs[0][0])
    with torch.no_grad():
        z = enc.token_connectivity(enc(x)).numpy()
        emb = enc.embed(x).numpy()
    np.testing.assert_allclose(emb, ((z - centre) @ basis).reshape(len(x), -1), atol=1e-4)
    with pytest.raises(ValueError, match="readout tensors must be"):
        enc.set_readout(centre, basis[:, :2])
    with pytest.raises(ValueError, match="needs readout='connectivity'"):
        fit_connectivity_readout(_encoder(), runs)


def test_connectivity_model_saves_and_loads(tmp_path):
    from bidsfm.models.registry import load_model, save_model
    from bidsfm.models.resample import InputSpec
    from bidsfm.models.training.cards import ts_input_card

    enc = _encoder(readout="connectivity", readout_dim=2)
    centre, basis, _ = fit_connectivity_readout(enc, _prepared_runs())
    enc.set_readout(centre, basis)
    card = {"name": "tinyconn", "version": "0", "family": "brainjepa",
            "atlas": {"name": "X", "n_rois": R, "roi_names": [f"R{i}" for i in range(R)]},
            "input": ts_input_card(InputSpec(target_tr=2.0, n_frames=T, window_stride=16)),
            "encoder_config": enc.config.to_dict(), "embedding_size": enc.embedding_dim}
    save_model(tmp_path / "m", card, enc, [], extra_tensors={
        "gradients": GRADS, "readout.centre": centre, "readout.basis": basis})
    model = load_model(tmp_path / "m")
    run = np.random.default_rng(1).standard_normal((50, R))
    with torch.no_grad():
        direct = enc.embed(torch.from_numpy(
            model.prepare([run], [2.0]).runs[0][0].astype(np.float32))).numpy().mean(0)
    np.testing.assert_allclose(model.embed([run], [2.0])[0], direct, atol=1e-5)
    save_model(tmp_path / "bad", card, enc, [], extra_tensors={"gradients": GRADS})
    with pytest.raises(ConfigError, match="readout.centre / readout.basis"):
        load_model(tmp_path / "bad")


# ------------------------------------------------------------------- variance-covariance term
def _pretrainer(**kw) -> JEPAPretrainer:
    torch.manual_seed(0)
    return JEPAPretrainer(_cfg(), GRADS, JEPAConfig(predictor_dim=16, **kw))


def test_variance_term_penalises_collapsed_tokens_only():
    model = _pretrainer(var_weight=1.0, var_target=0.5, cov_weight=0.0)
    masks = sample_masks(8, R, T // P, model.cfg, np.random.default_rng(0))
    valid = torch.ones(8, masks.context.shape[1], dtype=torch.bool)
    # every participant's token at a position is identical -> no between-participant variance
    pos_only = torch.randn(R * (T // P), 16)[masks.context]
    var, cov = model.regulariser(pos_only, masks.context, valid)
    assert var.item() == pytest.approx(0.5, abs=0.02)
    spread = torch.randn(8, masks.context.shape[1], 16) * 3
    var2, cov2 = model.regulariser(spread, masks.context, valid)
    assert var2.item() < 0.05 and cov2.item() > 0


def test_regulariser_off_by_default_leaves_the_jepa_loss():
    x = torch.randn(4, R, T)
    valid = torch.ones(4, R, dtype=torch.bool)
    masks = sample_masks(4, R, T // P, JEPAConfig(), np.random.default_rng(1))
    plain = _pretrainer()(x, valid, masks)
    reg = _pretrainer(var_weight=2.0, cov_weight=0.5)(x, valid, masks)
    parts = ("cross_roi", "cross_time", "double_cross")
    for k in parts:
        assert torch.allclose(plain[k], reg[k])
    assert torch.allclose(reg["loss"], plain["loss"] + 2.0 * reg["variance"]
                          + 0.5 * reg["covariance"], atol=1e-6)
    assert reg["variance"].item() > 0


def test_random_control_is_the_pretraining_starting_point():
    """The card's random-weight control is exactly the encoder JEPA pretraining starts from."""
    cfg = JEPAConfig(seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        start = JEPAPretrainer(_cfg(), GRADS, cfg).encoder
    torch.manual_seed(cfg.seed)
    control = BrainJEPAEncoder(_cfg(), GRADS)
    for (k, a), (_, b) in zip(start.state_dict().items(), control.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k


def test_pretraining_gain_flags_a_model_no_better_than_its_control():
    from bidsfm.models.training.build_ts import pretraining_gain

    control = {"diagnosis": {"auc": 0.70, "auc_ci95": [0.66, 0.74]},
               "age": {"mae": 5.0, "mae_ci95": [4.7, 5.3]}}
    same = pretraining_gain({"diagnosis": {"auc": 0.72}, "age": {"mae": 4.9}}, control)
    assert same["improved"] == [] and "no better than the same architecture" in same["warning"]
    assert "diagnosis AUC 0.720 vs 0.700 (control 95% CI 0.660-0.740)" in same["warning"]
    better = pretraining_gain({"diagnosis": {"auc": 0.75}, "age": {"mae": 4.5}}, control)
    assert better["improved"] == ["diagnosis", "age"] and better["warning"] is None
