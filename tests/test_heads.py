"""Linear heads: exact row-space fitting, tensor round trip, leave-site-out evaluation."""

import numpy as np
import pytest

from bidsfm.evaluation import leave_site_out
from bidsfm.models.heads import (
    BINARY,
    CONTINUOUS,
    LinearHead,
    _row_space,
    card_kind,
    fit_binary_head,
    fit_regression_head,
    task_type,
)


def _data(n=90, p=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    w = np.zeros(p)
    w[:5] = 1.0
    y = (x @ w + 0.5 * rng.normal(size=n) > 0).astype(int)
    sites = np.repeat(np.arange(6), n // 6).astype(str)
    return x, y, sites


def test_row_space_is_exact_for_l2_logistic():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = _data()
    coords, basis = _row_space(x)
    assert np.allclose(coords @ basis, x)
    full = LogisticRegression(C=0.05, max_iter=5000, tol=1e-10).fit(x, y)
    red = LogisticRegression(C=0.05, max_iter=5000, tol=1e-10).fit(coords, y)
    assert np.allclose(basis.T @ red.coef_.ravel(), full.coef_.ravel(), atol=1e-5)
    assert np.isclose(red.intercept_[0], full.intercept_[0], atol=1e-5)


def test_binary_head_predicts_and_round_trips():
    x, y, sites = _data()
    head = fit_binary_head("dx", x, y, ["neg", "pos"], sites)
    p = head.predict(x)
    assert p.shape == (len(y),) and np.all((p > 0) & (p < 1))
    assert np.mean((p > 0.5) == y) > 0.8
    again = LinearHead.from_tensors("dx", {k: v for k, v in head.to_tensors().items()},
                                    head.meta())
    assert np.allclose(again.predict(x), p, atol=1e-5)
    assert again.labels == ["neg", "pos"] and again.kind == BINARY


def test_decision_torch_matches_numpy():
    import torch

    x, y, sites = _data()
    head = fit_binary_head("dx", x, y, ["a", "b"], sites)
    t = head.decision_torch(torch.from_numpy(x))
    assert np.allclose(t.numpy(), head.decision(x))


def test_regression_head_and_loso():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 40))
    y = x[:, 0] * 3 + 20 + rng.normal(size=120) * 0.5
    sites = np.repeat(list("abcdef"), 20)
    head = fit_regression_head("age", x, y, sites)
    assert head.kind == CONTINUOUS
    assert np.mean(np.abs(head.predict(x) - y)) < 1.0
    res = leave_site_out(x, y, sites, CONTINUOUS)
    assert res["mae"] < res["mae_predict_mean"] / 2
    assert res["r"] > 0.9 and res["n_sites"] == 6
    assert res["mae_ci95"][0] <= res["mae"] <= res["mae_ci95"][1]


def test_loso_binary_is_not_optimistic_on_noise():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(120, 60))
    y = rng.integers(0, 2, 120)
    sites = np.repeat(list("abcdef"), 20)
    res = leave_site_out(x, y, sites, BINARY, labels=["0", "1"])
    assert 0.3 < res["auc"] < 0.7  # chance, as it should be
    assert set(res["auc_per_site"]) <= set("abcdef")


@pytest.mark.parametrize("kind", [BINARY, CONTINUOUS, "regression"])
def test_loso_signal_detected(kind):
    x, y, sites = _data(n=120, p=50, seed=3)
    target = y if kind == BINARY else x[:, :5].sum(axis=1)
    res = leave_site_out(x, target, sites, kind, labels=["0", "1"])
    if kind == BINARY:
        assert res["auc"] > 0.75
    else:
        assert res["r"] > 0.8


def test_continuous_head_is_written_regression_in_cards():
    """One vocabulary in code (continuous); cards keep the word they always had (regression)."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(30, 6))
    head = fit_regression_head("age", x, x[:, 0] + 10.0)
    assert head.kind == CONTINUOUS and head.meta()["kind"] == "regression"
    again = LinearHead.from_tensors("age", head.to_tensors(), head.meta())
    assert again.kind == CONTINUOUS
    np.testing.assert_allclose(again.predict(x), head.predict(x), atol=1e-4)
    assert task_type("regression") == CONTINUOUS and card_kind(CONTINUOUS) == "regression"
    assert task_type(BINARY) == card_kind(BINARY) == BINARY
    with pytest.raises(ValueError, match="unknown head kind"):
        task_type("ordinal")
    with pytest.raises(ValueError, match="multi-class"):
        leave_site_out(x, np.arange(30) % 3, np.repeat(list("abc"), 10), "multiclass")
