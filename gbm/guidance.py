"""Closed-form kernel discriminator guidance (SPEC §7) — a RECONSTRUCTION of Srikanth, Asokan, Shetty,
Seelamantula's training-free add-on (their exact recipe was not obtainable); label results as such.

At each reverse step the Stein score gets ``w_t grad D_t(x)`` added, with the closed-form kernel critic
``D_t(x) = mean_b psi(|x - x_b|) - mean_i psi(|x - d_i|)`` over the current particle batch ``x_b`` and a
bank of real samples ``d_i`` noised to level ``t`` with the SDE's own kernel. ``psi`` increases with ``r``,
so ``grad D`` pulls a particle toward the data and pushes it away from the other particles. The gradient is
closed form: ``grad D(x) = mean_b c(r_b) (x - x_b) - mean_i c(r_i) (x - d_i)``, ``c(r) = psi'(r) / r``.

Works with every sampler because it only wraps ``score_fn``: for GBM the correction enters before the
multiply-by-x (``h + x * w_t grad D``); for CLD, whose score is the velocity's, ``D`` lives on the full state
``(x, v)`` and the velocity part of its gradient is added.

Normalised strength (``normalise=True``, the default). The raw ``grad D`` has no fixed scale: with the
polyharmonic kernel in n = 784 dimensions it is ``O(1/r)``, orders of magnitude below a score near the data
(``O(1/std_t)``), so a raw weight of 1 does nothing measurable and the useful weight differs per level,
dataset and method. Every sampler consumes the declared score only through its drift, linearly: ``g^2 * score``
for the additive SDEs and CLD's velocity, and for GBM in log space (SPEC §3)
``mu - 1.5 sigma^2 - sigma^2 h = (mu - sigma^2/2) - sigma^2 (h + 1)``, where ``h + 1 = d/dy log p_t`` is the
Stein score of ``y = log x`` and ``mu - sigma^2/2`` the forward log-drift, which no score moves
(``reference_score``). The guidance term ``a = add_stein_term(0, x, grad D)`` (``grad D`` for additive SDEs,
``x * grad D = d/dy D`` for GBM, the velocity half for CLD) is a Stein score in the same coordinates, so the
guidance's pull relative to the model's is ``|a_i| / |reference_i|``, the reference being ``score`` for a Stein
score and ``h + 1`` for a Hyvärinen score (not ``h``: ``|h| / |h + 1|`` is up to 1.3 near t = 1 with GBM's
sigma = 0.8). The normalised correction rescales ``a`` per image to ``w_t * |reference_i| / |a_i| * a_i``: at
weight 1 the guidance moves image i as hard as the model's score does, at every level, for every method; only
the direction comes from the critic. Per image, so an image still depends on its own seed alone when
``repel=False``. ``normalise=False`` keeps the raw ``w_t * a`` (results before this option; ``samples.json``
records which was used).

Per-image times. Each image's bank is noised to that image's own ``t``: the adaptive probability-flow ODE
(gbm.ode) moves each image with its own steps, so the images of one call sit at different times. Images
sharing a time are handled together; the particle term (``repel=True``) runs over the batch-mates at the
same time, i.e. over the whole batch for every fixed-grid sampler.

Per-step bank subsample (``batch_bank`` B). ``grad D``'s bank term is a mean over the bank, so a uniform
subsample of B bank members without replacement is an unbiased estimate of it (with a fixed bandwidth or
the bandwidth-free polyharmonic kernel), its variance shrinking like ``(1/B - 1/N)``; its cost is B instead of
N distances per particle. Each step draws a fresh subsample per level from a stream seeded by ``seed``, the
level ``t`` and the count of consecutive calls at that level — never by the batch's images or its position in
a run — so with ``repel=False`` image i still depends on seed i alone. Normalisation divides by the estimate's
norm, so the normalised correction is a consistent (not exactly unbiased) estimate of the full-bank one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from gbm.config import parse_yaml
from gbm.data.prepared import load_prepared
from gbm.methods import method_of
from gbm.sde import SDE
from gbm.seeding import randn

KERNELS = ("polyharmonic", "gaussian", "imq")
SCHEDULES = ("constant", "noisy", "clean")


@dataclass(frozen=True)
class GuidanceOptions:
    """Guidance settings as they appear in a config (``guidance.*``).

    ``weight`` w; ``schedule``: ``constant`` (w), ``noisy`` (w t/T, strongest at high noise) or ``clean``
    (w (1 - t/T), strongest near the data); ``kernel``: polyharmonic (``r`` in odd, ``log r`` in even
    dimension n: order ``ceil(n/2)``), gaussian ``-exp(-r^2 / 2h^2)`` or imq ``-(r^2 + h^2)^-1/2``;
    ``bandwidth`` h (None: the median particle-to-bank distance at each step); ``bank_size`` real samples;
    ``seed`` for the bank subset and its noise; ``repel``: keep the particle term of ``D`` (it couples the
    images of a batch, so image i then depends on its batch-mates, not on seed i alone; ``false`` restores
    per-image reproducibility at the price of a pure pull toward the bank); ``normalise``: weight relative
    to the model's score per image and level (module docstring; ``false``: the raw critic gradient);
    ``batch_bank``: bank members drawn afresh at each step (None: the whole bank every step).
    """

    weight: float = 1.0
    schedule: str = "constant"
    kernel: str = "polyharmonic"
    bandwidth: float | None = None
    bank_size: int = 1024
    seed: int = 0
    repel: bool = True
    normalise: bool = True
    batch_bank: int | None = None

    def __post_init__(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"guidance.kernel: unknown kernel {self.kernel!r}; choose one of {list(KERNELS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"guidance.schedule: unknown schedule {self.schedule!r}; choose one of {list(SCHEDULES)}")
        if not (_is_number(self.weight) and math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"guidance.weight: must be a finite number >= 0, got {self.weight!r}")
        if self.bandwidth is not None and not (_is_number(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"guidance.bandwidth: must be positive or null, got {self.bandwidth!r}")
        if isinstance(self.bank_size, bool) or not isinstance(self.bank_size, int) or self.bank_size < 1:
            raise ValueError(f"guidance.bank_size: must be a positive integer, got {self.bank_size!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"guidance.seed: must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.repel, bool):
            raise ValueError(f"guidance.repel: must be true or false, got {self.repel!r}")
        if not isinstance(self.normalise, bool):
            raise ValueError(f"guidance.normalise: must be true or false, got {self.normalise!r}")
        if self.batch_bank is not None and (isinstance(self.batch_bank, bool) or not isinstance(self.batch_bank, int)
                                            or self.batch_bank < 1):
            raise ValueError(f"guidance.batch_bank: must be a positive integer or null, got {self.batch_bank!r}")
        if self.batch_bank is not None and self.batch_bank > self.bank_size:
            raise ValueError(f"guidance.batch_bank: {self.batch_bank} exceeds guidance.bank_size {self.bank_size}")

    @classmethod
    def from_dict(cls, options: dict) -> "GuidanceOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"guidance: unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**options)

    def describe(self) -> dict:
        return asdict(self) | {"method": "closed-form kernel discriminator guidance (reconstruction)",
                               "normalised_against": "the score's share of the sampler's drift (GBM: h + 1)"
                               if self.normalise else None}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def options_from_pairs(pairs: list[str]) -> GuidanceOptions:
    """``GuidanceOptions`` from ``KEY=VALUE`` strings (YAML-parsed values; the last of a repeated key wins),
    as given by repeated ``gbm sample --guidance``; errors name the flag and the option."""
    known, options = [f.name for f in fields(GuidanceOptions)], {}
    for item in pairs:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--guidance {item!r}: expected KEY=VALUE with KEY one of {known}")
        options[key] = parse_yaml(text)
    try:
        return GuidanceOptions.from_dict(options)
    except ValueError as error:
        raise ValueError(f"--guidance: {error}") from error


def bank_images_from_file(spec: str) -> tuple[np.ndarray, dict]:
    """The uint8 real images (N, C, H, W) named by ``FILE.npz[:split]`` (a prepared dataset; split ``train``
    unless given) and a record of where they came from; errors name ``--guidance-data``."""
    path, split = (spec, "train") if spec.endswith(".npz") or ":" not in spec else spec.rsplit(":", 1)
    try:
        images = load_prepared(path).images(split)
    except (ValueError, FileNotFoundError) as error:
        raise ValueError(f"--guidance-data: {error}") from error
    return images, {"path": str(Path(path).resolve()), "split": split, "n_images": len(images)}


def schedule_weight(schedule: str, weight: float, t: torch.Tensor, T: float) -> torch.Tensor:
    """``w_t`` per sample."""
    if schedule == "constant":
        return torch.full_like(t, weight)
    if schedule == "noisy":
        return weight * t / T
    if schedule == "clean":
        return weight * (1 - t / T)
    raise ValueError(f"guidance.schedule: unknown schedule {schedule!r}; choose one of {list(SCHEDULES)}")


def kernel_coefficient(kernel: str, r: torch.Tensor, dimension: int, bandwidth: float | torch.Tensor) -> torch.Tensor:
    """``c(r) = psi'(r) / r`` for the increasing kernel ``psi``, so ``grad_x psi(|x - y|) = c(r) (x - y)``."""
    if kernel == "polyharmonic":
        return r.reciprocal() if dimension % 2 else r.pow(-2)
    if kernel == "gaussian":
        return torch.exp(-0.5 * (r / bandwidth) ** 2) / bandwidth**2
    if kernel == "imq":
        return (r**2 + bandwidth**2).pow(-1.5)
    raise ValueError(f"guidance.kernel: unknown kernel {kernel!r}; choose one of {list(KERNELS)}")


