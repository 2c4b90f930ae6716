"""ROI signals and coverage from one BOLD run, in a single streaming pass over the volumes.

For every label atlas the ROI signal at each volume is the mean over the ROI's voxels that lie
inside the run's brain mask (what nilearn's ``NiftiLabelsMasker`` computes when given
``mask_img``). For probabilistic maps (DiFuMo style) it is the least-squares fit of the in-mask
voxels by the maps (what nilearn's ``NiftiMapsMasker`` computes). The BOLD file is read one
volume at a time, so memory is bounded by the size of one volume and not by the number of
volumes. Several atlases are served by the same pass.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import ConfigError, InputDataError

#: Memory (MB) a run's process needs whatever the data: Python, numpy, scipy, nibabel, pandas.
BASE_MEMORY_MB = 300
#: ROIs assumed by :func:`estimate_memory_mb` when the atlases are not known yet.
DEFAULT_ROIS_FOR_ESTIMATE = 1000


def estimate_memory_mb(shape: tuple[int, ...], n_rois: int = DEFAULT_ROIS_FOR_ESTIMATE) -> int:
    """Estimate the peak memory (MB) needed to process one BOLD run.

    The BOLD file is streamed, so one volume is held a few times over (read buffer, float64
    copy, masked copy, label images and coordinates of the atlas resampling), while the ROI
    signals are held whole, a few times over (raw, cleaned, residual, confounds). A fixed
    :data:`BASE_MEMORY_MB` covers the interpreter and libraries. The same figure is the memory
    hint given to Nipype's schedulers and the check against ``--mem-mb``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the BOLD image, ``(x, y, z, t)`` (a 3D shape counts as one volume).
    n_rois : int
        ROIs over all atlases of the run.

    Returns
    -------
    int
        Megabytes, rounded up.
    """
    voxels = math.prod(int(s) for s in shape[:3])
    n_vol = int(shape[3]) if len(shape) > 3 else 1
    nbytes = 6 * voxels * 8 + 4 * n_vol * max(int(n_rois), 1) * 8
    return math.ceil(BASE_MEMORY_MB + nbytes / 2**20)


@dataclass
class LabelProjection:
    """Voxel-to-ROI assignment of one atlas on the run grid, restricted to the brain mask.

    Attributes
    ----------
    roi_of_voxel : np.ndarray
        For each in-mask voxel (in the mask's flattened Fortran order), the ROI position
        (0..R-1), or R for voxels outside every ROI.
    n_in_mask : np.ndarray
        Number of in-mask voxels per ROI.
    n_total : np.ndarray
        Number of voxels per ROI on the run grid (inside or outside the mask).
    labels : np.ndarray or None
        The 3D label image on the run grid it was built from (for the placement figure).
    """

    roi_of_voxel: np.ndarray
    n_in_mask: np.ndarray
    n_total: np.ndarray
    labels: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of each ROI's voxels that lie inside the brain mask (0 for empty ROIs)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = self.n_in_mask / self.n_total
        return np.where(self.n_total > 0, cov, 0.0)

    @property
    def empty(self) -> np.ndarray:
        """ROIs without any in-mask voxel (their signal is NaN)."""
        return self.n_in_mask == 0

    def reducer(self):
        """A function from one volume's in-mask voxels to the ROI means."""
        n_roi = self.n_in_mask.size
        denom = np.where(self.n_in_mask > 0, self.n_in_mask, 1).astype(np.float64)
        index = self.roi_of_voxel

        def reduce(vol: np.ndarray) -> np.ndarray:
            return np.bincount(index, weights=vol, minlength=n_roi + 1)[:n_roi] / denom

        return reduce


@dataclass
class MapsProjection:
    """Probabilistic maps on the run grid, restricted to the brain mask.

    The signal of the maps at a volume ``v`` (in-mask voxels) is the least-squares solution of
    ``M s = v``, ``M`` the in-mask weights (voxels x maps): ``s = pinv(M^T M) M^T v``, the
    minimum-norm solution nilearn's ``NiftiMapsMasker`` computes with ``scipy.linalg.lstsq``.

    Attributes
    ----------
    weights_t : scipy.sparse.csr_matrix
        ``M^T``, maps x in-mask voxels (in the mask's flattened Fortran order), float64.
    solve : np.ndarray
        ``pinv(M^T M)``, maps x maps.
    mass_in_mask : np.ndarray
        Sum of the absolute weights of each map inside the mask.
    mass_total : np.ndarray
        Sum of the absolute weights of each map on the run grid.
    """

    weights_t: object
    solve: np.ndarray
    mass_in_mask: np.ndarray
    mass_total: np.ndarray

    @property
    def n_in_mask(self) -> np.ndarray:
        """Number of in-mask voxels with a non-zero weight, per map."""
        return np.diff(self.weights_t.indptr)

    @property
    def coverage(self) -> np.ndarray:
        """Fraction of each map's weight (absolute values) inside the brain mask."""
        with np.errstate(invalid="ignore", divide="ignore"):
            cov = self.mass_in_mask / self.mass_total
        return np.where(self.mass_total > 0, cov, 0.0)

    @property
    def empty(self) -> np.ndarray:
        """Maps without any weight inside the mask (their signal is NaN)."""
        return self.mass_in_mask == 0

    def reducer(self):
        """A function from one volume's in-mask voxels to the maps' signals."""
        weights_t, solve = self.weights_t, self.solve

        def reduce(vol: np.ndarray) -> np.ndarray:
            return solve @ (weights_t @ vol)

        return reduce


def _describe(exc: Exception, path: str | Path) -> str:
    """``Type: message`` of a reader's exception, without the path the error line names anyway."""
    text = str(exc)
    for form in (f"File {path}", f'"{path}"', f"'{path}'", str(path)):
        text = text.replace(form, "the file")
    return f"{type(exc).__name__}: {' '.join(text.split())}"


def load_mask(mask_path: str | Path, bold_affine: np.ndarray, bold_shape: tuple[int, ...]
              ) -> np.ndarray:
    """Load a brain mask and check that it lies on the BOLD grid.

    Raises
    ------
    InputDataError
        If the mask cannot be read, is not 3D, does not match the BOLD grid or is empty.
    """
    import nibabel as nib

    try:
        img = nib.load(str(mask_path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(f"cannot read brain mask ({_describe(exc, mask_path)})",
                             path=mask_path, remedy="Restore the file from fMRIPrep") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"brain mask is {data.ndim}D, expected 3D", path=mask_path)
    if tuple(data.shape) != tuple(bold_shape[:3]) or not np.allclose(img.affine, bold_affine,
                                                                     atol=1e-3):
        raise InputDataError("brain mask is not on the BOLD grid (shape or affine differ)",
                             path=mask_path, remedy="Use the desc-brain_mask written by fMRIPrep "
                             "for the same space and resolution as the BOLD run")
    mask = data > 0
    if not mask.any():
        raise InputDataError("brain mask is empty", path=mask_path)
    return mask


def project_labels(labels: np.ndarray, label_values: np.ndarray, mask: np.ndarray
                   ) -> LabelProjection:
    """Build the voxel-to-ROI assignment of one atlas.

    Parameters
    ----------
    labels : np.ndarray
        3D integer label image on the run grid.
    label_values : np.ndarray
        The atlas's ROI indices, in output column order (a fixed list; ROIs absent from the
        grid get zero voxels, never dropped).
    mask : np.ndarray
        3D boolean brain mask on the run grid.
    """
    label_values = np.asarray(label_values, dtype=np.int64)
    n_roi = label_values.size
    lookup_size = int(max(label_values.max(initial=0), labels.max(initial=0))) + 1
    lookup = np.full(lookup_size, n_roi, dtype=np.int64)
    lookup[label_values] = np.arange(n_roi)
    lab = np.clip(labels, 0, None).astype(np.int64)
    pos_all = lookup[lab]  # 3D positions, n_roi = none
    n_total = np.bincount(pos_all.ravel(order="F"), minlength=n_roi + 1)[:n_roi]
    roi_of_voxel = pos_all.ravel(order="F")[mask.ravel(order="F")]
    n_in_mask = np.bincount(roi_of_voxel, minlength=n_roi + 1)[:n_roi]
    return LabelProjection(roi_of_voxel=roi_of_voxel, n_in_mask=n_in_mask, n_total=n_total,
                           labels=labels)


def project_maps(maps, mask: np.ndarray) -> MapsProjection:
    """Restrict probabilistic maps on the run grid to the brain mask.

    Parameters
    ----------
    maps : scipy.sparse matrix or np.ndarray
        (voxels of the grid in Fortran order) x (maps) weights, e.g. from
        :func:`bidsfm.atlases.resample_maps`.
    mask : np.ndarray
        3D boolean brain mask on the run grid.

    Returns
    -------
    MapsProjection
    """
    from scipy import sparse

    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    matrix = sparse.csc_matrix(maps, dtype=np.float64)
    if matrix.shape[0] != flat.size:
        raise ValueError(f"maps have {matrix.shape[0]} voxels, the mask {flat.size}")
    inside = matrix[np.flatnonzero(flat)]
    mass_total = np.asarray(abs(matrix).sum(axis=0)).ravel()
    mass_in = np.asarray(abs(inside).sum(axis=0)).ravel()
    gram = (inside.T @ inside).toarray()
    return MapsProjection(weights_t=sparse.csr_matrix(inside.T), solve=np.linalg.pinv(gram),
                          mass_in_mask=mass_in, mass_total=mass_total)


def open_bold(bold_path: str | Path):
    """Open a BOLD NIfTI lazily and check that it is a 4D image.

    Returns
    -------
    nibabel.Nifti1Image
        Image whose data are read on demand.

    Raises
    ------
    InputDataError
        If the file cannot be read or is not 4D with at least 2 volumes.
    """
    import nibabel as nib

    try:
        img = nib.load(str(bold_path))
        shape = img.shape
    except Exception as exc:
        raise InputDataError(f"cannot read BOLD image ({_describe(exc, bold_path)})",
                             path=bold_path, remedy="Check the file is a complete NIfTI; rerun "
                             "fMRIPrep for this run if it is truncated") from None
    if len(shape) != 4 or shape[3] < 2:
        raise InputDataError(f"BOLD image has shape {shape}, expected 4D with several volumes",
                             path=bold_path, remedy="Pass the desc-preproc_bold 4D series")
    return img


#: Environment variable choosing the gzip decoder (``isal``, ``isal-threaded`` or ``zlib``).
DECODER_ENV = "BIDSFM_GZIP_DECODER"
DECODERS = ("isal", "isal-threaded", "zlib")


def gzip_decoder() -> str:
    """Name of the gzip decoder :func:`open_stream` uses: ``isal``, ``isal-threaded``, ``zlib``.

    The default is python-isal's threaded reader (``isal.igzip_threaded``: one background
    thread decompresses outside the GIL, so that decoding overlaps the projection of the
    previous volume) when the process may run on more than one CPU
    (``os.sched_getaffinity``; a SLURM job's cgroup limits it), else its single-thread reader
    (``isal.igzip``), else the standard library's zlib. On an idle 2-CPU machine the threaded
    reader takes the data plane of a full-size run from 1.95-2.11 s to 1.65-1.72 s with the
    same CPU time and memory (docs/performance.md); a process given one CPU gains nothing from
    a second thread. :data:`DECODER_ENV` forces one; all give identical results (tested).
    """
    forced = os.environ.get(DECODER_ENV, "").strip()
    if forced:
        if forced not in DECODERS:
            raise ConfigError(f"{DECODER_ENV}={forced!r} is not a gzip decoder",
                              remedy=f"Use one of {', '.join(DECODERS)}, or unset it")
        return forced
    try:
        from isal import igzip  # noqa: F401
    except ImportError:  # pragma: no cover - isal is a dependency; this is a fallback
        return "zlib"
    return "isal-threaded" if usable_cpus() > 1 else "isal"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity, which cgroup limits such as SLURM's set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def open_stream(path: str | Path, block_size: int = 1 << 20, decoder: str | None = None):
    """Open a NIfTI file as a sequential byte stream, decompressing gzip on the fly.

    Parameters
    ----------
    path : str or Path
        ``.nii`` or ``.nii.gz`` file (gzip is recognised by its magic bytes, not the name).
    block_size : int
        Block size of the threaded decoder (python-isal queues at most two decoded blocks
        ahead of the reader, and buffers 8 blocks of compressed input).
    decoder : str, optional
        Force ``isal``, ``isal-threaded`` or ``zlib`` (default: :func:`gzip_decoder`).

    Returns
    -------
    file object
        Binary stream supporting ``read`` and ``readinto``.
    """
    path = str(path)
    with open(path, "rb") as probe:
        gz = probe.read(2) == b"\x1f\x8b"
    if not gz:
        return open(path, "rb")
    decoder = decoder or gzip_decoder()
    if decoder == "isal-threaded":
        from isal import igzip_threaded

        return igzip_threaded.open(path, "rb", threads=1, block_size=max(int(block_size), 1))
    if decoder == "isal":
        from isal import igzip

        return igzip.open(path, "rb")
    import gzip

    return gzip.open(path, "rb")


def iter_volumes(bold_path: str | Path, img=None, mask: np.ndarray | None = None):
    """Yield the volumes of a 4D NIfTI one at a time, as flat float64 arrays (Fortran order).

    The file is read sequentially once (no seeking in the compressed stream) from the data
    offset nibabel found (``img.dataobj.offset``; the header's ``vox_offset`` may read 0 once
    loaded), applying the scaling (``scl_slope``/``scl_inter``, also from the proxy: nibabel
    resets them in ``img.header``) and byte order, so
    memory stays at a few volumes whatever the run length.

    Parameters
    ----------
    bold_path : str or Path
        4D NIfTI, ``.nii`` or ``.nii.gz``.
    img : nibabel image, optional
        The image opened by :func:`open_bold` (opened here when omitted).
    mask : numpy.ndarray, optional
        3D boolean mask (or its Fortran-order flattening): yield only these voxels. They are
        selected before the conversion to float64, which is then done on the mask only.

    Yields
    ------
    numpy.ndarray
        One volume (or its in-mask voxels), float64.

    Raises
    ------
    InputDataError
        If the file ends before the last volume.
    """
    img = open_bold(bold_path) if img is None else img
    header = img.header
    shape = img.shape
    dtype = np.dtype(getattr(img.dataobj, "dtype", header.get_data_dtype()))
    n_vox = int(np.prod(shape[:3]))
    nbytes = n_vox * dtype.itemsize
    # nibabel moves scl_slope/scl_inter (and the data offset) into the array proxy when it
    # loads an image and resets them in ``img.header``: read them from the proxy.
    proxy = img.dataobj
    if hasattr(proxy, "slope") and hasattr(proxy, "inter"):
        slope, inter = proxy.slope, proxy.inter
    else:
        slope, inter = header.get_slope_inter()
    slope = 1.0 if slope is None or not np.isfinite(slope) or slope == 0 else float(slope)
    inter = 0.0 if inter is None or not np.isfinite(inter) else float(inter)
    offset = int(getattr(proxy, "offset", header.get_data_offset()))
    flat_mask = None if mask is None else np.asarray(mask, dtype=bool).ravel(order="F")
    if flat_mask is not None and flat_mask.size != n_vox:
        raise ValueError(f"mask has {flat_mask.size} voxels, the image volumes {n_vox}")
    # integer indices: np.take is several times faster than boolean indexing per volume
    index = None if flat_mask is None else np.flatnonzero(flat_mask)
    buf = bytearray(nbytes)
    view = memoryview(buf)
    raw = np.frombuffer(buf, dtype=dtype)
    with open_stream(bold_path) as stream:
        remaining = offset
        while remaining > 0:
            chunk = stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        for t in range(int(shape[3])):
            got = 0
            while got < nbytes:
                n = stream.readinto(view[got:])
                if not n:
                    raise InputDataError(
                        f"file ends in volume {t} of {shape[3]} (truncated)", path=bold_path,
                        remedy="Re-copy the file or rerun fMRIPrep for this run")
                got += n
            vol = (raw if index is None else raw.take(index)).astype(np.float64)
            if slope != 1.0:
                vol *= slope
            if inter != 0.0:
                vol += inter
            yield vol


def extract_roi_signals(bold_path: str | Path, mask: np.ndarray,
                        projections: list[LabelProjection | MapsProjection], img=None
                        ) -> list[np.ndarray]:
    """ROI signals of every atlas, reading the BOLD file once, volume by volume.

    Parameters
    ----------
    bold_path : str or Path
        4D BOLD NIfTI (``.nii`` or ``.nii.gz``, float or scaled integer data).
    mask : np.ndarray
        3D boolean brain mask on the BOLD grid.
    projections : list of LabelProjection or MapsProjection
        One per atlas, from :func:`project_labels` (mean over each ROI's in-mask voxels) or
        :func:`project_maps` (least-squares fit by probabilistic maps).
    img : nibabel image, optional
        An already opened image (from :func:`open_bold`).

    Returns
    -------
    list of np.ndarray
        One (n_volumes, n_rois) float64 array per atlas; ROIs with no in-mask voxel are NaN.

    Raises
    ------
    InputDataError
        If the file is truncated or corrupt, or holds non-finite values inside the mask.
    """
    img = open_bold(bold_path) if img is None else img
    n_vol = img.shape[3]
    flat_mask = np.asarray(mask, dtype=bool).ravel(order="F")
    outs = [np.empty((n_vol, p.n_in_mask.size), dtype=np.float64) for p in projections]
    reducers = [p.reducer() for p in projections]
    try:
        for t, vol in enumerate(iter_volumes(bold_path, img, mask=flat_mask)):
            if not np.isfinite(vol).all():
                bad = int((~np.isfinite(vol)).sum())
                raise InputDataError(f"volume {t} has {bad} non-finite (NaN/Inf) voxels inside "
                                     "the brain mask", path=bold_path,
                                     remedy="Check the preprocessing of this run")
            for out, reduce in zip(outs, reducers, strict=True):
                out[t] = reduce(vol)
    except InputDataError:
        raise
    except Exception as exc:  # truncated gzip, short file, ...
        raise InputDataError(f"cannot read BOLD data ({_describe(exc, bold_path)})",
                             path=bold_path, remedy="The file looks truncated or corrupt; "
                             "rerun fMRIPrep for this run") from None
    for out, proj in zip(outs, projections, strict=True):
        out[:, proj.empty] = np.nan
    return outs
