"""Per-run processing as plain functions: BOLD -> ROI signals -> denoised -> FC -> derivatives.

This is the core that the Nipype layer (:mod:`bidsfm.workflow`) wraps; it can be called directly
from a notebook. Outputs of a run are computed completely in memory first and written
atomically, the QC table last, so a killed job never leaves a run that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .derivatives import bids_uri
from .discovery import BoldRun
from .errors import BidsfmError, ConfigError, InputDataError
from .utils import inputs_hash, write_json_atomic

LOGGER = logging.getLogger("bidsfm.pipeline")

QC_COLUMNS = [
    "status", "reason", "atlas", "space", "repetition_time", "n_volumes", "n_dummy",
    "n_censored", "n_retained", "retained_seconds", "mean_fd", "max_fd", "mean_dvars_before",
    "mean_dvars_after", "n_rois", "n_rois_low_coverage", "low_coverage_rois", "min_coverage",
    "atlas_transform", "repetition_time_source",
]


@dataclass
class ProcessingOptions:
    """Everything that changes the derivatives of a run (hashed for resume).

    Attributes
    ----------
    atlases : list of str
        Atlas specs for :func:`bidsfm.atlases.resolve_atlas`.
    strategy : str
        Denoising preset name or path to a JSON strategy.
    fd_threshold, dvars_threshold : float or None
        Censoring thresholds overriding the strategy's (mm, standardised DVARS).
    dummy_scans : int or "auto"
        Volumes to drop at the start ("auto" = fMRIPrep's non-steady-state outliers).
    lower_bpf, upper_bpf : float or None
        High-pass and low-pass cut-offs in Hz (Butterworth).
    min_time : float
        Minimum retained data in seconds; shorter runs are skipped with a reason.
    min_coverage : float
        ROIs with a smaller fraction of voxels inside the brain mask are written as n/a.
    standardize : str or None
        "zscore_sample" (default), "psc" or None.
    detrend : bool
        Remove a linear trend.
    """

    atlases: list[str] = field(default_factory=lambda: ["CC200"])
    strategy: str = "simple"
    fd_threshold: float | None = None
    dvars_threshold: float | None = None
    dummy_scans: int | str = "auto"
    lower_bpf: float | None = None
    upper_bpf: float | None = None
    min_time: float = 60.0
    min_coverage: float = 0.5
    standardize: str | None = "zscore_sample"
    detrend: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"--min-coverage must be between 0 and 1, got {self.min_coverage}")
        if self.min_time < 0:
            raise ConfigError(f"--min-time must be >= 0 seconds, got {self.min_time}")
        if isinstance(self.dummy_scans, str) and self.dummy_scans != "auto":
            try:
                self.dummy_scans = int(self.dummy_scans)
            except ValueError:
                raise ConfigError(f"--dummy-scans must be an integer or 'auto', got "
                                  f"{self.dummy_scans!r}") from None
        if isinstance(self.dummy_scans, int) and self.dummy_scans < 0:
            raise ConfigError("--dummy-scans must be >= 0")
        if (self.lower_bpf and self.upper_bpf and self.lower_bpf >= self.upper_bpf):
            raise ConfigError(f"--lower-bpf ({self.lower_bpf} Hz) must be below --upper-bpf "
                              f"({self.upper_bpf} Hz)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return asdict(self)


@dataclass
class RunResult:
    """What happened to one run for one atlas (one QC row)."""

    run: str
    atlas: str
    status: str  # "ok", "skipped", "error", "reused"
    reason: str = ""
    outputs: list[str] = field(default_factory=list)


def _strategy(options: ProcessingOptions):
    from .denoising import get_strategy

    return get_strategy(options.strategy, fd_threshold=options.fd_threshold,
                        std_dvars_threshold=options.dvars_threshold)


def parameters_hash(run: BoldRun, atlas_ids: list[str], options: ProcessingOptions) -> str:
    """Hash of everything that determines a run's outputs (inputs' size/mtime, options)."""
    stats = []
    for p in (run.bold, run.mask, run.confounds):
        try:
            st = os.stat(p)
            stats.append((os.path.basename(p), st.st_size, st.st_mtime_ns))
        except OSError:
            stats.append((os.path.basename(p), None, None))
    payload = json.dumps({"version": __version__, "options": options.to_dict(),
                          "atlases": atlas_ids, "tr": run.repetition_time, "files": stats},
                         sort_keys=True, default=str)
    return inputs_hash(payload)


def output_paths(run: BoldRun, atlas_name: str, output_dir: str | Path) -> dict[str, Path]:
    """Paths of every derivative of a run for one atlas (see :mod:`bidsfm.derivatives`)."""
    from .derivatives import run_output_paths

    return run_output_paths(run, atlas_name, output_dir)


def is_complete(paths: dict[str, Path], params_hash: str) -> bool:
    """True when a previous run wrote every output with the same parameters (resume)."""
    qc_json = paths["qc_json"]
    if not qc_json.is_file() or not paths["qc"].is_file():
        return False
    try:
        meta = json.loads(qc_json.read_text())
    except ValueError:
        return False
    if meta.get("ParametersHash") != params_hash:
        return False
    if meta.get("Status") == "skipped":
        return True
    if meta.get("Status") != "ok":
        return False
    return all(p.is_file() for k, p in paths.items() if not k.startswith("qc"))


def _fd(confounds_tsv: str, n_vol: int) -> np.ndarray:
    import pandas as pd

    try:
        frame = pd.read_csv(confounds_tsv, sep="\t", usecols=["framewise_displacement"],
                            na_values=["n/a"])
        fd = pd.to_numeric(frame["framewise_displacement"], errors="coerce").to_numpy(float)
    except (ValueError, KeyError):
        fd = np.full(n_vol, np.nan)
    return fd if fd.size == n_vol else np.full(n_vol, np.nan)


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _dvars_pct(raw: np.ndarray, residual: np.ndarray) -> tuple[float, float]:
    """Mean ROI-level DVARS before and after denoising, both in % of each ROI's mean signal."""
    from .denoising import dvars

    scale = np.abs(raw.mean(axis=0))
    scale = np.where(scale > 0, scale, 1.0) / 100.0
    return _nanmean(dvars(raw / scale)), _nanmean(dvars(residual / scale))


