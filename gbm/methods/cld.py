"""Critically-damped Langevin diffusion (CLD): a data-velocity SDE, hybrid score matching and the SSCS
sampler (SPEC §6; Dockhorn, Vahdat, Kreis 2022). Implemented from the equations only.

The state ``u = (x, v)`` stacks position (the data, centred to [-1, 1]) and velocity on the channel axis:
a batch of C-channel images becomes a ``(B, 2C, ...)`` state, x first. Noise enters only the velocity,
so the score a CLD ``score_fn(u, t)`` returns is the Stein score of the velocity alone,
``grad_v log p_t(u)``, shaped like ``x`` (C channels); the network sees the whole state (2C channels).

With ``B = beta t`` the forward process is a time-homogeneous linear SDE; at critical damping
``Gamma^2 = 4 M`` its transition is ``u_t = Phi(B) u_0 + chol(Q(B)) z`` per coordinate with a 2x2
``Phi`` and ``Q`` in closed form, from which SPEC §6's kernel follows
(``Sigma_t = Phi diag(0, gamma M) Phi^T + Q``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gbm.grids import time_grid
from gbm.losses import uniform_time
from gbm.methods.base import Method
from gbm.samplers import times_like
from gbm.sde import SDE, ScoreKind, per_sample
from gbm.seeding import Generator, randn, randn_like

_CRITICAL_TOLERANCE = 1e-6


def _split(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Position and velocity halves of a stacked state (channel axis 1)."""
    if u.ndim < 2 or u.shape[1] % 2:
        raise ValueError(f"CLD state: need an even number of channels (x and v stacked), got shape {tuple(u.shape)}")
    c = u.shape[1] // 2
    return u[:, :c], u[:, c:]


def _stack(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, v], dim=1)


