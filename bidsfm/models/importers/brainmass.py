"""Official BrainMass checkpoint -> bidsfm model folder (Yang et al., IEEE TMI 2024).

``online_network_state_dict`` holds ``BNTF``'s ``attention_list.{i}``
(``torch.nn.TransformerEncoderLayer``, post-norm, ReLU, batch first), ``dim_reduction.0``
(``Linear(R, 8)`` + LeakyReLU) and the BYOL projection head ``g.net.{0,1,3}`` (Linear,
BatchNorm1d, Linear), which the downstream embedding does not use and which is dropped here.
The published model has R = 100 ROIs, 16 layers, 10 heads and a feed-forward width of 2048;
the official code loads it strictly into that layout, and so does bidsfm unless a non-official
layout is asked for (``allow_custom_layout``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...references import reference
from .checkpoint import load_checkpoint, state_dict_from, strip_prefix
from .folder import (
    LICENCE,
    NO_HEADS,
    SCHAEFER_CITATION,
    atlas_card,
    check_label,
    custom_layout_remedy,
    prepare_out,
    save_folder,
    source_record,
)
from .layout import check_finite, check_layout, compact_keys, layer_count, most_common

__all__ = ["BRAINMASS_STATE_KEY", "BRAINMASS_HEADS", "BRAINMASS_ROIS", "BRAINMASS_CITATION",
           "brainmass_config_from_state", "import_brainmass"]

BRAINMASS_STATE_KEY = "online_network_state_dict"
BRAINMASS_HEADS = 10  # official BNTF config (config/normal_sch1.yaml: heads 10)
#: the ROI count of the published BrainMass model (its code hard-codes node_num = 100)
BRAINMASS_ROIS = 100
BRAINMASS_CITATION = reference("brainmass")


def _width(state: Mapping[str, Any], key: str, axis: int) -> int | None:
    """``state[key].shape[axis]`` of a matrix or vector, None when absent or of another rank."""
    shape = tuple(state[key].shape) if key in state else ()
    return int(shape[axis]) if len(shape) in (1, 2) and axis < len(shape) else None


def brainmass_config_from_state(state: Mapping[str, Any], n_heads: int = BRAINMASS_HEADS,
                                path: str | Path = "checkpoint"):
    """The :class:`BrainMassConfig` whose tensors ``state`` holds (its layout, inferred).

    Each size is the one most tensors carry, so that one damaged tensor is reported as itself:
    R from ``dim_reduction.0.weight`` (readout, R) and every layer's ``norm1.weight``, the
    readout width from ``dim_reduction.0.weight``, the layer count from the largest
    ``attention_list.{i}`` index, the feed-forward width from every layer's
    ``linear1.weight``. The number of attention heads does not change any shape, so it cannot
    be read from the weights: it is ``n_heads`` (official: 10).

    Raises
    ------
    ConfigError
        If the keys needed for the inference are missing or ``n_heads`` does not divide R.
    """
    from ..brainmass import BrainMassConfig

    layers = layer_count(state, "attention_list")
    rois = [_width(state, "dim_reduction.0.weight", 1)] + [
        _width(state, f"attention_list.{i}.norm1.weight", 0) for i in range(layers)]
    ffs = [_width(state, f"attention_list.{i}.linear1.weight", 0) for i in range(layers)]
    r, ff = most_common(v for v in rois if v), most_common(v for v in ffs if v)
    readout = _width(state, "dim_reduction.0.weight", 0)
    if not (r and ff and readout):
        raise ConfigError(f"cannot infer the BrainMass layout: dim_reduction.0.weight or "
                          f"attention_list.*.linear1.weight missing or not a matrix (found "
                          f"{len(state)} tensors: {', '.join(compact_keys(state)[:6])} ...)",
                          path=path,
                          remedy="Give the official checkpoint (online_network_state_dict)")
    if int(n_heads) < 1 or r % int(n_heads):
        raise ConfigError(f"{n_heads} attention heads do not divide the checkpoint's {r} ROIs",
                          path=path, remedy="Pass the head count the model was trained with "
                          "(--heads)")
    official = BrainMassConfig.official(n_rois=r)  # post-norm, no bidsfm extras
    return BrainMassConfig(n_rois=r, n_layers=layers, n_heads=int(n_heads), ff_dim=ff,
                           dropout=official.dropout, readout_dim=readout,
                           roi_embedding=False, mask_token=False)


def _official_config(n_heads: int, path: Path):
    """The published layout; another head count is a custom layout."""
    from ..brainmass import BrainMassConfig

    cfg = BrainMassConfig.official(n_rois=BRAINMASS_ROIS)
    if int(n_heads) != cfg.n_heads:
        raise ConfigError(f"the official BrainMass has {cfg.n_heads} attention heads, not "
                          f"{n_heads}", path=path, remedy=custom_layout_remedy())
    return cfg


def _projector_shapes(state: Mapping[str, Any], embedding: int) -> dict[str, tuple[int, ...]]:
    """Expected shapes of BNTF's BYOL projection head ``g`` (dropped after the check)."""
    out = state.get("g.net.3.weight")
    proj = int(out.shape[0]) if out is not None and len(out.shape) == 2 else 0
    hidden = 2 * embedding
    return {"g.net.0.weight": (hidden, embedding), "g.net.0.bias": (hidden,),
            "g.net.1.weight": (hidden,), "g.net.1.bias": (hidden,),
            "g.net.1.running_mean": (hidden,), "g.net.1.running_var": (hidden,),
            "g.net.1.num_batches_tracked": (), "g.net.3.weight": (proj or 1024, hidden),
            "g.net.3.bias": (proj or 1024,)}


