"""One atlas from several (``A+B``): XCP-D's 4S idea and Brain-JEPA's Tian S3 + Schaefer-400.

The parts are taken in one template (the run's when every part has it, else the first template
in which all parts are available), each part is placed on the first part's grid by nearest
neighbour (identical voxels when the parts share a grid, as the bundled MNI152NLin2009cAsym
Tian and Schaefer files do), ROIs are renumbered 1..N in the order given, and where parts
overlap the earlier part keeps the voxel (as in Tian's own Schaefer + subcortex files, which
put the subcortex first). The joined image is written once, with reproducible bytes, to
``$BIDSFM_HOME/atlases/combined`` (a temporary folder when that is read-only), so that it has
a file and a sha256 like any other atlas: the run sidecars and the output's BIDS-Atlas dataset
name the same file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

from bidsfm.errors import AtlasNotFoundError

from .base import LOGGER, Atlas, template_id
from .names import combined_name


def _folder() -> Path:
    from .store import cache_dir

    folder = cache_dir() / "combined"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    fallback = Path(tempfile.gettempdir()) / f"bidsfm-atlases-{os.getuid()}" / "combined"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def _labels(parts: list[Atlas]):
    import pandas as pd

    names = [n for p in parts for n in p.roi_names]
    clash = len(set(names)) != len(names)
    frames = [pd.DataFrame({"name": [f"{p.name}_{n}" if clash else n for n in p.roi_names]})
              for p in parts]
    labels = pd.concat(frames, ignore_index=True)
    labels.insert(0, "index", range(1, len(labels) + 1))
    return labels


def join_on_first_grid(parts: list[Atlas]):
    """The joined label array on the first part's grid.

    Each part is placed on the first part's grid by nearest neighbour (a template transform
    when templates differ and TemplateFlow has it), its ROIs renumbered to follow the earlier
    parts' (1..n1, n1+1..n1+n2, ...); where parts overlap, the earlier part keeps the voxel.

    Returns
    -------
    joined : np.ndarray
        int32 label array.
    affine : np.ndarray
        The first part's affine.
    overlaps : list of int
        Per part, the voxels it lost to earlier parts.
    """
    import nibabel as nb
    import numpy as np

    from .placement import resample_labels

    ref = nb.load(str(parts[0].image))
    shape = tuple(int(s) for s in ref.shape[:3])
    joined = np.zeros(shape, dtype=np.int32)
    offset, overlaps = 0, []
    for part in parts:
        labels, _ = resample_labels(part, ref.affine, shape, target_space=parts[0].template)
        index = part.labels["index"].to_numpy(dtype=np.int64)
        lut = np.zeros(int(max(index.max(), labels.max())) + 1, dtype=np.int32)
        lut[index] = offset + np.arange(1, index.size + 1)
        mapped = lut[np.clip(labels, 0, None)]
        free = joined == 0
        overlaps.append(int(((~free) & (mapped > 0)).sum()))
        joined[free] = mapped[free]
        offset += index.size
    return joined, np.asarray(ref.affine, dtype=np.float64), overlaps


def combine(parts: list[Atlas]) -> Atlas:
    """Join label atlases of one template into one atlas (see the module docstring).

    Parameters
    ----------
    parts : list of Atlas
        Label atlases, all in the same template, in ROI order.

    Returns
    -------
    Atlas
        Its ``image`` is the joined file, ``parts`` the atlases joined.

    Raises
    ------
    AtlasNotFoundError
        A probabilistic part, or parts in different templates.
    """
    import nibabel as nb
    import numpy as np

    from bidsfm.utils import atomic_path, sha256_file

    if any(p.kind != "dseg" for p in parts):
        raise AtlasNotFoundError("only label atlases can be joined with +")
    templates = {template_id(p.template) for p in parts}
    if len(templates) != 1:
        raise AtlasNotFoundError(
            "the atlases joined with + are in different templates ("
            + ", ".join(f"{p.name}: {p.template}" for p in parts) + ")",
            remedy="Fetch each part in one template (`bidsfm-atlas fetch NAME --space T`)")
    name = combined_name("+".join(p.name for p in parts))
    template = parts[0].template
    key = hashlib.sha256("+".join(f"{p.name}:{p.sha256}" for p in parts).encode()).hexdigest()
    stem = f"tpl-{template}_atlas-{name}_desc-{key[:12]}_dseg"
    from .base import usable
    from .store import cache_dir

    path = cache_dir() / "combined" / f"{stem}.nii.gz"  # e.g. baked into a container image
    if not usable(path):
        path = _folder() / f"{stem}.nii.gz"
    labels = _labels(parts)
    if not path.is_file():
        joined, affine, overlaps = join_on_first_grid(parts)
        for part, overlap in zip(parts, overlaps, strict=True):
            if overlap:
                LOGGER.debug("%s: %d voxel(s) overlap earlier parts and keep the earlier "
                             "label", part.name, overlap)
        img = nb.Nifti1Image(joined.astype(np.int16 if len(labels) < 32767 else np.int32),
                             affine)
        img.header["descrip"] = f"bidsfm: {' + '.join(p.name for p in parts)}"[:79].encode()
        with atomic_path(path) as tmp:
            tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=6, mtime=0))
        with atomic_path(path.with_name(f"{stem}.tsv")) as tmp:
            labels.to_csv(tmp, sep="\t", index=False)
    notes = "; ".join(f"{p.name}: {p.note}" for p in parts if p.note)
    note = (f"{' + '.join(p.name for p in parts)} joined by bidsfm on {parts[0].name}'s grid "
            "(ROIs in that order; earlier parts keep overlapping voxels)"
            + (f"; {notes}" if notes else ""))
    return Atlas(name=name, image=path, labels=labels, template=template,
                 source=" + ".join(p.source for p in parts), sha256=sha256_file(path),
                 kind="dseg", parts=tuple(parts), note=note)
