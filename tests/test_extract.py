"""Streaming ROI extraction equals nilearn's NiftiLabelsMasker (no cleaning) on the same data."""

import nibabel as nib
import numpy as np
import pytest

from bidsfm.errors import InputDataError
from bidsfm.extract import extract_roi_signals, load_mask, open_bold, project_labels

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [-20, -24, -16]

def _make(tmp_path, dtype=np.float32, ext=".nii.gz", seed=0):
    rng = np.random.default_rng(seed)
    shape = (10, 12, 9)
    labels = rng.integers(0, 7, size=shape).astype(np.int16)
    labels[labels == 5] = 0  # label 5 absent from the grid
    mask = np.zeros(shape, dtype=np.uint8)
    mask[1:9, 1:11, 1:8] = 1
    labels[:, :, 8] = 6  # ROI 6 lies mostly outside the mask
    data = (1000 + 50 * rng.normal(size=shape + (40,))).astype(np.float32)
    img = nib.Nifti1Image(data.astype(dtype), AFFINE)
    if dtype == np.int16:
        img.header.set_slope_inter(0.1, 5.0)
        img = nib.Nifti1Image(np.round((data - 5) / 0.1).astype(np.int16), AFFINE, img.header)
    bold = tmp_path / f"bold{ext}"
    img.to_filename(bold)
    mpath = tmp_path / "mask.nii.gz"
    nib.Nifti1Image(mask, AFFINE).to_filename(mpath)
    lpath = tmp_path / "labels.nii.gz"
    nib.Nifti1Image(labels, AFFINE).to_filename(lpath)
    return bold, mpath, lpath, labels, mask

@pytest.mark.parametrize("dtype,ext", [(np.float32, ".nii.gz"), (np.int16, ".nii.gz"),
                                       (np.float32, ".nii")])
def test_matches_nilearn_masker(tmp_path, dtype, ext):
    from nilearn.maskers import NiftiLabelsMasker

    bold, mpath, lpath, labels, mask = _make(tmp_path, dtype, ext)
    values = np.array([1, 2, 3, 4, 5, 6])
    img = open_bold(bold)
    m = load_mask(mpath, img.affine, img.shape)
    proj = project_labels(labels, values, m)
    (ours,) = extract_roi_signals(bold, m, [proj], img=img)
    assert ours.shape == (40, 6)
    assert np.isnan(ours[:, 4]).all()  # label 5 has no voxel: n/a, not dropped
    masker = NiftiLabelsMasker(lpath, mask_img=mpath, strategy="mean",
                               standardize=None)
    ref = masker.fit_transform(str(bold))
    present = [0, 1, 2, 3, 5]
    assert ref.shape[1] == len(present)
    diff = np.max(np.abs(ours[:, present] - ref))
    assert diff <= 1e-4 * np.max(np.abs(ref))
    cov = proj.coverage
    assert cov[4] == 0
    assert 0 < cov[5] < 0.5  # mostly outside the mask
    assert np.all(cov[:4] > 0.5)

def test_two_atlases_one_pass(tmp_path):
    bold, mpath, _lpath, labels, mask = _make(tmp_path)
    img = open_bold(bold)
    m = load_mask(mpath, img.affine, img.shape)
    p1 = project_labels(labels, np.arange(1, 7), m)
    p2 = project_labels((labels > 0).astype(np.int16), np.array([1]), m)
    a, b = extract_roi_signals(bold, m, [p1, p2], img=img)
    data = np.asanyarray(nib.load(bold).dataobj)
    expected = data[(labels > 0) & (mask > 0)].mean(axis=0)
    assert np.allclose(b[:, 0], expected, rtol=1e-6)
    assert a.shape == (40, 6)

def test_mask_on_other_grid(tmp_path):
    bold, _mpath, _lpath, _labels, _mask = _make(tmp_path)
    other = tmp_path / "other_mask.nii.gz"
    nib.Nifti1Image(np.ones((10, 12, 9), np.uint8), np.diag([3.0, 3, 3, 1])).to_filename(other)
    img = open_bold(bold)
    with pytest.raises(InputDataError, match="not on the BOLD grid") as exc:
        load_mask(other, img.affine, img.shape)
    assert "other_mask.nii.gz" in str(exc.value)

def test_3d_bold_rejected(tmp_path):
    p = tmp_path / "bold3d.nii.gz"
    nib.Nifti1Image(np.ones((4, 4, 4), np.float32), AFFINE).to_filename(p)
    with pytest.raises(InputDataError, match="expected 4D"):
        open_bold(p)

def test_truncated_gzip(tmp_path):
    bold, mpath, _lpath, labels, _mask = _make(tmp_path)
    raw = bold.read_bytes()
    bad = tmp_path / "trunc.nii.gz"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputDataError) as exc:
        img = open_bold(bad)
        m = load_mask(mpath, img.affine, img.shape)
        extract_roi_signals(bad, m, [project_labels(labels, np.arange(1, 7), m)], img=img)
    assert "trunc.nii.gz" in str(exc.value)

def test_nonfinite_voxels(tmp_path):
    bold, mpath, _lpath, labels, _mask = _make(tmp_path)
    img = nib.load(bold)
    data = np.asanyarray(img.dataobj).copy()
    data[5, 5, 4, 3] = np.nan
    p = tmp_path / "nan.nii.gz"
    nib.Nifti1Image(data, img.affine).to_filename(p)
    img = open_bold(p)
    m = load_mask(mpath, img.affine, img.shape)
    with pytest.raises(InputDataError, match="non-finite"):
        extract_roi_signals(p, m, [project_labels(labels, np.arange(1, 7), m)], img=img)


