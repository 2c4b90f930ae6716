"""The ``bidsfm`` command line (BIDS-App conventions, as fMRIPrep and XCP-D users know them).

It only parses: the options (and a ``--config-file``'s) become one frozen
:class:`bidsfm.config.Config`, handed to the participant runner (:mod:`bidsfm.participant`) or
the group runner (:mod:`bidsfm.group.run`); nothing imports this module. It imports only the
standard library and click at import time, so ``bidsfm --help`` is instant; numpy, nibabel,
pybids, nipype (and later torch) are imported when a level runs.

Exit codes: 0 all runs processed (or skipped by ``--min-time``); 1 some runs or participants
failed (each failure is reported on one line and recorded in its QC table); 2 bad command line,
configuration or missing atlas (nothing processed); 3 an unexpected internal error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from . import __version__

if TYPE_CHECKING:
    from .config import Config

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
LOGGER = logging.getLogger("bidsfm")
#: ``--harmonize-method`` default; equals bidsfm.group.harmonize.DEFAULT_METHOD (a test checks),
#: repeated here so that the command line imports no numpy
DEFAULT_HARMONIZE_METHOD = "combat"

#: options that take several space-separated values (``--participant-label 01 02``)
GREEDY_OPTIONS = ("--participant-label", "--participant_label", "--session-label",
                  "--session_label", "-t", "--task-id", "--task_id")
_GREEDY_VALUE = re.compile(r"(sub-|ses-|task-)?[A-Za-z0-9]+")


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
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: config file must hold a mapping of option names")
    from .config import flatten_config_file

    data = flatten_config_file(data)
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


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("output_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("analysis_level", type=click.Choice(["participant", "group"]))
@click.option("--config-file", type=click.Path(dir_okay=False), callback=_load_config,
              is_eager=True, expose_value=False,
              help="TOML/JSON/YAML file whose keys are option names (e.g. atlas, nprocs), "
                   "flat or in sections; the logs/config-*.json a run wrote is one.")
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
    from .config import build_config
    from .errors import BidsfmError

    try:
        config = build_config(bids_dir, output_dir, analysis_level, opts)
        work_dir = config.execution.work_dir or (Path("work") if analysis_level == "participant"
                                                 else None)
        with _matplotlib_cache(work_dir):
            if analysis_level == "group":
                code = run_group(config)
            else:
                code = run_participant(config)
    except BidsfmError as err:
        click.echo(f"bidsfm: error: {err.one_line()}", err=True)
        sys.exit(EXIT_USAGE)
    sys.exit(code)


def run_participant(config: Config) -> int:
    """The participant level (:func:`bidsfm.participant.run_participant_level`): exit code."""
    from .participant import run_participant_level

    return run_participant_level(config)


def run_group(config: Config) -> int:
    """The group level (:func:`bidsfm.group.run.run_group_level`): exit code."""
    from .group.run import run_group_level

    return run_group_level(config)


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
