"""Start distributions for GBM's reverse samplers, and how far each is from the true marginal p_T (SPEC §1, §1a, §3).

Each prior is a frozen dataclass with one interface:

- ``fit(sde, x0, labels=None, **options) -> stats``: statistics of positive training data ``x0`` (N, ...)
  as plain tensors, lists and numbers (stored in ``model.pt``). They describe the *data* only, never
  ``sigma`` or ``T``: the kernel is added when sampling, so one fit serves every ``sigma^2 T``.
- ``sample(sde, stats, shape, generator) -> x_T``: a draw of ``shape = (N, *item)``. Every random number
  of image i comes from ``generator``'s stream i (``gbm.seeding.PerSampleGenerator``), the Gaussian
  ``z`` of the item's shape first, so image i is the same alone or in a batch.
- ``log_moments(sde, stats) -> (mean, cov)``: mean and covariance of ``log x_T`` under the prior (flat,
  float64), the input of the mismatch diagnostic.

Priors (``PRIORS``): ``iid`` (the paper's per-channel log-normal, moment-matched), ``correlated`` (a
Gaussian in log space with the covariance of ``log x_0`` plus ``sigma^2 T I``, full or low rank plus
diagonal; this project's extension), ``class-mean`` (a class mean pushed through this SDE's kernel, classes
drawn with their training frequencies: the authors' idea, not their constants or tiling) and ``authors``
(the authors' hard-coded per-channel constants, an ablation). ``prior_mismatch`` measures a prior against
p_T in log space; ``additive_prior_mismatch`` does the same for the additive SDEs' Gaussian priors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from gbm.sde import SDE
from gbm.seeding import Generator, randn

FULL_COVARIANCE_LIMIT = 4096  # largest dimension fitted with a full covariance (CIFAR-10: 3,072); see fit
CHUNK = 4096  # images per float64 chunk when accumulating moments: no full-size double copy of the data

# The authors' hard-coded prior constants ``x_T = exp(m + s z)`` per channel (SPEC §1), set for their
# sigma = 0.8, T = 1. Not a moment match; their origin is unknown.
AUTHORS_CONSTANTS: dict[str, dict[str, list[float]]] = {
    "mnist": {"log_mean": [0.1565], "log_std": [0.8353]},
    "fashion_mnist": {"log_mean": [0.2771], "log_std": [0.8428]},
    "kmnist": {"log_mean": [0.2140], "log_std": [0.8290]},
    "cifar10": {"log_mean": [0.4075, 0.3785, 0.3693], "log_std": [0.8016, 0.8004, 0.8005]},
}


def _check_gbm(sde: SDE) -> SDE:
    """``sde`` if it is GBM's SDE (a prior for another method is an error naming ``prior``)."""
    if getattr(sde, "name", None) != "gbm":
        raise ValueError(f"prior: the GBM priors apply to the 'gbm' SDE only, not to {sde.name!r} "
                         "(the additive SDEs start from their fixed Gaussian prior)")
    return sde


def _log(x: torch.Tensor) -> torch.Tensor:
    """``log x`` in float64, refusing data that is not strictly positive and finite (GBM's data, SPEC §1)."""
    y = x.double().log()
    if not torch.isfinite(y).all():
        raise ValueError("prior fit data: GBM priors need strictly positive, finite values "
                         "(images shifted into [1, 2] with gbm.pixels.to_positive)")
    return y


def _kernel_variance(sde) -> float:
    """``sigma^2 T``: the variance the forward kernel adds to each ``log x`` by time ``T`` (SPEC §1)."""
    return sde.sigma**2 * sde.T


def _channel_index(shape: Sequence[int]) -> torch.Tensor:
    """The channel of each flattened coordinate of an item of ``shape`` (channel axis first; vectors: one)."""
    shape = tuple(shape)
    if len(shape) <= 1:
        return torch.zeros(math.prod(shape), dtype=torch.long)
    return torch.arange(shape[0]).repeat_interleave(math.prod(shape[1:]))


