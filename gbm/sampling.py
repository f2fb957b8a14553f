"""The one entry point of sampling, ``sample`` (SPEC §3, §5, §6): any registered method's sampler by name.

A sampler is a function ``(sde, score_fn, x, *, steps, generator, **options) -> (x, stats)`` declared by its
method (``gbm.methods``); ``sample`` validates the request before any work, counts network calls (NFE)
and returns a ``SampleResult``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from gbm.methods import method_of, registered
from gbm.samplers import SamplerFn, ScoreFn
from gbm.sde import SDE
from gbm.seeding import Generator


@dataclass
class SampleResult:
    """Samples ``x`` at the end time, the number of network calls used, and sampler statistics."""

    x: torch.Tensor
    nfe: int
    stats: dict = field(default_factory=dict)


def sampler_names() -> list[str]:
    """Every sampler name any registered method declares."""
    return sorted({name for method in registered().values() for name in method.samplers})


def validate_request(sde: SDE, method: str, steps: int, options: dict) -> SamplerFn:
    """Check a sampling request, naming the offending field; returns the sampler function."""
    own = method_of(sde)
    if method not in own.samplers:
        if method not in sampler_names():
            raise ValueError(f"sampler: unknown method {method!r}; choose one of {sampler_names()}")
        raise ValueError(f"sampler: method {method!r} does not apply to the {sde.name!r} SDE; "
                         f"use one of {sorted(own.samplers)}")
    fn = own.samplers[method]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps: must be a positive integer, got {steps!r}")
    accepted = {
        p.name for p in inspect.signature(fn).parameters.values() if p.kind == p.KEYWORD_ONLY
    } - {"steps", "generator"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(f"sampler options: {sorted(unknown)} not understood by {method!r}; known: {sorted(accepted)}")
    return fn


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: torch.Tensor,
    *,
    method: str,
    steps: int,
    generator: Generator = None,
    **options,
) -> SampleResult:
    """Run the reverse-time sampler ``method`` for ``steps`` levels from ``x_T`` (given by the caller).

    ``score_fn(x, t)`` takes a batch and a 1-D tensor of times and returns the score ``sde`` declares.
    ``generator``: a ``torch.Generator`` or a ``gbm.seeding.PerSampleGenerator`` (image i from seed i).
    """
    fn = validate_request(sde, method, steps, options)
    method_of(sde).check_data(x_T, "x_T")
    calls = 0

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        return score_fn(x, t)

    with torch.no_grad():
        x, stats = fn(sde, counted, x_T.clone(), steps=steps, generator=generator, **options)
    return SampleResult(x=x, nfe=calls, stats=stats)
