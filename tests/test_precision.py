"""Inference precision (issue 16): float32 by default on every device, bf16 as an option.

Before, the encoders ran under bfloat16 autocast whenever the device was CUDA, so the same run
gave other embeddings on a GPU node than on a CPU node. The bf16 numbers here use CPU
autocast (the proxy of ``benchmarks/precision_proxy.py``); no GPU is needed.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch

from bidsfm.errors import ConfigError
from bidsfm.models.registry import (
    DEFAULT_MODEL,
    PRECISIONS,
    inference_autocast,
    list_models,
    load_model,
)


def _series(n_runs: int = 3, n_vol: int = 160, n_rois: int = 200, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_runs):
        shared = rng.normal(size=(n_vol, 8)) @ rng.normal(size=(8, n_rois))
        out.append(shared + rng.normal(size=(n_vol, n_rois)))
    return out


def test_float32_is_the_default_everywhere():
    assert PRECISIONS[0] == "float32"
    for device in ("cpu", "cuda", "cuda:1"):
        assert isinstance(inference_autocast(device, "float32"), contextlib.nullcontext)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available" on this machine
        ctx = inference_autocast("cuda:0", "bf16")
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    cpu = inference_autocast("cpu", "bf16")
    assert cpu.device == "cpu" and cpu.fast_dtype == torch.bfloat16


def test_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="fp16"):
        inference_autocast("cpu", "fp16")
    with pytest.raises(ConfigError, match="fp16"):
        load_model(DEFAULT_MODEL, precision="fp16")


@pytest.mark.parametrize("name", ["bidsfmfc", "bidsfmts"])
def test_bf16_moves_embeddings_a_little(name, one_torch_thread):
    """float32 by default; bf16 gives finite embeddings a few percent away (the time-series
    model gave NaN in bf16: its readout's clip 0.999 rounds to 1.0 in bfloat16)."""
    if name not in list_models():
        pytest.skip(f"{name} not bundled")
    series = _series()
    trs = [2.0] * len(series)
    m32 = load_model(name)
    assert m32.precision == "float32"
    e32 = m32.embed(series, trs)
    m16 = load_model(name, precision="bf16")
    e16 = m16.embed(series, trs)
    assert np.isfinite(e16).all()
    rel = np.linalg.norm(e16 - e32, axis=1) / np.linalg.norm(e32, axis=1)
    assert (rel > 1e-4).all() and (rel < 0.1).all(), rel
    # float32 twice: the same numbers
    np.testing.assert_array_equal(load_model(name).embed(series, trs), e32)
