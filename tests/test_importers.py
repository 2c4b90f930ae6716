"""Importers of official BrainMass / Brain-JEPA checkpoints (bidsfm-import).

Checkpoints are built here with exactly the official key names and shapes and random weights,
saved with ``torch.save``, imported, loaded back through the registry, and the imported model's
output is compared with the independent forward pass of ``official_reference.py``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from official_reference import brainjepa_forward, brainmass_forward, sincos

from bidsfm.errors import ConfigError
from bidsfm.models import importers
from bidsfm.models.import_cli import import_command

# --------------------------------------------------------------------------------------------
# Official layouts, written out independently of bidsfm's modules
# --------------------------------------------------------------------------------------------


def brainmass_shapes(r: int, layers: int, ff: int, projector: int | None = 1024
                     ) -> dict[str, tuple[int, ...]]:
    """``BNTF.state_dict()`` shapes: ``attention_list.{i}`` (TransformerEncoderLayer),
    ``dim_reduction.0`` (Linear(R, 8)) and the BYOL projector ``g`` (MLPHead(8R, 16R, F))."""
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(layers):
        p = f"attention_list.{i}."
        shapes.update({p + "self_attn.in_proj_weight": (3 * r, r),
                       p + "self_attn.in_proj_bias": (3 * r,),
                       p + "self_attn.out_proj.weight": (r, r), p + "self_attn.out_proj.bias": (r,),
                       p + "linear1.weight": (ff, r), p + "linear1.bias": (ff,),
                       p + "linear2.weight": (r, ff), p + "linear2.bias": (r,),
                       p + "norm1.weight": (r,), p + "norm1.bias": (r,),
                       p + "norm2.weight": (r,), p + "norm2.bias": (r,)})
    shapes["dim_reduction.0.weight"] = (8, r)
    shapes["dim_reduction.0.bias"] = (8,)
    if projector:
        e = 8 * r
        shapes.update({"g.net.0.weight": (2 * e, e), "g.net.0.bias": (2 * e,),
                       "g.net.1.weight": (2 * e,), "g.net.1.bias": (2 * e,),
                       "g.net.1.running_mean": (2 * e,), "g.net.1.running_var": (2 * e,),
                       "g.net.1.num_batches_tracked": (),
                       "g.net.3.weight": (projector, 2 * e), "g.net.3.bias": (projector,)})
    return shapes


def brainjepa_shapes(r: int, t: int, d: int, depth: int, g: int = 30, p: int = 16
                     ) -> dict[str, tuple[int, ...]]:
    """The official ``target_encoder`` layout (without ``module.``)."""
    shapes: dict[str, tuple[int, ...]] = {
        "patch_embed.proj.weight": (d, 1, 1, p), "patch_embed.proj.bias": (d,),
        "pos_embed_proj.emb_h": (r * t // p, d // 2),
        "pos_embed_proj.predictor_pos_embed_proj.weight": (d // 2, g),
        "pos_embed_proj.predictor_pos_embed_proj.bias": (d // 2,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (d,), b + "norm1.bias": (d,),
                       b + "attn.qkv.weight": (3 * d, d), b + "attn.qkv.bias": (3 * d,),
                       b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
                       b + "norm2.weight": (d,), b + "norm2.bias": (d,),
                       b + "mlp.fc1.weight": (4 * d, d), b + "mlp.fc1.bias": (4 * d,),
                       b + "mlp.fc2.weight": (d, 4 * d), b + "mlp.fc2.bias": (d,)})
    shapes["norm.weight"] = (d,)
    shapes["norm.bias"] = (d,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights: norms around 1, batch counters as int64, everything else N(0, 0.1)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1000, dtype=torch.int64)
        elif k.endswith("running_var") or (("norm" in k) and k.endswith("weight")):
            state[k] = 1.0 + 0.1 * torch.rand(shape, generator=gen)
        else:
            state[k] = 0.1 * torch.randn(shape, generator=gen)
    return state


def jepa_state(r: int, t: int, d: int, depth: int, g: int, seed: int = 0, prefix: str = "module."
               ) -> dict[str, torch.Tensor]:
    """Random Brain-JEPA weights with the official (fixed) sin/cos time code in ``emb_h``."""
    state = random_state(brainjepa_shapes(r, t, d, depth, g), seed)
    state["pos_embed_proj.emb_h"] = sincos(d // 2, torch.arange(t // 16).repeat(r)).float()
    return {prefix + k: v for k, v in state.items()}


def user_atlas(folder: Path, n: int, name: str = "Tiny") -> str:
    """A NAME=PATH label image with ``n`` ROIs (and its index/name TSV)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.zeros((12, 12, 12), dtype=np.int16)
    flat = labels.reshape(-1)
    flat[: n * 8] = np.repeat(np.arange(1, n + 1), 8)
    path = folder / f"atlas-{name}_dseg.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.diag([3.0, 3.0, 3.0, 1.0])), path)
    (folder / f"atlas-{name}_dseg.tsv").write_text(
        "index\tname\n" + "".join(f"{i}\t{name}_{i:03d}\n" for i in range(1, n + 1)))
    return f"{name}={path}"


