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

from bidsfm.derivatives import (
    ATLAS_ENTITY,
    MODEL_OUTPUT_TAILS,
    read_relmat,
    read_timeseries,
    sibling_output,
)
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
    side = max(12, int(np.ceil((n * 8) ** (1 / 3))))
    labels = np.zeros((side, side, side), dtype=np.int16)
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


def _embedding_glob(model: str, atlas: str) -> str:
    """Glob of a model's per-run embedding files (names from bidsfm.derivatives)."""
    return f"*_{ATLAS_ENTITY}-{atlas}" + MODEL_OUTPUT_TAILS["embedding"].format(model=model)


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
        tmp_path / "atlas", 20), allow_custom_layout=True)
    model = load_model(folder)
    assert model.heads == {} and model.atlas == "Tiny" and len(model.roi_names) == 20
    fc = random_fc(3, 20)
    got = model.encode(fc)
    want = brainmass_forward(state, torch.from_numpy(fc), n_heads=10).numpy()
    assert got.shape == (3, 160)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    card = json.loads((folder / "card.json").read_text())
    assert card["family"] == "brainmass" and card["heads"] == {}
    assert card["layout"].startswith("custom (R=20, 2 layers")
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
    msg = _error(importers.import_brainmass, ckpt, out, atlas=user_atlas(tmp_path / "a", 20),
                 allow_custom_layout=True)
    assert "missing 2: attention_list.{1-2}.norm2.bias" in msg
    assert "unexpected 1: attention_list.0.extra.weight" in msg
    assert "wrong shape 3: attention_list.{0-2}.linear2.weight (20, 40), expected (20, 48)" in msg
    assert str(ckpt) in msg and not out.exists()


def test_brainmass_checks_projector_and_values(tmp_path, session_env):
    atlas = user_atlas(tmp_path / "a", 20)
    custom = {"atlas": atlas, "allow_custom_layout": True}  # R = 20: not the published 100
    state = random_state(brainmass_shapes(20, 1, 48, projector=32))
    state["g.net.0.weight"] = torch.zeros(10, 10)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "g.pth")
    assert "g.net.0.weight (10, 10), expected (320, 160)" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o1", **custom)
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    state["attention_list.0.linear1.bias"][3] = float("nan")
    ckpt = save({"online_network_state_dict": state}, tmp_path / "nan.pth")
    assert "non-finite" in _error(importers.import_brainmass, ckpt, tmp_path / "o2", **custom)
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    ckpt = save({"online_network_state_dict": state}, tmp_path / "ok.pth")
    assert "do not divide" in _error(importers.import_brainmass, ckpt, tmp_path / "o3",
                                     n_heads=3, **custom)


