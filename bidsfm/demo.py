"""Synthetic but realistic fMRIPrep derivatives, for the demo command, tests and benchmarks.

:func:`make_fmriprep_dataset` writes a small fMRIPrep-style derivatives tree: preprocessed BOLD
runs in MNI152NLin2009cAsym space with real NIfTI headers, brain masks, confounds TSV/JSON files
with fMRIPrep's column names (motion, tissue signals, DVARS, CompCor, cosine basis, outliers),
``participants.tsv`` and ``dataset_description.json``.

Signal model (per voxel, per volume)::

    x = baseline * (1 + non-steady-state + drift + ROI signal + global signal
                      + motion artefacts) + white noise

ROI signals are drawn from a multivariate normal with a realistic ROI covariance (the mean
Pearson FC of 100 ABIDE participants on CC200, shipped with the package as
``bidsfm/data/demo/cc200_abide_mean_fc.npy`` beside the bundled CC200 atlas, so no shared data
or network is needed; or, on request, a procedural parcellation and network covariance) and
smoothed in time (AR(1) with a time constant in seconds, so the spectrum does not depend on TR).
Everything the generator used to build a run that a real dataset would not have (the ROI label
image on the run grid and the target ROI correlation matrix) is written under
``sourcedata/bidsfm-demo/`` (ignored by BIDS tools) and listed in the returned manifest.

Images are streamed to disk volume by volume (gzip with mtime 0, so the bytes are reproducible),
so the full-size 2 mm preset needs memory for the in-mask time series only.
"""

from __future__ import annotations

import csv
import functools
import gzip
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bidsfm.utils import atomic_path, write_json_atomic, write_text_atomic

__all__ = [
    "SIZES",
    "BUNDLED_TARGET_FC",
    "abide_target_corr",
    "build_anatomy",
    "bundled_target_corr",
    "cosine_basis",
    "grid_for_voxel_size",
    "main",
    "make_fmriprep_dataset",
    "resolve_shared_data",
    "write_bundled_target_corr",
]

#: Field of view (mm) and origin (mm, centre of voxel 0,0,0) of TemplateFlow's
#: MNI152NLin2009cAsym res-2 grid (97 x 115 x 97 voxels at 2 mm).
FOV_MM = (194.0, 230.0, 194.0)
ORIGIN_MM = (-96.0, -132.0, -78.0)
FMRIPREP_VERSION = "24.1.1"
DEMO_DIR = Path("sourcedata") / "bidsfm-demo"
#: Upper triangle (``np.triu_indices(200, 1)`` order, float16) of the mean CC200 Pearson FC of
#: 100 ABIDE participants (:func:`abide_target_corr`); regenerate with
#: :func:`write_bundled_target_corr`. Provenance: ``bidsfm/data/demo/SOURCES.md``.
BUNDLED_TARGET_FC = Path(__file__).resolve().parent / "data" / "demo" / "cc200_abide_mean_fc.npy"
#: Parcellations the generator can plant signals in.
DEMO_ATLASES = ("CC200", "procedural")

# Relative baseline intensity and noise (fraction of baseline) per tissue class.
_TISSUE_BASE = {"gm": 1.0, "wm": 0.85, "csf": 1.3, "scalp": 0.35}
_TISSUE_NOISE = {"gm": 0.012, "wm": 0.010, "csf": 0.020, "scalp": 0.030}
_NSS_BOOST = (0.6, 0.3, 0.15)  # extra brightness of the first non-steady-state volumes


# --------------------------------------------------------------------------------------------
# Dataset specification
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One BOLD run to generate."""

    session: str | None
    task: str
    run: int | None
    n_volumes: int
    n_nss: int
    motion: str  # "low", "spikes" or "heavy"


@dataclass(frozen=True)
class SubjectSpec:
    """One participant to generate."""

    label: str
    site: str
    diagnosis: str
    age: float
    sex: str
    repetition_time: float
    fov_cut: bool
    runs: tuple[RunSpec, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class SizePreset:
    """Grid and run-length settings of a size preset."""

    voxel_size: float
    volumes: dict[str, int]  # per site template ("A", "B", "C", "nback")
    n_subjects: int


SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(6.0, {"A": 80, "B": 90, "C": 100, "nback": 70}, 3),
    "small": SizePreset(4.0, {"A": 150, "B": 160, "C": 180, "nback": 140}, 3),
    "full": SizePreset(2.0, {"A": 300}, 1),
}

_SITES = {"A": ("siteA", 2.0), "B": ("siteB", 1.5), "C": ("siteC", 0.8)}


def _subject_specs(size: str, n_subjects: int, seed: int, n_volumes: int | None = None
                   ) -> list[SubjectSpec]:
    """Build the participant/run list of a size preset (``n_volumes`` overrides run lengths)."""
    preset = SIZES[size]
    vols = preset.volumes if n_volumes is None else dict.fromkeys(preset.volumes, n_volumes)
    rng = np.random.default_rng([seed, 7919])
    specs = []
    for i in range(n_subjects):
        label = f"{i + 1:02d}"
        templ = "ABC"[i % 3]
        site, tr = _SITES[templ]
        diagnosis = ("ASD", "TC")[i % 2]
        age = round(float(rng.uniform(7.0, 40.0)), 1)
        sex = "M" if rng.random() < 0.7 else "F"
        if size == "full":
            runs: tuple[RunSpec, ...] = (RunSpec(None, "rest", 1, vols["A"], 2, "spikes"),)
            fov_cut = False
        elif templ == "A":
            runs = (
                RunSpec("1", "rest", 1, vols["A"], 2, "low"),
                RunSpec("1", "rest", 2, vols["A"], 0, "spikes"),
                RunSpec("2", "rest", 1, vols["A"], 1, "low"),
            )
            fov_cut = False
        elif templ == "B":
            runs = (
                RunSpec(None, "rest", 1, vols["B"], 3, "spikes"),
                RunSpec(None, "nback", None, vols["nback"], 1, "low"),
            )
            fov_cut = True
        else:
            runs = (
                RunSpec(None, "rest", 1, vols["C"], 2, "spikes"),
                RunSpec(None, "rest", 2, vols["C"], 0, "heavy"),
            )
            fov_cut = False
        specs.append(SubjectSpec(label, site, diagnosis, age, sex, tr, fov_cut, runs))
    return specs


# --------------------------------------------------------------------------------------------
# Grids, atlases and tissue classes
# --------------------------------------------------------------------------------------------


def grid_for_voxel_size(voxel_size: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Return the MNI152NLin2009cAsym-like grid (shape, affine) for an isotropic voxel size.

    Parameters
    ----------
    voxel_size : float
        Voxel edge length in mm.

    Returns
    -------
    shape : tuple of int
        Grid shape covering the 194 x 230 x 194 mm field of view (97 x 115 x 97 at 2 mm).
    affine : numpy.ndarray
        4 x 4 RAS affine with ``diag(v, v, v)`` and origin (-96, -132, -78) mm.
    """
    shape = tuple(int(math.ceil(f / voxel_size - 1e-6)) for f in FOV_MM)
    affine = np.diag([voxel_size, voxel_size, voxel_size, 1.0])
    affine[:3, 3] = ORIGIN_MM
    return shape, affine  # type: ignore[return-value]


