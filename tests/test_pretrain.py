"""BrainMass pretraining: everything learns, EMA target, determinism, checkpoints, data, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bidsfm.errors import ConfigError, InputDataError  # noqa: E402
from bidsfm.models.brainmass import BrainMassConfig  # noqa: E402
from bidsfm.models.training.checkpoint import (  # noqa: E402
    load_encoder,
    pretrained_card,
    save_pretrained,
)
from bidsfm.models.training.cli import pretrain_command  # noqa: E402
from bidsfm.models.training.configs import PretrainConfig  # noqa: E402
from bidsfm.models.training.data import load_timeseries_bidsfm, load_timeseries_npz  # noqa: E402
from bidsfm.models.training.objective_brainmass import (  # noqa: E402
    BrainMassPretrainer,
    fit_pretrainer,
    make_views,
    pretrain,
)
from bidsfm.utils import shared_data_dir  # noqa: E402

R = 20
MODEL = BrainMassConfig(n_rois=R, n_layers=2, n_heads=4, ff_dim=32)


def _shared_abide() -> Path | None:
    abide = shared_data_dir() / "abide"
    ok = (abide / "cc200_timeseries.npz").is_file() and (abide / "participants.tsv").is_file()
    return abide if ok else None


ABIDE = _shared_abide()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_series(n: int = 24, t: int = 100, seed: int = 0) -> list[np.ndarray]:
    """Random series with a 4-block covariance (subject-specific block strengths)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        blocks = rng.standard_normal((t, 4)) * rng.uniform(0.3, 1.5, size=4)
        x = blocks.repeat(R // 4, axis=1) + rng.standard_normal((t, R))
        if i == 1:
            x[:, 3] = 0.0  # ROI outside the field of view
        if i == 2:
            x[:, 17] = np.nan  # n/a ROI
        out.append(x.astype(np.float32))
    return out


def small_cfg(**kw) -> PretrainConfig:
    base = dict(epochs=3, batch_size=8, lr=2e-3, warmup_epochs=0.5, projector_hidden=32,
                projection_dim=16, predictor_hidden=32, device="cpu", seed=0)
    base.update(kw)
    return PretrainConfig(**base)


def build(cfg: PretrainConfig) -> BrainMassPretrainer:
    torch.manual_seed(cfg.seed)
    return BrainMassPretrainer(MODEL, cfg)


@pytest.fixture(scope="module")
def trained():
    """One short run shared by several tests: (model, initial state, logs)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = small_cfg()
    model = build(cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    logs = fit_pretrainer(model, synthetic_series(), cfg, progress=False)
    torch.set_num_threads(old)
    return model, before, logs


def test_losses_finite_and_decreasing(trained):
    _, _, logs = trained
    assert [row["epoch"] for row in logs] == [1, 2, 3]
    for row in logs:
        assert set(row) == {"epoch", "loss", "lra", "mrm", "lr", "momentum", "seconds"}
        assert all(np.isfinite(row[k]) for k in ("loss", "lra", "mrm"))
        assert row["loss"] == pytest.approx(row["lra"] + row["mrm"], rel=1e-5)
    assert logs[-1]["mrm"] < logs[0]["mrm"]
    assert logs[-1]["loss"] < logs[0]["loss"]
    moms = [row["momentum"] for row in logs]
    assert 0.996 <= moms[0] < moms[1] < moms[2] == pytest.approx(1.0)


def test_every_trainable_part_learns(trained):
    model, before, _ = trained
    after = model.state_dict()
    names = [n for n, _ in model.trainable_parameters()]
    for key in ("online.mask_embedding", "online.roi_embed", "recon_head.weight",
                "recon_head.bias", "predictor.0.weight", "predictor.3.weight",
                "projector.0.weight"):
        assert key in names
    unchanged = [n for n in names if torch.equal(before[n], after[n])]
    assert unchanged == []
    assert not any(n.startswith("target") for n in names)


def test_gradients_reach_mask_token_and_heads():
    cfg = small_cfg()
    model = build(cfg).train()
    views = make_views(synthetic_series(4), np.arange(4), cfg, np.random.default_rng(0))
    assert views[4].any() and views[5].any()  # some ROIs masked
    out = model(*views)
    (out["lra"] + out["mrm"]).backward()
    for name, p in model.trainable_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.target.parameters())


def test_ema_target_moves_but_lags(trained):
    model, before, _ = trained
    after = model.state_dict()
    for name, _ in model.target.named_parameters():
        assert torch.equal(before[f"target.{name}"], before[f"online.{name}"])  # starts as a copy
    moved = sum(not torch.equal(before[f"target.{n}"], after[f"target.{n}"])
                for n, _ in model.target.named_parameters())
    differs = sum(not torch.allclose(after[f"target.{n}"], after[f"online.{n}"])
                  for n, _ in model.target.named_parameters())
    n_params = len(list(model.target.parameters()))
    assert moved == n_params and differs == n_params
    assert not model.target.training


def test_same_seed_same_weights_and_rng_untouched():
    series = synthetic_series(12)
    cfg = small_cfg(epochs=1)
    state = torch.get_rng_state()
    enc1, logs1 = pretrain(series, MODEL, cfg, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    enc2, logs2 = pretrain(series, MODEL, cfg, progress=False)
    enc3, _ = pretrain(series, MODEL, small_cfg(epochs=1, seed=1), progress=False)
    sd1, sd2, sd3 = enc1.state_dict(), enc2.state_dict(), enc3.state_dict()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert logs1[0]["loss"] == logs2[0]["loss"]
    assert not all(torch.equal(sd1[k], sd3[k]) for k in sd1)
    assert not enc1.training


def _card(cfg: BrainMassConfig = MODEL, **pretraining) -> dict:
    from bidsfm.models.training.cards import atlas_card, fc_input_card

    return pretrained_card("m", "brainmass", "test encoder",
                           atlas_card("Toy", [f"r{i}" for i in range(R)]), fc_input_card(),
                           cfg.to_dict(), 8 * R, dict(pretraining))


def test_save_load_roundtrip(tmp_path, trained):
    """Checkpoints are model folders: card.json + weights.safetensors, loadable by name."""
    import bidsfm.models

    model, _, _ = trained
    enc = model.online
    folder = save_pretrained(tmp_path / "m", _card(note="test"), enc)
    assert folder == tmp_path / "m"
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "weights.safetensors"]
    card = json.loads((folder / "card.json").read_text())
    assert card["encoder_config"] == MODEL.to_dict() and card["pretraining"] == {"note": "test"}
    assert card["embedding_size"] == 8 * R and card["heads"] == {} and len(card["sha256"]) == 64
    loaded = load_encoder(folder)
    assert not loaded.training
    sd, ld = enc.state_dict(), loaded.state_dict()
    assert set(sd) == set(ld) and all(torch.equal(sd[k], ld[k]) for k in sd)
    fc = torch.rand(2, R, R)
    with torch.no_grad():
        assert torch.equal(loaded.embed(fc), enc.eval().embed(fc))
    assert loaded.cfg == MODEL
    runtime = bidsfm.models.load(folder, device="cpu")  # what --model FOLDER reads
    assert runtime.heads == {} and runtime.roi_names == [f"r{i}" for i in range(R)]
    assert all(torch.equal(sd[k], runtime.encoder.state_dict()[k]) for k in sd)


def test_load_rejects_mismatched_weights(tmp_path):
    from dataclasses import replace

    enc, _ = pretrain(synthetic_series(4), MODEL, small_cfg(epochs=1, batch_size=4),
                      progress=False)
    folder = tmp_path / "m"
    # the card describes another architecture than the weights: every problem is listed
    save_pretrained(folder, _card(replace(MODEL, ff_dim=16)), enc)
    with pytest.raises(ConfigError) as err:
        load_encoder(folder)
    msg = str(err.value)
    assert "attention_list.0.linear1.weight: shape (32, 20) != (16, 20)" in msg
    assert "attention_list.1.linear2.weight: shape (20, 32) != (20, 16)" in msg
    save_pretrained(folder, _card(replace(MODEL, n_layers=1)), enc)
    with pytest.raises(ConfigError, match=r"unexpected attention_list\.1\."):
        load_encoder(folder)
    save_pretrained(folder, _card(replace(MODEL, n_layers=3)), enc)
    with pytest.raises(ConfigError, match=r"missing attention_list\.2\."):
        load_encoder(folder)
    # weights changed after saving: the card's sha256 no longer matches
    save_pretrained(folder, _card(), enc)
    with open(folder / "weights.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ConfigError, match="does not match the card"):
        load_encoder(folder)
    (folder / "card.json").unlink()
    with pytest.raises(ConfigError, match="card.json"):
        load_encoder(folder)


@pytest.mark.skipif(ABIDE is None, reason="../shared/data not available")
def test_load_timeseries_npz_real():
    import pandas as pd

    ids = list(pd.read_csv(ABIDE / "participants.tsv", sep="\t", dtype=str)
               ["participant_id"][:3])
    items = load_timeseries_npz(ABIDE / "cc200_timeseries.npz", ABIDE / "participants.tsv",
                                ids=ids)
    assert [pid for pid, _ in items] == ids
    for _, arr in items:
        assert arr.dtype == np.float32 and arr.ndim == 2 and arr.shape[1] == 200
        assert 78 <= arr.shape[0] <= 316
    with pytest.raises(InputDataError, match="no array"):
        load_timeseries_npz(ABIDE / "cc200_timeseries.npz", ABIDE / "participants.tsv",
                            ids=["sub-missing"])


def test_load_timeseries_bidsfm(tmp_path):
    names = [f"ROI{i}" for i in range(1, 6)]
    rng = np.random.default_rng(0)
    written = {}
    for sub in ("01", "02"):
        func = tmp_path / f"sub-{sub}" / "func"
        func.mkdir(parents=True)
        data = rng.standard_normal((12, 5))
        if sub == "02":
            data[:, 2] = np.nan
        stem = f"sub-{sub}_task-rest_space-MNI152NLin6Asym"
        header = "\t".join(names)
        rows = ["\t".join("n/a" if np.isnan(v) else f"{v:.6f}" for v in row) for row in data]
        (func / f"{stem}_atlas-CC200_stat-mean_timeseries.tsv").write_text(
            header + "\n" + "\n".join(rows) + "\n")
        (func / f"{stem}_atlas-Other_stat-mean_timeseries.tsv").write_text(header + "\n")
        written[stem] = data
    items = load_timeseries_bidsfm(tmp_path, atlas="CC200")
    assert [n for n, _ in items] == sorted(written)
    for name, arr in items:
        assert arr.dtype == np.float32 and arr.shape == (12, 5)
        np.testing.assert_allclose(arr, written[name], atol=1e-5)
    assert np.isnan(items[1][1][:, 2]).all()
    with pytest.raises(InputDataError, match="no \\*_atlas-Missing"):
        load_timeseries_bidsfm(tmp_path, atlas="Missing")


@pytest.mark.skipif(ABIDE is None, reason="../shared/data not available")
def test_cli_on_abide_npz(tmp_path):
    from click.testing import CliRunner

    out = tmp_path / "model"
    args = [str(out), "--npz", str(ABIDE / "cc200_timeseries.npz"), "--participants",
            str(ABIDE / "participants.tsv"), "--max-subjects", "8", "--epochs", "1",
            "--batch-size", "4", "--layers", "1", "--heads", "4", "--ff-dim", "16",
            "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(pretrain_command, args)
    assert result.exit_code == 0, result.output
    assert result.output.count("\n") == 1 and "8 series x 200 ROIs" in result.output
    for name in ("weights.safetensors", "card.json", "pretrain_log.tsv"):
        assert (out / name).is_file()
    log = (out / "pretrain_log.tsv").read_text().splitlines()
    assert log[0].split("\t") == ["epoch", "loss", "lra", "mrm", "lr", "momentum", "seconds"]
    assert len(log) == 2
    card = json.loads((out / "card.json").read_text())
    assert card["encoder_config"]["n_layers"] == 1 and len(card["pretraining"]["subjects"]) == 8
    enc = load_encoder(out)
    assert enc.embedding_dim == 1600
    bad = CliRunner().invoke(pretrain_command, [str(out), "--epochs", "1"])
    assert bad.exit_code != 0 and "--npz" in bad.output


def test_cli_brainmass_writes_a_loadable_model_folder(tmp_path):
    """bidsfm-pretrain --family brainmass writes the same kind of folder as brainjepa: a
    headless model (card.json + weights.safetensors) that bidsfm.models.load reads."""
    import pandas as pd
    from click.testing import CliRunner

    import bidsfm.models

    series = synthetic_series(6, t=60)
    ids = [f"sub-{i:02d}" for i in range(6)]
    np.savez(tmp_path / "ts.npz", **dict(zip(ids, series, strict=True)))
    pd.DataFrame({"participant_id": ids}).to_csv(tmp_path / "participants.tsv", sep="\t",
                                                 index=False)
    out = tmp_path / "mymodel"
    args = [str(out), "--npz", str(tmp_path / "ts.npz"), "--participants",
            str(tmp_path / "participants.tsv"), "--epochs", "1", "--batch-size", "3",
            "--layers", "1", "--heads", "4", "--ff-dim", "16", "--device", "cpu",
            "--no-progress", "--atlas", "Toy"]
    result = CliRunner().invoke(pretrain_command, args)
    assert result.exit_code == 0, result.output
    assert "6 series x 20 ROIs" in result.output and str(out) in result.output
    assert sorted(p.name for p in out.iterdir()) == ["card.json", "pretrain_log.tsv",
                                                      "weights.safetensors"]
    model = bidsfm.models.load(out, device="cpu")
    assert model.heads == {} and model.name == "mymodel" and model.atlas == "Toy"
    assert model.roi_names == [f"roi_{i:03d}" for i in range(1, R + 1)]
    assert model.card["family"] == "brainmass"
    assert model.card["pretraining"]["subjects"] == ids
    emb = model.embed(series[:2])
    assert emb.shape == (2, 8 * R) and np.isfinite(emb).all()


def test_configs_round_trip_and_refuse_unknown_keys():
    from bidsfm.models.training.configs import JEPAConfig

    for cls, word in ((PretrainConfig, "pretraining"), (JEPAConfig, "JEPA")):
        cfg = cls(epochs=2, seed=3)
        assert cls.from_dict(cfg.to_dict()) == cfg
        with pytest.raises(ConfigError, match=f"unknown {word} configuration keys: a, zz"):
            cls.from_dict({**cfg.to_dict(), "zz": 1, "a": 2})
