"""Command-line basics that need no dataset."""

import subprocess
import sys

import pytest

from bidsfm.cli import expand_greedy


def test_help_is_lazy():
    code = ("import sys\n"
            "from bidsfm.cli import cli\n"
            "from click.testing import CliRunner\n"
            "r = CliRunner().invoke(cli, ['--help'])\n"
            "assert r.exit_code == 0, r.output\n"
            "assert '--participant-label' in r.output and '--bids-filter-file' in r.output\n"
            "heavy = [m for m in ('torch', 'nilearn', 'nipype', 'bids', 'numpy') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_version():
    out = subprocess.run([sys.executable, "-m", "bidsfm.cli", "--version"], capture_output=True,
                         text=True, check=True)
    assert "bidsfm" in out.stdout and "0." in out.stdout


@pytest.mark.parametrize("argv,expected", [
    (["/b", "/o", "participant", "--participant-label", "01", "02"],
     ["/b", "/o", "participant", "--participant-label", "01", "--participant-label", "02"]),
    (["--participant_label", "sub-01", "sub-02", "/b", "/o", "participant"],
     ["--participant_label", "sub-01", "--participant_label", "sub-02", "/b", "/o",
      "participant"]),
    (["-t", "rest", "participant"], ["-t", "rest", "participant"]),
])
def test_expand_greedy(argv, expected):
    assert expand_greedy(argv) == expected


def test_group_level_without_outputs(tmp_path):
    from click.testing import CliRunner

    from bidsfm.cli import cli

    (tmp_path / "in").mkdir()
    r = CliRunner().invoke(cli, [str(tmp_path / "in"), str(tmp_path / "out"), "group"])
    assert r.exit_code == 2
    assert "no participant outputs" in r.output and "Run the participant level" in r.output
    assert not (tmp_path / "out" / "group").exists()


def test_group_level_bad_target_spec(tmp_path):
    from click.testing import CliRunner

    from bidsfm.cli import cli

    (tmp_path / "in").mkdir()
    r = CliRunner().invoke(cli, [str(tmp_path / "in"), str(tmp_path / "out"), "group",
                                 "--target", "age:ordinal"])
    assert r.exit_code == 2
    assert "unknown task type 'ordinal'" in r.output


def test_missing_input_dir(tmp_path):
    from click.testing import CliRunner

    from bidsfm.cli import cli

    r = CliRunner().invoke(cli, [str(tmp_path / "nope"), str(tmp_path / "out"), "participant"])
    assert r.exit_code == 2
    assert "nope" in r.output and "does not exist" in r.output