def _world_coords(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """Return world coordinates (mm) of every voxel centre, shape ``shape + (3,)``."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def resolve_shared_data(shared_data: str | Path | None = None) -> Path | None:
    """Locate the shared data directory (argument, ``$BIDSFM_SHARED_DATA``, or ../shared/data).

    The generator does not need it (the atlas and the target FC ship with the package); it is
    used to recompute the target FC from the ABIDE series (:func:`abide_target_corr`) and by
    tests and benchmarks.

    Parameters
    ----------
    shared_data : str or Path, optional
        Explicit directory. When given, it is used if it exists and never replaced by a default.

    Returns
    -------
    Path or None
        The directory if it holds ``atlases/CC200.nii.gz`` and the ABIDE time series, else None.
    """
    from .utils import shared_data_dir

    cand = shared_data_dir(shared_data)
    needed = [cand / "atlases" / "CC200.nii.gz", cand / "abide" / "cc200_timeseries.npz",
              cand / "abide" / "participants.tsv"]
    return cand.resolve() if all(p.is_file() for p in needed) else None


def _resample_nearest(data: np.ndarray, src_affine: np.ndarray, shape: Sequence[int],
                      affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a 3D volume onto a grid (world coordinates)."""
    xyz = _world_coords(shape, affine).reshape(-1, 3).astype(np.float64)
    ijk = np.rint(xyz @ np.linalg.inv(src_affine)[:3, :3].T
                  + np.linalg.inv(src_affine)[:3, 3]).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(data.shape)), axis=1)
    out = np.zeros(len(xyz), dtype=data.dtype)
    out[inside] = data[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]
    return out.reshape(tuple(shape))


def _fill_interior(labels_mask: np.ndarray, radius: int) -> np.ndarray:
    """Close a grey-matter shell and fill it, giving a brain (GM + WM + ventricles) mask."""
    from scipy import ndimage as ndi

    struct = ndi.generate_binary_structure(3, 1)
    pad = radius + 1
    padded = np.pad(labels_mask, pad)
    closed = ndi.binary_closing(padded, struct, iterations=radius)[pad:-pad, pad:-pad, pad:-pad]
    filled = ndi.binary_fill_holes(closed | labels_mask)
    # also fill holes slice by slice (the shell is open at the bottom of the brain)
    for axis in range(3):
        filled = filled | np.stack(
            [ndi.binary_fill_holes(s) for s in np.moveaxis(filled, axis, 0)], axis=axis)
    return filled


@dataclass(frozen=True)
class Anatomy:
    """Label image, tissue classes and target ROI correlation on one grid."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    labels: np.ndarray  # int16, 0 = background
    brain: np.ndarray  # bool, GM + WM + CSF (before the 1-voxel dilation)
    mask: np.ndarray  # bool, dilated brain (the fMRIPrep brain mask)
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    head: np.ndarray  # bool, everything with non-zero signal (brain + scalp)
    roi_names: tuple[str, ...]
    target_corr: np.ndarray  # (R, R) correlation matrix of ROI signals
    atlas: str  # "CC200" or "procedural"


def _cc200_file(shared_dir: str | None) -> Path:
    """The CC200 image: the package's verified copy, else the shared data's, else an error."""
    from bidsfm.atlases import bundled_image

    bundled = bundled_image("CC200")
    if bundled is not None:
        return bundled
    if shared_dir is not None and (Path(shared_dir) / "atlases" / "CC200.nii.gz").is_file():
        return Path(shared_dir) / "atlases" / "CC200.nii.gz"
    raise FileNotFoundError(
        "the bundled CC200 atlas (bidsfm/data/atlases/CC200.nii.gz) is missing or corrupt: "
        "reinstall bidsfm, or use --atlas procedural")


@functools.lru_cache(maxsize=4)
def _cc200_reference(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Load CC200 and derive a brain mask on its own 3 mm grid (cached)."""
    import nibabel as nib

    img = nib.load(path)
    lab = np.asarray(img.dataobj).astype(np.int16)
    brain = _fill_interior(lab > 0, radius=4)
    names: tuple[str, ...] = tuple(f"CC200_{i:03d}" for i in range(1, int(lab.max()) + 1))
    tsv = Path(path).with_name("CC200.tsv")
    if tsv.is_file():
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if len(rows) == len(names) and all("name" in r for r in rows):
            names = tuple(r["name"] for r in sorted(rows, key=lambda r: int(r["index"])))
    return lab, brain, img.affine.copy(), names


