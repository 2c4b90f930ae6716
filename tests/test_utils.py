"""Shared helpers of bidsfm.utils that several modules use (one owner each)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from bidsfm.errors import ConfigError
from bidsfm.utils import dataclass_from_dict, inputs_hash, read_config_file, shared_data_dir


def test_shared_data_dir_argument_then_environment_then_beside_the_repository(
        tmp_path, monkeypatch):
    beside = Path(__file__).resolve().parents[2] / "shared" / "data"
    monkeypatch.setenv("BIDSFM_SHARED_DATA", str(tmp_path / "env"))
    assert shared_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert shared_data_dir() == tmp_path / "env"
    monkeypatch.setenv("BIDSFM_SHARED_DATA", "")  # empty counts as unset
    assert shared_data_dir() == beside
    monkeypatch.delenv("BIDSFM_SHARED_DATA")
    assert shared_data_dir() == beside


def test_shared_data_dir_is_what_demo_and_training_use(tmp_path, monkeypatch):
    """The demo's and the training package's resolvers follow BIDSFM_SHARED_DATA alike."""
    from bidsfm.demo import resolve_shared_data
    from bidsfm.models.training.data import shared_abide

    monkeypatch.setenv("BIDSFM_SHARED_DATA", str(tmp_path))
    assert resolve_shared_data() is None  # no CC200/ABIDE files there
    with pytest.raises(ConfigError, match="ABIDE CC200 time series not found") as info:
        shared_abide()
    assert str(tmp_path) in str(info.value)
    (tmp_path / "abide").mkdir()
    (tmp_path / "abide" / "cc200_timeseries.npz").write_bytes(b"")
    assert shared_abide() == tmp_path / "abide"


def test_inputs_hash_keeps_the_recorded_parameters_hashes():
    """Outputs written before record sha256(key)[:16]: the same key must give the same hash
    (or every output would be recomputed after an upgrade)."""
    key = '{"atlases": ["CC200"], "version": "1"}'
    assert inputs_hash(key) == hashlib.sha256(key.encode()).hexdigest()[:16]
    assert inputs_hash("a") != inputs_hash("b")


@pytest.mark.parametrize(("name", "text"), [
    ("c.toml", 'nprocs = 2\natlas = ["CC200"]\n'),
    ("c.json", '{"nprocs": 2, "atlas": ["CC200"]}'),
    ("c.yml", "nprocs: 2\natlas: [CC200]\n"),
    ("c.yaml", "nprocs: 2\natlas:\n  - CC200\n"),
])
def test_read_config_file_by_suffix(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert read_config_file(tmp_path / name) == {"nprocs": 2, "atlas": ["CC200"]}


@pytest.mark.parametrize(("name", "text"), [
    ("c.toml", "nprocs = \n"), ("c.json", "{nprocs: 2}"), ("c.yml", "a: [1\n"),
    ("missing.yml", None), ("c.yml", b"\xff\xfe"),
])
def test_read_config_file_errors_are_one_config_error(tmp_path, name, text):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=r"^.*: cannot read plugin file \(") as info:
        read_config_file(path, "plugin file")
    assert info.value.path == str(path)


@dataclass
class _Cfg:
    a: int = 1
    b: str = "x"


def test_dataclass_from_dict_names_unknown_keys():
    assert dataclass_from_dict(_Cfg, {"a": 3}, "test") == _Cfg(a=3)
    with pytest.raises(ConfigError, match="unknown test configuration keys: c, d\\.$"):
        dataclass_from_dict(_Cfg, {"a": 3, "d": 1, "c": 2}, "test")


def test_unreadable_config_file_on_the_command_line(tmp_path):
    """--config-file goes through read_config_file: a YAML error is one usage line (exit 2)."""
    from click.testing import CliRunner

    from bidsfm import cli as cli_mod

    bad = tmp_path / "bidsfm.yml"
    bad.write_text("nprocs: [2\n")
    r = CliRunner().invoke(cli_mod.cli, [str(tmp_path / "in"), str(tmp_path / "out"), "group",
                                         "--config-file", str(bad)])
    assert r.exit_code == 2
    assert f"{bad}: cannot read config file (" in " ".join(r.output.split())
