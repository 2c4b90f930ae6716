"""Atlas names as users type them, turned into the registry's names.

Case, ``_``/``-``/spaces/dots and the BIDS ``atlas-``/``desc-``/``seg-`` prefixes do not
matter. XCP-D's, TemplateFlow's, CBIG's and nilearn's spellings are understood. A ``+``
joins atlases into one parcellation (``TianS3+Schaefer400x17``: Tian's 50 subcortical ROIs
first, then Schaefer's 400, as Brain-JEPA's input).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from bidsfm.errors import AtlasNotFoundError

from .base import alnum, entity, strip_nifti

SCHAEFER_PARCELS = tuple(range(100, 1001, 100))
SCHAEFER_NETWORKS = (7, 17)
#: Networks used when a Schaefer name gives only the parcel count (``Schaefer400``): 17, as
#: XCP-D's Schaefer names (``Schaefer417``) and Brain-JEPA's Schaefer-400 input use.
SCHAEFER_DEFAULT_NETWORKS = 17
#: DiFuMo dimensions (probabilistic atlases, from a TemplateFlow tree).
DIFUMO_DIMENSIONS = (64, 128, 256, 512, 1024)
#: Tian subcortex scales; XCP-D's ``Tian`` is the 50-ROI scale 3.
TIAN_SCALES = (1, 2, 3, 4)
TIAN_DEFAULT_SCALE = 3

# Schaefer names after normalisation (lower case, separators collapsed to "_"): the family
# (``schaefer``, ``schaefer2018``, or nothing before ``NNNparcels``), the parcel count, then an
# optional network count after ``x``/``_``/``parcels``.
_SCHAEFER_RE = re.compile(
    r"^(?:schaefer_?(?:2018_?)?)?(?:v0143_?)?(?P<parcels>\d+)_?(?P<unit>parcels?|rois?|p)?_?"
    r"(?:x_?)?(?:(?P<networks>\d+)_?(?:networks?|nets?|n)?)?$"
)

#: Registry atlases other than Schaefer and DiFuMo: regex on the normalised name -> name.
ALIASES: tuple[tuple[str, str], ...] = (
    (r"cc_?200|craddock_?(?:2012_?)?200", "CC200"),
    (r"gordon(?:_?2016)?(?:_?333)?|caprsc", "Gordon333"),
    (r"(?:glasser|hcp_?mmp(?:_?1(?:_?0)?)?)(?:_?2016)?(?:_?360)?", "Glasser360"),
    (r"(?:harvard_?oxford|ho)_?(?:cort(?:ical)?)(?:_?maxprob)?(?:_?thr_?25)?(?:_?48)?",
     "HarvardOxfordCort"),
    (r"(?:harvard_?oxford|ho)_?(?:sub(?:cortical)?)(?:_?maxprob)?(?:_?thr_?25)?(?:_?21)?",
     "HarvardOxfordSub"),
    (r"aal(?:_?116)?(?:_?spm_?12)?|aal_?v?1", "AAL116"),
    (r"aal_?3(?:_?v_?1)?", "AAL3v1"),
    (r"power(?:_?2011)?(?:_?264)?", "Power264"),
)
_TIAN_RE = re.compile(
    r"^tian(?:_?2020)?(?:_?msa)?(?:_?subcortex)?(?:_?s_?(?P<scale>\d))?(?:_?3_?t)?$")
_DIFUMO_RE = re.compile(r"^difumo(?:_?(?P<dim>\d+)(?:_?dim(?:ensions?)?)?)?$")

#: Names users type (XCP-D's included) that bidsfm recognises but does not ship: (regex on the
#: normalised name, description, why). They resolve from a BIDS-Atlas folder on
#: ``BIDSFM_ATLAS_PATH`` when one holds them; else a one-line error says so.
NOT_PROVIDED: tuple[tuple[str, str, str], ...] = (
    (r"4s_?\d+_?parcels?",
     "XCP-D/AtlasPack 4S (Schaefer + 56 subcortical/cerebellar ROIs)",
     "its 56 non-cortical ROIs come from CIT168, the HCP thalamus and a cerebellar atlas, of "
     "which bidsfm has no verified copy; Schaefer + Tian (e.g. Schaefer400x17+TianS3) is "
     "available instead"),
    (r"hcp", "XCP-D's HCP subcortical atlas", "no verified copy of it is known to bidsfm"),
    (r"midb(?:_?precision)?", "XCP-D's MIDB precision atlas",
     "it is a surface (fsLR) atlas and bidsfm works on volumes"),
    (r"myers_?labonte", "XCP-D's Myers-Labonte atlas",
     "it is a surface (fsLR) atlas and bidsfm works on volumes"),
)
#: Names that mean several atlases: (regex on the normalised name, what to say instead).
AMBIGUOUS: tuple[tuple[str, str], ...] = (
    (r"subcortical", "XCP-D's older 'subcortical' is not one atlas here: use TianS1...TianS4 or "
     "HarvardOxfordSub"),
    (r"harvard_?oxford|ho(?:_?maxprob)?", "say which part: HarvardOxfordCort (48 cortical ROIs), "
     "HarvardOxfordSub (21 subcortical ROIs), or both as HarvardOxfordSub+HarvardOxfordCort"),
)

NAMED_PATH_RE = re.compile(r"^([^=/\\]+)=(.+)$")
NIFTI_RE = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)


def normalise(name: str) -> str:
    """Lower case, BIDS ``atlas-``/``desc-``/``seg-`` prefixes dropped, separators -> ``_``.

    Parameters
    ----------
    name : str
        A name as typed.

    Returns
    -------
    str
    """
    text = str(name).strip().lower()
    text = re.sub(r"(?:^|(?<=[_\-\s.]))(?:atlas|desc|seg)-", "", text)
    return re.sub(r"[_\-\s.]+", "_", text).strip("_")


def known_names_text() -> str:
    """One line listing the registry's names, for error messages."""
    return (
        "CC200 (bundled), Schaefer{100,200,...,1000}[x7|x17] (Schaefer400 = Schaefer400x17, "
        "bundled; also Schaefer2018_400Parcels_7Networks, 400Parcels7Networks, XCP-D's "
        "Schaefer417), TianS1...TianS4 (bundled; Tian = TianS3 as in XCP-D), Gordon333, "
        "Glasser360, HarvardOxfordCort, HarvardOxfordSub, AAL116, AAL3v1, Power264, "
        "DiFuMo{64,128,256,512,1024} (probabilistic), A+B for one combined atlas; recognised "
        "but not shipped: 4S156Parcels...4S1056Parcels, HCP, MIDB, MyersLabonte"
    )


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


