"""Import official BrainMass and Brain-JEPA checkpoints as bidsfm model folders.

Both importers read a checkpoint with ``torch.load(path, map_location="cpu",
weights_only=True)`` only: a file that needs arbitrary code to unpickle is refused before any of
it runs. Every tensor the official architecture expects is checked by name and shape against an
encoder built with the official layout; a mismatch is one error that lists every missing,
unexpected and wrong-shape key (compactly: ``blocks.{0-11}.attn.qkv.weight``). The result is a
model folder (``weights.safetensors`` + ``card.json``, see :mod:`bidsfm.models.registry`) that
``bidsfm ... --model FOLDER`` runs. Imported models have no heads.

Official layouts (learned from the public code and papers, not copied):

* BrainMass (Yang et al., IEEE TMI 2024): ``online_network_state_dict`` holds ``BNTF``'s
  ``attention_list.{i}`` (``torch.nn.TransformerEncoderLayer``, post-norm, ReLU, batch first),
  ``dim_reduction.0`` (``Linear(R, 8)`` + LeakyReLU) and the BYOL projection head
  ``g.net.{0,1,3}`` (Linear, BatchNorm1d, Linear), which the downstream embedding does not use
  and which is dropped here.
* Brain-JEPA (Dong et al., NeurIPS 2024): ``jepa-ep*.pth.tar`` holds ``encoder``,
  ``predictor``, ``target_encoder`` (keys prefixed ``module.``), ``opt``, ``scaler``,
  ``epoch``...; only ``target_encoder`` is used (the official downstream code does the same).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["load_checkpoint", "state_dict_from", "strip_prefix", "compare_shapes",
           "compact_keys", "brainmass_config_from_state", "import_brainmass",
           "read_gradients_csv", "brainjepa_config_from_shapes", "import_brainjepa",
           "combine_atlases", "BRAINMASS_STATE_KEY",
           "BRAINJEPA_STATE_KEY"]

BRAINMASS_STATE_KEY = "online_network_state_dict"
BRAINJEPA_STATE_KEY = "target_encoder"
BRAINMASS_HEADS = 10  # official BNTF config (config/normal_sch1.yaml: heads 10)
#: the ROI count of the published BrainMass model (its code hard-codes node_num = 100)
BRAINMASS_ROIS = 100

BRAINMASS_CITATION = ("Yang Y., Ye C., Su G., Zhang Z., Chang Z., Chen H., Chan P., Yu Y., Ma T. "
                      "(2024) BrainMass: Advancing brain network analysis for diagnosis with "
                      "large-scale self-supervised learning. IEEE Trans Med Imaging. "
                      "doi:10.1109/TMI.2024.3414476")
BRAINJEPA_CITATION = ("Dong Z., Li R., Wu Y., Nguyen T.T., Chong J.S.X., Ji F., Tong N.R.J., "
                      "Chen C.L.H., Zhou J.H. (2024) Brain-JEPA: Brain dynamics foundation model "
                      "with gradient positioning and spatiotemporal masking. NeurIPS 2024. "
                      "arXiv:2409.19407")
SCHAEFER_CITATION = ("Schaefer A. et al. (2018) Local-global parcellation of the human cerebral "
                     "cortex from intrinsic functional connectivity MRI. Cereb Cortex "
                     "28:3095-3114.")
TIAN_CITATION = ("Tian Y., Margulies D.S., Breakspear M., Zalesky A. (2020) Topographic "
                 "organization of the human subcortex unveiled with functional connectivity "
                 "gradients. Nat Neurosci 23:1421-1432.")
LICENCE = ("As the source checkpoint's: obtaining it and complying with its licence and the "
           "terms of the data it was trained on are the user's responsibility. bidsfm only "
           "converted the tensors.")
NO_HEADS = ("No prediction heads: the official checkpoint is an encoder only. Fit heads on "
            "this model's embeddings (participant-level *_embedding.tsv) with bidsfm's group "
            "level or any linear model.")


# --------------------------------------------------------------------------------------------
# Reading and checking checkpoints
# --------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> Any:
    """Read a torch checkpoint without running any code from it.

    Parameters
    ----------
    path : str or Path
        ``.pth`` / ``.pth.tar`` / ``.pt`` file written by ``torch.save``.

    Returns
    -------
    object
        What the file holds (dicts, lists, tensors and plain numbers/strings only).

    Raises
    ------
    ConfigError
        If the file is missing, not a torch checkpoint, or would need arbitrary code to be
        unpickled (``weights_only=True`` refuses it; the payload never runs).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise ConfigError("checkpoint not found or empty", path=path,
                          remedy="Give the path of the downloaded checkpoint file")
    try:
        with torch.serialization.safe_globals(_numpy_value_globals()):
            try:  # memory-mapped: a ViT-L checkpoint with optimiser state is several GB
                return torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(str(path), map_location="cpu", weights_only=True)  # legacy
    except pickle.UnpicklingError as exc:
        detail = _unpickling_detail(str(exc))
        if "global" not in detail.lower():
            raise ConfigError(f"not a readable torch checkpoint (weights-only unpickler: "
                              f"{detail}); nothing from it was run", path=path,
                              remedy="Give the original .pth/.pth.tar file written by "
                              "torch.save") from None
        raise ConfigError(f"refused to load: the file needs code beyond plain tensors and "
                          f"containers to unpickle ({detail}); nothing from it was run",
                          path=path, remedy="bidsfm only reads weights (torch.load "
                          "weights_only=True); re-save the state dicts as plain tensors, or "
                          "check where the file came from") from None
    except Exception as exc:  # noqa: BLE001 - zip/EOF/runtime errors: not a torch checkpoint
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"not a readable torch checkpoint ({type(exc).__name__}: "
                          f"{first[:200]})", path=path,
                          remedy="Give the original .pth/.pth.tar file written by torch.save"
                          ) from None


