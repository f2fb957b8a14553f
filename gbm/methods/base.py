"""What a diffusion method declares, in one place: its SDE, loss, samplers, data transform and fitting.

A method is a ``Method`` value registered in ``gbm.methods``; the pipeline, the command line, config
validation and the tables ask the registry, never the method's name. A new method is one module that
builds a ``Method`` and calls ``gbm.methods.register`` (README: "Add a method").
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from gbm import pixels
from gbm.samplers import SamplerFn
from gbm.sde import SDE


def no_check(x: torch.Tensor, what: str) -> None:
    """Data check of methods that accept any finite real data."""


def no_fit(sde: SDE, x0: torch.Tensor) -> SDE:
    """Fitting step of methods with nothing to fit from the training data."""
    return sde


@dataclass(frozen=True)
class Method:
    """One diffusion method.

    ``sde``: its forward SDE class (a frozen dataclass; the ``sde:`` config keys are its init fields).
    ``score_parameterisation``: what the network's output is turned into (``"eps"``: a noise prediction,
    mapped by ``sde.score_from_eps``; the declared score is ``sde.score_kind``).
    ``loss``: the training loss class, ``loss(sde, **options)``; its keyword options are the ``loss:`` keys.
    ``samplers``: sampler functions by name (``gbm.samplers`` has the generic ones).
    ``data_space``: ``"positive"`` ([1, 2], GBM) or ``"centered"`` ([-1, 1]) (``gbm.pixels``).
    ``check_data``: refuses data (or a start state) the SDE cannot model, naming ``what``.
    ``fit``: returns the SDE with its data-dependent parameters (``fitted_params``) fitted to ``x0``.
    ``trajectory_figure``: the pipeline draws reverse-time trajectories of its samplers (SPEC §10).
    """

    name: str
    label: str
    sde: type[SDE]
    loss: Callable
    samplers: Mapping[str, SamplerFn]
    data_space: str
    score_parameterisation: str = "eps"
    check_data: Callable[[torch.Tensor, str], None] = no_check
    fit: Callable[[SDE, torch.Tensor], SDE] = no_fit
    fitted_params: tuple[str, ...] = ()
    trajectory_figure: bool = False
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if self.data_space not in pixels.DATA_SPACE:
            raise ValueError(f"method {self.name!r}: data_space must be one of {sorted(pixels.DATA_SPACE)}")
        if not self.samplers:
            raise ValueError(f"method {self.name!r}: declares no sampler")

    def make_sde(self, **params) -> SDE:
        """The method's SDE from its ``sde:`` parameters, naming an unknown one."""
        allowed = {f.name for f in self.sde.__dataclass_fields__.values() if f.init}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ValueError(f"sde: unknown parameter(s) {unknown} for {self.name!r}; allowed: {sorted(allowed)}")
        return self.sde(**params)

    def check_loss_options(self, options: dict) -> None:
        """Refuse ``loss:`` options the method's loss does not take, naming the key."""
        accepted = keyword_options(self.loss) - {"sde"}
        for key in options:
            if key not in accepted:
                raise ValueError(f"loss.{key}: unknown config key for method {self.name!r}; "
                                 f"known keys of loss: {sorted(accepted)}")

    def make_loss(self, sde: SDE, **options):
        """The training loss for ``sde`` with the ``loss:`` options."""
        self.check_loss_options(options)
        return self.loss(sde, **options)

    def to_data(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images -> the method's data space."""
        return pixels.DATA_SPACE[self.data_space][0](images)


def keyword_options(fn: Callable) -> set[str]:
    """Names of the options ``fn`` takes by keyword (a sampler's keyword-only options, a class's init)."""
    parameters = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in parameters if p.kind in kinds and p.default is not inspect.Parameter.empty}
