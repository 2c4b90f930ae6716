"""bidsfm.models.weights: the one writer and reader of weights folders (models and heads)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from bidsfm.errors import ConfigError
from bidsfm.models.weights import CARD, WEIGHTS, read_weights, write_weights_folder


def test_write_then_read_round_trip_and_card_order(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    folder = write_weights_folder(tmp_path / "m", tensors, {"name": "m", "sha256": "old",
                                                            "version": "1"})
    card = json.loads((folder / CARD).read_text())
    assert list(card) == ["name", "sha256", "version"]  # an existing sha256 keeps its place
    assert card["sha256"] != "old" and len(card["sha256"]) == 64
    got = read_weights(folder, card, "model", remedy="Restore it")
    assert set(got) == {"a", "b"} and np.array_equal(got["a"], tensors["a"])
    card2 = json.loads((write_weights_folder(tmp_path / "h", tensors, {"name": "h"}) / CARD)
                       .read_text())
    assert list(card2) == ["name", "sha256"] and card2["sha256"] == card["sha256"]


def test_missing_changed_and_pickled_weights_are_one_line_errors(tmp_path):
    folder = write_weights_folder(tmp_path / "h", {"a": np.zeros(3, np.float32)}, {})
    card = json.loads((folder / CARD).read_text())
    with pytest.raises(ConfigError, match="head weights sha256 .* does not match the card's"):
        read_weights(folder, {**card, "sha256": "ab" * 32}, "head", remedy="Refit the head")
    (folder / WEIGHTS).write_bytes(pickle.dumps({"a": [0.0]}))
    with pytest.raises(ConfigError, match="head weights are not a valid safetensors file") as info:
        read_weights(folder, {}, "head", remedy="Refit the head")  # no sha256: still refused
    assert "bidsfm only loads safetensors; refit the head" in str(info.value)
    (folder / WEIGHTS).unlink()
    with pytest.raises(ConfigError, match="model weights are missing. Restore"):
        read_weights(folder, card, "model", remedy="Restore the model's weights.safetensors")
