"""Tests for bidsfm.denoising.signals, judged against nilearn.signal.clean and NiftiLabelsMasker."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bidsfm.denoising import clean_signals, dvars
from bidsfm.errors import ConfigError, InputDataError

N_VOL = 90
T_R = 2.0
# dummies at the start plus a censored block in the middle: for these volumes nilearn 0.14's
# own interpolation is right (see test_censoring_with_filter_fills_every_censored_volume)
SAMPLE_MASK = np.setdiff1d(np.arange(N_VOL), [0, 1, 2, 30, 31, 32, 33, 62])
BANDS = [(None, None), (0.01, None), (None, 0.1), (0.01, 0.1)]


def _assert_close(ours: np.ndarray, ref: np.ndarray) -> None:
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def _synthetic(seed: int = 0, n_roi: int = 6):
    rng = np.random.default_rng(seed)
    t = np.arange(N_VOL)
    conf = pd.DataFrame({
        "trans_x": rng.standard_normal(N_VOL).cumsum() * 0.1,
        "rot_y": rng.standard_normal(N_VOL) * 0.01,
        "csf": np.sin(t / 7.0) + 0.1 * rng.standard_normal(N_VOL),
        "cosine00": np.cos(np.pi * (t + 0.5) / N_VOL),
    })
    mix = rng.standard_normal((conf.shape[1], n_roi))
    signals = (100 + 0.02 * t[:, None] + conf.to_numpy() @ mix
               + rng.standard_normal((N_VOL, n_roi)))
    return signals, conf


def _nilearn_clean(signals, conf, sample_mask, low_pass, high_pass):
    from nilearn.signal import clean

    return clean(signals.copy(), detrend=True, standardize="zscore_sample",
                 confounds=None if conf is None else conf.copy(),
                 sample_mask=None if sample_mask is None else sample_mask.copy(),
                 standardize_confounds=True, t_r=T_R, low_pass=low_pass, high_pass=high_pass)


@pytest.mark.parametrize("low_pass, high_pass", [(lp, hp) for hp, lp in BANDS])
@pytest.mark.parametrize("censor", [False, True])
@pytest.mark.parametrize("with_confounds", [False, True])
def test_equals_nilearn_signal_clean(low_pass, high_pass, censor, with_confounds):
    signals, conf = _synthetic()
    sm = SAMPLE_MASK if censor else None
    ours = clean_signals(signals, t_r=T_R, confounds=conf if with_confounds else None,
                         sample_mask=sm, low_pass=low_pass, high_pass=high_pass)
    ref = _nilearn_clean(signals, conf if with_confounds else None, sm, low_pass, high_pass)
    _assert_close(ours, ref)
    assert ours.dtype == np.float64
    assert ours.shape == ((SAMPLE_MASK.size if censor else N_VOL), signals.shape[1])


def _labels_image(seed: int = 1, dtype: type = np.float64):
    """A 6x5x4 label image (4 labels), a 4D BOLD image of ``dtype`` and its region means."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((6, 5, 4), dtype=np.int16)
    labels[:3, :, :2] = 1
    labels[3:, :, :2] = 2
    labels[:3, :, 2:] = 3
    labels[3:, :3, 2:] = 4
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    signals, conf = _synthetic(seed, n_roi=4)
    data = np.zeros((*labels.shape, N_VOL))
    for k in range(1, 5):
        vox = labels == k
        noise = rng.standard_normal((int(vox.sum()), N_VOL))
        data[vox] = signals[:, k - 1][None, :] + noise
    data[labels == 0] = rng.standard_normal(((labels == 0).sum(), N_VOL))
    data = data.astype(dtype)
    bold = nib.Nifti1Image(data, affine)
    bold.header.set_xyzt_units("mm", "sec")
    region = np.stack([data[labels == k].astype(np.float64).mean(axis=0)
                       for k in range(1, 5)], axis=1)
    return nib.Nifti1Image(labels, affine), bold, region, conf


