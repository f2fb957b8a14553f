"""Forward SDEs: closed-form kernels agree with simulation and with autograd of their densities."""

import math

import pytest
import torch

from gbm.methods import make_sde
from gbm.methods.additive import SubVPSDE, VESDE, VPSDE
from gbm.methods.gbm import GBM

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def simulate_forward(sde, x0: torch.Tensor, t_end: float, steps: int, seed: int = 0) -> torch.Tensor:
    """Fine Euler–Maruyama simulation of the forward SDE from ``x0`` to ``t_end``."""
    g = torch.Generator().manual_seed(seed)
    x, dt = x0.clone(), t_end / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, dtype=x.dtype)
        f, diffusion = sde.drift_diffusion(x, t)
        x = x + f * dt + diffusion * math.sqrt(dt) * torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x


@pytest.mark.parametrize("mu", [None, 0.5])
def test_gbm_closed_form_marginal_matches_euler_maruyama_simulation(mu):
    sde = GBM(mu=mu)
    n, t = 20_000, 0.7
    x0 = torch.full((n, 1), 1.5, dtype=F64)
    simulated = simulate_forward(sde, x0, t, steps=1000).log()
    closed = sde.perturb(x0, torch.full((n,), t, dtype=F64), torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=F64)).log()
    exact_mean = math.log(1.5) + (sde.mu - sde.sigma**2 / 2) * t
    exact_std = sde.sigma * math.sqrt(t)
    for logs in (simulated, closed):
        assert logs.mean().item() == pytest.approx(exact_mean, abs=0.02)
        assert logs.std().item() == pytest.approx(exact_std, abs=0.02)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_additive_kernel_matches_euler_maruyama_simulation(sde):
    n, t = 20_000, 0.6
    x0 = torch.full((n, 1), 0.8, dtype=F64)
    simulated = simulate_forward(sde, x0, t, steps=1000)
    alpha, std = sde.mean_coeff_std(torch.tensor(t, dtype=F64))
    assert simulated.mean().item() == pytest.approx(0.8 * alpha.item(), abs=4 * std.item() / math.sqrt(n) + 0.01)
    assert simulated.std().item() == pytest.approx(std.item(), rel=0.03)


def lognormal_kernel_log_density(x, x0, t, sde):
    """log p(x_t | x_0) of the GBM log-normal kernel, written out from its definition."""
    m = x0.log() + (sde.mu - sde.sigma**2 / 2) * t
    v = sde.sigma**2 * t
    return -0.5 * (x.log() - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v) - x.log()


def test_gbm_conditional_score_is_x_times_gradient_of_kernel_log_density():
    sde = GBM()
    g = torch.Generator().manual_seed(0)
    x0 = 1 + torch.rand(64, 3, dtype=F64, generator=g)
    t = torch.rand(64, dtype=F64, generator=g) * 0.9 + 0.05
    z = torch.randn(64, 3, dtype=F64, generator=g)
    x_t = sde.perturb(x0, t, z).requires_grad_(True)
    log_p = lognormal_kernel_log_density(x_t, x0, t[:, None], sde).sum()
    (grad,) = torch.autograd.grad(log_p, x_t)
    torch.testing.assert_close(sde.conditional_score(x0, t, z), x_t.detach() * grad)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_additive_conditional_score_is_gradient_of_gaussian_kernel(sde):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(32, 4, dtype=F64, generator=g)
    t = torch.rand(32, dtype=F64, generator=g) * 0.9 + 0.05
    z = torch.randn(32, 4, dtype=F64, generator=g)
    x_t = sde.perturb(x0, t, z).requires_grad_(True)
    alpha, std = sde.mean_coeff_std(t[:, None])
    log_p = (-0.5 * (x_t - alpha * x0) ** 2 / std**2).sum()
    (grad,) = torch.autograd.grad(log_p, x_t)
    torch.testing.assert_close(sde.conditional_score(x0, t, z), grad)


def test_eps_parameterisation_inverts_for_gbm():
    sde = GBM()
    x, t = torch.rand(8, 2) + 1, torch.rand(8) + 0.1
    eps = torch.randn(8, 2)
    torch.testing.assert_close(sde.eps_from_score(sde.score_from_eps(eps, x, t), x, t), eps)


def test_prior_fitted_from_data_matches_exact_log_moments_at_T():
    g = torch.Generator().manual_seed(0)
    data = 1 + torch.rand(4000, 3, 4, 4, generator=g, dtype=F64) * torch.tensor([0.2, 0.6, 1.0], dtype=F64).reshape(1, 3, 1, 1)
    sde = GBM().with_prior_from_data(data)
    x_T = sde.perturb(data, torch.ones(4000, dtype=F64), torch.randn(data.shape, generator=g, dtype=F64))
    logs = x_T.log().transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(torch.tensor(sde.prior_log_mean, dtype=F64), logs.mean(1), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.tensor(sde.prior_log_std, dtype=F64), logs.std(1), atol=0.01, rtol=0)
    prior = sde.prior_sample((4000, 3, 4, 4), noise=torch.randn(4000, 3, 4, 4, generator=g)).log()
    torch.testing.assert_close(prior.transpose(0, 1).reshape(3, -1).std(1).double(), logs.std(1), atol=0.01, rtol=0)


@pytest.mark.parametrize("name,params,field", [("gmb", {}, "sde.name"), ("gbm", {"sigm": 1.0}, "sigm"),
                                               ("gbm", {"sigma": -1.0}, "sde.sigma")])
def test_bad_sde_requests_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        make_sde(name, **params)


def test_gbm_refuses_non_positive_data_for_its_prior():
    with pytest.raises(ValueError, match="strictly positive"):
        GBM().with_prior_from_data(torch.zeros(4, 1, 2, 2))
