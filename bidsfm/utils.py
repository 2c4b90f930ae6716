"""Small shared helpers: atomic file writing, hashing, config files, bidsfm's folders."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
#: a BIDS label; always checked with fullmatch (``$`` would accept a trailing newline)
BIDS_LABEL = re.compile(r"[A-Za-z0-9]+")


def _temp_beside(path: Path) -> tuple[int, Path]:
    """Create ``.<stem>.<random>.tmp<suffixes>`` beside ``path`` (see :data:`TEMP_NAME`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.",
                               suffix=".tmp" + "".join(path.suffixes), dir=path.parent)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file lives in the same directory (so the rename is atomic on POSIX) and is
    removed if the block raises, so no half-written file is ever left under the final name.

    Parameters
    ----------
    path : str or Path
        Final destination.

    Yields
    ------
    Path
        Temporary path to write to. Its name keeps the final suffixes (e.g. ``.nii.gz``) so
        that libraries choosing a format by extension still work.
    """
    path = Path(path)
    fd, tmp_path = _temp_beside(path)
    os.close(fd)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: names :func:`atomic_path` gives its temporary files: ``.<stem>.<8 random>.tmp<suffixes>``
#: (the stem is the final name up to its first dot; the random part is :mod:`tempfile`'s)
#: (``""`` for a dot file such as ``.bidsignore``)
TEMP_NAME = re.compile(r"\.(?P<stem>[^./]*)\.[a-z0-9_]{8}\.tmp(\.[^/]*)?")


def temp_stem(name: str) -> str | None:
    """The stem of the final file if ``name`` is a temporary name of :func:`atomic_path`.

    Returns None for every other name (a user's ``notes.tmp.txt``, a lock file ...).
    """
    m = TEMP_NAME.fullmatch(name)
    return None if m is None else m.group("stem")


def remove_stale_temps(folder: str | Path, prefix: str = "", *, recursive: bool = False) -> int:
    """Delete temporary files that :func:`atomic_path` left for names starting with ``prefix``.

    A job killed while writing leaves a hidden ``.<name>.<random>.tmp<suffix>`` file; it is
    removed when the same outputs are written again. Only names of :data:`TEMP_NAME` are
    considered, and ``prefix`` ends at an entity boundary: ``sub-01_task-rest_run-1`` matches
    the stems ``sub-01_task-rest_run-1`` and ``sub-01_task-rest_run-1_...``, never
    ``sub-01_task-rest_run-10...`` (whose live temporary files a parallel node may be
    writing). A trailing ``.`` (``"group."``) asks for that exact stem (``"."`` for the
    empty stem of a dot file); ``""`` matches every temporary file.

    Parameters
    ----------
    folder : str or Path
        Where to look (nothing happens when it is not a folder).
    prefix : str
        Stem prefix, see above.
    recursive : bool
        Also look in sub-folders (symlinked folders are not followed).

    Returns
    -------
    int
        The number of files removed.
    """
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return 0
    exact = prefix.endswith(".")
    prefix = prefix.rstrip(".")
    n = 0
    walker = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder))]
    for dirpath, _dirs, names in walker:
        for name in names:
            stem = temp_stem(name)
            if stem is None:
                continue
            if exact:
                if stem != prefix:
                    continue
            elif prefix and stem != prefix and not stem.startswith(prefix + "_"):
                continue
            path = Path(dirpath) / name
            try:
                if path.is_file() and not path.is_symlink():
                    path.unlink()
                    n += 1
            except OSError:
                pass
    return n


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, then rename); return the path.

    The content is complete before the temporary file is created, so the file exists only for
    one write and a rename: a job killed meanwhile (SIGKILL) almost never leaves one behind,
    and a left one is removed by the next run (:func:`remove_stale_temps`). Prefer this (or
    :func:`write_text_atomic`, :func:`write_frame_atomic`) to :func:`atomic_path` whenever the
    content can be rendered in memory.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_frame_atomic(path: str | Path, frame: Any, **to_csv: Any) -> Path:
    """Write a pandas DataFrame as a TSV (no index) atomically, rendered in memory first.

    ``to_csv`` are further :meth:`pandas.DataFrame.to_csv` options (``na_rep``,
    ``float_format``); returns the path.
    """
    return write_text_atomic(path, frame.to_csv(sep="\t", index=False, **to_csv))


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf) replaced by ``None``.

    Recurses into dicts, lists and tuples; numpy scalars and arrays become Python numbers and
    lists (so float32 values are numbers, not strings), paths become strings. The result is
    accepted by ``json.dumps(..., allow_nan=False)``: strict JSON, which ``NaN`` is not.
    """
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {(k if isinstance(k, str) else str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist) and type(obj).__module__ == "numpy":
        return json_safe(tolist())
    return obj


def json_dumps_strict(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj`` (non-finite floats written as ``null``, never ``NaN``)."""
    return json.dumps(json_safe(obj), allow_nan=False, default=str, **kwargs)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically and return the path.

    Non-finite floats (NaN, +-inf) are written as ``null``: bare ``NaN`` is not JSON and
    strict parsers (JavaScript, jq, the BIDS validator) reject the file.
    """
    return write_text_atomic(path, json_dumps_strict(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def inputs_hash(key: str) -> str:
    """The ``ParametersHash`` of outputs: 16 hex digits of the sha256 of ``key``.

    ``key`` names everything the outputs depend on (input files by size and time or by
    content, options, versions); a rerun reuses outputs whose sidecar records the same hash.

    Parameters
    ----------
    key : str
        Text naming the inputs and options.

    Returns
    -------
    str
        The first 16 hexadecimal digits of ``sha256(key)``.
    """
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def read_config_file(path: str | Path, what: str = "config file") -> Any:
    """Parse a TOML (``.toml``), JSON (``.json``) or YAML (any other suffix) file.

    Parameters
    ----------
    path : str or Path
        The file.
    what : str
        How to call the file in an error (``plugin file``, ``config file``).

    Returns
    -------
    Any
        The parsed document (a mapping for the files bidsfm reads; callers check).

    Raises
    ------
    ConfigError
        When the file cannot be read or parsed: ``cannot read <what> (<reason>)``.
    """
    from .errors import ConfigError

    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib

            return tomllib.loads(text)
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as exc:  # OSError, UnicodeDecodeError, and each parser's own error type
        raise ConfigError(f"cannot read {what} ({exc})", path=path) from None


def dataclass_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """Build the dataclass ``cls`` from ``data``; keys that are not fields are an error.

    Parameters
    ----------
    cls : type
        A dataclass (its ``__post_init__`` validates the values).
    data : dict
        Field values, as written by the dataclass's ``to_dict``.
    what : str
        The configuration's name in the error (``BrainMass``, ``Brain-JEPA``).

    Returns
    -------
    cls
        The new instance.

    Raises
    ------
    ConfigError
        ``unknown <what> configuration keys: ...`` for keys that are not fields.
    """
    from dataclasses import fields

    from .errors import ConfigError

    unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
    if unknown:
        raise ConfigError(f"unknown {what} configuration keys: {', '.join(unknown)}")
    return cls(**data)


def bidsfm_home() -> Path:
    """Return the bidsfm cache directory (``$BIDSFM_HOME``, default ``~/.cache/bidsfm``)."""
    env = os.environ.get("BIDSFM_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bidsfm"


def shared_data_dir(shared_data: str | Path | None = None) -> Path:
    """The folder of the real data used to build models, by tests and by benchmarks.

    ``shared_data`` when given, else ``$BIDSFM_SHARED_DATA`` when set and not empty, else
    ``../shared/data`` beside the repository. Nothing is checked: callers look for the files
    they need (``atlases/CC200.nii.gz``, ``abide/cc200_timeseries.npz`` ...) and skip or stop
    without them.

    Parameters
    ----------
    shared_data : str or Path, optional
        An explicit folder, never replaced by a default.

    Returns
    -------
    Path
        The folder (which may not exist).
    """
    if shared_data is not None:
        return Path(shared_data)
    env = os.environ.get("BIDSFM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def refuse_inside_input(folders: dict[str, Path | None], inputs: list[Path]) -> None:
    """Refuse a folder bidsfm writes to that is (or is inside) an input dataset.

    Parameters
    ----------
    folders : dict
        ``{"output": OUTPUT_DIR, "work": ..., "BIDS database": ...}``; None values are skipped.
    inputs : list of Path
        The input datasets (BIDS_DIR, the fMRIPrep derivatives).

    Raises
    ------
    ConfigError
        Naming the folder and the input dataset it is in.
    """
    from .errors import ConfigError

    for name, folder in folders.items():
        if folder is None:
            continue
        for protected in dict.fromkeys(inputs):
            if is_inside(Path(folder), protected):
                raise ConfigError(f"the {name} folder {folder} is inside the input dataset",
                                  path=protected, remedy=f"Put the {name} folder outside the "
                                  "input (inputs are often mounted read-only)")


def is_inside(child: Path, parent: Path) -> bool:
    """True if ``child`` is ``parent`` or inside it (symlinks resolved)."""
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def tsv_rows(values: Any, float_format: str, lead: Sequence[str] | None = None,
             start: int = 0, stop: int | None = None) -> Iterator[str]:
    """Lines (without the newline) of a float block as pandas' ``to_csv`` writes them with
    ``float_format`` and ``na_rep="n/a"``: one %-format per row, one row of Python floats at a
    time (so memory does not grow with the table), each after its ``lead`` cell when given.

    Parameters
    ----------
    values : np.ndarray
        2D float array.
    float_format : str
        A %-format for one number (``"%.6g"``).
    lead : sequence of str, optional
        One first cell per row of ``values``.
    start, stop : int
        The rows to format.
    """
    row_format = "\t".join([float_format] * values.shape[1])
    for i in range(start, len(values) if stop is None else stop):
        line = row_format % tuple(values[i].tolist())
        if "nan" in line:
            line = "\t".join("n/a" if cell == "nan" else cell for cell in line.split("\t"))
        yield line if lead is None else f"{lead[i]}\t{line}"


def fork_pool(nprocs: int) -> Any:
    """A pool of ``nprocs`` forked worker processes (they inherit this process's memory, so
    large arrays and module state reach them without pickling), or None where fork is not
    available."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        return None
    return mp.get_context("fork").Pool(nprocs)