def critic_gradient(x: torch.Tensor, bank: torch.Tensor, kernel: str = "polyharmonic",
                    bandwidth: float | None = None, repel: bool = True) -> torch.Tensor:
    """``grad D(x_b)`` for each particle of the batch ``x`` (B, ...) against ``bank`` (N, ...), in closed form.

    A particle's own term is dropped (it has no gradient); distances are clamped away from 0. ``repel=False``
    drops the particle term (each particle then sees the bank only) and takes the particles one at a time, so
    a particle's gradient is the same to the last bit alone or in any batch (a batched matrix product rounds
    differently, and an adaptive ODE solver can amplify that into a different trajectory).
    """
    if not repel and x.shape[0] > 1:
        return torch.cat([critic_gradient(row, bank, kernel, bandwidth, repel=False) for row in x.split(1)])
    xf, bf = x.flatten(1), bank.flatten(1).to(x.dtype)
    r_bank = torch.cdist(xf, bf, compute_mode="use_mm_for_euclid_dist")
    if bandwidth is None:
        bandwidth = r_bank.median(dim=1, keepdim=True).values.clamp_min(1e-12) if not repel \
            else r_bank.median().clamp_min(1e-12)
    floor = 1e-6 * (r_bank.mean() + 1e-12)
    c_bank = kernel_coefficient(kernel, r_bank.clamp_min(floor), xf.shape[1], bandwidth)
    gradient = -(c_bank.sum(1, keepdim=True) * xf - c_bank @ bf) / bf.shape[0]
    if repel:
        r_particles = torch.cdist(xf, xf, compute_mode="use_mm_for_euclid_dist")
        c_particles = kernel_coefficient(kernel, r_particles.clamp_min(floor), xf.shape[1], bandwidth)
        c_particles.fill_diagonal_(0.0)
        gradient = gradient + (c_particles.sum(1, keepdim=True) * xf - c_particles @ xf) / xf.shape[0]
    return gradient.reshape(x.shape)