def _numpy_value_globals() -> list[Any]:
    """NumPy scalar and dtype constructors a checkpoint may use for plain numbers (a loss, a
    learning rate saved as ``np.float64``), under their NumPy 1 and 2 module names.

    They only rebuild numbers from bytes (an object-dtype scalar returns an object the
    restricted unpickler has already vetted), so they add no way to run code.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    kinds = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32,
             np.uint64, np.float16, np.float32, np.float64, np.complex64, np.complex128)
    return [scalar, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            *{type(np.dtype(k)) for k in kinds}]


def _unpickling_detail(message: str) -> str:
    """The informative part of torch's weights-only refusal (e.g. the unsupported global)."""
    for line in message.splitlines():
        line = line.strip()
        m = re.search(r"(Unsupported global: [^ ]+(?: [^ ]+)?|Unsupported operand[^.]*)", line)
        if m:
            return m.group(1).rstrip(".,")
    text = " ".join(message.split())
    return text[:160] if text else "unpickling error"


def state_dict_from(obj: Any, key: str | None, path: str | Path) -> dict[str, Any]:
    """The state dict stored under ``key`` (or ``obj`` itself when ``key`` is None).

    Raises
    ------
    ConfigError
        If ``obj`` is not a dict, lacks ``key``, or any value is not a tensor.
    """
    import torch

    if not isinstance(obj, Mapping):
        raise ConfigError(f"checkpoint holds a {type(obj).__name__}, not a dict", path=path,
                          remedy="Give the official checkpoint file")
    if key is not None:
        if key not in obj:
            found = ", ".join(sorted(map(str, obj))[:12]) or "(nothing)"
            raise ConfigError(f"checkpoint has no {key!r} entry (top-level keys: {found})",
                              path=path,
                              remedy="Check that this is the right checkpoint for this family")
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise ConfigError(f"checkpoint entry {key!r} is a {type(obj).__name__}, not a "
                              "state dict", path=path)
    bad = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConfigError(f"{len(bad)} state-dict value(s) are not tensors: "
                          f"{', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''}", path=path,
                          remedy="Give the official checkpoint file")
    return {str(k): v for k, v in obj.items()}


def strip_prefix(state: dict[str, Any], prefix: str = "module.") -> dict[str, Any]:
    """Drop ``prefix`` (DistributedDataParallel's ``module.``) from keys that carry it."""
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


