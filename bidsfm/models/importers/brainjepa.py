"""Official Brain-JEPA checkpoint + gradient CSV -> bidsfm model folder (Dong et al., NeurIPS
2024).

``jepa-ep*.pth.tar`` holds ``encoder``, ``predictor``, ``target_encoder`` (keys prefixed
``module.``), ``opt``, ``scaler``, ``epoch``...; only ``target_encoder`` is used (the official
downstream code does the same). The official layouts are ViT-S/B/L (embed dim 384/768/1024,
12/12/24 blocks, 6/12/16 heads) with MLP ratio 4 and a ``qkv`` bias, on 450 ROIs x 160
frames in 16-frame patches with 30 gradients; any other layout is imported only when asked for
(``allow_custom_layout``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ...references import reference
from .checkpoint import load_checkpoint, state_dict_from, strip_prefix
from .folder import (
    LICENCE,
    NO_HEADS,
    SCHAEFER_CITATION,
    TIAN_CITATION,
    atlas_card,
    check_label,
    custom_layout_remedy,
    prepare_out,
    save_folder,
    source_record,
)
from .layout import check_finite, check_layout, layer_count, most_common, tensor_shapes

__all__ = ["BRAINJEPA_STATE_KEY", "BRAINJEPA_TARGET_TR", "BRAINJEPA_CITATION",
           "OFFICIAL_NORMALISATION", "read_gradients_csv", "official_size",
           "brainjepa_config_from_shapes", "import_brainjepa"]

BRAINJEPA_STATE_KEY = "target_encoder"
#: effective repetition time of the official Brain-JEPA input: UK Biobank (TR 0.735 s) series
#: downsampled by 3 (configs/ukb_vitb_ep300.yaml: downsample true, sampling_rate 3, 160 frames)
BRAINJEPA_TARGET_TR = 2.205
BRAINJEPA_CITATION = reference("brainjepa")
#: the card's input normalisation: the official downstream scheme (src/datasets/
#: hca_sex_datasets.py, use_normalization: input_x.mean() and input_x.std() over the whole
#: ROI x frame sample), see docs/importing.md
OFFICIAL_NORMALISATION = {
    "normalisation": "zscore_global",
    "normalisation_note": "one mean and SD over all ROIs and frames of the resampled run, as "
                          "the official downstream code (--use_normalization) does per sample; "
                          "its pretraining used per-ROI robust scaling with UK Biobank "
                          "medians/IQRs that are not distributed with the checkpoint",
}
_SIZES_TEXT = "small 384/12, base 768/12, large 1024/24"


def read_gradients_csv(path: str | Path, n_rois: int | None = 450,
                       n_components: int | None = 30) -> np.ndarray:
    """Read the official gradient file (``gradient_mapping_450.csv``: no header, comma-separated).

    Parameters
    ----------
    path : str or Path
        CSV with one row per ROI (atlas order) and one column per gradient component.
    n_rois, n_components : int or None
        Expected shape (None: any).

    Returns
    -------
    np.ndarray
        (n_rois, n_components) float32.

    Raises
    ------
    ConfigError
        Missing file, non-numeric cells, wrong shape or non-finite values.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ConfigError("gradient file not found or empty", path=path,
                          remedy="Give the gradient CSV (450 rows x 30 columns)")
    rows = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    try:
        values = [[float(cell) for cell in re.split(r"[,\t ]+", line.strip())] for line in rows]
    except ValueError:
        raise ConfigError("gradient file has non-numeric cells (a header row?)", path=path,
                          remedy="Give a plain numeric CSV without header: one row per ROI, "
                          "one column per gradient") from None
    widths = sorted({len(v) for v in values})
    if len(widths) != 1:
        raise ConfigError(f"gradient file rows have different lengths ({widths})", path=path)
    grad = np.asarray(values, dtype=np.float64)
    if (n_rois is not None and grad.shape[0] != n_rois) or (
            n_components is not None and grad.shape[1] != n_components):
        raise ConfigError(f"gradient file is {grad.shape[0]} x {grad.shape[1]}, expected "
                          f"{n_rois or 'R'} x {n_components or 'G'} (ROIs x components)",
                          path=path,
                          remedy="Give the gradients of the model's atlas (official: "
                          "gradient_mapping_450.csv)")
    if not np.isfinite(grad).all():
        raise ConfigError(f"gradient file has {int((~np.isfinite(grad)).sum())} non-finite "
                          "values", path=path)
    return grad.astype(np.float32)