def test_brainmass_wrong_container_or_atlas(tmp_path, session_env):
    atlas = user_atlas(tmp_path / "a", 20)
    custom = {"atlas": atlas, "allow_custom_layout": True}  # R = 20: not the published 100
    state = random_state(brainmass_shapes(20, 1, 48, projector=None))
    ckpt = save({"model": state, "epoch": 3}, tmp_path / "nokey.pth")
    msg = _error(importers.import_brainmass, ckpt, tmp_path / "o", **custom)
    assert "no 'online_network_state_dict' entry (top-level keys: epoch, model)" in msg
    ckpt = save({"online_network_state_dict": {**state, "note": "hello", "step": 3}},
                tmp_path / "str.pth")
    assert "2 state-dict value(s) are not tensors: note (str), step (int)" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o", **custom)
    ckpt = save([state], tmp_path / "list.pth")
    assert "holds a list, not a dict" in _error(importers.import_brainmass, ckpt, tmp_path / "o",
                                                **custom)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all" * 10)
    assert "not a readable torch checkpoint" in _error(importers.import_brainmass, junk,
                                                       tmp_path / "o", **custom)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "ok.pth")
    assert "has 20 ROIs but atlas CC200 has 200" in _error(
        importers.import_brainmass, ckpt, tmp_path / "o", atlas="CC200",
        allow_custom_layout=True)
    msg = _error(importers.import_brainmass, ckpt, tmp_path / "o",  # Schaefer100x7: not offline
                 allow_custom_layout=True)
    assert "Schaefer100x7" in msg and "TemplateFlow" in msg
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert "exists and is not empty" in _error(importers.import_brainmass, ckpt,
                                               tmp_path / "full", **custom)
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
    folder = importers.import_brainmass(ckpt, tmp_path / "bm", allow_custom_layout=True)
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
        assert "global io.open" in msg and msg.startswith(f"{path}: ")
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
    assert res.exit_code == 2 and "--allow-custom-layout" in res.output  # R = 20, one layer
    res = runner.invoke(import_command, ["brainmass", str(ckpt), str(tmp_path / "m"),
                                         "--atlas", atlas, "--name", "bm",
                                         "--allow-custom-layout"])
    assert res.exit_code == 0, res.output
    assert "--model " + str(tmp_path / "m") in res.output and "--atlas Tiny=" in res.output
    res = runner.invoke(import_command, ["brainmass", str(ckpt), str(tmp_path / "m2"),
                                         "--atlas", atlas, "--name", "bad-name",
                                         "--allow-custom-layout"])
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
                                              "--atlas", "CC200", "--name", "bmtest",
                                              "--allow-custom-layout"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                         "--model", tmp_path / "model", "-w", tmp_path / "w", "--min-time", "0"],
                        capsys)
    assert code == 0, log
    embs = sorted(out.rglob(_embedding_glob("bmtest", "CC200")))
    assert embs
    compared = 0
    for emb_path in embs:
        emb = pd.read_csv(emb_path, sep="\t").to_numpy()[0]
        _names, fc = read_relmat(sibling_output(emb_path, "fc"))
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
                                        atlas=user_atlas(tmp_path / "atlas", TINY["r"], "TS"),
                                        allow_custom_layout=True)
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
    assert card["input"]["normalisation"] == "zscore_global"  # the official downstream scheme
    z = (ts - ts.mean()) / ts.std()
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
        kw.setdefault("allow_custom_layout", True)
        return _error(importers.import_brainjepa, c, g, tmp_path / "o", atlas=atlas, **kw)

    assert "not an official Brain-JEPA size" in err(n_heads=None)
    msg = err(n_heads=None, allow_custom_layout=False)
    assert "not an official Brain-JEPA size" in msg and "--allow-custom-layout" in msg
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
                                              "--heads", "4", "--target-tr", "2.0",
                                              "--allow-custom-layout"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "m" / "card.json").read_text())["input"]["target_tr"] == 2.0
    res = CliRunner().invoke(import_command, ["brainjepa", str(ckpt), str(grads),
                                              str(tmp_path / "m2"), "--atlas", atlas])
    assert res.exit_code == 2 and "--allow-custom-layout" in res.output
    res = CliRunner().invoke(import_command, ["brainjepa", str(ckpt), str(grads),
                                              str(tmp_path / "m2"), "--atlas", atlas,
                                              "--allow-custom-layout"])
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
        "--heads", "4", "--name", "bjtest", "--target-tr", "2.0", "--allow-custom-layout"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "out"
    code, log = run_cli([tiny_ds["root"], out, "participant", "--participant-label", "01",
                         "--model", tmp_path / "model", "-w", tmp_path / "w", "--min-time", "0"],
                        capsys)
    assert code == 0, log
    card = json.loads((tmp_path / "model" / "card.json").read_text())["input"]
    grads = torch.from_numpy(np.loadtxt(grads_path, delimiter=","))
    embs = sorted(out.rglob(_embedding_glob("bjtest", "CC200")))
    assert embs
    compared = 0
    for emb_path in embs:
        emb = pd.read_csv(emb_path, sep="\t").to_numpy()[0]
        assert emb.shape == (d,)
        meta = json.loads(sibling_output(emb_path, "timeseries_json").read_text())
        _names, ts = read_timeseries(sibling_output(emb_path, "timeseries"))
        retained = meta["RetainedVolumes"]
        if np.isnan(ts).any() or np.any(np.diff(retained) != 1) or meta["RepetitionTime"] != 2:
            continue  # missing ROIs / censoring / another TR: not covered by this reference
        assert card["normalisation"] == "zscore_global"
        z = (ts - ts.mean()) / ts.std()
        starts = _windows(len(z), t, card["window_stride"])
        x = torch.from_numpy(np.stack([z[s:s + t].T for s in starts]))
        want = brainjepa_forward(target, x, grads, 4).mean(dim=0).numpy()
        np.testing.assert_allclose(emb, want, atol=1e-4, rtol=0)
        compared += 1
    assert compared >= 1


# --------------------------------------------------------------------------------------------
# Edges found against the official code (issue 17): refuse what the official loaders refuse,
# report exactly what is wrong, name the blocked global, record the official normalisation
# --------------------------------------------------------------------------------------------


