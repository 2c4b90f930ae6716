"""Functional gradients of an atlas's ROIs (diffusion-map embedding of a group FC matrix).

Brain-JEPA's "brain gradient positioning" gives each ROI a position in the space of the main
axes of functional connectivity (Margulies et al. 2016, PNAS: "Situating the default-mode
network along a principal gradient of macroscale cortical organization"). The official model
ships gradients for one atlas only (450 ROIs); :func:`functional_gradients` computes them for
any atlas and cohort, following the recipe of Margulies et al. 2016 and BrainSpace (Vos de Wael
et al. 2020, Commun Biol), written anew with numpy/scipy:

1. **group FC**: the mean of the subjects' Fisher-z FC, back-transformed (:func:`group_fc`);
   missing ROIs of a subject are ignored for that subject;
2. **row-wise thresholding**: in each row only the top 10% (``1 - sparsity``) of connections are
   kept (the rest, and all negative values, set to 0);
3. **affinity** = cosine similarity between the thresholded rows (non-negative by construction);
4. **diffusion map** (Coifman & Lafon 2006) with anisotropic diffusion ``alpha = 0.5``:
   ``L = D^-a A D^-a`` (``D`` = degrees of ``A``), then the Markov matrix ``P = D_L^-1 L``; its
   eigenvectors come from the symmetric ``D_L^-1/2 L D_L^-1/2`` (``scipy.linalg.eigh``) and are
   scaled so that the trivial eigenvector is all ones (as BrainSpace does); that one is
   dropped. With ``diffusion_time = 0`` (the BrainSpace default) each component ``k`` is
   scaled by ``lambda_k / (1 - lambda_k)`` (multi-scale diffusion map);
5. **signs** are fixed deterministically: each component is flipped so that its entry of largest
   magnitude is positive (eigenvector signs are otherwise arbitrary).

The result is an (R, n_components) array, ordered by decreasing eigenvalue (component 1 = the
principal gradient). The command ``bidsfm-gradients`` computes it for a cohort from bidsfm's
participant-level outputs (``*_relmat.tsv``) or from a group matrix in a ``.npy`` file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputDataError

__all__ = ["functional_gradients", "group_fc", "read_relmat", "write_gradients", "main"]


def group_fc(fcs: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
    """Group FC: mean of Fisher-z FC over subjects (NaN = missing, ignored), back-transformed.

    Parameters
    ----------
    fcs : sequence of np.ndarray
        (R, R) Pearson FC matrices (or an (S, R, R) stack).

    Returns
    -------
    np.ndarray
        (R, R) float64 group FC with a unit diagonal; NaN where no subject had the pair.
    """
    stack = np.asarray(fcs, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2]:
        raise ValueError(f"expected (S, R, R) FC matrices, got shape {stack.shape}")
    z = np.arctanh(np.clip(stack, -0.999999, 0.999999))
    count = np.isfinite(z).sum(axis=0)
    total = np.nansum(z, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    out = np.tanh(mean)
    np.fill_diagonal(out, 1.0)
    return out


def functional_gradients(fc_group: np.ndarray, n_components: int = 30, sparsity: float = 0.9,
                         alpha: float = 0.5, diffusion_time: float = 0.0) -> np.ndarray:
    """Diffusion-map gradients of a group FC matrix (see the module docstring).

    Parameters
    ----------
    fc_group : np.ndarray
        (R, R) symmetric group FC (NaN entries are treated as 0).
    n_components : int
        Number of gradients (30 in Brain-JEPA); must be < R.
    sparsity : float
        Fraction of each row's connections set to zero (0.9 keeps the top 10%).
    alpha : float
        Anisotropic diffusion parameter (0.5 as in Margulies et al. 2016).
    diffusion_time : float
        0 = multi-scale scaling ``lambda / (1 - lambda)``; t > 0 scales by ``lambda ** t``.

    Returns
    -------
    np.ndarray
        (R, n_components) float64 gradients, deterministic signs.

    Raises
    ------
    ValueError
        If the matrix is not square, too small for ``n_components``, or has ROIs without any
        connection (an all-zero row after thresholding).
    """
    from scipy.linalg import eigh

    a = np.array(fc_group, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square (R, R) matrix, got shape {a.shape}")
    r = a.shape[0]
    if not 1 <= n_components < r:
        raise ValueError(f"n_components must be in [1, {r - 1}] for {r} ROIs, got "
                         f"{n_components}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    a = np.nan_to_num(a, nan=0.0)
    np.fill_diagonal(a, 0.0)
    # 2. row-wise threshold: keep the top (1 - sparsity) fraction of each row (ties kept)
    keep = max(1, int(np.ceil((1.0 - sparsity) * (r - 1))))
    cut = -np.sort(-a, axis=1)[:, keep - 1:keep]
    a = np.where(a >= cut, a, 0.0)
    a[a < 0] = 0.0
    norms = np.linalg.norm(a, axis=1)
    if np.any(norms == 0):
        bad = np.flatnonzero(norms == 0)[:5].tolist()
        raise ValueError(f"ROI(s) {bad} have no positive connection; remove them or give a "
                         "complete group FC")
    # 3. cosine affinity
    u = a / norms[:, None]
    aff = np.clip(u @ u.T, 0.0, None)
    aff = (aff + aff.T) / 2
    # 4. diffusion map
    d = aff.sum(axis=1)
    lmat = aff / np.outer(d ** alpha, d ** alpha)
    dl = lmat.sum(axis=1)
    sym = lmat / np.sqrt(np.outer(dl, dl))
    sym = (sym + sym.T) / 2
    vals, vecs = eigh(sym, subset_by_index=[r - n_components - 1, r - 1])
    order = np.argsort(vals)[::-1]
    vals, vecs = vals[order], vecs[:, order]
    # right eigenvectors of P = D_L^-1 L, scaled so that the trivial one is all ones on a
    # connected graph (v_0 = sqrt(d_L) / ||sqrt(d_L)||); no division by v_0, which would fail
    # on a disconnected graph
    psi = vecs / np.sqrt(dl)[:, None] * np.sqrt(dl.sum())
    vals, psi = vals[1:], psi[:, 1:]
    if diffusion_time > 0:
        scale = vals ** diffusion_time
    else:
        scale = vals / np.clip(1.0 - vals, 1e-12, None)
    grads = psi * scale[None, :]
    # 5. deterministic signs
    idx = np.argmax(np.abs(grads), axis=0)
    grads = grads * np.sign(grads[idx, np.arange(grads.shape[1])])[None, :]
    return grads


def read_relmat(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a square ``*_relmat.tsv``: bidsfm's/XCP-D's (row names in a first ``Node`` column,
    ROI header, ``n/a``; read by :func:`bidsfm.derivatives.read_relmat`) or a bare numeric
    matrix with a header."""
    import pandas as pd

    from ..derivatives import read_relmat as read_labelled

    with open(path) as f:
        f.readline()
        first = f.readline().split("\t", 1)[0].strip()
    try:
        float(first)
    except ValueError:  # row names in the first column (``Node`` in bidsfm's and XCP-D's)
        return read_labelled(path)
    frame = pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)
    mat = frame.to_numpy(dtype=np.float64)
    if mat.shape[0] != mat.shape[1]:
        raise InputDataError(f"relmat is {mat.shape[0]}x{mat.shape[1]}, not square", path=path)
    return [str(c) for c in frame.columns], mat