def _nearest_pd_corr(c: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Symmetrise, floor the eigenvalues and rescale to a unit-diagonal correlation matrix."""
    c = (c + c.T) / 2
    w, v = np.linalg.eigh(c)
    c = (v * np.maximum(w, floor)) @ v.T
    d = np.sqrt(np.diag(c))
    c = c / np.outer(d, d)
    np.fill_diagonal(c, 1.0)
    return c


@functools.lru_cache(maxsize=2)
def abide_target_corr(shared_dir: str, n_participants: int = 100) -> np.ndarray:
    """Mean Pearson FC (CC200) over a fixed subset of good-quality ABIDE participants.

    Parameters
    ----------
    shared_dir : str
        The shared data directory (holding ``abide/``).
    n_participants : int
        How many participants (with ``pcp_qc_pass == 1`` and ``zero_rois == 0``, sorted by id,
        evenly spaced) to average.

    Returns
    -------
    numpy.ndarray
        (200, 200) positive-definite correlation matrix (read-only).
    """
    abide = Path(shared_dir) / "abide"
    with open(abide / "participants.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ok = sorted(r["participant_id"] for r in rows
                if r.get("pcp_qc_pass") == "1" and r.get("zero_rois") == "0")
    pick = [ok[i] for i in np.unique(np.linspace(0, len(ok) - 1, n_participants).round()
                                     .astype(int))]
    acc = None
    with np.load(abide / "cc200_timeseries.npz") as npz:
        for pid in pick:
            ts = npz[pid].astype(np.float64)
            c = np.corrcoef(ts.T)
            acc = c if acc is None else acc + c
    corr = _nearest_pd_corr(acc / len(pick))
    corr.setflags(write=False)
    return corr


@functools.lru_cache(maxsize=1)
def bundled_target_corr() -> np.ndarray:
    """The mean ABIDE CC200 FC shipped with the package (no shared data needed).

    Returns
    -------
    numpy.ndarray
        (200, 200) positive-definite correlation matrix (read-only); equal to
        ``abide_target_corr(shared_dir)`` within float16 rounding (< 3e-4).
    """
    upper = np.load(BUNDLED_TARGET_FC, allow_pickle=False).astype(np.float64)
    n = int(round((1 + math.sqrt(1 + 8 * upper.size)) / 2))
    if n * (n - 1) // 2 != upper.size:
        raise ValueError(f"{BUNDLED_TARGET_FC}: {upper.size} values are no upper triangle")
    corr = np.eye(n)
    iu = np.triu_indices(n, 1)
    corr[iu] = upper
    corr.T[iu] = upper
    corr = _nearest_pd_corr(corr)
    corr.setflags(write=False)
    return corr


def write_bundled_target_corr(shared_dir: str | Path, path: str | Path = BUNDLED_TARGET_FC
                              ) -> Path:
    """Recompute the bundled target FC from the ABIDE series (maintainers only).

    Parameters
    ----------
    shared_dir : str or Path
        Shared data directory holding ``abide/cc200_timeseries.npz`` and ``participants.tsv``.
    path : str or Path
        Where to write the ``.npy`` (default: the package's copy).

    Returns
    -------
    Path
        The file written (upper triangle, float16, about 40 kB).
    """
    corr = abide_target_corr(str(shared_dir))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, corr[np.triu_indices(corr.shape[0], 1)].astype(np.float16),
                    allow_pickle=False)
    return path


def _procedural_labels(coords: np.ndarray, seed: int, n_parcels: int = 100
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ellipsoidal brain with a grey-matter shell split into parcels by nearest seed point.

    Returns labels (int16 volume), brain (bool volume) and a network index per parcel.
    """
    centre = np.array([0.0, -18.0, 8.0])
    radii = np.array([68.0, 86.0, 64.0])
    r = np.sqrt((((coords - centre) / radii) ** 2).sum(-1))
    brain = r <= 1.0
    shell = brain & (r >= 0.72)
    rng = np.random.default_rng([seed, 104729])
    # seeds: random points in the shell (uniform direction, radius in [0.75, 0.97])
    dirs = rng.standard_normal((n_parcels, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    seeds = centre + dirs * radii * rng.uniform(0.75, 0.97, (n_parcels, 1))
    # order parcels by x then y so that labels have a stable, readable order
    seeds = seeds[np.lexsort((seeds[:, 1], np.sign(seeds[:, 0])))]
    labels = np.zeros(brain.shape, dtype=np.int16)
    pts = coords[shell].reshape(-1, 3)
    nearest = np.empty(len(pts), dtype=np.int64)
    for start in range(0, len(pts), 20000):
        chunk = pts[start:start + 20000]
        d2 = ((chunk[:, None, :] - seeds[None].astype(np.float32)) ** 2).sum(-1)
        nearest[start:start + 20000] = np.argmin(d2, axis=1)
    labels[shell] = nearest.astype(np.int16) + 1
    # networks: bilateral, spatially coherent groups (nearest of 7 centres in |x|, y, z)
    mirrored = seeds.copy()
    mirrored[:, 0] = np.abs(mirrored[:, 0])
    net_centres = mirrored[rng.choice(n_parcels, 7, replace=False)]
    network = np.argmin(((mirrored[:, None, :] - net_centres[None]) ** 2).sum(-1), axis=1)
    return labels, brain, network


def _procedural_corr(network: np.ndarray, seed: int) -> np.ndarray:
    """Block (network) correlation matrix with some parcel-level variation."""
    rng = np.random.default_rng([seed, 15485863])
    n_net = int(network.max()) + 1
    between = rng.uniform(-0.1, 0.25, (n_net, n_net))
    between = (between + between.T) / 2
    np.fill_diagonal(between, rng.uniform(0.4, 0.65, n_net))
    c = between[network][:, network]
    noise = rng.normal(0.0, 0.05, c.shape)
    c = c + (noise + noise.T) / 2
    np.fill_diagonal(c, 1.0)
    return _nearest_pd_corr(c)


@functools.lru_cache(maxsize=8)
def build_anatomy(voxel_size: float, shared_dir: str | None = None, seed: int = 0,
                  atlas: str = "CC200") -> Anatomy:
    """Label image, tissue classes and target ROI correlation for a grid (cached).

    Parameters
    ----------
    voxel_size : float
        Isotropic voxel size (mm) of the MNI152NLin2009cAsym-like grid.
    shared_dir : str or None
        Shared data directory: when it holds the ABIDE series, the CC200 target FC is
        recomputed from them (:func:`abide_target_corr`) instead of read from the package's
        copy (:func:`bundled_target_corr`). Not needed.
    seed : int
        Seed of the procedural parcellation (unused with CC200).
    atlas : {"CC200", "procedural"}
        CC200 (the package's copy) with the mean ABIDE FC, or a procedural parcellation of an
        ellipsoidal brain with a procedural network covariance.

    Returns
    -------
    Anatomy
        Arrays are read-only.
    """
    from scipy import ndimage as ndi

    shape, affine = grid_for_voxel_size(voxel_size)
    coords = _world_coords(shape, affine)
    if atlas not in DEMO_ATLASES:
        raise ValueError(f"atlas must be one of {DEMO_ATLASES}, not {atlas!r}")
    if atlas == "CC200":
        ref_lab, ref_brain, ref_aff, names = _cc200_reference(str(_cc200_file(shared_dir)))
        labels = _resample_nearest(ref_lab, ref_aff, shape, affine)
        brain = _resample_nearest(ref_brain.astype(np.uint8), ref_aff, shape, affine) > 0
        abide = None if shared_dir is None else Path(shared_dir) / "abide"
        if abide is not None and (abide / "cc200_timeseries.npz").is_file() and (
                abide / "participants.tsv").is_file():
            corr = abide_target_corr(str(shared_dir))
        else:
            corr = bundled_target_corr()
    else:
        labels, brain, network = _procedural_labels(coords, seed)
        corr = _procedural_corr(network, seed)
        names = tuple(f"parcel_{i:03d}" for i in range(1, corr.shape[0] + 1))
        atlas = "procedural"
    brain |= labels > 0
    struct = ndi.generate_binary_structure(3, 1)
    mask = ndi.binary_dilation(brain, struct)
    gm = labels > 0
    # ventricles: two ellipsoids either side of the midline (world coordinates)
    ventricles = np.zeros(shape, dtype=bool)
    for x0 in (-14.0, 14.0):
        d = ((coords - np.array([x0, -8.0, 14.0])) / np.array([9.0, 24.0, 10.0])) ** 2
        ventricles |= d.sum(-1) <= 1.0
    rim = mask & ~brain
    csf = (rim | (ventricles & brain)) & ~gm
    wm = brain & ~gm & ~csf
    # scalp/skull: a ~12 mm shell around the brain mask
    dist = ndi.distance_transform_edt(~mask, sampling=(voxel_size,) * 3)
    head = mask | (dist <= 12.0)
    anat = Anatomy(shape, affine, labels.astype(np.int16), brain, mask, gm, wm, csf, head,
                   tuple(names), np.asarray(corr), atlas)
    for arr in (anat.affine, anat.labels, anat.brain, anat.mask, anat.gm, anat.wm, anat.csf,
                anat.head):
        arr.setflags(write=False)
    return anat


# --------------------------------------------------------------------------------------------
# NIfTI streaming writer
# --------------------------------------------------------------------------------------------


def _nifti_header(shape: Sequence[int], affine: np.ndarray, dtype: np.dtype,
                  tr: float | None, slope: float | None, space_code: int) -> Any:
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(tuple(shape))
    zooms = list(np.sqrt((affine[:3, :3] ** 2).sum(0)))
    if len(shape) == 4:
        zooms.append(float(tr))
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_qform(affine, code=space_code)
    hdr.set_sform(affine, code=space_code)
    hdr.set_slope_inter(1.0 if slope is None else slope, 0.0)
    hdr["descrip"] = b"bidsfm-demo synthetic fMRIPrep output"
    hdr["vox_offset"] = 352
    return hdr


class _NiftiStream:
    """Write a NIfTI-1 file volume by volume (gzip with mtime 0 when compressed)."""

    def __init__(self, fileobj: BinaryIO, compress: bool):
        self._raw = fileobj
        if compress:
            try:
                from isal import igzip

                self._f: BinaryIO = igzip.GzipFile(filename="", mode="wb", fileobj=fileobj,
                                                   compresslevel=1, mtime=0)
            except ImportError:  # pragma: no cover - isal is a dependency
                self._f = gzip.GzipFile(filename="", mode="wb", fileobj=fileobj,
                                        compresslevel=1, mtime=0)
        else:
            self._f = fileobj

    def write_header(self, hdr: Any) -> None:
        self._f.write(hdr.binaryblock)
        self._f.write(b"\x00" * 4)  # no extensions; data start at vox_offset 352

    def write_volume(self, vol: np.ndarray) -> None:
        vol = np.asarray(vol)
        if vol.flags.f_contiguous:
            self._f.write(memoryview(vol.reshape(-1, order="F")))
        else:
            self._f.write(vol.tobytes(order="F"))

    def close(self) -> None:
        if self._f is not self._raw:
            self._f.close()


def _write_nifti(path: Path, data: np.ndarray | None, affine: np.ndarray, *, compress: bool,
                 space_code: int, shape4d: Sequence[int] | None = None, tr: float | None = None,
                 dtype: np.dtype | None = None, slope: float | None = None,
                 volumes: Iterator[np.ndarray] | None = None) -> None:
    """Write a 3D array, or a 4D image from an iterator of 3D volumes, atomically."""
    if data is not None:
        shape, dtype = data.shape, data.dtype
        volumes = iter([data])
    else:
        shape = tuple(shape4d)  # type: ignore[arg-type]
    hdr = _nifti_header(shape, affine, np.dtype(dtype), tr, slope, space_code)
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        stream = _NiftiStream(raw, compress)
        try:
            stream.write_header(hdr)
            for vol in volumes:  # type: ignore[union-attr]
                stream.write_volume(vol)
        finally:
            stream.close()


# --------------------------------------------------------------------------------------------
# Time courses
# --------------------------------------------------------------------------------------------


def _ar1(x: np.ndarray, phi: float) -> np.ndarray:
    """Unit-variance AR(1) filtering along axis 0, started in the stationary state."""
    b0 = math.sqrt(1.0 - phi**2)
    y = np.empty_like(x, dtype=np.float64)
    y[0] = x[0]
    for t in range(1, len(x)):
        y[t] = phi * y[t - 1] + b0 * x[t]
    return y


def _motion(rng: np.random.Generator, n: int, kind: str, nss: int
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random-walk motion parameters (mm, rad) with optional spikes; returns params, FD, RMSD."""
    scale = {"low": 1.0, "spikes": 1.0, "heavy": 4.0}[kind]
    steps = np.empty((n, 6))
    steps[:, :3] = rng.normal(0.0, 0.012 * scale, (n, 3))
    steps[:, 3:] = rng.normal(0.0, 0.00018 * scale, (n, 3))
    steps[0] = 0.0
    n_events = {"low": 0, "spikes": int(rng.integers(3, 6)), "heavy": int(rng.integers(10, 16))}
    n_ev = n_events[kind]
    if n_ev:
        lo = max(nss, 1) + 2
        times = rng.choice(np.arange(lo, n - 2), size=min(n_ev, n - 2 - lo), replace=False)
        for t in times:
            jump = np.concatenate([rng.normal(0.0, 0.35, 3), rng.normal(0.0, 0.005, 3)])
            steps[t] += jump
            steps[t + 1] -= jump * rng.uniform(0.6, 1.0)  # the subject mostly moves back
    params = np.cumsum(steps, axis=0)
    params[:, :3] += rng.normal(0.0, 0.2, 3)  # offset from the reference volume
    params[:, 3:] += rng.normal(0.0, 0.003, 3)
    d = np.diff(params, axis=0, prepend=params[:1])
    fd = np.abs(d[:, :3]).sum(1) + 50.0 * np.abs(d[:, 3:]).sum(1)
    # relative RMS displacement (Jenkinson 1999, small-angle, 80 mm sphere)
    rmsd = np.sqrt((d[:, :3] ** 2).sum(1) + 0.2 * 80.0**2 * (d[:, 3:] ** 2).sum(1))
    fd[0] = np.nan
    rmsd[0] = np.nan
    return params, fd, rmsd


@dataclass
class _RunResult:
    mask_ts: np.ndarray  # (T, n_mask) float32 data inside the brain mask
    params: np.ndarray
    fd: np.ndarray
    rmsd: np.ndarray
    nss: int
    n_volumes: int


def _random_field(coords: np.ndarray, rng: np.random.Generator, wavelength: float) -> np.ndarray:
    """A smooth random field (zero mean, unit variance): four plane cosine waves."""
    out = np.zeros(coords.shape[:-1], dtype=np.float32)
    for _ in range(4):
        k = rng.normal(0.0, 1.0 / (wavelength * math.sqrt(3.0)), 3)
        out += np.cos(2 * np.pi * (coords @ k) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out / np.float32(math.sqrt(2.0))


def _simulate_run(path: Path, anat: Anatomy, spec: RunSpec, subj: SubjectSpec,
                  rng: np.random.Generator, *, dtype: str, compress: bool, space_code: int,
                  cut_z: float | None) -> _RunResult:
    """Generate one run, stream it to ``path`` and return what the confounds need."""
    n, tr = spec.n_volumes, subj.repetition_time
    shape = anat.shape
    coords = _world_coords(shape, anat.affine)
    keep = np.ones(shape, dtype=bool) if cut_z is None else coords[..., 2] <= cut_z
    head = anat.head & keep
    idx = np.flatnonzero(head)  # C-order flat indices of voxels with signal
    nv = idx.size
    flat = {k: getattr(anat, k).ravel()[idx] for k in ("gm", "wm", "csf", "mask")}
    base_rel = np.array([_TISSUE_BASE[t] for t in ("gm", "wm", "csf", "scalp")], np.float32)
    noise_rel = np.array([_TISSUE_NOISE[t] for t in ("gm", "wm", "csf", "scalp")], np.float32)
    tcode = np.full(nv, 3, dtype=np.int8)
    tcode[flat["csf"]] = 2
    tcode[flat["wm"]] = 1
    tcode[flat["gm"]] = 0

    xyz = coords.reshape(-1, 3)[idx]
    bias = 1.0 + 0.09 * _random_field(xyz, rng, 60.0)  # grey matter ~ 800-1200
    base = (1000.0 * base_rel[tcode] * bias).astype(np.float32)
    noise_sd = (noise_rel[tcode] * base).astype(np.float32)

    # ROI signals: MVN with the target correlation, AR(1) in time (time constant 2.5 s)
    n_roi = anat.target_corr.shape[0]
    chol = np.linalg.cholesky(anat.target_corr)
    roi = _ar1(rng.standard_normal((n, n_roi)) @ chol.T, math.exp(-tr / 2.5))
    roi = np.concatenate([roi, np.zeros((n, 1))], axis=1).astype(np.float32)
    roi_idx = anat.labels.ravel()[idx].astype(np.int64) - 1
    roi_idx[roi_idx < 0] = n_roi  # the zero column
    roi_amp = np.where(tcode == 0, rng.uniform(0.007, 0.013, nv), 0.0).astype(np.float32)
    roi_amp[roi_idx == n_roi] = 0.0

    # global signal (slow, shared), drifts, motion-related artefacts
    glob = _ar1(rng.standard_normal(n), math.exp(-tr / 6.0)).astype(np.float32)
    glob_amp = (0.005 * np.array([1.0, 0.6, 0.8, 0.3], np.float32)[tcode]
                * rng.uniform(0.6, 1.4, nv).astype(np.float32))
    tt = np.arange(n, dtype=np.float32)
    lin = tt / max(n - 1, 1) - 0.5
    cosd = np.cos(np.pi * (tt + 0.5) / n).astype(np.float32)
    drift_lin = (rng.normal(0.012, 0.004, nv)).astype(np.float32)
    drift_cos = (rng.normal(0.0, 0.006, nv)).astype(np.float32)
    params, fd, rmsd = _motion(rng, n, spec.motion, spec.n_nss)
    pmm = params.copy()
    pmm[:, 3:] *= 50.0  # radians -> mm at 50 mm
    pmm -= pmm.mean(0)
    # motion artefacts are spatially structured (edges, gradients): smooth fields + voxel noise
    motion_load = np.stack([0.006 * _random_field(xyz, rng, 80.0) for _ in range(6)], axis=1)
    motion_load += rng.normal(0.0, 0.002, (nv, 6)).astype(np.float32)
    spike_load = (-0.01 + 0.03 * _random_field(xyz, rng, 80.0)  # per mm of FD
                  + rng.normal(0.0, 0.01, nv).astype(np.float32))
    fd0 = np.nan_to_num(fd).astype(np.float32)
    nss = np.zeros(n, dtype=np.float32)
    nss[: spec.n_nss] = _NSS_BOOST[: spec.n_nss]

    slope = None
    out_dtype = np.dtype(np.float32)
    if dtype == "int16":
        bound = float(base.max()) * (1.0 + _NSS_BOOST[0]) * 1.15 + 6.0 * float(noise_sd.max())
        slope = bound / 32000.0
        out_dtype = np.dtype(np.int16)

    # all spatially-separable terms as one (voxels x regressors) @ (regressors,) product
    loads = np.column_stack([np.ones(nv, np.float32), drift_lin, drift_cos, glob_amp,
                             spike_load, motion_load]).astype(np.float32)
    temporal = np.column_stack([1.0 + nss, lin, cosd, glob, fd0, pmm]).astype(np.float32)
    mask_in_head = flat["mask"]
    mask_ts = np.empty((n, int(mask_in_head.sum())), dtype=np.float32)

    # the image buffer is kept in Fortran (NIfTI) order so it can be written without a copy
    f_idx = np.ravel_multi_index(np.unravel_index(idx, shape), shape, order="F")

    def volumes() -> Iterator[np.ndarray]:
        vol = np.zeros(int(np.prod(shape)), dtype=out_dtype)
        for t in range(n):
            mod = loads @ temporal[t]
            mod += roi_amp * roi[t, roi_idx]
            x = base * mod + noise_sd * rng.standard_normal(nv, dtype=np.float32)
            if slope is not None:
                q = np.clip(np.rint(x / slope), -32768, 32767).astype(np.int16)
                vol[f_idx] = q
                x = q.astype(np.float32) * np.float32(slope)
            else:
                vol[f_idx] = x
            mask_ts[t] = x[mask_in_head]
            yield vol.reshape(shape, order="F")

    _write_nifti(path, None, anat.affine, compress=compress, space_code=space_code,
                 shape4d=(*shape, n), tr=tr, dtype=out_dtype, slope=slope, volumes=volumes())
    return _RunResult(mask_ts, params, fd, rmsd, spec.n_nss, n)


# --------------------------------------------------------------------------------------------
# Confounds
# --------------------------------------------------------------------------------------------


def cosine_basis(n_volumes: int, tr: float, cutoff: float = 128.0) -> np.ndarray:
    """Discrete cosine high-pass basis as fMRIPrep writes it (``cosine00``...; no constant).

    Parameters
    ----------
    n_volumes : int
        Number of volumes.
    tr : float
        Repetition time (s).
    cutoff : float
        Period cut-off (s).

    Returns
    -------
    numpy.ndarray
        (n_volumes, K) with ``K = floor(2 * n_volumes * tr / cutoff)``.
    """
    order = int(np.floor(2 * n_volumes * tr / cutoff))
    t = np.arange(n_volumes)
    cols = [np.sqrt(2.0 / n_volumes) * np.cos(np.pi / n_volumes * (t + 0.5) * k)
            for k in range(1, order + 1)]
    return np.stack(cols, axis=1) if cols else np.zeros((n_volumes, 0))


_CHUNK = 16384  # voxels per block when reducing the (T x V) in-mask time series


def _chunks(n: int) -> Iterator[slice]:
    for a in range(0, n, _CHUNK):
        yield slice(a, min(a + _CHUNK, n))


def _masked_means(ts: np.ndarray, masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Mean time course of ``ts`` (T x V) over each boolean voxel mask, in float64 blocks."""
    sums = [np.zeros(ts.shape[0]) for _ in masks]
    for sl in _chunks(ts.shape[1]):
        block = ts[:, sl].astype(np.float64)
        for acc, m in zip(sums, masks, strict=True):
            if m[sl].any():
                acc += block @ m[sl].astype(np.float64)
    return [acc / max(int(m.sum()), 1) for acc, m in zip(sums, masks, strict=True)]


def _compcor(ts: np.ndarray, voxels: np.ndarray, n_skip: int, tr: float
             ) -> tuple[np.ndarray, np.ndarray]:
    """CompCor like nipype/fMRIPrep: cosine-filter, variance-normalise, SVD.

    Parameters
    ----------
    ts : numpy.ndarray
        (T, V) in-mask time series.
    voxels : numpy.ndarray
        Boolean (V,) selection of the noise-ROI voxels.
    n_skip : int
        Leading non-steady-state volumes left out (their rows are 0 in the output).
    tr : float
        Repetition time (s), for the 128 s cosine pre-filter.

    Returns
    -------
    comps : numpy.ndarray
        (T, K) orthonormal components, by decreasing singular value.
    singular_values : numpy.ndarray
        (K,) singular values.
    """
    n = ts.shape[0]
    q, _ = np.linalg.qr(np.column_stack([np.ones(n - n_skip), cosine_basis(n - n_skip, tr)]))
    idx = np.flatnonzero(voxels)
    gram = np.zeros((n - n_skip, n - n_skip))
    # left singular vectors from the (T x T) Gram matrix: fast when V >> T, and blockwise
    for a in range(0, idx.size, _CHUNK):
        m = ts[n_skip:, idx[a:a + _CHUNK]].astype(np.float64)
        m -= q @ (q.T @ m)
        sd = m.std(0)
        sd[sd == 0] = 1.0
        m /= sd
        gram += m @ m.T
    w, u = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1]
    w, u = np.clip(w[order], 0.0, None), u[:, order]
    rank = int((w > w[0] * 1e-10).sum()) if w[0] > 0 else 0
    u, s = u[:, :rank], np.sqrt(w[:rank])
    u *= np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(rank)])  # deterministic signs
    comps = np.zeros((n, rank))
    comps[n_skip:] = u
    return comps, s


def _detrended_variance(ts: np.ndarray, n_skip: int) -> np.ndarray:
    """Per-voxel variance after removing mean and linear trend (steady-state volumes)."""
    n = ts.shape[0] - n_skip
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), np.linspace(-1.0, 1.0, n)]))
    var = np.empty(ts.shape[1])
    for sl in _chunks(ts.shape[1]):
        m = ts[n_skip:, sl].astype(np.float64)
        var[sl] = ((m**2).sum(0) - ((q.T @ m) ** 2).sum(0)) / n
    return var


