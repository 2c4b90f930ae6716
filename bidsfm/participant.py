"""The participant level as a recipe of named steps (the command line only parses and calls it).

:func:`run_participant_level` runs, in order:

1. :func:`check_inputs`: input datasets, output and work folders, labels, filters, options;
2. :func:`resolve_model_and_atlases`: the model's card, its atlas, the ``--heads``, every
   atlas resolved once;
3. :func:`discover_runs`: the participants' BOLD runs (:mod:`bidsfm.discovery`);
4. :func:`prepare_output`: participants' locks, ``dataset_description.json``, this call's
   config in ``logs/``;
5. :func:`run_workflow`: the Nipype workflow (:mod:`bidsfm.workflow`) and its results;
6. :func:`write_reports`: each participant's HTML report;
7. :func:`write_citation`: ``logs/CITATION.md``;
8. :func:`print_summary`: one line per problem and a closing count, and the exit code.

Every step takes the frozen :class:`~bidsfm.config.Config` and what earlier steps found; none
reads a dict of options.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__

if TYPE_CHECKING:
    from .config import Config
    from .discovery import BoldRun, RunProblem
    from .models.card import ModelCard
    from .pipeline import ProcessingOptions

EXIT_OK, EXIT_PARTIAL = 0, 1
LOGGER = logging.getLogger("bidsfm")


@dataclass(frozen=True)
class Inputs:
    """What :func:`check_inputs` found: folders, validated labels and filters, options."""

    fmriprep_dir: Path
    work_dir: Path
    template: str
    requested: list[str]
    sessions: list[str]
    tasks: list[str]
    filters: dict[str, Any]
    options: ProcessingOptions


@dataclass
class Plan:
    """What the job will do: processing options (atlases resolved), model, heads, runs."""

    options: ProcessingOptions
    participants: list[str] = field(default_factory=list)
    model: ModelCard | None = None
    heads: list[str] = field(default_factory=list)
    runs: dict[str, list[BoldRun]] = field(default_factory=dict)
    problems: list[RunProblem] = field(default_factory=list)
    atlas_problems: list[str] = field(default_factory=list)
    #: encode the runs of all participants in one model node (the model runs on a GPU)
    encode_together: bool = False

    @property
    def n_runs(self) -> int:
        """Runs to process."""
        return sum(len(r) for r in self.runs.values())


def run_participant_level(config: Config) -> int:
    """Run the participant level; return the process exit code (0 all done, 1 some failed).

    Raises
    ------
    BidsfmError
        For problems that stop the whole job (bad options, no input dataset, no atlas).
    """
    if config.execution.reports_only:
        return participant_reports_only(config)
    inputs = check_inputs(config)
    plan = resolve_model_and_atlases(config, inputs)
    discover_runs(config, inputs, plan)
    locks = prepare_output(config, inputs, plan)
    results: list[dict] = []
    try:
        LOGGER.info("bidsfm %s: %d run(s) of %d participant(s) from %s; atlases %s; strategy "
                    "%s", __version__, plan.n_runs, len(plan.participants),
                    inputs.fmriprep_dir, ",".join(plan.options.atlases), plan.options.strategy)
        if plan.n_runs:
            from .progress import NipypeSteps

            make_work_dir(inputs)
            with NipypeSteps(progress_labels(plan, config.execution.figures), LOGGER) as steps:
                results = run_workflow(config, inputs, plan, steps)
                write_reports(config, [p for p, r in plan.runs.items() if r], steps)
            write_citation(config, plan)
    finally:
        for lock in locks:
            lock.release()
    return print_summary(config, plan, results)


def check_inputs(config: Config) -> Inputs:
    """Step 1: the input datasets, the folders bidsfm writes, every label, the filter file and
    the processing options, all checked before anything is read or written.

    Raises
    ------
    ConfigError
        For any of them.
    """
    from .derivatives import check_output_dataset
    from .discovery import (
        locate_fmriprep,
        normalize_labels,
        normalize_participant_labels,
        parse_space,
    )
    from .errors import ConfigError
    from .utils import is_inside, refuse_inside_input

    sel, execution = config.inputs, config.execution
    fmriprep_dir = locate_fmriprep(config.bids_dir, sel.derivatives_map)
    refuse_inside_input({"output": config.output_dir, "work": execution.work_dir,
                         "BIDS database": sel.bids_database_dir},
                        [config.bids_dir, fmriprep_dir])
    work_dir = (execution.work_dir or Path.cwd() / "work").absolute()
    if is_inside(work_dir, config.bids_dir) or is_inside(work_dir, fmriprep_dir):
        raise ConfigError(f"the default work folder {work_dir} is inside the input dataset",
                          remedy="Pass -w/--work-dir outside the input dataset")
    template, _res = parse_space(sel.space)
    # every label is validated before anything is read or written (they become paths)
    requested = normalize_participant_labels(sel.participant_label)
    sessions = normalize_labels(sel.session_label, "ses-", "session")
    tasks = normalize_labels(sel.task_id, "task-", "task")
    filters = read_filters(sel.bids_filter_file)
    check_output_dataset(config.output_dir)  # another tool's dataset: refuse before any work
    return Inputs(fmriprep_dir=fmriprep_dir, work_dir=work_dir, template=template,
                  requested=requested, sessions=sessions, tasks=tasks, filters=filters,
                  options=config.processing.options())


def read_filters(path: Path | None) -> dict[str, Any]:
    """The ``--bids-filter-file`` (a JSON object), or ``{}``.

    Raises
    ------
    ConfigError
        If it cannot be read or is not a JSON object.
    """
    import json

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


def resolve_model_and_atlases(config: Config, inputs: Inputs) -> Plan:
    """Step 2: the model (its card decides the atlas it needs), the ``--heads``, and every
    atlas resolved once; a missing atlas is a one-line error, and no usable atlas stops the job.

    Raises
    ------
    ConfigError, AtlasNotFoundError
        For an unknown model, a bad head, two atlases of one name, or no usable atlas.
    """
    from .atlases import normalise_atlas_spec
    from .errors import AtlasNotFoundError
    from .group.heads_io import resolve_heads
    from .models.card import resolve_model

    template = inputs.template
    # one spelling per atlas: ``--atlas cc200 --atlas CC200`` is one atlas, processed once
    atlases = list(dict.fromkeys(normalise_atlas_spec(s) for s in inputs.options.atlases))
    model = resolve_model(config.model.model)
    model_spec = None
    if model is not None:  # the model decides the atlas it needs
        model_spec = normalise_atlas_spec(model_atlas_spec(model, atlases))
        if model_spec not in atlases:
            atlases.append(model_spec)
    heads = resolve_heads(config.model.heads, model)
    usable, atlas_problems = usable_atlases(atlases, template)
    if not usable:
        raise AtlasNotFoundError("no requested atlas is available offline; nothing to do",
                                 remedy="See the messages above")
    if model is not None and model_spec not in usable:
        msg = (f"model {model.name} needs the {model.atlas_name} atlas, which is not "
               "available (see above): no model outputs")
        LOGGER.error("%s", msg)
        atlas_problems.append(msg)
        model = None
    together = False
    if model is not None:
        from .models.device import uses_gpu

        together = uses_gpu(config.model.device)
    return Plan(options=dataclasses.replace(inputs.options, atlases=usable), model=model,
                heads=heads, atlas_problems=atlas_problems, encode_together=together)


def model_atlas_spec(model: ModelCard, requested: list[str]) -> str:
    """The atlas spec that provides the model's atlas.

    A requested ``NAME=PATH`` whose NAME is the card's atlas name wins; else the card's own
    atlas file (``NAME=PATH``, for imported models on a user atlas); else the registry name.
    """
    for spec in requested:
        name, sep, _path = spec.partition("=")
        if sep and name == model.atlas_name:
            return spec
    return model.atlas_spec


def usable_atlases(specs: list[str], template: str) -> tuple[list[str], list[str]]:
    """The atlas specs that resolve (each logged problem listed too).

    Raises
    ------
    ConfigError
        If two specs resolve to one atlas name (their outputs would overwrite each other).
    """
    from .atlases import resolve_atlas
    from .errors import AtlasNotFoundError, ConfigError

    problems, usable, names = [], [], {}
    for spec in specs:
        try:
            name = resolve_atlas(spec, space=template).name
        except AtlasNotFoundError as err:
            problems.append(err.one_line())
            continue
        if name in names:  # two files under one name would overwrite each other's outputs
            raise ConfigError(f"--atlas {names[name]!r} and --atlas {spec!r} are both named "
                              f"{name!r}; their outputs would overwrite each other",
                              remedy="Give each atlas its own name: --atlas NAME=PATH")
        names[name] = spec
        usable.append(spec)
    for msg in problems:
        LOGGER.error("%s", msg)
    return usable, problems


def discover_runs(config: Config, inputs: Inputs, plan: Plan) -> None:
    """Step 3: each participant's BOLD runs into ``plan.runs``, problems into
    ``plan.problems`` (one line each, logged).

    Raises
    ------
    ConfigError
        If no run matches the selection for any participant (nothing is written).
    """
    from .discovery import (
        RunProblem,
        available_spaces,
        build_layout,
        check_bids_filters,
        collect_runs,
        list_participants,
        locate_raw_dataset,
    )
    from .errors import ConfigError

    sel, fmriprep_dir, template = config.inputs, inputs.fmriprep_dir, inputs.template
    available = list_participants(fmriprep_dir)
    problems = plan.problems
    if inputs.requested:
        plan.participants = [p for p in inputs.requested if p in available]
        for p in inputs.requested:
            if p not in available:
                problems.append(RunProblem(f"sub-{p}", (
                    f"{fmriprep_dir}: participant label 'sub-{p}' not found (no sub-{p} "
                    "folder). Check --participant-label against the sub-* folders of the "
                    "input")))
    else:
        plan.participants = available
    if not plan.participants:
        for pr in problems:
            LOGGER.error("%s", pr.message)
        raise ConfigError("no participant to process", path=fmriprep_dir,
                          remedy="Check --participant-label and the input folder")
    db_dir = sel.bids_database_dir or (inputs.work_dir / "bids_db")
    layout = build_layout(fmriprep_dir, plan.participants, Path(db_dir))
    if inputs.filters:
        check_bids_filters(inputs.filters, layout, sel.bids_filter_file)
    raw_dir = locate_raw_dataset(config.bids_dir, fmriprep_dir)  # RepetitionTime fallback
    unmatched: list[str] = []  # participants with no run in the selection at all
    for p in plan.participants:
        runs, run_problems = collect_runs(layout, fmriprep_dir, p, space=sel.space,
                                          sessions=inputs.sessions, tasks=inputs.tasks,
                                          bids_filters=inputs.filters, raw_dir=raw_dir)
        problems.extend(run_problems)
        if not runs and not run_problems:
            unmatched.append(p)
            others = [s for s in available_spaces(layout, p) if s != template]
            hint = f" (its runs are in space {', '.join(others)})" if others else ""
            problems.append(RunProblem(f"sub-{p}", (
                f"{fmriprep_dir / ('sub-' + p)}: no desc-preproc_bold run in space {template} "
                f"matches the selection{hint}. Check --space, --session-label, --task-id and "
                "the filter file")))
        plan.runs[p] = runs
    for pr in problems:
        LOGGER.error("%s", pr.message)
    if len(unmatched) == len(plan.participants):
        # nothing to process anywhere: "no input found" (exit 2, docs/usage.md), not a partial
        # failure, and nothing is written to the output folder
        raise ConfigError(f"no desc-preproc_bold run in space {template} matches the selection "
                          "for any participant; nothing to do", path=fmriprep_dir,
                          remedy="See the messages above; check --space, --session-label, "
                                 "--task-id and the filter file")


def prepare_output(config: Config, inputs: Inputs, plan: Plan) -> list:
    """Step 4: create the output folder, take each participant's lock, remove what killed jobs
    left, write ``dataset_description.json`` (+ README, .bidsignore) and this call's config in
    ``logs/``. Returns the locks taken (release them when done).

    Raises
    ------
    OutputError
        If the output folder cannot be written.
    """
    from .config import write_config
    from .derivatives import ensure_dataset_description
    from .errors import output_error
    from .locks import lock_participants, remove_shared_temps

    output_dir, fmriprep_dir = config.output_dir, inputs.fmriprep_dir
    links = {"preprocessed": str(fmriprep_dir)}
    if config.bids_dir != fmriprep_dir:
        links["raw"] = str(config.bids_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        locks = lock_participants(output_dir, plan.runs, plan.problems)
    except OSError as exc:
        raise output_error(exc, output_dir) from None
    try:
        remove_shared_temps(output_dir)
        ensure_dataset_description(output_dir, fmriprep_dir, links)
        write_config(config)
    except BaseException as exc:
        for lock in locks:
            lock.release()
        if isinstance(exc, OSError):
            raise output_error(exc, output_dir) from None
        raise
    return locks


def progress_labels(plan: Plan, figures: bool) -> dict[str, tuple[str, str]]:
    """What the progress lines say for each step: ``{key: (item, step)}``.

    Keys are ``<participant workflow>.<node>`` for the Nipype nodes (see
    :func:`bidsfm.workflow.init_participant_wf`) and ``report:<label>`` for the reports.
    """
    from .workflow import node_name

    labels: dict[str, tuple[str, str]] = {}
    what = "embeddings, predictions, attention" + (", figures" if figures else "")
    for p, runs in plan.runs.items():
        if not runs:
            continue
        for i, run in enumerate(runs):
            labels[f"sub_{p}_wf.{node_name(run, i)}"] = (
                run.prefix, "extraction, denoising, connectivity")
        if plan.model is not None and not plan.encode_together:
            labels[f"sub_{p}_wf.encode_model"] = (
                f"sub-{p}", f"model {plan.model.name} on {len(runs)} run(s): {what}")
        labels[f"report:{p}"] = (f"sub-{p}", "HTML report" + ("" if figures else
                                                               " (no figures)"))
    if plan.model is not None and plan.encode_together and plan.n_runs:
        n_sub = sum(1 for runs in plan.runs.values() if runs)
        labels["bidsfm_wf.encode_model"] = (
            f"{n_sub} participant(s)", f"model {plan.model.name} on the GPU, {plan.n_runs} "
            f"run(s) together: {what}")
    return labels


def make_work_dir(inputs: Inputs) -> None:
    """Create the work folder (before step 5).

    Raises
    ------
    OutputError
        If it cannot be created.
    """
    from .errors import output_error

    try:
        inputs.work_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(exc, inputs.work_dir, "work folder") from None


def run_workflow(config: Config, inputs: Inputs, plan: Plan, steps: Any = None) -> list[dict]:
    """Step 5: build and run the Nipype workflow; one result dict per run and atlas (and per
    run for the model). A crashed node becomes an error result naming the crash folder.

    Raises
    ------
    ConfigError
        If the denoising strategy (checked once here) or the plugin file is invalid.
    """
    from .denoising import get_strategy
    from .workflow import init_bidsfm_wf, plugin_settings, quiet_nipype, workflow_results

    options, execution, model = plan.options, config.execution, config.model
    # validate the strategy once (a bad strategy file is a usage error, not N run errors)
    get_strategy(options.strategy, fd_threshold=options.fd_threshold,
                 std_dvars_threshold=options.dvars_threshold)
    quiet_nipype(execution.verbose)
    work_dir = inputs.work_dir
    wf = init_bidsfm_wf(plan.runs, options, config.output_dir, work_dir,
                        omp_nthreads=execution.omp_nthreads,
                        model=None if plan.model is None else str(plan.model.folder),
                        device=model.device, batch_size=model.batch_size,
                        mem_mb=execution.mem_mb, heads=plan.heads, figures=execution.figures,
                        precision=model.precision, attention_steps=model.attention_steps,
                        encode_together=plan.encode_together)
    plugin = plugin_settings(execution.nprocs, execution.mem_mb,
                             None if execution.use_plugin is None else str(execution.use_plugin))
    if plugin["plugin"] == "MultiProc":
        from .workflow import MULTIPROC_POLL_SECONDS

        wf.config["execution"]["poll_sleep_duration"] = MULTIPROC_POLL_SECONDS
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
    return workflow_results(graph, plan.n_runs * len(plan.options.atlases), work_dir / "crash")


def write_reports(config: Config, participants: list[str], steps: Any = None) -> None:
    """Step 6: ``sub-X.html`` for each participant; a report failure never fails the
    participant. With ``--nprocs N`` (N > 1), N forked processes write them (the pages are
    drawn and written the same way; each line reports its own duration)."""
    try:
        from .reports import write_subject_report  # noqa: F401 (reports are installed)
    except ImportError:
        return
    from .utils import fork_pool

    global _REPORT_JOB
    nprocs = min(config.execution.nprocs, len(participants))
    _REPORT_JOB = (config.output_dir, config.execution.figures)  # before any fork
    try:
        pool = fork_pool(nprocs) if nprocs > 1 else None
        for p in participants:
            if steps is not None:
                steps.start(*steps.labels.get(f"report:{p}", (f"sub-{p}", "HTML report")))
            if pool is None:
                _report_done(steps, *_write_report(p))
        if pool is not None:
            with pool:
                for done in pool.imap(_write_report, participants):
                    _report_done(steps, *done)
    finally:
        _REPORT_JOB = None


#: output folder and figures flag of :func:`write_reports` (inherited by forked workers)
_REPORT_JOB: tuple[Path, bool] | None = None


def _write_report(label: str) -> tuple[str, str | None, str | None, float]:
    """Write one participant's report: ``(label, page name, error line, seconds)``."""
    import time

    from .reports import write_subject_report

    if _REPORT_JOB is None:
        raise RuntimeError("write_reports' worker started without its job")
    output_dir, figures = _REPORT_JOB
    t0 = time.perf_counter()
    try:
        page = write_subject_report(output_dir, label, figures=figures)
        return label, page.name, None, time.perf_counter() - t0
    except Exception as exc:
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return label, None, line, time.perf_counter() - t0


