"""What a diffusion method declares, in one place: its SDE, loss, samplers, data transform and fitting.

A method is a ``Method`` value registered in ``gbm.methods``; the pipeline, the command line, config
validation and the tables ask the registry, never the method's name. A new method is one module that
builds a ``Method`` and calls ``gbm.methods.register`` (README: "Add a method").
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from gbm import pixels
from gbm.samplers import SamplerFn
from gbm.sde import SDE
from gbm.seeding import randn


def no_check(x: torch.Tensor, what: str) -> None:
    """Data check of methods that accept any finite real data."""


def no_option_check(sde: SDE, sampler: str, steps: int, options: dict) -> None:
    """Sampler option check of methods with no known stability bound on their samplers' options."""


def no_fit(sde: SDE, x0: torch.Tensor) -> SDE:
    """Fitting step of methods with nothing to fit from the training data."""
    return sde


#: Keyword-only sampler parameters that ``gbm.sampling.sample`` sets itself; every other one is an option.
SAMPLER_ARGUMENTS = ("steps", "generator", "progress")


@dataclass(frozen=True)
class PaperSetting:
    """A method's published setting, against which the ablation table (``gbm.reporting.ablation``) names each
    evaluated setting's changes.

    ``values``: each choice's value in the paper, in the order changes are named. ``of_row``: a row of
    ``metrics.csv`` (the settings its records hold: ``gbm.reporting.tables.evaluation_row``) -> the same
    choices' values. ``description``: the paper's setting in words, for the table's caption.
    """

    values: Mapping[str, Any]
    of_row: Callable[[Mapping[str, Any]], dict]
    description: str

    def changes(self, setting: Mapping[str, Any]) -> list[str]:
        """``key=value`` for each choice of ``setting`` that differs from the paper's."""
        return [f"{key}={value}" for key, value in setting.items() if value != self.values[key]]


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
    ``check_sampler_options``: ``(sde, sampler, steps, options)``; refuses, before any work and naming the
    option, sampler settings that cannot be stable where the bound is known.
    ``fit``: returns the SDE with its data-dependent parameters (``fitted_params``) fitted to ``x0``.
    ``trajectory_figure``: the pipeline draws reverse-time trajectories of its samplers (SPEC §10).
    ``priors``: named start distributions fitted at training and stored in ``model.pt`` (the interface of
    ``gbm.methods.gbm_priors.Prior``), chosen by ``gbm sample --prior``; ``default_prior`` is used when none
    is named. Empty: the SDE's own fixed prior (``sde.prior_sample``), and ``--prior`` is an error.

    What the pipeline asks of a method beyond training and sampling (None: the method has none):
    ``paper_setting``: its published setting, the baseline of the ablation table (``PaperSetting``).
    ``prior_mismatch``: ``(method, sde_params, fit_images, labels, held_images, dataset, sigma2_T_grid)`` -> rows
    of the prior-mismatch table (``prior``, ``paper``, ``sigma2_T``, ``frechet``, ``relative_frechet``,
    ``at_config``): how far each of its start distributions is from p_T of held-out uint8 images.
    ``forward_figure``: ``(data_npz, times, images)`` -> a matplotlib figure of its forward process on a dataset.
    ``toy_figure``: ``(paths)`` -> a matplotlib figure of its forward process on a 2-D toy set.
    The options each sampler takes are its keyword-only parameters (``sampler_options``).
    """

    name: str
    label: str
    sde: type[SDE]
    loss: Callable
    samplers: Mapping[str, SamplerFn]
    data_space: str
    score_parameterisation: str = "eps"
    check_data: Callable[[torch.Tensor, str], None] = no_check
    check_sampler_options: Callable[[SDE, str, int, dict], None] = no_option_check
    fit: Callable[[SDE, torch.Tensor], SDE] = no_fit
    fitted_params: tuple[str, ...] = ()
    trajectory_figure: bool = False
    priors: Mapping[str, Any] = field(default_factory=dict)
    default_prior: str | None = None
    paper_setting: PaperSetting | None = None
    prior_mismatch: Callable[..., list[dict]] | None = None
    forward_figure: Callable[..., Any] | None = None
    toy_figure: Callable[..., Any] | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self):
        if self.data_space not in pixels.DATA_SPACE:
            raise ValueError(f"method {self.name!r}: data_space must be one of {sorted(pixels.DATA_SPACE)}")
        if not self.samplers:
            raise ValueError(f"method {self.name!r}: declares no sampler")
        if self.priors and self.default_prior not in self.priors or not self.priors and self.default_prior:
            raise ValueError(f"method {self.name!r}: default_prior must name one of its priors")

    def sampler_options(self, sampler: str) -> dict[str, Any]:
        """The options a sampler of this method takes (``gbm sample --option KEY=VALUE``), with their defaults."""
        parameters = inspect.signature(self.samplers[sampler]).parameters.values()
        return {p.name: p.default for p in parameters
                if p.kind == p.KEYWORD_ONLY and p.name not in SAMPLER_ARGUMENTS}

    def get_prior(self, name: str | None, field: str = "--prior"):
        """The named prior (the default when ``name`` is None); None for a method with one fixed prior.

        An unknown name, or any name for a method without named priors, is an error naming ``field``.
        """
        if not self.priors:
            if name is not None:
                raise ValueError(f"{field}: method {self.name!r} has one fixed prior (the SDE's own); "
                                 "named priors belong to methods that declare them (GBM)")
            return None
        name = self.default_prior if name is None else name
        if name not in self.priors:
            raise ValueError(f"{field}: unknown prior {name!r} for method {self.name!r}; "
                             f"choose one of {sorted(self.priors)}")
        return self.priors[name]

    def fit_priors(self, sde: SDE, x0: torch.Tensor, labels: torch.Tensor | None, dataset: str | None) -> dict:
        """Statistics of each named prior for ``model.pt``, by name. A prior this data cannot fit (no labels,
        no constants for the dataset) is recorded as ``{"prior": name, "unavailable": reason}``."""
        fitted = {}
        for name, prior in self.priors.items():
            try:
                fitted[name] = prior.fit(sde, x0, labels, **({"dataset": dataset} if prior.needs_dataset else {}))
            except ValueError as error:
                fitted[name] = {"prior": name, "unavailable": str(error)}
        return fitted

    def check_start(self, record: dict, name: str | None, options: dict):
        """The prior and its stored statistics for ``gbm sample --prior NAME --prior-option ...``, checked
        before any sampling (``(None, None)`` for a method with one fixed prior)."""
        prior = self.get_prior(name)
        if prior is None:
            if options:
                raise ValueError(f"--prior-option: method {self.name!r} has one fixed prior without options")
            return None, None
        stats = prior_stats(self, prior, record)
        prior.check_options(stats, options)
        return prior, stats

    def start(self, sde: SDE, record: dict, name: str | None, options: dict, shape, generator, device):
        """``x_T`` of ``shape`` from the named prior with the statistics stored in the ``model.pt`` ``record``
        (the SDE's own prior for a method without named priors); image i from ``generator``'s stream i."""
        prior, stats = self.check_start(record, name, options)
        if prior is None:
            return sde.prior_sample(tuple(shape), noise=randn(shape, generator).to(device))
        return prior.sample(sde, stats, tuple(shape), generator, device, **options)

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


def prior_stats(method: Method, prior, record: dict) -> dict:
    """The stored statistics of ``prior`` in a ``model.pt`` record; missing ones are an error naming ``--prior``
    and the command that adds them. A prior whose statistics the SDE record itself holds (GBM's ``iid``) needs
    none stored, so models trained before named priors still sample with it."""
    stats = record.get("priors", {}).get(prior.name)
    if stats is None:
        stats = prior.stats_from_record(record)
    if stats is None:
        raise ValueError(f"--prior {prior.name}: this model.pt has no statistics for prior {prior.name!r} "
                         f"(trained before named priors existed); add them without retraining: "
                         f"gbm fit-prior RUN_DIR")
    if "unavailable" in stats:
        raise ValueError(f"--prior {prior.name}: not available for this model: {stats['unavailable']}")
    return stats


def keyword_options(fn: Callable) -> set[str]:
    """Names of the options ``fn`` takes by keyword (a sampler's keyword-only options, a class's init)."""
    parameters = inspect.signature(fn).parameters.values()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in parameters if p.kind in kinds and p.default is not inspect.Parameter.empty}


def keyword_default(fn: Callable, name: str) -> Any:
    """The default value of ``fn``'s keyword parameter ``name`` (a loss option's, a sampler option's)."""
    return inspect.signature(fn).parameters[name].default
