"""The multiplicative method (SPEC §1–§3): geometric Brownian motion, multiplicative denoising score
matching (M-DSM) and the sign-agnostic and Dale–Langevin samplers; data shifted into [1, 2].

Everything GBM-specific lives here and is declared once, in ``METHOD``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from gbm.grids import last_network_level, sampling_levels
from gbm.losses import ScoreFn, pixel_sum_batch_mean
from gbm.methods.base import Method, PaperSetting, keyword_default
from gbm.methods import gbm_figures
from gbm.methods.gbm_loss_weights import WEIGHTINGS, check_weighting, paper_weight
from gbm.methods.gbm_priors import DEFAULT_PRIOR, PRIORS, log_data_moments, prior_mismatch
from gbm.samplers import levels, times_like
from gbm.sde import SDE, ScoreKind, per_channel, per_sample
from gbm.seeding import Generator, randn, randn_like


@dataclass(frozen=True)
class GBM(SDE):
    """Geometric Brownian motion ``dX = mu X dt + sigma X dW`` elementwise (SPEC §1).

    ``mu`` defaults to ``sigma^2 / 2`` (no drift in log space). The log-normal prior
    ``x_T = exp(m + s z)`` uses per-channel ``prior_log_mean`` (m) and ``prior_log_std`` (s);
    ``with_prior_from_data`` fits them from training data. Without data the prior is that of ``x_0 = 1``.
    """

    sigma: float = 0.8
    mu: float | None = None
    T: float = 1.0
    prior_log_mean: tuple[float, ...] | float = 0.0
    prior_log_std: tuple[float, ...] | float | None = None
    name: str = field(default="gbm", init=False)
    score_kind: ScoreKind = field(default="hyvarinen", init=False)
    end_time: float = field(default=0.0, init=False)

    def __post_init__(self):
        if not self.sigma > 0:
            raise ValueError(f"sde.sigma must be positive, got {self.sigma}")
        if not self.T > 0:
            raise ValueError(f"sde.T must be positive, got {self.T}")
        if self.mu is None:
            object.__setattr__(self, "mu", self.sigma**2 / 2)
        if self.prior_log_std is None:
            object.__setattr__(self, "prior_log_std", self.sigma * math.sqrt(self.T))

    @property
    def log_drift(self) -> float:
        """Drift of ``log X``: ``mu - sigma^2 / 2``."""
        return self.mu - self.sigma**2 / 2

    def with_prior_from_data(self, x0: torch.Tensor) -> "GBM":
        """A copy whose log-normal prior is fitted to positive training data ``x0`` (N, C, ...).

        ``m = mean log x_0 + (mu - sigma^2/2) T`` and ``s = sqrt(sigma^2 T + Var log x_0)`` per channel:
        the exact first two log-moments of ``x_T`` (SPEC §1).
        """
        check_positive(x0, "data")
        total = torch.zeros(x0.shape[1], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        for chunk in x0.split(4096):  # chunked float64 sums: no full-size double copy of the data
            logs = chunk.double().log().transpose(0, 1).reshape(x0.shape[1], -1)
            total += logs.sum(dim=1).cpu()
            total_sq += logs.pow(2).sum(dim=1).cpu()
        count = x0.numel() // x0.shape[1]
        mean = total / count
        m = mean + self.log_drift * self.T
        s = (self.sigma**2 * self.T + (total_sq / count - mean**2).clamp_min(0)).sqrt()
        return replace(self, prior_log_mean=tuple(m.tolist()), prior_log_std=tuple(s.tolist()))

    def drift_diffusion(self, x, t):
        return self.mu * x, self.sigma * x

    def reverse_drift(self, x, t, score):
        """Ambient reverse drift with Hyvärinen score ``h``: ``mu x - 2 sigma^2 x - sigma^2 x h`` (SPEC §3)."""
        return x * (self.mu - 2 * self.sigma**2 - self.sigma**2 * score)

    def log_reverse_drift(self, t, score):
        """Reverse drift of ``Y = log X``: ``mu - 1.5 sigma^2 - sigma^2 h`` (SPEC §3, Lamperti)."""
        return self.mu - 1.5 * self.sigma**2 - self.sigma**2 * score

    def perturb(self, x0, t, z):
        """``x_t = x_0 exp((mu - sigma^2/2) t + sigma sqrt(t) z)``."""
        t = per_sample(t, x0)
        return x0 * torch.exp(self.log_drift * t + self.sigma * t.sqrt() * z)

    def conditional_score(self, x0, t, z):
        """``x_t * grad log p(x_t | x_0) = -1 - z / (sigma sqrt t)`` (SPEC §2)."""
        t = per_sample(t, z)
        return -1.0 - z / (self.sigma * t.sqrt())

    def score_from_eps(self, eps, x, t):
        """``h = -1 - eps / (sigma sqrt t)``."""
        return -1.0 - eps / (self.sigma * per_sample(t, x).sqrt())

    def eps_from_score(self, score, x, t):
        """Inverse of ``score_from_eps``."""
        return -(score + 1.0) * self.sigma * per_sample(t, x).sqrt()

    def prior_sample(self, shape, noise=None):
        if noise is None:
            noise = torch.randn(shape)
        m = per_channel(self.prior_log_mean, noise)
        s = per_channel(self.prior_log_std, noise)
        return torch.exp(m + s * noise)

    def noise_scale(self, t):
        """Std of the log-noise, ``sigma sqrt(t)`` (the relative noise of ``x_t``; gbm.grids ``rho``)."""
        return self.sigma * torch.as_tensor(t).sqrt()

    def time_of_noise_scale(self, s):
        """``t = (s / sigma)^2``, the inverse of ``noise_scale``."""
        return (torch.as_tensor(s, dtype=torch.float64) / self.sigma) ** 2

    def loss_weight(self, t):
        """Authors' M-DSM weight ``(sigma^2 t)^2`` (SPEC §2; ``loss.weighting`` chooses another)."""
        return paper_weight(self.sigma, t)

    def network_input(self, x):
        """The backbone sees ``log |x|`` (the sign-agnostic sampler can visit negative values)."""
        return x.abs().clamp_min(torch.finfo(x.dtype).tiny).log()

    def add_stein_term(self, score, state, stein):
        """The Hyvärinen score takes a Stein-score term multiplied by ``x``: ``h + x * stein``."""
        return score + state * stein

    def log_tweedie(self, x, t, score):
        """``E[log x_0 | x_t] = log x_t + sigma^2 t (h + 1) - (mu - sigma^2/2) t`` (SPEC §3).

        Defined for finite positive ``x_t`` only (a sign-agnostic state can be negative): others are refused."""
        check_positive(x, "log_tweedie: x_t")
        t = per_sample(t, x)
        return x.log() + self.sigma**2 * t * (score + 1.0) - self.log_drift * t

    def describe(self):
        return super().describe() | {
            "sigma": self.sigma,
            "mu": self.mu,
            "prior_log_mean": self.prior_log_mean,
            "prior_log_std": self.prior_log_std,
        }


