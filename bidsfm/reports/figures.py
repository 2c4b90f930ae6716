"""Report figures drawn with matplotlib (Agg backend, imported lazily), returned as PNG bytes.

Each function builds one figure, renders it to PNG in memory and closes it, so a report over
many runs never accumulates open figures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    plt = _plt()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.08)
    finally:
        plt.close(fig)
    return buf.getvalue()


def carpet(ts: np.ndarray, repetition_time: float | None, title: str) -> bytes:
    """Carpet plot of ROI time series (ROIs as rows, retained volumes as columns).

    Parameters
    ----------
    ts : np.ndarray
        Time series, shape (n_volumes, n_rois); all-NaN columns are low-coverage ROIs.
    repetition_time : float or None
        Seconds per volume (the x axis is in seconds when known, in volumes otherwise).
    title : str
        Figure title.
    """
    plt = _plt()
    data = np.asarray(ts, dtype=float).T
    finite = data[np.isfinite(data)]
    lim = float(np.percentile(np.abs(finite), 98)) if finite.size else 1.0
    lim = lim or 1.0
    fig, ax = plt.subplots(figsize=(6.0, 3.4))
    cmap = plt.get_cmap("gray").with_extremes(bad="#d9534f")
    n_t = data.shape[1]
    scale = repetition_time if repetition_time else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cmap, vmin=-lim, vmax=lim,
                   interpolation="nearest", extent=(0, n_t * scale, data.shape[0], 0))
    ax.set_xlabel("time (s, retained volumes concatenated)" if repetition_time
                  else "retained volume")
    ax.set_ylabel("ROI (atlas order)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02, label="signal (z)")
    return to_png(fig)


def matrix(mat: np.ndarray, title: str, vlim: float = 1.0, label: str = "Pearson r") -> bytes:
    """Square matrix (FC) with a diverging colour map; NaN rows/columns shown grey."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.0))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="#bbbbbb")
    im = ax.imshow(np.ma.masked_invalid(np.asarray(mat, dtype=float)), cmap=cmap, vmin=-vlim,
                   vmax=vlim, interpolation="nearest")
    ax.set_xlabel("ROI")
    ax.set_ylabel("ROI")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03, label=label)
    return to_png(fig)


def coverage(values: np.ndarray, threshold: float, title: str) -> bytes:
    """Per-ROI coverage bars with the ``--min-coverage`` threshold; low ROIs in red."""
    plt = _plt()
    vals = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    fig, ax = plt.subplots(figsize=(5.4, 3.0))
    edges = np.arange(vals.size + 1) + 0.5
    # two filled step outlines (fast: one artist each, not one bar per ROI)
    ax.stairs(np.where(vals >= threshold, vals, 0.0), edges, fill=True, color="#4a7fb0")
    low = vals < threshold
    if low.any():
        ax.stairs(np.where(low, vals, 0.0), edges, fill=True, color="#d9534f",
                  label=f"below threshold ({int(low.sum())})")
    ax.axhline(threshold, color="#333333", lw=1, ls="--", label=f"threshold {threshold:g}")
    ax.set_ylim(0, 1.05)
    ax.set_xlim(0.5, vals.size + 0.5)
    ax.set_xlabel("ROI (atlas order)")
    ax.set_ylabel("fraction in mask")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower left", fontsize=8, frameon=False)
    return to_png(fig)


def histogram(values: np.ndarray, title: str, xlabel: str,
              groups: dict[str, np.ndarray] | None = None, vline: float | None = None,
              vline_label: str = "") -> bytes:
    """Histogram of ``values`` (or overlaid histograms of ``groups``)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    vals = np.asarray(values, dtype=float)
    vals = vals[np.isfinite(vals)]
    bins = np.histogram_bin_edges(vals, bins=min(40, max(8, vals.size // 4))) if vals.size \
        else 10
    if groups:
        for name, g in groups.items():
            g = np.asarray(g, dtype=float)
            ax.hist(g[np.isfinite(g)], bins=bins, alpha=0.6, label=f"{name} (n={g.size})")
        ax.legend(fontsize=8, frameon=False)
    else:
        ax.hist(vals, bins=bins, color="#4a7fb0")
    if vline is not None:
        ax.axvline(vline, color="#b3261e", lw=1.2, ls="--", label=vline_label)
        if vline_label:
            ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=10)
    return to_png(fig)


def embedding_map(xy: np.ndarray, panels: Sequence[tuple[str, list, str]],
                  explained: Sequence[float]) -> bytes:
    """2D embedding map (PCA scores), one panel per colouring.

    Parameters
    ----------
    xy : np.ndarray
        Scores, shape (n_participants, 2).
    panels : sequence of (title, values, kind)
        ``values`` per participant (``None`` = unknown, drawn as grey crosses); ``kind`` is
        ``"categorical"``, ``"continuous"`` or ``"none"``.
    explained : sequence of float
        Fraction of variance of the two components (axis labels).
    """
    plt = _plt()
    n = max(len(panels), 1)
    ncol = min(n, 3)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.4 * ncol, 3.8 * nrow), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.ravel()):
        if k >= len(panels):
            ax.axis("off")
            continue
        title, values, kind = panels[k]
        known = np.array([v is not None for v in values], dtype=bool)
        if (~known).any():
            ax.scatter(xy[~known, 0], xy[~known, 1], marker="x", c="#aaaaaa", s=22,
                       label="no label")
        if kind == "continuous" and known.any():
            vals = np.array([float(v) for v in np.asarray(values, dtype=object)[known]])
            sc = ax.scatter(xy[known, 0], xy[known, 1], c=vals, cmap="viridis", s=30,
                            edgecolors="#333333", linewidths=0.3)
            fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.03, label=title)
        elif kind == "categorical" and known.any():
            labels = sorted({str(v) for v in np.asarray(values, dtype=object)[known]})
            cmap = plt.get_cmap("tab10")
            for i, lab in enumerate(labels):
                sel = np.array([v is not None and str(v) == lab for v in values], dtype=bool)
                ax.scatter(xy[sel, 0], xy[sel, 1], s=30, color=cmap(i % 10), label=lab,
                           edgecolors="#333333", linewidths=0.3)
        else:
            ax.scatter(xy[known, 0], xy[known, 1], s=30, color="#4a7fb0",
                       edgecolors="#333333", linewidths=0.3)
        if kind == "categorical" or (~known).any():
            ax.legend(fontsize=8, frameon=False, loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"PC1 ({100 * explained[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC2 ({100 * explained[1]:.0f}% of variance)")
    return to_png(fig)


def glass_brain(statmap_path: str, heads: Sequence[str], title: str) -> bytes:
    """Glass-brain views of an attention statmap (one row per head), rendered with nilearn."""
    plt = _plt()
    from nilearn import image, plotting

    img = image.load_img(statmap_path)
    n = img.shape[3] if len(img.shape) == 4 else 1
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.6 * n), squeeze=False)
    for k in range(n):
        vol = image.index_img(img, k) if len(img.shape) == 4 else img
        vmax = float(np.abs(vol.get_fdata()).max()) or 1.0
        name = heads[k] if k < len(heads) else f"volume {k}"
        plotting.plot_glass_brain(vol, axes=axes[k, 0], plot_abs=False, colorbar=True,
                                  cmap="RdBu_r", vmax=vmax, vmin=-vmax,
                                  title=f"{name}: {title}")
    return to_png(fig)