def _dim(shapes: Mapping[str, tuple[int, ...]], index: int, key: str, rank: int) -> int | None:
    shape = shapes.get(key, ())
    return int(shape[index]) if len(shape) == rank else None


def _embed_dim(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    """The embed dim most tensors carry (patch embedding, final norm, every block's norm1)."""
    depth = layer_count(shapes, "blocks")
    dims = [_dim(shapes, 0, "patch_embed.proj.weight", 4), _dim(shapes, 0, "norm.weight", 1)]
    dims += [_dim(shapes, 0, f"blocks.{i}.norm1.weight", 1) for i in range(depth)]
    return most_common(d for d in dims if d)


def official_size(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The official size (``small``/``base``/``large``) whose embed dim and depth the
    checkpoint has, if any (``module.`` stripped)."""
    from ..brainjepa import OFFICIAL_SIZES

    dim, depth = _embed_dim(shapes), layer_count(shapes, "blocks")
    return next((s for s, (d, dep, _h) in OFFICIAL_SIZES.items()
                 if dim == d and dep == depth), None)


def _not_official(shapes: Mapping[str, tuple[int, ...]], path: str | Path) -> ConfigError:
    return ConfigError(f"embed dim {_embed_dim(shapes)} with {layer_count(shapes, 'blocks')} "
                       f"blocks is not an official Brain-JEPA size ({_SIZES_TEXT})", path=path,
                       remedy=custom_layout_remedy(" and --heads (not stored in the weights)"))


def _official_config(size: str, shapes: Mapping[str, tuple[int, ...]], n_rois: int,
                     n_heads: int | None, path: str | Path):
    """``BrainJEPAConfig.official(size)``, after checking the token grid the shapes imply."""
    from ..brainjepa import BrainJEPAConfig

    cfg = BrainJEPAConfig.official(size)
    if n_heads is not None and n_heads != cfg.n_heads:
        raise ConfigError(f"ViT-{size[0].upper()} has {cfg.n_heads} heads, not {n_heads}",
                          path=path)
    patch = _dim(shapes, 3, "patch_embed.proj.weight", 4) or cfg.patch_size
    n_grad = _dim(shapes, 1, "pos_embed_proj.predictor_pos_embed_proj.weight", 2) \
        or cfg.n_gradients
    n_tokens = _dim(shapes, 0, "pos_embed_proj.emb_h", 2) or cfg.n_tokens
    if n_tokens % n_rois:
        raise ConfigError(f"the checkpoint's {n_tokens} tokens are not a multiple of the "
                          f"gradient file's {n_rois} ROIs", path=path,
                          remedy="Give the gradients of the model's atlas (official: 450 x 30)")
    frames = n_tokens // n_rois * patch
    if (n_rois, frames, patch, n_grad) != (cfg.n_rois, cfg.n_frames, cfg.patch_size,
                                           cfg.n_gradients):
        raise ConfigError(f"ViT-{size[0].upper()} checkpoint with {n_rois} ROIs x {frames} "
                          f"frames, patch {patch}, {n_grad} gradients; the official model has "
                          f"{cfg.n_rois} x {cfg.n_frames}, patch {cfg.patch_size}, "
                          f"{cfg.n_gradients}", path=path,
                          remedy="Give the official 450 x 30 gradient file. "
                          + custom_layout_remedy())
    return cfg


def _custom_config(shapes: Mapping[str, tuple[int, ...]], n_rois: int, size: str | None,
                   n_heads: int | None, path: str | Path):
    """The layout the shapes imply; each size is the one most tensors carry."""
    from ..brainjepa import OFFICIAL_SIZES, BrainJEPAConfig

    need = {"patch_embed.proj.weight": 4, "pos_embed_proj.emb_h": 2,
            "pos_embed_proj.predictor_pos_embed_proj.weight": 2}
    absent = [k for k, nd in need.items() if len(shapes.get(k, ())) != nd]
    depth = layer_count(shapes, "blocks")
    if absent or depth == 0:
        what = ", ".join(absent + ([] if depth else ["blocks.*"]))
        raise ConfigError(f"cannot infer the Brain-JEPA layout: {what} missing or mis-shaped",
                          path=path, remedy="Give the official jepa-ep*.pth.tar checkpoint")
    dim = _embed_dim(shapes)
    patch = shapes["patch_embed.proj.weight"][3]
    n_tokens = shapes["pos_embed_proj.emb_h"][0]
    if size is not None:
        heads = OFFICIAL_SIZES[size][2]
        if n_heads is not None and n_heads != heads:
            raise ConfigError(f"ViT-{size[0].upper()} has {heads} heads, not {n_heads}",
                              path=path)
    elif n_heads is None:
        raise ConfigError(f"embed dim {dim} with {depth} blocks is not an official Brain-JEPA "
                          f"size ({_SIZES_TEXT})", path=path,
                          remedy="Pass --heads for a custom layout, or check the checkpoint")
    else:
        heads = int(n_heads)
    if n_tokens % n_rois:
        raise ConfigError(f"the checkpoint's {n_tokens} tokens are not a multiple of the "
                          f"gradient file's {n_rois} ROIs", path=path,
                          remedy="Give the gradients of the model's atlas (official: 450 x 30)")
    hidden = most_common(_dim(shapes, 0, f"blocks.{i}.mlp.fc1.weight", 2) for i in range(depth)
                         if f"blocks.{i}.mlp.fc1.weight" in shapes) or 4 * dim
    ratio = hidden / dim
    if int(dim * ratio) != hidden:  # float rounding: the encoder builds int(dim * mlp_ratio)
        ratio = (hidden + 0.5) / dim
    try:
        return BrainJEPAConfig(
            n_rois=int(n_rois), n_frames=int(n_tokens // n_rois * patch), patch_size=int(patch),
            embed_dim=int(dim), depth=int(depth), n_heads=heads, mlp_ratio=ratio,
            n_gradients=int(shapes["pos_embed_proj.predictor_pos_embed_proj.weight"][1]),
            qkv_bias=any(f"blocks.{i}.attn.qkv.bias" in shapes for i in range(depth)))
    except ValueError as exc:
        raise ConfigError(f"impossible Brain-JEPA layout: {exc}", path=path) from None


def brainjepa_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], n_rois: int,
                                 size: str | None = None, n_heads: int | None = None,
                                 path: str | Path = "checkpoint", allow_custom: bool = False):
    """The :class:`BrainJEPAConfig` of a checkpoint whose tensors have ``shapes``.

    The embed dim is the one most of ``patch_embed.proj.weight`` (D, 1, 1, P), ``norm.weight``
    and the blocks' ``norm1.weight`` carry, the depth the largest ``blocks.{i}`` index + 1. An
    official (D, depth) pair (small 384/12, base 768/12, large 1024/24) gives that size's
    layout, whose token grid (``pos_embed_proj.emb_h``: R * T/P rows with ``R = n_rois``) and
    gradient count must be the official 450 x 160, 30. With ``allow_custom`` the layout is
    read from the shapes instead: the patch length from ``patch_embed.proj.weight``, the number
    of frames from ``emb_h``, the gradient count from
    ``pos_embed_proj.predictor_pos_embed_proj.weight`` (D/2, G), the MLP width from the blocks'
    ``mlp.fc1.weight`` (the most common one), the qkv bias from its presence; a (D, depth)
    of no official size needs ``n_heads``.

    Parameters
    ----------
    shapes : mapping
        Key -> shape of the checkpoint's ``target_encoder`` (``module.`` stripped).
    n_rois : int
        ROIs (rows of the gradient file).
    size : str, optional
        Expected official size; a different inferred size is an error.
    n_heads : int, optional
        Heads of a non-official layout (for official sizes only checked against them).
    path : str or Path
        The checkpoint (named in errors).
    allow_custom : bool
        Read a non-official layout from the shapes instead of refusing it.

    Returns
    -------
    BrainJEPAConfig

    Raises
    ------
    ConfigError
        If the layout is not official (and ``allow_custom`` is False), cannot be inferred,
        contradicts ``size``/``n_heads``, or has a shape the configuration cannot produce.
    """
    from ..brainjepa import OFFICIAL_SIZES

    inferred = official_size(shapes)
    if size is not None:
        if size not in OFFICIAL_SIZES:
            raise ConfigError(f"unknown Brain-JEPA size {size!r} (small, base or large)")
        if inferred != size:
            d, dep, _h = OFFICIAL_SIZES[size]
            raise ConfigError(f"checkpoint is not ViT-{size[0].upper()} (embed dim "
                              f"{_embed_dim(shapes)}, {layer_count(shapes, 'blocks')} blocks; "
                              f"{size} has {d} and {dep})", path=path,
                              remedy="Leave --size out to infer it")
    if allow_custom:
        return _custom_config(shapes, n_rois, inferred, n_heads, path)
    if inferred is None:
        raise _not_official(shapes, path)
    return _official_config(inferred, shapes, n_rois, n_heads, path)


def _check_time_code(emb_h: Any, cfg: Any, path: str | Path) -> None:
    """``pos_embed_proj.emb_h`` must be the fixed sin/cos code of the time-patch index.

    It is a frozen parameter, so the checkpoint only repeats what the layout implies; another
    table means another token order or positional scheme, which bidsfm would silently misread.
    """
    from ..brainjepa import sincos_1d

    want = sincos_1d(cfg.embed_dim // 2, np.tile(np.arange(cfg.n_patches), cfg.n_rois))
    err = float(np.abs(emb_h.detach().cpu().double().numpy() - want).max())
    if err > 1e-4:
        raise ConfigError(f"pos_embed_proj.emb_h is not the sin/cos code of the time-patch index "
                          f"in ROI-major token order (max difference {err:.3g})", path=path,
                          remedy="Check that this is an official Brain-JEPA checkpoint "
                          "(add_w: mapping)")


def _layout_name(cfg: Any) -> str | None:
    """``small``/``base``/``large`` when ``cfg`` is exactly that official layout."""
    from ..brainjepa import OFFICIAL_SIZES, BrainJEPAConfig

    return next((s for s in OFFICIAL_SIZES
                 if cfg.to_dict() == BrainJEPAConfig.official(s).to_dict()), None)


def _read_gradients(path: str | Path, size: str | None):
    """The gradient table: the official 450 x 30 for an official size, any shape otherwise."""
    from ..brainjepa import BrainJEPAConfig

    if size is None:
        return read_gradients_csv(path, None, None)
    ref = BrainJEPAConfig.official(size)
    return read_gradients_csv(path, ref.n_rois, ref.n_gradients)


def import_brainjepa(checkpoint: str | Path, gradients_csv: str | Path, out_dir: str | Path, *,
                     atlas: str, name: str = "brainjepa", size: str | None = None,
                     n_heads: int | None = None, state_key: str = BRAINJEPA_STATE_KEY,
                     target_tr: float = BRAINJEPA_TARGET_TR,
                     allow_custom_layout: bool = False) -> Path:
    """Convert an official Brain-JEPA checkpoint + gradient CSV into a bidsfm model folder.

    Parameters
    ----------
    checkpoint : str or Path
        ``jepa-ep*.pth.tar`` (a dict with ``target_encoder``; keys may carry ``module.``).
    gradients_csv : str or Path
        The ROI gradients (official: ``gradient_mapping_450.csv``, 450 x 30, no header).
    out_dir : str or Path
        New (or empty) model folder.
    atlas : str
        Atlas spec with the model's ROIs in its order (official: Tian S3 subcortex, then
        Schaefer-400 17-network; ``NAME=PATH`` of a combined label image).
    name : str
        Model name (letters and digits).
    size : str, optional
        ``small``, ``base`` or ``large``; inferred when omitted.
    n_heads : int, optional
        Heads of a non-official layout.
    state_key : str
        Checkpoint entry to import (``target_encoder``; ``encoder`` for the context encoder).
    target_tr : float
        Repetition time (s) runs are resampled to before windowing (default 2.205 s).
    allow_custom_layout : bool
        Import the layout the shapes imply (another size, no qkv bias, another MLP width or
        token grid) instead of requiring an official ViT-S/B/L.

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ConfigError
        Unsafe or unreadable checkpoint, a non-official layout (unless
        ``allow_custom_layout``), wrong keys or shapes (all listed), gradient file of the
        wrong shape or with non-finite values, atlas with another ROI count, existing output.
    """
    import torch

    from ..brainjepa import BrainJEPAEncoder

    checkpoint = Path(checkpoint)
    check_label(name, "model name")
    if not (float(target_tr) > 0 and np.isfinite(target_tr)):
        raise ConfigError(f"target TR must be a positive number of seconds, got {target_tr}")
    out = prepare_out(out_dir)
    raw = load_checkpoint(checkpoint)
    state = strip_prefix(state_dict_from(raw, state_key, checkpoint))
    cfg, grads = _config_and_gradients(state, checkpoint, gradients_csv, size, n_heads,
                                       allow_custom_layout)
    _check_state(state, cfg, state_key, checkpoint, allow_custom_layout)
    atlas_entry = atlas_card(atlas, cfg.n_rois, "Tian S3 subcortex (50 ROIs) first, then "
                             "Schaefer2018 400 parcels 17 networks (400 ROIs)", checkpoint)
    encoder = BrainJEPAEncoder(cfg, grads)
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    encoder.eval()
    dropped = sorted(str(k) for k in raw if k != state_key) if isinstance(raw, Mapping) else []
    card = _card(name, cfg, checkpoint, state_key, dropped, atlas_entry, gradients_csv, grads,
                 float(target_tr))
    return save_folder(out, card, encoder, {"extra_tensors": {"gradients": grads}})


def _config_and_gradients(state: Mapping[str, Any], checkpoint: Path,
                          gradients_csv: str | Path, size: str | None, n_heads: int | None,
                          allow_custom: bool):
    """The layout (official, or inferred when ``allow_custom``) and the gradient table."""
    shapes = tensor_shapes(state)
    inferred = official_size(shapes)
    if inferred is None and not allow_custom:  # before the gradient file's official shape
        raise _not_official(shapes, checkpoint)
    grads = _read_gradients(gradients_csv, None if allow_custom else inferred)
    cfg = brainjepa_config_from_shapes(shapes, grads.shape[0], size, n_heads, checkpoint,
                                       allow_custom=allow_custom)
    if grads.shape[1] != cfg.n_gradients:
        raise ConfigError(f"gradient file has {grads.shape[1]} columns, the checkpoint's "
                          f"gradient projection takes {cfg.n_gradients}", path=gradients_csv)
    return cfg, grads


def _check_state(state: Mapping[str, Any], cfg: Any, state_key: str, checkpoint: Path,
                 allow_custom: bool) -> None:
    """Every tensor against ``cfg``'s layout, finite values, the stored time code."""
    from ..brainjepa import official_state_shapes

    if allow_custom:
        what = (f"{state_key} (Brain-JEPA) does not match the layout its shapes imply (embed "
                f"dim {cfg.embed_dim}, {cfg.depth} blocks)")
        remedy = "Check that the checkpoint is complete and unmodified"
    else:
        what = (f"{state_key} (Brain-JEPA) is not the official "
                f"ViT-{_layout_name(cfg)[0].upper()} layout")
        remedy = custom_layout_remedy()
    check_layout(state, official_state_shapes(cfg), what, checkpoint, remedy)
    check_finite(state, checkpoint)
    _check_time_code(state["pos_embed_proj.emb_h"], cfg, checkpoint)


def _card(name: str, cfg: Any, checkpoint: Path, state_key: str, dropped: list[str],
          atlas_entry: dict[str, Any], gradients_csv: str | Path, grads: np.ndarray,
          target_tr: float) -> dict[str, Any]:
    """The imported model's card."""
    from ...utils import sha256_file

    size_name = _layout_name(cfg)
    return {
        "name": name,
        "version": "imported",
        "family": "brainjepa",
        "description": "Official Brain-JEPA target encoder imported from its checkpoint: "
                       "(ROI, 16-frame patch) tokens, brain-gradient positioning, pre-norm ViT, "
                       "mean-pooled embedding.",
        "layout": (f"official ViT-{size_name}" if size_name
                   else "custom (inferred from shapes, --allow-custom-layout)"),
        "source": source_record(checkpoint, state_key, "official Brain-JEPA checkpoint",
                                [f"{k} (not used)" for k in dropped]),
        "atlas": atlas_entry,
        "gradients": {"file": Path(gradients_csv).name,
                      "sha256": sha256_file(gradients_csv),
                      "shape": list(grads.shape),
                      "description": "user-supplied ROI gradients, stored with the weights as "
                                     "'gradients' (official: UK Biobank group gradients "
                                     "computed with BrainSpace, gradient_mapping_450.csv)"},
        "input": {
            "kind": "ROI time series (denoised), resampled to the target TR and cut into "
                    f"windows of {cfg.n_frames} frames",
            "target_tr": target_tr, "n_frames": int(cfg.n_frames),
            "window_stride": max(1, cfg.n_frames // 2),
            "window_seconds": round(cfg.n_frames * target_tr, 3),
            "tr_choice": "the official model saw UK Biobank series (TR 0.735 s) downsampled by "
                         "3, i.e. one frame per 2.205 s (160 frames = 353 s); the official code "
                         "never reads the TR",
            **OFFICIAL_NORMALISATION,
        },
        "encoder_config": cfg.to_dict(),
        "embedding_size": int(cfg.embed_dim),
        "heads_note": NO_HEADS,
        "licence": LICENCE,
        "citation": [BRAINJEPA_CITATION, TIAN_CITATION, SCHAEFER_CITATION],
    }
