"""Beta diffusion (Zhou, Chen, Wang, Zheng, "Beta Diffusion", NeurIPS 2023, arXiv 2309.07867), implemented from
the paper's equations: multiplicative Beta transitions on data scaled into ``[shift, shift + scale]``, the
KLUB loss (and the -ELBO variant) and the ancestral reverse sampler. Not part of the GBM paper.

Data: images in [-1, 1] (``data_space="centered"``) are mapped to ``x0 = shift + scale (x + 1) / 2`` in
``[shift, shift + scale]`` (paper, CIFAR-10: scale 0.39, shift 0.60, so x0 in [0.60, 0.99]).

- Forward marginal (paper §2.1): ``z_t | x0 ~ Beta(eta alpha_t x0, eta (1 - alpha_t x0))``; the forward chain
  ``z_t = z_s pi``, ``pi ~ Beta(eta alpha_t x0, eta (alpha_s - alpha_t) x0)`` (s < t) has these marginals.
- Schedule (the authors' sigmoid schedule): ``logit alpha_t = sigmoid_start + (sigmoid_end - sigmoid_start) t^power``.
- Reverse step (paper §2.2): ``z_s = z_t + (1 - z_t) p``, ``p ~ Beta(eta (alpha_s - alpha_t) x0, eta (1 - alpha_s x0))``,
  with the network's ``x0_hat`` in place of ``x0``; the last network level returns ``x0_hat``.
- KLUB (paper §3): ``w KL(Beta(eta(alpha_s - alpha_t) x0_hat, eta(1 - alpha_s x0_hat)) || same at x0)``
  ``+ (1 - w) KL(Beta(eta alpha_t x0_hat, eta(1 - alpha_t x0_hat)) || same at x0)``, ``w = 0.99``; the -ELBO
  variant swaps the arguments of both KLs.

The state a sampler carries is ``logit z_t`` (float32 holds it where ``z_t`` itself underflows: near t = 1,
``z_t`` is the tiny Beta(0.02, 1e4) draw ``exp(-60)``); the network sees it and ``t``, and its output ``o``
gives ``x0_hat = shift + scale sigmoid(o)``, returned in data space as ``2 sigmoid(o) - 1``: what this method's
``score_fn`` returns is that prediction, not a score (``score_kind = "x0"``).

Random Beta variates: ``logit Beta(a, b) = log G_a - log G_b`` with ``G ~ Gamma(shape, 1)``, each drawn as
``log G_{a+1} + log(U) / a`` (exact; tiny shapes never underflow). ``torch._standard_gamma`` takes no generator,
so each image draws a seed from its own generator (``gbm.seeding.PerSampleGenerator``) and its Gamma and
uniform variates come from the global stream re-seeded with it inside ``torch.random.fork_rng``: image i
depends on seed i alone, never on its batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import torch

from gbm.grids import sampling_levels
from gbm.losses import uniform_time
from gbm.methods.base import Method
from gbm.samplers import levels, times_like
from gbm.sde import SDE, per_sample
from gbm.seeding import Generator, PerSampleGenerator

_SEED_RANGE = 2**62


def _log_gamma_pair(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``log G_a - log G_b`` from the current global stream (float64, CPU): the logit of a Beta(a, b) draw."""
    ga, gb = torch._standard_gamma(a + 1), torch._standard_gamma(b + 1)
    ua, ub = torch.rand(a.shape, dtype=torch.float64), torch.rand(b.shape, dtype=torch.float64)
    return ga.log() + torch.log1p(-ua) / a - gb.log() - torch.log1p(-ub) / b


