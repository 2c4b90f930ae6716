"""Brain-JEPA-style encoder: official layout, reference forward, TR-aware input, model API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bidsfm.errors import ConfigError  # noqa: E402
from bidsfm.models.brainjepa import (  # noqa: E402
    BrainJEPAConfig,
    BrainJEPAEncoder,
    official_state_shapes,
    sincos_1d,
)
from bidsfm.models.resample import (  # noqa: E402
    InputSpec,
    RunTooShort,
    normalise_run,
    prepare_run,
    resample_run,
    window_starts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

R, G = 10, 4
CFG = BrainJEPAConfig(n_rois=R, n_frames=32, patch_size=8, embed_dim=16, depth=2, n_heads=2,
                      n_gradients=G)
GRADS = np.random.default_rng(0).standard_normal((R, G)).astype(np.float32)


def _encoder(seed: int = 0) -> BrainJEPAEncoder:
    torch.manual_seed(seed)
    enc = BrainJEPAEncoder(CFG, GRADS).eval()
    with torch.no_grad():  # non-trivial LayerNorm/bias values so the reference test has teeth
        for name, p in enc.named_parameters():
            if p.requires_grad and ("norm" in name or name.endswith("bias")):
                p.add_(0.1 * torch.randn_like(p))
    return enc


# ------------------------------------------------------------------------------ architecture
def test_official_layouts_match_the_published_checkpoints():
    for size, (d, depth, heads) in {"small": (384, 12, 6), "base": (768, 12, 12),
                                    "large": (1024, 24, 16)}.items():
        cfg = BrainJEPAConfig.official(size)
        assert (cfg.embed_dim, cfg.depth, cfg.n_heads) == (d, depth, heads)
        shapes = official_state_shapes(cfg)
        assert len(shapes) == 5 + 12 * depth + 2
        assert shapes["patch_embed.proj.weight"] == (d, 1, 1, 16)
        assert shapes["pos_embed_proj.emb_h"] == (4500, d // 2)
        assert shapes["pos_embed_proj.predictor_pos_embed_proj.weight"] == (d // 2, 30)
        assert shapes[f"blocks.{depth - 1}.attn.qkv.weight"] == (3 * d, d)
        assert shapes["blocks.0.mlp.fc1.weight"] == (4 * d, d)
    enc = BrainJEPAEncoder(BrainJEPAConfig.official("small"))
    got = {k: tuple(v.shape) for k, v in enc.state_dict().items()}
    assert got == official_state_shapes(BrainJEPAConfig.official("small"))
    assert "gradients" not in got                       # a separate tensor, not in the dict
    with pytest.raises(ValueError, match="huge"):
        BrainJEPAConfig.official("huge")


def test_config_from_dict_unknown_key_is_a_config_error():
    """As BrainMass's and the tangent encoder's: a ConfigError naming the key (was ValueError)."""
    assert BrainJEPAConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ConfigError, match="unknown Brain-JEPA configuration keys: n_roi\\.$"):
        BrainJEPAConfig.from_dict({**CFG.to_dict(), "n_roi": 3})


def _reference_forward(enc: BrainJEPAEncoder, x: torch.Tensor) -> torch.Tensor:
    """The architecture written out from the papers' description, with explicit softmax."""
    sd = {k: v.double() for k, v in enc.state_dict().items()}
    b, r, t = x.shape
    p, tp, d = CFG.patch_size, CFG.n_patches, CFG.embed_dim
    w = sd["patch_embed.proj.weight"].reshape(d, p)
    patches = x.double().reshape(b, r, tp, p)                  # ROI-major tokens
    h = torch.einsum("brtp,dp->brtd", patches, w) + sd["patch_embed.proj.bias"]
    h = h.reshape(b, r * tp, d)
    time_code = torch.from_numpy(sincos_1d(d // 2, np.tile(np.arange(tp), r)))
    gpos = torch.from_numpy(GRADS).double() @ sd[
        "pos_embed_proj.predictor_pos_embed_proj.weight"].T + sd[
        "pos_embed_proj.predictor_pos_embed_proj.bias"]
    gpos = gpos.repeat_interleave(tp, dim=0)
    gpos = (gpos - gpos.min()) / (gpos.max() - gpos.min()) * 2 - 1
    h = h + torch.cat([time_code, gpos], dim=1)

    def ln(v, name):
        return torch.nn.functional.layer_norm(v, (d,), sd[name + ".weight"], sd[name + ".bias"],
                                              eps=1e-6)

    nh, hd = CFG.n_heads, d // CFG.n_heads
    for i in range(CFG.depth):
        pre = f"blocks.{i}."
        y = ln(h, pre + "norm1")
        qkv = y @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"]
        q, k, v = (qkv[..., j * d:(j + 1) * d].reshape(b, -1, nh, hd).transpose(1, 2)
                   for j in range(3))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, -1, d)
        h = h + y @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
        y = ln(h, pre + "norm2")
        y = torch.nn.functional.gelu(y @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
        h = h + y @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]
    return ln(h, "norm")


def test_forward_equals_reference_implementation():
    enc = _encoder()
    x = torch.randn(3, R, CFG.n_frames)
    with torch.no_grad():
        ours = enc(x).double()
        ref = _reference_forward(enc, x)
        assert torch.allclose(ours, ref, atol=1e-4)
        assert torch.allclose(enc.embed(x).double(), ref.mean(dim=1), atol=1e-4)


def test_tokens_are_roi_major_and_positional_halves():
    enc = _encoder()
    code = enc.positional_code()[0].detach()
    half = CFG.embed_dim // 2
    assert torch.allclose(code[:, :half].double(),
                          torch.from_numpy(sincos_1d(half, np.tile(np.arange(4), R))), atol=1e-6)
    assert code[:, half:].min() == -1 and code[:, half:].max() == 1
    # every token of an ROI carries the same gradient half
    assert torch.equal(code[0, half:], code[3, half:])
    x = torch.zeros(1, R, CFG.n_frames)
    x[0, 7, 17] = 1.0  # ROI 7, frame 17 -> patch 2 -> token 7 * 4 + 2
    tokens = enc.patch_embed(x)[0] - enc.patch_embed(torch.zeros_like(x))[0]
    assert int(tokens.abs().sum(dim=1).argmax()) == 7 * 4 + 2


def test_missing_rois_do_not_influence_the_embedding():
    enc = _encoder()
    x = torch.randn(2, R, CFG.n_frames)
    valid = torch.ones(2, R, dtype=torch.bool)
    valid[:, [1, 4]] = False
    x2 = x.clone()
    x2[:, [1, 4]] = torch.randn(2, 2, CFG.n_frames) * 5
    with torch.no_grad():
        assert torch.allclose(enc.embed(x, valid), enc.embed(x2, valid), atol=1e-5)
        assert not torch.allclose(enc.embed(x), enc.embed(x2), atol=1e-3)


# -------------------------------------------------------------------------------- resampling
def test_resampling_is_band_limited_and_keeps_duration():
    t3 = np.arange(120) * 3.0
    f = 0.05  # Hz, below both Nyquist frequencies (1/6 Hz at TR 3 s)
    ts = np.stack([np.sin(2 * np.pi * f * t3), np.cos(2 * np.pi * f * t3)], axis=1)
    out = resample_run(ts, 3.0, 2.0)
    assert out.shape == (180, 2)
    t2 = np.arange(180) * 2.0
    truth = np.stack([np.sin(2 * np.pi * f * t2), np.cos(2 * np.pi * f * t2)], axis=1)
    inner = slice(15, -15)
    assert np.abs(out[inner] - truth[inner]).max() < 0.02
    back = resample_run(out, 2.0, 3.0)
    assert back.shape == ts.shape and np.abs(back[10:-10] - ts[10:-10]).max() < 0.02
    # a component above the target Nyquist (0.25 Hz at TR 2 s) is removed, not aliased
    t1 = np.arange(400) * 1.0
    fast = np.sin(2 * np.pi * 0.4 * t1)[:, None]
    assert np.abs(resample_run(fast, 1.0, 2.0)[20:-20]).max() < 0.1
    nan_col = np.c_[ts[:, :1], np.full(len(ts), np.nan)]
    res = resample_run(nan_col, 3.0, 2.0)
    assert np.isnan(res[:, 1]).all() and np.isfinite(res[:, 0]).all()


def test_normalise_and_windows():
    rng = np.random.default_rng(0)
    ts = rng.normal(5, 3, (100, 4))
    ts[:, 2] = 0.0
    z, valid = normalise_run(ts)
    assert valid.tolist() == [True, True, False, True]
    assert np.allclose(z[:, valid].mean(0), 0, atol=1e-6) and np.allclose(z[:, valid].std(0), 1)
    assert (z[:, 2] == 0).all()
    zg, vg = normalise_run(ts, method="zscore_global")
    assert vg.tolist() == valid.tolist() and zg[:, valid].mean() == pytest.approx(0, abs=1e-6)
    assert zg[:, valid].std() == pytest.approx(1, abs=1e-5)
    block = ts[:, valid]
    assert np.allclose(zg[:, valid], (block - block.mean()) / block.std(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown normalisation"):
        InputSpec(normalisation="robust")
    assert window_starts(63, 64, 32) == []
    assert window_starts(64, 64, 32) == [0]
    assert window_starts(80, 64, 32) == [8]
    assert window_starts(160, 64, 32) == [0, 32, 64, 96]
    spec = InputSpec(target_tr=2.0, n_frames=32, window_stride=16)
    win, v = prepare_run(rng.standard_normal((60, R)), 1.5, spec, name="sub-01_bold")
    assert win.shape == (1, R, 32) and v.all()          # 60 x 1.5 s = 45 frames at 2 s
    win, _ = prepare_run(rng.standard_normal((100, R)), 1.5, spec)
    assert win.shape == (4, R, 32)                      # 75 frames: starts 0, 14, 29, 43
    with pytest.raises(RunTooShort, match=r"sub-02_bold: 20 volumes x TR 3 s = 60 s, shorter"):
        prepare_run(rng.standard_normal((20, R)), 3.0, spec, name="sub-02_bold")


# ----------------------------------------------------------------------- model (registry) API
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny time-series model saved and reloaded through the registry, with two heads."""
    from bidsfm.models.heads import fit_binary_head, fit_regression_head
    from bidsfm.models.registry import load_model, save_model
    from bidsfm.models.training.cards import ts_input_card

    torch.manual_seed(0)
    enc = _encoder(1)
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((40, CFG.embed_dim))
    heads = [fit_binary_head("diagnosis", emb, (emb[:, 0] > 0).astype(int), ["TC", "ASD"]),
             fit_regression_head("age", emb, emb[:, 1] * 3 + 20)]
    spec = InputSpec(target_tr=2.0, n_frames=32, window_stride=16)
    card = {"name": "tinyts", "version": "0", "family": "brainjepa",
            "atlas": {"name": "Schaefer100x7", "n_rois": R,
                      "roi_names": [f"R{i}" for i in range(R)]},
            "input": ts_input_card(spec), "encoder_config": CFG.to_dict(),
            "embedding_size": CFG.embed_dim}
    folder = tmp_path_factory.mktemp("tinyts") / "tinyts"
    save_model(folder, card, enc, heads, extra_tensors={"gradients": GRADS})
    return load_model(folder), enc, folder


def test_save_load_roundtrip_with_gradients_and_heads(tiny_model):
    model, enc, folder = tiny_model
    assert model.input_kind == "timeseries" and model.atlas == "Schaefer100x7"
    assert np.array_equal(model.encoder.gradients.numpy(), GRADS)
    x = torch.randn(2, R, 32)
    with torch.no_grad():
        assert torch.allclose(model.encoder.embed(x), enc.embed(x), atol=1e-6)
    assert set(model.heads) == {"diagnosis", "age"}
    card = json.loads((folder / "card.json").read_text())
    assert card["input"]["target_tr"] == 2.0 and card["input"]["normalisation"] == "zscore_run"


def test_headless_model_and_bad_gradients(tmp_path, tiny_model):
    from bidsfm.models.registry import load_model, save_model

    model, enc, folder = tiny_model
    card = json.loads((folder / "card.json").read_text())
    save_model(tmp_path / "nohead", card, enc, [], extra_tensors={"gradients": GRADS})
    bare = load_model(tmp_path / "nohead")
    run = np.random.default_rng(5).standard_normal((40, R))
    assert bare.heads == {} and bare.embed([run], [2.0]).shape == (1, 16)
    with pytest.raises(ConfigError, match="unknown head"):
        bare.attention([run], [2.0], "diagnosis")
    save_model(tmp_path / "badgrad", card, enc, [], extra_tensors={"gradients": GRADS[:, :2]})
    with pytest.raises(ConfigError, match=r"gradients tensor must be \(10, 4\)"):
        load_model(tmp_path / "badgrad")


def test_api_handles_other_tr_and_length(tiny_model):
    model = tiny_model[0]
    rng = np.random.default_rng(2)
    runs = [rng.standard_normal((37, R)), rng.standard_normal((200, R))]
    emb = model.embed(runs, [3.0, 0.8])                 # 111 s and 160 s, TR != 2 s
    assert emb.shape == (2, CFG.embed_dim) and np.isfinite(emb).all()
    table = model.predict(runs, [3.0, 0.8])
    assert list(table.columns) == ["diagnosis_P(ASD)", "age"]
    with pytest.raises(ConfigError, match="repetition time"):
        model.embed(runs)
    with pytest.raises(RunTooShort, match="shorter than the model's window"):
        model.embed([rng.standard_normal((20, R))], [2.0])


def test_integrated_gradients_complete_and_nan_for_missing(tiny_model):
    model = tiny_model[0]
    rng = np.random.default_rng(3)
    ts = rng.standard_normal((50, R))
    ts[:, 3] = np.nan
    prepared = model.prepare([ts], [2.0])
    att = model.attribution(prepared, "diagnosis", steps=64)
    assert att.shape == (1, R) and np.isnan(att[0, 3]) and np.isfinite(np.delete(att[0], 3)).all()
    head = model.heads["diagnosis"]
    emb = model.encode(prepared)
    wins, valid = prepared.runs[0]
    with torch.no_grad():
        base = model.encoder.embed(torch.zeros(1, R, 32), torch.from_numpy(valid)[None]).numpy()
    gap = float(head.decision(emb)[0] - head.decision(base)[0])
    assert np.nansum(att) == pytest.approx(gap, rel=0.02, abs=1e-4)


def test_attributions_of_all_heads_equal_per_head_reference(tiny_model):
    """All heads from shared, chunked forward passes = one head at a time with every path
    point in one pass (the earlier computation), to float32 round-off."""
    model = tiny_model[0]
    rng = np.random.default_rng(6)
    runs = [rng.standard_normal((50, R)), rng.standard_normal((70, R))]
    runs[1][:, 2] = np.nan
    prepared = model.prepare(runs, [2.0, 2.0])
    got = model.attributions(prepared, steps=12)
    for name, head in model.heads.items():
        ref = np.full((2, R), np.nan)
        alphas = (torch.arange(12, dtype=torch.float32) + 0.5) / 12
        for i, (windows, valid) in enumerate(prepared.runs):
            v = torch.from_numpy(valid)
            total = np.zeros(R)
            for w in torch.from_numpy(windows.astype(np.float32)):
                path = (alphas[:, None, None] * w[None]).requires_grad_(True)
                emb = model.encoder.embed(path, v[None].expand(12, -1))
                (grad,) = torch.autograd.grad(head.decision_torch(emb.double()).sum(), path)
                total += (grad.mean(dim=0) * w).sum(dim=1).double().numpy()
            ref[i, valid] = (total / len(windows))[valid]
        assert np.array_equal(np.isnan(got[name]), np.isnan(ref))
        np.testing.assert_allclose(got[name], ref, rtol=1e-5,
                                   atol=1e-5 * np.nanmax(np.abs(ref)))
    with pytest.raises(ConfigError, match="baseline"):
        model.attributions(prepared, steps=4, baseline=np.zeros((R, R)))


# -------------------------------------------------------------------------- participant level
@pytest.fixture(scope="module", params=["mean", "connectivity"])
def cc200_ts_model(request, tmp_path_factory):
    """A tiny random-weight CC200 time-series model folder (fast participant-level tests), with
    the official mean pool or the connectivity readout (2 axes per ROI, fitted on noise)."""
    from bidsfm.models.brainjepa import fit_connectivity_readout
    from bidsfm.models.heads import fit_binary_head, fit_regression_head
    from bidsfm.models.registry import save_model
    from bidsfm.models.training.cards import ts_input_card

    conn = request.param == "connectivity"
    cfg = BrainJEPAConfig(n_rois=200, n_frames=32, patch_size=16, embed_dim=16, depth=1,
                          n_heads=2, n_gradients=G, readout=request.param,
                          readout_dim=2 if conn else 0)
    torch.manual_seed(0)
    grads = np.random.default_rng(0).standard_normal((200, G))
    enc = BrainJEPAEncoder(cfg, grads).eval()
    extra = {"gradients": grads}
    if conn:
        noise = np.random.default_rng(2).standard_normal((6, 2, 200, 32)).astype(np.float32)
        centre, basis, _ = fit_connectivity_readout(enc, [(w, np.ones(200, bool)) for w in noise])
        enc.set_readout(centre, basis)
        extra.update({"readout.centre": centre, "readout.basis": basis})
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((40, enc.embedding_dim))
    heads = [fit_binary_head("diagnosis", emb, (emb[:, 0] > 0).astype(int), ["TC", "ASD"]),
             fit_regression_head("age", emb, emb[:, 1] * 3 + 20)]
    card = {"name": "tinyts", "version": "0", "family": "brainjepa",
            "atlas": {"name": "CC200", "n_rois": 200,
                      "roi_names": [f"CC200_{i:03d}" for i in range(1, 201)]},
            "input": ts_input_card(InputSpec(target_tr=2.0, n_frames=32, window_stride=16)),
            "encoder_config": cfg.to_dict(), "embedding_size": enc.embedding_dim}
    folder = tmp_path_factory.mktemp("m") / "tinyts"
    save_model(folder, card, enc, heads, extra_tensors=extra)
    return folder


def test_participant_level_with_a_time_series_model(tmp_path, tiny_ds, cc200_ts_model):
    import pandas as pd
    from conftest import run_cli

    from bidsfm.models.registry import load_model

    out = tmp_path / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                       "-w", tmp_path / "w", "--min-time", "0", "--model", str(cc200_ts_model)])
    assert code == 0
    embs = sorted(out.rglob("*_desc-tinyts_embedding.tsv"))
    n_runs = sum(r["subject"] == "01" for r in tiny_ds["runs"])
    assert len(embs) == n_runs
    for suffix in ("predictions.tsv", "attention.tsv", "statmap.nii.gz"):
        assert len(sorted(out.rglob(f"*_desc-tinyts*_{suffix}"))) == n_runs, suffix
    emb = pd.read_csv(embs[0], sep="\t")
    model = load_model(cc200_ts_model)
    if model.encoder.config.readout == "mean":
        assert emb.shape == (1, 16) and emb.columns[0] == "emb_000"
    else:   # ROI-major connectivity readout: <ROI>_<axis> columns
        assert emb.shape == (1, 400) and list(emb.columns[:3]) == ["CC200_001_0", "CC200_001_1",
                                                                   "CC200_002_0"]
    att = pd.read_csv(sorted(out.rglob("*_desc-tinyts_attention.tsv"))[0], sep="\t",
                      index_col=0, na_values="n/a")
    assert att.shape == (200, 2) and np.isfinite(att.to_numpy()).sum() > 100
    # the written embedding is the API's embedding of the written time series and TR
    ts_path = str(embs[0]).replace("_desc-tinyts_embedding.tsv", "_stat-mean_timeseries.tsv")
    meta = json.loads(Path(ts_path.replace(".tsv", ".json")).read_text())
    prepared, skipped = model.read_inputs([ts_path.replace(
        "_stat-mean_timeseries.tsv", "_stat-pearsoncorrelation_relmat.tsv")])
    assert not skipped and meta["RepetitionTime"] > 0
    assert np.allclose(model.encode(prepared)[0], emb.to_numpy()[0], atol=1e-4)
    # the group level's attention of a head reads the same inputs through the model (it
    # attributed FC-model heads only, and skipped time-series models with a warning)
    from bidsfm.group.attention import head_attention

    relmats = sorted(out.rglob("*_stat-pearsoncorrelation_relmat.tsv"))
    got = head_attention(model, model.heads["diagnosis"], {"sub-01": relmats}, steps=4)
    assert got["n_runs"] == n_runs and got["n_participants"] == 1
    assert np.isfinite(got["columns"]["attention"]).sum() > 100
    assert model.attribution_unit.startswith("time points")


def test_participant_level_skips_runs_shorter_than_the_window(tmp_path, tiny_ds,
                                                              cc200_ts_model):
    import pandas as pd
    from conftest import run_cli

    out = tmp_path / "out"
    code, _ = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "03",
                       "--denoise-strategy", "none", "--dummy-scans", "60", "-w",
                       tmp_path / "w", "--min-time", "0", "--model", str(cc200_ts_model)])
    assert code == 0
    qcs = [pd.read_csv(p, sep="\t", keep_default_na=False) for p in out.rglob("*_qc.tsv")]
    assert qcs and all(q.loc[0, "n_retained"] == 40 for q in qcs)  # 40 x 0.8 s = 32 s
    for q in qcs:
        assert q.loc[0, "model_status"] == "skipped"
        assert "shorter than the model's window" in q.loc[0, "model_reason"]


def test_planted_signal_ranks_top(tiny_model):
    """A head trained on runs whose classes differ only in two ROIs ranks those ROIs first."""
    import dataclasses

    from bidsfm.models.heads import fit_binary_head

    model = tiny_model[0]
    rng = np.random.default_rng(42)
    planted = (2, 7)
    t = np.arange(40)

    def run(pos: bool) -> np.ndarray:
        x = rng.standard_normal((40, R))
        if pos:
            for r in planted:
                x[:, r] = np.sin(2 * np.pi * t / 8 + rng.uniform(0, 6)) + 0.3 * x[:, r]
        return x

    runs = [run(False) for _ in range(30)] + [run(True) for _ in range(30)]
    y = np.r_[np.zeros(30, int), np.ones(30, int)]
    prepared = model.prepare(runs, [2.0] * 60)
    emb = model.encode(prepared)
    head = fit_binary_head("planted", emb, y, ["neg", "pos"])
    probe = dataclasses.replace(model, heads={"planted": head})
    attr = probe.attribution(prepared[np.arange(30, 40)], "planted", steps=16)
    score = np.abs(attr).mean(axis=0)
    top = set(np.argsort(score)[::-1][:len(planted)])
    assert top == set(planted), (sorted(top), np.round(np.sort(score)[::-1][:4], 4))


def _subject_runs(n_sub: int, n_vol: int, tr: float, n_rois: int, seed: int) -> list:
    """Runs of ``n_sub`` synthetic participants, each with its own slow ROI covariance."""
    from scipy.signal import butter, sosfiltfilt

    rng = np.random.default_rng(seed)
    sos = butter(2, 0.1, fs=1.0 / tr, output="sos")     # BOLD-like: below 0.1 Hz
    runs = []
    for _ in range(n_sub):
        mix = rng.standard_normal((4, n_rois))
        latent = sosfiltfilt(sos, rng.standard_normal((n_vol, 4)), axis=0)
        noise = sosfiltfilt(sos, rng.standard_normal((n_vol, n_rois)), axis=0)
        runs.append(latent @ mix + 0.3 * noise)
    return runs


def _tr_roundtrip_similarity(model, runs, tr: float, via: float):
    """Centred cosine similarity: run vs its TR round trip, and run vs other participants."""
    base = model.embed(runs, [tr] * len(runs))
    trip = model.embed([resample_run(resample_run(r, tr, via), via, tr) for r in runs],
                       [tr] * len(runs))
    centre = base.mean(axis=0)
    a, b = base - centre, trip - centre
    same = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    an = a / np.linalg.norm(a, axis=1, keepdims=True)
    cross = an @ an.T
    other = cross[~np.eye(len(runs), dtype=bool)]
    return same, other


def test_tr_roundtrip_changes_the_embedding_little(tiny_model):
    """Resampling a run to another TR and back keeps its embedding (centred cosine > 0.95),
    far closer than another participant's run."""
    model = tiny_model[0]
    runs = _subject_runs(6, 90, 1.5, R, seed=7)           # TR 1.5 s, 135 s: not the model's
    same, other = _tr_roundtrip_similarity(model, runs, 1.5, via=2.5)
    assert same.min() > 0.95, same
    assert same.min() > other.max() + 0.1, (same, other.max())


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared" / "data" / "abide"
                         / "cc200_timeseries.npz").is_file(), reason="ABIDE data not available")
def test_bundled_ts_model_on_real_runs_other_tr():
    """The bundled bidsfmts on real ABIDE runs: TR 3 s runs of 348 s (the model's target is
    2 s and 128 s windows) embed without error, and a TR round trip keeps the embedding."""
    from bidsfm.models.registry import list_models, load_model
    from bidsfm.models.training.data import load_abide

    if "bidsfmts" not in list_models():
        pytest.skip("bundled bidsfmts not present")
    model = load_model("bidsfmts")
    pheno, series = load_abide(max_subjects=None)
    idx = np.flatnonzero(pheno["site"].to_numpy() == "UCLA_2")[:8]   # TR 3.0 s
    runs = [series[i] for i in idx]
    same, other = _tr_roundtrip_similarity(model, runs, 3.0, via=2.2)
    assert same.min() > 0.9, same
    assert same.min() > other.max(), (same, other.max())


def test_censored_gaps_are_interpolated_on_the_original_grid():
    from bidsfm.models.registry import even_grid

    ts = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, np.nan], [4.0, 1.0]])
    ts[:, 1] = [1.0, 2.0, 4.0, 5.0]
    out = even_grid(ts, [2, 3, 5, 6])                    # volumes 0-1 dummies, 4 censored
    assert out.shape == (5, 2) and np.allclose(out[:, 0], [0, 1, 2, 3, 4])
    assert np.allclose(out[:, 1], [1, 2, 3, 4, 5])
    nan_col = np.c_[ts[:, 0], [1.0, np.nan, 2.0, 3.0]]
    assert np.isnan(even_grid(nan_col, [0, 1, 3, 4])[:, 1]).all()
    assert even_grid(ts, None) is ts and even_grid(ts, [0, 1, 2, 3]) is ts