def log_data_moments(x0: torch.Tensor, *, covariance: bool = True) -> dict:
    """Mean and covariance of ``log x_0`` over the flattened items of ``x0`` (N, ...), in float64.

    Summed chunk by chunk around a shift (the first chunk's mean), so no float64 copy of the whole data is
    made and the one-pass formula does not cancel. ``covariance=False`` returns per-coordinate variances.
    """
    n = x0.shape[0]
    if n < 2:
        raise ValueError(f"prior fit data: need at least 2 training items, got {n}")
    flat = x0.reshape(n, -1)
    shift = _log(flat[:CHUNK]).mean(dim=0)
    total = torch.zeros_like(shift)
    second = torch.zeros(shift.numel(), shift.numel(), dtype=torch.float64) if covariance else torch.zeros_like(shift)
    for chunk in flat.split(CHUNK):
        centred = _log(chunk) - shift
        total += centred.sum(dim=0)
        second += centred.T @ centred if covariance else centred.pow(2).sum(dim=0)
    mean = total / n
    spread = (second - n * (torch.outer(mean, mean) if covariance else mean**2)) / (n - 1)
    return {"mean": shift + mean, ("cov" if covariance else "var"): spread, "n": n}


@dataclass(frozen=True)
class Prior:
    """A named start distribution for GBM's reverse samplers: ``fit`` once, ``sample`` many times."""

    name: ClassVar[str]
    paper: ClassVar[bool]  # the paper's method (True) or this project's extension / an ablation (False)
    needs_dataset: ClassVar[bool] = False  # ``fit`` takes ``dataset=`` (the prepared dataset's name)

    def fit(self, sde: SDE, x0: torch.Tensor, labels: torch.Tensor | None = None, **options) -> dict:
        raise NotImplementedError

    def sample(self, sde: SDE, stats: dict, shape: Sequence[int], generator: Generator = None,
               device="cpu", **options) -> torch.Tensor:
        raise NotImplementedError

    def log_moments(self, sde: SDE, stats: dict, **options) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def check_options(self, stats: dict, options: dict) -> None:
        """Refuse sampling options the prior does not take (``--prior-option``), naming them."""
        _no_options(self.name, options)

    def stats_from_record(self, record: dict) -> dict | None:
        """Statistics recoverable from a ``model.pt`` record without a fit (older models); None if not."""
        return None

    def check_stats(self, stats: dict, shape: Sequence[int]) -> None:
        """Refuse statistics of another prior or another data shape, naming the prior."""
        if stats.get("prior") != self.name:
            raise ValueError(f"--prior {self.name}: the statistics given are for prior {stats.get('prior')!r}")
        if list(stats["shape"]) != list(shape):
            raise ValueError(f"--prior {self.name}: fitted on items of shape {list(stats['shape'])}, "
                             f"asked for {list(shape)}")


def _per_channel_lognormal(stats: dict, m: torch.Tensor, s: torch.Tensor, shape, generator, device) -> torch.Tensor:
    z = randn(shape, generator).to(device=device, dtype=torch.float64)
    channel = _channel_index(stats["shape"])
    m, s = m[channel].to(device), s[channel].to(device)
    return torch.exp(m + s * z.reshape(len(z), -1)).reshape(tuple(shape)).float()


