"""The bundled model on a GPU agrees with the CPU (runs only where CUDA is available).

CI has no GPU, so these tests skip there; they are run on a GPU machine with
``python -m pytest --noconftest tests/test_gpu.py`` (they need torch, numpy and safetensors
only). The measured agreement on real ABIDE runs is in docs/performance.md
(``benchmarks/gpu_agreement.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _fcs(n_runs: int = 6, n_rois: int = 200, seed: int = 0) -> np.ndarray:
    """Pearson FC of runs drawn from a random network covariance (two missing ROIs in one)."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((n_rois, 12))
    cov = mixing @ mixing.T + np.eye(n_rois) * 4.0
    out = []
    for _ in range(n_runs):
        ts = rng.multivariate_normal(np.zeros(n_rois), cov, size=160)
        out.append(np.corrcoef(ts.T).astype(np.float32))
    out[1][[5, 77], :] = np.nan
    out[1][:, [5, 77]] = np.nan
    return np.stack(out)


@pytest.fixture(scope="module")
def models():
    from bidsfm.models.registry import load_model

    torch.set_num_threads(1)
    return {(d, p): load_model(device=d, precision=p)
            for d, p in (("cpu", "float32"), ("cuda", "float32"), ("cuda", "bf16"))}


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def test_float32_on_the_gpu_equals_the_cpu(models):
    fcs = _fcs()
    cpu, gpu = models[("cpu", "float32")], models[("cuda", "float32")]
    e_cpu, e_gpu = cpu.encode(fcs), gpu.encode(fcs)
    assert np.isfinite(e_gpu).all()
    assert _rel(e_gpu, e_cpu).max() < 1e-4
    for head, p_cpu in cpu.head_outputs(e_cpu).items():
        np.testing.assert_allclose(gpu.head_outputs(e_gpu)[head], p_cpu, rtol=1e-4, atol=1e-5)
    a_cpu = cpu.attributions(fcs[:3], steps=16)
    a_gpu = gpu.attributions(fcs[:3], steps=16)
    for head, ref in a_cpu.items():
        assert np.array_equal(np.isnan(a_gpu[head]), np.isnan(ref))
        scale = np.nanmax(np.abs(ref))
        np.testing.assert_allclose(a_gpu[head], ref, rtol=1e-3, atol=1e-4 * scale)


def test_runs_batched_on_the_gpu_equal_one_at_a_time(models):
    gpu = models[("cuda", "float32")]
    fcs = _fcs(seed=1)
    one = gpu.attributions(fcs, steps=16, runs_per_pass=1)
    many = gpu.attributions(fcs, steps=16)  # the GPU default: several runs per pass
    for head, ref in one.items():
        scale = np.nanmax(np.abs(ref))
        np.testing.assert_allclose(many[head], ref, rtol=1e-4, atol=1e-5 * scale)


def test_bf16_on_the_gpu_is_close_and_finite(models):
    fcs = _fcs(seed=2)
    e32 = models[("cpu", "float32")].encode(fcs)
    e16 = models[("cuda", "bf16")].encode(fcs)
    assert np.isfinite(e16).all()
    rel = _rel(e16, e32)
    assert 0 < rel.max() < 0.05  # bf16 does move the embedding, by about 1 %


def test_auto_device_finds_the_gpu_without_initialising_cuda():
    """The participant level asks before Nipype forks its workers: CUDA must not be
    initialised by the question (a forked worker could not use it)."""
    import subprocess
    import sys
    from pathlib import Path

    from bidsfm.models.device import resolve_device, uses_gpu

    assert uses_gpu("auto") and uses_gpu("cuda") and not uses_gpu("cpu")
    assert resolve_device("auto").type == "cuda"
    code = ("import torch; from bidsfm.models.device import uses_gpu; "
            "print(uses_gpu('auto'), torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[1], check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
