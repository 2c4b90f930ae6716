"""bidsfm.config: typed option groups built from the command line and config files alike, the
config each call writes to ``OUTPUT_DIR/logs/``, and the value of ``attention_steps`` used."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bidsfm import cli as cli_mod
from bidsfm.config import (
    ATTENTION_STEPS,
    SECTIONS,
    Config,
    build_config,
    option_names,
    write_config,
)
from bidsfm.errors import ConfigError


def _capture(monkeypatch) -> list[Config]:
    """Replace both levels' runners by one that records the config it is given."""
    seen: list[Config] = []

    def fake(config):
        seen.append(config)
        return 0

    monkeypatch.setattr(cli_mod, "run_participant", fake)
    monkeypatch.setattr(cli_mod, "run_group", fake)
    return seen


def test_every_option_belongs_to_exactly_one_group():
    params = {p.name for p in cli_mod.cli.params} - {"bids_dir", "output_dir",
                                                      "analysis_level", "version"}
    params.discard(None)
    grouped = [name for section in SECTIONS for name in option_names(section)]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == params - {"config_file"}


def test_command_line_builds_typed_frozen_groups(tmp_path, monkeypatch):
    seen = _capture(monkeypatch)
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(cli_mod.cli, [
        "in", "out", "participant", "--atlas", "Schaefer100x7", "--atlas", "X=a/x.nii.gz",
        "--fd-thresh", "0.3", "--nprocs", "2", "-w", "w", "--participant-label", "01",
        "--model", "none", "--no-figures", "--target", "age"])
    assert r.exit_code == 0, r.output
    config = seen[0]
    assert config.bids_dir == tmp_path / "in" and config.output_dir == tmp_path / "out"
    assert config.processing.atlas == ("Schaefer100x7", f"X={tmp_path}/a/x.nii.gz")
    assert config.processing.fd_thresh == 0.3 and config.execution.nprocs == 2
    assert config.execution.work_dir == tmp_path / "w" and not config.execution.figures
    assert config.inputs.participant_label == ("01",) and config.model.model == "none"
    assert config.group.target == ("age",) and config.model.attention_steps == ATTENTION_STEPS
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.processing.strategy = "none"  # type: ignore[misc]
    options = config.processing.options()
    assert options.fd_threshold == 0.3 and options.atlases == list(config.processing.atlas)


def test_config_file_in_sections_equals_the_command_line(tmp_path, monkeypatch):
    """A config file's keys are option names, flat or in the groups' sections."""
    seen = _capture(monkeypatch)
    args = [str(tmp_path / "in"), str(tmp_path / "out"), "participant"]
    r = CliRunner().invoke(cli_mod.cli, args + ["--atlas", "CC200", "--nprocs", "3",
                                                "--precision", "bf16"])
    assert r.exit_code == 0, r.output
    (tmp_path / "c.json").write_text(json.dumps({
        "processing": {"atlas": ["CC200"]}, "execution": {"nprocs": 3},
        "model": {"precision": "bf16"}}))
    r = CliRunner().invoke(cli_mod.cli, args + ["--config-file", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    a, b = seen
    for section in SECTIONS:
        assert getattr(a, section) == getattr(b, section), section


def test_written_config_is_in_logs_and_reads_back(tmp_path, monkeypatch):
    """Each call leaves OUTPUT_DIR/logs/config-<time>-<uuid8>.json, which --config-file takes
    back to the same options (as fMRIPrep's and XCP-D's per-run config files)."""
    config = build_config(tmp_path / "in", tmp_path / "out", "group", {
        "target": ("age", "sex:binary"), "n_bootstrap": 50, "model": "none",
        "participant_label": ("01", "02"), "harmonize": "site"})
    path = write_config(config)
    assert path.parent == tmp_path / "out" / "logs"
    assert path.name == f"config-{config.started}-{config.run_uuid[:8]}.json"
    data = json.loads(path.read_text())
    assert data["run"]["analysis_level"] == "group" and data["model"]["attention_steps"] == 32
    assert write_config(build_config("in", tmp_path / "out", "group", {})) != path  # one per call
    seen = _capture(monkeypatch)
    r = CliRunner().invoke(cli_mod.cli, [str(tmp_path / "in"), str(tmp_path / "out"), "group",
                                         "--config-file", str(path)])
    assert r.exit_code == 0, r.output
    for section in SECTIONS:
        assert getattr(seen[0], section) == getattr(config, section), section


def test_unknown_option_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown option"):
        build_config("in", "out", "participant", {"not_an_option": 1})


def test_group_json_records_the_attention_steps_used():
    """group.json said ``"attention_steps": null`` while 32 steps were used."""
    from bidsfm.group.run import group_options

    record = group_options(build_config("in", "out", "group", {"target": ("age",)}))
    assert record["attention_steps"] == ATTENTION_STEPS == 32
    assert record["target"] == ["age"] and record["model"] == "auto"
    assert all(not isinstance(v, (tuple, Path)) for v in record.values())
