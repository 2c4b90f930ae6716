"""Stacking label atlases into one (Brain-JEPA: Tian S3 subcortex first, then Schaefer-400
17-network), for ``bidsfm-import combine-atlas``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import ConfigError

__all__ = ["combine_atlases"]


def combine_atlases(specs: list[str], out_path: str | Path) -> Path:
    """Stack several label atlases into one, in the given order (e.g. Tian S3 + Schaefer400x17).

    The labels are joined as ``A+B`` atlases are (:func:`bidsfm.atlases.combine.
    join_on_first_grid`: ROIs renumbered in the given order on the first atlas's grid, earlier
    atlases keep overlapping voxels), but kept as a user file with the parts' own ROI
    names. A TSV (``index``, ``name``) is written beside the image, so that
    ``NAME=OUT_PATH`` is a complete user atlas.

    Parameters
    ----------
    specs : list of str
        Atlas specs for :func:`bidsfm.atlases.resolve_atlas` (names, paths or NAME=PATH).
    out_path : str or Path
        Output ``.nii.gz``; name it with BIDS entities, e.g.
        ``tpl-MNI152NLin6Asym_atlas-TianS3Schaefer400x17_dseg.nii.gz`` (the ``tpl-`` entity
        records its template).

    Returns
    -------
    Path
        The image written (the TSV is ``out_path`` with ``.tsv`` instead of ``.nii.gz``).

    Raises
    ------
    ConfigError
        Fewer than two atlases, an output that exists, or an atlas that cannot be resolved.
    """
    import logging

    import nibabel as nib

    from ...atlases import resolve_atlas
    from ...atlases.combine import join_on_first_grid
    from ...errors import AtlasNotFoundError
    from ...utils import atomic_path, write_text_atomic

    out_path = Path(out_path).expanduser()
    if len(specs) < 2:
        raise ConfigError("give at least two atlases to combine")
    if not re.search(r"\.nii\.gz$", out_path.name):
        raise ConfigError("output must be a .nii.gz file", path=out_path)
    tsv = out_path.with_name(out_path.name[: -len(".nii.gz")] + ".tsv")
    for p in (out_path, tsv):
        if p.exists():
            raise ConfigError("output exists", path=p, remedy="Choose a new file name")
    try:
        atlases = [resolve_atlas(s) for s in specs]
    except AtlasNotFoundError as err:
        raise ConfigError(f"cannot combine: {err.one_line()}") from None
    combined, affine, overlaps = join_on_first_grid(atlases)
    lines, offset = ["index\tname"], 0
    for atlas, overlap in zip(atlases, overlaps, strict=True):
        if overlap:
            logging.getLogger(__name__).warning(
                "%s: %d voxel(s) overlap earlier atlases and keep the earlier label",
                atlas.name, overlap)
        lines += [f"{offset + k + 1}\t{n}" for k, n in enumerate(atlas.roi_names)]
        offset += atlas.n_rois
    img = nib.Nifti1Image(combined, affine)
    img.set_data_dtype(np.int16 if offset < 32767 else np.int32)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_path) as tmp:
        nib.save(img, str(tmp))
    try:
        write_text_atomic(tsv, "\n".join(lines) + "\n")
    except BaseException:
        out_path.unlink(missing_ok=True)  # never an image without its label table
        raise
    return out_path