def shape_only(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Zero tensors of the given shapes that share one stored value (a tiny file of any layout)."""
    return {k: torch.zeros(1).expand(*s) if s else torch.zeros(()) for k, s in shapes.items()}


def vit_s_checkpoint(path: Path, drop: tuple[str, ...] = (), **changes) -> Path:
    """An official-format ViT-S ``target_encoder`` (450 ROIs x 160 frames), shapes only."""
    state = shape_only(brainjepa_shapes(450, 160, 384, 12))
    state["pos_embed_proj.emb_h"] = sincos(192, torch.arange(10).repeat(450)).float()
    state.update(changes)
    return save({"target_encoder": {"module." + k: v for k, v in state.items()
                                    if not any(k.endswith(d) for d in drop)}}, path)


def test_brainmass_missing_last_layer_is_refused_unless_custom_allowed(tmp_path, session_env):
    """The official strict load refuses a 16-layer BrainMass without layer 15; so does bidsfm."""
    state = shape_only({k: s for k, s in brainmass_shapes(100, 16, 2048).items()
                        if not k.startswith("attention_list.15.")})
    ckpt = save({"online_network_state_dict": state}, tmp_path / "best_model.pth")
    atlas = user_atlas(tmp_path / "a", 100, "Sch100")
    msg = _error(importers.import_brainmass, ckpt, tmp_path / "o", atlas=atlas)
    assert msg.startswith(f"{ckpt}: ")
    assert "missing 12: attention_list.15.*" in msg and "--allow-custom-layout" in msg
    assert not (tmp_path / "o").exists()
    folder = importers.import_brainmass(ckpt, tmp_path / "o", atlas=atlas,
                                        allow_custom_layout=True)
    card = json.loads((folder / "card.json").read_text())
    assert card["encoder_config"]["n_layers"] == 15 and card["layout"].startswith("custom")


def test_brainmass_official_layout_is_recorded(tmp_path, session_env):
    state = shape_only(brainmass_shapes(100, 16, 2048))
    ckpt = save({"online_network_state_dict": state}, tmp_path / "best_model.pth")
    folder = importers.import_brainmass(ckpt, tmp_path / "o",
                                        atlas=user_atlas(tmp_path / "a", 100, "Sch100"))
    assert json.loads((folder / "card.json").read_text())["layout"] == "official"


def test_brainjepa_without_qkv_bias_is_refused_unless_custom_allowed(tmp_path, session_env):
    grads = write_gradients(tmp_path / "g.csv", 450, 30)
    atlas = user_atlas(tmp_path / "a", 450, "TS")
    ckpt = vit_s_checkpoint(tmp_path / "jepa-ep300.pth.tar", drop=("attn.qkv.bias",))
    msg = _error(importers.import_brainjepa, ckpt, grads, tmp_path / "o", atlas=atlas)
    assert msg.startswith(f"{ckpt}: ") and "official ViT-S" in msg
    assert "missing 12: blocks.{0-11}.attn.qkv.bias" in msg and "--allow-custom-layout" in msg
    assert not (tmp_path / "o").exists()
    # a small layout without the bias, asked for explicitly: imported, equal to the reference
    target = {k: v for k, v in jepa_state(TINY["r"], TINY["t"], TINY["d"], 2, TINY["g"],
                                          seed=5).items() if not k.endswith("attn.qkv.bias")}
    ckpt = save({"target_encoder": target}, tmp_path / "nobias.pth.tar")
    g = write_gradients(tmp_path / "tiny.csv", TINY["r"], TINY["g"])
    kw = {"atlas": user_atlas(tmp_path / "b", TINY["r"], "Tiny"), "n_heads": 4}
    assert "--allow-custom-layout" in _error(importers.import_brainjepa, ckpt, g,
                                             tmp_path / "t", **kw)
    folder = importers.import_brainjepa(ckpt, g, tmp_path / "t", allow_custom_layout=True, **kw)
    card = json.loads((folder / "card.json").read_text())
    assert card["layout"].startswith("custom") and card["encoder_config"]["qkv_bias"] is False
    from bidsfm.models.registry import load_model

    x = torch.from_numpy(np.random.default_rng(1).normal(size=(2, TINY["r"], TINY["t"]))
                         .astype(np.float32))
    with torch.no_grad():
        got = load_model(folder).encoder.eval().embed(x)
    want = brainjepa_forward(target, x, torch.from_numpy(np.loadtxt(g, delimiter=",")), 4)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=0)


def test_one_wrong_tensor_is_reported_alone(tmp_path, session_env):
    """One bad tensor in block/layer 0 is one problem, not the 35 (ViT-S) or 47 (BrainMass) that
    inferring a width from it made of it."""
    grads = write_gradients(tmp_path / "g.csv", 450, 30)
    bad = torch.zeros(1).expand(1537, 384)
    ckpt = vit_s_checkpoint(tmp_path / "jepa.pth.tar", **{"blocks.0.mlp.fc1.weight": bad})
    msg = _error(importers.import_brainjepa, ckpt, grads, tmp_path / "o",
                 atlas=user_atlas(tmp_path / "a", 450, "TS"))
    assert "wrong shape 1: blocks.0.mlp.fc1.weight (1537, 384), expected (1536, 384)" in msg
    assert "missing" not in msg and "unexpected" not in msg
    state = shape_only(brainmass_shapes(100, 16, 2048))
    state["attention_list.0.linear1.weight"] = torch.zeros(1).expand(2047, 100)
    ckpt = save({"online_network_state_dict": state}, tmp_path / "bm.pth")
    for custom in (False, True):  # the official layout, or widths inferred by majority
        msg = _error(importers.import_brainmass, ckpt, tmp_path / "o",
                     atlas=user_atlas(tmp_path / "b", 100, "Sch100"),
                     allow_custom_layout=custom)
        assert ("wrong shape 1: attention_list.0.linear1.weight (2047, 100), expected "
                "(2048, 100)") in msg, msg
    # a custom Brain-JEPA layout: the MLP width is the one most blocks have
    target = jepa_state(TINY["r"], TINY["t"], TINY["d"], 3, TINY["g"])
    target["module.blocks.0.mlp.fc1.weight"] = torch.zeros(100, TINY["d"])
    ckpt = save({"target_encoder": target}, tmp_path / "tiny.pth.tar")
    msg = _error(importers.import_brainjepa, ckpt,
                 write_gradients(tmp_path / "t.csv", TINY["r"], TINY["g"]), tmp_path / "o",
                 atlas=user_atlas(tmp_path / "c", TINY["r"], "Tiny"), n_heads=4,
                 allow_custom_layout=True)
    assert "wrong shape 1: blocks.0.mlp.fc1.weight (100, 32), expected (128, 32)" in msg, msg


class _SystemPayload:
    """Unpickling this would call ``os.system`` (pickled as ``posix.system`` / ``nt.system``)."""

    def __init__(self, marker: Path) -> None:
        self.command = f"touch {marker}"

    def __reduce__(self):
        import os

        return (os.system, (self.command,))


def test_blocked_pickle_global_is_named(tmp_path):
    """docs/importing.md: the refusal names the blocked global (module.qualname) and the file."""
    import os

    marker = tmp_path / "pwned"
    name = f"{os.system.__module__}.{os.system.__name__}"  # posix.system on Linux and macOS
    ckpt = save({"online_network_state_dict": {"w": torch.zeros(2)},
                 "x": _SystemPayload(marker)}, tmp_path / "sys.pth")
    msg = _error(importers.load_checkpoint, ckpt)
    assert msg.startswith(f"{ckpt}: refused to load") and f"global {name}" in msg, msg
    with open(tmp_path / "proto4.pkl", "wb") as f:  # STACK_GLOBAL: torch names no global
        pickle.dump({"x": _SystemPayload(marker), "y": _Payload(marker)}, f, protocol=4)
    with pytest.warns(UserWarning):  # torch: protocol 4 is not its default
        msg = _error(importers.load_checkpoint, tmp_path / "proto4.pkl")
    assert "refused to load" in msg and f"{name}, io.open" in msg, msg
    assert not marker.exists()


def test_docs_state_the_recorded_normalisation(tmp_path, session_env):
    """docs/importing.md names the normalisation an imported Brain-JEPA card records."""
    import re

    ckpt, _ = jepa_checkpoint(tmp_path / "jepa.pth.tar")
    folder = importers.import_brainjepa(
        ckpt, write_gradients(tmp_path / "g.csv", TINY["r"], TINY["g"]), tmp_path / "bj",
        atlas=user_atlas(tmp_path / "a", TINY["r"], "TS"), n_heads=4, allow_custom_layout=True)
    recorded = json.loads((folder / "card.json").read_text())["input"]["normalisation"]
    assert recorded == "zscore_global"  # the official downstream scheme (hca_sex_datasets.py)
    docs = (Path(__file__).parents[1] / "docs" / "importing.md").read_text()
    stated = re.findall(r"record `input\.normalisation: (\w+)`", " ".join(docs.split()))
    assert stated == [recorded]
