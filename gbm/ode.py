"""Adaptive Dormand–Prince RK45 with its own error control per sample: the probability-flow ODE solver
(SPEC §5) without the batch coupling of one shared step size.

The step-size controller is SciPy's ``RK45`` (Hairer, Nørsett, Wanner: ``solve_ivp`` defaults) applied to
each sample alone: the error norm is the RMS over that sample's coordinates, and accepting, rejecting and
resizing steps are decided per sample. Image i's trajectory therefore depends on image i alone (its
arithmetic is row-wise), whatever else is in the batch.
"""

from __future__ import annotations

from typing import Callable

import torch

# Dormand–Prince 5(4) tableau (the 5th-order solution propagates; ERROR gives the embedded error estimate).
NODES = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
STAGES = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
WEIGHTS = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
ERROR = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
SAFETY, MIN_FACTOR, MAX_FACTOR, EXPONENT = 0.9, 0.2, 10.0, -1 / 5

Rhs = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _rms(v: torch.Tensor) -> torch.Tensor:
    """Root mean square over each sample's coordinates (rows of a flattened batch)."""
    return v.pow(2).mean(dim=1).sqrt()


def _initial_step(rhs: Rhs, t0: torch.Tensor, y0: torch.Tensor, f0: torch.Tensor, direction: float,
                  rtol: float, atol: float, length: float) -> torch.Tensor:
    """SciPy's ``select_initial_step`` per sample (one extra right-hand-side call), at most ``length``."""
    scale = atol + y0.abs() * rtol
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = h0.clamp_max(length)
    f1 = rhs(y0 + direction * h0[:, None] * f0, t0 + direction * h0)
    d2 = _rms((f1 - f0) / scale) / h0
    largest = torch.maximum(d1, d2)
    h1 = torch.where(largest <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6), (0.01 / largest.clamp_min(1e-300)) ** 0.2)
    return torch.minimum(100 * h0, h1).clamp_max(length)


def solve_per_sample(rhs: Rhs, y0: torch.Tensor, t0: float, t1: float, rtol: float, atol: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate ``dy/dt = rhs(y, t)`` from ``t0`` to ``t1`` for each row of ``y0`` (N, D) with its own steps.

    ``rhs`` takes a subset of rows and a 1-D tensor of their times. Returns ``y(t1)`` (N, D, float64) and
    each sample's number of right-hand-side evaluations.
    """
    y = y0.to(torch.float64).clone()
    n = y.shape[0]
    direction = 1.0 if t1 > t0 else -1.0
    t = torch.full((n,), float(t0), dtype=torch.float64, device=y.device)
    evaluations = torch.zeros(n, dtype=torch.long)
    f = rhs(y, t)
    h = _initial_step(rhs, t, y, f, direction, rtol, atol, abs(t1 - t0))
    evaluations += 2
    rejected = torch.zeros(n, dtype=torch.bool, device=y.device)
    active = torch.ones(n, dtype=torch.bool, device=y.device)
    while active.any():
        idx = active.nonzero().squeeze(1)
        ya, ta, fa = y[idx], t[idx], f[idx]
        remaining = (t1 - ta).abs()
        step = torch.minimum(h[idx], remaining)
        if (step <= 10 * torch.finfo(torch.float64).eps * ta.abs().clamp_min(1.0)).any():
            raise RuntimeError("probability-flow ODE: step size fell below float64 resolution")
        signed = direction * step[:, None]
        k = [fa]
        for node, row in zip(NODES[1:], STAGES[1:]):
            k.append(rhs(ya + signed * sum(a * kj for a, kj in zip(row, k)), ta + direction * step * node))
        y_new = ya + signed * sum(b * kj for b, kj in zip(WEIGHTS, k))
        last = remaining <= step
        t_new = torch.where(last, torch.full_like(ta, float(t1)), ta + direction * step)
        f_new = rhs(y_new, t_new)
        k.append(f_new)
        evaluations[idx.cpu()] += 6
        scale = atol + torch.maximum(ya.abs(), y_new.abs()) * rtol
        error = _rms(signed * sum(e * kj for e, kj in zip(ERROR, k)) / scale)
        if not torch.isfinite(error).all():
            raise RuntimeError("probability-flow ODE: the state became non-finite (check the score function)")
        accept = error < 1
        grow = torch.where(error == 0, torch.full_like(error, MAX_FACTOR),
                           (SAFETY * error.clamp_min(1e-300) ** EXPONENT).clamp_max(MAX_FACTOR))
        grow = torch.where(rejected[idx], grow.clamp_max(1.0), grow)
        shrink = (SAFETY * error.clamp_min(1e-300) ** EXPONENT).clamp_min(MIN_FACTOR)
        h[idx] = step * torch.where(accept, grow, shrink)
        rejected[idx] = ~accept
        done = idx[accept]
        y[done], t[done], f[done] = y_new[accept], t_new[accept], f_new[accept]
        active[done[last[accept]]] = False
    return y, evaluations
