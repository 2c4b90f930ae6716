"""JEPA pretraining: spatiotemporal masks, loss decrease, EMA target, determinism, CLI."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bidsfm.models.brainjepa import BrainJEPAConfig  # noqa: E402
from bidsfm.models.training.configs import JEPAConfig  # noqa: E402
from bidsfm.models.training.jepa_masks import sample_masks  # noqa: E402
from bidsfm.models.training.objective_jepa import (  # noqa: E402
    JEPAPretrainer,
    fit_jepa,
    pretrain_jepa,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

R, T, P = 12, 32, 4
ENC = BrainJEPAConfig(n_rois=R, n_frames=T, patch_size=P, embed_dim=32, depth=2, n_heads=4,
                      n_gradients=3)


def _runs(n: int = 16, length: int = 48, seed: int = 0):
    """Runs whose ROIs share a slow latent signal (predictable across ROIs and time)."""
    rng = np.random.default_rng(seed)
    out = []
    t = np.arange(length)
    for _ in range(n):
        latent = np.sin(2 * np.pi * t / rng.uniform(8, 16) + rng.uniform(0, 6))
        load = rng.normal(1.0, 0.3, R)
        x = latent[:, None] * load[None] + 0.3 * rng.standard_normal((length, R))
        x = (x - x.mean(0)) / x.std(0)
        out.append((x.astype(np.float32), np.ones(R, dtype=bool)))
    return out


GRADS = np.random.default_rng(1).standard_normal((R, 3))


def test_masks_shapes_kinds_and_disjointness():
    cfg = JEPAConfig()
    rng = np.random.default_rng(0)
    tp = T // P
    for _ in range(20):
        m = sample_masks(3, R, tp, cfg, rng)
        assert m.context.shape[0] == 3 and set(m.targets) == {"cross_roi", "cross_time",
                                                               "double_cross"}
        for b in range(3):
            ctx = m.context[b].numpy()
            c_roi, c_t = set(ctx // tp), set(ctx % tp)
            assert len(ctx) == len(c_roi) * len(c_t)          # a full ROI x window block
            assert max(c_t) - min(c_t) + 1 == len(c_t) < tp    # contiguous, not all of time
            seen = set(ctx)
            for name, idx in m.targets.items():
                tok = idx[b].numpy()
                assert len(tok) > 0 and len(set(tok)) == len(tok)
                assert not seen & set(tok), name               # disjoint from context/others
                seen |= set(tok)
                roi_in = np.isin(tok // tp, list(c_roi))
                t_in = np.isin(tok % tp, list(c_t))
                if name == "cross_roi":
                    assert not roi_in.any() and t_in.all()
                elif name == "cross_time":
                    assert roi_in.all() and not t_in.any()
                else:
                    assert not roi_in.any() and not t_in.any()


def test_ema_update_is_exact():
    model = JEPAPretrainer(ENC, GRADS, JEPAConfig())
    with torch.no_grad():
        for p in model.encoder.parameters():
            if p.requires_grad:
                p.add_(0.5)
    before = {k: v.clone() for k, v in model.target.state_dict().items()}
    online = model.encoder.state_dict()
    model.update_target(0.9)
    after = model.target.state_dict()
    key = "blocks.0.attn.qkv.weight"
    assert torch.allclose(after[key], 0.9 * before[key] + 0.1 * online[key])
    # the frozen sin/cos table is not averaged
    assert torch.equal(after["pos_embed_proj.emb_h"], before["pos_embed_proj.emb_h"])
    assert not any(p.requires_grad for p in model.target.parameters())


def test_loss_decreases_and_is_deterministic():
    cfg = JEPAConfig(epochs=8, batch_size=8, lr=2e-3, warmup_epochs=1, predictor_dim=16,
                     device="cpu", seed=3)
    runs = _runs()
    enc1, logs = pretrain_jepa(runs, ENC, GRADS, cfg)
    losses = [row["loss"] for row in logs]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < 0.85 * losses[0], losses
    enc2, logs2 = pretrain_jepa(runs, ENC, GRADS, cfg)
    assert [r["loss"] for r in logs2] == losses
    for (k, a), b in zip(enc1.state_dict().items(), enc2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # global RNG untouched by training
    state = torch.random.get_rng_state()
    pretrain_jepa(runs[:8], ENC, GRADS, JEPAConfig(epochs=1, batch_size=8, device="cpu"))
    assert torch.equal(state, torch.random.get_rng_state())


def test_invalid_rois_do_not_count_and_bad_runs_rejected():
    from bidsfm.errors import InputDataError

    runs = _runs(4)
    runs[0] = (runs[0][0].copy(), runs[0][1].copy())
    runs[0][0][:, :3] = 0.0
    runs[0][1][:3] = False
    model = JEPAPretrainer(ENC, GRADS, JEPAConfig(predictor_dim=16))
    logs = fit_jepa(model, runs, JEPAConfig(epochs=1, batch_size=4, predictor_dim=16,
                                            device="cpu"))
    assert np.isfinite(logs[0]["loss"])
    with pytest.raises(InputDataError, match="run 0"):
        fit_jepa(model, [(np.zeros((T - 1, R), np.float32), np.ones(R, bool))],
                 JEPAConfig(epochs=1, device="cpu"))


def test_cli_family_brainjepa(tmp_path):
    """bidsfm-pretrain --family brainjepa writes a headless model folder that loads."""
    import pandas as pd
    from click.testing import CliRunner

    from bidsfm.models.registry import TimeSeriesModel, load_model
    from bidsfm.models.training.cli import pretrain_command

    rng = np.random.default_rng(0)
    ids = [f"sub-{i:02d}" for i in range(6)]
    arrays = {pid: rng.standard_normal((40 + 5 * i, R)).astype(np.float32)
              for i, pid in enumerate(ids)}
    np.savez(tmp_path / "ts.npz", **arrays)
    pd.DataFrame({"participant_id": ids, "repetition_time": [2.0, 2.5, 1.5, 2.0, 3.0, 2.0]}
                 ).to_csv(tmp_path / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "mymodel"
    args = [str(out), "--family", "brainjepa", "--npz", str(tmp_path / "ts.npz"),
            "--participants", str(tmp_path / "participants.tsv"), "--epochs", "1",
            "--batch-size", "3", "--layers", "1", "--heads", "2", "--dim", "16", "--frames",
            "32", "--patch", "8", "--device", "cpu", "--atlas", "MyAtlas"]
    result = CliRunner().invoke(pretrain_command, args)
    assert result.exit_code == 0, result.output
    assert "brainjepa, 6 runs x 12 ROIs" in result.output
    model = load_model(out)
    assert isinstance(model, TimeSeriesModel) and model.heads == {}
    assert model.atlas == "MyAtlas" and model.card["gradients"]["n_components"] == 11
    emb = model.embed([arrays["sub-01"]], [2.5])
    assert emb.shape == (1, 16) and np.isfinite(emb).all()
    # the bidsfmts recipe: variance-covariance term + connectivity readout fitted on the runs
    out2 = tmp_path / "connmodel"
    args2 = [str(out2) if a == str(out) else a for a in args] + [
        "--readout", "connectivity", "--readout-dim", "3", "--var-weight", "1.0",
        "--cov-weight", "0.04"]
    result = CliRunner().invoke(pretrain_command, args2)
    assert result.exit_code == 0, result.output
    conn = load_model(out2)
    assert conn.card["readout"]["readout_dim"] == 3 and conn.card["embedding_size"] == R * 3
    assert conn.card["pretraining"]["config"]["var_weight"] == 1.0
    emb = conn.embed([arrays["sub-01"], arrays["sub-02"]], [2.5, 1.5])
    assert emb.shape == (2, R * 3) and np.isfinite(emb).all()
    log = (out2 / "pretrain_log.tsv").read_text().splitlines()
    assert log[0].split("\t")[5:7] == ["variance", "covariance"]
