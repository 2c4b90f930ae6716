"""The ``bidsfm`` command line (BIDS-App conventions, as fMRIPrep and XCP-D users know them).

The module imports only the standard library and click at import time, so ``bidsfm --help`` is
instant; numpy, nibabel, pybids, nipype (and later torch) are imported when a level runs.

Exit codes: 0 all runs processed (or skipped by ``--min-time``); 1 some runs or participants
failed (each failure is reported on one line and recorded in its QC table); 2 bad command line,
configuration or missing atlas (nothing processed); 3 an unexpected internal error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from . import __version__

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
LOGGER = logging.getLogger("bidsfm")
#: ``--harmonize-method`` default; equals bidsfm.group.harmonize.DEFAULT_METHOD (a test checks),
#: repeated here so that the command line imports no numpy
DEFAULT_HARMONIZE_METHOD = "combat"

#: options that take several space-separated values (``--participant-label 01 02``)
GREEDY_OPTIONS = ("--participant-label", "--participant_label", "--session-label",
                  "--session_label", "-t", "--task-id", "--task_id")
_GREEDY_VALUE = re.compile(r"(sub-|ses-|task-)?[A-Za-z0-9]+")
#: a BIDS label; always checked with fullmatch (``$`` would accept a trailing newline)
_BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")


def expand_greedy(argv: list[str]) -> list[str]:
    """Turn ``--participant-label 01 02`` into ``--participant-label 01 --participant-label 02``.

    Values are consumed while they look like BIDS labels (never ``participant``/``group``, never
    a path), so positional arguments may still follow the option as with argparse's nargs='+'.
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        out.append(arg)
        if arg in GREEDY_OPTIONS and i + 1 < len(argv):
            out.append(argv[i + 1])
            i += 2
            while (i < len(argv) and _GREEDY_VALUE.fullmatch(argv[i])
                   and argv[i] not in ("participant", "group")):
                out.extend([arg, argv[i]])
                i += 1
            continue
        i += 1
    return out


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager callback: read a TOML/JSON/YAML config file into click's default map."""
    if not value:
        return value
    from .errors import ConfigError
    from .utils import read_config_file

    path = Path(value)
    try:
        data = read_config_file(path)
    except ConfigError as exc:
        raise click.BadParameter(f"{path}: {exc.problem}") from None
    if isinstance(data, dict) and isinstance(data.get("bidsfm"), dict):
        data = data["bidsfm"]
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: config file must hold a mapping of option names")
    known: dict[str, str] = {}
    for param in ctx.command.params:
        known[str(param.name)] = str(param.name)
        for opt in getattr(param, "opts", []):
            known[opt.lstrip("-").replace("-", "_")] = str(param.name)
    defaults = {}
    for key, val in data.items():
        name = known.get(str(key).lstrip("-").replace("-", "_"))
        if name is None:
            raise click.BadParameter(f"{path}: unknown option {key!r} in config file")
        defaults[name] = val
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


