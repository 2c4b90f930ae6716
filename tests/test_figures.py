"""Report figures: the glass brain drawn with plain matplotlib (issue 16).

The attention glass brain is a signed maximum-intensity projection of the statmap on the
outline of the bundled CC200 image, one row per head, with its title in a band of its own
(nilearn's titles covered the coronal view and its L label) and no nilearn import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bidsfm.reports import figures

#: a 4 mm grid over the MNI box, RAS voxel order
AFFINE = np.array([[4.0, 0, 0, -90], [0, 4, 0, -126], [0, 0, 4, -72], [0, 0, 0, 1]])
SHAPE = (46, 55, 46)


def _world_index(x: float, y: float, z: float, affine: np.ndarray = AFFINE) -> tuple:
    ijk = np.linalg.inv(affine) @ np.array([x, y, z, 1.0])
    return tuple(int(round(v)) for v in ijk[:3])


def _statmap(n_heads: int = 3) -> np.ndarray:
    """Blobs: head 0 positive in the left hemisphere, negative behind it on the same line."""
    data = np.zeros(SHAPE + (n_heads,), dtype=np.float32)
    for k in range(n_heads):
        data[_world_index(-40, 10, 20) + (k,)] = 2.0 * (k + 1)  # left, front
        data[_world_index(-40, -60, 20) + (k,)] = -3.0 * (k + 1)  # left, back: same x line
    return data


def _image_axes(fig):
    return [ax for ax in fig.axes if ax.get_images() and ax.get_label() != "<colorbar>"]


def test_glass_brain_panels_and_labels():
    """One row per head: three views, a colour bar, a title band; nothing hides a view."""
    heads = ["diagnosis", "sex", "age"]
    fig = figures.glass_brain_figure(_statmap(), AFFINE, heads, "ROI attribution (m)")
    try:
        views = _image_axes(fig)
        assert len(views) == 9  # 3 heads x (sagittal, coronal, axial)
        assert len(fig.axes) == 12  # + one colour bar per head (own symmetric scale)
        texts = [t for t in fig.texts]
        titles = [t for t in texts if t.get_text().endswith("ROI attribution (m)")]
        assert [t.get_text().split(":")[0] for t in titles] == heads
        assert sum(t.get_text() == "L" for t in texts) == 6  # coronal + axial, per head
        assert sum(t.get_text() == "R" for t in texts) == 6
        assert sum(t.get_text().startswith("coronal") for t in texts) == 3
        # no text box overlaps a view (nilearn's titles covered the coronal view and its L)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [ax.get_window_extent(renderer) for ax in views]
        for t in texts:
            tb = t.get_window_extent(renderer)
            for box in boxes:
                assert not tb.overlaps(box), (t.get_text(), tb, box)
        # colour scales: symmetric, one per head (head k max = 3 (k + 1))
        for k in range(3):
            clim = views[3 * k].get_images()[0].get_clim()
            assert clim == pytest.approx((-3.0 * (k + 1), 3.0 * (k + 1)))
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_glass_brain_signed_projection_and_sides():
    """Signed max-|value| projection; the left hemisphere on the left of coronal/axial views."""
    fig = figures.glass_brain_figure(_statmap(1), AFFINE, ["h"], "t")
    try:
        sag, cor, axi = _image_axes(fig)
        # coronal: the front (+2) and back (-3) blobs are on one y line: -3 wins (larger |v|)
        img = cor.get_images()[0]
        arr = np.ma.getdata(img.get_array())
        shown = arr[~np.ma.getmaskarray(img.get_array())]
        assert sorted(shown.tolist()) == [-3.0]
        # axial: both blobs visible (different y), the negative one behind
        img = axi.get_images()[0]
        shown = np.ma.compressed(img.get_array())
        assert sorted(shown.tolist()) == [-3.0, 2.0]
        # the blob at x = -40 (left) is drawn left of the midline in display coordinates
        fig.canvas.draw()
        for ax in (cor, axi):
            x_disp = ax.transData.transform((-40.0, 20.0 if ax is cor else 10.0))[0]
            mid = ax.transData.transform((0.0, 0.0))[0]
            assert x_disp < mid
        # sagittal: anterior on the left (as nilearn's glass brain), so +y is further left
        assert sag.get_xlim()[0] > sag.get_xlim()[1]
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def test_glass_brain_same_picture_on_a_flipped_grid():
    """A grid stored LPS (x and y flipped) gives the same projections as the RAS grid."""
    data = _statmap(2)
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = SHAPE[0] - 1, SHAPE[1] - 1  # voxel index flip
    lps_affine = AFFINE @ flip
    lps = data[::-1, ::-1]
    a = figures.glass_brain_figure(data, AFFINE, ["a", "b"], "t")
    b = figures.glass_brain_figure(lps, lps_affine, ["a", "b"], "t")
    try:
        for ax_a, ax_b in zip(_image_axes(a), _image_axes(b), strict=True):
            ia, ib = ax_a.get_images()[0], ax_b.get_images()[0]
            np.testing.assert_array_equal(np.ma.filled(ia.get_array(), 0),
                                          np.ma.filled(ib.get_array(), 0))
            assert ia.get_extent() == pytest.approx(ib.get_extent())
    finally:
        import matplotlib.pyplot as plt

        plt.close(a)
        plt.close(b)


def test_brain_outline_is_cached_and_brain_shaped():
    """The outline is computed once per process, from the bundled CC200 image."""
    first = figures.brain_outline()
    assert first is not None and figures.brain_outline() is first
    assert len(first) == 3
    for (_title, _axis, _hor, _ver, _rev), (oh, ov, sil) in zip(figures.GLASS_VIEWS, first,
                                                               strict=True):
        assert sil.shape == (ov.size, oh.size)
        inside = sil >= 0.5
        # a brain is a single blob filling a good part of its bounding box
        assert 0.1 < inside.mean() < 0.9
        width = oh[inside.any(axis=0)]
        assert 100 < width.max() - width.min() < 200  # mm: a human brain


def test_glass_brain_file_written_fast_without_nilearn(tmp_path):
    """A statmap file becomes a PNG in a fresh process that never imports nilearn."""
    path = tmp_path / "statmap.nii.gz"
    nib.save(nib.Nifti1Image(_statmap(3), AFFINE), str(path))
    png = tmp_path / "glass.png"
    code = textwrap.dedent(f"""
        import json, sys, time
        t0 = time.process_time()
        from bidsfm.reports import figures
        data = figures.glass_brain({str(path)!r}, ["diagnosis", "sex", "age"], "attribution")
        open({str(png)!r}, "wb").write(data)
        print(json.dumps({{"cpu": time.process_time() - t0,
                          "heavy": [m for m in ("nilearn", "nilearn.plotting", "torch",
                                                "sklearn") if m in sys.modules]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["heavy"] == []
    # CPU seconds of the whole process after start-up (imports of matplotlib and nibabel
    # included); the nilearn version needed about 3 s per head on the same machine
    assert info["cpu"] < 5.0, info
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert 500 < width < 1000 and 3 * 200 < height < 3 * 320  # three rows


def test_glass_brain_without_outline(monkeypatch):
    """An unreadable outline image only removes the outline, never the figure."""
    figures.brain_outline.cache_clear()
    monkeypatch.setattr(figures, "OUTLINE_SOURCE", Path("/nonexistent/outline.nii.gz"))
    try:
        assert figures.brain_outline() is None
        png = figures.glass_brain_png(_statmap(1), AFFINE, ["h"], "t")
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        figures.brain_outline.cache_clear()


def test_model_stage_figure_without_nilearn(tmp_path):
    """The model stage writes one glass-brain PNG per run from the statmap in memory, and the
    process never imports nilearn (it cost most of the model stage: issue 16)."""
    code = textwrap.dedent(f"""
        import json, sys
        import nibabel as nib
        import numpy as np
        from bidsfm.discovery import BoldRun
        from bidsfm.encode import _write_figure
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_figures import AFFINE, _statmap
        run = BoldRun(entities={{"subject": "01", "task": "rest"}}, space="MNI152NLin6Asym",
                      bold="b.nii.gz", mask="m.nii.gz", confounds="c.tsv",
                      confounds_json=None, repetition_time=2.0)
        img = nib.Nifti1Image(_statmap(3), AFFINE)
        path = _write_figure(img, ["diagnosis", "sex", "age"], run, "m", "CC200",
                             {str(tmp_path)!r})
        print(json.dumps({{"path": str(path),
                          "nilearn": [m for m in sys.modules if m.startswith("nilearn")]}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["nilearn"] == []
    path = Path(info["path"])
    assert path.parent == tmp_path / "sub-01" / "figures"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left


def test_placement_figure_orientation_and_outside_voxels():
    """Parcel borders on the mask, neurological orientation (left on the left) whatever the
    grid's axis order, parcel voxels outside the mask in red; Pillow only."""
    import io
    import subprocess
    import sys

    from PIL import Image

    from bidsfm.reports.placement import OUTSIDE, placement_png

    shape = (20, 24, 18)
    mask = np.zeros(shape, bool)
    mask[3:17, 3:21, 3:15] = True
    labels = np.zeros(shape, np.int16)
    labels[11:16, 8:16, 6:12] = 1  # world x < 0 in the LAS grid below: the left hemisphere
    labels[12:16, 8:16, 1:5] = 2   # left too, partly below the mask: red voxels
    las = np.array([[-2.0, 0, 0, 20], [0, 2, 0, -24], [0, 0, 2, -18], [0, 0, 0, 1]])
    png = placement_png(labels, mask, las)
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    # panels 10 px per voxel (220 px / 24 voxels, rounded up): sagittal 24 x 10 = 240 px wide,
    # a 6 px gap, then the coronal panel, 20 x 10 = 200 px wide
    coronal = rgb[:, 246:446]
    coloured = (np.abs(coronal - coronal.mean(axis=2, keepdims=True)).sum(axis=2) > 60)
    cols = np.nonzero(coloured.any(axis=0))[0]
    assert cols.size and cols.max() < coronal.shape[1] * 0.5  # parcels on the left half
    assert (np.abs(rgb - np.array(OUTSIDE)).sum(axis=2) < 10).any()  # red: outside the mask
    # the same volume in RAS order gives the same picture
    ras = np.array([[2.0, 0, 0, -18], [0, 2, 0, -24], [0, 0, 2, -18], [0, 0, 0, 1]])
    png2 = placement_png(labels[::-1], mask[::-1], ras)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png2))), np.asarray(
        Image.open(io.BytesIO(png))))
    code = ("import numpy as np, sys\nfrom bidsfm.reports.placement import placement_png\n"
            "placement_png(np.ones((4,4,4),int), np.ones((4,4,4),bool), np.eye(4))\n"
            "assert 'matplotlib' not in sys.modules and 'nilearn' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