def process_run(run: BoldRun, options: ProcessingOptions, output_dir: str | Path, *,
                dataset_name: str = "preprocessed", atlases: list | None = None,
                mem_mb: int | None = None,
                atlas_index_dir: str | Path | None = None,
                figures: bool = True) -> list[RunResult]:
    """Process one BOLD run for every requested atlas and write its derivatives.

    Parameters
    ----------
    run : BoldRun
        The run (from :func:`bidsfm.discovery.collect_runs`).
    options : ProcessingOptions
        Denoising, censoring, parcellation options.
    output_dir : str or Path
        Root of the bidsfm derivatives dataset.
    dataset_name : str
        Name of the input dataset in ``DatasetLinks`` (for BIDS URIs in sidecars).
    atlases : list of Atlas, optional
        Already resolved atlases (resolved from ``options.atlases`` when omitted).
    mem_mb : int, optional
        Memory available (``--mem-mb``). A run whose estimated need
        (:func:`bidsfm.extract.estimate_memory_mb`) is larger fails before any data is read,
        with the figure to rerun with. Not part of the options: it does not change the outputs.
    atlas_index_dir : str or Path, optional
        Cache of atlases resampled onto run grids (``<work dir>/atlas_index``, see
        :func:`bidsfm.atlases.resample_labels`): runs on a grid an earlier run had read the
        atlas index from there. Not part of the options: it does not change the outputs.
    figures : bool
        Draw each atlas's placement on the run (``sub-X/figures/…_desc-placement_bold.png``,
        Pillow only); ``--no-figures`` turns it off. Not part of the options.

    Returns
    -------
    list of RunResult
        One per atlas. Input problems do not raise: they are recorded with status "error" and
        a one-line reason, in the result and in the run's QC table.
    """
    from .atlases import resolve_atlas
    from .derivatives import run_dir, write_atlas_dataset
    from .utils import remove_stale_temps

    label = run.prefix
    remove_stale_temps(run_dir(output_dir, run.entities), run.prefix)
    try:
        if atlases is None:
            atlases = [resolve_atlas(spec, space=run.space) for spec in options.atlases]
        atlas_ids = [f"{a.name}:{a.sha256 or a.source}" for a in atlases]
        phash = parameters_hash(run, atlas_ids, options)
        all_paths = {a.name: output_paths(run, a.name, output_dir) for a in atlases}
        for atlas in atlases:  # the atlases used, as a BIDS-Atlas dataset in the output
            write_atlas_dataset(output_dir, atlas, run.space)
        todo = [a for a in atlases if not is_complete(all_paths[a.name], phash)]
        results = [RunResult(label, a.name, "reused", "outputs complete from an earlier run",
                             [str(p) for p in all_paths[a.name].values()])
                   for a in atlases if a not in todo]
        if todo:
            results += _process(run, todo, options, all_paths, phash, dataset_name,
                                Path(output_dir), mem_mb=mem_mb,
                                atlas_index_dir=atlas_index_dir, figures=figures)
        return results
    except BidsfmError as err:
        if err.path is None:  # e.g. a filter error: name the run it happened on
            err.path = run.bold
        message = err.one_line()
    except OSError as exc:  # a full or read-only output folder, an unreadable file
        from .errors import os_error_line

        message = os_error_line(exc, output_dir, run.bold)
    except Exception as exc:  # an unexpected failure still must not stop other runs
        LOGGER.exception("internal error while processing %s", run.bold)
        message = (f"{run.bold}: internal error ({type(exc).__name__}: {exc}). Please report "
                   "this with the crash log")
    LOGGER.error("%s", message)
    if atlases:
        names = [a.name for a in atlases]
    else:  # never a raw spec in a file name (``X=../../x.nii.gz`` would escape the output)
        from .atlases import atlas_label

        names = [n for n in (atlas_label(s) for s in options.atlases) if n]
    out = []
    for name in names:
        paths = output_paths(run, name, output_dir)
        _write_failure(paths, run, name, message, options)
        out.append(RunResult(label, name, "error", message))
    return out