_INDEXED = re.compile(r"^(.*?)\.(\d+)(\..*)?$")


def _ranges(numbers: Iterable[int]) -> str:
    nums = sorted(set(numbers))
    parts, start, prev = [], nums[0], nums[0]
    for n in nums[1:] + [None]:  # type: ignore[list-item]
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def compact_keys(keys: Iterable[str]) -> list[str]:
    """Group keys that differ only by their first numeric part: ``blocks.{0-11}.norm1.weight``.

    Parameters
    ----------
    keys : iterable of str
        State-dict keys.

    Returns
    -------
    list of str
        Sorted, one entry per pattern (a key without a numeric part stays as it is).
    """
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    plain = []
    for key in keys:
        m = _INDEXED.match(key)
        if m:
            groups[(m.group(1), m.group(3) or "")].append(int(m.group(2)))
        else:
            plain.append(key)
    out = list(plain)
    for (head, tail), nums in groups.items():
        out.append(f"{head}.{nums[0]}{tail}" if len(set(nums)) == 1
                   else f"{head}.{{{_ranges(nums)}}}{tail}")
    return sorted(out)


def compare_shapes(actual: Mapping[str, tuple[int, ...]],
                   expected: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Every difference between two key -> shape maps, compactly worded.

    Returns
    -------
    list of str
        e.g. ``["missing 2: norm.weight, norm.bias", "unexpected 1: head.weight",
        "wrong shape 12: blocks.{0-11}.attn.qkv.weight (1152, 384), expected (2304, 768)"]``;
        empty when they agree.
    """
    missing = [k for k in expected if k not in actual]
    unexpected = [k for k in actual if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {', '.join(compact_keys(missing))}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {', '.join(compact_keys(unexpected))}")
    wrong: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = defaultdict(list)
    for k, shape in expected.items():
        if k in actual and tuple(actual[k]) != tuple(shape):
            wrong[(tuple(actual[k]), tuple(shape))].append(k)
    if wrong:
        n = sum(len(v) for v in wrong.values())
        items = [f"{', '.join(compact_keys(ks))} {got}, expected {exp}"
                 for (got, exp), ks in wrong.items()]
        problems.append(f"wrong shape {n}: {'; '.join(items)}")
    return problems


def _shapes(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(int(s) for s in v.shape) for k, v in state.items()}


def _check(state: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str,
           path: str | Path) -> None:
    problems = compare_shapes(_shapes(state), expected)
    if problems:
        raise ConfigError(f"{what} does not match the official layout: {'; '.join(problems)}",
                          path=path,
                          remedy="Check that this is the official checkpoint, unmodified")


def _finite(state: Mapping[str, Any], path: str | Path) -> None:
    import torch

    bad = [k for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ConfigError(f"non-finite values (NaN/inf) in {', '.join(compact_keys(bad))}",
                          path=path, remedy="The checkpoint is corrupt; download it again")


# --------------------------------------------------------------------------------------------
# Atlases and model folders
# --------------------------------------------------------------------------------------------


def _atlas_card(spec: str, n_rois: int, published: str, path: str | Path) -> dict[str, Any]:
    """Resolve ``spec`` now (ROI names and order), check its ROI count, describe it for the card."""
    from ..atlases import resolve_atlas
    from ..errors import AtlasNotFoundError

    try:
        atlas = resolve_atlas(spec)
    except AtlasNotFoundError as err:
        raise ConfigError(f"cannot resolve the model's atlas {spec!r} to record its ROI order "
                          f"({err.one_line()})", path=path,
                          remedy="Make the atlas available (see docs/importing.md) or pass "
                          "another one with --atlas NAME=PATH") from None
    if atlas.n_rois != n_rois:
        raise ConfigError(f"the checkpoint has {n_rois} ROIs but atlas {atlas.name} has "
                          f"{atlas.n_rois}", path=path,
                          remedy=f"Pass the atlas the model was trained on ({published})")
    named = "=" in spec and not Path(spec).exists()
    card = {"name": atlas.name, "n_rois": int(atlas.n_rois), "roi_names": atlas.roi_names,
            "roi_order": "ascending label value of the atlas image (its label table order)",
            "template": atlas.template, "source": atlas.source, "sha256": atlas.sha256,
            "published_atlas": published}
    if named or _looks_like_path(spec):
        image = Path(spec.partition("=")[2] if named else spec).expanduser().resolve()
        card["user_file"] = str(image)
        card["run_with"] = f"--atlas {atlas.name}={image}"
    else:
        card["run_with"] = f"--atlas {atlas.name}"
    return card


def _looks_like_path(spec: str) -> bool:
    return "/" in spec or os.sep in spec or bool(re.search(r"\.nii(\.gz)?$", spec, re.I))


def _check_label(value: str, what: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]+", value or ""):
        raise ConfigError(f"{what} {value!r} must be letters and digits only (it becomes the "
                          "desc- entity of output file names)")
    return value


def _prepare_out(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError("output folder exists and is not empty", path=out,
                          remedy="Choose a new folder (imports never overwrite a model)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save_folder(out: Path, card: dict[str, Any], encoder: Any, extra: dict[str, Any] | None
                 ) -> Path:
    """Write the model into a temporary sibling folder, then rename it to ``out`` (atomic)."""
    from .registry import save_model

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_model(tmp, card, encoder, [], **(extra or {}))
        if out.exists():
            out.rmdir()  # empty (checked by _prepare_out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _source(path: Path, key: str, kind: str, dropped: list[str]) -> dict[str, Any]:
    from .. import __version__
    from ..utils import sha256_file

    return {"kind": kind, "file": path.name, "sha256": sha256_file(path), "state_key": key,
            "dropped": dropped, "imported_by": f"bidsfm-import {__version__}",
            "imported_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


# --------------------------------------------------------------------------------------------
# BrainMass
# --------------------------------------------------------------------------------------------

_BM_LAYER = re.compile(r"^attention_list\.(\d+)\.")


def brainmass_config_from_state(state: Mapping[str, Any], n_heads: int = BRAINMASS_HEADS,
                                path: str | Path = "checkpoint"):
    """The official-layout :class:`BrainMassConfig` whose tensors ``state`` holds.

    R and the readout width come from ``dim_reduction.0.weight`` (readout, R), the layer count
    from the largest ``attention_list.{i}`` index, the feed-forward width from
    ``attention_list.0.linear1.weight``. The number of attention heads does not change any
    shape, so it cannot be read from the weights: it is ``n_heads`` (official: 10).

    Raises
    ------
    ConfigError
        If the keys needed for the inference are missing or ``n_heads`` does not divide R.
    """
    from .brainmass import BrainMassConfig

    need = ["dim_reduction.0.weight", "attention_list.0.linear1.weight"]
    absent = [k for k in need if k not in state or len(state[k].shape) != 2]
    if absent:
        raise ConfigError(f"cannot infer the BrainMass layout: {', '.join(absent)} missing or not "
                          f"a matrix (found {len(state)} tensors: "
                          f"{', '.join(compact_keys(state)[:6])} ...)", path=path,
                          remedy="Give the official checkpoint (online_network_state_dict)")
    readout, r = (int(s) for s in state["dim_reduction.0.weight"].shape)
    layers = 1 + max(int(m.group(1)) for k in state if (m := _BM_LAYER.match(k)))
    ff = int(state["attention_list.0.linear1.weight"].shape[0])
    if int(n_heads) < 1 or r % int(n_heads):
        raise ConfigError(f"{n_heads} attention heads do not divide the checkpoint's {r} ROIs",
                          path=path, remedy="Pass the head count the model was trained with "
                          "(--heads)")
    official = BrainMassConfig.official(n_rois=r)  # post-norm, no bidsfm extras
    return BrainMassConfig(n_rois=r, n_layers=layers, n_heads=int(n_heads), ff_dim=ff,
                           dropout=official.dropout, readout_dim=readout,
                           roi_embedding=False, mask_token=False)


def _projector_shapes(state: Mapping[str, Any], embedding: int) -> dict[str, tuple[int, ...]]:
    """Expected shapes of BNTF's BYOL projection head ``g`` (dropped after the check)."""
    out = state.get("g.net.3.weight")
    proj = int(out.shape[0]) if out is not None and len(out.shape) == 2 else 0
    hidden = 2 * embedding
    shapes = {"g.net.0.weight": (hidden, embedding), "g.net.0.bias": (hidden,),
              "g.net.1.weight": (hidden,), "g.net.1.bias": (hidden,),
              "g.net.1.running_mean": (hidden,), "g.net.1.running_var": (hidden,),
              "g.net.1.num_batches_tracked": (), "g.net.3.weight": (proj or 1024, hidden),
              "g.net.3.bias": (proj or 1024,)}
    return shapes


def import_brainmass(checkpoint: str | Path, out_dir: str | Path, *, name: str = "brainmass",
                     atlas: str = "Schaefer100x7", n_heads: int = BRAINMASS_HEADS,
                     state_key: str = BRAINMASS_STATE_KEY, min_volumes: int = 50) -> Path:
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

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ConfigError
        Unreadable or unsafe checkpoint, wrong keys or shapes (all listed), atlas mismatch,
        existing output folder.
    """
    import torch

    from .brainmass import BrainMassEncoder

    checkpoint = Path(checkpoint)
    _check_label(name, "model name")
    out = _prepare_out(out_dir)
    state = strip_prefix(state_dict_from(load_checkpoint(checkpoint), state_key, checkpoint))
    cfg = brainmass_config_from_state(state, n_heads, checkpoint)
    encoder = BrainMassEncoder(cfg)
    expected = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    has_projector = any(k.startswith("g.") for k in state)
    if has_projector:
        expected.update(_projector_shapes(state, cfg.readout_dim * cfg.n_rois))
    _check(state, expected, f"{state_key} (BrainMass, R={cfg.n_rois}, {cfg.n_layers} layers)",
           checkpoint)
    _finite(state, checkpoint)
    atlas_card = _atlas_card(atlas, cfg.n_rois, "Schaefer2018 100 parcels (see docs/importing.md "
                             "for the network version)", checkpoint)
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()
                             if not k.startswith("g.")}, strict=True)
    encoder.eval()
    dropped = ["g (BYOL projection head: Linear, BatchNorm1d, Linear; not part of the "
               "downstream embedding)"] if has_projector else []
    card = {
        "name": name,
        "version": "imported",
        "family": "brainmass",
        "description": "Official BrainMass encoder imported from its checkpoint: FC rows as "
                       "tokens, post-norm Transformer, Linear(R, 8) + LeakyReLU readout "
                       "flattened to the 8R embedding the paper's downstream SVM uses.",
        "source": _source(checkpoint, state_key, "official BrainMass checkpoint", dropped),
        "atlas": atlas_card,
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
    return _save_folder(out, card, encoder, None)


# --------------------------------------------------------------------------------------------
# Brain-JEPA
# --------------------------------------------------------------------------------------------


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


#: effective repetition time of the official Brain-JEPA input: UK Biobank (TR 0.735 s) series
#: downsampled by 3 (configs/ukb_vitb_ep300.yaml: downsample true, sampling_rate 3, 160 frames)
BRAINJEPA_TARGET_TR = 2.205


def brainjepa_config_from_shapes(shapes: Mapping[str, tuple[int, ...]], n_rois: int,
                                 size: str | None = None, n_heads: int | None = None,
                                 path: str | Path = "checkpoint"):
    """The :class:`BrainJEPAConfig` whose tensors have ``shapes`` (``module.`` stripped).

    ``D`` and the patch length come from ``patch_embed.proj.weight`` (D, 1, 1, P), the depth
    from the largest ``blocks.{i}`` index, the gradient count from
    ``pos_embed_proj.predictor_pos_embed_proj.weight`` (D/2, G) and the number of frames from
    ``pos_embed_proj.emb_h`` (R * T/P, D/2) with ``R = n_rois``. A (D, depth) pair of an official
    size (small 384/12, base 768/12, large 1024/24) takes that size's head count; any other
    layout needs ``n_heads``.

    Parameters
    ----------
    shapes : mapping
        Key -> shape of the checkpoint's ``target_encoder``.
    n_rois : int
        ROIs (rows of the gradient file).
    size : str, optional
        Expected official size; a different inferred size is an error.
    n_heads : int, optional
        Heads of a non-official layout (ignored for official sizes unless it contradicts them).

    Returns
    -------
    BrainJEPAConfig

    Raises
    ------
    ConfigError
        If the layout cannot be inferred, contradicts ``size``/``n_heads``, or has a shape the
        configuration cannot produce.
    """
    from .brainjepa import OFFICIAL_SIZES, BrainJEPAConfig

    need = {"patch_embed.proj.weight": 4, "pos_embed_proj.emb_h": 2,
            "pos_embed_proj.predictor_pos_embed_proj.weight": 2}
    absent = [k for k, nd in need.items() if len(shapes.get(k, ())) != nd]
    depth = 1 + max((int(m.group(1)) for k in shapes
                     if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
    if absent or depth == 0:
        what = ", ".join(absent + ([] if depth else ["blocks.*"]))
        raise ConfigError(f"cannot infer the Brain-JEPA layout: {what} missing or mis-shaped",
                          path=path, remedy="Give the official jepa-ep*.pth.tar checkpoint")
    dim, _, _, patch = shapes["patch_embed.proj.weight"]
    n_tokens = shapes["pos_embed_proj.emb_h"][0]
    n_grad = shapes["pos_embed_proj.predictor_pos_embed_proj.weight"][1]
    inferred = _official_size(shapes)
    if size is not None:
        if size not in OFFICIAL_SIZES:
            raise ConfigError(f"unknown Brain-JEPA size {size!r} (small, base or large)")
        if inferred != size:
            d, dep, _h = OFFICIAL_SIZES[size]
            raise ConfigError(f"checkpoint is not ViT-{size[0].upper()} (embed dim {dim}, "
                              f"{depth} blocks; {size} has {d} and {dep})", path=path,
                              remedy="Leave --size out to infer it")
    if inferred is not None:
        heads = OFFICIAL_SIZES[inferred][2]
        if n_heads is not None and n_heads != heads:
            raise ConfigError(f"ViT-{inferred} has {heads} heads, not {n_heads}", path=path)
    elif n_heads is None:
        raise ConfigError(f"embed dim {dim} with {depth} blocks is not an official Brain-JEPA "
                          "size (small 384/12, base 768/12, large 1024/24)", path=path,
                          remedy="Pass --heads for a custom layout, or check the checkpoint")
    else:
        heads = int(n_heads)
    if n_tokens % n_rois:
        raise ConfigError(f"the checkpoint's {n_tokens} tokens are not a multiple of the "
                          f"gradient file's {n_rois} ROIs", path=path,
                          remedy="Give the gradients of the model's atlas (official: 450 x 30)")
    fc1 = shapes.get("blocks.0.mlp.fc1.weight", (4 * dim, dim))
    try:
        cfg = BrainJEPAConfig(n_rois=int(n_rois), n_frames=int(n_tokens // n_rois * patch),
                              patch_size=int(patch), embed_dim=int(dim), depth=int(depth),
                              n_heads=int(heads), mlp_ratio=fc1[0] / dim,
                              n_gradients=int(n_grad),
                              qkv_bias=any(re.match(r"^blocks\.\d+\.attn\.qkv\.bias$", k)
                                           for k in shapes))
    except ValueError as exc:
        raise ConfigError(f"impossible Brain-JEPA layout: {exc}", path=path) from None
    if inferred is not None:
        official = BrainJEPAConfig.official(inferred)
        if (cfg.n_rois, cfg.n_frames, cfg.patch_size, cfg.n_gradients) != (
                official.n_rois, official.n_frames, official.patch_size, official.n_gradients):
            raise ConfigError(f"ViT-{inferred} checkpoint with {cfg.n_rois} ROIs x "
                              f"{cfg.n_frames} frames, patch {cfg.patch_size}, "
                              f"{cfg.n_gradients} gradients; the official model has "
                              f"{official.n_rois} x {official.n_frames}, patch "
                              f"{official.patch_size}, {official.n_gradients}", path=path,
                              remedy="Give the official 450 x 30 gradient file")
    return cfg


def _check_time_code(emb_h: Any, cfg: Any, path: str | Path) -> None:
    """``pos_embed_proj.emb_h`` must be the fixed sin/cos code of the time-patch index.

    It is a frozen parameter, so the checkpoint only repeats what the layout implies; another
    table means another token order or positional scheme, which bidsfm would silently misread.
    """
    from .brainjepa import sincos_1d

    want = sincos_1d(cfg.embed_dim // 2, np.tile(np.arange(cfg.n_patches), cfg.n_rois))
    err = float(np.abs(emb_h.detach().cpu().double().numpy() - want).max())
    if err > 1e-4:
        raise ConfigError(f"pos_embed_proj.emb_h is not the sin/cos code of the time-patch index "
                          f"in ROI-major token order (max difference {err:.3g})", path=path,
                          remedy="Check that this is an official Brain-JEPA checkpoint "
                          "(add_w: mapping)")


OFFICIAL_JEPA_NORMALISATION = (
    "the official downstream code (--use_normalization) z-scores each sample with ONE mean and "
    "ONE standard deviation over all its ROIs and frames; its pretraining used per-ROI robust "
    "scaling with UK Biobank medians/IQRs that are not distributed with the checkpoint")


def _jepa_normalisation() -> dict[str, str]:
    """The card's normalisation: the official downstream one when bidsfm's input code has it.

    :class:`bidsfm.models.resample.InputSpec` decides what a time-series model can apply;
    ``zscore_global`` (one mean/SD per run over all ROIs and frames) is the official downstream
    scheme; otherwise the closest available one is recorded with the difference spelled out.
    """
    from .resample import InputSpec

    try:
        InputSpec(normalisation="zscore_global")
    except ValueError:
        return {"normalisation": "zscore_run",
                "normalisation_note": "per-ROI z-score over the resampled run (bidsfm's "
                                      "only time-series normalisation in this version); "
                                      + OFFICIAL_JEPA_NORMALISATION}
    return {"normalisation": "zscore_global",
            "normalisation_note": "one mean and SD over all ROIs and frames of the resampled "
                                  "run, as the official downstream code; "
                                  + OFFICIAL_JEPA_NORMALISATION}


def _official_size(shapes: Mapping[str, tuple[int, ...]]) -> str | None:
    """The official size whose (embed dim, depth) the checkpoint has, if any."""
    from .brainjepa import OFFICIAL_SIZES

    w = shapes.get("patch_embed.proj.weight", ())
    depth = 1 + max((int(m.group(1)) for k in shapes
                     if (m := re.match(r"^blocks\.(\d+)\.", k))), default=-1)
    return next((s for s, (d, dep, _h) in OFFICIAL_SIZES.items()
                 if len(w) == 4 and w[0] == d and dep == depth), None)


def _official_config(size: str):
    """``BrainJEPAConfig.official(size)``."""
    from .brainjepa import BrainJEPAConfig

    return BrainJEPAConfig.official(size)


def import_brainjepa(checkpoint: str | Path, gradients_csv: str | Path, out_dir: str | Path, *,
                     atlas: str, name: str = "brainjepa", size: str | None = None,
                     n_heads: int | None = None, state_key: str = BRAINJEPA_STATE_KEY,
                     target_tr: float = BRAINJEPA_TARGET_TR) -> Path:
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

    Returns
    -------
    Path
        The model folder.

    Raises
    ------
    ConfigError
        Unsafe or unreadable checkpoint, wrong keys or shapes (all listed), gradient file of the
        wrong shape or with non-finite values, atlas with another ROI count, existing output.
    """
    import torch

    from .brainjepa import BrainJEPAEncoder, official_state_shapes

    checkpoint = Path(checkpoint)
    _check_label(name, "model name")
    if not (float(target_tr) > 0 and np.isfinite(target_tr)):
        raise ConfigError(f"target TR must be a positive number of seconds, got {target_tr}")
    out = _prepare_out(out_dir)
    raw = load_checkpoint(checkpoint)
    state = strip_prefix(state_dict_from(raw, state_key, checkpoint))
    official = _official_size(_shapes(state))
    if official is not None:  # the official model: the official 450 x 30 gradient table
        ref = _official_config(official)
        grads = read_gradients_csv(gradients_csv, ref.n_rois, ref.n_gradients)
    else:
        grads = read_gradients_csv(gradients_csv, None, None)
    cfg = brainjepa_config_from_shapes(_shapes(state), grads.shape[0], size, n_heads, checkpoint)
    if grads.shape[1] != cfg.n_gradients:
        raise ConfigError(f"gradient file has {grads.shape[1]} columns, the checkpoint's "
                          f"gradient projection takes {cfg.n_gradients}", path=gradients_csv)
    _check(state, official_state_shapes(cfg), f"{state_key} (Brain-JEPA)", checkpoint)
    _finite(state, checkpoint)
    _check_time_code(state["pos_embed_proj.emb_h"], cfg, checkpoint)
    atlas_card = _atlas_card(atlas, cfg.n_rois, "Tian S3 subcortex (50 ROIs) first, then "
                             "Schaefer2018 400 parcels 17 networks (400 ROIs)", checkpoint)
    encoder = BrainJEPAEncoder(cfg, grads)
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    encoder.eval()
    size_name = next((s for s in ("small", "base", "large")
                      if cfg.to_dict() == type(cfg).official(s).to_dict()), None)
    dropped = sorted(str(k) for k in raw if k != state_key) if isinstance(raw, Mapping) else []
    from ..utils import sha256_file

    seconds = cfg.n_frames * float(target_tr)
    card = {
        "name": name,
        "version": "imported",
        "family": "brainjepa",
        "description": "Official Brain-JEPA target encoder imported from its checkpoint: "
                       "(ROI, 16-frame patch) tokens, brain-gradient positioning, pre-norm ViT, "
                       "mean-pooled embedding.",
        "layout": f"official ViT-{size_name}" if size_name else "custom (inferred from shapes)",
        "source": _source(checkpoint, state_key, "official Brain-JEPA checkpoint",
                          [f"{k} (not used)" for k in dropped]),
        "atlas": atlas_card,
        "gradients": {"file": Path(gradients_csv).name,
                      "sha256": sha256_file(gradients_csv),
                      "shape": list(grads.shape),
                      "description": "user-supplied ROI gradients, stored with the weights as "
                                     "'gradients' (official: UK Biobank group gradients "
                                     "computed with BrainSpace, gradient_mapping_450.csv)"},
        "input": {
            "kind": "ROI time series (denoised), resampled to the target TR and cut into "
                    f"windows of {cfg.n_frames} frames",
            "target_tr": float(target_tr), "n_frames": int(cfg.n_frames),
            "window_stride": max(1, cfg.n_frames // 2),
            "window_seconds": round(seconds, 3),
            "tr_choice": "the official model saw UK Biobank series (TR 0.735 s) downsampled by "
                         "3, i.e. one frame per 2.205 s (160 frames = 353 s); the official code "
                         "never reads the TR",
            **_jepa_normalisation(),
        },
        "encoder_config": cfg.to_dict(),
        "embedding_size": int(cfg.embed_dim),
        "heads_note": NO_HEADS,
        "licence": LICENCE,
        "citation": [BRAINJEPA_CITATION, TIAN_CITATION, SCHAEFER_CITATION],
    }
    return _save_folder(out, card, encoder, {"extra_tensors": {"gradients": grads}})


# --------------------------------------------------------------------------------------------
# Combined atlases (Brain-JEPA: Tian S3 subcortex first, then Schaefer-400 17-network)
# --------------------------------------------------------------------------------------------


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

    from ..atlases import resample_labels, resolve_atlas
    from ..errors import AtlasNotFoundError
    from ..utils import atomic_path, write_text_atomic

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