@dataclass(frozen=True)
class IIDPrior(Prior):
    """The paper's prior: independent log-normal per channel, ``x_T = exp(m + s z)`` (SPEC §1).

    Moment match: ``m = E log x_0 + (mu - sigma^2/2) T``, ``s^2 = Var log x_0 + sigma^2 T`` per channel,
    the exact per-channel log-moments of p_T; the correlations between coordinates are dropped.
    """

    name: ClassVar[str] = "iid"
    paper: ClassVar[bool] = True

    def fit(self, sde, x0, labels=None, **options):
        _check_gbm(sde)
        _no_options(self.name, options)
        moments = log_data_moments(x0, covariance=False)
        channel = _channel_index(x0.shape[1:])
        count = torch.bincount(channel).double()
        channel_mean = torch.zeros(len(count), dtype=torch.float64).index_add_(0, channel, moments["mean"]) / count
        # per-channel variance = mean within-coordinate variance + variance of the coordinate means
        spread = moments["var"] * (moments["n"] - 1) / moments["n"] + (moments["mean"] - channel_mean[channel]) ** 2
        channel_var = torch.zeros_like(channel_mean).index_add_(0, channel, spread) / count
        return {"prior": self.name, "shape": list(x0.shape[1:]), "n": moments["n"],
                "log_mean": channel_mean.tolist(), "log_var": channel_var.tolist()}

    def stats_from_record(self, record):
        """The data's log-moments behind the SDE's fitted ``prior_log_mean``/``prior_log_std`` (``GBM.with_prior_from_data``)."""
        params = record["sde"]["params"]
        if record["sde"]["name"] != "gbm" or params.get("prior_log_std") is None:
            return None
        m, s = (torch.tensor(params[k], dtype=torch.float64).reshape(-1) for k in ("prior_log_mean", "prior_log_std"))
        sigma, T = params["sigma"], params["T"]
        return {"prior": self.name, "shape": list(record["data"]["shape"]), "n": record["data"].get("n_train"),
                "log_mean": (m - (params["mu"] - sigma**2 / 2) * T).tolist(),
                "log_var": (s**2 - sigma**2 * T).tolist(), "from": "sde record"}

    def _m_s(self, sde, stats):
        m = torch.tensor(stats["log_mean"], dtype=torch.float64) + sde.log_drift * sde.T
        s = (torch.tensor(stats["log_var"], dtype=torch.float64) + _kernel_variance(sde)).sqrt()
        return m, s

    def sample(self, sde, stats, shape, generator=None, device="cpu", **options):
        sde = _check_gbm(sde)
        self.check_stats(stats, shape[1:])
        self.check_options(stats, options)
        return _per_channel_lognormal(stats, *self._m_s(sde, stats), shape, generator, device)

    def log_moments(self, sde, stats, **options):
        self.check_options(stats, options)
        m, s = self._m_s(_check_gbm(sde), stats)
        channel = _channel_index(stats["shape"])
        return m[channel], torch.diag(s[channel] ** 2)


@dataclass(frozen=True)
class AuthorsPrior(Prior):
    """The authors' hard-coded per-channel constants ``x_T = exp(m + s z)`` (SPEC §1), an ablation.

    Fixed for their sigma = 0.8, T = 1, whatever the SDE; ``fit`` needs ``dataset`` (a key of
    ``AUTHORS_CONSTANTS``) and ignores the data apart from its shape.
    """

    name: ClassVar[str] = "authors"
    paper: ClassVar[bool] = False
    needs_dataset: ClassVar[bool] = True

    def fit(self, sde, x0, labels=None, dataset: str | None = None, **options):
        _check_gbm(sde)
        _no_options(self.name, options)
        if dataset not in AUTHORS_CONSTANTS:
            raise ValueError(f"data.dataset: the 'authors' prior has constants for {sorted(AUTHORS_CONSTANTS)} "
                             f"only, not for {dataset!r}")
        constants = AUTHORS_CONSTANTS[dataset]
        channels = x0.shape[1] if x0.ndim > 2 else 1
        if len(constants["log_mean"]) != channels:
            raise ValueError(f"data.dataset: the authors' {dataset!r} constants have {len(constants['log_mean'])} "
                             f"channel(s), the data {channels}")
        return {"prior": self.name, "shape": list(x0.shape[1:]), "dataset": dataset,
                "log_mean": list(constants["log_mean"]), "log_std": list(constants["log_std"])}

    def sample(self, sde, stats, shape, generator=None, device="cpu", **options):
        _check_gbm(sde)
        self.check_stats(stats, shape[1:])
        self.check_options(stats, options)
        m = torch.tensor(stats["log_mean"], dtype=torch.float64)
        s = torch.tensor(stats["log_std"], dtype=torch.float64)
        return _per_channel_lognormal(stats, m, s, shape, generator, device)

    def log_moments(self, sde, stats, **options):
        self.check_options(stats, options)
        channel = _channel_index(stats["shape"])
        m = torch.tensor(stats["log_mean"], dtype=torch.float64)[channel]
        return m, torch.diag(torch.tensor(stats["log_std"], dtype=torch.float64)[channel] ** 2)