def random_fc(n: int, r: int, t: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(r, r)) * 0.5 + np.eye(r)
    return np.stack([np.corrcoef(rng.normal(size=(t, r)) @ mix, rowvar=False)
                     for _ in range(n)]).astype(np.float32)


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# --------------------------------------------------------------------------------------------
# BrainMass
# --------------------------------------------------------------------------------------------


def test_official_brainmass_names_are_torchs():
    """The key table above is what torch's TransformerEncoderLayer really names its tensors."""
    layer = torch.nn.TransformerEncoderLayer(20, 10, 48, batch_first=True)
    ours = {k.split(".", 2)[2]: v for k, v in brainmass_shapes(20, 1, 48, None).items()
            if k.startswith("attention_list.0.")}
    assert ours == {k: tuple(v.shape) for k, v in layer.state_dict().items()}


@pytest.mark.parametrize("prefix", ["", "module."])
def test_brainmass_import_equals_official_forward(tmp_path, session_env, prefix):
    from bidsfm.models.registry import load_model

    state = random_state(brainmass_shapes(20, 2, 48, projector=64), seed=1)
    ckpt = save({"online_network_state_dict": {prefix + k: v for k, v in state.items()},
                 "target_network_state_dict": state, "model": {}}, tmp_path / "test.pth")
    folder = importers.import_brainmass(ckpt, tmp_path / "bm", atlas=user_atlas(
        tmp_path / "atlas", 20))
    model = load_model(folder)
    assert model.heads == {} and model.atlas == "Tiny" and len(model.roi_names) == 20
    fc = random_fc(3, 20)
    got = model.encode(fc)
    want = brainmass_forward(state, torch.from_numpy(fc), n_heads=10).numpy()
    assert got.shape == (3, 160)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    card = json.loads((folder / "card.json").read_text())
    assert card["family"] == "brainmass" and card["heads"] == {}
    assert card["encoder_config"]["n_layers"] == 2 and card["encoder_config"]["ff_dim"] == 48
    assert card["source"]["sha256"] == __import__("hashlib").sha256(ckpt.read_bytes()).hexdigest()
    assert "g (BYOL projection head" in card["source"]["dropped"][0]
    assert card["atlas"]["run_with"].startswith("--atlas Tiny=")
    assert "user's responsibility" in card["licence"]


