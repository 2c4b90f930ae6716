"""BrainMass encoder: official layout, missing-ROI handling, FC helper, batch invariance."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bidsfm.errors import ConfigError  # noqa: E402
from bidsfm.models.brainmass import (  # noqa: E402
    BrainMassConfig,
    BrainMassEncoder,
    embed_fc,
    fc_from_timeseries,
    infer_valid_rois,
)

R = 20


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kw) -> BrainMassEncoder:
    torch.manual_seed(0)
    cfg = BrainMassConfig(n_rois=R, n_layers=2, n_heads=4, ff_dim=32, **kw)
    return BrainMassEncoder(cfg).eval()


def random_fc(b: int, seed: int = 0, t: int = 80) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    ts = rng.standard_normal((b, t, 4)).repeat(R // 4, axis=2) + rng.standard_normal((b, t, R))
    return fc_from_timeseries(ts)


def test_official_state_dict_layout():
    enc = BrainMassEncoder(BrainMassConfig.official())
    sd = enc.state_dict()
    per_layer = {
        "self_attn.in_proj_weight": (300, 100), "self_attn.in_proj_bias": (300,),
        "self_attn.out_proj.weight": (100, 100), "self_attn.out_proj.bias": (100,),
        "linear1.weight": (2048, 100), "linear1.bias": (2048,),
        "linear2.weight": (100, 2048), "linear2.bias": (100,),
        "norm1.weight": (100,), "norm1.bias": (100,), "norm2.weight": (100,), "norm2.bias": (100,),
    }
    expected = {f"attention_list.{i}.{k}": v for i in range(16) for k, v in per_layer.items()}
    expected.update({"dim_reduction.0.weight": (8, 100), "dim_reduction.0.bias": (8,)})
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected
    n_params = sum(p.numel() for p in enc.parameters())
    per = 300 * 100 + 300 + 100 * 100 + 100 + 2048 * 100 + 2048 + 100 * 2048 + 100 + 4 * 100
    assert n_params == 16 * per + 8 * 100 + 8 == 7_241_576
    layer = enc.attention_list[0]
    assert layer.norm_first is False and layer.self_attn.batch_first
    assert layer.self_attn.num_heads == 10


def test_extras_add_only_their_keys():
    base = set(BrainMassEncoder(BrainMassConfig(n_rois=R, n_layers=2, n_heads=4, ff_dim=8,
                                                roi_embedding=False, mask_token=False))
               .state_dict())
    enc = tiny()
    extra = set(enc.state_dict()) - base
    assert extra == {"mask_embedding", "roi_embed"}
    assert enc.mask_embedding.shape == (R,) and enc.roi_embed.shape == (R, R)


def test_config_roundtrip_and_validation():
    cfg = BrainMassConfig(n_rois=30, n_heads=5, roi_embedding=False)
    assert BrainMassConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="does not divide"):
        BrainMassConfig(n_rois=200, n_heads=7)
    with pytest.raises(ConfigError, match="unknown"):
        BrainMassConfig.from_dict({**cfg.to_dict(), "n_roi": 3})
    off = BrainMassConfig.official()
    assert (off.n_layers, off.n_heads, off.ff_dim, off.readout_dim, off.roi_embedding) == (
        16, 10, 2048, 8, False)


def test_embed_shape_and_determinism():
    enc = tiny()
    fc = random_fc(3)
    with torch.no_grad():
        a, b = enc.embed(fc), enc.embed(fc)
        tokens = enc(fc)
    assert a.shape == (3, 8 * R) and tokens.shape == (3, R, R)
    assert torch.equal(a, b)
    assert torch.allclose(a, enc.dim_reduction(tokens).flatten(1))
    enc.train()
    with torch.no_grad():
        assert not torch.equal(enc.embed(fc), a)  # dropout is active in training mode


def test_fc_from_timeseries_matches_corrcoef():
    rng = np.random.default_rng(1)
    ts = rng.standard_normal((90, R))
    ts[:, 3] = 0.0
    ts[:, 7] = 5.0
    ts[10, 11] = np.nan
    fc = fc_from_timeseries(ts, dtype=torch.float64).numpy()
    good = [i for i in range(R) if i not in (3, 7, 11)]
    ref = np.corrcoef(ts[:, good].T)
    np.testing.assert_allclose(fc[np.ix_(good, good)], ref, atol=1e-12)
    for bad in (3, 7, 11):
        assert np.isnan(fc[bad]).all() and np.isnan(fc[:, bad]).all()
    # batched input equals per-sample calls; float16 input works
    batch = rng.standard_normal((3, 50, R)).astype(np.float16)
    out = fc_from_timeseries(batch)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), np.corrcoef(batch[i].astype(np.float64).T),
                                   atol=1e-6)


def test_pseudo_fc_drops_frames():
    rng = np.random.default_rng(2)
    ts = rng.standard_normal((100, R))
    fc = fc_from_timeseries(ts, drop_fraction=0.2, generator=np.random.default_rng(5),
                            dtype=torch.float64).numpy()
    keep = np.sort(np.random.default_rng(5).permutation(100)[:80])
    np.testing.assert_allclose(fc, np.corrcoef(ts[keep].T), atol=1e-12)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(fc_from_timeseries(ts, 0.2, g1), fc_from_timeseries(ts, 0.2, g2))
    assert not torch.allclose(fc_from_timeseries(ts, 0.2, g1), fc_from_timeseries(ts))
    with pytest.raises(ValueError):
        fc_from_timeseries(ts[:3], drop_fraction=0.5)


def test_missing_roi_rows_are_ignored():
    enc = tiny()
    fc = random_fc(2)
    k = 5
    fc[0, k, :] = float("nan")
    fc[0, :, k] = float("nan")
    valid = infer_valid_rois(fc)
    assert not valid[0, k] and valid[0].sum() == R - 1 and valid[1].all()
    with torch.no_grad():
        out = enc(fc)
        emb = enc.embed(fc)
    assert torch.isfinite(out).all() and torch.isfinite(emb).all()
    # any values in the missing ROI's row/column give the same output once it is marked invalid
    other = fc.clone()
    other[0, k, :] = torch.randn(R)
    other[0, :, k] = torch.randn(R)
    zeros = fc.clone()
    zeros[0, k, :] = 0.0
    zeros[0, :, k] = 0.0
    with torch.no_grad():
        assert torch.equal(enc(other, valid=valid), out)
        assert torch.equal(enc(zeros), out)  # all-zero row: inferred invalid too
    # stray NaN entries elsewhere are zeros
    stray = random_fc(1, seed=3)
    stray_nan = stray.clone()
    stray_nan[0, 2, 9] = float("nan")
    stray_zero = stray.clone()
    stray_zero[0, 2, 9] = 0.0
    with torch.no_grad():
        assert torch.equal(enc(stray_nan), enc(stray_zero))


def test_all_missing_sample_is_finite():
    enc = tiny()
    fc = torch.full((1, R, R), float("nan"))
    with torch.no_grad():
        assert torch.isfinite(enc.embed(fc)).all()


def test_masked_rois_hide_their_row_and_column():
    enc = tiny()
    fc = random_fc(1, seed=4)
    mask = torch.zeros(1, R, dtype=torch.bool)
    mask[0, [1, 8]] = True
    changed = fc.clone()
    changed[0, 1, :] = torch.rand(R)
    changed[0, :, 8] = torch.rand(R)
    with torch.no_grad():
        a, b = enc(fc, mask=mask), enc(changed, mask=mask)
        assert torch.equal(a, b)
        assert not torch.allclose(enc(fc), a)
    off = tiny(mask_token=False, roi_embedding=False)
    tokens, pad, _ = off.prepare(fc, mask=mask)
    assert torch.equal(tokens[0, 1], torch.zeros(R)) and (tokens[0, :, 8] == 0).all()
    assert not pad.any()  # masked ROIs remain attention keys


def test_batch_invariance():
    enc = tiny()
    fc = random_fc(5, seed=6)
    fc[2, 4, :] = float("nan")
    fc[2, :, 4] = float("nan")
    with torch.no_grad():
        batch = enc.embed(fc)
        for i in range(5):
            alone = enc.embed(fc[i:i + 1])
            torch.testing.assert_close(alone[0], batch[i], atol=1e-5, rtol=1e-5)


def test_embed_fc_numpy_helper():
    enc = tiny()
    fc = random_fc(3).numpy().astype(np.float64)
    out = embed_fc(enc, fc, batch_size=2)
    assert out.shape == (3, 8 * R) and out.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_allclose(out, enc.embed(torch.as_tensor(fc)).numpy(), atol=1e-5)
    assert embed_fc(enc, fc[0]).shape == (8 * R,)


def test_attributions_of_all_heads_equal_per_head_reference():
    """A Pearson-FC (non-tangent) encoder: every head from shared, chunked passes equals one
    head at a time with all path points in one pass (from the reference FC), to float32
    round-off, and each head's scores sum to head(run) - head(reference)."""
    from bidsfm.models.heads import BINARY, CONTINUOUS, LinearHead
    from bidsfm.models.registry import FoundationModel

    enc = tiny(readout_dim=2)
    dim = 2 * R
    rng = np.random.default_rng(3)
    heads = {"d": LinearHead("d", BINARY, ["a", "b"], rng.normal(size=dim) * 0.1,
                             rng.uniform(0.5, 2, dim), rng.normal(size=dim), 0.2),
             "v": LinearHead("v", CONTINUOUS, [], np.zeros(dim), np.ones(dim),
                             rng.normal(size=dim), 1.0)}
    card = {"name": "t", "atlas": {"name": "X", "roi_names": [f"r{i}" for i in range(R)]},
            "input": {"min_volumes": 10}}
    fc = random_fc(2, seed=4).numpy().astype(np.float32)
    fc[1, 3, :] = fc[1, :, 3] = np.nan
    reference = random_fc(1, seed=5).numpy()[0]
    model = FoundationModel(card=card, encoder=enc, heads=heads, reference_fc=reference)
    got = model.attributions(fc, steps=64)
    x = torch.from_numpy(fc)
    valid = infer_valid_rois(x)
    x0, base = torch.nan_to_num(x, nan=0.0), torch.from_numpy(reference.astype(np.float32))
    alphas = (torch.arange(64, dtype=torch.float32) + 0.5) / 64
    for name, head in heads.items():
        ref = np.empty((2, R))
        for b in range(2):
            delta = x0[b] - base
            path = (base[None] + alphas[:, None, None] * delta[None]).requires_grad_(True)
            emb = enc.embed(path, valid=valid[b][None].expand(64, -1))
            (grad,) = torch.autograd.grad(head.decision_torch(emb.double()).sum(), path)
            ref[b] = (grad.mean(dim=0) * delta).sum(dim=1).numpy()
        ref[~valid.numpy()] = np.nan
        assert np.array_equal(np.isnan(got[name]), np.isnan(ref))
        np.testing.assert_allclose(got[name], ref, rtol=1e-5,
                                   atol=1e-5 * np.nanmax(np.abs(ref)))
        with torch.no_grad():
            emb_run = enc.embed(x0, valid=valid).numpy()
            emb_base = enc.embed(base[None].expand(2, -1, -1), valid=valid).numpy()
        gap = head.decision(emb_run) - head.decision(emb_base)
        np.testing.assert_allclose(np.nansum(got[name], axis=1), gap,
                                   atol=0.02 * np.abs(gap).max() + 1e-4)