@dataclass(frozen=True)
class CorrelatedPrior(Prior):
    """Gaussian in log space: ``log x_T ~ N(E log x_0 + (mu - sigma^2/2) T, Cov(log x_0) + sigma^2 T I)`` (SPEC §1a).

    Exact when ``log x_0`` is Gaussian. ``fit`` keeps the eigendecomposition ``Cov(log x_0) = V diag(l) V^T``
    (sigma-free). Full form (``rank=None``): ``log x_T = m + V sqrt(l + sigma^2 T) z``, D normals per
    image. Low rank plus diagonal (``rank=r``, ``0 < r < D``): the top r eigenpairs and the diagonal
    ``d`` the rest leaves, ``log x_T = m + V_r sqrt(l_r) z' + sqrt(d + sigma^2 T) z`` (D + r normals,
    ``z`` first); it keeps every variance exactly and stores D(r + 2) numbers instead of D(D + 1).
    """

    name: ClassVar[str] = "correlated"
    paper: ClassVar[bool] = False

    def fit(self, sde, x0, labels=None, rank: int | None = None, **options):
        _check_gbm(sde)
        _no_options(self.name, options)
        dim = math.prod(x0.shape[1:])
        check_rank(rank, dim)
        if dim > FULL_COVARIANCE_LIMIT:
            raise ValueError(f"prior 'correlated': dimension {dim} exceeds {FULL_COVARIANCE_LIMIT}; the fit holds a "
                             f"D x D float64 covariance ({dim**2 * 8 / 2**30:.1f} GiB) and its eigendecomposition")
        moments = log_data_moments(x0)
        eigenvalues, eigenvectors = torch.linalg.eigh(moments["cov"])
        del moments["cov"]
        stats = {"prior": self.name, "shape": list(x0.shape[1:]), "n": moments["n"], "rank": None,
                 "log_mean": moments["mean"],
                 "eigenvalues": eigenvalues.flip(0).clamp_min(0),  # largest first; round-off negatives are 0
                 "eigenvectors": eigenvectors.flip(1)}
        return stats if rank is None else self.truncate(stats, rank)

    def truncate(self, stats: dict, rank: int) -> dict:
        """The low-rank plus diagonal form of rank ``rank`` from statistics of a higher rank (or full)."""
        check_rank(rank, math.prod(stats["shape"]), stats["rank"])
        values, vectors = stats["eigenvalues"], stats["eigenvectors"]
        variances = (vectors**2) @ values + (0 if stats["rank"] is None else stats["residual_var"])
        top_values, top_vectors = values[:rank], vectors[:, :rank].contiguous()
        residual = (variances - (top_vectors**2) @ top_values).clamp_min(0)
        return stats | {"rank": rank, "eigenvalues": top_values, "eigenvectors": top_vectors, "residual_var": residual}

    def check_options(self, stats, options):
        unknown = sorted(set(options) - {"rank"})
        if unknown:
            raise ValueError(f"--prior-option: {unknown} not understood by the 'correlated' prior (it takes rank)")
        if options.get("rank") is not None:
            check_rank(options["rank"], math.prod(stats["shape"]), stats["rank"])

    def _form(self, stats, options):
        self.check_options(stats, options)
        rank = options.get("rank")
        return stats if rank is None or rank == stats["rank"] else self.truncate(stats, rank)

    def sample(self, sde, stats, shape, generator=None, device="cpu", **options):
        sde = _check_gbm(sde)
        self.check_stats(stats, shape[1:])
        stats = self._form(stats, options)
        n, kernel = shape[0], _kernel_variance(sde)
        z = randn(shape, generator).to(torch.float64).reshape(n, -1)
        vectors = stats["eigenvectors"].to(torch.float64)
        if stats["rank"] is None:
            y = (z * (stats["eigenvalues"] + kernel).sqrt()) @ vectors.T
        else:
            z_low = randn((n, stats["rank"]), generator).to(torch.float64)
            y = (z_low * stats["eigenvalues"].sqrt()) @ vectors.T + z * (stats["residual_var"] + kernel).sqrt()
        y = y + stats["log_mean"] + sde.log_drift * sde.T
        return y.exp().reshape(tuple(shape)).float().to(device)

    def log_moments(self, sde, stats, **options):
        sde = _check_gbm(sde)
        stats = self._form(stats, options)
        vectors = stats["eigenvectors"].to(torch.float64)
        cov = (vectors * stats["eigenvalues"]) @ vectors.T
        if stats["rank"] is not None:
            cov = cov + torch.diag(stats["residual_var"])
        cov = cov + _kernel_variance(sde) * torch.eye(len(cov), dtype=torch.float64)
        return stats["log_mean"] + sde.log_drift * sde.T, cov


