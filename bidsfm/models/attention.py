"""ROI attention maps: integrated-gradients attribution of a head's output to each ROI.

Why integrated gradients (Sundararajan et al. 2017) rather than attention weights or rollout:
raw attention weights and attention rollout (Abnar & Zuidema 2020) describe where tokens look,
not what drives a particular head's output, and are the same for every head; gradient x input
is head-specific but not faithful for non-linear models (it violates completeness). Integrated
gradients is head-specific and complete: the attributions of all FC entries sum to
``head(x) - head(baseline)``. The baseline is the all-zero FC matrix (no connectivity), so an
ROI's score is how much its connectivity profile (its FC row, the token the encoder sees) moves
the head's logit (binary heads) or value (regression heads) away from "no connectivity".

Per-ROI score = sum of the attributions of the ROI's row. Positive scores push towards the
positive label (or a larger value). Missing (n/a) ROIs get NaN.
"""

from __future__ import annotations

import numpy as np


def integrated_gradients(model, fc: np.ndarray, head: str, steps: int = 32) -> np.ndarray:
    """Per-ROI integrated-gradients attribution of ``head`` for a batch of FC matrices.

    Parameters
    ----------
    model : FoundationModel
        Encoder + heads (:func:`bidsfm.models.registry.load_model`).
    fc : np.ndarray
        (B, R, R) or (R, R) Pearson FC, NaN rows for missing ROIs.
    head : str
        Head name.
    steps : int
        Riemann steps along the straight path from the zero baseline (midpoint rule).

    Returns
    -------
    np.ndarray
        (B, R) attributions; rows sum (over valid ROIs) to ``head(fc) - head(0)`` up to the
        integration error.
    """
    import torch

    lin = model.heads[head]
    x = model._fc_tensor(fc).float()
    valid = ~torch.isnan(x).all(dim=2)
    x0 = torch.nan_to_num(x, nan=0.0)
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x0)
    encoder = model.encoder
    for b in range(x0.shape[0]):
        path = (alphas[:, None, None] * x0[b][None]).requires_grad_(True)
        vmask = valid[b][None].expand(steps, -1)
        emb = encoder.embed(path, valid=vmask)
        out = lin.decision_torch(emb.double()).sum()
        (grad,) = torch.autograd.grad(out, path)
        total[b] = grad.mean(dim=0) * x0[b]
    scores = total.sum(dim=2).detach().cpu().numpy().astype(np.float64)
    scores[~valid.cpu().numpy()] = np.nan
    return scores