def _parse_derivatives(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for val in values:
        name, sep, path = val.partition("=")
        if not sep:
            name, path = "fmriprep", val
        out[name.strip()] = path.strip()
    return out


def _float_or_none(value: Any) -> float | None:
    if value is None:
        return None
    return float(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("analysis_level", type=click.Choice(["participant", "group"]))
@click.option("--config-file", type=click.Path(dir_okay=False), callback=_load_config,
              is_eager=True, expose_value=False,
              help="TOML/JSON/YAML file whose keys are option names (e.g. atlas, nprocs).")
@click.option("--participant-label", "--participant_label", "participant_label", multiple=True,
              help="Participant label(s), with or without 'sub-'; several may follow the option. "
                   "Default: every participant.")
@click.option("--session-label", "--session_label", "session_label", multiple=True,
              help="Only these session label(s), with or without 'ses-'.")
@click.option("-t", "--task-id", "--task_id", "task_id", multiple=True,
              help="Only these task(s).")
@click.option("-d", "--derivatives", "derivatives", multiple=True, metavar="NAME=PATH",
              help="fMRIPrep derivatives when BIDS_DIR is the raw dataset, e.g. -d fmriprep=PATH.")
@click.option("--bids-filter-file", "--bids_filter_file", "bids_filter_file",
              type=click.Path(dir_okay=False, path_type=Path),
              help="JSON with pybids filters; its 'bold' entry narrows the BOLD query.")
@click.option("--bids-database-dir", "--bids_database_dir", "bids_database_dir",
              type=click.Path(file_okay=False, path_type=Path),
              help="Where to keep (and reuse) the pybids index. Default: under the work dir.")
@click.option("--space", default="MNI152NLin2009cAsym", show_default=True,
              help="Template space of the fMRIPrep BOLD runs, optionally TEMPLATE:res-N.")
@click.option("--atlas", "atlas", multiple=True, default=("CC200",), show_default=True,
              help="Atlas: CC200, SchaeferNxK (e.g. Schaefer400x17, from TemplateFlow) or a "
                   "label NIfTI path (NAME=PATH allowed). Repeat for several.")
@click.option("--min-coverage", type=float, default=0.5, show_default=True,
              help="ROIs with a smaller fraction of voxels inside the brain mask are n/a.")
@click.option("--denoise-strategy", "--nuisance-regressors", "strategy", default="simple",
              show_default=True,
              help="simple, simple+gsr, scrubbing, scrubbing+gsr, compcor, none, or a JSON "
                   "strategy file.")
@click.option("--dummy-scans", default="auto", show_default=True,
              help="Volumes to drop at the start: an integer, or 'auto' for fMRIPrep's "
                   "non_steady_state_outlier columns.")
@click.option("--fd-thresh", type=float, default=None,
              help="Censor volumes with framewise displacement above this (mm); 0 disables. "
                   "Default: the strategy's (0.5 for scrubbing, none otherwise).")
@click.option("--dvars-thresh", type=float, default=None,
              help="Censor volumes with standardised DVARS above this; 0 disables.")
@click.option("--lower-bpf", type=float, default=None, help="High-pass cut-off (Hz).")
@click.option("--upper-bpf", type=float, default=None, help="Low-pass cut-off (Hz).")
@click.option("--min-time", type=float, default=60.0, show_default=True,
              help="Skip runs with less retained data than this (seconds); 0 keeps all.")
@click.option("--standardize", type=click.Choice(["zscore_sample", "psc", "none"]),
              default="zscore_sample", show_default=True, help="Scaling of the ROI time series.")
@click.option("--detrend/--no-detrend", default=True, show_default=True,
              help="Remove a linear trend during denoising.")
@click.option("--model", "model", default="auto", show_default=True,
              help="Foundation model run on every processed run: a bundled model name, a model "
                   "folder, or 'none'. 'auto' = the bundled default model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="Where the model runs (auto = GPU when visible).")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True,
              help="FC matrices per forward pass of the model.")
@click.option("--precision", type=click.Choice(["float32", "bf16"]), default="float32",
              show_default=True,
              help="Numerical precision of the model: float32 gives the same numbers on CPU "
                   "and GPU; bf16 (bfloat16 autocast, faster on GPUs) moves embeddings by "
                   "1-5 % relative (docs/performance.md).")
@click.option("--heads", "heads", multiple=True, metavar="[NAME=]PATH",
              help="Participant level: also apply this head (a group/target-<COLUMN>/head "
                   "folder written by the group level) to every run; repeatable.")
@click.option("--target", "target", multiple=True, metavar="COLUMN[:TYPE]",
              help="Group level: fit and cross-validate a head for this participants.tsv column; "
                   "TYPE binary|multiclass|continuous (default: detected). Repeatable.")
@click.option("--group-column", default=None, metavar="COLUMN",
              help="Group level: participants.tsv column of sites/groups; cross-validation "
                   "never splits a group (leave-one-group-out).")
@click.option("--participants-tsv", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Group level: participants table (default: "
                                 "BIDS_DIR/participants.tsv).")
@click.option("--reference", default=None, metavar="COLUMN=VALUE",
              help="Group level: reference group for normative deviation scores, e.g. "
                   "diagnosis=TC.")
@click.option("--n-folds", type=click.IntRange(min=2), default=None,
              help="Group level: force k-fold (grouped with --group-column) instead of the "
                   "automatic scheme.")
@click.option("--n-bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Group level: bootstrap resamples for the metrics' 95% intervals.")
@click.option("--attention-participants", type=click.IntRange(min=0), default=100,
              show_default=True,
              help="Group level: at most this many participants for a new head's ROI "
                   "attention (0 = none).")
@click.option("--harmonize", "--harmonise", "harmonize", default=None, metavar="COLUMN",
              help="Group level: remove site effects from the features before the heads and "
                   "normative scores, by this participants.tsv column (e.g. site); label-free.")
@click.option("--harmonize-method", "--harmonise-method", "harmonize_method",
              type=click.Choice(["combat", "centre"]), default=DEFAULT_HARMONIZE_METHOD,
              show_default=True,
              help="Group level: ComBat (empirical Bayes, neuroHarmonize) or per-site centring.")
@click.option("--no-qcfc", is_flag=True, help="Group level: skip QC-FC.")
@click.option("--no-figures", is_flag=True,
              help="Participant level: draw no figure (no PNG; the HTML report keeps its tables "
                   "with a note in place of each figure). Draw them later with --reports-only.")
@click.option("--reports-only", is_flag=True,
              help="Only (re)build figures and reports from the outputs already in OUTPUT_DIR, "
                   "without reprocessing: sub-<label>.html and the attention PNGs "
                   "(participant level), group.html (group level), and logs/CITATION.md.")
@click.option("-w", "--work-dir", "work_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None,
              help="Work directory (Nipype crash files, pybids index). Default: ./work.")
@click.option("--nprocs", "--nthreads", "--n-cpus", "nprocs", type=int, default=1,
              show_default=True, help="Parallel processes (MultiProc when > 1).")
@click.option("--omp-nthreads", type=int, default=1, show_default=True,
              help="Threads per process for numerical libraries.")
@click.option("--mem-mb", "--mem_mb", "mem_mb", type=click.IntRange(min=1), default=None,
              help="Memory available to the job (MB), passed to the Nipype scheduler; a run "
                   "estimated to need more fails with the figure to rerun with.")
@click.option("--use-plugin", type=click.Path(dir_okay=False, exists=True),
              help="Nipype plugin file (YAML/JSON): plugin: SLURM, plugin_args: {...}.")
@click.option("--notrack", is_flag=True, help="Accepted for compatibility; bidsfm never tracks.")
@click.option("-v", "--verbose", "verbose", count=True, help="More messages (-v, -vv).")
@click.version_option(__version__, "--version", prog_name="bidsfm")
def cli(bids_dir: Path, output_dir: Path, analysis_level: str, **opts: Any) -> None:
    """Run brain-network foundation models on fMRIPrep derivatives.

    BIDS_DIR is the fMRIPrep derivatives dataset (or a raw BIDS dataset with -d fmriprep=PATH
    or derivatives/fmriprep inside it). OUTPUT_DIR receives the bidsfm derivatives.
    ANALYSIS_LEVEL is 'participant' or 'group'.
    """
    _setup_logging(opts["verbose"])
    from .errors import BidsfmError

    work_dir = opts["work_dir"] or (Path("work") if analysis_level == "participant" else None)
    try:
        with _matplotlib_cache(work_dir):
            if analysis_level == "group":
                code = run_group(bids_dir, output_dir, **opts)
            else:
                code = run_participant_level(bids_dir, output_dir, **opts)
    except BidsfmError as err:
        click.echo(f"bidsfm: error: {err.one_line()}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


@contextlib.contextmanager
def _matplotlib_cache(work_dir: Path | None) -> Iterator[None]:
    """Keep matplotlib's font cache in the work folder (``MPLCONFIGDIR``) while a level runs.

    So that bidsfm writes nothing outside OUTPUT_DIR and the work folder (matplotlib would
    write ``~/.cache/matplotlib``, and cluster jobs sharing a home folder would race on it).
    A user's (or the container's) ``MPLCONFIGDIR`` is kept; nothing is set without a work
    folder (the group level without ``-w``).
    """
    if work_dir is None or "MPLCONFIGDIR" in os.environ:
        yield
        return
    os.environ["MPLCONFIGDIR"] = str(Path(work_dir).absolute() / "matplotlib")
    try:
        yield
    finally:
        os.environ.pop("MPLCONFIGDIR", None)


def run_group(bids_dir: Path, output_dir: Path, **opts: Any) -> int:
    """Run the group level (see :func:`bidsfm.group.run.run_group_level`); return the exit code.

    Raises
    ------
    BidsfmError
        For problems that stop the whole level.
    """
    from .derivatives import check_output_dataset
    from .group.run import run_group_level

    if opts.get("heads"):
        LOGGER.warning("--heads is a participant-level option; ignored at the group level")
    if opts.get("no_figures"):
        LOGGER.warning("--no-figures is a participant-level option; the group level draws its "
                       "figures")
    output_dir = output_dir.absolute()
    inputs = [bids_dir.absolute(), *(Path(p).absolute() for p in
                                     _parse_derivatives(opts["derivatives"]).values())]
    refuse_inside_input({"output": output_dir}, inputs)  # as the participant level does
    if output_dir.is_dir() and (output_dir / "dataset_description.json").is_file():
        check_output_dataset(output_dir)  # never write into another tool's dataset
    if opts.get("reports_only"):
        return group_reports_only(output_dir)
    return run_group_level(bids_dir, output_dir,
                           derivatives_map=_parse_derivatives(opts["derivatives"]), **opts)


def resolve_heads(specs: tuple[str, ...], model: dict[str, str] | None) -> list[str]:
    """Check ``--heads`` values against the model; return ``NAME=PATH`` strings.

    A head whose name is already taken (a head of the model, or an earlier ``--heads``) is
    renamed ``<name>_2``, ``<name>_3``... unless ``NAME=`` was given.

    Raises
    ------
    ConfigError
        If there is no model, or a head cannot be read or was fitted on another model.
    """
    from .errors import ConfigError

    if not specs:
        return []
    if model is None:
        raise ConfigError("--heads needs a model (--model is none or unavailable)")
    from .group.heads_io import check_head_model, read_head_card

    card = json.loads((Path(model["path"]) / "card.json").read_text())
    taken = set(card.get("heads", {}))
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not _BIDS_LABEL.fullmatch(name.replace("_", "")):
            name, path = "", spec
        head_card = read_head_card(path)
        check_head_model(head_card, card, path)
        harm = head_card.get("harmonization")
        if isinstance(harm, dict) and harm.get("method"):
            LOGGER.warning("head %s was fitted on site-harmonised embeddings (%s by %s); here "
                           "it sees this run's raw embedding, so its outputs keep this site's "
                           "offset (see docs/group.md)", head_card["name"], harm.get("method"),
                           harm.get("column"))
        final = name or str(head_card["name"])
        if final in taken:
            if name:
                raise ConfigError(f"--heads {spec}: head name {final!r} is already used")
            k = 2
            while f"{final}_{k}" in taken:
                k += 1
            LOGGER.info("head %s from %s is written as %s_%d (the name is taken)", final, path,
                        final, k)
            final = f"{final}_{k}"
        taken.add(final)
        out.append(f"{final}={Path(path).absolute()}")
    return out


def _setup_logging(verbose: int) -> None:
    """Log to stderr: rich on a terminal, plain one-line records otherwise (cluster logs)."""
    level = logging.DEBUG if verbose >= 1 else logging.INFO
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        from .progress import console

        # the progress bars share this console, so log lines print above them
        handler = RichHandler(show_path=False, markup=False, console=console())
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    LOGGER.setLevel(level)


def refuse_inside_input(folders: dict[str, Path | None], inputs: list[Path]) -> None:
    """Refuse a folder bidsfm writes to that is (or is inside) an input dataset.

    Parameters
    ----------
    folders : dict
        ``{"output": OUTPUT_DIR, "work": ..., "BIDS database": ...}``; None values are skipped.
    inputs : list of Path
        The input datasets (BIDS_DIR, the fMRIPrep derivatives).

    Raises
    ------
    ConfigError
        Naming the folder and the input dataset it is in.
    """
    from .errors import ConfigError

    for name, folder in folders.items():
        if folder is None:
            continue
        for protected in dict.fromkeys(inputs):
            if _inside(Path(folder), protected):
                raise ConfigError(f"the {name} folder {folder} is inside the input dataset",
                                  path=protected, remedy=f"Put the {name} folder outside the "
                                  "input (inputs are often mounted read-only)")


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def run_participant_level(bids_dir: Path, output_dir: Path, **opts: Any) -> int:
    """Run the participant level; return the process exit code.

    Raises
    ------
    BidsfmError
        For problems that stop the whole job (bad options, no input dataset, no atlas).
    """
    if opts.get("reports_only"):
        return participant_reports_only(output_dir.absolute(), opts)
    from .discovery import (
        RunProblem,
        available_spaces,
        build_layout,
        check_bids_filters,
        collect_runs,
        list_participants,
        locate_fmriprep,
        locate_raw_dataset,
        normalize_labels,
        normalize_participant_labels,
        parse_space,
    )
    from .errors import AtlasNotFoundError, ConfigError

    bids_dir = bids_dir.absolute()
    output_dir = output_dir.absolute()
    opts = absolute_paths(opts)  # Nipype nodes run in their own folders
    fmriprep_dir = locate_fmriprep(bids_dir, _parse_derivatives(opts["derivatives"]))
    refuse_inside_input({"output": output_dir, "work": opts["work_dir"],
                         "BIDS database": opts["bids_database_dir"]}, [bids_dir, fmriprep_dir])
    work_dir = (opts["work_dir"] or Path.cwd() / "work").absolute()
    if _inside(work_dir, bids_dir) or _inside(work_dir, fmriprep_dir):
        raise ConfigError(f"the default work folder {work_dir} is inside the input dataset",
                          remedy="Pass -w/--work-dir outside the input dataset")

    template, _res = parse_space(opts["space"])
    # every label is validated before anything is read or written (they become paths)
    requested = normalize_participant_labels(opts["participant_label"])
    sessions = normalize_labels(opts["session_label"], "ses-", "session")
    tasks = normalize_labels(opts["task_id"], "task-", "task")
    filters = _read_filters(opts["bids_filter_file"])
    from .derivatives import check_output_dataset

    check_output_dataset(output_dir)  # another tool's dataset: refuse before any work
    options = _processing_options(opts)
    from .atlases import normalise_atlas_spec

    # one spelling per atlas: ``--atlas cc200 --atlas CC200`` is one atlas, processed once
    options.atlases = list(dict.fromkeys(normalise_atlas_spec(s) for s in options.atlases))
    model = _resolve_model(opts["model"])
    if model is not None:  # the model decides the atlas it needs
        model["spec"] = normalise_atlas_spec(_model_atlas_spec(model, options.atlases))
        if model["spec"] not in options.atlases:
            options.atlases.append(model["spec"])
    heads = resolve_heads(tuple(opts.get("heads") or ()), model)

    # atlases: resolve once up front; a missing atlas is a one-line error
    from .atlases import resolve_atlas

    atlas_problems = []
    usable = []
    names: dict[str, str] = {}
    for spec in options.atlases:
        try:
            name = resolve_atlas(spec, space=template).name
        except AtlasNotFoundError as err:
            atlas_problems.append(err.one_line())
            continue
        if name in names:  # two files under one name would overwrite each other's outputs
            raise ConfigError(f"--atlas {names[name]!r} and --atlas {spec!r} are both named "
                              f"{name!r}; their outputs would overwrite each other",
                              remedy="Give each atlas its own name: --atlas NAME=PATH")
        names[name] = spec
        usable.append(spec)
    for msg in atlas_problems:
        LOGGER.error("%s", msg)
    if not usable:
        raise AtlasNotFoundError("no requested atlas is available offline; nothing to do",
                                 remedy="See the messages above")
    options.atlases = usable
    if model is not None and model["spec"] not in usable:
        msg = (f"model {model['name']} needs the {model['atlas']} atlas, which is not "
               "available (see above): no model outputs")
        LOGGER.error("%s", msg)
        atlas_problems.append(msg)
        model = None

    available = list_participants(fmriprep_dir)
    problems: list[RunProblem] = []
    if requested:
        participants = [p for p in requested if p in available]
        for p in requested:
            if p not in available:
                problems.append(RunProblem(f"sub-{p}", (
                    f"{fmriprep_dir}: participant label 'sub-{p}' not found (no sub-{p} folder). "
                    "Check --participant-label against the sub-* folders of the input")))
    else:
        participants = available
    if not participants:
        for pr in problems:
            LOGGER.error("%s", pr.message)
        raise ConfigError("no participant to process", path=fmriprep_dir,
                          remedy="Check --participant-label and the input folder")

    db_dir = opts["bids_database_dir"] or (work_dir / "bids_db")
    layout = build_layout(fmriprep_dir, participants, Path(db_dir))
    if filters:
        check_bids_filters(filters, layout, opts["bids_filter_file"])
    raw_dir = locate_raw_dataset(bids_dir, fmriprep_dir)  # RepetitionTime fallback
    runs_by_participant = {}
    unmatched: list[str] = []  # participants with no run in the selection at all
    for p in participants:
        runs, run_problems = collect_runs(layout, fmriprep_dir, p, space=opts["space"],
                                          sessions=sessions, tasks=tasks, bids_filters=filters,
                                          raw_dir=raw_dir)
        problems.extend(run_problems)
        if not runs and not run_problems:
            unmatched.append(p)
            others = [s for s in available_spaces(layout, p) if s != template]
            hint = (f" (its runs are in space {', '.join(others)})" if others else "")
            problems.append(RunProblem(f"sub-{p}", (
                f"{fmriprep_dir / ('sub-' + p)}: no desc-preproc_bold run in space {template} "
                f"matches the selection{hint}. Check --space, --session-label, --task-id and "
                "the filter file")))
        runs_by_participant[p] = runs
    for pr in problems:
        LOGGER.error("%s", pr.message)
    if len(unmatched) == len(participants):
        # nothing to process anywhere: "no input found" (exit 2, docs/usage.md), not a partial
        # failure, and nothing is written to the output folder
        raise ConfigError(f"no desc-preproc_bold run in space {template} matches the selection "
                          "for any participant; nothing to do", path=fmriprep_dir,
                          remedy="See the messages above; check --space, --session-label, "
                                 "--task-id and the filter file")

    from .derivatives import ensure_dataset_description
    from .errors import output_error

    links = {"preprocessed": str(fmriprep_dir)}
    if bids_dir != fmriprep_dir:
        links["raw"] = str(bids_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        locks = lock_participants(output_dir, runs_by_participant, problems)
    except OSError as exc:
        raise output_error(exc, output_dir) from None
    try:
        try:
            _remove_shared_temps(output_dir)
            ensure_dataset_description(output_dir, fmriprep_dir, links)
        except OSError as exc:
            raise output_error(exc, output_dir) from None

        n_runs = sum(len(r) for r in runs_by_participant.values())
        LOGGER.info("bidsfm %s: %d run(s) of %d participant(s) from %s; atlases %s; strategy "
                    "%s", __version__, n_runs, len(participants), fmriprep_dir,
                    ",".join(options.atlases), options.strategy)
        results: list[dict] = []
        if n_runs:
            try:
                work_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise output_error(exc, work_dir, "work folder") from None
            from .progress import NipypeSteps

            with NipypeSteps(_progress_labels(runs_by_participant, model, opts),
                             LOGGER) as steps:
                results = _run_workflow(runs_by_participant, options, output_dir, work_dir,
                                        opts, model, heads, steps=steps)
                _subject_reports(output_dir, [p for p, r in runs_by_participant.items() if r],
                                 figures=not opts.get("no_figures"), steps=steps)
            _citation(output_dir, options, model)
    finally:
        for lock in locks:
            lock.release()
    _print_summary(results, problems, output_dir)
    failed = [r for r in results if r["status"] == "error"]
    if failed or problems or atlas_problems:
        return EXIT_PARTIAL
    return EXIT_OK


def lock_participants(output_dir: Path, runs_by_participant: dict[str, list],
                      problems: list) -> list:
    """Take each participant's lock in ``output_dir``; leave busy participants to their job.

    A participant whose lock (:func:`bidsfm.locks.participant_lock_path`) another job holds
    gets one error line, ``another bidsfm job is processing sub-X (lock FILE, pid N on HOST)``,
    a :class:`~bidsfm.discovery.RunProblem` in ``problems`` and no runs (its entry in
    ``runs_by_participant`` is emptied); the other participants go on. Under its lock, the
    temporary files a killed job left in a participant's folder (and of its report) are
    removed: no other job can be writing them.

    Returns
    -------
    list of ExclusiveLock
        The locks taken; release them when the participants' outputs are written.
    """
    from .discovery import RunProblem
    from .locks import ExclusiveLock, participant_lock_path
    from .utils import remove_stale_temps

    held = []
    for label, runs in runs_by_participant.items():
        if not runs:
            continue
        lock = ExclusiveLock(participant_lock_path(output_dir, label))
        if not lock.acquire(timeout=0):
            holder = lock.holder()
            msg = (f"another bidsfm job is processing sub-{label} (lock {lock.path}"
                   f"{', ' + holder if holder else ''}); sub-{label} is left to it. Rerun "
                   f"sub-{label} once that job has ended if it did not finish")
            LOGGER.error("%s", msg)
            problems.append(RunProblem(f"sub-{label}", msg))
            runs_by_participant[label] = []
            continue
        held.append(lock)
        n = (remove_stale_temps(output_dir / f"sub-{label}", recursive=True)
             + remove_stale_temps(output_dir, f"sub-{label}."))
        if n:
            LOGGER.info("sub-%s: removed %d temporary file(s) left by an interrupted job",
                        label, n)
    return held


def _remove_shared_temps(output_dir: Path) -> None:
    """Remove the temporary files a killed job left of the files all participant jobs share,
    each under the lock their writers take: ``dataset_description.json``, ``README.md`` and
    ``.bidsignore``, and the atlases of ``sourcedata/atlases`` (``logs/CITATION.md``'s are
    removed by its writer)."""
    from filelock import FileLock

    from .derivatives import ATLAS_DATASET
    from .utils import remove_stale_temps

    with FileLock(str(output_dir / ".dataset_description.json.lock"), timeout=120):
        for stem in ("dataset_description.", "README.", "."):
            remove_stale_temps(output_dir, stem)
    atlases = output_dir / ATLAS_DATASET
    if atlases.is_dir():
        with FileLock(str(atlases / ".atlases.lock"), timeout=120):
            remove_stale_temps(atlases, recursive=True)


def absolute_paths(opts: dict[str, Any]) -> dict[str, Any]:
    """The options with every relative file or folder path made absolute (from the current
    folder), as the command line gave them.

    Nipype runs each node in its own folder, so a relative ``--atlas NAME=PATH``,
    ``--denoise-strategy FILE`` or ``--model DIR`` that the command-line checks found would not
    be found by the nodes. Registry names (``CC200``, a bundled model, a strategy preset) are
    kept. Paths are joined to the current folder, not resolved: symlinks are kept.

    Parameters
    ----------
    opts : dict
        The command line's options (click's parameter names).

    Returns
    -------
    dict
        A copy with absolute paths.
    """
    from .atlases import absolute_atlas_spec

    def absolute(value: Any) -> Any:
        return value if value is None else Path(value).expanduser().absolute()

    out = dict(opts)
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
    heads = []
    for spec in opts.get("heads") or ():
        name, sep, path = str(spec).partition("=")
        if sep and _BIDS_LABEL.fullmatch(name.replace("_", "")):
            heads.append(f"{name}={absolute(path)}")
        else:
            heads.append(str(absolute(spec)))
    out["heads"] = tuple(heads)
    for key in ("bids_filter_file", "bids_database_dir", "participants_tsv", "use_plugin"):
        if opts.get(key) is not None:
            out[key] = absolute(opts[key])
    return out


def _resolve_model(spec: str) -> dict[str, str] | None:
    """Model folder and atlas for ``--model`` (None for 'none' or no bundled model).

    Raises
    ------
    ConfigError
        If the model is unknown, its card cannot be read, or the card's model or atlas name is
        not a BIDS label (both become parts of output file names).
    """
    from .errors import ConfigError
    from .models.registry import CARD, DEFAULT_MODEL, list_models, model_dir

    if spec in ("none", "", None):
        return None
    if spec == "auto":
        if DEFAULT_MODEL not in list_models():
            return None
        spec = DEFAULT_MODEL
    folder = model_dir(spec).absolute()
    card_path = folder / CARD
    try:
        card = json.loads(card_path.read_text())
        name, atlas = card["name"], card["atlas"]["name"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the model card ({type(exc).__name__}: {exc})",
                          path=card_path, remedy="Restore the model folder (card.json + "
                          "weights.safetensors), or reinstall bidsfm") from None
    for what, value in (("model name", name), ("atlas name", atlas)):
        if not isinstance(value, str) or not _BIDS_LABEL.fullmatch(value):
            raise ConfigError(f"the card's {what} {value!r} is not a BIDS label (letters and "
                              "digits only); it would become part of output file names",
                              path=card_path, remedy="Fix the card, or use another model")
    if card.get("warning"):  # e.g. a bundled model kept as a reference, not for predictions
        LOGGER.warning("model %s: %s", name, card["warning"])
    user_file = card["atlas"].get("user_file")
    if user_file:  # a relative atlas file is relative to the card's folder
        user_file = str(folder / Path(str(user_file)).expanduser())
    return {"path": str(folder), "atlas": atlas, "name": name, "atlas_file": user_file}


def _model_atlas_spec(model: dict[str, Any], requested: list[str]) -> str:
    """The atlas spec that provides the model's atlas.

    A requested ``NAME=PATH`` whose NAME is the card's atlas name wins; else the card's user
    atlas file (``NAME=PATH``, for imported models on a user atlas); else the registry name.
    """
    for spec in requested:
        name, sep, _path = spec.partition("=")
        if sep and name == model["atlas"]:
            return spec
    if model.get("atlas_file"):
        return f"{model['atlas']}={model['atlas_file']}"
    return model["atlas"]


def _read_filters(path: Path | None) -> dict[str, Any]:
    from .errors import ConfigError

    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read BIDS filter file ({exc})", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError("BIDS filter file must hold a JSON object", path=path)
    return data


def _processing_options(opts: dict[str, Any]):
    from .pipeline import ProcessingOptions

    standardize = None if opts["standardize"] == "none" else opts["standardize"]
    return ProcessingOptions(
        atlases=list(opts["atlas"]) or ["CC200"], strategy=opts["strategy"],
        fd_threshold=_float_or_none(opts["fd_thresh"]),
        dvars_threshold=_float_or_none(opts["dvars_thresh"]),
        dummy_scans=opts["dummy_scans"], lower_bpf=_float_or_none(opts["lower_bpf"]),
        upper_bpf=_float_or_none(opts["upper_bpf"]), min_time=float(opts["min_time"]),
        min_coverage=float(opts["min_coverage"]), standardize=standardize,
        detrend=bool(opts["detrend"]))


def participant_reports_only(output_dir: Path, opts: dict[str, Any]) -> int:
    """``--reports-only`` at the participant level (:mod:`bidsfm.reports.rebuild`): exit code.

    Raises
    ------
    BidsfmError
        If the output folder is not bidsfm's or holds no outputs for the participants.
    """
    from .derivatives import check_output_dataset
    from .discovery import normalize_participant_labels
    from .reports.rebuild import rebuild_participant_reports

    if not (output_dir / "dataset_description.json").is_file():
        from .errors import ConfigError

        raise ConfigError("--reports-only: the output folder holds no bidsfm outputs",
                          path=output_dir, remedy="Run the participant level first")
    check_output_dataset(output_dir)
    problems = rebuild_participant_reports(
        output_dir, normalize_participant_labels(opts["participant_label"]),
        figures=not opts.get("no_figures"))
    for line in problems:
        LOGGER.error("%s", line)
    return EXIT_PARTIAL if problems else EXIT_OK


def group_reports_only(output_dir: Path) -> int:
    """``--reports-only`` at the group level: ``group.html`` and CITATION.md; exit code."""
    from .reports.rebuild import rebuild_group_report

    problems = rebuild_group_report(output_dir)
    for line in problems:
        LOGGER.error("%s", line)
    return EXIT_PARTIAL if problems else EXIT_OK


def _progress_labels(runs_by_participant: dict[str, list], model: dict[str, str] | None,
                     opts: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """What the progress lines say for each step: ``{key: (item, step)}``.

    Keys are ``<participant workflow>.<node>`` for the Nipype nodes (see
    :func:`bidsfm.workflow.init_participant_wf`) and ``report:<label>`` for the reports.
    """
    from .workflow import _node_name

    figures = not opts.get("no_figures")
    labels: dict[str, tuple[str, str]] = {}
    for p, runs in runs_by_participant.items():
        if not runs:
            continue
        for i, run in enumerate(runs):
            labels[f"sub_{p}_wf.{_node_name(run, i)}"] = (
                run.prefix, "extraction, denoising, connectivity")
        if model is not None:
            labels[f"sub_{p}_wf.encode_model"] = (
                f"sub-{p}", f"model {model['name']} on {len(runs)} run(s): embeddings, "
                "predictions, attention" + (", figures" if figures else ""))
        labels[f"report:{p}"] = (f"sub-{p}", "HTML report" + ("" if figures else
                                                               " (no figures)"))
    return labels


def _subject_reports(output_dir: Path, participants: list[str], figures: bool = True,
                     steps: Any = None) -> None:
    """``sub-X.html`` for each participant; a report failure never fails the participant."""
    try:
        from .reports import write_subject_report
    except ImportError:
        return
    for p in participants:
        if steps is not None:
            steps.start(*steps.labels.get(f"report:{p}", (f"sub-{p}", "HTML report")))
        try:
            page = write_subject_report(output_dir, p, figures=figures)
            if steps is not None:
                steps.end(f"sub-{p}", f"{page.name} written")
        except Exception as exc:
            if steps is not None:
                steps.end(f"sub-{p}", "report failed", logging.WARNING)
            LOGGER.warning("sub-%s: the HTML report could not be written (%s: %s)", p,
                           type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")


def _citation(output_dir: Path, options, model: dict[str, str] | None) -> None:
    """``logs/CITATION.md`` from the options used; a failure is a warning, never fatal."""
    import dataclasses

    try:
        from .reports import write_citation

        write_citation(output_dir, {**dataclasses.asdict(options),
                                    "analysis_level": "participant",
                                    "model": model["path"] if model else "none"})
    except Exception as exc:
        LOGGER.warning("logs/CITATION.md could not be written (%s: %s)", type(exc).__name__, exc)


def _run_workflow(runs_by_participant, options, output_dir: Path, work_dir: Path,
                  opts: dict[str, Any], model: dict[str, str] | None,
                  heads: list[str] | None = None, steps: Any = None) -> list[dict]:
    from .denoising import get_strategy
    from .workflow import init_bidsfm_wf, plugin_settings

    # validate the strategy once (a bad strategy file is a usage error, not N run errors)
    get_strategy(options.strategy, fd_threshold=options.fd_threshold,
                 std_dvars_threshold=options.dvars_threshold)
    _quiet_nipype(opts["verbose"])
    wf = init_bidsfm_wf(runs_by_participant, options, output_dir, work_dir,
                        omp_nthreads=opts["omp_nthreads"],
                        model=None if model is None else model["path"], device=opts["device"],
                        batch_size=opts["batch_size"], mem_mb=opts["mem_mb"],
                        heads=heads or [], figures=not opts.get("no_figures"),
                        precision=opts.get("precision") or "float32")
    plugin = plugin_settings(opts["nprocs"], opts["mem_mb"], opts["use_plugin"])
    if steps is not None and not str(plugin["plugin"]).endswith("Graph"):
        # Nipype calls it from the scheduling process (Linear, MultiProc, SLURM, SGE, ...);
        # graph plugins submit everything at once and do not support it
        plugin["plugin_args"] = {**plugin["plugin_args"], "status_callback": steps.callback}
    try:
        graph = wf.run(**plugin)
    except RuntimeError as exc:  # some node crashed; the others ran
        LOGGER.error("some workflow nodes crashed; crash files are under %s (%s)",
                     work_dir / "crash", str(exc).splitlines()[0])
        graph = None
    results: list[dict] = []
    nodes = list(graph.nodes()) if graph is not None else []
    for node in nodes:
        try:
            outputs = node.result.outputs
        except Exception:
            continue
        if outputs is not None and getattr(outputs, "results", None):
            results.extend(outputs.results)
    run_results = [r for r in results if r.get("stage") != "model"]
    expected = sum(len(r) for r in runs_by_participant.values()) * len(options.atlases)
    if len(run_results) < expected:
        results.extend({"run": "?", "atlas": "?", "status": "error",
                        "reason": f"workflow node crashed; see {work_dir / 'crash'}"}
                       for _ in range(expected - len(run_results)))
    return results


def _quiet_nipype(verbose: int) -> None:
    """Route Nipype's messages through its own handler only, at WARNING unless -vv."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = "INFO" if verbose >= 2 else "WARNING"
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, level)
    nipype_logging.update_logging(nipype_config)
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False


def _print_summary(results: list[dict], problems: list, output_dir: Path) -> None:
    counts: dict[str, int] = {}
    for r in results:
        key = ("model " if r.get("stage") == "model" else "") + r["status"]
        counts[key] = counts.get(key, 0) + 1
    model_errors: dict[str, list[str]] = {}
    for r in results:
        where = "model" if r.get("stage") == "model" else r.get("atlas", "")
        if r["status"] == "skipped":
            LOGGER.warning("skipped %s (%s): %s", r["run"], where, r["reason"])
        elif r["status"] == "error" and r.get("stage") == "model":
            model_errors.setdefault(r["reason"], []).append(r["run"])
    for reason, runs in model_errors.items():  # one line per problem (e.g. a corrupt model)
        others = f" and {len(runs) - 1} other run(s)" if len(runs) > 1 else ""
        LOGGER.error("%s%s (model): %s", runs[0], others, reason)
    parts = [f"{v} {k}" for k, v in sorted(counts.items())]
    if problems:
        parts.append(f"{len(problems)} input problem(s)")
    LOGGER.info("done: %s. Outputs in %s", ", ".join(parts) or "nothing to do", output_dir)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    os.environ.setdefault("NIPYPE_NO_ET", "1")
    args = expand_greedy(list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name="bidsfm", standalone_mode=True)
    except SystemExit:
        raise
    except Exception:  # pragma: no cover - last resort
        logging.getLogger("bidsfm").exception("internal error")
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":  # pragma: no cover
    main()