def _parse_tian(norm: str) -> int | None:
    m = _TIAN_RE.match(norm)
    if m is None:
        return None
    scale = int(m.group("scale") or TIAN_DEFAULT_SCALE)
    if scale not in TIAN_SCALES:
        raise AtlasNotFoundError(
            f"no Tian subcortex scale {scale}",
            remedy="Scales are TianS1 (16 ROIs), TianS2 (32), TianS3 (50) and TianS4 (54)")
    return scale


def _parse_difumo(norm: str) -> int | None:
    m = _DIFUMO_RE.match(norm)
    if m is None:
        return None
    dim = m.group("dim")
    if dim is None or int(dim) not in DIFUMO_DIMENSIONS:
        raise AtlasNotFoundError(
            "DiFuMo needs one of its dimensions" if dim is None
            else f"no DiFuMo atlas with {dim} dimensions",
            remedy="Give DiFuMo64, DiFuMo128, DiFuMo256, DiFuMo512 or DiFuMo1024")
    return int(dim)


def not_provided(name: str) -> tuple[str, str] | None:
    """(description, why) when ``name`` is a recognised atlas bidsfm does not ship.

    Parameters
    ----------
    name : str
        A name as typed.

    Returns
    -------
    tuple of str or None
    """
    norm = normalise(name)
    for pattern, description, why in NOT_PROVIDED:
        if norm and re.fullmatch(pattern, norm):
            return description, why
    return None