@dataclass(frozen=True)
class ClassMeanPrior(Prior):
    """A class-averaged start in the spirit of the authors' (SPEC §3), NOT their exact recipe: a class mean
    image pushed through this SDE's own forward kernel. This is the variant every table labelled
    ``class-mean`` shows (docs/priors.md).

    ``log x_T = log mean_c + (mu - sigma^2/2) T + sigma sqrt(T) z``, class ``c`` drawn with its training
    frequency from image i's own stream (one normal after ``z``, mapped to a uniform by the normal CDF).

    The authors' code differs in two ways: it pushes the class mean (saved as an 8-bit PNG) through a GBM whose
    drift and volatility are their hard-coded prior constants ``m``, ``s`` (``AUTHORS_CONSTANTS``) to level
    999 of 1000, ``log x_T = log mean_c + (m - s^2/2) 0.999 + s sqrt(0.999) z`` (MNIST: log-drift -0.19 and
    log-std 0.835 where this prior has 0 and 0.8), and it tiles the classes equally over a batch (image j of
    a batch gets class ``j mod K``) instead of drawing them with their training frequencies.
    """

    name: ClassVar[str] = "class-mean"
    paper: ClassVar[bool] = False

    def fit(self, sde, x0, labels=None, **options):
        _check_gbm(sde)
        _no_options(self.name, options)
        if labels is None or labels.shape != (len(x0),):
            raise ValueError("data labels: the 'class-mean' prior needs one class label per training image")
        classes = labels.unique()
        flat = x0.reshape(len(x0), -1)
        means = torch.stack([_chunked_mean(flat[labels == c]) for c in classes])
        _log(means)
        counts = torch.stack([(labels == c).sum() for c in classes])
        return {"prior": self.name, "shape": list(x0.shape[1:]), "classes": classes.tolist(),
                "frequencies": (counts.double() / counts.sum()).tolist(), "class_means": means}

    def draw_classes(self, stats: dict, u: torch.Tensor) -> torch.Tensor:
        """Class indices (into ``stats['classes']``) for uniforms ``u``: the inverse CDF of the frequencies."""
        cumulative = torch.tensor(stats["frequencies"], dtype=torch.float64).cumsum(0)
        return torch.searchsorted(cumulative, u.double().contiguous(), right=True).clamp_max(len(cumulative) - 1)

    def sample(self, sde, stats, shape, generator=None, device="cpu", **options):
        sde = _check_gbm(sde)
        self.check_stats(stats, shape[1:])
        self.check_options(stats, options)
        n = shape[0]
        z = randn(shape, generator).to(torch.float64).reshape(n, -1)
        u = torch.special.ndtr(randn((n, 1), generator).to(torch.float64))[:, 0]
        log_means = stats["class_means"].to(torch.float64).log()[self.draw_classes(stats, u)]
        y = log_means + sde.log_drift * sde.T + math.sqrt(_kernel_variance(sde)) * z
        return y.exp().reshape(tuple(shape)).float().to(device)

    def log_moments(self, sde, stats, **options):
        self.check_options(stats, options)
        sde = _check_gbm(sde)
        weights = torch.tensor(stats["frequencies"], dtype=torch.float64)
        log_means = stats["class_means"].to(torch.float64).log()
        mean = weights @ log_means
        centred = log_means - mean
        cov = (centred.T * weights) @ centred + _kernel_variance(sde) * torch.eye(len(mean), dtype=torch.float64)
        return mean + sde.log_drift * sde.T, cov