def check_positive(x: torch.Tensor, what: str) -> None:
    """Refuse non-positive or non-finite input to a multiplicative (GBM) model, naming it."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{what}: GBM needs finite values; found NaN or infinity")
    if (x <= 0).any():
        raise ValueError(
            f"{what}: GBM needs strictly positive values; min is {x.min().item():.4g} "
            "(shift images into [1, 2] with gbm.data.to_positive)"
        )


# --- samplers (SPEC §3) -------------------------------------------------------------------------


def sign_agnostic_update(sde: GBM, x, h, delta, noise):
    """Euler–Maruyama step of the ambient reverse SDE:
    ``x <- x [(1 + 2 delta sigma^2 - delta mu) + delta sigma^2 h + sqrt(delta) sigma a z]`` (signs can flip)."""
    s2 = sde.sigma**2
    return x * ((1 + 2 * delta * s2 - delta * sde.mu) + delta * s2 * h + math.sqrt(delta) * sde.sigma * noise)


def dale_langevin_update(sde: GBM, x, h, delta, noise):
    """Exponentiated Euler–Maruyama step in log space (sign-preserving):
    ``x <- x exp(delta sigma^2 h - delta (mu - 1.5 sigma^2) + sqrt(delta) sigma a z)``.

    ``h`` is unbounded (with the ``score`` parameterisation it is the network's raw output), so the exponent
    can overflow to infinity; ``gbm.sampling.sample`` checks the state before the next network call and at
    the end, and raises ``SamplerDiverged`` rather than returning it."""
    s2 = sde.sigma**2
    return x * torch.exp(delta * s2 * h - delta * (sde.mu - 1.5 * s2) + math.sqrt(delta) * sde.sigma * noise)


#: The largest fixed step ``delta`` accepted, in units of the smallest level ``T/steps`` the samplers visit.
DELTA_STABILITY_FACTOR = 2.0


def check_sampler_options(sde: GBM, sampler: str, steps: int, options: dict) -> None:
    """Refuse settings of the practical variant (SPEC §3) that cannot be stable, naming the option.

    ``delta``: in ``y = log x`` both updates move ``y`` by ``delta sigma^2 d/dy log p_t(y)`` plus a constant
    and noise (``h + 1 = d/dy log p_t``). In log space the forward process adds ``N(0, sigma^2 t)``, so the
    curvature of ``-log p_t`` is at most ``1 / (sigma^2 t)``, attained exactly in a pixel that is constant in the
    data (MNIST's background). There a deviation is multiplied by ``1 - delta / t`` per update: a contraction
    for every level only if ``delta <= 2 t``. The smallest level is ``T/steps``, hence
    ``delta <= DELTA_STABILITY_FACTOR * T/steps``; above it the last levels amplify the constant pixels.
    ``gamma``: the noise scale ``a gamma^k`` must not grow towards the data (``gamma <= 1``).
    """
    delta, gamma = options.get("delta"), options.get("gamma", 1.0)
    grid = options.get("grid", "uniform-t")
    spacing = last_network_level(sde, steps, grid, options.get("end_time"))  # smallest level an update runs at
    uniform_to_zero = grid in ("uniform-t", "uniform") and not options.get("end_time")
    spacing_name = "level spacing T/steps" if uniform_to_zero else f"smallest level of the {grid} grid"
    if delta is not None:
        if not _is_real(delta) or not delta > 0 or not math.isfinite(delta):
            raise ValueError(f"delta: must be a positive number, got {delta!r}")
        if delta > DELTA_STABILITY_FACTOR * spacing:
            raise ValueError(
                f"delta: {delta:g} is far above the {spacing_name} = {spacing:.4g} ({delta / spacing:.3g} "
                f"times); the {sampler} update is unstable for delta > {DELTA_STABILITY_FACTOR:g} * T/steps = "
                f"{DELTA_STABILITY_FACTOR * spacing:.4g} (it amplifies pixels that are constant in the data by "
                f"|1 - delta/t| at levels t < delta/2). Use delta <= {DELTA_STABILITY_FACTOR * spacing:.4g} or "
                f"steps >= {math.ceil(DELTA_STABILITY_FACTOR * sde.T / delta)}")
    if not _is_real(gamma) or not 0 <= gamma <= 1:
        raise ValueError(f"gamma: the noise annealing factor per level must lie in [0, 1], got {gamma!r}; "
                         f"gamma > 1 grows the noise scale to gamma^(steps-1) times its start by the last level")
    noise_scale = options.get("noise_scale", 1.0)
    if not _is_real(noise_scale) or not 0 <= noise_scale < math.inf:
        raise ValueError(f"noise_scale: must be a finite number >= 0, got {noise_scale!r}")
    inner_steps, final = options.get("inner_steps", 1), options.get("final_denoise_steps", 0)
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
        raise ValueError(f"inner_steps: must be an integer >= 1, got {inner_steps!r}")
    if isinstance(final, bool) or not isinstance(final, int) or final < 0:
        raise ValueError(f"final_denoise_steps: must be an integer >= 0, got {final!r}")


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _gbm_sampler(update, sde: GBM, score_fn, x, steps, generator, delta, inner_steps, gamma, noise_scale,
                 final_denoise_steps, grid, end_time, progress):
    """``steps`` levels ``t_k`` of the named time ``grid`` from ``T``, the last at ``end_time`` (or the grid's
    last positive time when ``end_time`` is 0), then t = 0 (gbm.grids.sampling_levels); at each level
    ``inner_steps`` updates, then ``a <- a * gamma``.

    With the defaults (``delta=None`` -> ``t_k - t_{k+1}``, one inner step, ``gamma=1``) this is the exact
    Euler–Maruyama discretisation of the reverse SDE on the grid, and its final update, from the last level
    ``t`` to 0 without noise, is for Dale–Langevin the exact log-space Tweedie step
    ``log x <- log x + sigma^2 t (h + 1) - (mu - sigma^2/2) t`` (SPEC §3). Options are checked by
    ``check_sampler_options`` (through ``gbm.sampling.sample``).
    """
    times = sampling_levels(sde, steps, grid, end_time).tolist()
    a = noise_scale
    updates = [(times[k], delta or times[k] - times[k + 1], a * gamma**k)
               for k in range(steps) for _ in range(inner_steps)]
    updates += [(times[steps - 1], delta or times[steps - 1] - times[steps], 0.0)] * final_denoise_steps
    for i in levels(len(updates), progress, "sampling"):
        t, d, scale = updates[i]
        h = score_fn(x, times_like(t, x))
        noise = 0.0 if i == len(updates) - 1 or scale == 0 else scale * randn_like(x, generator)
        x = update(sde, x, h, d, noise)
    return x


def sign_agnostic(sde, score_fn, x, *, steps, generator=None, delta=None, inner_steps=1, gamma=1.0,
                  noise_scale=1.0, final_denoise_steps=0, grid="uniform-t", end_time=None,
                  progress=False):
    """Sign-agnostic multiplicative sampler (ambient Euler–Maruyama, SPEC §3)."""
    x = _gbm_sampler(sign_agnostic_update, sde, score_fn, x, steps, generator, delta, inner_steps, gamma,
                     noise_scale, final_denoise_steps, grid, end_time, progress)
    return x, {"fraction_negative": (x < 0).float().mean().item()}


def dale_langevin(sde, score_fn, x, *, steps, generator=None, delta=None, inner_steps=1, gamma=1.0,
                  noise_scale=1.0, final_denoise_steps=0, grid="uniform-t", end_time=None,
                  progress=False):
    """Sign-preserving Dale–Langevin sampler (exponentiated-gradient update, SPEC §3)."""
    x = _gbm_sampler(dale_langevin_update, sde, score_fn, x, steps, generator, delta, inner_steps, gamma,
                     noise_scale, final_denoise_steps, grid, end_time, progress)
    return x, {"fraction_negative": (x <= 0).float().mean().item()}


# --- losses (SPEC §2) ---------------------------------------------------------------------------


class MDSMLoss:
    """Multiplicative denoising score matching (SPEC §2).

    ``E_t lambda(t) E ||h_theta(x_t, t) - x_t * grad log p(x_t | x_0)||^2`` with ``lambda`` the named
    ``weighting`` (``paper``: ``(sigma^2 t)^2``; ``uniform-eps``: ``sigma^2 t``; gbm.methods.gbm_loss_weights),
    ``t = k / num_levels`` for ``k ~ U{1, ..., num_levels - 1}``; the same ``t`` perturbs and weights.
    """

    def __init__(self, sde: GBM, num_levels: int = 1000, weighting: str = "paper"):
        if not isinstance(sde, GBM):
            raise ValueError(f"loss: M-DSM needs the GBM SDE, got {sde.name!r}")
        if num_levels < 2:
            raise ValueError(f"loss.num_levels must be >= 2, got {num_levels}")
        self.sde, self.num_levels, self.weighting = sde, num_levels, check_weighting(weighting)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """``lambda(t)`` of the loss's weighting."""
        return WEIGHTINGS[self.weighting](self.sde.sigma, t)

    def describe(self) -> dict:
        """The loss and its options, for run records."""
        return {"name": type(self).__name__, "num_levels": self.num_levels, "weighting": self.weighting}

    def sample_time(self, n: int, generator: Generator = None) -> torch.Tensor:
        k = torch.randint(1, self.num_levels, (n,), generator=generator if isinstance(generator, torch.Generator) else None)
        return k.float() * (self.sde.T / self.num_levels)

    def __call__(self, score_fn: ScoreFn, x0: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        t = self.sample_time(x0.shape[0], generator).to(x0.device)
        z = randn(x0.shape, generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, z)
        target = self.sde.conditional_score(x0, t, z)
        return pixel_sum_batch_mean(self.weight(t), score_fn(x_t, t) - target)


class MESMLoss(MDSMLoss):
    """Multiplicative explicit score matching: M-DSM with the true marginal Hyvärinen score as target.

    ``true_score(x_t, t)`` is the exact ``x * grad log p_t(x)``. The paper proves
    ``M-DSM = M-ESM + const`` (constant in the model).
    """

    def __init__(self, sde: GBM, true_score: ScoreFn, num_levels: int = 1000, weighting: str = "paper"):
        super().__init__(sde, num_levels, weighting)
        self.true_score = true_score

    def __call__(self, score_fn, x0, generator=None):
        t = self.sample_time(x0.shape[0], generator).to(x0.device)
        x_t = self.sde.perturb(x0, t, randn(x0.shape, generator).to(x0.device))
        return pixel_sum_batch_mean(self.weight(t), score_fn(x_t, t) - self.true_score(x_t, t))


def fit_prior(sde: GBM, x0: torch.Tensor) -> GBM:
    """GBM's data-dependent part: the log-normal prior fitted to the training data (SPEC §1)."""
    return sde.with_prior_from_data(x0)


# --- what the pipeline asks of GBM: its paper setting, its prior mismatch, its figures -----------


def forward_figure(data_npz, times, images: int = 1000):
    """GBM's forward process on a dataset (``Method.forward_figure``): histograms of log x_t at ``times``."""
    return gbm_figures.forward_histograms(GBM(), data_npz, times, images)


def toy_figure(paths: int = 64):
    """GBM's forward process on the positive two-spirals (``Method.toy_figure``): ``paths`` forward paths."""
    return gbm_figures.toy_figure(GBM(), paths)


#: Sampler options of the authors' practical variant (SPEC §3); the paper's setting is the exact sampler.
PRACTICAL_OPTIONS = ("delta", "inner_steps", "gamma")


def _given(value) -> bool:
    """Whether a metrics.csv cell holds a value (an absent option is empty: NaN once read back)."""
    return value is not None and value == value


def setting_of_row(row) -> dict:
    """A metrics.csv row's GBM setting (``PaperSetting.of_row``): the M-DSM weighting and sigma, T of its training
    record, the time grid, end time and prior of its samples' record, and whether a practical option was given."""
    return {"weighting": row["loss.weighting"], "grid": row["grid"], "end_time": float(row["end_time"]),
            "prior": row["prior"], "sigma": float(row["sde.sigma"]), "T": float(row["sde.T"]),
            "practical": any(_given(row.get(f"option.{key}")) for key in PRACTICAL_OPTIONS)}


def _paper_setting() -> PaperSetting:
    """The paper's setting (SPEC §1–§3) is GBM's defaults: the M-DSM weight, the samplers' grid, the SDE's sigma,
    T and end time, the default prior, the exact sampler."""
    sde = GBM()
    values = {"weighting": keyword_default(MDSMLoss, "weighting"), "grid": keyword_default(dale_langevin, "grid"),
              "end_time": sde.end_time, "prior": DEFAULT_PRIOR, "sigma": sde.sigma, "T": sde.T, "practical": False}
    description = (f"M-DSM weight (sigma^2 t)^2, grid uniform in t, {values['prior']} prior, sigma {sde.sigma:g}, "
                   f"T {sde.T:g}, exact sampler")
    return PaperSetting(values=values, of_row=setting_of_row, description=description)


def prior_mismatch_rows(method: Method, sde_params: dict, fit_images, labels, held_images, dataset: str,
                        sigma2_T_grid=()) -> list[dict]:
    """GBM's prior-mismatch rows (``Method.prior_mismatch``): each named prior fitted on ``fit_images`` against p_T
    of ``held_images`` in log space (``gbm_priors.prior_mismatch``), at the configured sigma^2 T and at each of
    ``sigma2_T_grid`` (T kept, sigma varied)."""
    sde = method.make_sde(**sde_params)
    moments = log_data_moments(method.to_data(held_images))
    fitted = {name: stats for name, stats in method.fit_priors(sde, method.to_data(fit_images), labels, dataset).items()
              if "unavailable" not in stats}
    rows = []
    for s2t in [None, *sigma2_T_grid]:
        varied = sde if s2t is None else method.make_sde(**{**sde_params, "sigma": math.sqrt(s2t / sde.T)})
        for name, stats in fitted.items():
            result = prior_mismatch(varied, method.priors[name], stats, moments)
            rows.append({"prior": name, "paper": method.priors[name].paper, "sigma2_T": result["sigma2_T"],
                         "frechet": result["frechet"], "relative_frechet": result["relative_frechet"],
                         "at_config": s2t is None})
    return rows


METHOD = Method(
    name="gbm",
    label="GBM",
    sde=GBM,
    loss=MDSMLoss,
    samplers={"sign-agnostic": sign_agnostic, "dale-langevin": dale_langevin},
    data_space="positive",
    check_data=check_positive,
    check_sampler_options=check_sampler_options,
    fit=fit_prior,
    fitted_params=("prior_log_mean", "prior_log_std"),
    trajectory_figure=True,
    priors=PRIORS,
    default_prior=DEFAULT_PRIOR,
    paper_setting=_paper_setting(),
    prior_mismatch=prior_mismatch_rows,
    forward_figure=forward_figure,
    toy_figure=toy_figure,
    description="geometric Brownian motion, M-DSM, multiplicative samplers (Shetty, Prasath, Seelamantula)",
)
