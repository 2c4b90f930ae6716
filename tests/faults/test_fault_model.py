"""Untrusted model folders: a pickle posing as safetensors, broken or hostile model cards."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
from faultkit import assert_clean, assert_run_ok, error_lines, make_case

from bidsfm.models.registry import CARD, DEFAULT_MODEL, MODELS_DIR, WEIGHTS, list_models
from bidsfm.utils import sha256_file

pytestmark = pytest.mark.skipif(DEFAULT_MODEL not in list_models(),
                                reason="bundled model not present")


class _Payload:
    """Unpickling this would call ``print("pwned")`` (a stand-in for ``os.system``)."""

    def __reduce__(self):
        return (print, ("pwned",))


def _pickled_model(folder: Path) -> Path:
    """Copy the bundled model with its weights replaced by a pickle; the card's sha256 matches,
    so only the file format stands between the pickle and an unpickler."""
    shutil.copytree(MODELS_DIR / DEFAULT_MODEL, folder)
    (folder / WEIGHTS).write_bytes(pickle.dumps(_Payload()))
    card = json.loads((folder / CARD).read_text())
    card["sha256"] = sha256_file(folder / WEIGHTS)
    (folder / CARD).write_text(json.dumps(card))
    return folder


def test_pickle_weights_are_never_unpickled(tmp_path, capfd):
    from bidsfm.models.registry import load_model

    folder = _pickled_model(tmp_path / "evil")
    with pytest.raises(Exception):  # noqa: B017 - any refusal; the point is that nothing runs
        load_model(folder)
    assert "pwned" not in capfd.readouterr().out


def test_pickle_weights_clear_error(tmp_path):
    from bidsfm.errors import ConfigError
    from bidsfm.models.registry import load_model

    folder = _pickled_model(tmp_path / "evil")
    with pytest.raises(ConfigError) as info:
        load_model(folder)
    assert WEIGHTS in str(info.value) and "safetensors" in str(info.value)


def test_pickle_model_on_the_command_line(tmp_path, tiny_ds, capfd):
    """``--model`` pointing at the pickled folder: the run outputs are written, the model's are
    an error on one line (exit 1), nothing is unpickled, no node crashes."""
    folder = _pickled_model(tmp_path / "evil")
    case = make_case(tiny_ds, tmp_path)
    code, _ = case.cli(model=str(folder))
    log = capfd.readouterr()
    assert "pwned" not in log.out
    assert code == 1
    assert "Traceback" not in log.err
    lines = error_lines(log.err)
    assert len(lines) == 1 and "(model)" in lines[0] and str(folder) in lines[0], lines
    for run in range(2):
        assert_run_ok(case, run)
    assert not list(case.out.rglob("*_desc-*_embedding.tsv"))
    assert not (case.work / "crash").exists()
    assert_clean(case.out)


@pytest.mark.parametrize("edit,words", [
    (lambda card: {**card, "name": "../../evil"}, "model name '../../evil' is not a BIDS label"),
    (lambda card: {**card, "atlas": {**card["atlas"], "name": "../CC200"}}, "atlas name"),
    # a trailing newline passed re.match(r"^...$") and put newlines into output file names
    (lambda card: {**card, "name": card["name"] + "\n"}, "\\n' is not a BIDS label"),
    (lambda card: {**card, "atlas": {**card["atlas"], "name": "CC200\n"}}, "atlas name"),
    (lambda card: {k: v for k, v in card.items() if k != "name"}, "cannot read the model card"),
    (lambda card: "{broken", "cannot read the model card"),
])
def test_bad_model_card_is_usage_error(edit, words, tmp_path, tiny_ds, capsys):
    """A card that cannot be read, or whose names would become paths: exit 2, one line."""
    folder = tmp_path / "model"
    shutil.copytree(MODELS_DIR / DEFAULT_MODEL, folder)
    card = edit(json.loads((folder / CARD).read_text()))
    (folder / CARD).write_text(card if isinstance(card, str) else json.dumps(card))
    case = make_case(tiny_ds, tmp_path)
    code, log = case.cli(model=str(folder), capsys=capsys)
    assert code == 2
    lines = error_lines(log)
    assert len(lines) == 1 and words in lines[0] and CARD in lines[0], lines
    assert not case.out.exists() and not (tmp_path / "evil").exists()
