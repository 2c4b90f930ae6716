"""Nipype layer: an interface per run over :func:`bidsfm.pipeline.process_run`, and workflow
builders that give users Nipype's execution plugins (Linear, MultiProc, SLURM, SGE, PBS).

Nipype's node cache is not used for the nodes that write outputs (``always_run``): what is done
is decided by the outputs on disk only (:func:`bidsfm.pipeline.is_complete` and the model's
own check), so a rerun after the output folder was deleted, or after a transient failure
(a full disk, a read-only folder) was fixed, writes what is missing instead of answering from
the work folder's cache.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("NIPYPE_NO_ET", "1")

from nipype.interfaces.base import (  # noqa: E402
    BaseInterfaceInputSpec,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from nipype.pipeline import engine as pe  # noqa: E402

from .discovery import BoldRun  # noqa: E402
from .pipeline import ProcessingOptions  # noqa: E402

LOGGER = logging.getLogger("bidsfm.workflow")


class _ProcessRunInputSpec(BaseInterfaceInputSpec):
    run = traits.Dict(mandatory=True, desc="BoldRun.to_dict()")
    options = traits.Dict(mandatory=True, desc="ProcessingOptions.to_dict()")
    output_dir = traits.Str(mandatory=True, desc="bidsfm derivatives root")
    dataset_name = traits.Str("preprocessed", usedefault=True, desc="input dataset name")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads for numerical libraries")
    mem_mb = traits.Int(0, usedefault=True,
                        desc="memory available (--mem-mb); 0 = no check. Kept out of the "
                             "processing options: it does not change the outputs")
    figures = traits.Bool(True, usedefault=True,
                          desc="draw each atlas's placement on the run (False: --no-figures)")
    atlas_index_dir = traits.Str("", usedefault=True,
                                 desc="cache of atlases resampled onto run grids (<work "
                                      "dir>/atlas_index); empty = no cache")


class _ProcessRunOutputSpec(TraitedSpec):
    results = traits.List(traits.Dict, desc="one dict per atlas: run, atlas, status, reason")


class ProcessRun(SimpleInterface):
    """Denoise, parcellate and connect one BOLD run, writing its derivatives.

    Input problems never make the node crash: they are returned as ``status == "error"`` with a
    one-line reason (and recorded in the run's QC table), so the rest of the cohort goes on.
    The node always runs (never answered from Nipype's cache): :func:`process_run` itself
    reuses complete outputs found on disk.
    """

    input_spec = _ProcessRunInputSpec
    output_spec = _ProcessRunOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from threadpoolctl import threadpool_limits

        from .pipeline import process_run

        run = BoldRun.from_dict(self.inputs.run)
        options = ProcessingOptions(**self.inputs.options)
        with threadpool_limits(limits=max(1, self.inputs.omp_nthreads)):
            results = process_run(run, options, self.inputs.output_dir,
                                  dataset_name=self.inputs.dataset_name,
                                  mem_mb=self.inputs.mem_mb or None,
                                  atlas_index_dir=self.inputs.atlas_index_dir or None,
                                  figures=self.inputs.figures)
        self._results["results"] = [
            {"run": r.run, "atlas": r.atlas, "status": r.status, "reason": r.reason}
            for r in results
        ]
        return runtime


class _EncodeInputSpec(BaseInterfaceInputSpec):
    runs = traits.List(traits.Dict, mandatory=True, desc="BoldRun.to_dict() of each run")
    run_results = traits.List(desc="outputs of the run nodes (dependency only)")
    model = traits.Str(mandatory=True, desc="model name or folder")
    device = traits.Str("cpu", usedefault=True, desc="cpu, cuda or auto")
    output_dir = traits.Str(mandatory=True, desc="bidsfm derivatives root")
    omp_nthreads = traits.Int(1, usedefault=True, desc="CPU threads for torch")
    batch_size = traits.Int(64, usedefault=True, desc="FC matrices per forward pass")
    heads = traits.List(traits.Str, usedefault=True,
                        desc="extra heads (--heads) as NAME=PATH of group-level head folders")
    figures = traits.Bool(True, usedefault=True,
                          desc="draw the attention glass brains (False: --no-figures)")
    precision = traits.Enum("float32", "bf16", usedefault=True,
                            desc="inference precision (--precision)")
    attention_steps = traits.Int(32, usedefault=True, desc="integrated-gradients steps")


class _EncodeOutputSpec(TraitedSpec):
    results = traits.List(traits.Dict, desc="one dict per run: run, status, reason")


class EncodeParticipant(SimpleInterface):
    """Encode all runs of a participant in one batch (embeddings, predictions, attention); on a
    GPU, the runs of every participant of the job together (:func:`init_bidsfm_wf`).

    Like :class:`ProcessRun`, the node never crashes: a model that cannot be loaded (a corrupt
    or foreign weights file) or a failure while encoding is returned as ``status == "error"``
    for every run, with a one-line reason, and the run outputs already written stay valid.
    Like :class:`ProcessRun`, it always runs; complete model outputs on disk are reused.
    """

    input_spec = _EncodeInputSpec
    output_spec = _EncodeOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        import torch

        from .encode import encode_participant
        from .errors import BidsfmError
        from .models.device import resolve_device
        from .models.registry import load_model

        torch.set_num_threads(max(1, self.inputs.omp_nthreads))
        runs = [BoldRun.from_dict(r) for r in self.inputs.runs]
        try:
            device = str(resolve_device(self.inputs.device))
            try:
                model = load_model(self.inputs.model, device=device,
                                   precision=self.inputs.precision)
            except BidsfmError:
                raise
            except Exception as exc:  # e.g. a weights file that is not safetensors
                raise BidsfmError(
                    f"cannot load the model ({type(exc).__name__}: {exc})",
                    path=self.inputs.model, remedy="Use a model folder written by bidsfm "
                    "(card.json + weights.safetensors), or reinstall bidsfm") from None
            if self.inputs.heads:
                from .group.heads_io import load_head

                for spec in self.inputs.heads:
                    name, _, path = spec.partition("=")
                    model.heads[name] = load_head(path, model.card, name=name)
            results = encode_participant(runs, model, self.inputs.output_dir,
                                         attention_steps=self.inputs.attention_steps,
                                         batch_size=self.inputs.batch_size,
                                         figures=self.inputs.figures)
        except BidsfmError as err:
            results = [{"run": r.prefix, "status": "error", "reason": err.one_line()}
                       for r in runs]
        except OSError as exc:  # a full or read-only output folder
            from .errors import os_error_line

            line = os_error_line(exc, self.inputs.output_dir, self.inputs.model)
            results = [{"run": r.prefix, "status": "error", "reason": line} for r in runs]
        except Exception as exc:  # an unexpected failure must not crash the workflow
            LOGGER.exception("internal error while encoding %s", self.inputs.model)
            reason = (f"{self.inputs.model}: internal error while encoding "
                      f"({type(exc).__name__}: {exc}). Please report this with the log")
            results = [{"run": r.prefix, "status": "error", "reason": reason.replace("\n", " ")}
                       for r in runs]
        self._results["results"] = [{**r, "stage": "model"} for r in results]
        return runtime


def _estimate_mem_gb(run: BoldRun) -> float:
    """Memory hint for schedulers (GB), from :func:`bidsfm.extract.estimate_memory_mb`."""
    from .extract import estimate_memory_mb

    try:
        import nibabel as nib

        shape = nib.load(run.bold).shape
    except Exception:
        return 0.5  # an unreadable file fails fast in the node, with its own message
    return round(estimate_memory_mb(shape) / 1024, 2)


def node_name(run: BoldRun, index: int) -> str:
    """Name of the run's node in its participant workflow (progress lines use it)."""
    safe = "".join(c if c.isalnum() else "_" for c in run.prefix)
    return f"run_{index:03d}_{safe}"


def init_participant_wf(participant: str, runs: list[BoldRun], options: ProcessingOptions,
                        output_dir: str | Path, *, dataset_name: str = "preprocessed",
                        omp_nthreads: int = 1, name: str | None = None,
                        model: str | None = None, device: str = "cpu",
                        batch_size: int = 64, mem_mb: int | None = None,
                        atlas_index_dir: str | Path | None = None,
                        heads: list[str] | None = None, figures: bool = True,
                        precision: str = "float32", attention_steps: int = 32
                        ) -> pe.Workflow:
    """Build the workflow of one participant: one :class:`ProcessRun` node per BOLD run.

    Parameters
    ----------
    participant : str
        Label without ``sub-``.
    runs : list of BoldRun
        The participant's runs.
    options : ProcessingOptions
        Processing options shared by every run.
    output_dir : str or Path
        Root of the derivatives dataset.
    dataset_name : str
        Name of the input dataset in ``DatasetLinks``.
    omp_nthreads : int
        Threads per node for numerical libraries.
    name : str, optional
        Workflow name (default ``sub_<label>_wf``).
    model : str, optional
        Foundation model to run on every processed run (one batch per participant).
    device : str
        ``cpu``, ``cuda`` or ``auto`` for the model.
    batch_size : int
        FC matrices per forward pass of the model.
    mem_mb : int, optional
        Memory available (``--mem-mb``): a run estimated to need more fails with a message.
    atlas_index_dir : str or Path, optional
        Cache of atlases resampled onto run grids (see :func:`bidsfm.pipeline.process_run`).
    heads : list of str, optional
        Extra heads (``NAME=PATH`` of group-level head folders) applied with the model's own.
    figures : bool
        Draw the attention glass brains (``--no-figures`` sets False).
    precision : str
        Inference precision of the model, ``float32`` or ``bf16`` (``--precision``).
    attention_steps : int
        Integrated-gradients steps of the attention maps.
    """
    wf = pe.Workflow(name=name or f"sub_{participant}_wf")
    opts = options.to_dict()
    run_nodes = []
    for i, run in enumerate(runs):
        node = pe.Node(ProcessRun(run=run.to_dict(), options=opts, output_dir=str(output_dir),
                                  dataset_name=dataset_name, omp_nthreads=omp_nthreads,
                                  mem_mb=int(mem_mb or 0),
                                  atlas_index_dir=str(atlas_index_dir or ""),
                                  figures=bool(figures)),
                       name=node_name(run, i), mem_gb=_estimate_mem_gb(run),
                       n_procs=omp_nthreads)
        wf.add_nodes([node])
        run_nodes.append(node)
    if model and run_nodes:
        _add_encode_node(wf, [(node, "results") for node in run_nodes], runs,
                         model=model, device=device, output_dir=output_dir,
                         omp_nthreads=omp_nthreads, batch_size=batch_size, heads=heads,
                         figures=figures, precision=precision, attention_steps=attention_steps)
    return wf


def _add_encode_node(wf: pe.Workflow, sources: list[tuple[Any, str]], runs: list[BoldRun], *,
                     model: str, device: str, output_dir: str | Path, omp_nthreads: int,
                     batch_size: int, heads: list[str] | None, figures: bool, precision: str,
                     attention_steps: int) -> pe.Node:
    """Add the model node of ``runs`` to ``wf``, after every ``(node, output)`` in ``sources``
    (the run nodes, or ``(participant workflow, "<run node>.results")``)."""
    from nipype.interfaces import utility as niu

    # a list join: run in the scheduling process, not sent to a worker (one scheduling round
    # less between the last run and the model)
    merge = pe.Node(niu.Merge(len(sources), ravel_inputs=True), name="gather_runs",
                    run_without_submitting=True)
    for i, (node, field) in enumerate(sources, start=1):
        wf.connect(node, field, merge, f"in{i}")
    encode = pe.Node(EncodeParticipant(runs=[r.to_dict() for r in runs], model=model,
                                       device=device, output_dir=str(output_dir),
                                       omp_nthreads=omp_nthreads, batch_size=batch_size,
                                       heads=list(heads or []), figures=bool(figures),
                                       precision=precision, attention_steps=attention_steps),
                     name="encode_model", mem_gb=1.0, n_procs=omp_nthreads)
    wf.connect(merge, "out", encode, "run_results")
    return encode


def init_bidsfm_wf(runs_by_participant: dict[str, list[BoldRun]], options: ProcessingOptions,
                   output_dir: str | Path, work_dir: str | Path, *,
                   dataset_name: str = "preprocessed", omp_nthreads: int = 1,
                   model: str | None = None, device: str = "cpu", batch_size: int = 64,
                   mem_mb: int | None = None, heads: list[str] | None = None,
                   figures: bool = True, precision: str = "float32",
                   attention_steps: int = 32, encode_together: bool = False) -> pe.Workflow:
    """Top-level workflow: one sub-workflow per participant, base dir under the work dir.

    The model runs once per participant (its runs in one batch), or, with
    ``encode_together`` (the participant level sets it when the model runs on a GPU), once
    for the whole job: one ``encode_model`` node after every participant's runs, so the GPU
    gets the runs of all participants in its batches and the model is loaded once.
    """
    wf = pe.Workflow(name="bidsfm_wf", base_dir=str(work_dir))
    crash_dir = Path(work_dir) / "crash"
    wf.config["execution"].update({
        "crashdump_dir": str(crash_dir),
        "crashfile_format": "txt",
        "stop_on_first_crash": False,
        "remove_unnecessary_outputs": False,
        # the output nodes always run (see the module docstring); "timestamp" keeps Nipype
        # from reading every BOLD file to hash it ("content" would md5 whole files)
        "hash_method": "timestamp",
        "create_report": False,
    })
    sources: list[tuple[Any, str]] = []
    all_runs: list[BoldRun] = []
    for participant, runs in runs_by_participant.items():
        if runs:
            sub = init_participant_wf(participant, runs, options, output_dir,
                                      dataset_name=dataset_name,
                                      atlas_index_dir=Path(work_dir) / "atlas_index",
                                      omp_nthreads=omp_nthreads,
                                      model=None if encode_together else model,
                                      device=device, batch_size=batch_size, mem_mb=mem_mb,
                                      heads=heads, figures=figures, precision=precision,
                                      attention_steps=attention_steps)
            wf.add_nodes([sub])
            sources += [(sub, f"{node_name(run, i)}.results") for i, run in enumerate(runs)]
            all_runs += runs
    if model and encode_together and all_runs:
        _add_encode_node(wf, sources, all_runs, model=model, device=device,
                         output_dir=output_dir, omp_nthreads=omp_nthreads,
                         batch_size=batch_size, heads=heads, figures=figures,
                         precision=precision, attention_steps=attention_steps)
    return wf


#: seconds between two scheduling rounds of Nipype's MultiProc plugin (Nipype's default, 2 s,
#: made every node wait up to 2 s after the one it depends on, and made ``--nprocs 2`` slower
#: than one process on 4 participants). Other plugins keep Nipype's default: for cluster
#: plugins a round queries the scheduler (``squeue``...)
MULTIPROC_POLL_SECONDS = 0.05


def plugin_settings(nprocs: int, mem_mb: int | None, use_plugin: str | None) -> dict[str, Any]:
    """Choose the Nipype plugin: a YAML/JSON/TOML plugin file, MultiProc, or Linear.

    A plugin file looks like::

        plugin: SLURM
        plugin_args:
          sbatch_args: --time=01:00:00 --mem=4G
    """
    if use_plugin:
        from .errors import ConfigError
        from .utils import read_config_file

        path = Path(use_plugin)
        data = read_config_file(path, "plugin file")
        if not isinstance(data, dict) or "plugin" not in data:
            raise ConfigError("plugin file must have a 'plugin' key (e.g. plugin: SLURM)",
                              path=path)
        args = dict(data.get("plugin_args") or {})
        return {"plugin": data["plugin"], "plugin_args": args}
    if nprocs and nprocs > 1:
        args: dict[str, Any] = {"n_procs": nprocs, "raise_insufficient": False,
                                "maxtasksperchild": 1}
        if mem_mb:
            args["memory_gb"] = mem_mb / 1024
        return {"plugin": "MultiProc", "plugin_args": args}
    return {"plugin": "Linear", "plugin_args": {}}


def quiet_nipype(verbose: int) -> None:
    """Route Nipype's messages through its own handler only, at WARNING unless -vv."""
    from nipype import config as nipype_config
    from nipype import logging as nipype_logging

    level = "INFO" if verbose >= 2 else "WARNING"
    for key in ("workflow_level", "interface_level", "utils_level"):
        nipype_config.set("logging", key, level)
    nipype_logging.update_logging(nipype_config)
    for name in ("nipype", "nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False


def workflow_results(graph: Any, expected: int, crash_dir: Path) -> list[dict]:
    """The result dicts of every node of a finished workflow (``graph`` None: it crashed).

    ``expected`` is the number of run results (runs x atlases); each one a crashed node did
    not return becomes an error result naming ``crash_dir``.
    """
    results: list[dict] = []
    for node in list(graph.nodes()) if graph is not None else []:
        try:
            outputs = node.result.outputs
        except Exception:
            continue
        if outputs is not None and getattr(outputs, "results", None):
            results.extend(outputs.results)
    run_results = [r for r in results if r.get("stage") != "model"]
    if len(run_results) < expected:
        results.extend({"run": "?", "atlas": "?", "status": "error",
                        "reason": f"workflow node crashed; see {crash_dir}"}
                       for _ in range(expected - len(run_results)))
    return results