def test_brainmass_official_size(tmp_path, session_env):
    """The published layout (R=100, 16 layers, 10 heads, FF 2048: 7,241,576 encoder values)."""
    from bidsfm.models.registry import load_model

    shapes = brainmass_shapes(100, 16, 2048)
    state = random_state(shapes, seed=2)
    n_encoder = sum(int(np.prod(s)) for k, s in shapes.items() if not k.startswith("g."))
    assert n_encoder == 7_241_576
    ckpt = save({"online_network_state_dict": state}, tmp_path / "best_model.pth")
    folder = importers.import_brainmass(ckpt, tmp_path / "bm", name="brainmassofficial",
                                        atlas=user_atlas(tmp_path / "atlas", 100, "Sch100"))
    model = load_model(folder)
    fc = random_fc(2, 100, seed=3)
    np.testing.assert_allclose(model.encode(fc),
                               brainmass_forward(state, torch.from_numpy(fc)).numpy(),
                               atol=1e-5, rtol=0)


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_brainmass_key_and_shape_problems_are_all_listed(tmp_path, session_env):
    state = random_state(brainmass_shapes(20, 3, 48, projector=None))
    del state["attention_list.1.norm2.bias"]
    del state["attention_list.2.norm2.bias"]
    state["attention_list.0.extra.weight"] = torch.zeros(3)
    for i in range(3):
        state[f"attention_list.{i}.linear2.weight"] = torch.zeros(20, 40)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "bad.pth")
    out = tmp_path / "bm"
    msg = _error(importers.import_brainmass, ckpt, out, atlas=user_atlas(tmp_path / "a", 20))
    assert "missing 2: attention_list.{1-2}.norm2.bias" in msg
    assert "unexpected 1: attention_list.0.extra.weight" in msg
    assert "wrong shape 3: attention_list.{0-2}.linear2.weight (20, 40), expected (20, 48)" in msg
    assert str(ckpt) in msg and not out.exists()


def test_brainmass_checks_projector_and_values(tmp_path, session_env):
    atlas = user_atlas(tmp_path / "a", 20)
    state = random_state(brainmass_shapes(20, 1, 48, projector=32))
    state["g.net.0.weight"] = torch.zeros(10, 10)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "g.pth")
    assert "g.net.0.weight (10, 10), expected (320, 160)" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o1", atlas=atlas)
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    state["attention_list.0.linear1.bias"][3] = float("nan")
    ckpt = save({"online_network_state_dict": state}, tmp_path / "nan.pth")
    assert "non-finite" in _error(importers.import_brainmass, ckpt, tmp_path / "o2", atlas=atlas)
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    ckpt = save({"online_network_state_dict": state}, tmp_path / "ok.pth")
    assert "do not divide" in _error(importers.import_brainmass, ckpt, tmp_path / "o3",
                                     atlas=atlas, n_heads=3)


def test_brainmass_wrong_container_or_atlas(tmp_path, session_env):
    atlas = user_atlas(tmp_path / "a", 20)
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    ckpt = save({"model": state, "epoch": 3}, tmp_path / "nokey.pth")
    msg = _error(importers.import_brainmass, ckpt, tmp_path / "o", atlas=atlas)
    assert "no 'online_network_state_dict' entry (top-level keys: epoch, model)" in msg
    ckpt = save({"online_network_state_dict": {**state, "note": "hello", "step": 3}},
                tmp_path / "str.pth")
    assert "2 state-dict value(s) are not tensors: note (str), step (int)" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o", atlas=atlas)
    ckpt = save([state], tmp_path / "list.pth")
    assert "holds a list, not a dict" in _error(importers.import_brainmass, ckpt, tmp_path / "o",
                                                atlas=atlas)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    assert "not a readable torch checkpoint" in _error(importers.import_brainmass, junk,
                                                       tmp_path / "o", atlas=atlas)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "ok.pth")
    assert "has 20 ROIs but atlas CC200 has 200" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o", atlas="CC200")
    msg = _error(importers.import_brainmass, ckpt, tmp_path / "o")  # Schaefer100x7: not offline
    assert "Schaefer100x7" in msg and "TemplateFlow" in msg
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "exists and is not empty" in _error(importers.import_brainmass, ckpt,
                                               tmp_path / "full", atlas=atlas)
    assert not (tmp_path / "o").exists()
    assert not list(tmp_path.glob(".o.*"))  # no temporary folder left behind