def _dvars(ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Non-standardised and standardised DVARS, roughly as nipype's ComputeDVARS.

    Intensities are scaled so that the median voxel mean is 1000; the standardised DVARS divides
    by the expected SD of the temporal difference (robust IQR-based SD and AR(1) per voxel).
    """
    n = ts.shape[0]
    mfunc = np.zeros(ts.shape[1])
    for sl in _chunks(ts.shape[1]):
        mfunc[sl] = ts[:, sl].mean(0, dtype=np.float64)
    keep = mfunc > 0
    scale = 1000.0 / float(np.median(mfunc[keep]))
    sq_diff = np.zeros(n - 1)
    sd_sum = 0.0
    for sl in _chunks(ts.shape[1]):
        f = ts[:, sl][:, keep[sl]].T.astype(np.float64) * scale  # (V, T)
        q75, q25 = np.percentile(f, [75, 25], axis=1)
        f -= f.mean(1, keepdims=True)
        num = (f[:, :-1] * f[:, 1:]).sum(1)
        den = (f[:, :-1] ** 2).sum(1)
        ar1 = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
        sd_sum += float((np.sqrt(np.clip(2.0 * (1.0 - ar1), 0, None)) * (q75 - q25) / 1.349)
                        .sum())
        sq_diff += (np.diff(f, axis=1) ** 2).sum(0)
    n_vox = max(int(keep.sum()), 1)
    dvars = np.concatenate([[np.nan], np.sqrt(sq_diff / n_vox)])
    return dvars, dvars / (sd_sum / n_vox)


def _add_expansions(cols: dict[str, np.ndarray], name: str, x: np.ndarray,
                    order: Sequence[str]) -> None:
    deriv = np.concatenate([[np.nan], np.diff(x)])
    forms = {"": x, "_derivative1": deriv, "_power2": x**2, "_derivative1_power2": deriv**2}
    for suffix in order:
        cols[name + suffix] = forms[suffix]


def _confounds(res: _RunResult, anat: Anatomy, tr: float, cut_z: float | None
               ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Build fMRIPrep-like confound columns and the JSON metadata."""
    coords = _world_coords(anat.shape, anat.affine)
    keep = np.ones(anat.shape, bool) if cut_z is None else coords[..., 2] <= cut_z
    in_mask = (anat.mask & keep).ravel()
    sel = {k: getattr(anat, k).ravel()[in_mask] for k in ("gm", "wm", "csf")}
    ts = res.mask_ts
    n = res.n_volumes
    cols: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    order_a = ("", "_derivative1", "_power2", "_derivative1_power2")
    order_b = ("", "_derivative1", "_derivative1_power2", "_power2")
    everything = np.ones(ts.shape[1], dtype=bool)
    glob, csf, wm, csf_wm = _masked_means(
        ts, [everything, sel["csf"], sel["wm"], sel["csf"] | sel["wm"]])
    _add_expansions(cols, "global_signal", glob, order_a)
    _add_expansions(cols, "csf", csf, order_b)
    _add_expansions(cols, "white_matter", wm, order_b)
    _add_expansions(cols, "csf_wm", csf_wm, order_a)

    # tCompCor mask: top 2% variance (after removing mean + linear trend) in the brain mask
    var = _detrended_variance(ts, res.nss)
    n_top = max(int(round(0.02 * var.size)), 10)
    tmask = np.zeros(var.size, bool)
    tmask[np.argsort(var, kind="stable")[-n_top:]] = True
    (cols["tcompcor"],) = _masked_means(ts, [tmask])

    dvars, std_dvars = _dvars(ts)
    cols["std_dvars"] = std_dvars
    cols["dvars"] = dvars
    cols["framewise_displacement"] = res.fd
    cols["rmsd"] = res.rmsd

    dropped = 0
    for prefix, method, mask_name, vox, min_k in (
        ("t_comp_cor", "tCompCor", None, tmask, 5),
        ("c_comp_cor", "aCompCor", "CSF", sel["csf"], 5),
        ("w_comp_cor", "aCompCor", "WM", sel["wm"], 5),
        ("a_comp_cor", "aCompCor", "combined", sel["csf"] | sel["wm"], 10),
    ):
        comps, s = _compcor(ts, vox, res.nss, tr)
        ve = s**2 / (s**2).sum()
        cve = np.cumsum(ve)
        k = max(int(np.searchsorted(cve, 0.5)) + 1, min_k)
        k = min(k, comps.shape[1])
        for j in range(comps.shape[1]):
            entry: dict[str, Any] = {"Method": method}
            if mask_name is not None:
                entry["Mask"] = mask_name
            entry.update({"SingularValue": float(s[j]), "VarianceExplained": float(ve[j]),
                          "CumulativeVarianceExplained": float(cve[j]), "Retained": j < k})
            if j < k:
                name = f"{prefix}_{j:02d}"
                cols[name] = comps[:, j]
            else:
                name = f"dropped_{dropped}"
                dropped += 1
            meta[name] = entry

    cos = cosine_basis(n, tr)
    for j in range(cos.shape[1]):
        cols[f"cosine{j:02d}"] = cos[:, j]
    for j in range(res.nss):
        onehot = np.zeros(n)
        onehot[j] = 1.0
        cols[f"non_steady_state_outlier{j:02d}"] = onehot

    names = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")
    for j, name in enumerate(names):
        _add_expansions(cols, name, res.params[:, j], order_b)

    outliers = np.flatnonzero((np.nan_to_num(res.fd) > 0.5) | (np.nan_to_num(std_dvars) > 1.5))
    for j, t in enumerate(outliers):
        onehot = np.zeros(n)
        onehot[t] = 1.0
        cols[f"motion_outlier{j:02d}"] = onehot
    return cols, meta


def _format_tsv(cols: dict[str, np.ndarray]) -> str:
    """Tab-separated table with ``n/a`` for missing values (one-hot columns print as 0/1)."""
    names = list(cols)
    data = np.column_stack([np.asarray(cols[k], dtype=np.float64) for k in names])
    fmt = "\t".join(["%.10g"] * len(names))
    lines = ["\t".join(names)] + [fmt % tuple(row) for row in data]
    return ("\n".join(lines) + "\n").replace("nan", "n/a")


# --------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------


def _prefix(sub: str, spec: RunSpec) -> str:
    parts = [f"sub-{sub}"]
    if spec.session is not None:
        parts.append(f"ses-{spec.session}")
    parts.append(f"task-{spec.task}")
    if spec.run is not None:
        parts.append(f"run-{spec.run}")
    return "_".join(parts)


def _write_top_level(root: Path, subjects: list[SubjectSpec]) -> None:
    write_json_atomic(root / "dataset_description.json", {
        "Name": "bidsfm demo: synthetic fMRIPrep derivatives",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "fMRIPrep", "Version": FMRIPREP_VERSION,
                         "CodeURL": "https://github.com/nipreps/fmriprep"}],
        "HowToAcknowledge": "Synthetic data made by bidsfm.demo; not real participants.",
    })
    lines = ["participant_id\tsite\tdiagnosis\tage\tsex"]
    for s in subjects:
        lines.append(f"sub-{s.label}\t{s.site}\t{s.diagnosis}\t{s.age:.1f}\t{s.sex}")
    write_text_atomic(root / "participants.tsv", "\n".join(lines) + "\n")
    write_json_atomic(root / "participants.json", {
        "participant_id": {"Description": "Participant identifier (sub-<label>)."},
        "site": {"Description": "Acquisition site (repetition time differs between sites)."},
        "diagnosis": {"Description": "Diagnostic group.",
                      "Levels": {"ASD": "autism spectrum disorder", "TC": "typical control"}},
        "age": {"Description": "Age at scan.", "Units": "year"},
        "sex": {"Description": "Sex.", "Levels": {"M": "male", "F": "female"}},
    })


