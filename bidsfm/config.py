"""The options of one bidsfm call, typed and frozen, in groups (as fMRIPrep's and XCP-D's config).

The command line and a ``--config-file`` give the same options (a config file's keys are option
names, flat or in the sections below); :func:`build_config` turns them into one :class:`Config`
of five groups, with every file and folder path made absolute:

- :class:`InputsConfig`: which data (labels, derivatives, filters, space);
- :class:`ProcessingConfig`: how each run is processed (atlases, denoising, censoring,
  filtering); its :meth:`~ProcessingConfig.options` are the pipeline's
  :class:`~bidsfm.pipeline.ProcessingOptions`;
- :class:`ModelConfig`: the foundation model and how it runs;
- :class:`ExecutionConfig`: where and how the job runs (work folder, processes, memory,
  plugin, figures, reports only, verbosity);
- :class:`GroupConfig`: the group level's analyses.

Each level checks the values it uses once, before reading or writing anything
(:mod:`bidsfm.participant`, :mod:`bidsfm.group.run`), and writes the config it ran with to
``OUTPUT_DIR/logs/config-<timestamp>-<uuid8>.json`` (:func:`write_config`); that file can be
given back with ``--config-file``. This module imports only the standard library at import
time, so the command line stays fast.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from . import __version__
from .utils import BIDS_LABEL

#: integrated-gradients steps of the attention maps (participant and group level)
ATTENTION_STEPS = 32
#: config-file sections (their keys are option names); ``run`` describes a written config and
#: is not read back
SECTIONS = ("inputs", "processing", "model", "execution", "group")


@dataclass(frozen=True)
class InputsConfig:
    """Which data: participants, sessions, tasks, the fMRIPrep derivatives, filters, space."""

    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    task_id: tuple[str, ...] = ()
    derivatives: tuple[str, ...] = ()
    bids_filter_file: Path | None = None
    bids_database_dir: Path | None = None
    space: str = "MNI152NLin2009cAsym"

    @property
    def derivatives_map(self) -> dict[str, str]:
        """``-d NAME=PATH`` values as ``{NAME: PATH}`` (a bare PATH is ``fmriprep``)."""
        out = {}
        for val in self.derivatives:
            name, sep, path = val.partition("=")
            if not sep:
                name, path = "fmriprep", val
            out[name.strip()] = path.strip()
        return out


@dataclass(frozen=True)
class ProcessingConfig:
    """How every run is processed (the options that change a run's derivatives)."""

    atlas: tuple[str, ...] = ("CC200",)
    strategy: str = "simple"
    dummy_scans: str = "auto"
    fd_thresh: float | None = None
    dvars_thresh: float | None = None
    lower_bpf: float | None = None
    upper_bpf: float | None = None
    min_time: float = 60.0
    min_coverage: float = 0.5
    standardize: str = "zscore_sample"
    detrend: bool = True

    def options(self):
        """The pipeline's :class:`~bidsfm.pipeline.ProcessingOptions` (validated there).

        Raises
        ------
        ConfigError
            If a value is out of range (``--min-coverage``, ``--min-time``, ``--dummy-scans``,
            band-pass cut-offs).
        """
        from .pipeline import ProcessingOptions

        def number(value: Any) -> float | None:
            return None if value is None else float(value)

        return ProcessingOptions(
            atlases=list(self.atlas) or ["CC200"], strategy=self.strategy,
            fd_threshold=number(self.fd_thresh), dvars_threshold=number(self.dvars_thresh),
            dummy_scans=self.dummy_scans, lower_bpf=number(self.lower_bpf),
            upper_bpf=number(self.upper_bpf), min_time=float(self.min_time),
            min_coverage=float(self.min_coverage),
            standardize=None if self.standardize == "none" else self.standardize,
            detrend=bool(self.detrend))


@dataclass(frozen=True)
class ModelConfig:
    """The foundation model, its extra heads, and how it runs."""

    model: str = "auto"
    device: str = "auto"
    batch_size: int = 64
    precision: str = "float32"
    heads: tuple[str, ...] = ()
    #: not an option: recorded so that the outputs say what was used
    attention_steps: int = field(default=ATTENTION_STEPS, metadata={"option": False})


@dataclass(frozen=True)
class ExecutionConfig:
    """Where and how the job runs; nothing here changes the numbers written."""

    work_dir: Path | None = None
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_mb: int | None = None
    use_plugin: Path | None = None
    no_figures: bool = False
    reports_only: bool = False
    notrack: bool = False
    verbose: int = 0

    @property
    def figures(self) -> bool:
        """Draw figures (``--no-figures`` not given)."""
        return not self.no_figures


@dataclass(frozen=True)
class GroupConfig:
    """The group level's analyses."""

    target: tuple[str, ...] = ()
    group_column: str | None = None
    participants_tsv: Path | None = None
    reference: str | None = None
    n_folds: int | None = None
    n_bootstrap: int = 1000
    attention_participants: int = 100
    harmonize: str | None = None
    harmonize_method: str = "combat"
    no_qcfc: bool = False


_GROUPS: dict[str, type] = {"inputs": InputsConfig, "processing": ProcessingConfig,
                            "model": ModelConfig, "execution": ExecutionConfig,
                            "group": GroupConfig}


def option_names(section: str) -> list[str]:
    """The options (click parameter names) of one group."""
    return [f.name for f in fields(_GROUPS[section]) if f.metadata.get("option", True)]


@dataclass(frozen=True)
class Config:
    """Everything one bidsfm call runs with.

    Attributes
    ----------
    analysis_level : str
        ``participant`` or ``group``.
    bids_dir, output_dir : Path
        The positional arguments, absolute.
    inputs, processing, model, execution, group
        The option groups.
    run_uuid : str
        Identifies this call (the name of its config file in ``logs/``).
    started : str
        When the config was built (UTC, ``YYYYmmdd-HHMMSS``).
    """

    analysis_level: str
    bids_dir: Path
    output_dir: Path
    inputs: InputsConfig = field(default_factory=InputsConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    group: GroupConfig = field(default_factory=GroupConfig)
    run_uuid: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S",
                                                               time.gmtime()))

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some options of one group changed."""
        return dataclasses.replace(
            self, **{section: dataclasses.replace(getattr(self, section), **changes)})

    def to_dict(self) -> dict[str, Any]:
        """JSON values: a ``run`` section (version, level, folders, uuid) and the groups."""
        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        out: dict[str, Any] = {"run": {
            "bidsfm_version": __version__, "analysis_level": self.analysis_level,
            "bids_dir": str(self.bids_dir), "output_dir": str(self.output_dir),
            "run_uuid": self.run_uuid, "started": self.started}}
        for section in SECTIONS:
            group = getattr(self, section)
            out[section] = {f.name: plain(getattr(group, f.name)) for f in fields(group)}
        return out


def absolute_paths(opts: Mapping[str, Any]) -> dict[str, Any]:
    """The options with every relative file or folder path made absolute (from the current
    folder), as the command line gave them.

    Nipype runs each node in its own folder, so a relative ``--atlas NAME=PATH``,
    ``--denoise-strategy FILE`` or ``--model DIR`` that the checks found would not be found by
    the nodes. Registry names (``CC200``, a bundled model, a strategy preset) are kept. Paths
    are joined to the current folder, not resolved: symlinks are kept.

    Parameters
    ----------
    opts : Mapping
        Options by click parameter name (missing ones are left missing).

    Returns
    -------
    dict
        A copy with absolute paths.
    """
    from .atlases import absolute_atlas_spec

    def absolute(value: Any) -> Any:
        return value if value is None else Path(value).expanduser().absolute()

    out = dict(opts)
    if "atlas" in opts:
        out["atlas"] = tuple(absolute_atlas_spec(s) for s in opts.get("atlas") or ())
    strategy = opts.get("strategy")
    if strategy:
        from .denoising import PRESETS

        preset = str(strategy).removesuffix("+gsr") in PRESETS
        if not preset and (str(strategy).lower().endswith(".json") or Path(strategy).is_file()):
            out["strategy"] = str(absolute(strategy))
    model = opts.get("model")
    if model not in (None, "", "auto", "none") and Path(str(model)).expanduser().is_dir():
        out["model"] = str(absolute(model))
    if "heads" in opts:
        heads = []
        for spec in opts.get("heads") or ():
            name, sep, path = str(spec).partition("=")
            if sep and BIDS_LABEL.fullmatch(name.replace("_", "")):
                heads.append(f"{name}={absolute(path)}")
            else:
                heads.append(str(absolute(spec)))
        out["heads"] = tuple(heads)
    for key in ("bids_filter_file", "bids_database_dir", "participants_tsv", "use_plugin",
                "work_dir"):
        if opts.get(key) is not None:
            out[key] = absolute(opts[key])
    return out


def _typed(cls: type, values: Mapping[str, Any]) -> Any:
    """An option group from ``values`` (only its own options; tuples for repeated options,
    Paths for paths)."""
    kwargs = {}
    for f in fields(cls):
        if f.name not in values or not f.metadata.get("option", True):
            continue
        value = values[f.name]
        if isinstance(value, list):
            value = tuple(value)
        if value is not None and "Path" in str(f.type):
            value = Path(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def build_config(bids_dir: str | Path, output_dir: str | Path, analysis_level: str,
                 options: Mapping[str, Any]) -> Config:
    """The :class:`Config` of a call from its options (the command line's, which include a
    ``--config-file``'s), paths made absolute.

    Parameters
    ----------
    bids_dir, output_dir : str or Path
        The positional arguments.
    analysis_level : str
        ``participant`` or ``group``.
    options : Mapping
        Options by click parameter name; options a group does not have are an error.

    Raises
    ------
    ConfigError
        For an option no group has.
    """
    from .errors import ConfigError

    known = {name for section in SECTIONS for name in option_names(section)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(unknown)}")
    opts = absolute_paths(options)
    groups = {section: _typed(cls, opts) for section, cls in _GROUPS.items()}
    return Config(analysis_level=analysis_level, bids_dir=Path(bids_dir).absolute(),
                  output_dir=Path(output_dir).absolute(), **groups)


def flatten_config_file(data: Mapping[str, Any]) -> dict[str, Any]:
    """A config file's options as one flat mapping: keys of the :data:`SECTIONS` tables are
    options like the top-level ones; the ``run`` table and the values a section records but
    that are not options (``attention_steps``), both written by :func:`write_config`, are
    skipped; a ``bidsfm`` table wrapping everything is allowed."""
    if isinstance(data.get("bidsfm"), Mapping):
        data = data["bidsfm"]
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key == "run" and isinstance(value, Mapping):
            continue
        if key in SECTIONS and isinstance(value, Mapping):
            recorded = {f.name for f in fields(_GROUPS[key])} - set(option_names(key))
            out.update({k: v for k, v in value.items() if k not in recorded})
        else:
            out[key] = value
    return out


def config_file_name(config: Config) -> str:
    """``config-<YYYYmmdd-HHMMSS>-<uuid8>.json``."""
    return f"config-{config.started}-{config.run_uuid[:8]}.json"


def write_config(config: Config, output_dir: str | Path | None = None) -> Path:
    """Write the config of this call to ``OUTPUT_DIR/logs/`` (atomically); return the path.

    One file per call (its start time and a random id in the name), so concurrent participant
    jobs never write the same file. It can be given back with ``--config-file``.
    """
    from .utils import write_json_atomic

    folder = Path(output_dir or config.output_dir) / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(folder / config_file_name(config), config.to_dict())
