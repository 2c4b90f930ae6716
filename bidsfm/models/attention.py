"""ROI attention maps: integrated-gradients attribution of a head's output to each ROI.

Why integrated gradients (Sundararajan et al. 2017) rather than attention weights or rollout:
raw attention weights and attention rollout (Abnar & Zuidema 2020) describe where tokens look,
not what drives a particular head's output, and are the same for every head; gradient x input
is head-specific but not faithful for non-linear models (it violates completeness). Integrated
gradients is head-specific and complete: the attributions of all FC entries sum to
``head(x) - head(baseline)``.

The baseline is the model's reference FC (the mean FC of its training participants, stored
with the weights), so an ROI's score says how much the way its connectivity profile (its FC
row, the token the encoder sees) differs from the reference moves the head's logit (binary
heads) or value (regression heads). An all-zero baseline ("no connectivity") would instead
credit ROIs for merely having typical connectivity. Models without a stored reference fall back
to the zero baseline.

Per-ROI score = sum of the attributions of the ROI's row. Positive scores push towards the
positive label (or a larger value). Missing (n/a) ROIs get NaN.
"""

from __future__ import annotations

import numpy as np


def integrated_gradients(model, fc: np.ndarray, head: str, steps: int = 32,
                         baseline: np.ndarray | None = None) -> np.ndarray:
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
        Riemann steps along the straight path from the baseline (midpoint rule).
    baseline : np.ndarray, optional
        (R, R) baseline FC; default the model's reference FC (zeros if it has none).

    Returns
    -------
    np.ndarray
        (B, R) attributions; rows sum (over valid ROIs) to ``head(fc) - head(baseline)`` up to
        the integration error.
    """
    import torch

    lin = model.heads[head]
    x = model._fc_tensor(fc).float()
    from bidsfm.models.brainmass import infer_valid_rois

    valid = infer_valid_rois(x)
    if hasattr(model.encoder, "embed_tangent"):
        return _integrated_gradients_tangent(model, x, valid, lin, steps, baseline)
    x0 = torch.nan_to_num(x, nan=0.0)
    if baseline is None:
        baseline = getattr(model, "reference_fc", None)
    base = (torch.zeros_like(x0[0]) if baseline is None
            else torch.nan_to_num(torch.as_tensor(np.asarray(baseline), dtype=x0.dtype,
                                                  device=x0.device), nan=0.0))
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    total = torch.zeros_like(x0)
    encoder = model.encoder
    for b in range(x0.shape[0]):
        delta = x0[b] - base
        path = (base[None] + alphas[:, None, None] * delta[None]).requires_grad_(True)
        vmask = valid[b][None].expand(steps, -1)
        emb = encoder.embed(path, valid=vmask)
        out = lin.decision_torch(emb.double()).sum()
        (grad,) = torch.autograd.grad(out, path)
        total[b] = grad.mean(dim=0) * delta
    scores = total.sum(dim=2).detach().cpu().numpy().astype(np.float64)
    scores[~valid.cpu().numpy()] = np.nan
    return scores


def _integrated_gradients_tangent(model, x, valid, lin, steps: int, baseline) -> np.ndarray:
    """Integrated gradients of a tangent-space encoder, integrated in tangent space.

    The path runs from the baseline's tangent matrix (the zero matrix for the model's own
    reference, the default) to the run's tangent FC, so no gradient flows through the
    eigendecompositions of the tangent map (unstable for the repeated eigenvalues of short
    runs' FC). An ROI's score is the sum of its row's attributions; the scores sum to
    ``head(run) - head(baseline)``.
    """
    import torch

    encoder = model.encoder
    xm = x.masked_fill(~valid[:, :, None] | ~valid[:, None, :], float("nan"))
    t = encoder.tangent(xm).float()
    if baseline is None:
        base = torch.zeros_like(t[0])
    else:
        b = torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=t.device)[None]
        base = encoder.tangent(b).float()[0]
    alphas = (torch.arange(steps, dtype=torch.float32, device=t.device) + 0.5) / steps
    total = torch.zeros_like(t)
    for b in range(t.shape[0]):
        delta = t[b] - base
        path = (base[None] + alphas[:, None, None] * delta[None]).requires_grad_(True)
        emb = encoder.embed_tangent(path, valid[b][None].expand(steps, -1))
        (grad,) = torch.autograd.grad(lin.decision_torch(emb.double()).sum(), path)
        total[b] = grad.mean(dim=0) * delta
    scores = total.sum(dim=2).detach().cpu().numpy().astype(np.float64)
    scores[~valid.cpu().numpy()] = np.nan
    return scores


def integrated_gradients_timeseries(model, inputs, head: str, steps: int = 32,
                                    chunk: int = 16) -> np.ndarray:
    """Per-ROI integrated-gradients attribution of ``head`` for a time-series model.

    For each window of a run, integrated gradients (Sundararajan et al. 2017) of the head's
    logit (binary) or value (regression) with respect to the (ROI x time) input, along the
    straight path from the all-zero baseline (every ROI at its run mean after z-scoring) to the
    window; an ROI's score is the sum of its time points' attributions. Because the run's
    embedding is the mean of its windows' embeddings and the head is linear, the run's scores
    are the mean of its windows' scores, and they sum (over valid ROIs) to
    ``head(run) - head(baseline)`` up to the integration error. Missing ROIs get NaN.

    Parameters
    ----------
    model : TimeSeriesModel
        Encoder + heads.
    inputs : PreparedRuns
        From :meth:`TimeSeriesModel.prepare` / ``read_inputs``.
    head : str
        Head name.
    steps : int
        Riemann steps (midpoint rule).
    chunk : int
        Path points per forward/backward pass.

    Returns
    -------
    np.ndarray
        (n_runs, R) float64.
    """
    import torch

    lin = model.heads[head]
    encoder = model.encoder
    device = next(encoder.parameters()).device
    alphas = (torch.arange(steps, dtype=torch.float32, device=device) + 0.5) / steps
    out = np.full((len(inputs.runs), inputs.n_rois), np.nan)
    for i, (windows, valid) in enumerate(inputs.runs):
        v = torch.from_numpy(np.asarray(valid, dtype=bool)).to(device)
        total = torch.zeros(windows.shape[1], dtype=torch.float64, device=device)
        for w in torch.from_numpy(np.asarray(windows, dtype=np.float32)).to(device):
            grad_sum = torch.zeros_like(w)
            for s in range(0, steps, chunk):
                a = alphas[s:s + chunk]
                path = (a[:, None, None] * w[None]).requires_grad_(True)
                emb = encoder.embed(path, v[None].expand(len(a), -1))
                (grad,) = torch.autograd.grad(lin.decision_torch(emb.double()).sum(), path)
                grad_sum += grad.sum(dim=0)
            total += (grad_sum / steps * w).sum(dim=1).double()
        scores = (total / windows.shape[0]).detach().cpu().numpy()
        scores[~np.asarray(valid, dtype=bool)] = np.nan
        out[i] = scores
    return out
