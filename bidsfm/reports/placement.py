"""Where an atlas landed on a run: parcel borders drawn on the run's brain mask.

Drawn once per run and atlas during processing, from the label image already placed on the
run's grid, with Pillow only (no matplotlib, no nilearn: a few milliseconds). Three orthogonal
slices through the centre of the brain mask, in neurological orientation (left on the left):
the mask in grey, each parcel's border in its own colour, and parcel voxels that fall outside
the mask in red — what a user checks to see that the parcellation sits on the brain.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

#: display colours (RGB)
BACKGROUND = (0, 0, 0)
MASK = (96, 96, 96)
OUTSIDE = (220, 40, 40)
#: panel scale (pixels per voxel, at least) and gap between panels
MIN_PANEL_PX = 220
GAP = 6


def _to_ras(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``volume`` reoriented so that its axes run left->right, posterior->anterior,
    inferior->superior (nibabel's orientation tools; no resampling)."""
    import nibabel as nib

    ornt = nib.orientations.io_orientation(affine)
    return nib.orientations.apply_orientation(volume, ornt)


def _palette(n: int) -> np.ndarray:
    """(n + 1, 3) distinct, saturated colours for label values 0..n (golden-angle hues)."""
    hues = (np.arange(n + 1) * 0.618033988749895) % 1.0
    h6 = hues * 6.0
    c = np.full_like(hues, 0.85)
    x = c * (1 - np.abs(h6 % 2 - 1))
    zero = np.zeros_like(hues)
    sector = h6.astype(int) % 6
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c),
             (c, zero, x)]
    rgb = np.zeros((n + 1, 3))
    for s, (r, g, b) in enumerate(table):
        sel = sector == s
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], axis=1)
    return (0.15 + rgb) * 255 / 1.0


def _panel(labels: np.ndarray, mask: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """RGB image (uint8) of one 2D slice, first axis = image rows (top = superior/anterior)."""
    img = np.zeros(labels.shape + (3,), dtype=np.float64)
    img[mask] = MASK
    inside = labels > 0
    border = np.zeros_like(inside)
    for axis in (0, 1):
        for shift in (1, -1):
            other = np.roll(labels, shift, axis=axis)
            border |= inside & (other != labels)
    tint = inside & mask & ~border
    img[tint] = 0.75 * img[tint] + 0.25 * colours[labels[tint]]
    img[border] = colours[labels[border]]
    img[inside & ~mask] = OUTSIDE
    return np.clip(img, 0, 255).astype(np.uint8)


def placement_png(labels: np.ndarray, mask: np.ndarray, affine: np.ndarray) -> bytes:
    """PNG of an atlas placed on a run: sagittal, coronal and axial slices through the mask.

    Parameters
    ----------
    labels : np.ndarray
        3D integer label image on the run's grid (0 = no parcel).
    mask : np.ndarray
        3D boolean brain mask on the same grid.
    affine : np.ndarray
        The grid's affine (used only to orient the slices).

    Returns
    -------
    bytes
        The PNG file.
    """
    from PIL import Image

    lab = _to_ras(np.asarray(labels), affine).astype(np.int64)
    msk = _to_ras(np.asarray(mask, dtype=bool), affine)
    where = np.argwhere(msk)
    centre = (where.mean(axis=0).round().astype(int) if where.size
              else np.array(msk.shape) // 2)
    colours = _palette(int(lab.max(initial=0)))
    i, j, k = centre
    # rows run top = superior (or anterior for axial): transpose then flip vertically
    slices = [(lab[i, :, :], msk[i, :, :]),   # sagittal: y across, z up
              (lab[:, j, :], msk[:, j, :]),   # coronal: x across (left on the left), z up
              (lab[:, :, k], msk[:, :, k])]   # axial: x across, y up
    panels = [_panel(np.flipud(a.T), np.flipud(m.T), colours) for a, m in slices]
    scale = max(1, int(np.ceil(MIN_PANEL_PX / max(p.shape[0] for p in panels))))
    panels = [np.kron(p, np.ones((scale, scale, 1), dtype=np.uint8)) for p in panels]
    height = max(p.shape[0] for p in panels)
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) - 1)
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for p in panels:
        top = (height - p.shape[0]) // 2
        canvas[top:top + p.shape[0], x:x + p.shape[1]] = p
        x += p.shape[1] + GAP
    image = Image.fromarray(canvas, mode="RGB")
    from PIL import ImageDraw

    draw = ImageDraw.Draw(image)
    x0 = panels[0].shape[1] + GAP
    for left in (x0, x0 + panels[1].shape[1] + GAP):  # coronal and axial: mark the left side
        draw.text((left + 3, 2), "L", fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_placement_figure(path: str | Path, labels: np.ndarray, mask: np.ndarray,
                           affine: np.ndarray) -> Path:
    """Write :func:`placement_png` to ``path`` atomically."""
    from ..utils import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = placement_png(labels, mask, affine)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path
