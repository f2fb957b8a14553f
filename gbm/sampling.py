"""The one entry point of sampling, ``sample`` (SPEC §3, §5, §6): any registered method's sampler by name.

A sampler is a function ``(sde, score_fn, x, *, steps, generator, **options) -> (x, stats)`` declared by its
method (``gbm.methods``); ``sample`` validates the request before any work (the method's own option check
included), counts network calls (NFE), checks the state for non-finite values before every network call and
at the end (``SamplerDiverged``), and returns a ``SampleResult``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

from gbm.grids import END_OF_SAMPLING, check_grid, last_network_level, resolve_end_time
from gbm.methods import method_of, registered
from gbm.samplers import SamplerFn, ScoreFn
from gbm.sde import SDE
from gbm.seeding import Generator


@dataclass
class SampleResult:
    """Samples ``x`` at the end time, the number of network calls used, sampler statistics, and which images
    became non-finite (all False unless ``sample`` was told to allow it)."""

    x: torch.Tensor
    nfe: int
    stats: dict = field(default_factory=dict)
    nonfinite: torch.Tensor | None = None


class SamplerDiverged(ValueError):
    """A sampler's state became non-finite (NaN or infinity): its images would be garbage, not samples."""

    def __init__(self, message: str, *, sampler: str, call: int | None, t: float | None, affected: int, batch: int):
        super().__init__(message)
        self.sampler, self.call, self.t, self.affected, self.batch = sampler, call, t, affected, batch


class FiniteWatch:
    """Watches the state a sampler hands to each network call, and its final state, for non-finite values.

    One ``isfinite`` reduction per look. Strict (the default): the first non-finite state raises
    ``SamplerDiverged`` naming the sampler, the network call and time, the share of the batch affected and the
    options. With ``allow``, it only records which images were ever non-finite.
    """

    def __init__(self, sde: SDE, method: str, steps: int, options: dict, batch: int, allow: bool):
        self.sde, self.method, self.steps, self.options, self.allow = sde, method, steps, options, allow
        self.bad: torch.Tensor | None = None
        self.batch = batch

    def look(self, x: torch.Tensor, t: torch.Tensor | None, call: int | None) -> None:
        """Check one state; ``t``/``call`` None for the final state."""
        bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if self.allow:
            self.bad = bad if self.bad is None else self.bad | bad
        elif bool(bad.any()):
            raise self.diverged(int(bad.sum()), t, call)

    def diverged(self, affected: int, t: torch.Tensor | None, call: int | None) -> SamplerDiverged:
        time = None if t is None else float(t.reshape(-1)[0])
        where = "in the final state" if call is None else f"before network call {call} (t = {time:.6g})"
        given = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()) if k != "progress")
        spacing = (self.sde.T - self.sde.end_time) / self.steps
        message = (f"sampler {self.method!r} diverged: the state became non-finite (NaN or infinity) {where}; "
                   f"{affected} of {self.batch} images in the batch ({100 * affected / self.batch:.0f} %) affected. "
                   f"Options: steps={self.steps}{', ' + given if given else ''} (time step "
                   f"(T - end_time)/steps = {spacing:.4g}). No samples were written: lower the step size or "
                   f"use more steps, or pass --allow-nonfinite to keep the run and record the non-finite fraction.")
        return SamplerDiverged(message, sampler=self.method, call=call, t=time, affected=affected, batch=self.batch)


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
    own.check_sampler_options(sde, method, steps, options)
    if options.get("grid") is not None:
        check_grid(options["grid"])
    if "end_time" in options:
        resolve_end_time(sde, options["end_time"])
    return fn


def time_discretisation(sde: SDE, fn: SamplerFn, steps: int, options: dict) -> dict:
    """How a sampler's time runs under ``options``, for ``samples.json``: the named grid (its own default when
    not given; ``adaptive`` for a sampler without a fixed grid, the RK45 ODE), the resolved end time, the time
    of the last network call (a fixed-grid sampler's last level; ``end_time`` for samplers that integrate to it
    and then take the final update) and the time the state ends at (always 0, gbm.grids)."""
    parameters = inspect.signature(fn).parameters
    grid = options.get("grid") or (parameters["grid"].default if "grid" in parameters else None) or "adaptive"
    end = resolve_end_time(sde, options.get("end_time"))
    integrates_to_end = getattr(fn, "final_update_from_end_time", False) or grid == "adaptive"  # ODEs, CLD
    last = end if integrates_to_end else last_network_level(sde, steps, grid, end)
    return {"grid": grid, "end_time": end, "last_network_level": last,
            "state_ends_at": 0.0, "end_of_sampling": END_OF_SAMPLING}


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    x_T: torch.Tensor,
    *,
    method: str,
    steps: int,
    generator: Generator = None,
    allow_nonfinite: bool = False,
    **options,
) -> SampleResult:
    """Run the reverse-time sampler ``method`` for ``steps`` levels from ``x_T`` (given by the caller).

    ``score_fn(x, t)`` takes a batch and a 1-D tensor of times and returns the score ``sde`` declares.
    ``generator``: a ``torch.Generator`` or a ``gbm.seeding.PerSampleGenerator`` (image i from seed i).
    A non-finite state raises ``SamplerDiverged``; with ``allow_nonfinite`` the run goes on and
    ``SampleResult.nonfinite`` marks the images that were non-finite at some point.
    """
    fn = validate_request(sde, method, steps, options)
    method_of(sde).check_data(x_T, "x_T")
    watch = FiniteWatch(sde, method, steps, options, x_T.shape[0], allow_nonfinite)
    calls = 0

    def counted(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        watch.look(x, t, calls)
        return score_fn(x, t)

    with torch.no_grad():
        x, stats = fn(sde, counted, x_T.clone(), steps=steps, generator=generator, **options)
        watch.look(x, None, None)
    nonfinite = watch.bad if watch.bad is not None else torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    return SampleResult(x=x, nfe=calls, stats=stats, nonfinite=nonfinite)
