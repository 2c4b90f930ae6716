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

    Each atlas's ROIs (in its label-table order) are renumbered to follow the previous atlases'
    (1..n1, n1+1..n1+n2, ...). Every atlas is brought onto the first one's voxel grid by
    nearest neighbour (:func:`bidsfm.atlases.resample_labels`, with a template transform when
    the templates differ and TemplateFlow has it); where atlases overlap, the earlier one keeps
    the voxel. A TSV (``index``, ``name``) is written beside the image, so that
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

    from ...atlases import resample_labels, resolve_atlas
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
    ref = nib.load(str(atlases[0].image))
    shape = tuple(int(s) for s in ref.shape[:3])
    combined = np.zeros(shape, dtype=np.int32)
    lines, offset = ["index\tname"], 0
    for atlas in atlases:
        labels, _info = resample_labels(atlas, ref.affine, shape, target_space=atlases[0].template)
        index = atlas.labels["index"].to_numpy(dtype=np.int64)
        lut = np.zeros(int(max(index.max(), labels.max())) + 1, dtype=np.int32)
        lut[index] = offset + np.arange(1, index.size + 1)
        mapped = lut[np.clip(labels, 0, None)]
        free = combined == 0
        overlap = int(((~free) & (mapped > 0)).sum())
        if overlap:
            logging.getLogger(__name__).warning(
                "%s: %d voxel(s) overlap earlier atlases and keep the earlier label",
                atlas.name, overlap)
        combined[free] = mapped[free]
        lines += [f"{offset + k + 1}\t{n}" for k, n in enumerate(atlas.roi_names)]
        offset += index.size
    img = nib.Nifti1Image(combined, ref.affine)
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