def _chunked_mean(flat: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(flat.shape[1], dtype=torch.float64)
    for chunk in flat.split(CHUNK):
        total += chunk.double().sum(dim=0)
    return total / len(flat)


def _no_options(name: str, options: dict) -> None:
    if options:
        raise ValueError(f"prior options: {sorted(options)} not understood by the {name!r} prior")


def check_rank(rank, dim: int, fitted_rank: int | None = None) -> None:
    """A low-rank prior's rank is ``None`` (full covariance) or an integer in ``[1, dim)`` (at most the rank
    the statistics were fitted with); anything else is an error naming it."""
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 < rank < dim:
        raise ValueError(f"prior option 'rank': must be a positive integer below the dimension {dim} "
                         f"(or absent for the full covariance), got {rank!r}")
    if fitted_rank is not None and rank > fitted_rank:
        raise ValueError(f"prior option 'rank': {rank} exceeds the rank {fitted_rank} the statistics were fitted with")


PRIORS: dict[str, Prior] = {p.name: p for p in (IIDPrior(), CorrelatedPrior(), ClassMeanPrior(), AuthorsPrior())}
DEFAULT_PRIOR = "iid"


def get_prior(name: str) -> Prior:
    """The prior called ``name``; an error naming ``--prior`` and the choices otherwise."""
    if name not in PRIORS:
        raise ValueError(f"--prior: unknown prior {name!r}; choose one of {sorted(PRIORS)}")
    return PRIORS[name]


# --- The mismatch diagnostic ----------------------------------------------------------------------


def frechet_distance(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor) -> float:
    """Fréchet (2-Wasserstein squared) distance of two Gaussians:
    ``|m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a^1/2 C_b C_a^1/2)^1/2)``, in float64 by symmetric eigensolves."""
    mean_a, mean_b, cov_a, cov_b = (v.to(torch.float64) for v in (mean_a, mean_b, cov_a, cov_b))
    values, vectors = torch.linalg.eigh(cov_a)
    root_a = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    middle = root_a @ cov_b @ root_a
    cross = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mean_a - mean_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * cross)


def gbm_marginal_log_moments(sde, held_out: torch.Tensor | dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of ``log x_T`` for held-out images pushed through the GBM kernel (SPEC §1):
    ``E log x_0 + (mu - sigma^2/2) T`` and ``Cov(log x_0) + sigma^2 T I`` (the kernel's noise in closed form).
    ``held_out``: the images, or their ``log_data_moments`` (reused across ``sigma^2 T``)."""
    moments = held_out if isinstance(held_out, dict) else log_data_moments(held_out)
    dim = len(moments["mean"])
    return (moments["mean"] + sde.log_drift * sde.T,
            moments["cov"] + _kernel_variance(sde) * torch.eye(dim, dtype=torch.float64))


def prior_mismatch(sde: SDE, prior: Prior, stats: dict, held_out: torch.Tensor | dict, **options) -> dict:
    """How far a GBM prior is from p_T in log space: the Fréchet distance between the prior's log-moments
    and those of held-out images pushed to ``T``, and that distance over ``tr Cov(log x_T)`` (scale-free).

    A Fréchet distance sees the first two moments only: ``correlated`` matches them up to the train/held-out
    difference, so its value is that difference, not a bound on non-Gaussian error.
    """
    sde = _check_gbm(sde)
    target_mean, target_cov = gbm_marginal_log_moments(sde, held_out)
    mean, cov = prior.log_moments(sde, stats, **options)
    distance = frechet_distance(mean, cov, target_mean, target_cov)
    return {"sde": "gbm", "prior": prior.name, "space": "log x", "sigma2_T": _kernel_variance(sde),
            "frechet": distance, "relative_frechet": distance / float(target_cov.trace())}


def additive_prior_mismatch(sde: SDE, held_out: torch.Tensor) -> dict:
    """The same diagnostic for an additive SDE (SPEC §5): its Gaussian prior (VP, sub-VP ``N(0, I)``; VE
    ``N(0, sigma_max^2 I)``) against p_T of held-out data in the SDE's own data space,
    ``N(alpha E x_0, alpha^2 Cov x_0 + std(T)^2 I)``."""
    if not hasattr(sde, "mean_coeff_std"):
        raise ValueError(f"sde: additive_prior_mismatch takes VP, sub-VP or VE, not {sde.name!r}")
    alpha, std = (float(v) for v in sde.mean_coeff_std(torch.tensor(float(sde.T), dtype=torch.float64)))
    flat = held_out.reshape(len(held_out), -1).double()
    mean = flat.mean(dim=0)
    centred = flat - mean
    cov = centred.T @ centred / (len(flat) - 1)
    eye = torch.eye(len(mean), dtype=torch.float64)
    target_cov = alpha**2 * cov + std**2 * eye
    prior_std = float(sde.sigma_max) if sde.name == "ve" else 1.0
    distance = frechet_distance(torch.zeros_like(mean), prior_std**2 * eye, alpha * mean, target_cov)
    return {"sde": sde.name, "prior": "gaussian", "space": "x", "sigma2_T": None,
            "frechet": distance, "relative_frechet": distance / float(target_cov.trace())}
