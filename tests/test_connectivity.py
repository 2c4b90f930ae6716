"""FC matches nilearn's ConnectivityMeasure (empirical covariance) and handles n/a ROIs."""

import numpy as np

from bidsfm.connectivity import fisher_z, pearson_fc


def _ts(seed=0, t=120, r=12):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(r, r))
    return rng.normal(size=(t, r)) @ mix


def test_pearson_matches_nilearn():
    from nilearn.connectome import ConnectivityMeasure
    from sklearn.covariance import EmpiricalCovariance

    ts = _ts()
    ref = ConnectivityMeasure(kind="correlation", cov_estimator=EmpiricalCovariance(),
                              standardize="zscore_sample").fit_transform([ts])[0]
    ours = pearson_fc(ts)
    assert np.max(np.abs(ours - ref)) < 1e-10
    assert np.allclose(ours, np.corrcoef(ts.T))


def test_nan_rois_kept_in_place():
    ts = _ts(1)
    ts[:, 3] = np.nan
    ts[:, 7] = 5.0  # constant
    fc = pearson_fc(ts)
    assert fc.shape == (12, 12)
    assert np.isnan(fc[3]).all() and np.isnan(fc[:, 7]).all()
    keep = [i for i in range(12) if i not in (3, 7)]
    assert np.allclose(fc[np.ix_(keep, keep)], np.corrcoef(ts[:, keep].T))


def test_fisher_z():
    fc = pearson_fc(_ts(2))
    z = fisher_z(fc)
    assert np.isnan(np.diag(z)).all()
    off = ~np.eye(12, dtype=bool)
    assert np.allclose(np.tanh(z[off]), fc[off])