def write_gradients(path: str | Path, grads: np.ndarray, roi_names: Sequence[str]) -> Path:
    """Write gradients as TSV (``roi`` column + ``gradient_01..``), atomically."""
    import pandas as pd

    from ..utils import atomic_path

    frame = pd.DataFrame(grads, columns=[f"gradient_{k + 1:02d}" for k in range(grads.shape[1])])
    frame.insert(0, "roi", list(roi_names))
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, float_format="%.8g")
    return path


def main(argv: list[str] | None = None) -> int:
    """``bidsfm-gradients``: gradients of an atlas from a cohort's FC.

    Usage::

        bidsfm-gradients OUT.tsv (--relmat-dir BIDSFM_OUTPUT [--atlas CC200] | --npy GROUP.npy)
                         [--n-components 30] [--sparsity 0.9] [--alpha 0.5]
    """
    import argparse

    parser = argparse.ArgumentParser(prog="bidsfm-gradients",
                                     description="Diffusion-map functional gradients of an "
                                                 "atlas's ROIs from a cohort's FC.")
    parser.add_argument("out", type=Path, help="output TSV (roi, gradient_01, ...)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--relmat-dir", type=Path,
                     help="bidsfm output folder: every Pearson FC relmat "
                     "(*_atlas-<atlas>_stat-pearsoncorrelation_relmat.tsv) is averaged")
    src.add_argument("--npy", type=Path, help="(R, R) group FC or (S, R, R) FC stack (.npy)")
    parser.add_argument("--atlas", default=None, help="atlas- label to select (relmat mode)")
    parser.add_argument("--n-components", type=int, default=30)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        if args.npy is not None:
            if not args.npy.is_file():
                raise InputDataError("file not found", path=args.npy)
            arr = np.load(args.npy, allow_pickle=False)
            mat = group_fc(arr) if arr.ndim == 3 else np.asarray(arr, dtype=np.float64)
            names = [f"roi_{i + 1:03d}" for i in range(mat.shape[0])]
        else:
            from ..derivatives import output_glob

            pattern = output_glob("fc", args.atlas or "*")
            files = sorted(args.relmat_dir.rglob(pattern))
            if not files:
                raise InputDataError(f"no {pattern} files found", path=args.relmat_dir)
            names, first = read_relmat(files[0])
            mats = [first]
            for f in files[1:]:
                n2, m = read_relmat(f)
                if n2 != names:
                    raise InputDataError("ROI names differ from those of " + files[0].name,
                                         path=f)
                mats.append(m)
            mat = group_fc(mats)
        grads = functional_gradients(mat, n_components=args.n_components,
                                     sparsity=args.sparsity, alpha=args.alpha)
    except (InputDataError, ValueError, OSError) as exc:
        print(f"bidsfm-gradients: error: {exc}", file=sys.stderr)
        return 2
    write_gradients(args.out, grads, names)
    print(f"bidsfm-gradients: {grads.shape[1]} gradients of {grads.shape[0]} ROIs -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
