"""Find the preprocessed BOLD runs of the requested participants in an fMRIPrep dataset.

The index is built with pybids on a view of the dataset holding only the requested
participants' folders (symlinks), so that a job for one subject of a 10,000-subject tree only
walks that subject's folder (pybids would otherwise check every root entry against its ignore
patterns). Metadata (RepetitionTime) is read lazily from the BOLD sidecar, not indexed.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
_LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")


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
        Seconds, from the BOLD sidecar.
    res : str or None
        The ``res-`` label of the BOLD file, if any.
    relpaths : dict
        Paths relative to the fMRIPrep dataset root (for BIDS URIs in sidecars).
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
            if not _LABEL_RE.match(label):
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
            if not _LABEL_RE.match(label):
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
    if not _LABEL_RE.match(template):
        raise ConfigError(f"invalid --space {spec!r}")
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
        used so that different jobs never share (or corrupt) one database.
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
    indexer = BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore)
    kwargs: dict[str, Any] = {}
    scratch = None  # a temporary folder for the view, removed with the layout
    if database_dir is not None:
        key = hashlib.sha1(
            (str(fmriprep_dir) + "|" + ",".join(participants)).encode()
        ).hexdigest()[:12]
        db = Path(database_dir) / f"layout-{key}"
        db.mkdir(parents=True, exist_ok=True)
        kwargs["database_path"] = str(db / "index")
        where = db
    else:
        scratch = tempfile.mkdtemp(prefix="bidsfm-layout-")
        where = Path(scratch)
    root = (_participant_view(fmriprep_dir, participants, where)
            if participants and view else None)
    layout = BIDSLayout(str(root or fmriprep_dir), validate=False,
                        config=["bids", "derivatives"], indexer=indexer, **kwargs)
    layout._bidsfm_real_root = str(fmriprep_dir)  # for real_path
    if scratch is not None:
        weakref.finalize(layout, shutil.rmtree, scratch, True)
    return layout


def real_path(layout, path: str | Path) -> Path:
    """Map a path returned by a :func:`build_layout` layout back into the real dataset."""
    real_root = getattr(layout, "_bidsfm_real_root", None)
    if real_root is None:
        return Path(path)
    rel = os.path.relpath(str(path), str(layout.root))
    return Path(real_root) / rel


def read_repetition_time(bold: Path) -> float:
    """Read RepetitionTime (seconds) from the BOLD sidecar JSON.

    Raises
    ------
    InputDataError
        If the sidecar is missing or unreadable, or RepetitionTime is absent or not positive.
    """
    name = bold.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    sidecar = bold.with_name(name + ".json")
    if not sidecar.is_file():
        raise InputDataError("BOLD sidecar JSON is missing, so RepetitionTime is unknown",
                             path=sidecar, remedy="Copy fMRIPrep's sidecar next to the BOLD file "
                             "or add one with RepetitionTime in seconds")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"cannot read sidecar JSON ({exc})", path=sidecar,
                             remedy="Fix or regenerate the JSON file") from None
    tr = meta.get("RepetitionTime")
    try:
        tr = float(tr)
    except (TypeError, ValueError):
        tr = None
    if tr is None or not tr > 0:
        raise InputDataError("RepetitionTime is missing or not a positive number", path=sidecar,
                             remedy="Add RepetitionTime (seconds) to the BOLD sidecar")
    return tr


def collect_runs(layout, fmriprep_dir: Path, participant: str, *, space: str = SUPPORTED_SPACES[0],
                 sessions: list[str] | None = None, tasks: list[str] | None = None,
                 bids_filters: dict[str, Any] | None = None
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
        ``TEMPLATE`` or ``TEMPLATE:res-N``.
    sessions, tasks : list of str, optional
        Restrict to these labels.
    bids_filters : dict, optional
        fMRIPrep-style filter file content; its ``"bold"`` entry is added to the query.

    Returns
    -------
    runs : list of BoldRun
        Runs with every required file.
    problems : list of RunProblem
        Runs that cannot be processed (missing mask, confounds or RepetitionTime), each with a
        one-line message naming the file.
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
    bold_files = layout.get(return_type="object", **query)

    # one file per run: if several resolutions exist and none was requested, keep the first
    by_run: dict[tuple, Any] = {}
    for bf in sorted(bold_files, key=lambda f: f.path):
        ents = bf.get_entities()
        key = tuple(ents.get(k) for k in RUN_ENTITIES)
        if key in by_run:
            LOGGER.warning("several resolutions of %s in space %s; using %s (pick one with "
                           "--space %s:res-N)", Path(bf.path).name, template,
                           Path(by_run[key].path).name, template)
            continue
        by_run[key] = bf

    runs: list[BoldRun] = []
    problems: list[RunProblem] = []
    for bf in by_run.values():
        ents = bf.get_entities()
        bold = real_path(layout, bf.path)
        run_ents = {k: str(ents[k]) for k in RUN_ENTITIES if ents.get(k) is not None}
        label = bold.name
        try:
            mask = _find_one(layout, run_ents, bold, space=template, res=ents.get("res"),
                             desc="brain", suffix="mask", extension=[".nii.gz", ".nii"],
                             what="brain mask", remedy="Rerun fMRIPrep or restore the "
                             "desc-brain_mask file of this run")
            conf = _find_one(layout, run_ents, bold, space=None, res=None, desc="confounds",
                             suffix="timeseries", extension=".tsv",
                             what="confounds file (desc-confounds_timeseries.tsv)",
                             remedy="Restore fMRIPrep's confounds TSV for this run")
            tr = read_repetition_time(bold)
        except InputDataError as err:
            problems.append(RunProblem(label, err.one_line()))
            continue
        conf_json = conf.with_suffix(".json")
        runs.append(BoldRun(
            entities=run_ents, space=template, bold=str(bold), mask=str(mask),
            confounds=str(conf), confounds_json=str(conf_json) if conf_json.is_file() else None,
            repetition_time=tr, res=None if ents.get("res") is None else str(ents["res"]),
            relpaths={k: os.path.relpath(p, fmriprep_dir)
                      for k, p in (("bold", bold), ("mask", mask), ("confounds", conf))},
        ))
    return runs, problems


def _find_one(layout, run_ents: dict[str, str], bold: Path, *, space: str | None,
              res: Any, desc: str, suffix: str, extension: Any, what: str, remedy: str) -> Path:
    from bids.layout import Query

    query: dict[str, Any] = {k: run_ents.get(k, Query.NONE) for k in RUN_ENTITIES}
    query.update(desc=desc, suffix=suffix, extension=extension, datatype="func",
                 space=space if space else Query.NONE)
    if space:
        query["res"] = res if res is not None else Query.NONE
    found = layout.get(return_type="file", **query)
    if not found:
        expected = bold.name.split("_space-")[0]
        raise InputDataError(f"no {what} found for this run (looked for {expected}_*"
                             f"{'space-' + space + '_' if space else ''}desc-{desc}_{suffix}*)",
                             path=bold, remedy=remedy)
    return real_path(layout, sorted(found)[0])
