"""Find the preprocessed BOLD runs of the requested participants in an fMRIPrep dataset.

The index is built with pybids on a view of the dataset holding only the requested
participants' folders (symlinks), so that a job for one subject of a 10,000-subject tree only
walks that subject's folder (pybids would otherwise check every root entry against its ignore
patterns). Metadata (RepetitionTime) is read lazily, not indexed: from the BOLD sidecar, else
from the raw dataset's sidecars (BIDS inheritance), else from the NIfTI header; every source
present must agree (see :func:`resolve_repetition_time`).

Every fMRIPrep from 1.2 on is read: confounds named ``desc-confounds_timeseries.tsv`` (20.2 and
later) or ``desc-confounds_regressors.tsv`` (1.2 to 20.1). Only template spaces are accepted
(:func:`check_space`), and only files named exactly ``..._desc-preproc_bold.nii[.gz]`` are
taken as the preprocessed BOLD (a user's ``desc-preproc-smooth90`` beside it is ignored).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, InputDataError

LOGGER = logging.getLogger("bidsfm.discovery")

#: BIDS entities that identify a run, in BIDS filename order (before ``space``).
RUN_ENTITIES = ("subject", "session", "task", "acquisition", "ceagent", "reconstruction",
                "direction", "run", "echo", "part")
#: short keys used in file names for the entities above
ENTITY_KEYS = {"subject": "sub", "session": "ses", "task": "task", "acquisition": "acq",
               "ceagent": "ce", "reconstruction": "rec", "direction": "dir", "run": "run",
               "echo": "echo", "part": "part"}

SUPPORTED_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")
#: a BIDS label; always checked with fullmatch (``$`` would accept a trailing newline)
_LABEL_RE = re.compile(r"[A-Za-z0-9]+")

#: fMRIPrep output spaces that are not a template: the participant's own anatomy or BOLD grid,
#: or surfaces. bidsfm applies no subject-to-template transform, so an atlas (always in a
#: template) cannot be placed on data in these spaces.
NATIVE_SPACES = ("T1w", "T2w", "anat", "func", "bold", "boldref", "sbref", "scanner", "orig",
                 "native", "individual", "fsnative")
#: surface and grayordinate spaces (bidsfm extracts ROI signals from volumes only)
SURFACE_SPACES = ("fsaverage", "fsaverage3", "fsaverage4", "fsaverage5", "fsaverage6", "fsLR",
                  "onavg")
#: TR values bidsfm accepts, in seconds. The fastest fMRI sequences in use (MR encephalography,
#: inverse imaging, multiband EPI) sample at 50-100 ms; a whole-brain EPI volume is never
#: slower than 30 s. A value outside is a unit error (2000 meaning ms) or a broken sidecar.
TR_RANGE = (0.05, 30.0)


def is_mni_template(space: str | None) -> bool:
    """True for an adult MNI template (``MNI152*``, ``MNI305``, ``MNIColin27``).

    Atlases in one of these may be laid on data in another by world coordinates (the templates
    are all aligned to MNI space within a few millimetres), as long as this is reported.
    """
    tpl = (space or "").split(":", 1)[0]
    tpl = tpl[4:] if tpl.startswith("tpl-") else tpl
    return tpl.startswith("MNI152") or tpl in ("MNI305", "MNIColin27")


def check_space(template: str) -> None:
    """Refuse an output space that is not a volumetric template.

    Raises
    ------
    ConfigError
        For the participant's own spaces (``T1w``, ``boldref``, ``fsnative`` ...) and surface
        spaces (``fsaverage*``, ``fsLR``), with a one-line reason.
    """
    if template in NATIVE_SPACES:
        raise ConfigError(
            f"--space {template} is the participant's own (non-template) space: bidsfm's atlases "
            "are in template space and no subject-to-template transform is applied, so the atlas "
            "would be laid on the wrong anatomy",
            remedy="Use fMRIPrep outputs in a template space (fMRIPrep --output-spaces "
                   "MNI152NLin2009cAsym), e.g. --space MNI152NLin2009cAsym")
    if template in SURFACE_SPACES or template.startswith("fsaverage"):
        raise ConfigError(
            f"--space {template} is a surface space: bidsfm extracts ROI signals from volumetric "
            "BOLD images only",
            remedy="Use fMRIPrep's volumetric outputs in a template space, e.g. --space "
                   "MNI152NLin2009cAsym")


@dataclass
class BoldRun:
    """One preprocessed BOLD run and the files that go with it.

    Attributes
    ----------
    entities : dict
        Run-identifying BIDS entities (``subject``, ``session``, ``task``, ``run``, ...).
    space : str
        Template space of the BOLD image.
    bold, mask, confounds : str
        Absolute paths of the preprocessed BOLD, its brain mask and the confounds TSV.
    confounds_json : str or None
        The confounds sidecar (needed for CompCor selection).
    repetition_time : float
        Seconds (see :func:`resolve_repetition_time`).
    res : str or None
        The ``res-`` label of the BOLD file, if any.
    relpaths : dict
        Paths relative to the fMRIPrep dataset root (for BIDS URIs in sidecars).
    repetition_time_source : str
        Where the repetition time was read (``derivative sidecar``, ``raw sidecar``,
        ``NIfTI header``), and which other sources agreed; written to the QC table and sidecars.
    """

    entities: dict[str, str]
    space: str
    bold: str
    mask: str
    confounds: str
    confounds_json: str | None
    repetition_time: float
    res: str | None = None
    relpaths: dict[str, str] = field(default_factory=dict)
    repetition_time_source: str = ""

    @property
    def subject(self) -> str:
        """Participant label without ``sub-``."""
        return self.entities["subject"]

    @property
    def prefix(self) -> str:
        """``sub-X[_ses-Y]_task-Z[_run-N]`` in BIDS entity order."""
        return "_".join(f"{ENTITY_KEYS[k]}-{self.entities[k]}" for k in RUN_ENTITIES
                        if self.entities.get(k) not in (None, ""))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (used to pass runs to Nipype nodes)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BoldRun:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass
class RunProblem:
    """A run (or participant) that cannot be processed, with a one-line reason."""

    label: str
    message: str


def normalize_participant_labels(labels: list[str] | tuple[str, ...] | None) -> list[str]:
    """Strip ``sub-`` prefixes, split on whitespace/commas, validate and deduplicate.

    Raises
    ------
    ConfigError
        If a label contains anything but letters and digits (e.g. ``../`` or ``/``).
    """
    out: list[str] = []
    for raw in labels or ():
        for part in re.split(r"[\s,]+", str(raw).strip()):
            if not part:
                continue
            label = part[4:] if part.startswith("sub-") else part
            if not _LABEL_RE.fullmatch(label):
                raise ConfigError(f"invalid participant label {part!r}: BIDS labels contain only "
                                  "letters and digits", remedy="Pass labels like 01 or sub-01")
            if label not in out:
                out.append(label)
    return out


def normalize_labels(labels: list[str] | tuple[str, ...] | None, prefix: str, what: str
                     ) -> list[str]:
    """Strip an entity prefix (``ses-``/``task-``) and validate labels."""
    out: list[str] = []
    for raw in labels or ():
        for part in re.split(r"[\s,]+", str(raw).strip()):
            if not part:
                continue
            label = part[len(prefix):] if part.startswith(prefix) else part
            if not _LABEL_RE.fullmatch(label):
                raise ConfigError(f"invalid {what} label {part!r}",
                                  remedy="BIDS labels contain only letters and digits")
            if label not in out:
                out.append(label)
    return out


def parse_space(spec: str) -> tuple[str, str | None]:
    """Parse ``TEMPLATE[:res-N]`` into (template, res label or None)."""
    template, _, mod = spec.partition(":")
    res = None
    if mod:
        if not mod.startswith("res-"):
            raise ConfigError(f"cannot parse --space {spec!r}",
                              remedy="Use TEMPLATE or TEMPLATE:res-N, e.g. "
                                     "MNI152NLin2009cAsym:res-2")
        res = mod[4:]
        if not _LABEL_RE.fullmatch(res):
            raise ConfigError(f"invalid --space {spec!r}: the res- label must be letters and "
                              "digits", remedy="Use TEMPLATE:res-N, e.g. "
                                               "MNI152NLin2009cAsym:res-2")
    if not _LABEL_RE.fullmatch(template):
        raise ConfigError(f"invalid --space {spec!r}")
    check_space(template)
    return template, res


def locate_fmriprep(bids_dir: str | Path, derivatives: dict[str, str] | None = None) -> Path:
    """Return the fMRIPrep derivatives root for the given inputs.

    ``bids_dir`` may be the fMRIPrep dataset itself, or a raw BIDS dataset with either
    ``-d fmriprep=PATH`` (``derivatives``) or ``derivatives/fmriprep`` inside it.
    """
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.is_dir():
        raise ConfigError("input dataset folder does not exist", path=bids_dir,
                          remedy="Pass the fMRIPrep output folder (or a BIDS folder with -d "
                                 "fmriprep=PATH)")
    if derivatives:
        for key in ("fmriprep", "preprocessed"):
            if key in derivatives:
                path = Path(derivatives[key]).absolute()
                if not path.is_dir():
                    raise ConfigError("derivatives folder does not exist", path=path)
                return path
        if len(derivatives) == 1:
            path = Path(next(iter(derivatives.values()))).absolute()
            if not path.is_dir():
                raise ConfigError("derivatives folder does not exist", path=path)
            return path
    if _looks_like_fmriprep(bids_dir):
        return bids_dir
    for cand in (bids_dir / "derivatives" / "fmriprep", bids_dir / "derivatives" / "fMRIPrep"):
        if cand.is_dir():
            return cand
    raise ConfigError("no fMRIPrep derivatives found", path=bids_dir,
                      remedy="Pass the fMRIPrep output folder as BIDS_DIR, or add "
                             "-d fmriprep=PATH")


def _looks_like_fmriprep(path: Path) -> bool:
    desc = path / "dataset_description.json"
    if desc.is_file():
        try:
            data = json.loads(desc.read_text())
        except (OSError, ValueError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        if data.get("DatasetType") == "derivative":
            return True
        generated = data.get("GeneratedBy")
        if not isinstance(generated, list):
            generated = []
        names = [str(g.get("Name", "")) for g in generated if isinstance(g, dict)]
        if any("fmriprep" in n.lower() for n in names):
            return True
    # a derivatives tree without description: look for one preproc bold in the first subject
    for sub in sorted(path.glob("sub-*"))[:1]:
        if next(sub.glob("**/*desc-preproc_bold.nii*"), None) is not None:
            return True
    return False


def list_participants(fmriprep_dir: Path) -> list[str]:
    """List participant labels from the ``sub-*`` folders (no indexing)."""
    out = []
    with os.scandir(fmriprep_dir) as it:
        for entry in it:
            if entry.name.startswith("sub-") and entry.is_dir():
                out.append(entry.name[4:])
    return sorted(out)


def _participant_view(fmriprep_dir: Path, participants: list[str], where: Path) -> Path | None:
    """A folder with the top-level files and the participants' folders only, as symlinks.

    pybids checks every entry of the dataset root against its ignore patterns with slow path
    objects, so on a 5,000-subject tree even the ignored ``sub-*`` folders cost seconds.
    Indexing this view instead walks only the requested participants. Returns None when
    symlinks cannot be made (the caller indexes the real root).
    """
    view = where / "view"
    try:
        if view.exists():
            shutil.rmtree(view)
        view.mkdir(parents=True)
        with os.scandir(fmriprep_dir) as it:
            for entry in it:
                if entry.is_file() and not entry.name.endswith(".html"):  # .html: ignored
                    (view / entry.name).symlink_to(entry.path)
        for label in participants:
            folder = fmriprep_dir / f"sub-{label}"
            if folder.is_dir():
                (view / folder.name).symlink_to(folder, target_is_directory=True)
    except OSError as exc:
        LOGGER.debug("cannot build a participant view in %s (%s); indexing %s", where, exc,
                     fmriprep_dir)
        shutil.rmtree(view, ignore_errors=True)
        return None
    return view


def symlink_loops(folder: Path) -> list[tuple[Path, Path]]:
    """Folder symlinks under ``folder`` that lead back to a folder above them (loops).

    pybids follows folder symlinks, so a link such as ``sub-01/func/loop -> ..`` made it index
    every file again at each level, until the path was too long: thousands of misleading
    warnings and a job several times slower. Links to anything else are followed as before.

    Returns
    -------
    list of (Path, Path)
        Each loop link (as found under ``folder``) and the folder it points back to.
    """
    loops: list[tuple[Path, Path]] = []

    def is_dir(entry: os.DirEntry) -> bool:
        try:
            return entry.is_dir()  # follows links; a broken one is False
        except OSError:  # e.g. a link to itself (ELOOP)
            return False

    def walk(path: str, chain: frozenset[str]) -> None:
        try:
            with os.scandir(path) as it:
                entries = [e for e in it if is_dir(e)]
        except OSError:
            return
        for entry in entries:
            real = os.path.realpath(entry.path)
            if entry.is_symlink() and real in chain:
                loops.append((Path(entry.path), Path(real)))
                continue
            walk(entry.path, chain | {real})

    walk(str(folder), frozenset({os.path.realpath(folder)}))
    return loops


def build_layout(fmriprep_dir: Path, participants: list[str], database_dir: Path | None, *,
                 view: bool = True):
    """Index ``fmriprep_dir`` with pybids, restricted to ``participants``.

    With participants given, pybids indexes a view of the dataset (a folder of symlinks to the
    top-level files and the participants' folders, kept in ``database_dir`` or in a
    temporary folder removed with the layout or at exit), so the cost does not depend on the
    number of other participants. Paths returned by the layout are under that view; map them
    back with :func:`real_path` (:func:`collect_runs` does).

    Parameters
    ----------
    fmriprep_dir : Path
        Root of the fMRIPrep derivatives.
    participants : list of str
        Labels (without ``sub-``) to index; every other ``sub-*`` is ignored.
    database_dir : Path or None
        Where to keep the SQLite index. A sub-folder keyed by the root and participants is
        used, under a lock held as long as the layout lives; a job that finds it locked
        (another job is indexing or querying it) indexes into a private sub-folder, removed
        with its layout, so that two jobs never share (or corrupt) one database.
    view : bool
        Index the participants' view (default). False indexes the real root, excluding the
        other participants by an ignore pattern only (the former behaviour, kept for the
        ``benchmarks/discovery_scale.py`` comparison).

    Returns
    -------
    bids.BIDSLayout
        The index; ``layout.root`` is the view when one is used.
    """
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    fmriprep_dir = Path(fmriprep_dir).absolute()
    ignore: list[Any] = ["code", "sourcedata", "figures", "log", "logs", "work", "atlases",
                         re.compile(r"^\."), re.compile(r"\.html$")]
    if participants:
        alt = "|".join(re.escape(p) for p in participants)
        ignore.append(re.compile(rf"^/sub-(?!({alt})(/|$))"))
    for label in participants or list_participants(fmriprep_dir):
        for link, target in symlink_loops(fmriprep_dir / f"sub-{label}"):
            LOGGER.warning("%s: a symbolic link back to %s, a folder above it (a loop); not "
                           "indexed. Remove the link", link, target)
            rel = link.relative_to(fmriprep_dir).as_posix()
            ignore.append(re.compile("^/" + re.escape(rel) + "(/|$)"))
    indexer = BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore)
    kwargs: dict[str, Any] = {}
    scratch = None  # a temporary folder for the view, removed with the layout
    lock = None
    if database_dir is not None:
        from .locks import ExclusiveLock

        key = hashlib.sha1(
            (str(fmriprep_dir) + "|" + ",".join(participants)).encode()
        ).hexdigest()[:12]
        Path(database_dir).mkdir(parents=True, exist_ok=True)
        db = Path(database_dir) / f"layout-{key}"
        lock = ExclusiveLock(Path(database_dir) / f".layout-{key}.lock")
        if not lock.acquire(timeout=0):  # another job uses this index now
            lock = None
            db = Path(tempfile.mkdtemp(prefix=f"layout-{key}.", dir=database_dir))
            scratch = str(db)
            LOGGER.info("the pybids index %s is in use by another job; indexing into %s",
                        Path(database_dir) / f"layout-{key}", db)
        db.mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(db / "index")
        where = db
    else:
        scratch = tempfile.mkdtemp(prefix="bidsfm-layout-")
        where = Path(scratch)
    try:
        root = (_participant_view(fmriprep_dir, participants, where)
                if participants and view else None)
        layout = BIDSLayout(str(root or fmriprep_dir), validate=False,
                            config=["bids", "derivatives"], indexer=indexer, **kwargs)
    except BaseException:
        if lock is not None:
            lock.release()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    layout._bidsfm_real_root = str(fmriprep_dir)  # for real_path
    if scratch is not None:
        weakref.finalize(layout, shutil.rmtree, scratch, True)
    if lock is not None:
        weakref.finalize(layout, lock.release)
    return layout


def check_bids_filters(filters: dict[str, Any], layout, path: str | Path) -> None:
    """Check a ``--bids-filter-file`` against the layout before it is used.

    Each entry (``bold``, and fMRIPrep's ``t1w``, ``sbref`` ... which bidsfm ignores) must be
    an object of ``entity: value`` pairs; the entities of ``bold`` must be ones pybids knows,
    with a label, a number, ``null`` or a list of those as value.

    Raises
    ------
    ConfigError
        One line naming the file, the entry and the entity (with the closest known name).
    """
    import difflib

    example = 'Write e.g. {"bold": {"task": "rest", "run": [1, 2]}}'
    for key, value in filters.items():
        if not isinstance(value, dict):
            raise ConfigError(f"the filter file's {key!r} entry is {json.dumps(value)}, not "
                              "an object of entity: value pairs", path=path, remedy=example)
    known = set(layout.get_entities()) | {"extension", "suffix", "datatype"}
    for entity, value in (filters.get("bold") or {}).items():
        if entity not in known:
            close = difflib.get_close_matches(str(entity), sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown BIDS entity {entity!r} in the filter file's 'bold' "
                              f"entry{hint}", path=path,
                              remedy="Use entity names as pybids spells them: "
                                     + ", ".join(sorted(known)))
        values = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, (str, int, float)) for v in values):
            raise ConfigError(f"the filter file's 'bold' entry gives {entity!r} the value "
                              f"{json.dumps(value)}; expected a label, a number, null or a "
                              "list of those", path=path, remedy=example)


def real_path(layout, path: str | Path) -> Path:
    """Map a path returned by a :func:`build_layout` layout back into the real dataset."""
    real_root = getattr(layout, "_bidsfm_real_root", None)
    if real_root is None:
        return Path(path)
    rel = os.path.relpath(str(path), str(layout.root))
    return Path(real_root) / rel


# --------------------------------------------------------------------------- file content


def _annex_pointer(path: Path) -> bool:
    """True for a git-annex pointer file (unlocked annex): a few bytes naming an annex key."""
    try:
        if path.stat().st_size > 1024:
            return False
        with open(path, "rb") as fh:
            head = fh.read(200)
    except OSError:
        return False
    return head.startswith(b"/annex/objects/") or b".git/annex/objects/" in head[:120]


def content_problem(path: str | Path, what: str) -> InputDataError | None:
    """Why the content of ``path`` cannot be read, as an error; None when it is present.

    A DataLad/git-annex clone holds, for every file whose content was not fetched, a symlink
    into ``.git/annex/objects`` that points nowhere (or, in an unlocked annex, a small pointer
    file). Such a file is not broken and fMRIPrep need not be rerun: its content has to be
    fetched with ``datalad get``.
    """
    path = Path(path)
    target = ""
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = ""
    annexed = "annex/objects/" in target or _annex_pointer(path)
    if annexed and (not path.exists() or _annex_pointer(path)):
        return InputDataError(
            f"the content of this {what} is not present: it is a DataLad/git-annex link "
            "whose file was never fetched (the dataset was cloned without 'datalad get')",
            path=path, remedy=f"Fetch it with: datalad get {path} (or 'datalad get -r' on the "
            "dataset, or 'git annex get' on this file), then rerun bidsfm")
    if path.is_symlink() and not path.exists():
        return InputDataError(
            f"this {what} is a symbolic link to {target}, which does not exist", path=path,
            remedy="Restore the file the link points to, or replace the link with the file")
    return None


# --------------------------------------------------------------------------- repetition time


def _bids_stem_entities(name: str) -> tuple[dict[str, str], str] | None:
    """Entities and suffix of a BIDS file name (``sub-01_task-rest_bold.json``), or None."""
    stem = name.split(".", 1)[0]
    parts = stem.split("_")
    ents: dict[str, str] = {}
    for part in parts[:-1]:
        key, sep, value = part.partition("-")
        if not sep or not value or not _LABEL_RE.fullmatch(value) or not key.isalnum():
            return None
        ents[key] = value
    return ents, parts[-1]


def _same_label(key: str, a: str, b: str) -> bool:
    if key in ("run", "echo", "chunk") and a.isdigit() and b.isdigit():
        return int(a) == int(b)  # run-01 in raw data is run-1 in fMRIPrep's outputs
    return a == b


def raw_sidecars(raw_dir: Path, entities: dict[str, str]) -> list[Path]:
    """The raw dataset's ``*_bold.json`` files that apply to a run, top level first.

    BIDS inheritance: a sidecar applies when its entities are a subset of the run's; deeper
    folders (subject, session, ``func``) override shallower ones.
    """
    run = {ENTITY_KEYS[k]: v for k, v in entities.items() if k in ENTITY_KEYS}
    folders = [raw_dir, raw_dir / f"sub-{entities['subject']}"]
    if entities.get("session"):
        folders.append(folders[-1] / f"ses-{entities['session']}")
    folders.append(folders[-1] / "func")
    out: list[Path] = []
    for folder in folders:
        try:
            names = sorted(e.name for e in os.scandir(folder) if e.name.endswith("_bold.json"))
        except OSError:
            continue
        level = []
        for name in names:
            parsed = _bids_stem_entities(name)
            if parsed is None or parsed[1] != "bold":
                continue
            ents = parsed[0]
            if all(k in run and _same_label(k, v, run[k]) for k, v in ents.items()):
                level.append((len(ents), folder / name))
        out += [p for _, p in sorted(level)]  # the more specific file of a level wins
    return out


def locate_raw_dataset(bids_dir: str | Path | None, fmriprep_dir: str | Path) -> Path | None:
    """The raw BIDS dataset the fMRIPrep outputs came from, when it can be found locally.

    Looked for in this order: BIDS_DIR when it is not the derivatives themselves; fMRIPrep's
    ``DatasetLinks.raw``/``SourceDatasets`` local paths; ``<raw>/derivatives/fmriprep`` layouts;
    ``sourcedata/raw`` inside the derivatives. Used only to read sidecars (never written).
    """
    fmriprep_dir = Path(fmriprep_dir).absolute()
    cands: list[Path] = []
    if bids_dir is not None and Path(bids_dir).absolute() != fmriprep_dir:
        cands.append(Path(bids_dir).absolute())
    try:
        desc = json.loads((fmriprep_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        desc = {}
    if isinstance(desc, dict):
        links = desc.get("DatasetLinks")
        for value in (links.values() if isinstance(links, dict) else ()):
            if isinstance(value, str) and not re.match(r"^[a-z]+://", value):
                cands.append((fmriprep_dir / value).absolute())
        sources = desc.get("SourceDatasets")
        for src in (sources if isinstance(sources, list) else ()):
            url = src.get("URL") if isinstance(src, dict) else None
            if isinstance(url, str) and url.startswith("file://"):
                cands.append(Path(url[7:]))
    for parent in fmriprep_dir.parents:
        if parent.name == "derivatives":
            cands.append(parent.parent)
            break
    cands.append(fmriprep_dir / "sourcedata" / "raw")
    for cand in cands:
        if cand.is_dir() and cand != fmriprep_dir and any(cand.glob("sub-*")):
            return cand
    return None


def _tr_value(value: Any, where: str, path: Path) -> float:
    """Check one RepetitionTime value; raise a one-line error for what cannot be a TR."""
    lo, hi = TR_RANGE
    remedy = (f"Set RepetitionTime to the repetition time in seconds (bidsfm accepts {lo:g} s "
              f"to {hi:g} s)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputDataError(f"RepetitionTime in the {where} is {json.dumps(value)}, not a "
                             "number of seconds", path=path, remedy=remedy)
    tr = float(value)
    if not math.isfinite(tr) or tr <= 0:
        raise InputDataError(f"RepetitionTime in the {where} is {value!r}, not a positive number "
                             "of seconds", path=path, remedy=remedy)
    if tr > hi:
        hint = (f" (it looks like milliseconds: {tr / 1000:g} s?)" if 100 <= tr <= 30000 else "")
        raise InputDataError(f"RepetitionTime in the {where} is {value!r} s, longer than any "
                             f"fMRI repetition time{hint}", path=path, remedy=remedy)
    if tr < lo:
        raise InputDataError(f"RepetitionTime in the {where} is {value!r} s, shorter than any "
                             "fMRI repetition time", path=path, remedy=remedy)
    return tr


def _read_sidecar(path: Path) -> dict[str, Any]:
    problem = content_problem(path, "sidecar JSON")
    if problem is not None:
        raise problem
    try:
        meta = json.loads(path.read_text(), parse_constant=lambda c: {
            "Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}[c])
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read sidecar JSON ({exc})", path=path,
                             remedy="Fix or regenerate the JSON file") from None
    if not isinstance(meta, dict):
        raise InputDataError(f"sidecar JSON holds a {type(meta).__name__}, not an object",
                             path=path, remedy="Fix or regenerate the JSON file") from None
    return meta


def _header_tr(bold: Path) -> float | None:
    """TR from the NIfTI header (pixdim[4] in its time unit), None when absent or unknown."""
    import nibabel as nb

    try:
        hdr = nb.load(str(bold)).header
        zooms = hdr.get_zooms()
        if len(zooms) < 4:
            return None
        value = float(zooms[3])
        unit = hdr.get_xyzt_units()[1]
    except Exception:  # noqa: BLE001 - an unreadable image is reported when it is read
        return None
    scale = {"sec": 1.0, "msec": 1e-3, "usec": 1e-6}.get(unit)
    if scale is None or not value > 0 or not math.isfinite(value):
        return None
    return value * scale


def bold_sidecar(bold: Path) -> Path:
    """``..._bold.json`` next to ``..._bold.nii[.gz]``."""
    name = bold.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return bold.with_name(name + ".json")


def resolve_repetition_time(bold: Path, entities: dict[str, str] | None = None,
                            raw_dir: Path | None = None) -> tuple[float, str]:
    """The repetition time of a run (seconds) and where it was read.

    Sources, in order of preference: the derivative BOLD sidecar (fMRIPrep's), the raw
    dataset's BOLD sidecars (BIDS inheritance, when the raw dataset is found), the NIfTI header
    (pixdim[4], when its time unit is set). The first one holding a value is used; every other
    one that holds a value must agree with it (within 1%).

    Raises
    ------
    InputDataError
        A value that cannot be a TR of fMRI (not a number, not finite, outside
        :data:`TR_RANGE`: 2000 meaning milliseconds, ``true``, ``Infinity``, 1e-300), sources
        that disagree, an unreadable sidecar, or no value anywhere; each one line naming the
        file.
    """
    found: list[tuple[str, Path, float]] = []
    sidecar = bold_sidecar(bold)
    if sidecar.exists() or sidecar.is_symlink():
        meta = _read_sidecar(sidecar)
        if "RepetitionTime" in meta:
            found.append(("derivative sidecar", sidecar,
                          _tr_value(meta["RepetitionTime"], "BOLD sidecar", sidecar)))
    if raw_dir is not None and entities:
        merged: dict[str, Any] = {}
        origin = None
        for path in raw_sidecars(Path(raw_dir), entities):
            meta = _read_sidecar(path)
            if "RepetitionTime" in meta:
                merged["RepetitionTime"] = meta["RepetitionTime"]
                origin = path
        if origin is not None:
            found.append(("raw sidecar", origin,
                          _tr_value(merged["RepetitionTime"], "raw BOLD sidecar", origin)))
    header = _header_tr(bold)
    if header is not None:
        lo, hi = TR_RANGE
        if lo <= header <= hi:
            found.append(("NIfTI header", bold, header))
        elif not found:
            _tr_value(header, "NIfTI header (pixdim[4])", bold)
    if not found:
        raise InputDataError("RepetitionTime is missing or not a positive number: not in the "
                             "BOLD sidecar, the raw dataset's sidecars or the NIfTI header",
                             path=sidecar, remedy="Add RepetitionTime (seconds) to the BOLD "
                             "sidecar")
    kind, path, tr = found[0]
    for other_kind, other_path, other in found[1:]:
        if abs(other - tr) > 0.01 * min(tr, other):
            raise InputDataError(
                f"RepetitionTime disagrees between sources: {tr:g} s in the {kind} and "
                f"{other:g} s in the {other_kind} ({other_path})", path=path,
                remedy="Correct the wrong one (RepetitionTime in seconds; the NIfTI header's "
                       "pixdim[4]) so that they agree")
    agree = [k for k, _, _ in found[1:]]
    source = f"{kind} ({path.name})" + (f"; agrees with {', '.join(agree)}" if agree else "")
    return tr, source


def read_repetition_time(bold: Path) -> float:
    """RepetitionTime (seconds) of a BOLD file from its sidecar or NIfTI header.

    Kept for callers outside discovery; :func:`resolve_repetition_time` also reads the raw
    dataset and says where the value came from.
    """
    return resolve_repetition_time(bold)[0]


# --------------------------------------------------------------------------- runs

#: ``..._desc-preproc_bold.nii[.gz]`` with every entity a plain BIDS label
_PREPROC_RE = re.compile(r"^(?:[a-zA-Z]+-[a-zA-Z0-9]+_)+desc-preproc_bold\.nii(?:\.gz)?$")
#: confounds file names of fMRIPrep 20.2 and later, then of 1.2 to 20.1
CONFOUNDS_SUFFIXES = ("timeseries", "regressors")


def _exact_preproc(path: str | Path) -> bool:
    """True when the file is named exactly ``..._desc-preproc_bold.nii[.gz]``.

    pybids reads ``desc-preproc-smooth90`` as ``desc-preproc``, so its query alone would take a
    user's own file for fMRIPrep's.
    """
    name = Path(path).name
    if not _PREPROC_RE.fullmatch(name):
        return False
    parsed = _bids_stem_entities(name)
    return parsed is not None and parsed[0].get("desc") == "preproc"


def collect_runs(layout, fmriprep_dir: Path, participant: str, *, space: str = SUPPORTED_SPACES[0],
                 sessions: list[str] | None = None, tasks: list[str] | None = None,
                 bids_filters: dict[str, Any] | None = None, raw_dir: Path | None = None
                 ) -> tuple[list[BoldRun], list[RunProblem]]:
    """Collect every preprocessed BOLD run of one participant.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Index from :func:`build_layout`.
    fmriprep_dir : Path
        Root of the derivatives (for relative paths).
    participant : str
        Label without ``sub-``.
    space : str
        ``TEMPLATE`` or ``TEMPLATE:res-N`` (non-template spaces are refused, see
        :func:`check_space`).
    sessions, tasks : list of str, optional
        Restrict to these labels.
    bids_filters : dict, optional
        fMRIPrep-style filter file content; its ``"bold"`` entry is added to the query.
    raw_dir : Path, optional
        The raw BIDS dataset (:func:`locate_raw_dataset`), read for RepetitionTime when the
        derivative sidecar has none.

    Returns
    -------
    runs : list of BoldRun
        Runs with every required file.
    problems : list of RunProblem
        Runs that cannot be processed (missing or not fetched mask, confounds or BOLD, no valid
        RepetitionTime, several candidate files), each with a one-line message naming the file.
    """
    template, res = parse_space(space)
    query: dict[str, Any] = {"subject": participant, "datatype": "func", "desc": "preproc",
                             "suffix": "bold", "space": template,
                             "extension": [".nii.gz", ".nii"]}
    if sessions:
        query["session"] = sessions
    if tasks:
        query["task"] = tasks
    if res:
        query["res"] = res
    for key, value in ((bids_filters or {}).get("bold") or {}).items():
        query[key] = value
    bold_files = []
    for bf in layout.get(return_type="object", **query):
        if _exact_preproc(bf.path):
            bold_files.append(bf)
        else:
            LOGGER.info("ignoring %s: not named exactly ..._desc-preproc_bold.nii[.gz] (not an "
                        "fMRIPrep output)", Path(bf.path).name)

    # one file per run: several resolutions of a run (none requested) -> the first, with a
    # warning; two candidate files for the same run and resolution -> an error naming them
    by_run: dict[tuple, list[Any]] = {}
    for bf in sorted(bold_files, key=lambda f: f.path):
        ents = bf.get_entities()
        key = tuple(ents.get(k) for k in RUN_ENTITIES)
        by_run.setdefault(key, []).append(bf)

    runs: list[BoldRun] = []
    problems: list[RunProblem] = []
    chosen = []
    for files in by_run.values():
        by_res: dict[Any, list[Any]] = {}
        for bf in files:
            by_res.setdefault(bf.get_entities().get("res"), []).append(bf)
        ambiguous = [fs for fs in by_res.values() if len(fs) > 1]
        if ambiguous:
            names = ", ".join(Path(f.path).name for f in ambiguous[0])
            problems.append(RunProblem(Path(ambiguous[0][0].path).name, (
                f"{real_path(layout, Path(ambiguous[0][0].path).parent)}: several preprocessed "
                f"BOLD files for one run in space {template}: {names}. Remove or move the extra "
                "ones, or select one with --bids-filter-file")))
            continue
        first = files[0]
        if len(files) > 1:
            LOGGER.warning("several resolutions of %s in space %s; using %s (pick one with "
                           "--space %s:res-N)", Path(files[1].path).name, template,
                           Path(first.path).name, template)
        chosen.append(first)

    for bf in chosen:
        ents = bf.get_entities()
        bold = real_path(layout, bf.path)
        run_ents = {k: str(ents[k]) for k in RUN_ENTITIES if ents.get(k) is not None}
        label = bold.name
        try:
            problem = content_problem(bold, "BOLD image")
            if problem is not None:
                raise problem
            mask = _find_one(layout, run_ents, bold, space=template, res=ents.get("res"),
                             desc="brain", suffix="mask", extension=[".nii.gz", ".nii"],
                             what="brain mask", remedy="Rerun fMRIPrep or restore the "
                             "desc-brain_mask file of this run")
            conf = _find_one(layout, run_ents, bold, space=None, res=None, desc="confounds",
                             suffix=list(CONFOUNDS_SUFFIXES), extension=".tsv",
                             what="confounds file (desc-confounds_timeseries.tsv, or "
                                  "desc-confounds_regressors.tsv before fMRIPrep 20.2)",
                             remedy="Restore fMRIPrep's confounds TSV for this run")
            for path, what in ((mask, "brain mask"), (conf, "confounds file")):
                problem = content_problem(path, what)
                if problem is not None:
                    raise problem
            tr, tr_source = resolve_repetition_time(bold, run_ents, raw_dir)
        except InputDataError as err:
            problems.append(RunProblem(label, err.one_line()))
            continue
        conf_json = conf.with_suffix(".json")
        if conf_json.exists() and content_problem(conf_json, "confounds JSON") is not None:
            LOGGER.warning("%s", content_problem(conf_json, "confounds JSON").one_line())
        runs.append(BoldRun(
            entities=run_ents, space=template, bold=str(bold), mask=str(mask),
            confounds=str(conf), confounds_json=str(conf_json) if conf_json.is_file() else None,
            repetition_time=tr, res=None if ents.get("res") is None else str(ents["res"]),
            relpaths={k: os.path.relpath(p, fmriprep_dir)
                      for k, p in (("bold", bold), ("mask", mask), ("confounds", conf))},
            repetition_time_source=tr_source,
        ))
    return runs, problems


def available_spaces(layout, participant: str) -> list[str]:
    """Spaces in which the participant has ``desc-preproc`` BOLD runs (for error messages)."""
    try:
        files = layout.get(return_type="object", subject=participant, datatype="func",
                           desc="preproc", suffix="bold", extension=[".nii.gz", ".nii"])
    except Exception:  # noqa: BLE001 - only used to word a message
        return []
    return sorted({str(f.get_entities().get("space")) for f in files
                   if f.get_entities().get("space") and _exact_preproc(f.path)})


def _find_one(layout, run_ents: dict[str, str], bold: Path, *, space: str | None,
              res: Any, desc: str, suffix: Any, extension: Any, what: str, remedy: str) -> Path:
    from bids.layout import Query

    query: dict[str, Any] = {k: run_ents.get(k, Query.NONE) for k in RUN_ENTITIES}
    query.update(desc=desc, suffix=suffix, extension=extension, datatype="func",
                 space=space if space else Query.NONE)
    if space:
        query["res"] = res if res is not None else Query.NONE
    suffixes = [suffix] if isinstance(suffix, str) else list(suffix)
    found = [f for f in layout.get(return_type="file", **query)
             if f"_desc-{desc}_" in Path(f).name]  # not desc-brain-foo (pybids reads desc-brain)
    if not found:
        expected = bold.name.split("_space-")[0]
        tail = "|".join(suffixes)
        raise InputDataError(f"no {what} found for this run (looked for {expected}_*"
                             f"{'space-' + space + '_' if space else ''}desc-{desc}_{tail}*)",
                             path=bold, remedy=remedy)
    # prefer the first suffix (the current fMRIPrep name) when both exist
    found.sort(key=lambda f: (next((i for i, s in enumerate(suffixes)
                                    if Path(f).name.split(".")[0].endswith("_" + s)),
                                   len(suffixes)), f))
    return real_path(layout, found[0])