def _check_bank(sde: SDE, bank: torch.Tensor) -> None:
    if not isinstance(bank, torch.Tensor) or bank.ndim < 2:
        raise ValueError("guidance.bank: need a tensor of real samples (N, ...) in the SDE's data space")
    if bank.shape[0] == 0:
        raise ValueError("guidance.bank: the bank of real samples is empty")
    method_of(sde).check_data(bank, "guidance.bank")


class BankSubsampler:
    """Which bank members a step uses at each level: all of them, or a fresh uniform subsample of ``size``.

    The subsample of a level is drawn from a generator seeded by ``(seed, t, repeat)``, ``repeat`` counting the
    consecutive calls that included the level ``t`` (inner steps, correctors, an ODE's last stage and the
    next step's first), so it never depends on the batch's images, its size or which batch of a run it is:
    image i depends on seed i alone when ``repel=False`` for every fixed-grid sampler. Not with the adaptive
    ODE (gbm.ode): its images reach the end time at different calls, so the count at that level, and the final
    update's subsample, depend on the batch; use the whole bank (``batch_bank`` null) there.
    """

    def __init__(self, n_bank: int, size: int | None, seed: int):
        if size is not None and not 1 <= size <= n_bank:
            raise ValueError(f"guidance.batch_bank: must lie in [1, {n_bank}] (the bank size), got {size!r}")
        self.n_bank, self.size, self.seed = n_bank, size, seed
        self._repeats: dict[float, int] = {}

    def __call__(self, levels: torch.Tensor) -> list[torch.Tensor | None]:
        """Bank indices for each of the distinct times ``levels`` of one call (None: the whole bank)."""
        values = [float(level) for level in levels.reshape(-1)]
        if self.size is None or self.size == self.n_bank:
            return [None] * len(values)
        self._repeats = {value: self._repeats.get(value, -1) + 1 for value in values}
        return [self._draw(value, self._repeats[value]) for value in values]

    def _draw(self, t_value: float, repeat: int) -> torch.Tensor:
        bits = int(np.float64(t_value).view(np.uint64))
        state = np.random.SeedSequence([self.seed, bits >> 32, bits & 0xFFFFFFFF, repeat]).generate_state(2)
        generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        return torch.randperm(self.n_bank, generator=generator)[:self.size]


