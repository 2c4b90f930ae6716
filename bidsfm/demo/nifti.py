"""Reproducible NIfTI-1 writing, volume by volume.

Images are streamed to disk one volume at a time (gzip with mtime 0, so the bytes do not depend
on when they were written), so a full-size 2 mm run needs memory for one volume only.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from bidsfm.utils import atomic_path

__all__ = ["write_nifti"]


def _nifti_header(shape: Sequence[int], affine: np.ndarray, dtype: np.dtype,
                  tr: float | None, slope: float | None, space_code: int) -> Any:
    """A NIfTI-1 header (qform = sform = ``affine``; mm and s; data at offset 352)."""
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


def write_nifti(path: Path, data: np.ndarray | None, affine: np.ndarray, *, compress: bool,
                space_code: int, shape4d: Sequence[int] | None = None, tr: float | None = None,
                dtype: np.dtype | None = None, slope: float | None = None,
                volumes: Iterator[np.ndarray] | None = None) -> None:
    """Write a 3D array, or a 4D image from an iterator of 3D volumes, atomically.

    Parameters
    ----------
    path : Path
        Output file (``.nii.gz`` or ``.nii``, as ``compress`` says).
    data : numpy.ndarray or None
        A 3D volume, or None to write ``volumes``.
    affine : numpy.ndarray
        4 x 4 affine (qform and sform).
    compress : bool
        Gzip the file (level 1, mtime 0).
    space_code : int
        qform/sform code (4: MNI, 2: aligned).
    shape4d : sequence of int, optional
        Shape of the 4D image (with ``volumes``).
    tr : float, optional
        Repetition time (s), the fourth zoom of a 4D image.
    dtype : numpy.dtype, optional
        On-disk data type of ``volumes``.
    slope : float, optional
        ``scl_slope`` (int16 data); 1 when None.
    volumes : iterator of numpy.ndarray, optional
        The 3D volumes of a 4D image, in order.
    """
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
