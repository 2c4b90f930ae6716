"""Target ROI correlation matrices: the mean ABIDE CC200 FC (bundled or recomputed) and the
procedural network covariance.

The bundled matrix is the upper triangle (``np.triu_indices(200, 1)`` order, float16) of the
mean CC200 Pearson FC of 100 ABIDE participants (:func:`abide_target_corr`), so that the
generator needs neither the shared data nor a network; provenance in
``bidsfm/data/demo/SOURCES.md``.
"""

from __future__ import annotations

import csv
import functools
import math
from pathlib import Path

import numpy as np

from bidsfm.utils import atomic_path

__all__ = [
    "BUNDLED_TARGET_FC", "abide_target_corr", "bundled_target_corr", "has_abide_series",
    "nearest_pd_corr", "procedural_corr", "resolve_shared_data", "write_bundled_target_corr",
]

#: Upper triangle (``np.triu_indices(200, 1)`` order, float16) of the mean CC200 Pearson FC of
#: 100 ABIDE participants (:func:`abide_target_corr`); regenerate with
#: :func:`write_bundled_target_corr`. Provenance: ``bidsfm/data/demo/SOURCES.md``.
BUNDLED_TARGET_FC = (Path(__file__).resolve().parents[1] / "data" / "demo"
                     / "cc200_abide_mean_fc.npy")


def resolve_shared_data(shared_data: str | Path | None = None) -> Path | None:
    """Locate the shared data directory (argument, ``$BIDSFM_SHARED_DATA``, or ../shared/data).

    The generator does not need it (the atlas and the target FC ship with the package); it is
    used to recompute the target FC from the ABIDE series (:func:`abide_target_corr`) and by
    tests and benchmarks.

    Parameters
    ----------
    shared_data : str or Path, optional
        Explicit directory. When given, it is used if it exists and never replaced by a default.

    Returns
    -------
    Path or None
        The directory if it holds ``atlases/CC200.nii.gz`` and the ABIDE time series, else None.
    """
    from bidsfm.utils import shared_data_dir

    cand = shared_data_dir(shared_data)
    needed = [cand / "atlases" / "CC200.nii.gz", cand / "abide" / "cc200_timeseries.npz",
              cand / "abide" / "participants.tsv"]
    return cand.resolve() if all(p.is_file() for p in needed) else None


def has_abide_series(shared_dir: str | Path) -> bool:
    """Whether a folder holds the ABIDE CC200 series the target FC can be recomputed from.

    Parameters
    ----------
    shared_dir : str or Path
        Candidate shared data directory.

    Returns
    -------
    bool
        True when ``abide/cc200_timeseries.npz`` and ``abide/participants.tsv`` are files.
    """
    abide = Path(shared_dir) / "abide"
    return (abide / "cc200_timeseries.npz").is_file() and (abide / "participants.tsv").is_file()


def nearest_pd_corr(c: np.ndarray, floor: float = 0.05) -> np.ndarray:
    """Symmetrise, floor the eigenvalues and rescale to a unit-diagonal correlation matrix.

    Parameters
    ----------
    c : numpy.ndarray
        Square matrix, nearly a correlation matrix.
    floor : float
        Smallest eigenvalue kept.

    Returns
    -------
    numpy.ndarray
        Positive-definite correlation matrix.
    """
    c = (c + c.T) / 2
    w, v = np.linalg.eigh(c)
    c = (v * np.maximum(w, floor)) @ v.T
    d = np.sqrt(np.diag(c))
    c = c / np.outer(d, d)
    np.fill_diagonal(c, 1.0)
    return c


@functools.lru_cache(maxsize=2)
def abide_target_corr(shared_dir: str, n_participants: int = 100) -> np.ndarray:
    """Mean Pearson FC (CC200) over a fixed subset of good-quality ABIDE participants.

    Parameters
    ----------
    shared_dir : str
        The shared data directory (holding ``abide/``).
    n_participants : int
        How many participants (with ``pcp_qc_pass == 1`` and ``zero_rois == 0``, sorted by id,
        evenly spaced) to average.

    Returns
    -------
    numpy.ndarray
        (200, 200) positive-definite correlation matrix (read-only).
    """
    abide = Path(shared_dir) / "abide"
    with open(abide / "participants.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    ok = sorted(r["participant_id"] for r in rows
                if r.get("pcp_qc_pass") == "1" and r.get("zero_rois") == "0")
    pick = [ok[i] for i in np.unique(np.linspace(0, len(ok) - 1, n_participants).round()
                                     .astype(int))]
    acc = None
    with np.load(abide / "cc200_timeseries.npz") as npz:
        for pid in pick:
            ts = npz[pid].astype(np.float64)
            c = np.corrcoef(ts.T)
            acc = c if acc is None else acc + c
    corr = nearest_pd_corr(acc / len(pick))
    corr.setflags(write=False)
    return corr


@functools.lru_cache(maxsize=1)
def bundled_target_corr() -> np.ndarray:
    """The mean ABIDE CC200 FC shipped with the package (no shared data needed).

    Returns
    -------
    numpy.ndarray
        (200, 200) positive-definite correlation matrix (read-only); equal to
        ``abide_target_corr(shared_dir)`` within float16 rounding (< 3e-4).
    """
    upper = np.load(BUNDLED_TARGET_FC, allow_pickle=False).astype(np.float64)
    n = int(round((1 + math.sqrt(1 + 8 * upper.size)) / 2))
    if n * (n - 1) // 2 != upper.size:
        raise ValueError(f"{BUNDLED_TARGET_FC}: {upper.size} values are no upper triangle")
    corr = np.eye(n)
    iu = np.triu_indices(n, 1)
    corr[iu] = upper
    corr.T[iu] = upper
    corr = nearest_pd_corr(corr)
    corr.setflags(write=False)
    return corr


def write_bundled_target_corr(shared_dir: str | Path, path: str | Path = BUNDLED_TARGET_FC
                              ) -> Path:
    """Recompute the bundled target FC from the ABIDE series (maintainers only).

    Parameters
    ----------
    shared_dir : str or Path
        Shared data directory holding ``abide/cc200_timeseries.npz`` and ``participants.tsv``.
    path : str or Path
        Where to write the ``.npy`` (default: the package's copy).

    Returns
    -------
    Path
        The file written (upper triangle, float16, about 40 kB).
    """
    corr = abide_target_corr(str(shared_dir))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, corr[np.triu_indices(corr.shape[0], 1)].astype(np.float16),
                    allow_pickle=False)
    return path


def procedural_corr(network: np.ndarray, seed: int) -> np.ndarray:
    """Block (network) correlation matrix with some parcel-level variation.

    Parameters
    ----------
    network : numpy.ndarray
        Network index (0 ... K-1) of each parcel.
    seed : int
        Seed of the between/within-network correlations and the parcel-level noise.

    Returns
    -------
    numpy.ndarray
        (P, P) positive-definite correlation matrix.
    """
    rng = np.random.default_rng([seed, 15485863])
    n_net = int(network.max()) + 1
    between = rng.uniform(-0.1, 0.25, (n_net, n_net))
    between = (between + between.T) / 2
    np.fill_diagonal(between, rng.uniform(0.4, 0.65, n_net))
    c = between[network][:, network]
    noise = rng.normal(0.0, 0.05, c.shape)
    c = c + (noise + noise.T) / 2
    np.fill_diagonal(c, 1.0)
    return nearest_pd_corr(c)