def reference_score(sde: SDE, score: torch.Tensor) -> torch.Tensor:
    """The model's pull that normalised guidance is measured against (module docstring): the part of the
    sampler's drift the score moves, as a Stein score in the coordinates the sampler moves in.

    A Stein score is its own reference. A Hyvärinen score ``h = x * grad log p(x)`` enters GBM's log-space drift
    as ``-sigma^2 (h + 1)`` (SPEC §3), ``h + 1 = d/dy log p(y)`` for ``y = log x`` (change of variables,
    ``p_Y(y) = p_X(e^y) e^y``); ``h = -1`` is the flat log-density, which pulls nowhere.
    """
    if sde.score_kind == "stein":
        return score
    if sde.score_kind == "hyvarinen":
        return score + 1.0
    raise ValueError(f"guidance.normalise: the {sde.name!r} SDE's score_fn returns a {sde.score_kind!r}, not a "
                     "Stein or Hyvärinen score; normalised guidance has no reference for it")


def normalised_to_score(reference: torch.Tensor, term: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight * |reference_i| / |term_i| * term_i`` per sample i: the guidance term rescaled so that its norm is
    ``weight`` times the reference score's (``reference_score``); a zero term stays zero."""
    dims = tuple(range(1, reference.ndim))
    reference_norm = torch.linalg.vector_norm(reference, dim=dims, keepdim=True)
    term_norm = torch.linalg.vector_norm(term, dim=dims, keepdim=True)
    return weight * term * (reference_norm / term_norm.clamp_min(torch.finfo(term.dtype).tiny))


def guided_score_fn(sde: SDE, score_fn, bank: torch.Tensor, *, weight: float = 1.0, schedule: str = "constant",
                    kernel: str = "polyharmonic", bandwidth: float | None = None, seed: int = 0, repel: bool = True,
                    normalise: bool = True, batch_bank: int | None = None):
    """Wrap ``score_fn`` (the score ``sde`` declares) with kernel discriminator guidance (SPEC §7).

    ``bank``: real samples in the SDE's data space (positive for GBM, centred for additive SDEs and CLD),
    shaped like one sample's data (for CLD: the position half of the state). The bank is noised to each
    requested ``t`` with ``sde.perturb`` and noise drawn once from ``seed`` (so ``D_t`` is smooth in t).
    Each image's bank is noised to its own ``t`` (module docstring: per-image times).
    ``normalise``: the correction's norm is ``w_t`` times the reference score's (``reference_score``: the score,
    or ``h + 1`` for GBM's Hyvärinen score ``h``), per image (module docstring);
    ``batch_bank``: a fresh subsample of that many bank members per step (``BankSubsampler``).
    """
    GuidanceOptions(weight=weight, schedule=schedule, kernel=kernel, bandwidth=bandwidth, repel=repel,
                    normalise=normalise)
    _check_bank(sde, bank)
    if normalise:
        reference_score(sde, torch.zeros(()))  # refuse a score kind normalisation has no reference for, now
    subsample = BankSubsampler(bank.shape[0], batch_bank, seed)
    noise: dict[str, torch.Tensor] = {}

    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        score = score_fn(x, t)
        data_shape = tuple(sde.positions(x).shape[1:])
        if tuple(bank.shape[1:]) != data_shape:
            raise ValueError(f"guidance.bank: samples of shape {tuple(bank.shape[1:])} do not match the sampler's "
                             f"data shape {data_shape}")
        if "z" not in noise:
            noise["z"] = randn((bank.shape[0], *x.shape[1:]), torch.Generator().manual_seed(seed), dtype=x.dtype)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        levels, level_of = torch.unique(t, return_inverse=True)
        gradient = torch.empty_like(x)
        for k, (level, index) in enumerate(zip(levels, subsample(levels))):
            rows = slice(None) if len(levels) == 1 else (level_of == k).nonzero().squeeze(1)
            members, z = (bank, noise["z"]) if index is None else (bank[index.to(bank.device)], noise["z"][index])
            bank_t = sde.perturb(members.to(x.device, x.dtype), level.expand(members.shape[0]), z.to(x.device))
            gradient[rows] = critic_gradient(x[rows], bank_t, kernel, bandwidth, repel)
        w = schedule_weight(schedule, weight, t, sde.T).reshape(-1, *([1] * (x.ndim - 1)))
        if not normalise:
            return sde.add_stein_term(score, x, w * gradient)
        term = sde.add_stein_term(torch.zeros_like(score), x, gradient)
        return score + normalised_to_score(reference_score(sde, score), term,
                                           w.reshape(-1, *([1] * (score.ndim - 1))))

    return guided


def guided_from_options(sde: SDE, score_fn, images: torch.Tensor, options: GuidanceOptions | dict):
    """``guided_score_fn`` configured by ``guidance.*`` options, its bank drawn from uint8 real ``images``."""
    options = options if isinstance(options, GuidanceOptions) else GuidanceOptions.from_dict(options)
    bank = bank_from_images(images, sde, options.bank_size, options.seed)
    return guided_score_fn(sde, score_fn, bank, weight=options.weight, schedule=options.schedule,
                           kernel=options.kernel, bandwidth=options.bandwidth, seed=options.seed, repel=options.repel,
                           normalise=options.normalise, batch_bank=options.batch_bank)


def bank_from_images(images: torch.Tensor, sde: SDE, size: int, seed: int = 0) -> torch.Tensor:
    """A random subset of ``size`` uint8 images (N, C, H, W), in the SDE's data space."""
    if images.shape[0] == 0:
        raise ValueError("guidance.bank: no real images to draw the bank from")
    if size > images.shape[0]:
        raise ValueError(f"guidance.bank_size: {size} exceeds the {images.shape[0]} real images available")
    chosen = images[bank_indices(images.shape[0], size, seed).to(images.device)]
    return method_of(sde).to_data(chosen)


def bank_indices(n_images: int, size: int, seed: int = 0) -> torch.Tensor:
    """Which of ``n_images`` real images form the bank of ``size`` drawn with ``seed`` (``bank_from_images``)."""
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:size]


