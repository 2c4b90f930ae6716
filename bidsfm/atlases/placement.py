"""Bringing an atlas onto a run's voxel grid, saying how, and caching the result.

Label atlases are resampled by nearest neighbour in world coordinates (what
``nilearn.image.resample_to_img(..., interpolation="nearest")`` gives), probabilistic maps by
trilinear interpolation (what nilearn's ``NiftiMapsMasker`` does to bring maps onto the data).
When the atlas and the run are in different templates, TemplateFlow's
``tpl-<run>_from-<atlas>_mode-image_xfm.h5`` is applied when it is in ``$TEMPLATEFLOW_HOME``
(with nitransforms, as XCP-D does with ANTs); otherwise voxels are matched by world
coordinates, which :func:`check_placement` accepts only between two MNI templates. The result
is cached per (atlas sha256, grid, placement) in a folder of the work directory, so later runs
on the same grid read it instead of resampling again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsfm.errors import InputDataError

from .base import LOGGER, Atlas, template_id, usable, warn_once
from .labels import load_label_array, load_maps
from .templateflow import template_transform_path

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Version of the cached index format (bump when the resampling changes).
INDEX_CACHE_VERSION = 1
WORLD = "world-coordinates (no template transform available)"


def _nearest_lookup(data: np.ndarray, vox_coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour lookup of ``data`` at fractional voxel coordinates (N x 3); 0 outside."""
    import numpy as np

    idx = np.floor(vox_coords + 0.5).astype(np.int64)
    shape = np.asarray(data.shape)
    inside = np.all((idx >= 0) & (idx < shape), axis=1)
    out = np.zeros(len(idx), dtype=np.int32)
    sel = idx[inside]
    out[inside] = data[sel[:, 0], sel[:, 1], sel[:, 2]]
    return out


