"""Atlas images and label tables: reading them, checking them, one-line errors otherwise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bidsfm.errors import AtlasNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

#: Column names accepted for the label value and the ROI name in a label TSV (BIDS ``index``/
#: ``name``, XCP-D ``label``, xcp_d's ``node``, TemplateFlow DiFuMo ``Component``/``Difumo_names``).
INDEX_COLUMNS = ("index", "Component", "component")
NAME_COLUMNS = ("name", "label", "node", "Difumo_names", "difumo_names")


def _read_image(path: Path) -> Any:
    import nibabel as nb

    try:
        return nb.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise AtlasNotFoundError(
            f"cannot read atlas image ({type(exc).__name__}: {exc})".replace("\n", " "),
            path=path, remedy="Give a 3D integer label NIfTI (.nii or .nii.gz)",
        ) from None


def image_kind(path: Path) -> str:
    """``"dseg"`` for a 3D image (or 4D with one volume), ``"probseg"`` for 4D maps.

    Raises
    ------
    AtlasNotFoundError
        Unreadable, or neither 3D nor 4D.
    """
    shape = tuple(_read_image(path).shape)
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        return "dseg"
    if len(shape) == 4:
        return "probseg"
    raise AtlasNotFoundError(
        f"atlas is not a 3D label image or 4D probabilistic maps (shape {shape})", path=path,
        remedy="Give a 3D integer label NIfTI, or 4D maps with one volume per region")


def load_label_array(path: Path) -> np.ndarray:
    """Load a 3D integer label image, raising one-line errors for anything else."""
    import numpy as np

    img = _read_image(path)
    if len(img.shape) == 4 and img.shape[3] == 1:
        data = np.asanyarray(img.dataobj)[..., 0]
    elif len(img.shape) == 3:
        data = np.asanyarray(img.dataobj)
    else:
        raise AtlasNotFoundError(
            f"atlas is not a 3D label image (shape {tuple(img.shape)})",
            path=path,
            remedy="Give a 3D integer label NIfTI (4D images are read as probabilistic maps)",
        )
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)):
            raise AtlasNotFoundError(
                "atlas has non-integer values (is it a probabilistic map?)",
                path=path, remedy="Give a 3D integer label NIfTI",
            )
    if data.size and data.min() < 0:
        raise AtlasNotFoundError(
            "atlas has negative label values", path=path,
            remedy="Labels must be positive integers with 0 as background",
        )
    return data.astype(np.int32, copy=False)


def load_maps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Load 4D probabilistic maps as float32 ``(x, y, z, k)`` with the image affine.

    Raises
    ------
    AtlasNotFoundError
        Not 4D, non-finite weights, or every map empty.
    """
    import numpy as np

    img = _read_image(path)
    if len(img.shape) != 4:
        raise AtlasNotFoundError(f"probabilistic atlas is not 4D (shape {tuple(img.shape)})",
                                 path=path, remedy="Give 4D maps, one volume per region")
    data = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(data).all():
        raise AtlasNotFoundError("probabilistic atlas has non-finite weights", path=path)
    if not np.any(data):
        raise AtlasNotFoundError("probabilistic atlas has only empty maps (all weights 0)",
                                 path=path, remedy="Give maps with non-zero weights")
    return data, np.asarray(img.affine, dtype=np.float64)


def image_label_values(path: Path) -> list[int]:
    """The non-zero label values of a 3D label image (or 1..K for K probabilistic maps)."""
    import numpy as np

    if image_kind(path) == "probseg":
        return list(range(1, int(_read_image(path).shape[3]) + 1))
    values = np.unique(load_label_array(path))
    return [int(v) for v in values if v != 0]


def generated_labels(name: str, indices: Any) -> pd.DataFrame:
    """Labels ``{name}_{index:03d}`` for the given label values."""
    import pandas as pd

    idx = sorted(int(i) for i in indices)
    return pd.DataFrame({"index": idx, "name": [f"{name}_{i:03d}" for i in idx]})


def _table(path: Path, index: list[int], names: list[str]) -> pd.DataFrame:
    import pandas as pd

    labels = pd.DataFrame({"index": [int(i) for i in index], "name": [str(n) for n in names]})
    labels = labels[labels["index"] != 0]
    if labels["index"].duplicated().any():
        dups = sorted(set(labels.loc[labels["index"].duplicated(), "index"]))
        raise AtlasNotFoundError(
            f"atlas label table repeats index values {dups[:5]}", path=path,
            remedy="Give one row per label",
        )
    if (labels["index"] < 0).any():
        raise AtlasNotFoundError("atlas label table has negative index values", path=path)
    return labels.sort_values("index").reset_index(drop=True)