def test_brainmass_default_atlas_from_templateflow(tmp_path, session_env, monkeypatch):
    """Default --atlas Schaefer100x7: resolved from TemplateFlow, ROI names from its TSV."""
    tpl = tmp_path / "tf" / "tpl-MNI152NLin2009cAsym"
    tpl.mkdir(parents=True)
    stem = "tpl-MNI152NLin2009cAsym_res-02_atlas-Schaefer2018_desc-100Parcels7Networks_dseg"
    labels = np.zeros((10, 10, 10), dtype=np.int16)
    labels.reshape(-1)[:800] = np.repeat(np.arange(1, 101), 8)
    nib.save(nib.Nifti1Image(labels, np.diag([2.0, 2.0, 2.0, 1.0])), tpl / f"{stem}.nii.gz")
    names = [f"7Networks_{'LH' if i <= 50 else 'RH'}_Net_{i}" for i in range(1, 101)]
    (tpl / "tpl-MNI152NLin2009cAsym_atlas-Schaefer2018_desc-100Parcels7Networks_dseg.tsv"
     ).write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in enumerate(names, 1)))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "tf"))
    state = random_state(brainmass_shapes(100, 1, 64, projector=None))
    ckpt = save({"online_network_state_dict": state}, tmp_path / "c.pth")
    folder = importers.import_brainmass(ckpt, tmp_path / "bm")
    atlas = json.loads((folder / "card.json").read_text())["atlas"]
    assert atlas["name"] == "Schaefer100x7" and atlas["roi_names"] == names
    assert atlas["run_with"] == "--atlas Schaefer100x7" and "user_file" not in atlas
    assert atlas["source"].startswith("TemplateFlow:tpl-MNI152NLin2009cAsym/")


