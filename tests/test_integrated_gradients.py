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

from bidsfm.models.registry import DEFAULT_MODEL, list_models

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in list_models(),
                                reason="bundled model not present")


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


def test_runs_batched_in_one_pass_equal_one_run_at_a_time(model, fcs, monkeypatch):
    """On a GPU the path points of several runs share a forward pass (runs_per_pass); the
    attributions equal the one-run-at-a-time computation the CPU uses, per head and per run
    (two missing ROIs in the second run, a third run in a last, smaller group)."""
    from bidsfm.models.attention import integrated_gradients_heads
    from bidsfm.models.heads import MULTICLASS, LinearHead

    three = np.concatenate([fcs, _demo_fc(2, missing=(199,))[None]])
    emb_dim = model.card["embedding_size"]
    multi = LinearHead("m", MULTICLASS, ["a", "b", "c"], np.zeros(emb_dim), np.ones(emb_dim),
                       np.random.default_rng(5).normal(size=(3, emb_dim)) * 0.01, np.zeros(3))
    heads = {**model.heads, "m": [multi.class_head(k) for k in (2, 0, 1)]}
    one = integrated_gradients_heads(model, three, heads, steps=12, chunk=5)
    sizes: list[int] = []
    original = model.encoder.embed_tangent

    def counting(path, valid):
        sizes.append(len(path))
        assert valid.shape == (len(path), 200)
        return original(path, valid)

    monkeypatch.setattr(model.encoder, "embed_tangent", counting)
    batched = integrated_gradients_heads(model, three, heads, steps=12, chunk=5,
                                         runs_per_pass=2)
    assert sizes == [10, 10, 4, 5, 5, 2]  # 2 runs x (5, 5, 2 points), then 1 run
    assert list(batched) == list(heads)
    for name in heads:
        _assert_close(batched[name], one[name])
        assert np.isnan(batched[name][2, 199]) and np.isnan(batched[name][1, [5, 77]]).all()
    with pytest.raises(ValueError, match="runs_per_pass"):
        integrated_gradients_heads(model, three, heads, steps=4, runs_per_pass=0)


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


def _multiclass_head(model, fcs):
    """A 3-class head whose predicted class is 0 for run 0 and 1 for run 1."""
    from bidsfm.models.heads import MULTICLASS, LinearHead

    emb = model.encode(fcs).astype(np.float64)
    direction = emb[0] - emb[1]
    coef = np.stack([direction, -direction, np.zeros_like(direction)])
    return LinearHead("m", MULTICLASS, ["a", "b", "c"], (emb[0] + emb[1]) / 2,
                      np.ones(emb.shape[1]), coef, np.zeros(3))


def test_participant_level_attributes_each_runs_predicted_class(model, fcs):
    """encode: every head in one call; a multi-class head's attribution is that of each run's
    predicted class (its centred logit)."""
    import dataclasses

    from bidsfm.encode import _head_attributions

    multi = _multiclass_head(model, fcs)
    two = dataclasses.replace(model, heads={"age": model.heads["age"], "m": multi})
    preds = two.head_outputs(two.encode(fcs))
    assert list(preds["m"].argmax(axis=1)) == [0, 1]
    got = _head_attributions(two, fcs, preds, steps=8)
    assert list(got) == ["age", "m"]
    _assert_close(got["age"], _reference(model, fcs, model.heads["age"], 8))
    for b in range(2):
        _assert_close(got["m"][b], _reference(model, fcs[b:b + 1], multi.class_head(b), 8)[0])


def test_group_attention_of_a_multiclass_head(model, fcs, tmp_path):
    """Group level: all class heads of a participant's runs from shared passes, equal to each
    class head's own attribution averaged over the runs."""
    from bidsfm.derivatives import read_relmat, write_tsv_atomic
    from bidsfm.group.attention import head_attention

    names = model.roi_names
    paths = [write_tsv_atomic(tmp_path / f"run{b}.tsv", fcs[b], names, index=names)
             for b in range(2)]
    back = np.stack([read_relmat(p, names)[1].astype(np.float32) for p in paths])
    multi = _multiclass_head(model, fcs)
    res = head_attention(model, multi, {"sub-1": paths}, steps=8)
    assert res["n_runs"] == 2 and res["n_participants"] == 1
    per_class = []
    for k, label in enumerate(multi.labels):
        ref = np.nanmean(_reference(model, back, multi.class_head(k), 8), axis=0)
        _assert_close(res["columns"][f"attention_{label}"], ref)
        per_class.append(ref)
    _assert_close(res["columns"]["attention"],
                  np.sqrt(np.nanmean(np.square(per_class), axis=0)))


def test_attention_imports_no_sympy():
    """The heads' vectors enter as a scalar's gradient, not as ``grad_outputs``: torch checks
    an explicit output gradient with its symbolic-shape module, whose first import (sympy)
    cost about 0.5 s of every participant job (a run without missing ROIs)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from bidsfm.models.registry import load_model\n"
            "from bidsfm.demo import bundled_target_corr\n"
            "import torch; torch.set_num_threads(1)\n"
            "m = load_model(); fc = bundled_target_corr().astype(np.float32)[None]\n"
            "m.encode(fc); m.attributions(fc, steps=2)\n"
            "print(sorted(k for k in ('sympy', 'torch.fx.experimental.symbolic_shapes')"
            " if k in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