def read_label_tsv(path: Path) -> pd.DataFrame:
    """Read an ``index``/``name`` (or ``label``, ``node``) TSV into the canonical labels table."""
    import pandas as pd

    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # noqa: BLE001
        raise AtlasNotFoundError(
            f"cannot read atlas label table ({type(exc).__name__})", path=path,
            remedy="Give a tab-separated file with columns index and name",
        ) from None
    index_col = next((c for c in INDEX_COLUMNS if c in table.columns), None)
    name_col = next((c for c in NAME_COLUMNS if c in table.columns), None)
    if index_col is None or name_col is None:
        raise AtlasNotFoundError(
            f"atlas label table lacks an index and a name/label column "
            f"(columns: {', '.join(map(str, table.columns))})",
            path=path, remedy="Add columns index and name",
        )
    index = pd.to_numeric(table[index_col], errors="coerce")
    if index.isna().any() or not (index == index.round()).all():
        raise AtlasNotFoundError(
            "atlas label table has non-integer index values", path=path,
            remedy="Index must hold the integer label values of the image",
        )
    return _table(path, index.astype(int).tolist(), table[name_col].astype(str).tolist())


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text(encoding="latin-1").splitlines() if ln.strip()]


def _swap_lr(name: str) -> str:
    """``Left_X`` <-> ``Right_X`` (neuroparc's Harvard-Oxford subcortical table)."""
    return re.sub(r"^(Left|Right)(?=[_ ])",
                  lambda m: "Right" if m.group(1) == "Left" else "Left", name)


def read_label_file(path: Path, fmt: str) -> pd.DataFrame:
    """Read one of the label-table formats the registry's sources use.

    Parameters
    ----------
    path : Path
        The label file.
    fmt : str
        ``tsv`` (index + name/label/node columns); ``lines`` (line n names value n: Tian,
        xcpEngine's ``*NodeNames.txt``); ``schaefer_txt`` (CBIG/nilearn: index, name, R, G, B,
        0, tab-separated); ``cbig_info`` (CBIG label list: a name line, then "index R G B A");
        ``csv`` (neuroparc: index,name with a 0 row); ``csv_swap_lr`` (the same, with Left and
        Right exchanged: neuroparc's Harvard-Oxford subcortical table has them swapped);
        ``aal_xml`` (AAL's XML); ``aal3_txt`` (AAL3: "n name value", rows without a value are
        ROIs AAL3 removed).

    Returns
    -------
    pandas.DataFrame
        ``index``, ``name``.
    """
    if fmt == "tsv":
        return read_label_tsv(path)
    try:
        if fmt == "lines":
            names = _lines(path)
            return _table(path, list(range(1, len(names) + 1)), names)
        if fmt == "schaefer_txt":
            rows = [ln.split("\t") for ln in _lines(path)]
            return _table(path, [int(r[0]) for r in rows], [r[1] for r in rows])
        if fmt == "cbig_info":
            lines = _lines(path)
            return _table(path, [int(v.split()[0]) for v in lines[1::2]], lines[0::2])
        if fmt in ("csv", "csv_swap_lr"):
            rows = [ln.split(",") for ln in _lines(path)]
            rows = [r for r in rows if int(r[0]) != 0]
            names = [r[1].strip() for r in rows]
            if fmt == "csv_swap_lr":
                names = [_swap_lr(n) for n in names]
            return _table(path, [int(r[0]) for r in rows], names)
        if fmt == "aal_xml":
            import xml.etree.ElementTree as ET

            root = ET.fromstring(path.read_bytes())
            items = [(int(lab.findtext("index")), lab.findtext("name").strip())
                     for lab in root.iter("label")]
            return _table(path, [i for i, _ in items], [n for _, n in items])
        if fmt == "aal3_txt":
            rows = [ln.split() for ln in _lines(path)]
            rows = [r for r in rows if len(r) >= 3]
            return _table(path, [int(r[2]) for r in rows], [r[1] for r in rows])
    except AtlasNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is a damaged file
        raise AtlasNotFoundError(
            f"cannot read atlas label table as {fmt} ({type(exc).__name__}: {exc})",
            path=path, remedy="The file looks damaged; fetch it again") from None
    raise ValueError(f"unknown label format {fmt!r}")
