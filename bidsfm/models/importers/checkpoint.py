"""Reading a checkpoint without running code from it, and naming what it would have run.

:func:`load_checkpoint` reads with ``torch.load(path, map_location="cpu", weights_only=True)``
only. When torch refuses a file, :func:`blocked_globals` names the pickle globals it refers to
that the weights-only unpickler does not allow (``posix.system``, ``io.open``): the file's
pickle opcodes are scanned with :mod:`pickletools` (which never executes them) and each global
found is put to torch's own weights-only unpickler alone, so the list is exactly what torch
blocks, including in pickle protocols torch does not read at all (``STACK_GLOBAL``).
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError

__all__ = ["load_checkpoint", "pickle_globals", "blocked_globals", "state_dict_from",
           "strip_prefix"]

#: pickles read from one file at most (a legacy torch file holds five, then raw storage bytes)
_MAX_PICKLES = 8
_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
               "SHORT_BINUNICODE", "BINUNICODE8"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


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
        unpickled (``weights_only=True`` refuses it; the payload never runs). The message names
        the file and every blocked global (``module.qualname``).
    """
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
        blocked = blocked_globals(path, str(exc))
        if not blocked:
            raise ConfigError(f"not a readable torch checkpoint (weights-only unpickler: "
                              f"{_unpickling_detail(str(exc))}); nothing from it was run",
                              path=path, remedy="Give the original .pth/.pth.tar file written "
                              "by torch.save") from None
        raise ConfigError(f"refused to load: unpickling it needs the pickle "
                          f"global{'s' if len(blocked) > 1 else ''} {', '.join(blocked)}, "
                          "which torch's weights-only loader blocks (code, not data); nothing "
                          "from it was run", path=path,
                          remedy="bidsfm only reads weights (torch.load weights_only=True); "
                          "re-save the state dicts as plain tensors, or check where the file "
                          "came from") from None
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
    """The informative part of torch's weights-only refusal (e.g. an unsupported opcode)."""
    m = re.search(r"Unsupported operand (\d+)", message)
    if m:
        code = chr(int(m.group(1)))
        op = next((o for o in pickletools.opcodes if o.code == code), None)
        if op is not None:
            return (f"pickle opcode {op.name} of protocol {op.proto} is not supported; "
                    "torch.save writes protocol 2")
        return f"unsupported pickle opcode {m.group(1)}"
    text = " ".join(message.split())
    return text[:160] if text else "unpickling error"


def _pickle_streams(path: Path) -> list[bytes]:
    """The pickles of a checkpoint: ``*.pkl`` members of a zip file (torch.save's format), or
    the file itself (a legacy torch file or a plain pickle; only its start is read)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return [archive.read(n) for n in archive.namelist() if n.endswith(".pkl")]
    with open(path, "rb") as f:  # pickles come first; legacy raw storage bytes follow them
        return [f.read(64 * 1024 * 1024)]


def _globals_in(stream: io.BytesIO, found: list[tuple[str, str]]) -> None:
    """Append ``(module, qualname)`` of each global one pickle in ``stream`` refers to.

    ``GLOBAL`` and ``INST`` carry the name; ``STACK_GLOBAL`` (protocol 4+) takes the two
    strings pushed before it, possibly through the memo, which is followed here.
    """
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # what each opcode pushed (None: not a string); never popped
    for op, arg, _pos in pickletools.genops(stream):
        name = op.name
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.append((module, qualname))
            pushed.append(None)
        elif name == "STACK_GLOBAL":
            module, qualname = pushed[-2:] if len(pushed) >= 2 else (None, None)
            if isinstance(module, str) and isinstance(qualname, str):
                found.append((module, qualname))
            pushed.append(None)
        elif name in _STRING_OPS:
            pushed.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _GET_OPS:
            pushed.append(memo.get(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = pushed[-1] if pushed else None
        elif name in _PUT_OPS:
            memo[arg] = pushed[-1] if pushed else None
        elif name not in ("FRAME", "PROTO", "MARK"):
            pushed.append(None)


def _global_pairs(path: Path) -> list[tuple[str, str]]:
    """Distinct ``(module, qualname)`` globals of a file's pickles, in file order."""
    found: list[tuple[str, str]] = []
    try:
        streams = _pickle_streams(path)
    except (OSError, zipfile.BadZipFile):
        return []
    for data in streams:
        stream = io.BytesIO(data)
        for _ in range(_MAX_PICKLES):
            start = stream.tell()
            try:
                _globals_in(stream, found)
            except Exception:  # noqa: BLE001 - raw storage bytes or a damaged pickle: stop
                break
            if stream.tell() in (start, len(data)):
                break
    return list(dict.fromkeys(found))


def pickle_globals(path: str | Path) -> list[str]:
    """Every global (``module.qualname``) a checkpoint's pickles refer to, in file order.

    The opcodes are only decoded (:func:`pickletools.genops`), never executed.

    Parameters
    ----------
    path : str or Path
        A torch checkpoint or pickle file.

    Returns
    -------
    list of str
        Distinct names, first occurrence first; what could be read before an unreadable part.
    """
    return [f"{m}.{q}" for m, q in _global_pairs(Path(path))]


def _blocked_by_torch(module: str, qualname: str) -> bool:
    """Whether torch's weights-only unpickler refuses the global ``module.qualname``.

    A one-opcode pickle (``GLOBAL module qualname``) is given to ``torch.load``: an allowed
    global gets past the unpickler (and the load then fails on the missing magic number), a
    blocked one raises :class:`pickle.UnpicklingError`. Nothing is called either way.
    """
    import torch

    if "\n" in module + qualname:
        return True
    data = b"\x80\x02c" + module.encode() + b"\n" + qualname.encode() + b"\n."
    try:
        with torch.serialization.safe_globals(_numpy_value_globals()):
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    except Exception:  # noqa: BLE001 - got past the unpickler: an allowed global
        return False
    return False


def blocked_globals(path: str | Path, message: str = "") -> list[str]:
    """The globals of a checkpoint that torch's weights-only loader refuses.

    Parameters
    ----------
    path : str or Path
        The refused file.
    message : str
        torch's refusal, used when the scan finds nothing (it names the first blocked global).

    Returns
    -------
    list of str
        ``module.qualname`` of each blocked global (e.g. ``posix.system``: ``os.system`` as
        pickled on Linux and macOS), in file order; empty when no global is to blame.
    """
    blocked = [f"{m}.{q}" for m, q in _global_pairs(Path(path)) if _blocked_by_torch(m, q)]
    if blocked:
        return blocked
    named = re.findall(r"GLOBAL ([\w.]+)", message)
    return [n if "." in n else f"builtins.{n}" for n in dict.fromkeys(named)]


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
