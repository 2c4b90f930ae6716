"""Functional gradients: diffusion-map maths, recovery of a known axis, signs, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from bidsfm.models.gradients import functional_gradients, group_fc, main


def _line_fc(r: int = 60, scale: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """FC of ROIs placed on a line: connectivity decays with distance (one dominant axis)."""
    rng = np.random.default_rng(seed)
    pos = np.sort(rng.uniform(0, 100, r))
    fc = np.exp(-np.abs(pos[:, None] - pos[None, :]) / scale)
    fc = fc + 0.01 * rng.standard_normal((r, r))
    return (fc + fc.T) / 2, pos


def _markov(fc: np.ndarray, sparsity: float = 0.9, alpha: float = 0.5) -> np.ndarray:
    """Reference construction of the diffusion operator, written independently."""
    a = fc.copy()
    np.fill_diagonal(a, 0)
    r = len(a)
    keep = int(np.ceil((1 - sparsity) * (r - 1)))
    for i in range(r):
        thr = np.sort(a[i])[::-1][keep - 1]
        a[i][a[i] < thr] = 0
    a[a < 0] = 0
    n = a / np.linalg.norm(a, axis=1, keepdims=True)
    k = n @ n.T
    d = k.sum(1)
    lk = k / np.outer(d ** alpha, d ** alpha)
    return lk / lk.sum(1, keepdims=True)


def test_gradients_are_eigenvectors_of_the_diffusion_operator():
    fc, _ = _line_fc()
    g = functional_gradients(fc, n_components=5)
    p = _markov(fc)
    lam = np.sort(np.real(np.linalg.eigvals(p)))[::-1][1:6]
    for k in range(5):
        # P psi = lambda psi, and the multi-scale scaling is lambda / (1 - lambda)
        assert np.allclose(p @ g[:, k], lam[k] * g[:, k], atol=1e-8 * np.abs(g[:, k]).max() + 1e-10)
    psi_norm = np.abs(g).max(axis=0)
    assert np.all(psi_norm > 0)


def test_principal_gradient_recovers_the_axis_and_signs_are_fixed():
    fc, pos = _line_fc()
    g = functional_gradients(fc, n_components=3)
    rho = np.corrcoef(np.argsort(np.argsort(g[:, 0])), np.argsort(np.argsort(pos)))[0, 1]
    assert abs(rho) > 0.98
    for k in range(3):
        assert g[np.argmax(np.abs(g[:, k])), k] > 0
    # deterministic, and invariant to a global rescaling of the FC
    assert np.array_equal(g, functional_gradients(fc, n_components=3))
    assert np.allclose(g, functional_gradients(fc * 0.5, n_components=3), atol=1e-8)


def test_group_fc_fisher_mean_and_missing():
    a = np.array([[1.0, 0.5], [0.5, 1.0]])
    b = np.array([[1.0, np.nan], [np.nan, 1.0]])
    c = np.array([[1.0, -0.2], [-0.2, 1.0]])
    g = group_fc([a, b, c])
    assert g[0, 1] == pytest.approx(np.tanh((np.arctanh(0.5) + np.arctanh(-0.2)) / 2))
    assert g[0, 0] == 1.0


def test_bad_inputs():
    fc, _ = _line_fc(r=10)
    with pytest.raises(ValueError, match="n_components"):
        functional_gradients(fc, n_components=10)
    with pytest.raises(ValueError, match="square"):
        functional_gradients(fc[:, :5])
    bad = fc.copy()
    bad[3] = bad[:, 3] = -0.5
    with pytest.raises(ValueError, match=r"ROI\(s\) \[3\]"):
        functional_gradients(bad, n_components=3)


def test_cli_npy_and_relmat(tmp_path, capsys):
    import pandas as pd

    # 60 ROIs: with 20, keeping each row's top 10 % leaves 2 neighbours per ROI, the graph can
    # split into components, and the repeated eigenvalue 1 makes the gradients arbitrary (the
    # two paths then differed only by TSV rounding, amplified by lambda / (1 - lambda))
    fc, _ = _line_fc(r=60)
    np.save(tmp_path / "g.npy", fc)
    assert main([str(tmp_path / "out.tsv"), "--npy", str(tmp_path / "g.npy"),
                 "--n-components", "4"]) == 0
    table = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert list(table.columns) == ["roi"] + [f"gradient_{k:02d}" for k in range(1, 5)]
    assert np.allclose(table.iloc[:, 1:].to_numpy(), functional_gradients(fc, 4), atol=1e-6)
    names = [f"R{i}" for i in range(60)]
    for i in range(2):
        pd.DataFrame(fc, index=names, columns=names).rename_axis("name").to_csv(
            tmp_path / f"sub-0{i}_atlas-X_stat-pearsoncorrelation_relmat.tsv", sep="\t",
            na_rep="n/a")
    assert main([str(tmp_path / "out2.tsv"), "--relmat-dir", str(tmp_path), "--atlas", "X",
                 "--n-components", "4"]) == 0
    t2 = pd.read_csv(tmp_path / "out2.tsv", sep="\t")
    assert list(t2["roi"]) == names
    assert np.allclose(t2.iloc[:, 1:].to_numpy(), table.iloc[:, 1:].to_numpy(), atol=1e-5)
    capsys.readouterr()
    assert main([str(tmp_path / "x.tsv"), "--npy", str(tmp_path / "missing.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.npy" in err and not (tmp_path / "x.tsv").exists()