class _Payload:
    """Unpickling this calls ``open(marker, "w")``: it would create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, session_env):
    marker = tmp_path / "pwned.txt"
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    ckpt = save({"online_network_state_dict": state, "x": _Payload(marker)}, tmp_path / "m.pth")
    with open(tmp_path / "plain.pkl", "wb") as f:
        pickle.dump({"online_network_state_dict": _Payload(marker)}, f, protocol=2)
    with open(tmp_path / "proto4.pkl", "wb") as f:
        pickle.dump({"online_network_state_dict": _Payload(marker)}, f, protocol=4)
    atlas = user_atlas(tmp_path / "a", 20)
    for path in (ckpt, tmp_path / "plain.pkl"):
        msg = _error(importers.import_brainmass, path, tmp_path / "o", atlas=atlas)
        assert "refused to load" in msg and "nothing from it was run" in msg
        assert "Unsupported global: GLOBAL io.open" in msg
    with pytest.warns(UserWarning):  # torch: protocol 4 is not its default
        msg = _error(importers.import_brainmass, tmp_path / "proto4.pkl", tmp_path / "o",
                     atlas=atlas)
    assert "nothing from it was run" in msg
    assert not marker.exists() and not (tmp_path / "o").exists()


def test_numpy_numbers_beside_the_weights_are_fine(tmp_path):
    """A loss or learning rate saved as a NumPy scalar (NumPy 1 or 2 pickles) is plain data."""
    torch.save({"loss": np.float64(0.25), "epoch": np.int64(300)}, tmp_path / "legacy.pth",
               _use_new_zipfile_serialization=False)  # pickle protocol 2: names are plain text
    data = (tmp_path / "legacy.pth").read_bytes()
    here = b"numpy._core.multiarray" if b"numpy._core.multiarray" in data else \
        b"numpy.core.multiarray"
    assert here in data
    for name in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        path = tmp_path / f"n{len(name)}.pkl"
        path.write_bytes(data.replace(here, name))
        assert importers.load_checkpoint(path) == {"loss": 0.25, "epoch": 300}


def test_compact_keys():
    assert importers.compact_keys(["blocks.0.a", "blocks.1.a", "blocks.3.a", "norm.w",
                                   "blocks.0.b"]) == ["blocks.0.b", "blocks.{0-1,3}.a", "norm.w"]


def test_cli_brainmass(tmp_path, session_env):
    state = random_state(brainmass_shapes(20, 1, 48))
    ckpt = save({"online_network_state_dict": state}, tmp_path / "c.pth")
    atlas = user_atlas(tmp_path / "a", 20)
    runner = CliRunner()
    res = runner.invoke(import_command, ["brainmass", str(ckpt), str(tmp_path / "m"),
                                         "--atlas", atlas, "--name", "bm"])
    assert res.exit_code == 0, res.output
    assert "--model " + str(tmp_path / "m") in res.output and "--atlas Tiny=" in res.output
    res = runner.invoke(import_command, ["brainmass", str(ckpt), str(tmp_path / "m2"),
                                         "--atlas", atlas, "--name", "bad-name"])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("bidsfm-import: error: ")


def test_end_to_end_brainmass_participant(tmp_path, tiny_ds, capsys):
    """checkpoint -> bidsfm-import (CC200, R=200) -> bidsfm participant --model FOLDER."""
    import pandas as pd
    from conftest import run_cli


    state = random_state(brainmass_shapes(200, 1, 32), seed=5)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "bm200.pth")
    res = CliRunner().invoke(import_command, ["brainmass", str(ckpt), str(tmp_path / "model"),
                                              "--atlas", "CC200", "--name", "bmtest"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                         "--model", tmp_path / "model", "-w", tmp_path / "w", "--min-time", "0"],
                        capsys)
    assert code == 0, log
    embs = sorted(out.rglob("*_seg-CC200_desc-bmtest_embedding.tsv"))
    assert embs
    compared = 0
    for emb_path in embs:
        emb = pd.read_csv(emb_path, sep="\t").to_numpy()[0]
        fc_path = str(emb_path).replace("_desc-bmtest_embedding.tsv",
                                        "_meas-PearsonCorrelation_relmat.tsv")
        fc = pd.read_csv(fc_path, sep="\t", index_col=0, na_values="n/a").to_numpy()
        if np.isnan(fc).any():
            continue  # missing ROIs: bidsfm hides them (documented difference)
        want = brainmass_forward(state, torch.from_numpy(fc[None])).numpy()[0]
        np.testing.assert_allclose(emb, want, atol=1e-4, rtol=0)
        compared += 1
    assert compared >= 1


# --------------------------------------------------------------------------------------------
# Brain-JEPA
# --------------------------------------------------------------------------------------------

TINY = {"r": 12, "t": 32, "d": 32, "depth": 2, "g": 5}  # a small layout, 4 heads


def write_gradients(path: Path, r: int, g: int, seed: int = 0, header: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    np.savetxt(path, rng.normal(size=(r, g)) * 0.05, delimiter=",",
               header=",".join(f"g{i}" for i in range(g)) if header else "", comments="")
    return path


def jepa_checkpoint(path: Path, prefix: str = "module.", **changes) -> tuple[Path, dict]:
    """An official-format ``jepa-ep300.pth.tar``: target_encoder, encoder, predictor, opt..."""
    target = jepa_state(TINY["r"], TINY["t"], TINY["d"], TINY["depth"], TINY["g"], seed=3,
                        prefix=prefix)
    target.update({prefix + k: v for k, v in changes.items()})
    context = jepa_state(TINY["r"], TINY["t"], TINY["d"], TINY["depth"], TINY["g"], seed=4,
                         prefix=prefix)
    obj = {"encoder": context, "predictor": {prefix + "mask_token": torch.zeros(1, 1, 16)},
           "target_encoder": target, "opt": {"state": {}, "param_groups": [{"lr": 1e-3}]},
           "scaler": None, "epoch": 300, "loss": 0.05, "batch_size": 16, "world_size": 4,
           "lr": 0.001}
    return save(obj, path), target


def test_official_brainjepa_sizes_shape_only():
    """ViT-S/B/L: the official key table, and the layout inferred from shapes alone."""
    from bidsfm.models.brainjepa import OFFICIAL_SIZES, BrainJEPAConfig, official_state_shapes

    for size, (d, depth, heads) in OFFICIAL_SIZES.items():
        shapes = brainjepa_shapes(450, 160, d, depth)
        official = BrainJEPAConfig.official(size)
        assert shapes == official_state_shapes(official)
        prefixed = {"module." + k: v for k, v in shapes.items()}
        cfg = importers.brainjepa_config_from_shapes(
            {k.removeprefix("module."): v for k, v in prefixed.items()}, 450)
        assert cfg == official and cfg.n_heads == heads
    base = brainjepa_shapes(450, 160, 768, 12)
    msg = _error(importers.brainjepa_config_from_shapes, base, 450, size="large")
    assert "not ViT-L" in msg
    assert "not a multiple" in _error(importers.brainjepa_config_from_shapes, base, 449)
    small = brainjepa_shapes(450, 160, 384, 12)
    assert "the official model has 450 x 160" in _error(
        importers.brainjepa_config_from_shapes, {**small, "pos_embed_proj.emb_h": (9000, 192)},
        450)


@pytest.mark.parametrize("prefix", ["module.", ""])
def test_brainjepa_import_equals_official_forward(tmp_path, session_env, prefix):
    from safetensors.numpy import load_file

    from bidsfm.models.registry import load_model

    ckpt, target = jepa_checkpoint(tmp_path / "jepa-ep300.pth.tar", prefix)
    grads_path = write_gradients(tmp_path / "grad.csv", TINY["r"], TINY["g"])
    folder = importers.import_brainjepa(ckpt, grads_path, tmp_path / "bj", n_heads=4,
                                        atlas=user_atlas(tmp_path / "atlas", TINY["r"], "TS"))
    card = json.loads((folder / "card.json").read_text())
    grads = np.loadtxt(grads_path, delimiter=",")
    np.testing.assert_allclose(load_file(str(folder / "weights.safetensors"))["gradients"], grads,
                               atol=1e-7)
    model = load_model(folder)
    assert model.heads == {} and model.atlas == "TS"
    x = torch.from_numpy(np.random.default_rng(7).normal(size=(3, TINY["r"], TINY["t"]))
                         .astype(np.float32))
    want = brainjepa_forward(target, x, torch.from_numpy(grads), n_heads=4)
    with torch.no_grad():
        got = model.encoder.eval().embed(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)
    # the stored time code is the one the reference recomputes
    np.testing.assert_allclose(
        want.numpy(), brainjepa_forward(target, x, torch.from_numpy(grads), 4,
                                        use_stored_time_code=True).numpy(), atol=1e-6)
    # public API: one run of exactly one window at the target TR, normalised as the card says
    ts = np.random.default_rng(8).normal(size=(TINY["t"], TINY["r"])) * 3 + 10
    if card["input"]["normalisation"] == "zscore_global":
        z = (ts - ts.mean()) / ts.std()
    else:
        assert card["input"]["normalisation"] == "zscore_run"
        z = (ts - ts.mean(axis=0)) / ts.std(axis=0)
    want = brainjepa_forward(target, torch.from_numpy(z.T[None]), torch.from_numpy(grads), 4)
    np.testing.assert_allclose(model.embed([ts], [card["input"]["target_tr"]]), want.numpy(),
                               atol=1e-5, rtol=0)
    assert card["family"] == "brainjepa" and card["heads"] == {}
    assert card["layout"].startswith("custom") and card["embedding_size"] == TINY["d"]
    assert card["source"]["state_key"] == "target_encoder"
    assert "encoder (not used)" in card["source"]["dropped"]
    assert card["input"]["target_tr"] == 2.205 and card["input"]["n_frames"] == TINY["t"]
    assert card["gradients"]["shape"] == [TINY["r"], TINY["g"]]


def test_brainjepa_refusals(tmp_path, session_env):
    atlas = user_atlas(tmp_path / "atlas", TINY["r"], "TS")
    grads = write_gradients(tmp_path / "grad.csv", TINY["r"], TINY["g"])
    ckpt, _ = jepa_checkpoint(tmp_path / "ok.pth.tar")

    def err(c=ckpt, g=grads, **kw):
        kw.setdefault("n_heads", 4)
        return _error(importers.import_brainjepa, c, g, tmp_path / "o", atlas=atlas, **kw)

    assert "not an official Brain-JEPA size" in err(n_heads=None)
    assert "is not ViT-B" in err(size="base")
    bad, _ = jepa_checkpoint(tmp_path / "shape.pth.tar",
                             **{"blocks.1.mlp.fc1.weight": torch.zeros(64, 32),
                                "norm.extra": torch.zeros(2)})
    msg = err(bad)
    assert "wrong shape 1: blocks.1.mlp.fc1.weight (64, 32), expected (128, 32)" in msg
    assert "unexpected 1: norm.extra" in msg
    obj = torch.load(ckpt, weights_only=True)
    del obj["target_encoder"]["module.blocks.0.attn.qkv.bias"]
    del obj["target_encoder"]["module.norm.weight"]
    msg = err(save(obj, tmp_path / "missing.pth.tar"))
    assert "missing 2: blocks.0.attn.qkv.bias, norm.weight" in msg
    shuffled, _ = jepa_checkpoint(tmp_path / "emb.pth.tar", **{
        "pos_embed_proj.emb_h": torch.randn(TINY["r"] * 2, TINY["d"] // 2)})
    assert "not the sin/cos code" in err(shuffled)
    assert "has 6 columns" in err(g=write_gradients(tmp_path / "g6.csv", TINY["r"], 6))
    assert "not a multiple of the gradient file's 11 ROIs" in err(
        g=write_gradients(tmp_path / "g11.csv", 11, TINY["g"]))
    assert "non-numeric cells" in err(g=write_gradients(tmp_path / "h.csv", TINY["r"], TINY["g"],
                                                         header=True))
    nan = tmp_path / "nan.csv"
    nan.write_text(grads.read_text().replace(grads.read_text().split(",")[3], "nan", 1))
    assert "non-finite" in err(g=nan)
    assert not (tmp_path / "o").exists()


def test_official_gradient_file_shape(tmp_path):
    ok = write_gradients(tmp_path / "g.csv", 450, 30)
    assert importers.read_gradients_csv(ok).shape == (450, 30)
    for r, g in ((449, 30), (450, 29)):
        msg = _error(importers.read_gradients_csv, write_gradients(tmp_path / f"{r}{g}.csv", r, g))
        assert f"is {r} x {g}, expected 450 x 30" in msg


def test_cli_brainjepa(tmp_path, session_env):
    ckpt, _ = jepa_checkpoint(tmp_path / "jepa-ep300.pth.tar")
    grads = write_gradients(tmp_path / "grad.csv", TINY["r"], TINY["g"])
    atlas = user_atlas(tmp_path / "atlas", TINY["r"], "TS")
    res = CliRunner().invoke(import_command, ["brainjepa", str(ckpt), str(grads),
                                              str(tmp_path / "m"), "--atlas", atlas,
                                              "--heads", "4", "--target-tr", "2.0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "card.json").read_text())["input"]["target_tr"] == 2.0
    res = CliRunner().invoke(import_command, ["brainjepa", str(ckpt), str(grads),
                                              str(tmp_path / "m2"), "--atlas", atlas])
    assert res.exit_code == 2 and "--heads" in res.output


def test_combine_atlases(tmp_path, session_env):
    """Subcortex-first stacking: ROIs renumbered in order, earlier atlas wins overlaps."""
    first = tmp_path / "a" / "atlas-Sub_dseg.nii.gz"
    second = tmp_path / "b" / "atlas-Ctx_dseg.nii.gz"
    for path in (first, second):
        path.parent.mkdir()
    sub = np.zeros((8, 8, 8), np.int16)
    sub[:2] = 7  # label values need not start at 1
    sub[2:3] = 9
    ctx = np.zeros((8, 8, 8), np.int16)
    ctx[2:4] = 1  # overlaps label 9 of the first atlas at x = 2
    ctx[5:] = 2
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(sub, aff), first)
    nib.save(nib.Nifti1Image(ctx, aff), second)
    (second.parent / "atlas-Ctx_dseg.tsv").write_text("index\tname\n1\tctxA\n2\tctxB\n")
    out = tmp_path / "tpl-MNI152NLin6Asym_atlas-Both_dseg.nii.gz"
    res = CliRunner().invoke(import_command, ["combine-atlas", str(out), f"S={first}",
                                              f"C={second}"])
    assert res.exit_code == 0, res.output
    data = np.asarray(nib.load(out).dataobj)
    assert (data[:2] == 1).all() and (data[2] == 2).all() and (data[3] == 3).all()
    assert (data[4] == 0).all() and (data[5:] == 4).all()
    assert out.with_name("tpl-MNI152NLin6Asym_atlas-Both_dseg.tsv").read_text().split("\n")[1:5] \
        == ["1\tS_007", "2\tS_009", "3\tctxA", "4\tctxB"]
    from bidsfm.atlases import resolve_atlas

    atlas = resolve_atlas(f"Both={out}")
    assert atlas.n_rois == 4 and atlas.template == "MNI152NLin6Asym"
    res = CliRunner().invoke(import_command, ["combine-atlas", str(out), f"S={first}",
                                              f"C={second}"])
    assert res.exit_code == 2 and "output exists" in res.output


def _windows(n: int, n_frames: int, stride: int) -> list[int]:
    """Inference windows as documented in bidsfm.models.resample (written out here)."""
    span = n - n_frames
    if span < stride:
        return [span // 2]
    count = int(np.ceil(span / stride)) + 1
    return sorted({int(round(s)) for s in np.linspace(0, span, count)})


def test_end_to_end_brainjepa_participant(tmp_path, tiny_ds, capsys):
    """checkpoint + gradients -> bidsfm-import (custom layout on CC200) -> participant level."""
    import pandas as pd
    from conftest import run_cli

    r, t, d, g = 200, 32, 32, 5
    target = jepa_state(r, t, d, 1, g, seed=9, prefix="module.")
    ckpt = save({"target_encoder": target, "epoch": 300}, tmp_path / "jepa-ep300.pth.tar")
    grads_path = write_gradients(tmp_path / "grad.csv", r, g, seed=2)
    res = CliRunner().invoke(import_command, [
        "brainjepa", str(ckpt), str(grads_path), str(tmp_path / "model"), "--atlas", "CC200",
        "--heads", "4", "--name", "bjtest", "--target-tr", "2.0"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                         "--model", tmp_path / "model", "-w", tmp_path / "w", "--min-time", "0"],
                        capsys)
    assert code == 0, log
    card = json.loads((tmp_path / "model" / "card.json").read_text())["input"]
    grads = torch.from_numpy(np.loadtxt(grads_path, delimiter=","))
    embs = sorted(out.rglob("*_seg-CC200_desc-bjtest_embedding.tsv"))
    assert embs
    compared = 0
    for emb_path in embs:
        emb = pd.read_csv(emb_path, sep="\t").to_numpy()[0]
        assert emb.shape == (d,)
        ts_path = str(emb_path).replace("_desc-bjtest_embedding.tsv", "_stat-mean_timeseries.tsv")
        meta = json.loads(Path(ts_path.replace(".tsv", ".json")).read_text())
        ts = pd.read_csv(ts_path, sep="\t", na_values="n/a").to_numpy()
        retained = meta["RetainedVolumes"]
        if np.isnan(ts).any() or np.any(np.diff(retained) != 1) or meta["RepetitionTime"] != 2:
            continue  # missing ROIs / censoring / another TR: not covered by this reference
        if card["normalisation"] == "zscore_global":
            z = (ts - ts.mean()) / ts.std()
        else:
            z = (ts - ts.mean(axis=0)) / ts.std(axis=0)
        starts = _windows(len(z), t, card["window_stride"])
        x = torch.from_numpy(np.stack([z[s:s + t].T for s in starts]))
        want = brainjepa_forward(target, x, grads, 4).mean(dim=0).numpy()
        np.testing.assert_allclose(emb, want, atol=1e-4, rtol=0)
        compared += 1
    assert compared >= 1