@dataclass(frozen=True)
class CLD(SDE):
    """Critically-damped Langevin diffusion (SPEC §6).

    ``dx = beta M^-1 v dt``, ``dv = (-beta x - Gamma beta M^-1 v) dt + sqrt(2 Gamma beta) dW``, with mass
    ``M = 1 / mass_inv``, constant ``beta``, and ``v_0 ~ N(0, init_velocity_var * M)``. Only critical damping
    ``Gamma^2 = 4 M`` has the closed-form kernel implemented here; ``critical=False`` is refused.
    The prior is ``N(0, I) x N(0, M I)``.
    """

    mass_inv: float = 4.0
    Gamma: float = 1.0
    beta: float = 4.0
    init_velocity_var: float = 0.04
    critical: bool = True
    T: float = 1.0
    end_time: float = 1e-3
    name: str = field(default="cld", init=False)
    score_kind: ScoreKind = field(default="stein", init=False)

    def __post_init__(self):
        for what in ("mass_inv", "Gamma", "beta", "init_velocity_var", "T"):
            if not getattr(self, what) > 0:
                raise ValueError(f"sde.{what}: must be positive, got {getattr(self, what)}")
        if not 0 < self.end_time < self.T:
            raise ValueError(f"sde.end_time: must lie in (0, T), got {self.end_time}")
        if not self.critical:
            raise ValueError("sde.critical: only critically damped CLD (Gamma^2 = 4 M) is implemented; set it true")
        if abs(self.Gamma**2 - 4 * self.M) > _CRITICAL_TOLERANCE * max(1.0, self.Gamma**2):
            raise ValueError(
                f"sde.Gamma: critical damping needs Gamma^2 = 4 M = 4 / mass_inv, i.e. Gamma = "
                f"{2 * math.sqrt(self.M):.6g} for mass_inv = {self.mass_inv}; got Gamma = {self.Gamma}"
            )

    @property
    def M(self) -> float:
        return 1.0 / self.mass_inv

    # --- closed-form transition of the linear SDE -----------------------------------------------------

    def transition(self, h: torch.Tensor, reverse: bool = False):
        """``Phi`` (entries xx, xv, vx, vv) and ``Q`` (xx, xv, vv) of the transition over duration ``h``.

        Forward: ``u_{t+h} = Phi u_t + N(0, Q)`` in float64. ``reverse=True`` gives the same for the linear
        part of the reverse SDE (Hamiltonian part with flipped sign), which is the forward one conjugated by
        ``diag(1, -1)``: the off-diagonal entries change sign.
        """
        h = torch.as_tensor(h, dtype=torch.float64)
        b = self.beta * h
        g = 1.0 / self.Gamma
        decay = torch.exp(-2 * b * g)
        decay2 = decay**2
        phi = {
            "xx": decay * (1 + 2 * b * g),
            "xv": decay * 4 * b * g**2,
            "vx": -decay * b,
            "vv": decay * (1 - 2 * b * g),
        }
        q = {
            "xx": decay2 * (torch.expm1(4 * b * g) - 4 * b * g - 8 * b**2 * g**2),
            "xv": decay2 * 4 * g * b**2,
            "vv": decay2 * (self.Gamma**2 / 4 * torch.expm1(4 * b * g) + self.Gamma * b - 2 * b**2),
        }
        if reverse:
            phi["xv"], phi["vx"], q["xv"] = -phi["xv"], -phi["vx"], -q["xv"]
        return phi, q

    def kernel(self, t: torch.Tensor):
        """Mean coefficients of ``x_0`` (with ``v_0 = 0``) and the 2x2 covariance ``(S_xx, S_xv, S_vv)`` of
        ``u_t | x_0`` including the initial velocity variance ``gamma M`` (SPEC §6), in float64."""
        phi, q = self.transition(t)
        s = self.init_velocity_var * self.M
        cov = (q["xx"] + phi["xv"] ** 2 * s, q["xv"] + phi["xv"] * phi["vv"] * s, q["vv"] + phi["vv"] ** 2 * s)
        return (phi["xx"], phi["vx"]), cov

    def _kernel_terms(self, t: torch.Tensor, like: torch.Tensor):
        """Per-sample ``a_x, a_v, sqrt(S_xx), S_xv / sqrt(S_xx), 1/l_t, S_vv`` broadcast against ``like``."""
        (ax, av), (sxx, sxv, svv) = self.kernel(torch.as_tensor(t, dtype=torch.float64).cpu())
        root = sxx.sqrt()
        terms = (ax, av, root, sxv / root, (svv - sxv**2 / sxx).sqrt(), svv)
        return [per_sample(term.to(like.device), like).to(like.dtype) for term in terms]

    def velocity_noise_scale(self, t: torch.Tensor) -> torch.Tensor:
        """``1 / l_t = sqrt(S_vv - S_xv^2 / S_xx)``: the conditional std of ``v_t`` given ``x_t`` and ``x_0``."""
        _, (sxx, sxv, svv) = self.kernel(torch.as_tensor(t, dtype=torch.float64).cpu())
        return (svv - sxv**2 / sxx).sqrt()

    # --- the SDE interface -------------------------------------------------------------------------------

    def drift_diffusion(self, u, t):
        x, v = _split(u)
        f = _stack(self.beta * self.mass_inv * v, -self.beta * x - self.Gamma * self.beta * self.mass_inv * v)
        g = _stack(torch.zeros_like(x), torch.full_like(v, math.sqrt(2 * self.Gamma * self.beta)))
        return f, g

    def perturb(self, x0, t, z):
        """``u_t`` from data ``x0`` (C channels, ``v_0 = 0`` with its variance in the kernel) and standard
        normal ``z`` of the state's shape (2C channels): ``x_t = a_x x_0 + sqrt(S_xx) z_x``,
        ``v_t = a_v x_0 + (S_xv / sqrt(S_xx)) z_x + z_v / l_t`` (the Cholesky factor of the 2x2 covariance)."""
        expected = (x0.shape[0], 2 * x0.shape[1], *x0.shape[2:])
        if tuple(z.shape) != expected:
            raise ValueError(f"z: CLD noise must have the state's shape {expected}, got {tuple(z.shape)}")
        zx, zv = _split(z)
        ax, av, lxx, lvx, lvv, _ = self._kernel_terms(t, x0)
        return _stack(ax * x0 + lxx * zx, av * x0 + lvx * zx + lvv * zv)

    def conditional_score(self, x0, t, z):
        """Velocity score of ``p(u_t | x_0)`` at ``perturb(x0, t, z)``: ``-l_t z_v`` (the HSM target)."""
        _, zv = _split(z)
        lvv = self._kernel_terms(t, zv)[4]
        return -zv / lvv

    def score_from_eps(self, eps, u, t):
        """Mixed velocity score from the net's velocity-noise prediction: ``-v / S_vv - l_t eps`` (SPEC §6)."""
        _, v = _split(u)
        *_, lvv, svv = self._kernel_terms(t, v)
        return -v / svv - eps / lvv

    def prior_sample(self, shape, noise=None):
        """``x ~ N(0, I)``, ``v ~ N(0, M I)``; ``shape`` is the state's (2C channels)."""
        noise = torch.randn(tuple(shape)) if noise is None else noise
        x, v = _split(noise)
        return _stack(x, math.sqrt(self.M) * v)

    def reverse_drift(self, u, t, score):
        """``f - G G^T grad log p``: only the velocity gets ``- 2 Gamma beta score``."""
        f, _ = self.drift_diffusion(u, t)
        fx, fv = _split(f)
        return _stack(fx, fv - 2 * self.Gamma * self.beta * score)

    def probability_flow_drift(self, u, t, score):
        f, _ = self.drift_diffusion(u, t)
        fx, fv = _split(f)
        return _stack(fx, fv - self.Gamma * self.beta * score)

    def noise_scale(self, t):
        """Position noise-to-signal ratio ``sqrt(S_xx) / a_x`` of ``x_t | x_0`` (gbm.grids ``rho``)."""
        (ax, _), (sxx, _, _) = self.kernel(torch.as_tensor(t, dtype=torch.float64).cpu())
        return sxx.clamp_min(0).sqrt() / ax

    def loss_weight(self, t):
        """``l_t^-2``: turns the HSM loss into the velocity-noise error ``||eps_v - alpha_theta||^2``."""
        return self.velocity_noise_scale(t).to(torch.as_tensor(t).dtype) ** 2

    def initial_state(self, x0: torch.Tensor) -> torch.Tensor:
        """``(x_0, v_0 = 0)`` stacked."""
        return _stack(x0, torch.zeros_like(x0))

    def positions(self, u: torch.Tensor) -> torch.Tensor:
        """The data half ``x`` of a state (what a sampler's output images are)."""
        return _split(u)[0]

    def velocities(self, u: torch.Tensor) -> torch.Tensor:
        return _split(u)[1]

    def add_stein_term(self, score, state, stein):
        """Noise enters the velocity only: the declared score takes the velocity half of a state-shaped term."""
        return score + self.velocities(stein)

    def describe(self):
        return super().describe() | {
            "mass_inv": self.mass_inv,
            "Gamma": self.Gamma,
            "beta": self.beta,
            "init_velocity_var": self.init_velocity_var,
            "critical": self.critical,
        }


