"""bidsfm.denoising.steps (numpy/scipy cleaner) against nilearn.signal.clean, option by option."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from bidsfm.denoising import steps as bc

N_VOL = 80
T_R = 2.0
# censored: the first two volumes and two blocks. For these volumes nilearn 0.14's own
# interpolation (which fills volume n-1-i for every retained i) fills every censored volume, so
# nilearn is a valid reference for censoring with a filter too.
CENSORED = [0, 1, 20, 21, 50]
SAMPLE_MASK = np.setdiff1d(np.arange(N_VOL), CENSORED)
BANDS = [(None, None), (None, 0.01), (0.1, None), (0.1, 0.01)]  # (low_pass, high_pass)


def _data(seed: int = 0, n_roi: int = 7, n_conf: int = 5):
    rng = np.random.default_rng(seed)
    t = np.arange(N_VOL)
    conf = np.column_stack([rng.standard_normal(N_VOL).cumsum() * 0.2,
                            np.sin(t / 5.0), rng.standard_normal((N_VOL, n_conf - 2))])
    signals = (50 + 0.05 * t[:, None] + conf @ rng.standard_normal((n_conf, n_roi))
               + rng.standard_normal((N_VOL, n_roi)))
    return signals, conf


def _nilearn(signals, **kw):
    from nilearn.signal import clean

    kw = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return clean(signals.copy(), standardize_confounds=True, filter="butterworth",
                     ensure_finite=False, **kw)


def _close(ours, ref, rtol=1e-8):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= rtol * max(np.abs(ref).max(), 1.0)


@pytest.mark.parametrize("low_pass,high_pass", BANDS)
@pytest.mark.parametrize("standardize", ["zscore_sample", "psc", None])
@pytest.mark.parametrize("detrend", [True, False])
@pytest.mark.parametrize("with_conf", [True, False])
@pytest.mark.parametrize("censor", [False, True])
def test_equals_nilearn_clean(low_pass, high_pass, standardize, detrend, with_conf, censor):
    signals, conf = _data()
    kw = dict(t_r=T_R, confounds=conf if with_conf else None,
              sample_mask=SAMPLE_MASK if censor else None, detrend=detrend,
              standardize=standardize, low_pass=low_pass, high_pass=high_pass)
    ours = bc.clean(signals, **kw)
    ref = _nilearn(signals, **kw)
    _close(ours, ref)
    assert ours.dtype == np.float64


def test_inputs_not_modified_and_rank_deficient_confounds():
    signals, conf = _data(seed=1)
    full = np.column_stack([conf, conf[:, 0] * 2.0, conf[:, 1] + conf[:, 2]])  # dependent
    s0, c0 = signals.copy(), full.copy()
    kw = dict(t_r=T_R, low_pass=0.1, high_pass=0.01, sample_mask=SAMPLE_MASK)
    ours = bc.clean(signals, confounds=full, **kw)
    np.testing.assert_array_equal(signals, s0)
    np.testing.assert_array_equal(full, c0)
    # exactly dependent columns add nothing: same as nilearn on the independent ones
    _close(ours, _nilearn(signals, confounds=conf, **kw))
    # residuals are orthogonal to the (censored, filtered) confounds' span
    raw = bc.clean(signals, t_r=T_R, confounds=full, standardize=None)
    assert np.abs(bc.zscore_sample(full).T @ raw).max() < 1e-8 * np.abs(signals).max() * N_VOL


def test_psc_zero_mean_and_constant_columns():
    signals, _ = _data(seed=2, n_roi=4)
    signals[:, 1] = np.tile([1.5, -1.5], N_VOL // 2)  # mean 0: psc meaningless, nilearn gives 0
    signals[:, 2] = 3.0  # constant: z-score divides by 1
    for standardize in ("psc", "zscore_sample"):
        kw = dict(t_r=T_R, detrend=False, standardize=standardize)
        _close(bc.clean(signals, **kw), _nilearn(signals, **kw))
    psc = bc.percent_signal_change(signals)
    assert np.all(psc[:, 1] == 0.0)
    z = bc.zscore_sample(signals)
    assert np.all(z[:, 2] == 0.0)


def test_building_blocks_known_values():
    x = np.column_stack([np.arange(6.0) * 3 + 2, np.ones(6)])
    np.testing.assert_allclose(bc.detrend_linear(x.copy()), 0.0, atol=1e-12)
    z = bc.zscore_sample(np.array([[1.0], [2.0], [3.0]]))
    np.testing.assert_allclose(z[:, 0], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(bc.percent_signal_change(np.array([[90.0], [110.0]]))[:, 0],
                               [-10.0, 10.0])
    sos = bc.butterworth_sos(2.0, 0.1, 0.01)
    assert sos.shape == (5, 6)  # order-5 band-pass: 5 second-order sections
    # scipy's default sosfiltfilt padding for that filter is 3 * (2 * 5 + 1 - 0)
    assert bc.min_samples_for_filter(sos) == 34
    from scipy.signal import sosfiltfilt

    sosfiltfilt(sos, np.zeros(34))
    with pytest.raises(ValueError):
        sosfiltfilt(sos, np.zeros(33))


def test_interpolation_fills_every_censored_volume():
    y = np.sin(np.arange(30.0) / 4.0)[:, None]
    mask = np.setdiff1d(np.arange(30), [0, 5, 6, 17, 29])
    filled, conf, local = bc.interpolate_censored(y, None, mask, T_R)
    assert conf is None
    assert filled.shape == (28, 1)  # volumes 1..28
    np.testing.assert_array_equal(local, mask - 1)
    np.testing.assert_array_equal(filled[local], y[mask])
    assert np.abs(filled - y[1:29]).max() < 0.01  # a smooth signal is filled closely


def test_module_does_not_import_nilearn():
    code = ("import sys, numpy as np; from bidsfm.denoising.steps import clean; "
            "x = np.random.default_rng(0).standard_normal((60, 3)); "
            "clean(x, t_r=2.0, confounds=x[:, :1] ** 2, sample_mask=np.arange(2, 60), "
            "low_pass=0.1, high_pass=0.01, standardize='psc'); "
            "print(any(m.split('.')[0] == 'nilearn' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_orthonormal_basis_matches_pivoted_qr():
    from scipy.linalg import qr

    rng = np.random.default_rng(4)
    a = rng.standard_normal((50, 6))
    a[:, 5] *= 1e-3  # small but independent: kept
    dependent = np.column_stack([a, a[:, 0] - 3 * a[:, 2], np.zeros(50), a[:, 4] * 5])
    q = bc.orthonormal_basis(dependent)
    assert q.shape == (50, 6)  # the dependent and the zero columns dropped
    np.testing.assert_allclose(q.T @ q, np.eye(6), atol=1e-12)
    ref_q, r, _ = qr(a, mode="economic", pivoting=True)  # nilearn's call, independent columns
    np.testing.assert_allclose(q @ q.T, ref_q @ ref_q.T, atol=1e-12)
    assert bc.orthonormal_basis(np.zeros((5, 2))).shape == (5, 0)
    assert bc.orthonormal_basis(np.zeros((5, 0))).shape == (5, 0)