def _write(tmp_path, data, name, dtype, *, slope=None, extension=False):
    img = nib.Nifti1Image(data.astype(dtype), AFFINE)
    if slope is not None:
        img.header.set_slope_inter(*slope)
    if extension:  # a header extension moves the data offset beyond 352
        img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 1000))
    path = tmp_path / name
    img.to_filename(path)
    return path


@pytest.mark.parametrize("name,dtype,slope,extension", [
    ("f64be.nii", ">f8", None, False),
    ("f64.nii.gz", "<f8", None, True),
    ("i16.nii", "<i2", (0.5, -3.0), True),
    ("i16be.nii.gz", ">i2", (2.0, 10.0), False),
    ("u8.nii.gz", "u1", None, False),
])
def test_iter_volumes_equals_nibabel(tmp_path, name, dtype, slope, extension):
    from bidsfm.extract import iter_volumes

    rng = np.random.default_rng(3)
    data = rng.integers(0, 200, size=(5, 6, 4, 7)).astype(np.float64)
    path = _write(tmp_path, data, name, dtype, slope=slope, extension=extension)
    img = open_bold(path)
    if extension:
        assert img.dataobj.offset > 352
    ref = img.get_fdata()
    vols = list(iter_volumes(path, img))
    assert len(vols) == 7
    for t, vol in enumerate(vols):
        assert vol.dtype == np.float64
        np.testing.assert_array_equal(vol, ref[..., t].ravel(order="F"))
    mask = ref[..., 0] > 100
    for t, vol in enumerate(iter_volumes(path, img, mask=mask)):
        np.testing.assert_array_equal(vol, ref[..., t].ravel(order="F")[mask.ravel(order="F")])


@pytest.mark.parametrize("decoder", ["isal-threaded", "isal", "zlib"])
def test_decoders_agree(tmp_path, decoder, monkeypatch):
    import bidsfm.extract as extract
    from bidsfm.extract import DECODER_ENV, gzip_decoder, open_stream

    monkeypatch.delenv(DECODER_ENV, raising=False)
    # python-isal's threaded reader where the process may use a second CPU, else one thread
    monkeypatch.setattr(extract, "usable_cpus", lambda: 2)
    assert gzip_decoder() == "isal-threaded"
    monkeypatch.setattr(extract, "usable_cpus", lambda: 1)
    assert gzip_decoder() == "isal"
    monkeypatch.undo()
    assert extract.usable_cpus() >= 1
    bold, *_ = _make(tmp_path)
    import gzip

    expected = gzip.decompress(bold.read_bytes())
    with open_stream(bold, block_size=4096, decoder=decoder) as stream:
        assert stream.read() == expected
    with open_stream(tmp_path / "mask.nii.gz", decoder=decoder) as stream:
        assert stream.read(4)[:4] == expected[:4]  # sizeof_hdr = 348 in both headers


@pytest.mark.parametrize("decoder", ["isal", "isal-threaded"])
def test_memory_does_not_grow_with_volumes(tmp_path, decoder, monkeypatch):
    """Peak traced allocation of the extraction is the same for 30 and 240 volumes."""
    import tracemalloc

    from bidsfm.extract import DECODER_ENV

    monkeypatch.setenv(DECODER_ENV, decoder)
    rng = np.random.default_rng(5)
    shape = (30, 30, 30)
    labels = rng.integers(0, 20, size=shape).astype(np.int16)
    mask = np.ones(shape, dtype=bool)
    proj = project_labels(labels, np.arange(1, 20), mask)
    peaks = []
    for n_vol in (30, 240):
        path = tmp_path / f"bold{n_vol}.nii.gz"
        data = rng.normal(size=(*shape, n_vol)).astype(np.float32)
        nib.Nifti1Image(data, AFFINE).to_filename(path)
        del data
        img = open_bold(path)
        tracemalloc.start()
        extract_roi_signals(path, mask, [proj], img=img)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    # holding the 210 extra volumes would add 22.7 MB (float32) or 45 MB (float64); the
    # decoder's fixed buffers (a few MB, filled depending on thread timing) are allowed for
    extra = 210 * 30**3 * 4
    assert peaks[1] - peaks[0] < extra / 5, peaks
    assert peaks[1] < 16 * 2**20, peaks


def test_decoder_forced_by_environment(tmp_path, monkeypatch):
    from bidsfm.errors import ConfigError
    from bidsfm.extract import DECODER_ENV, gzip_decoder

    bold, mpath, _lpath, labels, _mask = _make(tmp_path)
    img = open_bold(bold)
    m = load_mask(mpath, img.affine, img.shape)
    proj = project_labels(labels, np.arange(1, 7), m)
    results = []
    for name in ("isal", "zlib", "isal-threaded"):
        monkeypatch.setenv(DECODER_ENV, name)
        assert gzip_decoder() == name
        results.append(extract_roi_signals(bold, m, [proj], img=img)[0])
    for other in results[1:]:
        np.testing.assert_array_equal(other, results[0])
    monkeypatch.setenv(DECODER_ENV, "pigz")
    with pytest.raises(ConfigError, match=DECODER_ENV):
        gzip_decoder()