def _report_done(steps: Any, label: str, page: str | None, error: str | None,
                 seconds: float) -> None:
    """The progress line (and warning) of one finished report."""
    if steps is not None:
        if page is not None:
            steps.end(f"sub-{label}", f"{page} written", took=seconds)
        else:
            steps.end(f"sub-{label}", "report failed", logging.WARNING, took=seconds)
    if error is not None:
        LOGGER.warning("sub-%s: the HTML report could not be written (%s)", label, error)


def write_citation(config: Config, plan: Plan) -> None:
    """Step 7: ``logs/CITATION.md`` from the options used; a failure is a warning, never
    fatal."""
    try:
        from .reports import write_citation as write

        write(config.output_dir, {**dataclasses.asdict(plan.options),
                                  "analysis_level": "participant",
                                  "model": str(plan.model.folder) if plan.model else "none"})
    except Exception as exc:
        LOGGER.warning("logs/CITATION.md could not be written (%s: %s)", type(exc).__name__, exc)


def print_summary(config: Config, plan: Plan, results: list[dict]) -> int:
    """Step 8: a line per skipped run and per model problem, the closing counts; the exit
    code (1 when a run failed or an input or atlas problem was found)."""
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
    if plan.problems:
        parts.append(f"{len(plan.problems)} input problem(s)")
    LOGGER.info("done: %s. Outputs in %s", ", ".join(parts) or "nothing to do",
                config.output_dir)
    failed = [r for r in results if r["status"] == "error"]
    return EXIT_PARTIAL if failed or plan.problems or plan.atlas_problems else EXIT_OK


def participant_reports_only(config: Config) -> int:
    """``--reports-only`` at the participant level (:mod:`bidsfm.reports.rebuild`): exit code.

    Raises
    ------
    BidsfmError
        If the output folder is not bidsfm's or holds no outputs for the participants.
    """
    from .derivatives import check_output_dataset
    from .discovery import normalize_participant_labels
    from .errors import ConfigError
    from .reports.rebuild import rebuild_participant_reports

    output_dir = config.output_dir
    if not (output_dir / "dataset_description.json").is_file():
        raise ConfigError("--reports-only: the output folder holds no bidsfm outputs",
                          path=output_dir, remedy="Run the participant level first")
    check_output_dataset(output_dir)
    problems = rebuild_participant_reports(
        output_dir, normalize_participant_labels(config.inputs.participant_label),
        figures=config.execution.figures)
    for line in problems:
        LOGGER.error("%s", line)
    return EXIT_PARTIAL if problems else EXIT_OK
