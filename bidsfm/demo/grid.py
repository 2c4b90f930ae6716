"""The MNI152NLin2009cAsym-like voxel grids of the generator, and resampling onto them."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["FOV_MM", "ORIGIN_MM", "grid_for_voxel_size", "resample_nearest", "world_coords"]

#: Field of view (mm) and origin (mm, centre of voxel 0,0,0) of TemplateFlow's
#: MNI152NLin2009cAsym res-2 grid (97 x 115 x 97 voxels at 2 mm).
FOV_MM = (194.0, 230.0, 194.0)
ORIGIN_MM = (-96.0, -132.0, -78.0)


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


def world_coords(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of every voxel centre.

    Parameters
    ----------
    shape : sequence of int
        3D grid shape.
    affine : numpy.ndarray
        4 x 4 voxel-to-world affine.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``shape + (3,)``.
    """
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (ijk @ affine[:3, :3].T + affine[:3, 3]).astype(np.float32)


def resample_nearest(data: np.ndarray, src_affine: np.ndarray, shape: Sequence[int],
                     affine: np.ndarray) -> np.ndarray:
    """Nearest-neighbour resampling of a 3D volume onto a grid (through world coordinates).

    Parameters
    ----------
    data : numpy.ndarray
        3D source volume.
    src_affine : numpy.ndarray
        Its 4 x 4 affine.
    shape : sequence of int
        Target grid shape.
    affine : numpy.ndarray
        Target 4 x 4 affine.

    Returns
    -------
    numpy.ndarray
        Volume of ``shape`` with ``data``'s dtype; 0 outside the source's field of view.
    """
    xyz = world_coords(shape, affine).reshape(-1, 3).astype(np.float64)
    ijk = np.rint(xyz @ np.linalg.inv(src_affine)[:3, :3].T
                  + np.linalg.inv(src_affine)[:3, 3]).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.array(data.shape)), axis=1)
    out = np.zeros(len(xyz), dtype=data.dtype)
    out[inside] = data[ijk[inside, 0], ijk[inside, 1], ijk[inside, 2]]
    return out.reshape(tuple(shape))
