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

Cost: the heads are linear on the embedding, so one forward pass of a chunk of path points
serves every head, each head then needing one backward pass
(:func:`integrated_gradients_heads`); chunks of :data:`DEFAULT_CHUNK` points keep memory
independent of the number of steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

#: Path points per forward pass: memory stays that of ``DEFAULT_CHUNK`` points whatever ``steps``.
DEFAULT_CHUNK = 8

#: Runs whose path points share a forward pass on a GPU (on the CPU one run at a time: batching
#: runs gains nothing there, and keeps the CPU's numbers those of every earlier release). With
#: :data:`DEFAULT_CHUNK` points that is 128 path points per pass, about 1.5 GB of autograd state
#: for the bundled 200-ROI model.
GPU_RUNS_PER_PASS = 16

#: A head for :func:`integrated_gradients_heads`: one linear head for every run, or one per run
#: (e.g. the predicted class of a multi-class head).
HeadSpec = Any


def integrated_gradients(model, fc: np.ndarray, head: str, steps: int = 32,
                         baseline: np.ndarray | None = None,
                         chunk: int = DEFAULT_CHUNK) -> np.ndarray:
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
    chunk : int
        Path points per forward pass.

    Returns
    -------
    np.ndarray
        (B, R) attributions; rows sum (over valid ROIs) to ``head(fc) - head(baseline)`` up to
        the integration error.
    """
    return integrated_gradients_heads(model, fc, {head: model.heads[head]}, steps=steps,
                                      baseline=baseline, chunk=chunk)[head]


def integrated_gradients_heads(model, fc: np.ndarray, heads: Mapping[str, HeadSpec],
                               steps: int = 32, baseline: np.ndarray | None = None,
                               chunk: int = DEFAULT_CHUNK, runs_per_pass: int | None = None
                               ) -> dict[str, np.ndarray]:
    """Integrated gradients of several linear heads from shared forward passes.

    Every head is linear on the embedding ``g(x)``: ``f_h = w_h . g(x) + b_h``, so its input
    gradient is the vector-Jacobian product ``J_g(x)^T w_h``. One forward pass of a chunk of
    path points ``x0 + alpha (x - x0)`` therefore serves all heads, each with one backward pass
    (``w_h`` as the output gradient); the result equals one integrated-gradients run per head
    up to float32 round-off. The path is walked ``chunk`` points at a time, so memory does not
    grow with ``steps``.

    Parameters
    ----------
    model : FoundationModel
        Encoder + heads.
    fc : np.ndarray
        (B, R, R) or (R, R) Pearson FC, NaN rows for missing ROIs.
    heads : mapping
        Output name -> a :class:`~bidsfm.models.heads.LinearHead` (binary or regression; the
        same for every run) or a sequence of B such heads (one per run, e.g. the class head of
        each run's predicted class).
    steps : int
        Riemann steps (midpoint rule).
    baseline : np.ndarray, optional
        (R, R) baseline FC; default the model's reference FC (zeros if it has none).
    chunk : int
        Path points per forward pass (per run).
    runs_per_pass : int, optional
        Runs whose path points go through the encoder together (``runs_per_pass x chunk``
        points per pass). Default: 1 on the CPU, :data:`GPU_RUNS_PER_PASS` on a GPU, where
        batching the runs of a participant, or of a whole job's participants, is what makes
        the GPU pay. The attributions are the same up to float32 round-off.

    Returns
    -------
    dict
        Output name -> (B, R) float64 attributions (NaN for missing ROIs).
    """
    import torch

    from bidsfm.models.brainmass import infer_valid_rois

    x = model._fc_tensor(fc).float()
    valid = infer_valid_rois(x)
    encoder = model.encoder
    if hasattr(encoder, "embed_tangent"):
        # integrated in tangent space, from the baseline's tangent matrix (the zero matrix for
        # the model's own reference, the default) to the run's: no gradient flows through the
        # eigendecompositions of the tangent map (unstable for the repeated eigenvalues of
        # short runs' FC)
        xm = x.masked_fill(~valid[:, :, None] | ~valid[:, None, :], float("nan"))
        ends = encoder.tangent(xm).float()
        if baseline is None:
            base = torch.zeros_like(ends[0])
        else:
            b = torch.as_tensor(np.asarray(baseline, dtype=np.float32), device=ends.device)[None]
            base = encoder.tangent(b).float()[0]
        embed = encoder.embed_tangent
    else:
        ends = torch.nan_to_num(x, nan=0.0)
        if baseline is None:
            baseline = getattr(model, "reference_fc", None)
        base = (torch.zeros_like(ends[0]) if baseline is None
                else torch.nan_to_num(torch.as_tensor(np.asarray(baseline), dtype=ends.dtype,
                                                      device=ends.device), nan=0.0))

        def embed(path, vmask):
            return encoder.embed(path, valid=vmask)

    names = list(heads)
    vectors = head_vectors([heads[n] for n in names], ends.shape[0], ends.device)
    rows = torch.zeros((len(names), *ends.shape[:2]), dtype=ends.dtype, device=ends.device)
    if runs_per_pass is None:
        runs_per_pass = 1 if ends.device.type == "cpu" else GPU_RUNS_PER_PASS
    if runs_per_pass < 1:
        raise ValueError(f"runs_per_pass must be >= 1, got {runs_per_pass}")
    for b0 in range(0, ends.shape[0], runs_per_pass):
        group = slice(b0, b0 + runs_per_pass)
        deltas = ends[group] - base[None]
        vmask = valid[group]
        grads = path_gradient_sums_runs(
            lambda p, k, vm=vmask: embed(p, vm.repeat_interleave(k, dim=0)),
            base, deltas, vectors[:, group], steps, chunk)
        rows[:, group] = (grads / steps * deltas[None]).sum(dim=3)
    missing = ~valid.cpu().numpy()
    out = {}
    for k, name in enumerate(names):
        scores = rows[k].detach().cpu().numpy().astype(np.float64)
        scores[missing] = np.nan
        out[name] = scores
    return out


def head_vectors(heads: Sequence[HeadSpec], n_runs: int, device) -> Any:
    """Output gradients ``d head / d embedding`` of linear heads, per head and run.

    Computed by autograd through the head's own :meth:`decision_torch` (float64, as the heads
    are evaluated), so the vector is the exact float32 gradient that reaches the embedding
    when a head is differentiated directly.

    Parameters
    ----------
    heads : sequence
        Per output: a linear head, or a sequence of ``n_runs`` heads (one per run).
    n_runs : int
        Number of runs B.
    device : str or torch.device
        Where the vectors live.

    Returns
    -------
    torch.Tensor
        (H, B, E) float32.
    """
    import torch

    cache: dict[int, Any] = {}

    def vector(head):
        if id(head) not in cache:
            dim = np.asarray(head.mean).shape[-1]
            e = torch.zeros((1, dim), dtype=torch.float32, device=device, requires_grad=True)
            (g,) = torch.autograd.grad(head.decision_torch(e.double()).sum(), e)
            cache[id(head)] = g[0]
        return cache[id(head)]

    rows = []
    for spec in heads:
        if hasattr(spec, "decision_torch"):
            rows.append(vector(spec)[None].expand(n_runs, -1))
        else:
            if len(spec) != n_runs:
                raise ValueError(f"expected one head per run ({n_runs}), got {len(spec)}")
            rows.append(torch.stack([vector(h) for h in spec]))
    if not rows:
        return torch.zeros((0, n_runs, 0), dtype=torch.float32, device=device)
    return torch.stack(rows)


def path_gradient_sums(embed: Callable[[Any], Any], start, delta, vectors, steps: int,
                       chunk: int = DEFAULT_CHUNK) -> Any:
    """Sum over the midpoint path ``start + alpha delta`` of each head's input gradient.

    Parameters
    ----------
    embed : callable
        (n, ...) path points -> (n, E) embeddings (differentiable).
    start, delta : torch.Tensor
        Start of the path and its direction, the input's shape.
    vectors : torch.Tensor
        (H, E) output gradients of the heads (:func:`head_vectors`).
    steps : int
        Path points, ``alpha = (k + 0.5) / steps``.
    chunk : int
        Path points per forward pass; each pass is followed by one backward pass per head.

    Returns
    -------
    torch.Tensor
        (H, ...) sums over the path points of ``d head / d input`` (divide by ``steps`` and
        multiply by ``delta`` for the attributions).
    """
    return path_gradient_sums_runs(lambda points, _k: embed(points), start, delta[None],
                                   vectors[:, None], steps, chunk)[:, 0]


def path_gradient_sums_runs(embed: Callable[[Any, int], Any], start, deltas, vectors,
                            steps: int, chunk: int = DEFAULT_CHUNK) -> Any:
    """Path gradient sums of several runs at once (their path points in one pass);
    :func:`path_gradient_sums` is the one-run case.

    Parameters
    ----------
    embed : callable
        ``embed(points, k)``: (G * k, ...) path points, run by run (``k`` consecutive points
        per run) -> (G * k, E) embeddings (differentiable).
    start : torch.Tensor
        Start of every run's path, the shape of one input.
    deltas : torch.Tensor
        (G, ...) direction of each run's path.
    vectors : torch.Tensor
        (H, G, E) output gradients of the heads, per run (:func:`head_vectors`).
    steps : int
        Path points per run, ``alpha = (k + 0.5) / steps``.
    chunk : int
        Path points per run and forward pass.

    Returns
    -------
    torch.Tensor
        (H, G, ...) sums over each run's path points of ``d head / d input``.
    """
    import torch

    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n_heads, n_runs = vectors.shape[0], deltas.shape[0]
    item = tuple(deltas.shape[1:])
    alphas = (torch.arange(steps, dtype=torch.float32, device=deltas.device) + 0.5) / steps
    sums = torch.zeros((n_heads, *deltas.shape), dtype=deltas.dtype, device=deltas.device)
    if n_heads == 0:
        return sums
    for s in range(0, steps, chunk):
        a = alphas[s:s + chunk]
        k = len(a)
        path = (start[None, None] + a.view((1, k) + (1,) * len(item)) * deltas[:, None])
        path = path.reshape((n_runs * k,) + item).requires_grad_(True)
        emb = embed(path, k).view(n_runs, k, -1)
        for h in range(n_heads):
            # a scalar whose gradient w.r.t. the embedding is exactly the head's vector; an
            # explicit grad_outputs tensor would make torch import sympy (0.5 s) on first use
            (grad,) = torch.autograd.grad((emb * vectors[h][:, None, :]).sum(), path,
                                          retain_graph=h < n_heads - 1)
            sums[h] += grad.view((n_runs, k) + item).sum(dim=1)
    return sums


def integrated_gradients_timeseries(model, inputs, head: str, steps: int = 32,
                                    chunk: int = DEFAULT_CHUNK) -> np.ndarray:
    """Per-ROI integrated-gradients attribution of ``head`` for a time-series model.

    One head of :func:`integrated_gradients_timeseries_heads`.

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
        Path points per forward pass.

    Returns
    -------
    np.ndarray
        (n_runs, R) float64.
    """
    return integrated_gradients_timeseries_heads(model, inputs, {head: model.heads[head]},
                                                 steps=steps, chunk=chunk)[head]


def integrated_gradients_timeseries_heads(model, inputs, heads: Mapping[str, HeadSpec],
                                          steps: int = 32, chunk: int = DEFAULT_CHUNK
                                          ) -> dict[str, np.ndarray]:
    """Per-ROI integrated-gradients attribution of several heads for a time-series model.

    For each window of a run, integrated gradients (Sundararajan et al. 2017) of each head's
    logit (binary) or value (regression) with respect to the (ROI x time) input, along the
    straight path from the all-zero baseline (every ROI at its run mean after z-scoring) to the
    window; an ROI's score is the sum of its time points' attributions. Because the run's
    embedding is the mean of its windows' embeddings and the head is linear, the run's scores
    are the mean of its windows' scores, and they sum (over valid ROIs) to
    ``head(run) - head(baseline)`` up to the integration error. Missing ROIs get NaN. All heads
    share each forward pass (see :func:`integrated_gradients_heads`).

    Parameters
    ----------
    model : TimeSeriesModel
        Encoder + heads.
    inputs : PreparedRuns
        From :meth:`TimeSeriesModel.prepare` / ``read_inputs``.
    heads : mapping
        Output name -> a linear head, or a sequence of one head per run.
    steps : int
        Riemann steps (midpoint rule).
    chunk : int
        Path points per forward pass.

    Returns
    -------
    dict
        Output name -> (n_runs, R) float64.
    """
    import torch

    encoder = model.encoder
    device = next(encoder.parameters()).device
    names = list(heads)
    vectors = head_vectors([heads[n] for n in names], len(inputs.runs), device)
    out = {n: np.full((len(inputs.runs), inputs.n_rois), np.nan) for n in names}
    for i, (windows, valid) in enumerate(inputs.runs):
        v = torch.from_numpy(np.asarray(valid, dtype=bool)).to(device)
        total = torch.zeros((len(names), windows.shape[1]), dtype=torch.float64, device=device)
        for w in torch.from_numpy(np.asarray(windows, dtype=np.float32)).to(device):
            grads = path_gradient_sums(lambda p, v=v: encoder.embed(p, v[None].expand(len(p), -1)),
                                       torch.zeros_like(w), w, vectors[:, i], steps, chunk)
            total += (grads / steps * w).sum(dim=2).double()
        scores = (total / windows.shape[0]).detach().cpu().numpy()
        scores[:, ~np.asarray(valid, dtype=bool)] = np.nan
        for k, name in enumerate(names):
            out[name][i] = scores[k]
    return out
