"""Label image, tissue classes and target ROI correlation on a generator grid.

CC200 (the package's copy, resampled from its own 3 mm grid) with the mean ABIDE FC, or a
procedural parcellation of an ellipsoidal brain with a procedural network covariance. Tissue
classes: grey matter = the parcels, two ventricles and a one-voxel rim of CSF, white matter
for the rest of the brain, and a ~12 mm scalp shell.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .grid import grid_for_voxel_size, resample_nearest, world_coords
from .presets import DEMO_ATLASES
from .target_fc import abide_target_corr, bundled_target_corr, has_abide_series, procedural_corr

__all__ = ["Anatomy", "build_anatomy"]


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


def _parcellation(atlas: str, shape: tuple[int, int, int], affine: np.ndarray,
                  coords: np.ndarray, shared_dir: str | None, seed: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
    """Labels, brain mask, target correlation and ROI names of ``atlas`` on a grid."""
    if atlas == "CC200":
        ref_lab, ref_brain, ref_aff, names = _cc200_reference(str(_cc200_file(shared_dir)))
        labels = resample_nearest(ref_lab, ref_aff, shape, affine)
        brain = resample_nearest(ref_brain.astype(np.uint8), ref_aff, shape, affine) > 0
        if shared_dir is not None and has_abide_series(shared_dir):
            corr = abide_target_corr(str(shared_dir))
        else:
            corr = bundled_target_corr()
        return labels, brain, corr, names
    labels, brain, network = _procedural_labels(coords, seed)
    corr = procedural_corr(network, seed)
    names = tuple(f"parcel_{i:03d}" for i in range(1, corr.shape[0] + 1))
    return labels, brain, corr, names


def _tissues(labels: np.ndarray, brain: np.ndarray, coords: np.ndarray, voxel_size: float
             ) -> tuple[np.ndarray, ...]:
    """Brain mask, grey matter, white matter, CSF and head (brain + scalp) masks."""
    from scipy import ndimage as ndi

    struct = ndi.generate_binary_structure(3, 1)
    mask = ndi.binary_dilation(brain, struct)
    gm = labels > 0
    # ventricles: two ellipsoids either side of the midline (world coordinates)
    ventricles = np.zeros(labels.shape, dtype=bool)
    for x0 in (-14.0, 14.0):
        d = ((coords - np.array([x0, -8.0, 14.0])) / np.array([9.0, 24.0, 10.0])) ** 2
        ventricles |= d.sum(-1) <= 1.0
    rim = mask & ~brain
    csf = (rim | (ventricles & brain)) & ~gm
    wm = brain & ~gm & ~csf
    # scalp/skull: a ~12 mm shell around the brain mask
    dist = ndi.distance_transform_edt(~mask, sampling=(voxel_size,) * 3)
    head = mask | (dist <= 12.0)
    return mask, gm, wm, csf, head


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
    shape, affine = grid_for_voxel_size(voxel_size)
    coords = world_coords(shape, affine)
    if atlas not in DEMO_ATLASES:
        raise ValueError(f"atlas must be one of {DEMO_ATLASES}, not {atlas!r}")
    labels, brain, corr, names = _parcellation(atlas, shape, affine, coords, shared_dir, seed)
    brain |= labels > 0
    mask, gm, wm, csf, head = _tissues(labels, brain, coords, voxel_size)
    anat = Anatomy(shape, affine, labels.astype(np.int16), brain, mask, gm, wm, csf, head,
                   tuple(names), np.asarray(corr), atlas)
    for arr in (anat.affine, anat.labels, anat.brain, anat.mask, anat.gm, anat.wm, anat.csf,
                anat.head):
        arr.setflags(write=False)
    return anat
