"""Reports without figures, and figures drawn again from the outputs on disk (issue 16).

``write_subject_report(..., figures=False)`` (the participant level's ``--no-figures``) writes
the tables with a note in place of each figure and never imports matplotlib;
``redraw_figures`` (``--reports-only``) draws the attention PNGs from the statmaps written
earlier, without reprocessing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_reports import HAS_MODEL, check_html, participant_out  # noqa: F401 (fixture)

from bidsfm.errors import InputDataError
from bidsfm.reports import write_subject_report
from bidsfm.reports.subject import NO_FIGURES, redraw_figures


def _copy(src: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_report_without_figures(participant_out, tmp_path):  # noqa: F811
    """No image at all, a note where each figure was, tables kept, matplotlib not imported."""
    out = _copy(participant_out, tmp_path)
    code = textwrap.dedent(f"""
        import json, sys
        from bidsfm.reports import write_subject_report
        path = write_subject_report({str(out)!r}, "01", figures=False)
        print(json.dumps({{"path": str(path), "mpl": "matplotlib" in sys.modules}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["mpl"] is False
    text = Path(info["path"]).read_text(encoding="utf-8")
    checker = check_html(text)
    assert checker.imgs == []
    note = NO_FIGURES.split(".")[0]
    # two ok runs: one note for the signal figures, one for the glass brain (with the model)
    assert text.count(note) == (4 if HAS_MODEL else 2)
    assert "Quality control" in text and "retained volumes" in text
    if HAS_MODEL:
        assert "top ROIs by |integrated-gradients attribution|" in text
    # the skipped run still says why it has nothing, not "figures not drawn"
    assert "not processed past QC" in text


def test_report_with_figures_is_unchanged_by_default(participant_out, tmp_path):  # noqa: F811
    out = _copy(participant_out, tmp_path)
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert NO_FIGURES.split(".")[0] not in text
    assert text.count('alt="carpet plot"') == 2


@pytest.mark.skipif(not HAS_MODEL, reason="no bundled model")
def test_redraw_figures_from_statmaps(participant_out, tmp_path):  # noqa: F811
    """The attention PNGs come back from the statmaps; nothing else is touched."""
    out = _copy(participant_out, tmp_path)
    figures_dir = out / "sub-01" / "figures"
    names = sorted(p.name for p in figures_dir.glob("*.png"))
    assert len(names) == 2  # the two ok runs
    shutil.rmtree(figures_dir)
    before = _files(out)
    written, problems = redraw_figures(out, "sub-01")
    assert problems == []
    assert sorted(p.name for p in written) == names
    assert all(p.parent == figures_dir for p in written)
    after = _files(out)
    assert {k: v for k, v in after.items() if not k.endswith(".png")} == before
    assert all(after[str(p.relative_to(out))].startswith(b"\x89PNG") for p in written)
    text = write_subject_report(out, "01").read_text(encoding="utf-8")
    assert text.count('alt="attention glass brain"') == 2


@pytest.mark.skipif(not HAS_MODEL, reason="no bundled model")
def test_redraw_figures_goes_on_after_a_bad_statmap(participant_out, tmp_path):  # noqa: F811
    out = _copy(participant_out, tmp_path)
    shutil.rmtree(out / "sub-01" / "figures")
    statmaps = sorted(out.rglob("*_statmap.nii.gz"))
    statmaps[0].write_bytes(b"not a nifti")
    written, problems = redraw_figures(out, "01")
    assert len(written) == 1 and len(problems) == 1
    assert statmaps[0].name in problems[0]


def test_redraw_figures_needs_the_participant(tmp_path):
    with pytest.raises(InputDataError, match="sub-02"):
        redraw_figures(tmp_path, "02")