@pytest.mark.parametrize("low_pass, high_pass", [(None, None), (0.1, 0.01), (0.08, None)])
@pytest.mark.parametrize("censor", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_equals_nifti_labels_masker(low_pass, high_pass, censor, dtype):
    from nilearn.maskers import NiftiLabelsMasker

    labels_img, bold, region, conf = _labels_image(dtype=dtype)
    sm = SAMPLE_MASK if censor else None
    masker = NiftiLabelsMasker(labels_img, standardize="zscore_sample", detrend=True, t_r=T_R,
                               low_pass=low_pass, high_pass=high_pass)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = masker.fit_transform(bold, confounds=conf,
                                   sample_mask=None if sm is None else sm.copy())
    ours = clean_signals(region, t_r=T_R, confounds=conf, sample_mask=sm, low_pass=low_pass,
                         high_pass=high_pass)
    _assert_close(ours, ref)


def test_nan_columns_preserved_and_isolated():
    signals, conf = _synthetic(n_roi=6)
    with_nan = signals.copy()
    with_nan[:, [1, 4]] = np.nan
    kw = dict(t_r=T_R, confounds=conf, sample_mask=SAMPLE_MASK, low_pass=0.1, high_pass=0.01)
    ours = clean_signals(with_nan, **kw)
    assert np.isnan(ours[:, [1, 4]]).all()
    keep = [0, 2, 3, 5]
    assert np.isfinite(ours[:, keep]).all()
    np.testing.assert_array_equal(ours[:, keep], clean_signals(signals[:, keep], **kw))
    all_nan = clean_signals(np.full((N_VOL, 3), np.nan), **kw)
    assert all_nan.shape == (SAMPLE_MASK.size, 3) and np.isnan(all_nan).all()
    partial = signals.copy()
    partial[5, 2] = np.nan
    with pytest.raises(InputDataError, match="non-finite"):
        clean_signals(partial, **kw)


def test_censoring_with_filter_fills_every_censored_volume():
    """Censored volumes never leak into the band-pass, wherever they lie.

    The reference interpolates every censored volume with the same cubic spline, then lets
    nilearn filter, censor, regress and z-score. nilearn 0.14 alone would only fill censored
    volume j when volume n-1-j is retained (here 20 and 69 are both censored).
    """
    from nilearn.signal import clean
    from scipy.interpolate import CubicSpline

    signals, conf = _synthetic(seed=3)
    signals[20] += 500.0  # a spike in a censored volume
    signals[69] += 500.0
    removed = [0, 1, 20, 21, 69, 87, 88, 89]
    sm = np.setdiff1d(np.arange(N_VOL), removed)
    ours = clean_signals(signals, t_r=T_R, confounds=conf, sample_mask=sm, low_pass=0.1,
                         high_pass=0.01)
    first, last = sm[0], sm[-1]
    span = slice(first, last + 1)
    local = sm - first
    times = np.arange(last - first + 1) * T_R
    cens = np.setdiff1d(np.arange(last - first + 1), local)
    y = signals[span].copy()
    c = conf.to_numpy()[span].copy()
    y[cens] = CubicSpline(times[local], y[local])(times[cens])
    c[cens] = CubicSpline(times[local], c[local])(times[cens])
    ref = clean(y, detrend=True, standardize="zscore_sample", confounds=c, sample_mask=local,
                standardize_confounds=True, t_r=T_R, low_pass=0.1, high_pass=0.01)
    _assert_close(ours, ref)
    assert np.abs(ours).max() < 10  # no 500-unit spike smeared by the filter


def test_parameter_errors():
    signals, conf = _synthetic()
    with pytest.raises(ConfigError, match="Nyquist") as err:
        clean_signals(signals, t_r=2.0, low_pass=0.25)
    assert "TR 2 s" in str(err.value) and "0.25" in str(err.value)
    with pytest.raises(ConfigError, match="Nyquist"):
        clean_signals(signals, t_r=2.5, high_pass=0.3)
    with pytest.raises(ConfigError, match="lower than low_pass"):
        clean_signals(signals, t_r=2.0, low_pass=0.05, high_pass=0.08)
    with pytest.raises(ConfigError):
        clean_signals(signals, t_r=2.0, high_pass=-0.01)
    with pytest.raises(ConfigError, match="standardize"):
        clean_signals(signals, t_r=2.0, standardize="zscore")
    with pytest.raises(InputDataError, match="repetition time"):
        clean_signals(signals, t_r=0)
    with pytest.raises(InputDataError, match="confounds"):
        clean_signals(signals, t_r=2.0, confounds=conf.iloc[:-1])
    with pytest.raises(InputDataError, match="sample mask"):
        clean_signals(signals, t_r=2.0, sample_mask=np.array([5, 3, 200]))
    with pytest.raises(InputDataError, match="censored"):
        clean_signals(signals, t_r=2.0, sample_mask=np.array([], dtype=int))
    with pytest.raises(InputDataError, match="too few"):
        clean_signals(signals[:12], t_r=2.0, low_pass=0.1, high_pass=0.01)


def test_boolean_mask_and_standardize_options():
    signals, conf = _synthetic()
    flags = np.zeros(N_VOL, dtype=bool)
    flags[SAMPLE_MASK] = True
    a = clean_signals(signals, t_r=T_R, confounds=conf, sample_mask=flags)
    b = clean_signals(signals, t_r=T_R, confounds=conf, sample_mask=SAMPLE_MASK)
    np.testing.assert_array_equal(a, b)
    raw = clean_signals(signals, t_r=T_R, standardize=False, detrend=False)
    np.testing.assert_allclose(raw, signals)
    z = clean_signals(signals, t_r=T_R, standardize=True)
    np.testing.assert_allclose(z.std(axis=0, ddof=1), 1.0)


def test_dvars_known_values():
    x = np.array([[0.0, 0.0, np.nan],
                  [3.0, 4.0, np.nan],
                  [3.0, 4.0, np.nan],
                  [0.0, 0.0, np.nan]])
    expected = [np.nan, np.sqrt(12.5), 0.0, np.sqrt(12.5)]
    np.testing.assert_allclose(dvars(x), expected)
    y = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(dvars(y), [np.nan, 1.0, 2.0])
    assert np.isnan(dvars(np.full((3, 2), np.nan))).all()
    assert dvars(np.zeros((1, 4))).shape == (1,)