def _tsv_matrix(names: Sequence[str], mat: np.ndarray) -> str:
    lines = ["\t".join(names)]
    lines += ["\t".join(f"{v:.6f}" for v in row) for row in mat]
    return "\n".join(lines) + "\n"


def make_fmriprep_dataset(out_dir: str | Path, *, size: str = "tiny",
                          n_subjects: int | None = None, seed: int = 0,
                          shared_data: str | Path | None = None, atlas: str = "CC200",
                          space: str = "MNI152NLin2009cAsym", dtype: str = "float32",
                          compress: bool = True, n_volumes: int | None = None,
                          progress: Any = None) -> dict:
    """Write a synthetic fMRIPrep derivatives dataset and return its manifest.

    Parameters
    ----------
    out_dir : str or Path
        Dataset root to create (existing files with the same names are replaced).
    size : {"tiny", "small", "full"}
        Preset: "tiny" (6 mm, 3 subjects, 70-100 volumes; for unit tests), "small" (4 mm,
        140-180 volumes; for the demo) or "full" (1 subject, one 300-volume run on the
        97 x 115 x 97 res-2 grid; for benchmarks).
    n_subjects : int, optional
        Number of participants (default: the preset's). Extra participants cycle through the
        preset's subject templates (sites, TRs and run layouts).
    seed : int
        Seed; the same seed gives byte-identical files.
    shared_data : str or Path, optional
        Not needed: the CC200 atlas and the mean ABIDE FC ship with the package. Given a
        directory with ``abide/cc200_timeseries.npz`` and ``abide/participants.tsv``, the target
        FC is recomputed from those series (equal to the bundled one within float16 rounding);
        a path without them is ignored.
    atlas : {"CC200", "procedural"}
        Parcellation the signals are planted in: CC200 (default) or a procedural one (about 100
        parcels of an ellipsoidal brain with a procedural network covariance).
    space : str
        Value of the ``space-`` entity.
    dtype : {"float32", "int16"}
        On-disk data type of BOLD images (int16 uses scl_slope).
    compress : bool
        Write ``.nii.gz`` (default) or ``.nii``.
    n_volumes : int, optional
        Length of every run (default: the preset's), e.g. to benchmark memory against run
        length. At least 30.
    progress : bidsfm.progress.Steps, optional
        Told when each participant starts and ends (``bidsfm-demo`` passes one: a bar on a
        terminal, a line per participant off it). Default: log lines to ``bidsfm.demo``.

    Returns
    -------
    dict
        Manifest: ``root``, ``size``, ``seed``, ``atlas`` ("CC200" or "procedural"),
        ``shared_data`` (the directory the target FC was recomputed from, else None),
        ``target_fc_source`` ("bundled", "abide" or "procedural"),
        ``roi_names``, ``target_fc`` (TSV of the target ROI correlation), ``voxel_size``,
        ``participants`` and ``runs``, a list of dicts with ``subject``, ``session``, ``task``,
        ``run`` (int or None), ``bold``, ``mask``, ``confounds``, ``confounds_json``,
        ``bold_json``, ``labels`` (the ROI label image on the run grid), ``repetition_time``,
        ``n_volumes``, ``n_nss``, ``motion``, ``fov_cut`` and ``n_motion_outliers``. It is also
        written to ``sourcedata/bidsfm-demo/manifest.json``.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
    if dtype not in ("float32", "int16"):
        raise ValueError(f"dtype must be 'float32' or 'int16', not {dtype!r}")
    preset = SIZES[size]
    n_sub = preset.n_subjects if n_subjects is None else int(n_subjects)
    if n_sub < 1:
        raise ValueError("n_subjects must be at least 1")
    if n_volumes is not None and int(n_volumes) < 30:
        raise ValueError(f"n_volumes must be at least 30, not {n_volumes}")
    root = Path(out_dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if atlas not in DEMO_ATLASES:
        raise ValueError(f"atlas must be one of {DEMO_ATLASES}, not {atlas!r}")
    shared_dir = None
    if shared_data is not None and atlas == "CC200":
        cand = Path(shared_data)
        if (cand / "abide" / "cc200_timeseries.npz").is_file() and (
                cand / "abide" / "participants.tsv").is_file():
            shared_dir = cand.resolve()
    anat = build_anatomy(preset.voxel_size, None if shared_dir is None else str(shared_dir),
                         seed, atlas)
    fc_source = ("procedural" if atlas == "procedural"
                 else "bundled" if shared_dir is None else "abide")
    subjects = _subject_specs(size, n_sub, seed,
                              None if n_volumes is None else int(n_volumes))
    space_code = 4 if space.upper().startswith("MNI") else 2
    res_ent = "_res-2" if (preset.voxel_size == 2.0 and space == "MNI152NLin2009cAsym") else ""
    ext = ".nii.gz" if compress else ".nii"

    _write_top_level(root, subjects)
    demo_dir = root / DEMO_DIR
    grid_tag = f"{preset.voxel_size:g}mm"
    labels_path = demo_dir / f"space-{space}{res_ent}_grid-{grid_tag}_seg-{anat.atlas}_dseg{ext}"
    _write_nifti(labels_path, np.asarray(anat.labels), anat.affine, compress=compress,
                 space_code=space_code)
    write_text_atomic(labels_path.with_name(f"seg-{anat.atlas}_dseg.tsv"),
                      "index\tname\n" + "".join(f"{i}\t{nm}\n"
                                                for i, nm in enumerate(anat.roi_names, 1)))
    target_path = demo_dir / f"seg-{anat.atlas}_desc-target_relmat.tsv"
    write_text_atomic(target_path, _tsv_matrix(anat.roi_names, anat.target_corr))

    coords_z = _world_coords(anat.shape, anat.affine)[..., 2]
    brain_top = float(coords_z[anat.brain].max())
    runs = []
    if progress is None:
        import logging

        from .progress import Steps

        progress = Steps("demo dataset", len(subjects), logging.getLogger("bidsfm.demo"),
                         bar=False)
    for si, subj in enumerate(subjects):
        item = f"sub-{subj.label}"
        progress.start(item, f"simulating {len(subj.runs)} run(s)")
        cut_z = brain_top - 15.0 if subj.fov_cut else None
        for ri, spec in enumerate(subj.runs):
            rng = np.random.default_rng([seed, si, ri, 2718])
            func = root / f"sub-{subj.label}"
            if spec.session is not None:
                func = func / f"ses-{spec.session}"
            func = func / "func"
            stem = _prefix(subj.label, spec)
            bold = func / f"{stem}_space-{space}{res_ent}_desc-preproc_bold{ext}"
            mask_p = func / f"{stem}_space-{space}{res_ent}_desc-brain_mask{ext}"
            conf = func / f"{stem}_desc-confounds_timeseries.tsv"
            res = _simulate_run(bold, anat, spec, subj, rng, dtype=dtype, compress=compress,
                                space_code=space_code, cut_z=cut_z)
            raw_uri = f"bids:raw:{'/'.join(func.relative_to(root).parts)}/{stem}_bold.nii.gz"
            write_json_atomic(bold.with_name(bold.name.split(".")[0] + ".json"), {
                "RepetitionTime": subj.repetition_time,
                "TaskName": spec.task,
                "SkullStripped": False,
                "SliceTimingCorrected": False,
                "StartTime": 0,
                "Sources": [raw_uri],
            })
            mask = np.asarray(anat.mask).copy()
            if cut_z is not None:
                mask &= coords_z <= cut_z
            _write_nifti(mask_p, mask.astype(np.uint8), anat.affine, compress=compress,
                         space_code=space_code)
            write_json_atomic(mask_p.with_name(mask_p.name.split(".")[0] + ".json"),
                              {"Type": "Brain", "RawSources": [raw_uri]})
            cols, meta = _confounds(res, anat, subj.repetition_time, cut_z)
            write_text_atomic(conf, _format_tsv(cols))
            write_json_atomic(conf.with_suffix(".json"), meta)
            n_out = sum(1 for k in cols if k.startswith("motion_outlier"))
            runs.append({
                "subject": subj.label, "session": spec.session, "task": spec.task,
                "run": spec.run, "bold": str(bold), "mask": str(mask_p),
                "confounds": str(conf), "confounds_json": str(conf.with_suffix(".json")),
                "bold_json": str(bold.with_name(bold.name.split(".")[0] + ".json")),
                "labels": str(labels_path), "repetition_time": subj.repetition_time,
                "n_volumes": spec.n_volumes, "n_nss": spec.n_nss, "motion": spec.motion,
                "fov_cut": subj.fov_cut, "n_motion_outliers": n_out,
            })
        progress.end(item, f"{len(subj.runs)} run(s) written")
    manifest = {
        "root": str(root), "size": size, "seed": seed, "space": space,
        "voxel_size": preset.voxel_size, "shape": list(anat.shape), "dtype": dtype,
        "atlas": anat.atlas, "shared_data": None if shared_dir is None else str(shared_dir),
        "target_fc_source": fc_source,
        "labels": str(labels_path), "target_fc": str(target_path),
        "roi_names": list(anat.roi_names),
        "participants": [{"participant_id": f"sub-{s.label}", "site": s.site,
                          "diagnosis": s.diagnosis, "age": s.age, "sex": s.sex,
                          "repetition_time": s.repetition_time} for s in subjects],
        "runs": runs,
    }
    write_json_atomic(demo_dir / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def _build_cli() -> Any:
    import click

    @click.command(name="bidsfm-demo",
                   help="Write a synthetic fMRIPrep derivatives dataset to OUT_DIR.")
    @click.argument("out_dir", type=click.Path(file_okay=False))
    @click.option("--size", type=click.Choice(sorted(SIZES)), default="tiny", show_default=True,
                  help="tiny: 6 mm (tests); small: 4 mm (demo); full: 2 mm res-2 (benchmarks).")
    @click.option("--n-subjects", type=click.IntRange(min=1), default=None,
                  help="Number of participants (default: the preset's).")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--atlas", "atlas", type=click.Choice(DEMO_ATLASES), default="CC200",
                  show_default=True,
                  help="Parcellation the signals are planted in (CC200 ships with bidsfm).")
    @click.option("--shared-data", type=click.Path(), default=None,
                  help="Optional: recompute the target FC from DIR/abide (ABIDE CC200 series) "
                       "instead of using the copy shipped with bidsfm.")
    @click.option("--dtype", type=click.Choice(["float32", "int16"]), default="float32",
                  show_default=True)
    @click.option("--no-compress", is_flag=True, help="Write .nii instead of .nii.gz.")
    def cli(out_dir: str, size: str, n_subjects: int | None, seed: int, atlas: str,
            shared_data: str | None, dtype: str, no_compress: bool) -> None:
        t0 = time.perf_counter()
        n_sub = SIZES[size].n_subjects if n_subjects is None else n_subjects
        with _demo_steps(n_sub) as steps:
            man = make_fmriprep_dataset(out_dir, size=size, n_subjects=n_subjects, seed=seed,
                                        shared_data=shared_data, atlas=atlas, dtype=dtype,
                                        compress=not no_compress, progress=steps)
        took = time.perf_counter() - t0
        n_sub = len(man["participants"])
        n_runs = len(man["runs"])
        runs_word = "run" if n_runs == 1 else "runs"
        subs_word = "participant" if n_sub == 1 else "participants"
        click.echo(f"Wrote {n_runs} {runs_word} of {n_sub} {subs_word} to {man['root']} "
                   f"({size}, {man['voxel_size']:g} mm, atlas {man['atlas']}, {took:.1f} s)")
        for r in man["runs"]:
            rel = os.path.relpath(r["bold"], man["root"])
            click.echo(f"  {rel}  TR={r['repetition_time']:g}s  T={r['n_volumes']}  "
                       f"nss={r['n_nss']}  motion={r['motion']}  "
                       f"outliers={r['n_motion_outliers']}")
        click.echo(f"ROI labels: {man['labels']}")
        click.echo(f"Manifest:   {Path(man['root']) / DEMO_DIR / 'manifest.json'}")

    return cli


def _demo_steps(n_subjects: int) -> Any:
    """Progress of ``bidsfm-demo``: a bar on a terminal, a line per participant on stderr."""
    import logging
    import sys

    from .progress import Steps, console, on_terminal

    logger = logging.getLogger("bidsfm.demo")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not logger.handlers:
        if on_terminal():
            from rich.logging import RichHandler

            handler: logging.Handler = RichHandler(show_path=False, markup=False,
                                                   console=console())
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    return Steps("demo dataset", n_subjects, logger)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``bidsfm-demo OUT_DIR [--size ...] [--n-subjects N] [--seed S] ...``.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    cli = _build_cli()
    try:
        cli.main(args=None if argv is None else list(argv), prog_name="bidsfm-demo",
                 standalone_mode=True)
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise


if __name__ == "__main__":  # pragma: no cover
    main()
