"""Where atlas files live on disk: the package's copies, the cache, downloads into the cache.

Each registry file (:class:`~bidsfm.atlases.registry.RemoteFile`) is looked up, in order, in
the package (``bidsfm/data/atlases/<relpath>``, only the few files of
:data:`~bidsfm.atlases.registry.BUNDLED`), then in the cache (``$BIDSFM_HOME/atlases/<relpath>``,
default ``~/.cache/bidsfm``); a copy is used only if its sha256 is the registry's. A missing
file is downloaded from its pinned GitHub URL into the cache (10 s timeout, 20 s overall),
unless ``BIDSFM_OFFLINE=1``. ``bidsfm-atlas seed`` fills the cache from local copies and
``bidsfm-atlas fetch`` pre-fetches on a machine with internet.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

from bidsfm.errors import AtlasNotFoundError
from bidsfm.utils import atomic_path, bidsfm_home, sha256_file

from .base import LOGGER, offline, warn_once
from .registry import BUNDLED, RemoteFile

#: Seconds to wait on the network before giving up on a download.
DOWNLOAD_TIMEOUT = 10.0
#: The package's own copies (provenance in its SOURCES.md). The package attribute
#: ``bidsfm.atlases.BUNDLED_DIR`` is the one to change (tests simulate a damaged install).
DEFAULT_BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "atlases"


def bundled_dir() -> Path:
    """Folder of the files that ship with the package (``bidsfm.atlases.BUNDLED_DIR``)."""
    import bidsfm.atlases as package

    return Path(getattr(package, "BUNDLED_DIR", DEFAULT_BUNDLED_DIR))


def cache_dir() -> Path:
    """``$BIDSFM_HOME/atlases``: downloaded, fetched and seeded atlas files."""
    return bidsfm_home() / "atlases"


def cache_path(remote: RemoteFile) -> Path:
    """Where ``remote`` lives in the cache (it may not exist)."""
    return cache_dir() / remote.relpath


def _stamp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.verified.json")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _write_stamp(path: Path, sha: str) -> None:
    """Remember that ``path`` (at its current size and mtime) has sha256 ``sha``."""
    try:
        with atomic_path(_stamp_path(path)) as tmp:
            tmp.write_text(json.dumps({**_stat_key(path), "sha256": sha}) + "\n")
    except OSError:  # read-only cache: verification is simply redone next time
        LOGGER.debug("could not write verification stamp for %s", path)


def verified(path: Path, expected: str) -> bool:
    """Return whether ``path`` has sha256 ``expected``, hashing only when the file changed."""
    stamp = _stamp_path(path)
    try:
        info = json.loads(stamp.read_text())
        if info.get("sha256") == expected and info == {**_stat_key(path), "sha256": expected}:
            return True
    except (OSError, ValueError):
        pass
    sha = sha256_file(path)
    if sha != expected:
        return False
    _write_stamp(path, sha)
    return True


@functools.lru_cache(maxsize=64)
def _bundled_ok(path: str, size: int, mtime_ns: int, expected: str) -> bool:
    return sha256_file(path) == expected


def bundled_path(remote: RemoteFile, atlas: str = "") -> Path | None:
    """The package's own copy of ``remote``, if it ships one with the registry's sha256.

    Hashed once per process; no stamp is written, so a read-only install or a git checkout
    stays untouched.
    """
    if remote.relpath not in BUNDLED:
        return None
    path = bundled_dir() / remote.relpath
    try:
        st = path.stat()
    except OSError:
        return None
    if _bundled_ok(str(path), st.st_size, st.st_mtime_ns, remote.sha256):
        return path
    warn_once(("bundled", str(path)),
              "%s: the bundled %s atlas has the wrong sha256 (expected %s); ignoring it and "
              "trying the cache", path, atlas or remote.relpath, remote.sha256)
    return None


def cached_path(remote: RemoteFile) -> Path | None:
    """The cache's copy of ``remote`` if it exists.

    Raises
    ------
    AtlasNotFoundError
        The cached file has the wrong sha256 (it is never used then).
    """
    path = cache_path(remote)
    if not path.is_file():
        return None
    if not verified(path, remote.sha256):
        raise AtlasNotFoundError(
            f"cached atlas file has the wrong sha256 (expected {remote.sha256})", path=path,
            remedy=f"Delete it, then download {remote.url} and run `bidsfm-atlas seed NAME FILE`")
    return path


def local_path(remote: RemoteFile, atlas: str = "") -> tuple[Path, str] | None:
    """``(path, "bundled"|"cached")`` of a verified local copy of ``remote``, or None."""
    bundled = bundled_path(remote, atlas)
    if bundled is not None:
        return bundled, "bundled"
    cached = cached_path(remote)
    if cached is not None:
        return cached, "cached"
    return None


def _download_now(url: str, dest: Path, sha256: str, timeout: float) -> None:
    import urllib.request

    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out, 1 << 20)
        got = sha256_file(tmp)
        if got != sha256:
            raise ValueError(f"downloaded file has sha256 {got}, expected {sha256}")


def _download(url: str, dest: Path, sha256: str, timeout: float | None = None) -> None:
    """Download ``url`` to ``dest`` through a temporary name, verifying its sha256.

    The socket timeout does not cover name resolution, so the download runs in a daemon thread
    and is abandoned after ``2 * timeout`` seconds in all (``timeout`` defaults to
    :data:`DOWNLOAD_TIMEOUT`): a dead network never hangs a job.
    """
    import threading

    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    errors: list[BaseException] = []

    def _target() -> None:
        try:
            _download_now(url, dest, sha256, timeout)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    worker = threading.Thread(target=_target, name="bidsfm-atlas-download", daemon=True)
    worker.start()
    worker.join(2 * timeout)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {2 * timeout:g} s")
    if errors:
        raise errors[0]


#: Seconds during which a failed download is not retried (by any job sharing the cache), so
#: that the runs of a job on a node without network do not each wait for the timeout.
RETRY_AFTER = 600.0


def _failure_path(remote: RemoteFile) -> Path:
    return cache_dir() / ".failed" / f"{remote.sha256[:16]}.json"


def _recent_failure(remote: RemoteFile) -> str | None:
    import time

    try:
        info = json.loads(_failure_path(remote).read_text())
        age = time.time() - float(info["time"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if 0 <= age < RETRY_AFTER:
        return f"{info.get('reason', 'failed')}, {age:.0f} s ago; retried after {RETRY_AFTER:g} s"
    return None


def download(remote: RemoteFile, atlas: str) -> Path:
    """Download ``remote`` into the cache (sha256-verified) and return its path.

    A failure is remembered in the cache for :data:`RETRY_AFTER` seconds, during which the
    download is not tried again.

    Raises
    ------
    AtlasNotFoundError
        Offline (``BIDSFM_OFFLINE``), or the download failed (now or recently) or had the
        wrong content; the one-line message names the URL, the sha256 and how to seed the
        file instead.
    """
    import time

    dest = cache_path(remote)
    if offline():
        raise missing_file(remote, atlas, "BIDSFM_OFFLINE is set")
    recent = _recent_failure(remote)
    if recent is not None:
        raise missing_file(remote, atlas, f"download failed: {recent}")
    try:
        LOGGER.info("downloading %s atlas file %s", atlas, remote.url)
        _download(remote.url, dest, remote.sha256)
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        reason = str(exc).replace("\n", " ").strip() or type(exc).__name__
        try:
            with atomic_path(_failure_path(remote)) as tmp:
                tmp.write_text(json.dumps({"time": time.time(), "reason": reason[:200]}))
        except OSError:  # a read-only cache: nothing remembered
            pass
        raise missing_file(remote, atlas, f"download failed: {reason}") from None
    _failure_path(remote).unlink(missing_ok=True)
    _write_stamp(dest, remote.sha256)
    return dest


def missing_file(remote: RemoteFile, atlas: str, reason: str) -> AtlasNotFoundError:
    """The one-line error for a registry file that is not available offline."""
    return AtlasNotFoundError(
        f"{atlas} atlas not available offline ({reason})",
        remedy=f"Download {remote.url} (sha256 {remote.sha256}) and run "
        f"`bidsfm-atlas seed {atlas} FILE`, or run `bidsfm-atlas fetch {atlas}` on a machine "
        f"with internet access (it fills {cache_dir()}), or put the file at "
        f"{cache_path(remote)}",
    )


def seed_file(remote: RemoteFile, source: Path) -> Path:
    """Copy a verified local copy of ``remote`` into the cache; return the cached path."""
    dest = cache_path(remote)
    with atomic_path(dest) as tmp:
        shutil.copyfile(source, tmp)
        if sha256_file(tmp) != remote.sha256:  # pragma: no cover - disk corruption
            raise AtlasNotFoundError("copy into the cache is corrupt", path=dest)
    _write_stamp(dest, remote.sha256)
    return dest


# --------------------------------------------------------------------------------------------
# Filling the cache: seed (local copies) and fetch (downloads)
# --------------------------------------------------------------------------------------------


def _records(name: str, action: str) -> list:
    from .names import canonical_atlas_name
    from .registry import REGISTRY

    canonical = canonical_atlas_name(name)
    if canonical is None:
        raise AtlasNotFoundError(
            f"cannot {action} unknown atlas {name!r}",
            remedy=f"Atlases bidsfm can {action}: "
            f"{', '.join(n for n, r in REGISTRY.items() if r.releases)}; TemplateFlow-only "
            "atlases come from TEMPLATEFLOW_HOME and user atlases are used in place")
    return [REGISTRY[part] for part in canonical.split("+")]


def seed_cache(name: str, source_file: str | Path) -> Path:
    """Verify a local copy of one of an atlas's files and copy it atomically into the cache.

    Parameters
    ----------
    name : str
        Registry name in any spelling (e.g. ``"CC200"``, ``"schaefer400"``).
    source_file : str or Path
        A downloaded image or label table of that atlas (matched by its sha256).

    Returns
    -------
    Path
        The cached file.

    Raises
    ------
    AtlasNotFoundError
        Unknown name, missing file, or a sha256 that is none of the atlas's files (nothing is
        written then).
    """
    from bidsfm.utils import sha256_file as _sha

    record = _records(name, "seed")[0]
    files = {f.sha256: f for rel in record.releases for f in rel.files}
    if not files:
        raise AtlasNotFoundError(
            f"{record.name} has no file bidsfm can seed (it is read from TemplateFlow)",
            remedy="Put TemplateFlow's files in TEMPLATEFLOW_HOME instead")
    src = Path(source_file).expanduser()
    urls = ", ".join(sorted({f.url for f in files.values()}))
    if not src.is_file():
        raise AtlasNotFoundError(f"file to seed {record.name} from does not exist", path=src,
                                 remedy=f"Download {urls} first")
    got = _sha(src)
    if got not in files:
        expected = ", ".join(f"{f.relpath.rsplit('/', 1)[-1]} {f.sha256}"
                             for f in files.values())
        raise AtlasNotFoundError(
            f"sha256 mismatch for {record.name}: file has {got}, expected one of: {expected}",
            path=src, remedy=f"Download the right file from {urls}")
    return seed_file(files[got], src)


def seed_folder(name: str, folder: str | Path) -> list[Path]:
    """Seed every file of an atlas found in ``folder`` (by its path in the registry's layout,
    e.g. ``../shared/data/atlases``, or by file name); return the cached paths."""
    from bidsfm.utils import sha256_file as _sha

    folder = Path(folder).expanduser()
    out = []
    for record in _records(name, "seed"):
        for remote in {f.relpath: f for rel in record.releases for f in rel.files}.values():
            for cand in (folder / remote.relpath, folder / remote.relpath.rsplit("/", 1)[-1]):
                if cand.is_file() and _sha(cand) == remote.sha256:
                    out.append(seed_file(remote, cand))
                    break
    if not out:
        raise AtlasNotFoundError(f"no file of {name} with the registry's sha256 in this folder",
                                 path=folder, remedy="Point at a folder holding its files")
    return out


def fetch_atlas(name: str, space: str | None = None) -> list[Path]:
    """Download an atlas's files into the cache (for offline nodes); return their paths.

    Parameters
    ----------
    name : str
        Registry name in any spelling; ``A+B`` fetches both.
    space : str, optional
        Only the releases in this template (default: every release).

    Raises
    ------
    AtlasNotFoundError
        TemplateFlow-only atlas, offline, or a failed download.
    """
    from .base import template_id
    from .templateflow import fetch_command

    out: list[Path] = []
    for record in _records(name, "fetch"):
        if not record.releases:
            tf = record.templateflow
            tpl = template_id(space) or record.templates[0]
            raise AtlasNotFoundError(
                f"{record.name} is read from TemplateFlow, not fetched by bidsfm",
                remedy=(f"Run `{fetch_command(tpl, *tf, suffix=record.kind)}` and copy the "
                        "result into TEMPLATEFLOW_HOME") if tf else "Give it as a file")
        tpl = template_id(space)
        releases = [r for r in record.releases if tpl is None or r.template == tpl]
        if not releases:
            releases = list(record.releases)
            LOGGER.warning("%s has no %s release; fetching its %s release(s)", record.name,
                           tpl, ", ".join(sorted({r.template for r in releases})))
        for remote in {f.relpath: f for r in releases for f in r.files}.values():
            found = local_path(remote, record.name)
            if found is None and offline():
                raise AtlasNotFoundError(
                    f"cannot fetch {record.name}: BIDSFM_OFFLINE is set",
                    remedy=f"On a machine with internet access run `BIDSFM_OFFLINE=0 "
                    f"bidsfm-atlas fetch {record.name}`, or download {remote.url} (sha256 "
                    f"{remote.sha256}) and run `bidsfm-atlas seed {record.name} FILE`")
            out.append(found[0] if found is not None else download(remote, record.name))
    return out
