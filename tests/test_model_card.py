"""bidsfm.models.card: one validated model card, the ``--model`` resolution shared by both
levels, and the Model interface both families implement."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from bidsfm.errors import ConfigError
from bidsfm.models.card import (
    DEFAULT_MODEL,
    Model,
    ModelCard,
    list_models,
    read_card,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]
CARD = {"name": "m1", "version": "1.0", "family": "brainmass", "sha256": "ab",
        "atlas": {"name": "X", "roi_names": ["a", "b", "c"]}, "input": {"min_volumes": 10},
        "heads": {"h": {"kind": "binary"}}, "training_data": {"name": "T"}}


def test_typed_fields_and_read_only_mapping():
    card = ModelCard.from_dict(CARD)
    assert (card.name, card.atlas_name, card.roi_names) == ("m1", "X", ("a", "b", "c"))
    assert card.family == "brainmass" and card.atlas_spec == "X" and card.warning is None
    assert card.input["min_volumes"] == 10 and list(card.heads) == ["h"]
    assert card["training_data"] == {"name": "T"} and card.get("missing") is None
    assert card == CARD and dict(card) == CARD  # a mapping equal to the card read
    assert card.provenance() == {"name": "m1", "version": "1.0", "sha256": "ab"}
    with pytest.raises(TypeError):
        card.data["name"] = "other"  # type: ignore[index]
    with pytest.raises(AttributeError):
        card.name = "other"  # type: ignore[misc]
    copy = card.to_dict()
    copy["atlas"]["name"] = "Y"
    assert card["atlas"]["name"] == "X"  # to_dict is a deep copy


@pytest.mark.parametrize("edit, words", [
    (lambda c: {**c, "name": "../x"}, "model name '../x' is not a BIDS label"),
    (lambda c: {**c, "atlas": {**c["atlas"], "name": "A\n"}}, "atlas name"),
    (lambda c: {k: v for k, v in c.items() if k != "name"}, "cannot read the model card"),
    (lambda c: {**c, "atlas": {"name": "X"}}, "cannot read the model card (KeyError"),
    (lambda c: {**c, "atlas": {"name": "X", "roi_names": [1, 2]}}, "roi_names"),
])
def test_invalid_cards_are_config_errors(edit, words):
    with pytest.raises(ConfigError) as err:
        ModelCard.from_dict(edit(CARD))
    assert words in err.value.one_line()


def test_read_card_makes_the_atlas_file_absolute(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps(
        {**CARD, "atlas": {**CARD["atlas"], "user_file": "atlas.nii.gz"}}))
    card = read_card(tmp_path)
    assert card.folder == tmp_path.absolute()
    assert card.atlas_file == str(tmp_path.absolute() / "atlas.nii.gz")
    assert card.atlas_spec == f"X={tmp_path.absolute() / 'atlas.nii.gz'}"
    assert card["atlas"]["user_file"] == card.atlas_file
    (tmp_path / "card.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a JSON object"):
        read_card(tmp_path)


def test_resolve_model(tmp_path):
    assert resolve_model("none") is None and resolve_model(None) is None
    with pytest.raises(ConfigError, match="unknown model"):
        resolve_model(str(tmp_path / "nothing"))
    if DEFAULT_MODEL not in list_models():
        pytest.skip("no bundled model")
    card = resolve_model("auto")
    assert card is not None and card.name == DEFAULT_MODEL and card.folder.is_absolute()
    assert resolve_model(str(card.folder)) == card
    shutil.copytree(card.folder, tmp_path / "m", ignore=shutil.ignore_patterns("*.safetensors"))
    assert resolve_model(str(tmp_path / "m")).folder == tmp_path / "m"


@pytest.mark.parametrize("name", ["bidsfmfc", "bidsfmts"])
def test_both_families_implement_the_model_interface(name):
    """FC and time-series models expose the same interface (what encode.py and the group
    level use), and each reads its own inputs from FC files: FC models the matrices,
    time-series models the sibling time series."""
    if name not in list_models():
        pytest.skip(f"{name} not bundled")
    from bidsfm.models.registry import load_model

    model = load_model(name)
    assert isinstance(model, Model) and isinstance(model.card, ModelCard)
    width = int(model.card.embedding_size)
    cols = model.embedding_columns(width)
    assert len(cols) == width and len(set(cols)) == width
    assert "10 steps" in model.attribution_method(10)


def test_embedding_columns_follow_the_readout():
    """Per-ROI embeddings are <ROI>_<k>, a pooled (mean readout) one emb_###, and an
    encoder's own names win (the rule encode.py applied before it moved to the models)."""
    from types import SimpleNamespace

    from bidsfm.models.registry import embedding_columns

    rois = ["a", "b"]
    plain = SimpleNamespace(config=SimpleNamespace(readout="connectivity"))
    assert embedding_columns(plain, rois, 4) == ["a_0", "a_1", "b_0", "b_1"]
    assert embedding_columns(plain, rois, 3) == ["emb_000", "emb_001", "emb_002"]
    pooled = SimpleNamespace(config=SimpleNamespace(readout="mean"))
    assert embedding_columns(pooled, rois, 4) == [f"emb_{k:03d}" for k in range(4)]
    named = SimpleNamespace(embedding_columns=lambda names: [f"{names[0]}--{names[1]}"])
    assert embedding_columns(named, rois, 1) == ["a--b"]


def _reads(path: Path) -> list[str]:
    """Attribute names read in a source file, and string constants given to getattr."""
    tree = ast.parse(path.read_text())
    out = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    out += [a.value for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", "") in ("getattr", "hasattr") for a in n.args
            if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return out


def test_no_caller_outside_the_models_asks_the_family_or_parses_cards():
    """Outside bidsfm/models, nothing reads ``input_kind`` or the encoder's readout, and no
    module parses a model's card.json itself (bidsfm.models.card does, once)."""
    for path in sorted((ROOT / "bidsfm").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("bidsfm/models/"):
            continue
        reads = _reads(path)
        assert "input_kind" not in reads, rel
        assert "readout" not in reads, rel
        if rel == "bidsfm/group/heads_io.py":  # a head's own card, not a model's
            continue
        text = path.read_text()
        assert '/ "card.json").read_text' not in text and "CARD).read_text" not in text, rel