def _canonical_single(name: str) -> str | None:
    norm = normalise(name)
    if not norm:
        return None
    for pattern, canonical in ALIASES:
        if re.fullmatch(pattern, norm):
            return canonical
    schaefer = _parse_schaefer(norm)
    if schaefer is not None:
        return f"Schaefer{schaefer[0]}x{schaefer[1]}"
    tian = _parse_tian(norm)
    if tian is not None:
        return f"TianS{tian}"
    difumo = _parse_difumo(norm)
    if difumo is not None:
        return f"DiFuMo{difumo}"
    for pattern, advice in AMBIGUOUS:
        if re.fullmatch(pattern, norm):
            raise AtlasNotFoundError(f"atlas name {name!r} is ambiguous", remedy=advice)
    found = not_provided(name)
    if found is not None:
        description, why = found
        raise AtlasNotFoundError(
            f"atlas {name!r} ({description}) is recognised but not shipped with bidsfm: {why}",
            remedy="Give its 3D label NIfTI as NAME=PATH (an index/name TSV beside it names "
            "the ROIs), or put a BIDS-Atlas folder holding it on BIDSFM_ATLAS_PATH, or use "
            f"one of: {known_names_text()}",
        )
    return None


def is_combined(spec: str) -> bool:
    """Whether a spec joins several atlases with ``+`` (and is not a path)."""
    text = str(spec)
    return "+" in text and not looks_like_path(text)


def looks_like_path(spec: str) -> bool:
    """Whether an ``--atlas`` value is a file, folder or ``NAME=PATH`` rather than a name."""
    text = str(spec).strip()
    return ("=" in text or "/" in text or os.sep in text or bool(NIFTI_RE.search(text)))


def canonical_atlas_name(name: str) -> str | None:
    """Return the registry name for a name as a user types it, or None if it is not one.

    Parameters
    ----------
    name : str
        E.g. ``"cc200"``, ``"Schaefer400"``, ``"Schaefer2018_400Parcels_17Networks"``,
        ``"schaefer400x7"``, ``"Schaefer417"`` (XCP-D < 0.7), ``"atlas-Schaefer2018_desc-
        400Parcels17Networks"``, ``"Tian"`` (= ``TianS3``, as XCP-D), ``"Gordon"``,
        ``"tian_s2+schaefer200"``. Case, ``_``/``-``/spaces and ``atlas-``/``desc-`` prefixes
        do not matter. A Schaefer name without a network count means
        :data:`SCHAEFER_DEFAULT_NETWORKS` (17) networks.

    Returns
    -------
    str or None
        E.g. ``"CC200"``, ``"Schaefer{N}x{K}"``, ``"TianS3+Schaefer400x17"``; None when the
        name is no registry atlas.

    Raises
    ------
    AtlasNotFoundError
        A name the registry recognises but cannot serve: a Schaefer count that does not exist,
        or an atlas of :data:`NOT_PROVIDED` (XCP-D's 4S, HCP, MIDB ...).
    """
    if is_combined(name):
        parts = [p for p in str(name).split("+")]
        if any(not p.strip() for p in parts):
            raise AtlasNotFoundError(f"atlas {name!r} has an empty part",
                                     remedy="Join atlas names with +, e.g. TianS3+Schaefer400x17")
        names = [_canonical_single(p) for p in parts]
        if any(n is None for n in names):
            return None
        if any(n.startswith("DiFuMo") for n in names if n):
            raise AtlasNotFoundError(
                f"atlas {name!r} joins a probabilistic atlas",
                remedy="Only label (dseg) atlases can be joined with +; give DiFuMo alone")
        if len(set(names)) != len(names):
            raise AtlasNotFoundError(f"atlas {name!r} names the same atlas twice")
        return "+".join(n for n in names if n)
    return _canonical_single(name)


def combined_name(canonical: str) -> str:
    """The BIDS-safe (alphanumeric) output name of a registry name (``A+B`` -> ``AB``)."""
    return re.sub(r"[^A-Za-z0-9]", "", canonical)


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
    if looks_like_path(text):
        return text
    try:
        return canonical_atlas_name(text) or text
    except AtlasNotFoundError:
        return text


def _named_spec(text: str, base: Path) -> bool:
    """True for ``NAME=PATH`` (an existing file whose name holds ``=`` is a plain path)."""
    return "=" in text and not (base / Path(text).expanduser()).exists()


def _path_like(text: str) -> bool:
    return "/" in text or os.sep in text or bool(NIFTI_RE.search(text))


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
        return alnum(text.partition("=")[0])
    if not _path_like(text):
        try:
            canonical = canonical_atlas_name(text)
        except AtlasNotFoundError:
            canonical = None
        if canonical is not None:
            return combined_name(canonical)
    filename = Path(text).name
    return alnum(entity(filename, "atlas") or "") or alnum(strip_nifti(filename))