def nearest_bank_distances(samples: torch.Tensor, bank: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Euclidean distance from each sample to its nearest bank member (flattened), batched."""
    bf = bank.flatten(1).double()
    out = [torch.cdist(chunk.flatten(1).double(), bf).min(dim=1).values for chunk in samples.split(batch_size)]
    return torch.cat(out)


def memorisation_check(guided: torch.Tensor, unguided: torch.Tensor, bank: torch.Tensor) -> dict:
    """Does guidance copy the bank? Nearest-bank distances of guided vs unguided samples (same data space).

    ``copy_threshold`` is a tenth of the median nearest-neighbour spacing inside the bank (leave-one-out);
    ``fraction_copies_*`` are the fractions of samples nearer than that to some bank member.
    """
    if bank.shape[0] < 2:
        raise ValueError("guidance.bank: the memorisation check needs at least two bank samples")
    bf = bank.flatten(1).double()
    spacing = torch.cdist(bf, bf).fill_diagonal_(float("inf")).min(dim=1).values.median().item()
    threshold = 0.1 * spacing
    d_guided, d_unguided = nearest_bank_distances(guided, bank), nearest_bank_distances(unguided, bank)
    return {
        "median_nearest_bank_distance_guided": d_guided.median().item(),
        "median_nearest_bank_distance_unguided": d_unguided.median().item(),
        "ratio_guided_to_unguided": d_guided.median().item() / max(d_unguided.median().item(), 1e-300),
        "bank_median_spacing": spacing,
        "copy_threshold": threshold,
        "fraction_copies_guided": (d_guided < threshold).double().mean().item(),
        "fraction_copies_unguided": (d_unguided < threshold).double().mean().item(),
    }
