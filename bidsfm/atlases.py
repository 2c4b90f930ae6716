"""Atlas registry: resolve parcellations offline-first and bring them onto a run's grid.

Names are read the way users type them (case-insensitive; ``_``, ``-``, spaces and the BIDS
``atlas-``/``desc-`` prefixes ignored), XCP-D's names included: see :func:`canonical_atlas_name`
and :data:`NOT_PROVIDED`. Sources, in the order :func:`resolve_atlas` tries them:

1. **CC200** (Craddock et al. 2012), the default: a copy ships inside the package
   (``bidsfm/data/atlases``, sha256-verified), so it works without network or shared data; if
   that copy is missing, the cache (``$BIDSFM_HOME/atlases``; ``bidsfm-atlas seed CC200 FILE``)
   and then the URL + sha256 download are tried.
2. **Schaefer2018** (``Schaefer400`` = ``Schaefer400x17``, ``Schaefer2018_400Parcels_7Networks``,
   XCP-D's ``Schaefer417`` ...) read from a pre-fetched TemplateFlow tree
   (``$TEMPLATEFLOW_HOME``); TemplateFlow itself is never imported, so nothing here touches the
   network.
3. **A user file**: ``PATH`` or ``NAME=PATH`` to a 3D integer label NIfTI, with an optional TSV
   (``index``, ``name``) beside it.

A missing atlas is an :class:`~bidsfm.errors.AtlasNotFoundError` whose one-line message names
what to fetch and where to put it (an unknown name lists the valid ones). Set
``BIDSFM_OFFLINE=1`` to skip any download attempt.

:func:`resample_labels` brings a label image onto a run's voxel grid by nearest-neighbour
lookup in world coordinates, applying TemplateFlow's template-to-template transform (with the
optional ``nitransforms`` package) when the atlas and the run live in different templates.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from bidsfm.errors import AtlasNotFoundError
from bidsfm.utils import atomic_path, bidsfm_home, sha256_file

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

LOGGER = logging.getLogger(__name__)

#: Seconds to wait on the network before giving up on a download.
DOWNLOAD_TIMEOUT = 10.0

CC200_URL = (
    "https://raw.githubusercontent.com/preprocessed-connectomes-project/abide/master/"
    "preprocessing/resources/abide_rois/CC200.nii.gz"
)
CC200_SHA256 = "dd444ad89dd6b84ab44555eb8b319cb52661612e3f318905fc75466090b8e626"

#: Atlases fetched from a URL and verified by sha256 (name -> description).
URL_ATLASES: dict[str, dict[str, Any]] = {
    "CC200": {
        "url": CC200_URL,
        "sha256": CC200_SHA256,
        "filename": "CC200.nii.gz",
        "n_rois": 200,
        "template": "MNI152NLin6Asym",
        "description": "Craddock 2012 CC200, 200 ROIs, FSL MNI152 (MNI152NLin6Asym), 3 mm",
        "bundled": True,
    },
}

#: Folder of the atlases that ship inside the package (provenance in its SOURCES.md).
BUNDLED_DIR = Path(__file__).resolve().parent / "data" / "atlases"

SCHAEFER_PARCELS = tuple(range(100, 1001, 100))
SCHAEFER_NETWORKS = (7, 17)
#: Templates tried for Schaefer2018, after the run's own space.
SCHAEFER_TEMPLATES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: Resolutions tried for TemplateFlow images, before any other one.
PREFERRED_RESOLUTIONS = ("02", "01")

#: Networks used when a Schaefer name gives only the parcel count (``Schaefer400``): 17, as
#: XCP-D's Schaefer names (``Schaefer417``) and Brain-JEPA's Schaefer-400 input use.
SCHAEFER_DEFAULT_NETWORKS = 17

# Schaefer names after normalisation (lower case, separators collapsed to "_"): the family
# (``schaefer``, ``schaefer2018``, or nothing before ``NNNparcels``), the parcel count, then an
# optional network count after ``x``/``_``/``parcels``.
_SCHAEFER_RE = re.compile(
    r"^(?:schaefer_?(?:2018_?)?)?(?P<parcels>\d+)_?(?P<unit>parcels?|rois?|p)?_?"
    r"(?:x_?)?(?:(?P<networks>\d+)_?(?:networks?|nets?|n)?)?$"
)

#: Atlas names users type (XCP-D's included) that this version recognises but does not ship:
#: (regex on the normalised name, description). They are a one-line error saying so; give the
#: file as ``NAME=PATH`` instead.
NOT_PROVIDED: tuple[tuple[str, str], ...] = (
    (r"4s_?\d+_?parcels?", "XCP-D/AtlasPack 4S (Schaefer + 56 subcortical/cerebellar ROIs)"),
    (r"(?:glasser|hcp_?mmp)(?:_?2016)?(?:_?360)?", "Glasser 2016 HCP-MMP1.0 360"),
    (r"gordon(?:_?2016)?(?:_?333)?", "Gordon 2016 333"),
    (r"tian(?:_?2020)?(?:_?subcortex)?(?:_?s[1-4])?(?:_?3t)?|subcortical",
     "Tian 2020 subcortex (XCP-D's Tian / subcortical)"),
    (r"hcp", "XCP-D's HCP subcortical atlas"),
    (r"midb(?:_?precision)?", "XCP-D's MIDB precision atlas"),
    (r"myers_?labonte", "XCP-D's Myers-Labonte atlas"),
    (r"harvard_?oxford\w*|ho(?:_?\d+)?", "Harvard-Oxford"),
    (r"aal\w*", "AAL"),
    (r"power(?:_?2011)?(?:_?264)?", "Power 2011 264 spheres"),
)
#: Normalised names of the URL/bundled atlases.
_URL_ALIASES = {
    "cc200": "CC200", "cc_200": "CC200", "craddock200": "CC200", "craddock_200": "CC200",
    "craddock2012_200": "CC200", "craddock_2012_200": "CC200",
}
_NOT_PROVIDED_NAMES = (
    "4S156Parcels...4S1056Parcels, Glasser, Gordon, Tian/TianS1-S4, HCP, MIDB, MyersLabonte, "
    "HarvardOxford, AAL, Power264"
)
_NAMED_PATH_RE = re.compile(r"^([^=/\\]+)=(.+)$")
_NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)

_WARNED: set[tuple[str, ...]] = set()


@dataclass(frozen=True)
class Atlas:
    """A resolved parcellation.

    Attributes
    ----------
    name : str
        BIDS-safe (alphanumeric) registry name used in output names and sidecars, e.g.
        ``"CC200"`` or ``"Schaefer400x17"``.
    image : Path
        3D integer label NIfTI.
    labels : pandas.DataFrame
        Columns ``index`` (int, ascending, no 0) and ``name`` (str); one row per ROI of the
        atlas definition (an ROI may be absent from the image or from a run's field of view:
        it keeps its row).
    template : str or None
        TemplateFlow template id of the image's space (e.g. ``"MNI152NLin6Asym"``), None if
        unknown.
    source : str
        Where the atlas came from (URL, TemplateFlow path, user file), for sidecars.
    sha256 : str or None
        sha256 of ``image`` when known.
    """

    name: str
    image: Path
    labels: pd.DataFrame = field(compare=False, repr=False)
    template: str | None
    source: str
    sha256: str | None = None

    @property
    def n_rois(self) -> int:
        """Number of ROIs in the atlas definition."""
        return len(self.labels)

    @property
    def roi_names(self) -> list[str]:
        """ROI names in ascending label order."""
        return [str(n) for n in self.labels["name"]]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def available_atlases() -> list[str]:
    """Return the atlas names the registry knows (user files are accepted as well).

    Returns
    -------
    list of str
        ``CC200`` and every ``Schaefer{N}x{K}`` (N = 100..1000 step 100, K = 7 or 17).
    """
    names = list(URL_ATLASES)
    names += [f"Schaefer{n}x{k}" for n in SCHAEFER_PARCELS for k in SCHAEFER_NETWORKS]
    return names


def _known_names_text() -> str:
    return (
        f"{', '.join(f'{k} (bundled)' if v.get('bundled') else k for k, v in URL_ATLASES.items())}"
        ", Schaefer{100,200,...,1000}[x7|x17] from TemplateFlow (Schaefer400 = Schaefer400x17; "
        "also Schaefer2018_400Parcels_7Networks, 400Parcels7Networks, XCP-D's Schaefer417); "
        f"recognised but not shipped yet: {_NOT_PROVIDED_NAMES}"
    )


def _normalise(name: str) -> str:
    """Lower case, BIDS ``atlas-``/``desc-``/``seg-`` prefixes dropped, separators -> ``_``."""
    text = str(name).strip().lower()
    text = re.sub(r"(?:^|(?<=[_\-\s.]))(?:atlas|desc|seg)-", "", text)
    return re.sub(r"[_\-\s.]+", "_", text).strip("_")


def _parse_schaefer(norm: str) -> tuple[int, int] | None:
    """(parcels, networks) of a normalised Schaefer name, None if it is not one.

    Raises
    ------
    AtlasNotFoundError
        A Schaefer name whose parcel or network count does not exist.
    """
    m = _SCHAEFER_RE.match(norm)
    if m is None:
        return None
    if not norm.startswith("schaefer") and not (
        (m.group("unit") or "").startswith("parcel") and m.group("networks")
    ):
        return None  # without the family name only TemplateFlow's NNNParcelsKNetworks
    digits, networks = m.group("parcels"), m.group("networks")
    if networks is None:
        if int(digits) in SCHAEFER_PARCELS:
            return int(digits), SCHAEFER_DEFAULT_NETWORKS
        # XCP-D < 0.7: Schaefer117 ... Schaefer1017 = {1..10} x 100 parcels, 17 networks
        if digits.endswith("17") and len(digits) > 2 and int(digits[:-2]) * 100 in SCHAEFER_PARCELS:
            return int(digits[:-2]) * 100, 17
        if digits == "2018" and m.group("unit") is None:
            raise AtlasNotFoundError(
                "Schaefer2018 needs a parcel count",
                remedy="Give e.g. Schaefer400 (= Schaefer400x17) or Schaefer400x7; parcels are "
                "100, 200, ..., 1000 and networks 7 or 17",
            )
    parcels, nets = int(digits), int(networks) if networks else SCHAEFER_DEFAULT_NETWORKS
    if parcels not in SCHAEFER_PARCELS or nets not in SCHAEFER_NETWORKS:
        raise AtlasNotFoundError(
            f"no Schaefer2018 atlas with {parcels} parcels and {nets} networks",
            remedy="Parcels are 100, 200, ..., 1000 and networks 7 or 17 (e.g. Schaefer400x17; "
            f"Schaefer400 alone means {SCHAEFER_DEFAULT_NETWORKS} networks)",
        )
    return parcels, nets


def canonical_atlas_name(name: str) -> str | None:
    """Return the registry name for a name as a user types it, or None if it is not one.

    Parameters
    ----------
    name : str
        E.g. ``"cc200"``, ``"Schaefer400"``, ``"Schaefer2018_400Parcels_17Networks"``,
        ``"schaefer400x7"``, ``"Schaefer417"`` (XCP-D < 0.7), ``"atlas-Schaefer2018_desc-
        400Parcels17Networks"``. Case, ``_``/``-``/spaces and ``atlas-``/``desc-`` prefixes
        do not matter. A Schaefer name without a network count means
        :data:`SCHAEFER_DEFAULT_NETWORKS` (17) networks.

    Returns
    -------
    str or None
        ``"CC200"`` or ``"Schaefer{N}x{K}"``; None when the name is no registry atlas.

    Raises
    ------
    AtlasNotFoundError
        A name the registry recognises but cannot serve: a Schaefer count that does not exist,
        or an atlas of :data:`NOT_PROVIDED` (XCP-D's 4S, Glasser, Gordon, Tian ...).
    """
    norm = _normalise(name)
    if not norm:
        return None
    if norm in _URL_ALIASES:
        return _URL_ALIASES[norm]
    schaefer = _parse_schaefer(norm)
    if schaefer is not None:
        return f"Schaefer{schaefer[0]}x{schaefer[1]}"
    for pattern, description in NOT_PROVIDED:
        if re.fullmatch(pattern, norm):
            raise AtlasNotFoundError(
                f"atlas {name!r} ({description}) is recognised but not shipped with this "
                "bidsfm version",
                remedy="Give its 3D label NIfTI as NAME=PATH (an index/name TSV beside it names "
                f"the ROIs), or use one of: {_known_names_text()}",
            )
    return None


def normalise_atlas_spec(spec: str) -> str:
    """Return the registry name for a registry spelling, any other spec unchanged.

    For de-duplicating ``--atlas`` values: ``cc200``, ``Schaefer400`` and
    ``Schaefer2018_400Parcels_17Networks`` become ``CC200``, ``Schaefer400x17`` and
    ``Schaefer400x17``; paths, ``NAME=PATH`` and unknown or not-shipped names are returned
    as given (resolving them reports the problem). Never raises.

    Parameters
    ----------
    spec : str
        An ``--atlas`` value.

    Returns
    -------
    str
    """
    text = str(spec).strip()
    if "=" in text or "/" in text or os.sep in text or _NIFTI_RE.search(text):
        return text
    try:
        return canonical_atlas_name(text) or text
    except AtlasNotFoundError:
        return text


def _named_spec(text: str, base: Path) -> bool:
    """True for ``NAME=PATH`` (an existing file whose name holds ``=`` is a plain path)."""
    return "=" in text and not (base / Path(text).expanduser()).exists()


def _path_like(text: str) -> bool:
    return "/" in text or os.sep in text or bool(_NIFTI_RE.search(text))


def absolute_atlas_spec(spec: str, base: str | Path | None = None) -> str:
    """``spec`` with its file path made absolute; registry names are returned unchanged.

    Nipype runs each node in its own folder, so a relative ``--atlas NAME=PATH`` that was
    found when the command line was checked would not be found by the nodes. The command line
    calls this on every ``--atlas`` value, and on a model card's atlas file (``base`` = the
    card's folder). The path is joined to ``base``, not resolved: symlinks are kept.

    Parameters
    ----------
    spec : str
        An ``--atlas`` value: a registry name, a path, or ``NAME=PATH``.
    base : str or Path, optional
        Folder a relative path is relative to (default: the current folder).

    Returns
    -------
    str
    """
    text = str(spec).strip()
    folder = Path.cwd() if base is None else Path(base).absolute()

    def absolute(path: str) -> str:
        return str(folder / Path(path).expanduser())  # an absolute path stays as it is

    if _named_spec(text, folder):
        name, _, path = text.partition("=")
        return f"{name}={absolute(path)}"
    if _path_like(text):
        return absolute(text)
    try:
        if canonical_atlas_name(text) is not None:
            return text
    except AtlasNotFoundError:
        return text
    return absolute(text) if (folder / text).is_file() else text


def atlas_label(spec: str) -> str:
    """The atlas name (a BIDS label) :func:`resolve_atlas` gives ``spec``, without reading it.

    Used to name the QC table of a run whose atlas could not be resolved, so that no part of
    a raw spec (``X=../../x.nii.gz``) ever becomes part of a path. Returns ``""`` when no
    letters or digits are left (such a spec is refused when resolved).
    """
    text = str(spec).strip()
    if _named_spec(text, Path.cwd()):
        return _alnum(text.partition("=")[0])
    if not _path_like(text):
        try:
            canonical = canonical_atlas_name(text)
        except AtlasNotFoundError:
            canonical = None
        if canonical is not None:
            return canonical
    filename = Path(text).name
    return _alnum(_entity(filename, "atlas") or "") or _alnum(_strip_nifti(filename))


def resolve_atlas(spec: str, *, space: str | None = None) -> Atlas:
    """Resolve an atlas specification offline-first.

    Parameters
    ----------
    spec : str
        A registry name (``CC200``, ``Schaefer400x17``, ``Schaefer2018_400Parcels17Networks``),
        a path to a 3D integer label NIfTI, or ``NAME=PATH``.
    space : str, optional
        The run's template space (e.g. ``"MNI152NLin2009cAsym"``); TemplateFlow atlases in that
        template are preferred.

    Returns
    -------
    Atlas
        The resolved atlas.

    Raises
    ------
    AtlasNotFoundError
        When the atlas cannot be found or is invalid; the message is one line saying what to
        fetch and where to put it.
    """
    spec = str(spec).strip()
    if not spec:
        raise AtlasNotFoundError(
            "empty atlas name", remedy=f"Use one of {_known_names_text()}, or a label NIfTI path"
        )
    named = _NAMED_PATH_RE.match(spec)
    if named:
        return _resolve_user_file(Path(named.group(2)).expanduser(), name=named.group(1))
    if "=" in spec and not Path(spec).expanduser().exists():
        # NAME=PATH whose NAME holds path characters (``../evil=atlas.nii.gz``): the name is
        # reduced to its letters and digits, so it can never point outside the output folder
        name, _, path = spec.partition("=")
        return _resolve_user_file(Path(path).expanduser(), name=name)
    if _NIFTI_RE.search(spec) or "/" in spec or os.sep in spec:
        return _resolve_user_file(Path(spec).expanduser())
    try:
        canonical = canonical_atlas_name(spec)
    except AtlasNotFoundError:
        if Path(spec).expanduser().is_file():
            return _resolve_user_file(Path(spec).expanduser())
        raise
    if canonical in URL_ATLASES:
        return _resolve_url_atlas(canonical)
    if canonical is not None:
        m = re.fullmatch(r"Schaefer(\d+)x(\d+)", canonical)
        assert m is not None
        if canonical.lower() != spec.lower():
            LOGGER.info("atlas %r read as %s", spec, canonical)
        return _resolve_schaefer(int(m.group(1)), int(m.group(2)), space=space)
    if Path(spec).expanduser().is_file():
        return _resolve_user_file(Path(spec).expanduser())
    import difflib

    candidates = [*URL_ATLASES, *(f"Schaefer{n}" for n in SCHAEFER_PARCELS), *available_atlases()]
    close = difflib.get_close_matches(spec, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise AtlasNotFoundError(
        f"unknown atlas {spec!r}{hint}",
        remedy=f"Valid names: {_known_names_text()}; or give a path to a 3D integer label "
        "NIfTI (optionally NAME=PATH, with an index/name TSV beside it)",
    )


# --------------------------------------------------------------------------------------------
# URL atlases (CC200): cache -> download -> error
# --------------------------------------------------------------------------------------------


def _offline() -> bool:
    return os.environ.get("BIDSFM_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _cache_path(name: str) -> Path:
    return bidsfm_home() / "atlases" / URL_ATLASES[name]["filename"]


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(path: Path, sha: str) -> None:
    """Remember that ``path`` (at its current size and mtime) has sha256 ``sha``."""
    try:
        with atomic_path(_stamp_path(path)) as tmp:
            tmp.write_text(json.dumps({**_stat_key(path), "sha256": sha}) + "\n")
    except OSError:  # read-only cache: verification is simply redone next time
        LOGGER.debug("could not write verification stamp for %s", path)


def _verified(path: Path, expected: str) -> bool:
    """Return whether ``path`` has sha256 ``expected``, hashing only when the file changed."""
    stamp = _stamp_path(path)
    try:
        info = json.loads(stamp.read_text())
        if info.get("sha256") == expected and info == {**_stat_key(path), "sha256": expected}:
            return True
    except (OSError, ValueError):
        pass
    sha = sha256_file(path)
    if sha != expected:
        return False
    _write_stamp(path, sha)
    return True


def _missing_url_atlas(name: str, reason: str) -> AtlasNotFoundError:
    info = URL_ATLASES[name]
    return AtlasNotFoundError(
        f"{name} atlas not available offline ({reason})",
        remedy=f"Download {info['url']} (sha256 {info['sha256']}) and run "
        f"`bidsfm-atlas seed {name} FILE`, or put it at {_cache_path(name)}",
    )


def _download_now(url: str, dest: Path, sha256: str, timeout: float) -> None:
    import urllib.request

    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = sha256_file(tmp)
        if got != sha256:
            raise ValueError(f"downloaded file has sha256 {got}, expected {sha256}")


def _download(url: str, dest: Path, sha256: str, timeout: float | None = None) -> None:
    """Download ``url`` to ``dest`` through a temporary name, verifying its sha256.

    The socket timeout does not cover name resolution, so the download runs in a daemon thread
    and is abandoned after ``2 * timeout`` seconds in all (``timeout`` defaults to
    :data:`DOWNLOAD_TIMEOUT`): a dead network never hangs a job.
    """
    import threading

    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    errors: list[BaseException] = []

    def _target() -> None:
        try:
            _download_now(url, dest, sha256, timeout)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    worker = threading.Thread(target=_target, name="bidsfm-atlas-download", daemon=True)
    worker.start()
    worker.join(2 * timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {2 * timeout:g} s")
    if errors:
        raise errors[0]


@functools.lru_cache(maxsize=8)
def _bundled_ok(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    return sha256_file(path) == expected


def _bundled_path(name: str) -> Path | None:
    """The package's own copy of a URL atlas, if it is there and has the registry's sha256.

    Hashed once per process (12 kB for CC200); no stamp is written, so a read-only install or a
    git checkout stays untouched.
    """
    info = URL_ATLASES[name]
    if not info.get("bundled"):
        return None
    path = BUNDLED_DIR / info["filename"]
    try:
        st = path.stat()
    except OSError:
        return None
    if _bundled_ok(str(path), st.st_size, st.st_mtime_ns, info["sha256"]):
        return path
    _warn_once(("bundled", str(path)),
               "%s: the bundled %s atlas has the wrong sha256 (expected %s); ignoring it and "
               "trying the cache", path, name, info["sha256"])
    return None


def _resolve_url_atlas(name: str) -> Atlas:
    info = URL_ATLASES[name]
    labels = _generated_labels(name, range(1, info["n_rois"] + 1))
    bundled = _bundled_path(name)
    if bundled is not None:
        return Atlas(name=name, image=bundled, labels=labels, template=info["template"],
                     source=info["url"], sha256=info["sha256"])
    path = _cache_path(name)
    if path.is_file():
        if not _verified(path, info["sha256"]):
            raise AtlasNotFoundError(
                f"cached {name} atlas has the wrong sha256 (expected {info['sha256']})",
                path=path,
                remedy=f"Delete it, then download {info['url']} and run "
                f"`bidsfm-atlas seed {name} FILE`",
            )
    elif _offline():
        raise _missing_url_atlas(name, "BIDSFM_OFFLINE is set")
    else:
        try:
            LOGGER.info("downloading %s atlas from %s", name, info["url"])
            _download(info["url"], path, info["sha256"])
        except Exception as exc:  # noqa: BLE001 - any failure means "not available"
            reason = str(exc).replace("\n", " ").strip() or type(exc).__name__
            raise _missing_url_atlas(name, f"download failed: {reason}") from None
        _write_stamp(path, info["sha256"])
    return Atlas(
        name=name,
        image=path,
        labels=labels,
        template=info["template"],
        source=info["url"],
        sha256=info["sha256"],
    )


def seed_cache(name: str, source_file: str | Path) -> Path:
    """Verify a local copy of a URL atlas and copy it atomically into the cache.

    Parameters
    ----------
    name : str
        Registry name of a URL atlas (e.g. ``"CC200"``, case-insensitive).
    source_file : str or Path
        The downloaded file.

    Returns
    -------
    Path
        The cached file.

    Raises
    ------
    AtlasNotFoundError
        Unknown name, missing file, or sha256 mismatch (nothing is written then).
    """
    key = next((k for k in URL_ATLASES if k.lower() == str(name).strip().lower()), None)
    if key is None:
        raise AtlasNotFoundError(
            f"cannot seed unknown atlas {name!r}",
            remedy=f"Seedable atlases: {', '.join(URL_ATLASES)}; Schaefer atlases come from "
            "TEMPLATEFLOW_HOME and user atlases are used in place",
        )
    info = URL_ATLASES[key]
    src = Path(source_file).expanduser()
    if not src.is_file():
        raise AtlasNotFoundError(
            f"file to seed {key} from does not exist", path=src,
            remedy=f"Download {info['url']} first",
        )
    got = sha256_file(src)
    if got != info["sha256"]:
        raise AtlasNotFoundError(
            f"sha256 mismatch for {key}: file has {got}, expected {info['sha256']}",
            path=src,
            remedy=f"Download the right file from {info['url']}",
        )
    dest = _cache_path(key)
    with atomic_path(dest) as tmp:
        shutil.copyfile(src, tmp)
        if sha256_file(tmp) != info["sha256"]:  # pragma: no cover - disk corruption
            raise AtlasNotFoundError("copy into the cache is corrupt", path=dest)
    _write_stamp(dest, info["sha256"])
    return dest


# --------------------------------------------------------------------------------------------
# TemplateFlow atlases (Schaefer2018)
# --------------------------------------------------------------------------------------------


def templateflow_home() -> Path:
    """Return ``$TEMPLATEFLOW_HOME`` (default ``~/.cache/templateflow``) without importing it."""
    env = os.environ.get("TEMPLATEFLOW_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "templateflow"


def _usable(path: Path) -> bool:
    """A real, non-empty file (not a broken symlink or a git-annex/datalad placeholder)."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _template_id(space: str | None) -> str | None:
    """Normalise a space label (``MNI152NLin2009cAsym:res-2``, ``tpl-X``) to a template id."""
    if not space:
        return None
    tpl = str(space).split(":", 1)[0].strip()
    if tpl.startswith("tpl-"):
        tpl = tpl[4:]
    return tpl or None


def _tf_image_candidates(home: Path, tpl: str, atlas: str, desc: str) -> list[Path]:
    folder = home / f"tpl-{tpl}"
    tail = f"atlas-{atlas}_desc-{desc}_dseg.nii.gz"
    ordered = [folder / f"tpl-{tpl}_res-{res}_{tail}" for res in PREFERRED_RESOLUTIONS]
    if folder.is_dir():
        others = sorted(p for p in folder.glob(f"tpl-{tpl}_*{tail}") if p not in ordered)
        ordered += others
        ordered.append(folder / f"tpl-{tpl}_{tail}")
    return ordered


def _tf_tsv_candidates(home: Path, tpl: str, atlas: str, desc: str) -> list[Path]:
    folder = home / f"tpl-{tpl}"
    tail = f"atlas-{atlas}_desc-{desc}_dseg.tsv"
    ordered = [folder / f"tpl-{tpl}_{tail}"]
    if folder.is_dir():
        ordered += sorted(p for p in folder.glob(f"tpl-{tpl}_*{tail}") if p not in ordered)
    return ordered


def _resolve_schaefer(parcels: int, networks: int, *, space: str | None) -> Atlas:
    name = f"Schaefer{parcels}x{networks}"
    if parcels not in SCHAEFER_PARCELS or networks not in SCHAEFER_NETWORKS:
        raise AtlasNotFoundError(
            f"no Schaefer2018 atlas with {parcels} parcels and {networks} networks",
            remedy="Parcels are 100, 200, ..., 1000 and networks 7 or 17 (e.g. Schaefer400x17)",
        )
    desc = f"{parcels}Parcels{networks}Networks"
    home = templateflow_home()
    templates: list[str] = []
    for tpl in (_template_id(space), *SCHAEFER_TEMPLATES):
        if tpl and tpl not in templates:
            templates.append(tpl)
    for tpl in templates:
        image = next(
            (p for p in _tf_image_candidates(home, tpl, "Schaefer2018", desc) if _usable(p)), None
        )
        if image is None:
            continue
        tsv = next(
            (p for p in _tf_tsv_candidates(home, tpl, "Schaefer2018", desc) if _usable(p)), None
        )
        if tsv is not None:
            labels = _read_label_tsv(tsv)
        else:
            LOGGER.warning(
                "%s: no label TSV beside it in TemplateFlow; ROI names are generated", image
            )
            labels = _generated_labels(name, _image_label_values(image))
        return Atlas(
            name=name,
            image=image,
            labels=labels,
            template=tpl,
            source=f"TemplateFlow:{image.relative_to(home).as_posix()}",
            sha256=sha256_file(image),
        )
    first = templates[0]
    expected = home / f"tpl-{first}" / (
        f"tpl-{first}_res-{PREFERRED_RESOLUTIONS[0]}_atlas-Schaefer2018_desc-{desc}_dseg.nii.gz"
    )
    fetch = (
        f"python -c \"import templateflow.api as t; "
        f"t.get('{first}', atlas='Schaefer2018', desc='{desc}', resolution=2, suffix='dseg', "
        f"extension='.nii.gz'); t.get('{first}', atlas='Schaefer2018', desc='{desc}', "
        f"suffix='dseg', extension='.tsv')\""
    )
    raise AtlasNotFoundError(
        f"{name} atlas not found in TemplateFlow (TEMPLATEFLOW_HOME={home}; templates tried: "
        f"{', '.join(templates)})",
        path=expected,
        remedy=f"On a machine with internet run `{fetch}` and copy the resulting "
        f"tpl-{first} folder into {home} (or point TEMPLATEFLOW_HOME at a pre-fetched tree)",
    )


# --------------------------------------------------------------------------------------------
# User atlases
# --------------------------------------------------------------------------------------------

_ENTITY_RE = r"(?:^|_){}-([A-Za-z0-9]+)"


def _entity(filename: str, key: str) -> str | None:
    m = re.search(_ENTITY_RE.format(key), filename)
    return m.group(1) if m else None


def _strip_nifti(filename: str) -> str:
    return _NIFTI_RE.sub("", filename)


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def _user_tsv(path: Path) -> Path | None:
    """TSV beside a user atlas: same name, else the name without space/res/den entities."""
    stem = _strip_nifti(path.name)
    candidates = [path.with_name(stem + ".tsv")]
    reduced = re.sub(r"_(?:space|tpl|res|den|cohort)-[A-Za-z0-9]+", "", "_" + stem)[1:]
    reduced = re.sub(r"^(?:space|tpl|res|den|cohort)-[A-Za-z0-9]+_", "", reduced)
    if reduced and reduced != stem:
        candidates.append(path.with_name(reduced + ".tsv"))
    return next((c for c in candidates if _usable(c)), None)


def _load_label_array(path: Path) -> np.ndarray:
    """Load a 3D integer label image, raising one-line errors for anything else."""
    import nibabel as nb
    import numpy as np

    try:
        img = nb.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise AtlasNotFoundError(
            f"cannot read atlas image ({type(exc).__name__}: {exc})".replace("\n", " "),
            path=path, remedy="Give a 3D integer label NIfTI (.nii or .nii.gz)",
        ) from None
    if len(img.shape) == 4 and img.shape[3] == 1:
        data = np.asanyarray(img.dataobj)[..., 0]
    elif len(img.shape) == 3:
        data = np.asanyarray(img.dataobj)
    else:
        raise AtlasNotFoundError(
            f"atlas is not a 3D label image (shape {tuple(img.shape)})",
            path=path,
            remedy="Give a 3D integer label NIfTI (probabilistic 4D atlases are not supported)",
        )
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise AtlasNotFoundError(
                "atlas has non-integer values (is it a probabilistic map?)",
                path=path, remedy="Give a 3D integer label NIfTI",
            )
    if data.size and data.min() < 0:
        raise AtlasNotFoundError(
            "atlas has negative label values", path=path,
            remedy="Labels must be positive integers with 0 as background",
        )
    return data.astype(np.int32, copy=False)


def _image_label_values(path: Path) -> list[int]:
    import numpy as np

    values = np.unique(_load_label_array(path))
    return [int(v) for v in values if v != 0]


def _generated_labels(name: str, indices: Any) -> pd.DataFrame:
    import pandas as pd

    idx = sorted(int(i) for i in indices)
    return pd.DataFrame({"index": idx, "name": [f"{name}_{i:03d}" for i in idx]})


def _read_label_tsv(path: Path) -> pd.DataFrame:
    """Read an ``index``/``name`` (or ``label``) TSV into the canonical labels table."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype={"name": str, "label": str})
    except Exception as exc:  # noqa: BLE001
        raise AtlasNotFoundError(
            f"cannot read atlas label table ({type(exc).__name__})", path=path,
            remedy="Give a tab-separated file with columns index and name",
        ) from None
    name_col = "name" if "name" in table.columns else "label" if "label" in table.columns else None
    if "index" not in table.columns or name_col is None:
        raise AtlasNotFoundError(
            f"atlas label table lacks an index and a name/label column "
            f"(columns: {', '.join(map(str, table.columns))})",
            path=path, remedy="Add columns index and name",
        )
    index = pd.to_numeric(table["index"], errors="coerce")
    if index.isna().any() or not (index == index.round()).all():
        raise AtlasNotFoundError(
            "atlas label table has non-integer index values", path=path,
            remedy="Index must hold the integer label values of the image",
        )
    labels = pd.DataFrame({"index": index.astype(int), "name": table[name_col].astype(str)})
    labels = labels[labels["index"] != 0]
    if labels["index"].duplicated().any():
        dups = sorted(set(labels.loc[labels["index"].duplicated(), "index"]))
        raise AtlasNotFoundError(
            f"atlas label table repeats index values {dups[:5]}", path=path,
            remedy="Give one row per label",
        )
    return labels.sort_values("index").reset_index(drop=True)


def _resolve_user_file(path: Path, name: str | None = None) -> Atlas:
    if not _usable(path):
        raise AtlasNotFoundError(
            "atlas file not found or empty", path=path,
            remedy=f"Give an existing 3D integer label NIfTI, or one of {_known_names_text()}",
        )
    filename = path.name
    if name is not None:
        atlas_name = _alnum(name)
    else:
        atlas_name = _alnum(_entity(filename, "atlas") or "") or _alnum(_strip_nifti(filename))
    if not atlas_name:
        raise AtlasNotFoundError(
            "cannot derive an alphanumeric atlas name", path=path,
            remedy="Give it as NAME=PATH with an alphanumeric NAME",
        )
    template = _entity(filename, "tpl") or _entity(filename, "space")
    values = _image_label_values(path)
    if not values:
        raise AtlasNotFoundError(
            "atlas image contains no labels (all voxels are 0)", path=path,
            remedy="Give a label image with positive integer ROI values",
        )
    tsv = _user_tsv(path)
    if tsv is not None:
        labels = _read_label_tsv(tsv)
        if labels.empty:
            raise AtlasNotFoundError("atlas label table has no rows", path=tsv)
        present = set(values)
        absent = [int(i) for i in labels["index"] if int(i) not in present]
        if absent:
            LOGGER.warning(
                "%s: %d label(s) of %s are absent from the image (e.g. %s); their ROIs stay "
                "in the outputs as n/a", path, len(absent), tsv.name, absent[:5],
            )
        unnamed = sorted(present - {int(i) for i in labels["index"]})
        if unnamed:
            LOGGER.warning(
                "%s: %d image label(s) are not in %s (e.g. %s) and are ignored",
                path, len(unnamed), tsv.name, unnamed[:5],
            )
    else:
        labels = _generated_labels(atlas_name, values)
    return Atlas(
        name=atlas_name,
        image=path,
        labels=labels,
        template=template,
        source=str(path.resolve()),
        sha256=sha256_file(path),
    )


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def _nearest_lookup(
    data: np.ndarray, vox_coords: np.ndarray
) -> np.ndarray:
    """Nearest-neighbour lookup of ``data`` at fractional voxel coordinates (N x 3); 0 outside."""
    import numpy as np

    idx = np.floor(vox_coords + 0.5).astype(np.int64)
    shape = np.asarray(data.shape)
    inside = np.all((idx >= 0) & (idx < shape), axis=1)
    out = np.zeros(len(idx), dtype=np.int32)
    sel = idx[inside]
    out[inside] = data[sel[:, 0], sel[:, 1], sel[:, 2]]
    return out


def _grid_world_coords(affine: np.ndarray, shape: tuple[int, int, int], k: slice) -> np.ndarray:
    """World (RAS mm) coordinates of the voxels of slab ``k`` (last axis) of a grid, N x 3."""
    import numpy as np

    ii, jj, kk = np.meshgrid(
        np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2])[k], indexing="ij"
    )
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _resample_world(
    data: np.ndarray,
    src_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    mapping: Any = None,
    slab_voxels: int = 262_144,
) -> np.ndarray:
    """Nearest-neighbour resampling in world coordinates, in slabs to bound memory.

    ``mapping``, if given, maps target world coordinates (N x 3) to source world coordinates.
    """
    import numpy as np

    out = np.zeros(target_shape, dtype=np.int32)
    inv_src = np.linalg.inv(src_affine)
    per_slice = max(1, int(target_shape[0]) * int(target_shape[1]))
    step = max(1, slab_voxels // per_slice)
    for start in range(0, int(target_shape[2]), step):
        k = slice(start, min(start + step, int(target_shape[2])))
        world = _grid_world_coords(target_affine, target_shape, k)
        if mapping is not None:
            world = np.asarray(mapping(world), dtype=np.float64)
        vox = world @ inv_src[:3, :3].T + inv_src[:3, 3]
        n_k = k.stop - k.start
        out[:, :, k] = _nearest_lookup(data, vox).reshape(target_shape[0], target_shape[1], n_k)
    return out


def template_transform_path(target_space: str, atlas_space: str) -> Path:
    """TemplateFlow transform that resamples images from ``atlas_space`` into ``target_space``.

    Parameters
    ----------
    target_space, atlas_space : str
        Template ids.

    Returns
    -------
    Path
        ``$TEMPLATEFLOW_HOME/tpl-{target}/tpl-{target}_from-{atlas}_mode-image_xfm.h5`` (it
        may not exist).
    """
    tgt = _template_id(target_space)
    src = _template_id(atlas_space)
    return templateflow_home() / f"tpl-{tgt}" / f"tpl-{tgt}_from-{src}_mode-image_xfm.h5"


def _load_itk_mapping(path: Path) -> Any:
    """Load an ITK/ANTs composite ``.h5`` transform with nitransforms; return a point mapper.

    The returned callable maps target-template world coordinates (RAS mm, N x 3) to atlas-
    template world coordinates, the direction ``antsApplyTransforms`` uses to resample. The
    last transform loaded is kept in memory (runs of a subject share it).
    """
    st = path.stat()
    return _load_itk_mapping_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _load_itk_mapping_cached(path: str, size: int, mtime_ns: int) -> Any:
    from nitransforms.manip import TransformChain  # optional dependency (pulls in h5py)

    chain = TransformChain.from_filename(path, fmt="itk")
    return chain.map


def _warn_once(key: tuple[str, ...], msg: str, *args: Any) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        LOGGER.warning(msg, *args)


def resample_labels(
    atlas: Atlas,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    *,
    target_space: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Bring an atlas onto a run's voxel grid with nearest-neighbour interpolation.

    When the atlas and the run are in the same template (or either is unknown) voxels are
    matched in world coordinates (this agrees with
    ``nilearn.image.resample_to_img(atlas, target, interpolation="nearest")``). When the
    templates differ, TemplateFlow's ``tpl-{target}_from-{atlas}_mode-image_xfm.h5`` is applied
    if it is in ``$TEMPLATEFLOW_HOME`` and ``nitransforms`` is installed (as XCP-D does with
    ANTs); otherwise world coordinates are used and a warning is logged once.

    Parameters
    ----------
    atlas : Atlas
        The resolved atlas.
    target_affine : numpy.ndarray
        4 x 4 voxel-to-world affine of the run.
    target_shape : tuple of int
        Spatial shape of the run (the first three dimensions are used).
    target_space : str, optional
        The run's template (e.g. ``"MNI152NLin2009cAsym"``).

    Returns
    -------
    labels : numpy.ndarray
        int32 label array of shape ``target_shape``.
    info : dict
        ``AtlasSpace``, ``TargetSpace``, ``Method`` (``"identical-grid"``,
        ``"nearest-neighbour-resampling"``, ``"template-transform"`` or
        ``"world-coordinates (no template transform available)"``) and, for a template
        transform, ``Transform`` (the file used).
    """
    import nibabel as nb
    import numpy as np

    target_affine = np.asarray(target_affine, dtype=np.float64)
    if target_affine.shape != (4, 4):
        raise ValueError(f"target_affine must be 4 x 4, got {target_affine.shape}")
    target_shape = tuple(int(s) for s in tuple(target_shape)[:3])
    if len(target_shape) != 3:
        raise ValueError(f"target_shape must have 3 dimensions, got {target_shape}")

    data = _load_label_array(Path(atlas.image))
    src_affine = np.asarray(nb.load(str(atlas.image)).affine, dtype=np.float64)
    atlas_tpl = _template_id(atlas.template)
    target_tpl = _template_id(target_space)
    info: dict[str, Any] = {"AtlasSpace": atlas.template, "TargetSpace": target_space}

    if atlas_tpl is None or target_tpl is None or atlas_tpl == target_tpl:
        if data.shape == target_shape and np.allclose(src_affine, target_affine, atol=1e-4):
            info["Method"] = "identical-grid"
            return data.astype(np.int32, copy=True), info
        info["Method"] = "nearest-neighbour-resampling"
        return _resample_world(data, src_affine, target_affine, target_shape), info

    xfm = template_transform_path(target_tpl, atlas_tpl)
    reason = ""
    if _usable(xfm):
        try:
            mapping = _load_itk_mapping(xfm)
            out = _resample_world(data, src_affine, target_affine, target_shape, mapping)
        except ImportError as exc:
            reason = f"nitransforms is not installed ({exc.name or exc})"
        except Exception as exc:  # noqa: BLE001 - fall back, but say why
            reason = f"cannot apply {xfm.name}: {type(exc).__name__}: {exc}".replace("\n", " ")
        else:
            info["Method"] = "template-transform"
            info["Transform"] = str(xfm)
            return out, info
    else:
        reason = f"{xfm} not found"
    _warn_once(
        (str(atlas_tpl), str(target_tpl), reason),
        "atlas %s is in %s but the run is in %s and no template transform could be applied "
        "(%s); matching voxels by world coordinates instead",
        atlas.name, atlas_tpl, target_tpl, reason,
    )
    info["Method"] = "world-coordinates (no template transform available)"
    return _resample_world(data, src_affine, target_affine, target_shape), info


# --------------------------------------------------------------------------------------------
# CLI: bidsfm-atlas
# --------------------------------------------------------------------------------------------


def _status(name: str) -> str:
    if name in URL_ATLASES:
        bundled = _bundled_path(name)
        if bundled is not None:
            return f"bundled: {bundled}"
        path = _cache_path(name)
        if path.is_file():
            return f"cached: {path}"
        return f"not cached (downloads on first use, or `bidsfm-atlas seed {name} FILE`): {path}"
    m = re.fullmatch(r"Schaefer(\d+)x(\d+)", name)
    if m:
        desc = f"{m.group(1)}Parcels{m.group(2)}Networks"
        home = templateflow_home()
        found = [
            tpl for tpl in SCHAEFER_TEMPLATES
            if any(_usable(p) for p in _tf_image_candidates(home, tpl, "Schaefer2018", desc))
        ]
        if found:
            return f"TemplateFlow ({', '.join(found)})"
        return f"not in TEMPLATEFLOW_HOME={home}"
    return ""


@click.group(name="bidsfm-atlas", context_settings={"help_option_names": ["-h", "--help"]})
def atlas_cli() -> None:
    """Inspect and pre-fetch the atlases bidsfm uses (offline-first)."""


@atlas_cli.command(name="list")
def list_cmd() -> None:
    """List the atlases the registry knows and where each one would come from."""
    for name in available_atlases():
        click.echo(f"{name}\t{_status(name)}")


@atlas_cli.command(name="where")
@click.argument("name")
@click.option("--space", default=None, help="Run template space (prefers atlases in it).")
def where_cmd(name: str, space: str | None) -> None:
    """Resolve NAME and print the atlas image path (downloads once unless BIDSFM_OFFLINE=1)."""
    try:
        atlas = resolve_atlas(name, space=space)
    except AtlasNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(atlas.image))


@atlas_cli.command(name="seed")
@click.argument("name")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def seed_cmd(name: str, file: Path) -> None:
    """Verify FILE against NAME's sha256 and copy it into the bidsfm cache."""
    try:
        dest = seed_cache(name, file)
    except AtlasNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(str(dest))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``bidsfm-atlas``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    atlas_cli.main(args=argv, prog_name="bidsfm-atlas")


if __name__ == "__main__":  # pragma: no cover
    main()
