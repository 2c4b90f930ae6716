"""The resolved atlas and the small helpers every atlas module shares."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

LOGGER = logging.getLogger("bidsfm.atlases")

#: Warnings already given in this process (each is given once).
_WARNED: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class Atlas:
    """A resolved parcellation.

    Attributes
    ----------
    name : str
        BIDS-safe (alphanumeric) name used in output names and sidecars, e.g. ``"CC200"``,
        ``"Schaefer400x17"`` or ``"TianS3Schaefer400x17"`` (a combined atlas).
    image : Path
        3D integer label NIfTI, or 4D probabilistic maps (``kind == "probseg"``). For a
        combined atlas, the first part's image (each part is placed on a run separately).
    labels : pandas.DataFrame
        Columns ``index`` (int, ascending, no 0) and ``name`` (str); one row per ROI of the
        atlas definition (an ROI may be absent from the image or from a run's field of view:
        it keeps its row). For probabilistic maps, ``index`` k is the k-th volume (1-based).
    template : str or None
        TemplateFlow template id of the image's space (e.g. ``"MNI152NLin6Asym"``), None if
        unknown (or, for a combined atlas, if its parts are in different templates).
    source : str
        Where the atlas came from (URL, TemplateFlow path, user file), for sidecars.
    sha256 : str or None
        sha256 of ``image`` when known (for a combined atlas, a hash of its parts' hashes).
    kind : str
        ``"dseg"`` (integer labels) or ``"probseg"`` (4D weights, extracted as nilearn's
        ``NiftiMapsMasker`` does).
    parts : tuple of Atlas
        The atlases a combined atlas joins, in ROI order; empty otherwise.
    note : str
        What a user should know about this copy (e.g. who transformed it into its template);
        written into the sidecars with the placement.
    """

    name: str
    image: Path
    labels: pd.DataFrame = field(compare=False, repr=False)
    template: str | None
    source: str
    sha256: str | None = None
    kind: str = "dseg"
    parts: tuple[Atlas, ...] = field(default=(), compare=False, repr=False)
    note: str = ""

    @property
    def n_rois(self) -> int:
        """Number of ROIs in the atlas definition."""
        return len(self.labels)

    @property
    def roi_names(self) -> list[str]:
        """ROI names in ascending label order."""
        return [str(n) for n in self.labels["name"]]


def warn_once(key: tuple[str, ...], msg: str, *args: Any) -> None:
    """Log a warning the first time ``key`` is seen in this process."""
    if key not in _WARNED:
        _WARNED.add(key)
        LOGGER.warning(msg, *args)


def offline() -> bool:
    """Whether ``BIDSFM_OFFLINE`` forbids downloads."""
    return os.environ.get("BIDSFM_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def usable(path: Path) -> bool:
    """A real, non-empty file (not a broken symlink or a git-annex/datalad placeholder)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def template_id(space: str | None) -> str | None:
    """Normalise a space label (``MNI152NLin2009cAsym:res-2``, ``tpl-X``) to a template id."""
    if not space:
        return None
    tpl = str(space).split(":", 1)[0].strip()
    if tpl.startswith("tpl-"):
        tpl = tpl[4:]
    return tpl or None


def templateflow_home() -> Path:
    """Return ``$TEMPLATEFLOW_HOME`` (default ``~/.cache/templateflow``) without importing it."""
    env = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "templateflow"


_NIFTI_SUFFIX_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def entity(filename: str, key: str) -> str | None:
    """Value of the BIDS entity ``key`` in a file name, None if absent."""
    m = re.search(rf"(?:^|_){key}-([A-Za-z0-9]+)", filename)
    return m.group(1) if m else None


def strip_nifti(filename: str) -> str:
    """A NIfTI file name without ``.nii``/``.nii.gz``."""
    return _NIFTI_SUFFIX_RE.sub("", filename)


def alnum(text: str) -> str:
    """Only the letters and digits of ``text`` (BIDS-safe labels)."""
    return re.sub(r"[^A-Za-z0-9]", "", text)