class HSMLoss:
    """Hybrid score matching for CLD (SPEC §6): ``t ~ U(eps, T)``, ``u_t`` from ``(x_0, v_0 = 0)`` with the
    initial velocity variance in the kernel, ``l_t^-2 || score_fn(u_t, t) + l_t eps_v ||^2``.

    With ``score = -v/S_vv - l_t alpha`` (``CLD.score_from_eps``) this is ``||eps_v - alpha_eff||^2`` with
    ``alpha_eff = alpha + v / (l_t S_vv)``: the network predicts the velocity noise on top of the analytic
    part. ``score_fn`` takes the stacked state (2C channels) and returns the velocity score (C channels).
    """

    def __init__(self, sde: CLD, eps: float = 1e-5):
        if not isinstance(sde, CLD):
            raise ValueError(f"loss: hybrid score matching needs the CLD SDE, got {sde.name!r}")
        self.sde, self.eps = sde, eps

    def __call__(self, score_fn, x0, generator: Generator = None):
        t = uniform_time(x0.shape[0], self.eps, self.sde.T, generator).to(x0.device)
        z = randn((x0.shape[0], 2 * x0.shape[1], *x0.shape[2:]), generator).to(x0.device)
        u_t = self.sde.perturb(x0, t, z)
        target = self.sde.conditional_score(x0, t, z)
        weight = self.sde.loss_weight(t.cpu()).to(x0.device, x0.dtype)
        return (weight * (score_fn(u_t, t) - target).pow(2).flatten(1).sum(dim=1)).mean()