def _qc_row(**values: Any) -> dict[str, Any]:
    """One QC row; a column without a value (e.g. mean_fd of a failed run) is ``n/a``."""
    return {c: "n/a" if values.get(c) in (None, "") else values[c] for c in QC_COLUMNS}


def _write_qc(paths: dict[str, Path], row: dict[str, Any], meta: dict[str, Any]) -> None:
    import pandas as pd

    from .utils import write_frame_atomic

    write_frame_atomic(paths["qc"], pd.DataFrame([row], columns=QC_COLUMNS), na_rep="n/a",
                       float_format="%.6g")
    write_json_atomic(paths["qc_json"], meta)


def _write_failure(paths: dict[str, Path], run: BoldRun, atlas_name: str, message: str,
                   options: ProcessingOptions) -> None:
    """Record a failed run in its QC table; remove stale outputs of an earlier attempt."""
    from .derivatives import remove_model_outputs

    for key, p in paths.items():
        if not key.startswith("qc") and p.exists():
            p.unlink()
    remove_model_outputs(paths["qc"], placement=True)
    row = _qc_row(status="error", reason=message, atlas=atlas_name, space=run.space,
                  repetition_time=run.repetition_time,
                  repetition_time_source=run.repetition_time_source)
    try:
        _write_qc(paths, row, {"Status": "error", "Reason": message,
                               "Options": options.to_dict()})
    except OSError as exc:  # e.g. a full disk: one line, the run's error is logged already
        LOGGER.error("%s: its QC table could not be written either (%s)", run.bold,
                     exc.strerror or exc)