def _grid_world_coords(affine: np.ndarray, shape: tuple[int, int, int], k: slice) -> np.ndarray:
    """World (RAS mm) coordinates of the voxels of slab ``k`` (last axis) of a grid, N x 3."""
    import numpy as np

    ii, jj, kk = np.meshgrid(
        np.arange(shape[0]), np.arange(shape[1]), np.arange(shape[2])[k], indexing="ij"
    )
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(np.float64)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def _source_voxels(src_affine, target_affine, target_shape, mapping, slab_voxels):
    """Yield ``(slab, source voxel coordinates N x 3)`` over the target grid, in z slabs."""
    import numpy as np

    inv_src = np.linalg.inv(src_affine)
    per_slice = max(1, int(target_shape[0]) * int(target_shape[1]))
    step = max(1, slab_voxels // per_slice)
    for start in range(0, int(target_shape[2]), step):
        k = slice(start, min(start + step, int(target_shape[2])))
        world = _grid_world_coords(target_affine, target_shape, k)
        if mapping is not None:
            world = np.asarray(mapping(world), dtype=np.float64)
        yield k, world @ inv_src[:3, :3].T + inv_src[:3, 3]


def resample_world(
    data: np.ndarray,
    src_affine: np.ndarray,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    mapping: Any = None,
    slab_voxels: int = 262_144,
) -> np.ndarray:
    """Nearest-neighbour resampling in world coordinates, in slabs to bound memory.

    ``mapping``, if given, maps target world coordinates (N x 3) to source world coordinates.
    """
    import numpy as np

    out = np.zeros(target_shape, dtype=np.int32)
    for k, vox in _source_voxels(src_affine, target_affine, target_shape, mapping, slab_voxels):
        n_k = k.stop - k.start
        out[:, :, k] = _nearest_lookup(data, vox).reshape(target_shape[0], target_shape[1], n_k)
    return out


def _resample_maps_world(maps: np.ndarray, src_affine: np.ndarray, target_affine: np.ndarray,
                         target_shape: tuple[int, int, int], mapping: Any = None,
                         slab_voxels: int = 262_144) -> Any:
    """Trilinear resampling of 4D maps, as a sparse (voxels in Fortran order x maps) matrix."""
    import numpy as np
    from scipy import ndimage, sparse

    n_maps = maps.shape[3]
    rows, cols, vals = [], [], []
    for k, vox in _source_voxels(src_affine, target_affine, target_shape, mapping, slab_voxels):
        for m in range(n_maps):
            v = ndimage.map_coordinates(maps[..., m], vox.T, order=1, mode="constant", cval=0.0)
            nz = np.flatnonzero(v)
            if nz.size:
                rows.append(_fortran_index(nz, target_shape, k))
                cols.append(np.full(nz.size, m, dtype=np.int32))
                vals.append(v[nz].astype(np.float32))
    n_vox = int(np.prod(target_shape))
    if not rows:
        return sparse.csc_matrix((n_vox, n_maps), dtype=np.float32)
    return sparse.csc_matrix((np.concatenate(vals), (np.concatenate(rows),
                                                     np.concatenate(cols))),
                             shape=(n_vox, n_maps), dtype=np.float32)


def _maps_as_matrix(maps: np.ndarray) -> Any:
    """4D maps already on the grid as a sparse (voxels in Fortran order x maps) matrix."""
    from scipy import sparse

    return sparse.csc_matrix(maps.reshape(-1, maps.shape[3], order="F"))


def _fortran_index(nz: np.ndarray, shape: tuple[int, int, int], k: slice) -> np.ndarray:
    """Fortran-order flat index on the full grid of positions ``nz`` of a slab's C-order list.

    The slab's coordinates come from ``meshgrid(..., indexing="ij")`` raveled in C order:
    i is the slowest, then j, then k (within the slab).
    """
    import numpy as np

    n_k = k.stop - k.start
    i, rest = np.divmod(nz, int(shape[1]) * n_k)
    j, kk = np.divmod(rest, n_k)
    return (i + int(shape[0]) * (j + int(shape[1]) * (kk + k.start))).astype(np.int64)


def load_itk_mapping(path: Path) -> Any:
    """Load an ITK/ANTs composite ``.h5`` transform with nitransforms; return a point mapper.

    The returned callable maps target-template world coordinates (RAS mm, N x 3) to atlas-
    template world coordinates, the direction ``antsApplyTransforms`` uses to resample. The
    last transform loaded is kept in memory (runs of a subject share it).
    """
    st = path.stat()
    return _load_itk_mapping_cached(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def _load_itk_mapping_cached(path: str, size: int, mtime_ns: int) -> Any:
    from nitransforms.manip import TransformChain  # optional dependency (pulls in h5py)

    chain = TransformChain.from_filename(path, fmt="itk")
    return chain.map


# --------------------------------------------------------------------------------------------
# Plan, cache, resample
# --------------------------------------------------------------------------------------------


def _plan(atlas: Atlas, target_space: str | None) -> dict[str, Any]:
    """How the atlas reaches the run: same template, template transform, or world coordinates."""
    atlas_tpl, target_tpl = template_id(atlas.template), template_id(target_space)
    info: dict[str, Any] = {"AtlasSpace": atlas.template, "TargetSpace": target_space}
    if atlas.note:
        info["AtlasRelease"] = atlas.note
    if atlas_tpl is None or target_tpl is None or atlas_tpl == target_tpl:
        return {"info": info, "how": "same"}
    xfm = template_transform_path(target_tpl, atlas_tpl)
    if usable(xfm):
        return {"info": info, "how": "transform", "xfm": xfm}
    return {"info": info, "how": "world", "reason": f"{xfm} not found"}


def _warn_world(atlas: Atlas, target_space: str | None, reason: str) -> None:
    atlas_tpl, target_tpl = template_id(atlas.template), template_id(target_space)
    warn_once(
        (str(atlas_tpl), str(target_tpl), reason),
        "atlas %s is in %s but the run is in %s and no template transform could be applied "
        "(%s); matching voxels by world coordinates instead",
        atlas.name, atlas_tpl, target_tpl, reason,
    )


def _cache_file(cache_dir: Path | None, atlas: Atlas, kind: str, affine: np.ndarray,
                shape: tuple[int, int, int], plan: dict[str, Any]) -> Path | None:
    import numpy as np

    if cache_dir is None:
        return None
    xfm = plan.get("xfm")
    key = {
        "version": INDEX_CACHE_VERSION, "kind": kind, "how": plan["how"],
        "sha256": atlas.sha256 or str(Path(atlas.image).resolve()),
        "affine": np.round(np.asarray(affine, float), 6).tolist(), "shape": list(shape),
        "info": plan["info"],
        "xfm": None if xfm is None else [str(xfm), xfm.stat().st_size, xfm.stat().st_mtime_ns],
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return Path(cache_dir) / f"{atlas.name}_{kind}_{digest[:24]}.npz"


def _cache_read(path: Path | None, shape: tuple[int, int, int]) -> tuple[Any, dict] | None:
    import numpy as np

    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            info = json.loads(str(npz["info"]))
            if "labels" in npz.files:
                data = npz["labels"].astype(np.int32)
                if data.shape != tuple(shape):
                    return None
                return data, info
            from scipy import sparse

            matrix = sparse.csc_matrix((npz["data"], npz["indices"], npz["indptr"]),
                                       shape=tuple(npz["mshape"]))
            return matrix, info
    except Exception as exc:  # noqa: BLE001 - a damaged cache entry is recomputed
        LOGGER.debug("ignoring unreadable atlas index %s: %s", path, exc)
        return None


def _cache_write(path: Path | None, payload: dict[str, Any], info: dict) -> None:
    import numpy as np

    from bidsfm.utils import atomic_path

    if path is None:
        return
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, info=np.array(json.dumps(info)), **payload)
    except OSError as exc:  # a read-only or full work folder only costs time
        LOGGER.warning("cannot write the atlas index cache %s (%s)", path, exc)


def _place(atlas: Atlas, target_affine: Any, target_shape: Any, target_space: str | None,
           cache_dir: Path | None, kind: str) -> tuple[Any, dict]:
    """Resample ``atlas`` (labels or maps) onto a grid, through the index cache."""
    import numpy as np

    target_affine = np.asarray(target_affine, dtype=np.float64)
    if target_affine.shape != (4, 4):
        raise ValueError(f"target_affine must be 4 x 4, got {target_affine.shape}")
    target_shape = tuple(int(s) for s in tuple(target_shape)[:3])
    if len(target_shape) != 3:
        raise ValueError(f"target_shape must have 3 dimensions, got {target_shape}")
    plan = _plan(atlas, target_space)
    path = _cache_file(cache_dir, atlas, kind, target_affine, target_shape, plan)
    hit = _cache_read(path, target_shape)
    if hit is not None:
        if hit[1].get("Method") == WORLD:
            _warn_world(atlas, target_space, plan.get("reason", "cached placement"))
        return hit
    if kind == "dseg":
        import nibabel as nb

        data = load_label_array(Path(atlas.image))
        src_affine = np.asarray(nb.load(str(atlas.image)).affine, dtype=np.float64)
    else:
        data, src_affine = load_maps(Path(atlas.image))
    resample = resample_world if kind == "dseg" else _resample_maps_world
    info = dict(plan["info"])
    out = None
    if plan["how"] == "transform":
        try:
            mapping = load_itk_mapping(plan["xfm"])
            out = resample(data, src_affine, target_affine, target_shape, mapping)
        except ImportError as exc:
            plan = {**plan, "how": "world",
                    "reason": f"nitransforms is not installed ({exc.name or exc})"}
        except Exception as exc:  # noqa: BLE001 - fall back, but say why
            plan = {**plan, "how": "world", "reason": f"cannot apply {plan['xfm'].name}: "
                    f"{type(exc).__name__}: {exc}".replace("\n", " ")}
        else:
            info["Method"] = "template-transform"
            info["Transform"] = str(plan["xfm"])
        if out is None:
            path = _cache_file(cache_dir, atlas, kind, target_affine, target_shape, plan)
    if out is None and plan["how"] == "same":
        if (data.shape[:3] == target_shape
                and np.allclose(src_affine, target_affine, atol=1e-4)):
            info["Method"] = "identical-grid"
            out = (data.astype(np.int32, copy=True) if kind == "dseg"
                   else _maps_as_matrix(data))
        else:
            info["Method"] = ("nearest-neighbour-resampling" if kind == "dseg"
                              else "trilinear-resampling")
            out = resample(data, src_affine, target_affine, target_shape)
    if out is None:
        _warn_world(atlas, target_space, plan["reason"])
        info["Method"] = WORLD
        out = resample(data, src_affine, target_affine, target_shape)
    if kind == "dseg":
        dtype = np.int16 if out.max(initial=0) < 32767 else np.int32
        _cache_write(path, {"labels": out.astype(dtype)}, info)
    else:
        _cache_write(path, {"data": out.data, "indices": out.indices, "indptr": out.indptr,
                            "mshape": np.asarray(out.shape)}, info)
    return out, info


def resample_labels(
    atlas: Atlas,
    target_affine: np.ndarray,
    target_shape: tuple[int, int, int],
    *,
    target_space: str | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[np.ndarray, dict]:
    """Bring a label atlas onto a run's voxel grid with nearest-neighbour interpolation.

    When the atlas and the run are in the same template (or either is unknown) voxels are
    matched in world coordinates (this agrees with
    ``nilearn.image.resample_to_img(atlas, target, interpolation="nearest")``). When the
    templates differ, TemplateFlow's ``tpl-{target}_from-{atlas}_mode-image_xfm.h5`` is applied
    if it is in ``$TEMPLATEFLOW_HOME`` and ``nitransforms`` is installed (as XCP-D does with
    ANTs); otherwise world coordinates are used and a warning is logged once.

    Parameters
    ----------
    atlas : Atlas
        The resolved atlas (``kind == "dseg"``).
    target_affine : numpy.ndarray
        4 x 4 voxel-to-world affine of the run.
    target_shape : tuple of int
        Spatial shape of the run (the first three dimensions are used).
    target_space : str, optional
        The run's template (e.g. ``"MNI152NLin2009cAsym"``).
    cache_dir : str or Path, optional
        Folder of the resampled-index cache (e.g. ``<work dir>/atlas_index``): the result is
        read from there when an earlier call placed the same atlas on the same grid the same
        way, and written there otherwise. None: no cache.

    Returns
    -------
    labels : numpy.ndarray
        int32 label array of shape ``target_shape`` (the values of ``atlas.labels["index"]``).
    info : dict
        ``AtlasSpace``, ``TargetSpace``, ``Method`` (``"identical-grid"``,
        ``"nearest-neighbour-resampling"``, ``"template-transform"`` or
        ``"world-coordinates (no template transform available)"``), for a template
        transform ``Transform`` (the file used), and ``AtlasRelease`` when the atlas file
        itself was transformed into its template by someone else (or joined by bidsfm).
    """
    if atlas.kind != "dseg":
        raise ValueError(f"atlas {atlas.name} holds probabilistic maps: use resample_maps")
    cache = None if cache_dir is None else Path(cache_dir)
    return _place(atlas, target_affine, target_shape, target_space, cache, "dseg")


def resample_maps(atlas: Atlas, target_affine: np.ndarray, target_shape: tuple[int, int, int],
                  *, target_space: str | None = None, cache_dir: str | Path | None = None
                  ) -> tuple[Any, dict]:
    """Bring probabilistic maps onto a run's grid by trilinear interpolation.

    As nilearn's ``NiftiMapsMasker`` resamples maps onto the data (``interpolation="linear"``);
    template transforms, world coordinates and the cache as :func:`resample_labels`.

    Returns
    -------
    maps : scipy.sparse.csc_matrix
        (voxels of the grid in Fortran order) x (maps), float32.
    info : dict
        As :func:`resample_labels`; ``Method`` is ``"identical-grid"`` (maps on the run's grid
        are used as they are) or ``"trilinear-resampling"`` within a template.
    """
    if atlas.kind != "probseg":
        raise ValueError(f"atlas {atlas.name} is a label atlas: use resample_labels")
    cache = None if cache_dir is None else Path(cache_dir)
    return _place(atlas, target_affine, target_shape, target_space, cache, "probseg")


# --------------------------------------------------------------------------------------------
# Policy and projection onto a run
# --------------------------------------------------------------------------------------------


def check_placement(atlas: Atlas, target_space: str | None, info: dict[str, Any]
                    ) -> dict[str, Any]:
    """Refuse an atlas placed by world coordinates unless both templates are MNI templates.

    :func:`resample_labels` falls back to world coordinates when no template transform can be
    applied. Between two MNI templates (e.g. an MNI152NLin6Asym atlas on MNI152NLin2009cAsym
    data) that is a few millimetres off and is accepted, but said in the QC table
    (``atlas_transform``), the sidecars (``Atlas.Transform``) and the report. Between anything
    else it would be a wrong result that looks valid, so the run fails.

    Returns
    -------
    dict
        ``info``, with ``Method`` spelled out (and ``WorldCoordinates: true``) when world
        coordinates were used.

    Raises
    ------
    InputDataError
        When the atlas would be placed by world coordinates across non-MNI templates.
    """
    from bidsfm.discovery import is_mni_template

    method = str(info.get("Method", ""))
    if not method.startswith("world-coordinates"):
        return info
    src, dst = atlas.template, target_space
    if not (is_mni_template(src) and is_mni_template(dst)):
        raise InputDataError(
            f"atlas {atlas.name} is in {src} but the run is in {dst}, and no template transform "
            f"from {src} to {dst} could be applied; matching by world coordinates is only "
            "accepted between two MNI templates",
            remedy=f"Fetch TemplateFlow's tpl-{dst}_from-{src}_mode-image_xfm.h5 into "
                   "$TEMPLATEFLOW_HOME (and install nitransforms), use an atlas released in "
                   f"{dst}, or use fMRIPrep outputs in an MNI space")
    out = dict(info)
    out["Method"] = (f"world-coordinates ({src} atlas on {dst} data: both MNI templates, no "
                     "template transform applied; expect misplacement of a few mm)")
    out["WorldCoordinates"] = True
    return out


def place_atlas(atlas: Atlas, target_affine: np.ndarray, target_shape: tuple[int, ...],
                mask: np.ndarray, *, target_space: str | None = None,
                cache_dir: str | Path | None = None) -> tuple[Any, dict]:
    """Place an atlas on a run and build what the extraction needs, saying how it was placed.

    Parameters
    ----------
    atlas : Atlas
    target_affine, target_shape :
        The run's grid.
    mask : numpy.ndarray
        The run's 3D boolean brain mask.
    target_space : str, optional
        The run's template.
    cache_dir : str or Path, optional
        The resampled-index cache (see :func:`resample_labels`).

    Returns
    -------
    projection : LabelProjection or MapsProjection
        For :func:`bidsfm.extract.extract_roi_signals`.
    info : dict
        The placement (:func:`check_placement`), for the sidecars and the QC table.

    Raises
    ------
    InputDataError
        World-coordinate placement across non-MNI templates.
    """
    from bidsfm.extract import project_labels, project_maps

    if atlas.kind == "probseg":
        maps, info = resample_maps(atlas, target_affine, tuple(target_shape)[:3],
                                   target_space=target_space, cache_dir=cache_dir)
        info = check_placement(atlas, target_space, info)
        return project_maps(maps, mask), info
    labels, info = resample_labels(atlas, target_affine, tuple(target_shape)[:3],
                                   target_space=target_space, cache_dir=cache_dir)
    info = check_placement(atlas, target_space, info)
    return project_labels(labels, atlas.labels["index"].to_numpy(), mask), info