# --- samplers ---------------------------------------------------------------------------------------------


def _linear_half_step(sde: CLD, u, h, generator, noise=True):
    """Exact Gaussian transition of the reverse SDE's linear part (``A``) over duration ``h``."""
    phi, q = sde.transition(torch.tensor(float(h)), reverse=True)
    x, v = _split(u)
    x, v = phi["xx"].item() * x + phi["xv"].item() * v, phi["vx"].item() * x + phi["vv"].item() * v
    if noise:
        lxx = q["xx"].clamp_min(0).sqrt()
        lvx = q["xv"] / lxx if lxx > 0 else torch.zeros(())
        lvv = (q["vv"] - lvx**2).clamp_min(0).sqrt()
        zx, zv = _split(randn_like(u, generator))
        x, v = x + lxx.item() * zx, v + lvx.item() * zx + lvv.item() * zv
    return _stack(x, v)


def _denoise(sde: CLD, score_fn, u, t):
    """Noise-free Euler step of the reverse SDE from ``t`` (the end time) to 0."""
    return u + sde.reverse_drift(u, times_like(t, u), score_fn(u, times_like(t, u))) * t


def symmetric_splitting(sde, score_fn, u, *, steps, generator=None, grid="quadratic", end_time=None,
                        denoise=True):
    """Symmetric splitting CLD sampler (SSCS, SPEC §6): per step an exact half-step of the linear part,
    a full Euler step ``v += 2 Gamma beta (s + M^-1 v) dt`` of the score part (one network call at the
    midpoint time), another exact half-step; then one noise-free denoising step from the end time to 0.
    ``grid``: a named time grid (``gbm.grids``; quadratic by default: far more accurate at low NFE in our GMM
    tests) down to ``end_time`` (default the SDE's)."""
    times = time_grid(sde, steps, grid, end_time).tolist()
    for k in range(steps):
        dt = times[k] - times[k + 1]
        u = _linear_half_step(sde, u, dt / 2, generator)
        x, v = _split(u)
        s = score_fn(u, times_like(times[k] - dt / 2, u))
        u = _stack(x, v + 2 * sde.Gamma * sde.beta * (s + sde.mass_inv * v) * dt)
        u = _linear_half_step(sde, u, dt / 2, generator)
    if denoise:
        u = _denoise(sde, score_fn, u, times[-1])
    return u, {"denoise": denoise, "grid": grid}


def cld_euler_maruyama(sde, score_fn, u, *, steps, generator=None, grid="quadratic", end_time=None,
                       denoise=True):
    """Euler–Maruyama on CLD's reverse SDE (noise on the velocity only); then the same denoising step as
    SSCS, so equal ``steps`` means equal NFE (``steps + 1`` with ``denoise``)."""
    times = time_grid(sde, steps, grid, end_time).tolist()
    g = math.sqrt(2 * sde.Gamma * sde.beta)
    for k in range(steps):
        t, dt = times[k], times[k] - times[k + 1]
        tt = times_like(t, u)
        u = u - sde.reverse_drift(u, tt, score_fn(u, tt)) * dt
        x, v = _split(u)
        u = _stack(x, v + g * math.sqrt(dt) * _split(randn_like(u, generator))[1])
    if denoise:
        u = _denoise(sde, score_fn, u, times[-1])
    return u, {"denoise": denoise, "grid": grid}


# Both integrate to the end time, then take the final denoising step from it to 0 (gbm.grids).
symmetric_splitting.final_update_from_end_time = True
cld_euler_maruyama.final_update_from_end_time = True

METHOD = Method(
    name="cld",
    label="CLD",
    sde=CLD,
    loss=HSMLoss,
    samplers={"sscs": symmetric_splitting, "cld-em": cld_euler_maruyama},
    data_space="centered",
    description="critically-damped Langevin diffusion (Dockhorn, Vahdat, Kreis), implemented from the equations",
)