def _describe(cfg: Any) -> str:
    return (f"R={cfg.n_rois}, {cfg.n_layers} layers, {cfg.n_heads} heads, feed-forward "
            f"{cfg.ff_dim}, readout {cfg.readout_dim}")


def import_brainmass(checkpoint: str | Path, out_dir: str | Path, *, name: str = "brainmass",
                     atlas: str = "Schaefer100x7", n_heads: int = BRAINMASS_HEADS,
                     state_key: str = BRAINMASS_STATE_KEY, min_volumes: int = 50,
                     allow_custom_layout: bool = False) -> Path:
    """Convert an official BrainMass checkpoint into a bidsfm model folder.

    Parameters
    ----------
    checkpoint : str or Path
        ``torch.save`` file holding ``{"online_network_state_dict": {...}, ...}``.
    out_dir : str or Path
        New (or empty) folder for ``weights.safetensors`` + ``card.json``.
    name : str
        Model name (letters and digits; the ``desc-`` entity of outputs).
    atlas : str
        Atlas spec (:func:`bidsfm.atlases.resolve_atlas`) with as many ROIs as the checkpoint;
        published model: Schaefer-100 (``Schaefer100x7``, TemplateFlow).
    n_heads : int
        Attention heads (not stored in the weights; official 10).
    state_key : str
        Checkpoint entry holding the encoder (``target_network_state_dict`` for the EMA
        network).
    min_volumes : int
        Minimum retained volumes recorded in the card's input contract.
    allow_custom_layout : bool
        Import the layout the tensors' shapes imply (R, layers, widths) instead of requiring
        the published one (R = 100, 16 layers, 10 heads, feed-forward 2048, readout 8).

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ConfigError
        Unreadable or unsafe checkpoint, a layout other than the official one (unless
        ``allow_custom_layout``), wrong keys or shapes (all listed), atlas mismatch, existing
        output folder.
    """
    import torch

    from ..brainmass import BrainMassEncoder

    checkpoint = Path(checkpoint)
    check_label(name, "model name")
    out = prepare_out(out_dir)
    state = strip_prefix(state_dict_from(load_checkpoint(checkpoint), state_key, checkpoint))
    if allow_custom_layout:
        cfg = brainmass_config_from_state(state, n_heads, checkpoint)
        what = f"{state_key} (BrainMass) does not match the layout its shapes imply"
        remedy = "Check that the checkpoint is complete and unmodified"
    else:
        cfg = _official_config(n_heads, checkpoint)
        what = f"{state_key} is not the official BrainMass layout"
        remedy = custom_layout_remedy()
    encoder = BrainMassEncoder(cfg)
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    has_projector = any(k.startswith("g.") for k in state)
    if has_projector:
        expected.update(_projector_shapes(state, cfg.readout_dim * cfg.n_rois))
    check_layout(state, expected, f"{what} ({_describe(cfg)})", checkpoint, remedy)
    check_finite(state, checkpoint)
    atlas_entry = atlas_card(atlas, cfg.n_rois, "Schaefer2018 100 parcels (see "
                             "docs/importing.md for the network version)", checkpoint)
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()
                             if not k.startswith("g.")}, strict=True)
    encoder.eval()
    dropped = ["g (BYOL projection head: Linear, BatchNorm1d, Linear; not part of the "
               "downstream embedding)"] if has_projector else []
    card = _card(name, cfg, source_record(checkpoint, state_key, "official BrainMass "
                                          "checkpoint", dropped), atlas_entry, min_volumes)
    return save_folder(out, card, encoder)


def _card(name: str, cfg: Any, source: dict[str, Any], atlas_entry: dict[str, Any],
          min_volumes: int) -> dict[str, Any]:
    """The imported model's card."""
    from ..brainmass import BrainMassConfig

    return {
        "name": name,
        "version": "imported",
        "family": "brainmass",
        "description": "Official BrainMass encoder imported from its checkpoint: FC rows as "
                       "tokens, post-norm Transformer, Linear(R, 8) + LeakyReLU readout "
                       "flattened to the 8R embedding the paper's downstream SVM uses.",
        "layout": ("official" if cfg == BrainMassConfig.official(BRAINMASS_ROIS)
                   else f"custom ({_describe(cfg)}; inferred from the shapes, "
                        "--allow-custom-layout)"),
        "source": source,
        "atlas": atlas_entry,
        "input": {
            "kind": "Pearson FC (R x R) of denoised ROI time series",
            "min_volumes": int(min_volumes), "target_tr": None,
            "normalisation": "none: Pearson FC (bidsfm's relmat). The official code used "
                             "nilearn ConnectivityMeasure(kind='correlation') with its default "
                             "Ledoit-Wolf covariance (off-diagonal values shrunk towards 0) and "
                             "set NaN to 0",
            "missing_rois": "bidsfm hides n/a ROIs (zero row and column, excluded as attention "
                            "keys); the official code fed them as zero rows and columns",
        },
        "encoder_config": cfg.to_dict(),
        "embedding_size": int(cfg.readout_dim * cfg.n_rois),
        "heads_note": NO_HEADS,
        "licence": LICENCE,
        "citation": [BRAINMASS_CITATION, SCHAEFER_CITATION],
    }