def _seeded(seed: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _log_gamma_pair(a, b)


def logit_beta(a: torch.Tensor, b: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """``logit`` of Beta(a, b) draws (shape of ``a``, batch first), exact for any positive ``a``, ``b``.

    A ``PerSampleGenerator`` gives row i from seed i alone; a ``torch.Generator`` seeds the whole batch's draw;
    None uses the global stream. Drawn in float64 on the CPU and returned on ``a``'s device and dtype."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    if isinstance(generator, PerSampleGenerator):
        if len(generator) != a.shape[0]:
            raise ValueError(f"generator: {len(generator)} seeds for a batch of {a.shape[0]}")
        seeds = [int(torch.randint(_SEED_RANGE, (1,), generator=g)) for g in generator.generators]
        out = torch.stack([_seeded(s, a64[i], b64[i]) for i, s in enumerate(seeds)])
    elif isinstance(generator, torch.Generator):
        seed = int(torch.randint(_SEED_RANGE, (1,), generator=generator, device=generator.device))
        out = _seeded(seed, a64, b64)
    else:
        out = _log_gamma_pair(a64, b64)
    return out.to(a.device, a.dtype)


def kl_beta(a1: torch.Tensor, b1: torch.Tensor, a2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """``KL(Beta(a1, b1) || Beta(a2, b2))`` in closed form:
    ``ln B(a2,b2) - ln B(a1,b1) + (a1-a2) psi(a1) + (b1-b2) psi(b1) + (a2-a1+b2-b1) psi(a1+b1)``."""
    log_b = lambda a, b: torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)  # noqa: E731
    return (log_b(a2, b2) - log_b(a1, b1) + (a1 - a2) * torch.digamma(a1) + (b1 - b2) * torch.digamma(b1)
            + (a2 - a1 + b2 - b1) * torch.digamma(a1 + b1))


@dataclass(frozen=True)
class BetaDiffusion(SDE):
    """Beta diffusion's forward process (paper §2.1) with the sigmoid schedule; see the module docstring.

    ``prior_mean``: the scaled data mean ``c`` of the start ``z_T ~ Beta(eta alpha_T c, eta (1 - alpha_T c))``
    (the authors start from the data mean), fitted from the training data; None: the range's midpoint.
    """

    eta: float = 10000.0
    scale: float = 0.39
    shift: float = 0.60
    sigmoid_start: float = 10.0
    sigmoid_end: float = -13.0
    sigmoid_power: float = 1.0
    prior_mean: float | None = None
    T: float = 1.0
    end_time: float = 1e-5
    name: str = field(default="beta", init=False)
    score_kind: str = field(default="x0", init=False)

    def __post_init__(self):
        for key in ("eta", "scale", "shift", "sigmoid_power", "T"):
            if not getattr(self, key) > 0:
                raise ValueError(f"sde.{key}: must be positive (it makes a Beta parameter non-positive "
                                 f"otherwise), got {getattr(self, key)}")
        if self.shift + self.scale > 1:
            raise ValueError(f"sde.scale: shift + scale = {self.shift + self.scale:g} > 1 makes the Beta parameter "
                             "eta (1 - alpha_t x0) non-positive near t = 0; need x0 <= 1")
        if not self.sigmoid_start > self.sigmoid_end:
            raise ValueError(f"sde.sigmoid_end: alpha_t must decrease in t, so sigmoid_end ({self.sigmoid_end}) "
                             f"must be below sigmoid_start ({self.sigmoid_start}); else alpha_s - alpha_t <= 0 "
                             "makes the reverse Beta parameter non-positive")
        if self.prior_mean is not None and not self.shift <= self.prior_mean <= self.shift + self.scale:
            raise ValueError(f"sde.prior_mean: must lie in [shift, shift + scale], got {self.prior_mean}")
        if not 0 <= self.end_time < self.T:
            raise ValueError(f"sde.end_time: must lie in [0, T), got {self.end_time}")

    # --- schedule and data scaling -------------------------------------------------------------------

    def logit_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``logit alpha_t = sigmoid_start + (sigmoid_end - sigmoid_start) t^power`` (float64)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        return self.sigmoid_start + (self.sigmoid_end - self.sigmoid_start) * t.clamp_min(0) ** self.sigmoid_power

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit_alpha(t))

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Data in [-1, 1] -> ``x0 = shift + scale (x + 1) / 2``."""
        return self.shift + self.scale * (x + 1) / 2

    def from_unit(self, x0: torch.Tensor) -> torch.Tensor:
        return 2 * (x0 - self.shift) / self.scale - 1

    def _alpha_like(self, t, like: torch.Tensor) -> torch.Tensor:
        return per_sample(self.alpha(torch.as_tensor(t).cpu()).to(like.device), like.double())

    # --- forward marginal, reverse step, prior -------------------------------------------------------

    def marginal_params(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Beta parameters of ``z_t | x0`` for data ``x`` in [-1, 1] (float64)."""
        alpha_x = self._alpha_like(t, x) * self.to_unit(x.double())
        return self.eta * alpha_x, self.eta * (1 - alpha_x)

    def sample_logit(self, x: torch.Tensor, t, generator: Generator = None) -> torch.Tensor:
        """``logit z_t``, ``z_t ~ q(z_t | x0)`` for data ``x`` in [-1, 1] and times ``t`` (one per sample)."""
        return logit_beta(*self.marginal_params(x, t), generator).to(x.dtype)

    def reverse_step(self, y: torch.Tensor, x0_hat: torch.Tensor, t: float, s: float,
                     generator: Generator = None) -> torch.Tensor:
        """``logit z_s`` from ``y = logit z_t`` (s < t): ``z_s = z_t + (1 - z_t) p``,
        ``p ~ Beta(eta (alpha_s - alpha_t) x0_hat, eta (1 - alpha_s x0_hat))``; in logits
        ``logit z_s = log(e^y + e^r + e^(y + r))`` with ``r = logit p``."""
        alpha_t, alpha_s = self.alpha(torch.tensor(t)).item(), self.alpha(torch.tensor(s)).item()
        x0 = self.to_unit(x0_hat.double())
        r = logit_beta(self.eta * (alpha_s - alpha_t) * x0, self.eta * (1 - alpha_s * x0), generator)
        y64 = y.double()
        return torch.logsumexp(torch.stack([y64, r, y64 + r]), dim=0).to(y.dtype)

    def prior_sample(self, shape, noise=None):
        """``logit z_T``, ``z_T ~ Beta(eta alpha_T c, eta (1 - alpha_T c))`` with ``c = prior_mean``.

        Beta variates do not come from one normal draw each: given ``noise`` (standard normal of ``shape``, row i
        from image i's seed), row i's variates come from a stream seeded by a hash of noise row i, so the start
        stays a function of that image's seed alone. Without ``noise``: the global stream."""
        c = self.shift + self.scale / 2 if self.prior_mean is None else self.prior_mean
        alpha_T = self.alpha(torch.tensor(self.T)).item()
        a = torch.full(tuple(shape), self.eta * alpha_T * c, dtype=torch.float64)
        b = torch.full(tuple(shape), self.eta * (1 - alpha_T * c), dtype=torch.float64)
        if noise is None:
            return _log_gamma_pair(a, b).float()
        rows = [_seeded(_row_seed(row), a[i], b[i]) for i, row in enumerate(noise.detach().cpu())]
        return torch.stack(rows).to(noise.device, noise.dtype)

    # --- the SDE interface -----------------------------------------------------------------------------

    def score_from_eps(self, output, y, t):
        """The network output ``o`` -> ``x0_hat`` in data space, ``2 sigmoid(o) - 1`` (``shift + scale sigmoid(o)``
        once scaled): inside the data range by construction."""
        return 2 * torch.sigmoid(output) - 1

    def network_input(self, y):
        """The network sees ``logit z_t`` (the paper's input, before its per-time standardisation)."""
        return y

    def drift_diffusion(self, x, t):
        raise NotImplementedError("beta diffusion is a chain of Beta transitions, not an SDE with drift and "
                                  "diffusion; use its own sampler ('beta')")

    def perturb(self, x0, t, z):
        raise NotImplementedError("beta diffusion's z_t is a Beta draw, not a function of one normal z; use "
                                  "BetaDiffusion.sample_logit")

    def conditional_score(self, x0, t, z):
        raise NotImplementedError("beta diffusion trains with the KLUB loss, not score matching")

    def noise_scale(self, t):
        """``1 / alpha_t - 1``: increasing in t, the odds that the signal is masked (gbm.grids ``rho``)."""
        return torch.exp(-self.logit_alpha(t))

    def describe(self):
        return super().describe() | {
            "label": "Beta diffusion (Zhou et al. 2023; not part of the GBM paper)",
            "eta": self.eta, "scale": self.scale, "shift": self.shift,
            "data_range": [self.shift, self.shift + self.scale],
            "schedule": "logit alpha_t = sigmoid_start + (sigmoid_end - sigmoid_start) t^sigmoid_power",
            "sigmoid_start": self.sigmoid_start, "sigmoid_end": self.sigmoid_end,
            "sigmoid_power": self.sigmoid_power, "prior_mean": self.prior_mean,
            "state": "logit z_t", "network_output": "x0_hat = shift + scale sigmoid(output)",
        }


def _row_seed(row: torch.Tensor) -> int:
    digest = hashlib.sha256(row.double().contiguous().numpy().tobytes()).digest()
    return int.from_bytes(digest[:8], "little") % _SEED_RANGE


class KLUBLoss:
    """Beta diffusion's KLUB (paper §3): ``t ~ U(eps, T)``, ``s = previous_fraction t`` (the authors' 0.95),
    ``z_t ~ q(z_t | x0)``, and ``conditional_weight KL_cond + (1 - conditional_weight) KL_marginal`` per pixel
    (the KLs of the module docstring, model first), pixel sum then batch mean. ``objective="elbo"``: the same
    KLs with their arguments swapped (the -ELBO). KLs in float64: their Beta parameters reach ``eta``."""

    OBJECTIVES = ("klub", "elbo")

    def __init__(self, sde: BetaDiffusion, objective: str = "klub", conditional_weight: float = 0.99,
                 previous_fraction: float = 0.95, eps: float = 1e-5):
        if not isinstance(sde, BetaDiffusion):
            raise ValueError(f"loss: the KLUB loss needs the beta diffusion SDE, got {sde.name!r}")
        if objective not in self.OBJECTIVES:
            raise ValueError(f"loss.objective: unknown {objective!r}; choose one of {list(self.OBJECTIVES)}")
        if not 0 <= conditional_weight <= 1:
            raise ValueError(f"loss.conditional_weight: must lie in [0, 1], got {conditional_weight}")
        if not 0 < previous_fraction < 1:
            raise ValueError(f"loss.previous_fraction: must lie in (0, 1) so that alpha_s > alpha_t, "
                             f"got {previous_fraction}")
        if not 0 <= eps < sde.T:
            raise ValueError(f"loss.eps: must lie in [0, T), got {eps}")
        self.sde, self.objective, self.conditional_weight = sde, objective, conditional_weight
        self.previous_fraction, self.eps = previous_fraction, eps

    def describe(self) -> dict:
        return {"name": type(self).__name__, "objective": self.objective, "conditional_weight": self.conditional_weight,
                "previous_fraction": self.previous_fraction, "eps": self.eps}

    def divergence(self, x0: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-pixel KLUB (or -ELBO) at times ``t`` for data ``x0`` and predictions ``x0_hat`` (both in [-1, 1])."""
        sde = self.sde
        alpha_t = sde._alpha_like(t, x0)
        alpha_s = sde._alpha_like(self.previous_fraction * torch.as_tensor(t, dtype=torch.float64), x0)
        true, hat = sde.to_unit(x0.double()), sde.to_unit(x0_hat.double())

        def kl(model, data):
            return kl_beta(*model, *data) if self.objective == "klub" else kl_beta(*data, *model)

        conditional = kl((sde.eta * (alpha_s - alpha_t) * hat, sde.eta * (1 - alpha_s * hat)),
                         (sde.eta * (alpha_s - alpha_t) * true, sde.eta * (1 - alpha_s * true)))
        marginal = kl((sde.eta * alpha_t * hat, sde.eta * (1 - alpha_t * hat)),
                      (sde.eta * alpha_t * true, sde.eta * (1 - alpha_t * true)))
        return self.conditional_weight * conditional + (1 - self.conditional_weight) * marginal

    def __call__(self, score_fn, x0: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        t = uniform_time(x0.shape[0], self.eps, self.sde.T, generator).to(x0.device)
        y = self.sde.sample_logit(x0, t, generator)
        per_pixel = self.divergence(x0, score_fn(y, t), t)
        return per_pixel.flatten(1).sum(dim=1).mean().to(x0.dtype)


def beta_ancestral(sde: BetaDiffusion, x0_fn, y, *, steps, generator=None, grid="uniform-t", end_time=None,
                   progress=False):
    """Beta diffusion's ancestral sampler (paper §2.2): at each of ``steps`` network levels of the named ``grid``
    (gbm.grids.sampling_levels: the grid towards ``end_time``) predict ``x0_hat`` and take the reverse Beta step to the
    next level; the last level's final update to t = 0 is noise-free and returns ``x0_hat`` (in [-1, 1]).
    NFE = ``steps``. ``y`` is ``logit z_T``."""
    times = sampling_levels(sde, steps, grid, end_time).tolist()
    for k in levels(steps, progress, "beta"):
        x0_hat = x0_fn(y, times_like(times[k], y))
        if k < steps - 1:
            y = sde.reverse_step(y, x0_hat, times[k], times[k + 1], generator)
    return x0_hat, {"grid": grid, "returns": "x0_hat at the last network level"}


def check_beta_data(x: torch.Tensor, what: str) -> None:
    """Data (``what`` other than ``x_T``) must lie in [-1, 1], the range mapped onto ``[shift, shift + scale]``;
    a start ``x_T`` is ``logit z_T`` and must be finite."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what}: beta diffusion needs finite values; got NaN or infinity")
    if what != "x_T" and (float(x.min()) < -1 or float(x.max()) > 1):
        raise ValueError(f"{what}: beta diffusion models data in [-1, 1] (mapped to [shift, shift + scale]); got "
                         f"values in [{float(x.min()):.4g}, {float(x.max()):.4g}]")


def fit_prior_mean(sde: BetaDiffusion, x: torch.Tensor) -> BetaDiffusion:
    """The start's mean ``c``: the scaled training data's mean (the authors start from the data mean)."""
    return replace(sde, prior_mean=float(sde.to_unit(x.double()).mean()))


METHOD = Method(
    name="beta",
    label="Beta diffusion",
    sde=BetaDiffusion,
    loss=KLUBLoss,
    samplers={"beta": beta_ancestral},
    data_space="centered",
    check_data=check_beta_data,
    fit=fit_prior_mean,
    fitted_params=("prior_mean",),
    description="Beta diffusion (Zhou et al., NeurIPS 2023), implemented from the equations; not part of the GBM paper",
)
