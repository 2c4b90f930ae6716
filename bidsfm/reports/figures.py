"""Report figures drawn with matplotlib (Agg backend, imported lazily), returned as PNG bytes.

Each function builds one figure, renders it to PNG in memory and closes it, so a report over
many runs never accumulates open figures.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

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


# --------------------------------------------------------------------------------------------
# Glass brain: signed maximum-intensity projections on a brain outline, plain matplotlib
# --------------------------------------------------------------------------------------------

#: the image the outline is drawn from: the union of the bundled CC200 parcels (MNI space)
OUTLINE_SOURCE = Path(__file__).resolve().parents[1] / "data" / "atlases" / "CC200.nii.gz"
#: (panel title, axis projected away, horizontal axis, vertical axis, horizontal reversed)
GLASS_VIEWS = (("sagittal (x)", 0, 1, 2, True),
               ("coronal (y)", 1, 0, 2, False),
               ("axial (z)", 2, 0, 1, False))


def _ras_grid(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Reorder ``data`` (3D or 4D) to RAS voxel axes; world coordinates of voxel centres per axis.

    Template-space grids (all bidsfm runs) are axis-aligned, so a flip/transpose reaches RAS;
    the coordinates are read from the diagonal of the reoriented affine (an oblique grid is
    drawn as its closest axis-aligned grid).
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    ornt = io_orientation(affine)
    spatial = data.shape[:3]
    out = apply_orientation(data, ornt)
    aff = np.asarray(affine, dtype=float) @ inv_ornt_aff(ornt, spatial)
    coords = [aff[a, a] * np.arange(out.shape[a]) + aff[a, 3] for a in range(3)]
    return out, coords


@lru_cache(maxsize=1)
def brain_outline() -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...] | None:
    """Brain silhouettes for the glass brain, one per view of :data:`GLASS_VIEWS` (cached).

    Computed once per process from the bundled CC200 image (3 mm, MNI space): the projection
    of the union of its parcels along each view's axis, holes filled and slightly smoothed
    so that its 0.5 contour is a smooth outline. Returns, per view, the horizontal and
    vertical world coordinates (mm) and the silhouette (float, 0..1); None when the image
    cannot be read (the glass brain is then drawn without outline).
    """
    try:
        import nibabel as nib
        from scipy import ndimage

        img = nib.load(str(OUTLINE_SOURCE))
        brain, coords = _ras_grid(np.asarray(img.dataobj) > 0, img.affine)
    except Exception:  # an outline is decoration: never fail a figure for it
        return None
    views = []
    for _title, axis, hor, ver, _rev in GLASS_VIEWS:
        # the remaining axes keep their order (hor < ver): transpose to rows = vertical axis
        sil = ndimage.binary_fill_holes(brain.any(axis=axis))
        views.append((coords[hor], coords[ver],
                      ndimage.gaussian_filter(sil.T.astype(float), 0.8)))
    return tuple(views)


def _glass_limits(vols: np.ndarray, coords: list[np.ndarray],
                  outline: tuple | None) -> list[tuple[float, float]]:
    """World limits (mm) per RAS axis: the brain outline and the non-zero data, 5 mm margin.

    Grids larger than the brain (e.g. a padded field of view) are cropped to what is drawn;
    without outline or data the whole grid is shown.
    """
    lims = []
    nonzero = np.abs(vols).max(axis=3) > 0
    for a in range(3):
        lo, hi = [], []
        other = tuple(i for i in range(3) if i != a)
        hit = np.flatnonzero(nonzero.any(axis=other))
        if hit.size:
            lo.append(coords[a][hit].min())
            hi.append(coords[a][hit].max())
        if outline is not None:
            for (_t, _axis, hor, ver, _r), (oh, ov, sil) in zip(GLASS_VIEWS, outline,
                                                               strict=True):
                inside = sil >= 0.5
                if a == hor and inside.any():
                    cols = oh[inside.any(axis=0)]
                    lo.append(cols.min())
                    hi.append(cols.max())
                elif a == ver and inside.any():
                    rows = ov[inside.any(axis=1)]
                    lo.append(rows.min())
                    hi.append(rows.max())
        if not lo:
            lo, hi = [coords[a].min()], [coords[a].max()]
        lims.append((float(min(lo)) - 5.0, float(max(hi)) + 5.0))
    return lims


def _signed_mip(vol: np.ndarray, axis: int) -> np.ndarray:
    """Projection keeping, along ``axis``, the value of largest magnitude (with its sign)."""
    idx = np.abs(vol).argmax(axis=axis)
    return np.take_along_axis(vol, np.expand_dims(idx, axis), axis).squeeze(axis)


def glass_brain_figure(data: np.ndarray, affine: np.ndarray, heads: Sequence[str],
                       title: str):
    """Glass brain of a statmap: one row per volume (head), sagittal, coronal and axial views.

    Each view is the signed maximum-intensity projection (the value of largest magnitude
    along the line of sight, as nilearn's ``plot_glass_brain(plot_abs=False)``) drawn over the
    outline of :func:`brain_outline`; zeros (outside ROIs) are transparent. Each row has its own
    symmetric colour scale (``RdBu_r``, ±max|value| of that head), its title in a band above
    the views (never over them) and L/R marks on the coronal and axial views.

    Parameters
    ----------
    data : np.ndarray
        (X, Y, Z) or (X, Y, Z, n_heads) values on the grid of ``affine``.
    affine : np.ndarray
        4x4 voxel-to-world (mm) affine.
    heads : sequence of str
        Row names (``volume k`` for volumes beyond the list).
    title : str
        Appended to each row's name.

    Returns
    -------
    matplotlib.figure.Figure
        The figure (render it with :func:`to_png`).
    """
    plt = _plt()
    vols = np.asarray(data, dtype=np.float32)
    if vols.ndim == 3:
        vols = vols[..., None]
    vols, coords = _ras_grid(np.nan_to_num(vols, nan=0.0), affine)
    outline = brain_outline()
    n = vols.shape[3]
    extent = _glass_limits(vols, coords, outline)
    # image extent: voxel edges (centres +- half a voxel) of the grid
    edges = [(float(c[0] - 0.5 * (c[1] - c[0])), float(c[-1] + 0.5 * (c[1] - c[0])))
             if c.size > 1 else (float(c[0]) - 0.5, float(c[0]) + 0.5) for c in coords]
    # every view drawn at the same scale (mm per inch), its box exactly the grid's extent
    size = [(extent[hor][1] - extent[hor][0], extent[ver][1] - extent[ver][0])
            for _v, _a, hor, ver, _r in GLASS_VIEWS]
    scale = 2.2 / max(h for _w, h in size)  # inches per mm: the tallest view is 2.2 in
    gap, title_band, label_band, row_gap = 0.2, 0.3, 0.22, 0.2  # inches
    panels_h = max(h for _w, h in size) * scale
    row_h = title_band + label_band + panels_h + row_gap
    fig_w = gap + sum(w * scale + gap for w, _h in size) + 0.9
    fig_h = n * row_h
    fig = plt.figure(figsize=(fig_w, fig_h), dpi=DPI)
    cmap = plt.get_cmap("RdBu_r")
    for k in range(n):
        vol = vols[..., k]
        vmax = float(np.abs(vol).max()) or 1.0
        top = fig_h - k * row_h
        name = heads[k] if k < len(heads) else f"volume {k}"
        fig.text(gap / fig_w, (top - 0.5 * title_band) / fig_h, f"{name}: {title}",
                 fontsize=11, va="center", ha="left", fontweight="bold")
        label_y = (top - title_band - 0.5 * label_band) / fig_h
        bottom = top - title_band - label_band - panels_h
        x = gap
        for v, (view, axis, hor, ver, reverse) in enumerate(GLASS_VIEWS):
            w, h = size[v][0] * scale, size[v][1] * scale
            # top-aligned under the label band, so that every label is on one line
            ax = fig.add_axes((x / fig_w, (bottom + panels_h - h) / fig_h, w / fig_w,
                               h / fig_h))
            fig.text((x + 0.5 * w) / fig_w, label_y, view, ha="center", va="center",
                     fontsize=8, color="#555555")
            if hor == 0:  # the left-right axis is horizontal: mark both sides
                fig.text(x / fig_w, label_y, "L", ha="left", va="center", fontsize=10,
                         fontweight="bold")
                fig.text((x + w) / fig_w, label_y, "R", ha="right", va="center", fontsize=10,
                         fontweight="bold")
            x += w + gap
            proj = _signed_mip(vol, axis)
            h_lim, v_lim = extent[hor], extent[ver]
            if outline is not None:
                oh, ov, sil = outline[v]
                ax.contourf(oh, ov, sil, levels=[0.5, 2.0], colors=["#f0f0f0"])
            im = ax.imshow(np.ma.masked_equal(proj.T, 0.0), cmap=cmap, vmin=-vmax, vmax=vmax,
                           origin="lower", interpolation="nearest",
                           extent=(*edges[hor], *edges[ver]), zorder=2)
            if outline is not None:
                ax.contour(oh, ov, sil, levels=[0.5], colors="#444444", linewidths=1.2,
                           zorder=3)
            ax.set_xlim(*(h_lim[::-1] if reverse else h_lim))
            ax.set_ylim(*v_lim)
            ax.set_aspect("auto")
            ax.axis("off")
        cax = fig.add_axes(((x + 0.05) / fig_w, (bottom + 0.1 * panels_h) / fig_h,
                            0.15 / fig_w, 0.8 * panels_h / fig_h))
        bar = fig.colorbar(im, cax=cax, ticks=[-vmax, 0.0, vmax])
        bar.ax.tick_params(labelsize=8)
        bar.ax.set_yticklabels([f"{-vmax:.2g}", "0", f"{vmax:.2g}"])
    return fig


def glass_brain_png(data: np.ndarray, affine: np.ndarray, heads: Sequence[str],
                    title: str) -> bytes:
    """PNG bytes of :func:`glass_brain_figure` (layout fixed: no tight bounding box pass)."""
    plt = _plt()
    fig = glass_brain_figure(data, affine, heads, title)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buf.getvalue()


def glass_brain(statmap_path: str | Path, heads: Sequence[str], title: str) -> bytes:
    """Glass brain of an attention statmap file (one row per head), see
    :func:`glass_brain_figure`; the file is read with nibabel."""
    import nibabel as nib

    img = nib.load(str(statmap_path))
    return glass_brain_png(np.asarray(img.dataobj, dtype=np.float32), img.affine, heads,
                           title)
