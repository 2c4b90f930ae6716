"""Integrated gradients of every head from shared, chunked forward passes (issue 16).

The bundled model on realistic FC (sampled from the ABIDE mean FC shipped with the demo, and one
real ABIDE run when ../shared/data is present): the shared computation equals a straightforward
per-head computation (all steps in one pass, one pass per head) to float32 round-off, the
attributions are complete, and the path is walked in chunks with one forward pass per chunk
for all heads.
"""

from __future__ import annotations

import numpy as np
import pytest

from bidsfm.models.registry import DEFAULT_MODEL, list_models, load_model

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in list_models(),
                                reason="bundled model not present")


@pytest.fixture(scope="module")
def model():
    import torch

    torch.set_num_threads(1)
    return load_model()


def _demo_fc(seed: int, n_volumes: int = 150, missing: tuple[int, ...] = ()) -> np.ndarray:
    """Pearson FC of a run drawn with the covariance of the ABIDE mean FC (bundled)."""
    from bidsfm.demo import bundled_target_corr
    from bidsfm.models.brainmass import fc_from_timeseries

    corr = bundled_target_corr()
    rng = np.random.default_rng(seed)
    ts = rng.multivariate_normal(np.zeros(len(corr)), corr, size=n_volumes)
    fc = np.asarray(fc_from_timeseries(ts), dtype=np.float32)
    for r in missing:
        fc[r, :] = fc[:, r] = np.nan
    return fc


@pytest.fixture(scope="module")
def fcs() -> np.ndarray:
    """Two demo runs, the second with two missing ROIs."""
    return np.stack([_demo_fc(0), _demo_fc(1, missing=(5, 77))])


def _reference(model, fc: np.ndarray, head, steps: int) -> np.ndarray:
    """Per-head integrated gradients, all path points in one pass (the earlier computation)."""
    import torch

    from bidsfm.models.brainmass import infer_valid_rois

    enc = model.encoder
    x = torch.from_numpy(np.asarray(fc, dtype=np.float32))
    valid = infer_valid_rois(x)
    t = enc.tangent(x.masked_fill(~valid[:, :, None] | ~valid[:, None, :], float("nan"))).float()
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
    out = np.empty(valid.shape)
    for b in range(len(t)):
        path = (alphas[:, None, None] * t[b][None]).requires_grad_(True)
        emb = enc.embed_tangent(path, valid[b][None].expand(steps, -1))
        (grad,) = torch.autograd.grad(head.decision_torch(emb.double()).sum(), path)
        out[b] = (grad.mean(dim=0) * t[b]).sum(dim=1).numpy()
    out[~valid.numpy()] = np.nan
    return out


def _assert_close(new: np.ndarray, ref: np.ndarray) -> None:
    assert np.array_equal(np.isnan(new), np.isnan(ref))
    scale = np.nanmax(np.abs(ref))
    np.testing.assert_allclose(new, ref, rtol=1e-5, atol=1e-5 * scale)


def test_shared_passes_equal_per_head_reference(model, fcs):
    from bidsfm.models.attention import integrated_gradients_heads

    # chunk 5 of 16 steps: three full chunks and a last one of 1 point
    got = integrated_gradients_heads(model, fcs, model.heads, steps=16, chunk=5)
    assert list(got) == list(model.heads)
    for name, head in model.heads.items():
        ref = _reference(model, fcs, head, 16)
        assert got[name].shape == (2, 200) and np.isnan(got[name][1, [5, 77]]).all()
        _assert_close(got[name], ref)
        # the one-head API gives the same numbers
        _assert_close(model.attribution(fcs, name, steps=16), ref)


def test_one_head_per_run(model, fcs):
    """A sequence of heads (e.g. each run's predicted class) attributes each run to its own."""
    from bidsfm.models.heads import MULTICLASS, LinearHead

    emb_dim = model.card["embedding_size"]
    rng = np.random.default_rng(4)
    multi = LinearHead("m", MULTICLASS, ["a", "b", "c"], np.zeros(emb_dim), np.ones(emb_dim),
                       rng.normal(size=(3, emb_dim)) * 0.01, np.zeros(3))
    heads = [multi.class_head(2), multi.class_head(0)]
    got = model.attributions(fcs, {"m": heads, "age": model.heads["age"]}, steps=8)
    for b, head in enumerate(heads):
        _assert_close(got["m"][b], _reference(model, fcs[b:b + 1], head, 8)[0])
    _assert_close(got["age"], _reference(model, fcs, model.heads["age"], 8))
    with pytest.raises(ValueError, match="one head per run"):
        model.attributions(fcs, {"m": heads[:1]}, steps=8)


def test_one_forward_pass_per_chunk_for_all_heads(model, fcs, monkeypatch):
    """Memory does not grow with the steps: the path goes through the encoder in chunks, and
    each chunk's forward pass serves every head."""
    from bidsfm.models.attention import integrated_gradients_heads

    sizes: list[int] = []
    enc = model.encoder
    original = enc.embed_tangent

    def counting(path, valid):
        sizes.append(len(path))
        return original(path, valid)

    monkeypatch.setattr(enc, "embed_tangent", counting)
    integrated_gradients_heads(model, fcs[:1], model.heads, steps=20, chunk=8)
    assert len(model.heads) == 3 and sizes == [8, 8, 4]


def test_attributions_are_complete(model, fcs):
    """Scores of every head sum to head(run) - head(baseline): the baseline is the model's
    tangent origin with the run's own missing ROIs."""
    import torch

    from bidsfm.models.brainmass import infer_valid_rois

    got = model.attributions(fcs, steps=64)
    emb = model.encode(fcs)
    valid = infer_valid_rois(torch.from_numpy(fcs))
    with torch.no_grad():
        base = model.encoder.embed_tangent(torch.zeros(2, 200, 200), valid).numpy()
    for name, head in model.heads.items():
        gap = head.decision(emb) - head.decision(base)
        np.testing.assert_allclose(np.nansum(got[name], axis=1), gap,
                                   atol=0.005 * np.abs(gap).max() + 1e-4)


def test_real_abide_run_equals_reference(model, shared_data):
    """One real ABIDE run (ABIDE Preprocessed, CC200): shared passes = per-head reference."""
    from bidsfm.models.brainmass import fc_from_timeseries

    path = shared_data / "abide" / "cc200_timeseries.npz"
    if not path.is_file():
        pytest.skip("ABIDE time series not available")
    with np.load(path) as npz:
        ts = np.asarray(npz[sorted(npz.files)[0]], dtype=np.float64)
    fc = np.asarray(fc_from_timeseries(ts), dtype=np.float32)[None]
    got = model.attributions(fc, steps=16)
    for name, head in model.heads.items():
        _assert_close(got[name], _reference(model, fc, head, 16))