def _process(run: BoldRun, atlases: list, options: ProcessingOptions,
             all_paths: dict[str, dict[str, Path]], phash: str, dataset_name: str,
             output_dir: Path, mem_mb: int | None = None,
             atlas_index_dir: str | Path | None = None,
             figures: bool = True) -> list[RunResult]:
    from .atlases import place_atlas
    from .denoising import clean_signals, load_confounds
    from .extract import (
        estimate_memory_mb,
        extract_roi_signals,
        load_mask,
        open_bold,
    )

    img = open_bold(run.bold)
    n_vol = int(img.shape[3])
    if mem_mb:
        n_rois = sum(a.n_rois for a in atlases)
        need = estimate_memory_mb(img.shape, n_rois)
        if need > mem_mb:
            raise InputDataError(
                f"processing this run needs about {need} MB (BOLD {tuple(img.shape)}, {n_rois} "
                f"ROIs) but --mem-mb is {mem_mb}", path=run.bold,
                remedy=f"Rerun with --mem-mb >= {need} on a node with that much memory")
    strategy = _strategy(options)
    sel = load_confounds(run.confounds, strategy, n_volumes=n_vol,
                         dummy_scans=options.dummy_scans, confounds_json=run.confounds_json)
    tr = run.repetition_time
    retained = np.asarray(sel.sample_mask)
    fd = _fd(run.confounds, n_vol)
    nondummy = np.setdiff1d(np.arange(n_vol), np.asarray(sel.dummy))
    base = {"space": run.space, "repetition_time": tr, "n_volumes": n_vol,
            "n_dummy": len(sel.dummy), "n_censored": len(sel.censored),
            "n_retained": retained.size, "retained_seconds": round(retained.size * tr, 3),
            "mean_fd": _nanmean(fd[nondummy]), "max_fd": float(np.nanmax(fd[nondummy]))
            if np.isfinite(fd[nondummy]).any() else float("nan"),
            "min_coverage": options.min_coverage,
            "repetition_time_source": run.repetition_time_source}
    meta_common = {"ParametersHash": phash, "BidsfmVersion": __version__,
                   "Options": options.to_dict(), "Strategy": strategy.to_dict(),
                   "Sources": [bids_uri(dataset_name, run.relpaths.get(k, v)) for k, v in
                               (("bold", run.bold), ("mask", run.mask),
                                ("confounds", run.confounds))]}

    if retained.size * tr < options.min_time:
        reason = (f"only {retained.size * tr:.1f} s of data retained after dummy-scan removal "
                  f"and censoring ({retained.size} volumes x {tr} s), below --min-time "
                  f"{options.min_time:g} s")
        LOGGER.warning("%s: skipped: %s", run.bold, reason)
        out = []
        for atlas in atlases:
            paths = all_paths[atlas.name]
            for key, p in paths.items():
                if not key.startswith("qc") and p.exists():
                    p.unlink()
            from .derivatives import remove_model_outputs

            remove_model_outputs(paths["qc"], placement=True)  # of an earlier, longer run
            _write_qc(paths, _qc_row(status="skipped", reason=reason, atlas=atlas.name, **base),
                      {**meta_common, "Status": "skipped", "Reason": reason})
            out.append(RunResult(run.prefix, atlas.name, "skipped", reason))
        return out

    mask = load_mask(run.mask, img.affine, img.shape)
    projections, transforms = [], []
    for atlas in atlases:  # on the run's grid, the placement checked (atlases.check_placement)
        projection, info = place_atlas(atlas, img.affine, tuple(img.shape[:3]), mask,
                                       target_space=run.space, cache_dir=atlas_index_dir)
        projections.append(projection)
        transforms.append(info)
        if figures and getattr(projection, "labels", None) is not None:
            from .derivatives import placement_figure_path
            from .reports.placement import write_placement_figure

            try:  # a picture must never fail the run
                write_placement_figure(placement_figure_path(run, atlas.name, output_dir),
                                       projection.labels, mask, img.affine)
            except Exception as exc:  # noqa: BLE001
                LOGGER.warning("%s: atlas placement figure not drawn (%s: %s)", run.bold,
                               type(exc).__name__, exc)
    raw_all = extract_roi_signals(run.bold, mask, projections, img=img)

    results = []
    computed = []
    for atlas, proj, info, raw in zip(atlases, projections, transforms, raw_all, strict=True):
        coverage = proj.coverage
        low = coverage < options.min_coverage
        raw = raw.copy()
        raw[:, low] = np.nan
        kwargs = {"t_r": tr, "confounds": sel.confounds, "sample_mask": retained,
                  "detrend": options.detrend, "low_pass": options.upper_bpf,
                  "high_pass": options.lower_bpf,
                  "roi_names": atlas.labels["name"].astype(str).tolist()}  # for errors
        cleaned = clean_signals(raw, standardize=options.standardize, **kwargs)
        # residuals in the input's units, for DVARS before/after in % of the ROI mean
        residual = (cleaned if options.standardize is None
                    else clean_signals(raw, standardize=None, **kwargs))
        computed.append((atlas, proj, info, raw, cleaned, coverage, low, residual))

    from .connectivity import fisher_z, pearson_fc
    from .derivatives import write_coverage, write_tsv_atomic

    for atlas, _proj, info, raw, cleaned, coverage, low, residual in computed:
        paths = all_paths[atlas.name]
        names = atlas.labels["name"].astype(str).tolist()
        fc = pearson_fc(cleaned)
        valid = ~low
        before, after = _dvars_pct(raw[retained][:, valid], residual[:, valid])
        atlas_meta = {"Name": atlas.name, "Source": atlas.source, "SHA256": atlas.sha256,
                      "Template": atlas.template, "Transform": info}
        ts_meta = {
            **meta_common,
            "SamplingFrequency": 1.0 / tr, "RepetitionTime": tr,
            "RepetitionTimeSource": run.repetition_time_source,
            "Atlas": atlas_meta,
            "ConfoundsUsed": list(sel.columns_used),
            "DummyVolumes": [int(i) for i in sel.dummy],
            "CensoredVolumes": [int(i) for i in sel.censored],
            "RetainedVolumes": [int(i) for i in retained],
            "LowCoverageROIs": [n for n, bad in zip(names, low, strict=True) if bad],
            "Denoising": {"Detrend": options.detrend, "Standardize": options.standardize,
                          "HighPassHz": options.lower_bpf, "LowPassHz": options.upper_bpf},
            "Description": "Denoised mean ROI time series; rows are the retained volumes "
                           "(dummy and censored volumes removed), columns are ROIs; n/a marks "
                           "ROIs below the coverage threshold.",
        }
        write_tsv_atomic(paths["timeseries"], cleaned, names)
        write_json_atomic(paths["timeseries_json"], ts_meta)
        write_coverage(paths["coverage"], names, coverage)
        write_tsv_atomic(paths["fc"], fc, names, index=names)
        write_tsv_atomic(paths["fcz"], fisher_z(fc), names, index=names)
        ts_uri = bids_uri("", paths["timeseries"].relative_to(output_dir).as_posix())
        relmat_meta = {  # BEP017 relationship-matrix keys, as XCP-D writes them
            "Weighted": True, "Directed": False, "ValidDiagonal": False,
            "StorageFormat": "Full", "NodeFile": paths["timeseries"].name,
            "NumberOfVolumesUsed": int(len(retained)), "Atlas": atlas_meta,
            "Sources": [ts_uri]}
        write_json_atomic(paths["fc_json"], {
            **meta_common, "RelationshipMeasure": "Pearson correlation coefficient",
            **relmat_meta, "FisherZ": paths["fcz"].name})
        write_json_atomic(paths["fcz_json"], {
            **meta_common, "RelationshipMeasure": "Fisher z-transformed Pearson correlation "
            "coefficient (arctanh(r))", **relmat_meta})
        row = _qc_row(status="ok", atlas=atlas.name, mean_dvars_before=before,
                      mean_dvars_after=after, n_rois=len(names),
                      n_rois_low_coverage=int(low.sum()),
                      low_coverage_rois=",".join(n for n, b in zip(names, low, strict=True) if b),
                      atlas_transform=info.get("Method", ""), **base)
        _write_qc(paths, row, {**meta_common, "Status": "ok", "Atlas": atlas_meta,
                               "Outputs": [p.name for k, p in paths.items()
                                           if not k.startswith("qc")]})
        results.append(RunResult(run.prefix, atlas.name, "ok", "",
                                 [str(p) for p in paths.values()]))
    return results
