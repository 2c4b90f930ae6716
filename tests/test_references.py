"""One bibliography: every reference text bidsfm writes comes from bidsfm.references."""

from __future__ import annotations

import re
from pathlib import Path

from bidsfm.references import REFERENCES, reference

PACKAGE = Path(__file__).resolve().parents[1] / "bidsfm"


def test_model_cards_cite_from_the_bibliography():
    from bidsfm.models.importers.brainjepa import BRAINJEPA_CITATION as IMPORTED_JEPA
    from bidsfm.models.importers.brainmass import BRAINMASS_CITATION as IMPORTED_MASS
    from bidsfm.models.importers.folder import SCHAEFER_CITATION, TIAN_CITATION
    from bidsfm.models.training.abide import ABIDE_CITATION, BRAINMASS_CITATION
    from bidsfm.models.training.build_ts import BRAINJEPA_CITATION

    assert IMPORTED_MASS == BRAINMASS_CITATION == reference("brainmass")
    assert IMPORTED_JEPA == BRAINJEPA_CITATION == reference("brainjepa")
    assert (SCHAEFER_CITATION, TIAN_CITATION) == (reference("schaefer"), reference("tian"))
    assert reference("abide") in ABIDE_CITATION


def test_no_reference_text_outside_the_bibliography():
    """A full reference ('Author X. et al. (YYYY) Title') is written in one file only."""
    pattern = re.compile(r"[A-Z][a-z]+ [A-Z]\.[A-Z.]*(?: et al\.|,).{0,80}\((?:19|20)\d\d\) [A-Z]")
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "references.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(PACKAGE)}:{n}: {line.strip()[:80]}")
    assert not offenders, offenders
    assert all(len(v) == 2 and v[1] for v in REFERENCES.values())
