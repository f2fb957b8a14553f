"""CLD (SPEC §6): closed-form kernel, hybrid score matching, SSCS and Euler–Maruyama samplers."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from gbm.methods import get_method, make_sde
from gbm.methods.cld import CLD, HSMLoss
from gbm.methods.gbm import GBM
from gbm.sampling import sample
from toy_distributions import GaussianMixture, mixture_velocity_score, sliced_wasserstein


def _lyapunov_moments(sde: CLD, times):
    """Mean of ``u_t`` from ``(1, 0)`` and covariance from ``diag(0, gamma M)`` by solving the moment ODEs
    ``m' = F m``, ``S' = F S + S F^T + G G^T`` numerically."""
    F = np.array([[0.0, sde.beta * sde.mass_inv], [-sde.beta, -sde.Gamma * sde.beta * sde.mass_inv]])
    GG = np.diag([0.0, 2 * sde.Gamma * sde.beta])

    def rhs(t, y):
        m, S = y[:2], y[2:].reshape(2, 2)
        return np.concatenate([F @ m, (F @ S + S @ F.T + GG).ravel()])

    y0 = np.concatenate([[1.0, 0.0], np.diag([0.0, sde.init_velocity_var * sde.M]).ravel()])
    sol = solve_ivp(rhs, (0.0, max(times)), y0, t_eval=times, rtol=1e-11, atol=1e-13, method="DOP853")
    return sol.y


def _mixture():
    return GaussianMixture(
        torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64),
        torch.tensor([[-0.6, -0.6], [0.6, 0.0], [0.0, 0.7]], dtype=torch.float64),
        torch.tensor([0.08, 0.08, 0.08], dtype=torch.float64),
    )


def _run(sde, method, steps, n=2000, seed=0):
    mix = _mixture()
    g = torch.Generator().manual_seed(seed)
    u_T = sde.prior_sample((n, 4), noise=torch.randn(n, 4, generator=g, dtype=torch.float64))
    result = sample(sde, mixture_velocity_score(sde, mix), u_T, method=method, steps=steps, generator=g)
    return mix, sde.positions(result.x), result


@pytest.mark.parametrize("params", [{}, {"mass_inv": 1.0, "Gamma": 2.0, "beta": 2.0, "init_velocity_var": 0.1}])
def test_cld_kernel_matches_numerical_lyapunov_solve(params):
    sde = CLD(**params)
    times = [1e-3, 0.01, 0.1, 0.3, 0.7, 1.0]
    y = _lyapunov_moments(sde, times)
    (ax, av), (sxx, sxv, svv) = sde.kernel(torch.tensor(times, dtype=torch.float64))
    for closed, numeric in [(ax, y[0]), (av, y[1]), (sxx, y[2]), (sxv, y[3]), (svv, y[5])]:
        np.testing.assert_allclose(closed.numpy(), numeric, rtol=1e-6, atol=1e-10)


def test_cld_kernel_reaches_stationary_prior_at_t1():
    sde = CLD()
    (ax, av), (sxx, sxv, svv) = sde.kernel(torch.tensor([1.0], dtype=torch.float64))
    assert abs(ax.item()) < 5e-3 and abs(av.item()) < 5e-3  # data forgotten
    np.testing.assert_allclose([sxx.item(), sxv.item(), svv.item()], [1.0, 0.0, sde.M], atol=1e-4)
    prior = sde.prior_sample((20000, 2), noise=torch.randn(20000, 2, generator=torch.Generator().manual_seed(0)))
    np.testing.assert_allclose(prior.var(dim=0).numpy(), [1.0, sde.M], rtol=0.05)


def test_perturb_draws_the_kernel_and_conditional_score_is_its_velocity_score():
    sde = CLD()
    t = torch.full((4,), 0.2, dtype=torch.float64)
    x0 = torch.tensor([[0.5], [-0.3], [0.9], [0.0]], dtype=torch.float64)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u = sde.perturb(x0, t, z).requires_grad_(True)
    (ax, av), (sxx, sxv, svv) = sde.kernel(t)
    cov = torch.stack([torch.stack([sxx, sxv], -1), torch.stack([sxv, svv], -1)], -2)
    mean = torch.cat([ax[:, None] * x0, av[:, None] * x0], dim=1)
    log_p = torch.distributions.MultivariateNormal(mean, cov).log_prob(u).sum()
    (grad,) = torch.autograd.grad(log_p, u)
    torch.testing.assert_close(sde.conditional_score(x0, t, z), grad[:, 1:])
    many = sde.perturb(torch.full((40000, 1), 0.5, dtype=torch.float64), torch.full((40000,), 0.2, dtype=torch.float64),
                       torch.randn(40000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64))
    np.testing.assert_allclose(torch.cov(many.T).numpy(), cov[0].numpy(), rtol=0.05, atol=2e-3)


def test_hsm_loss_differs_from_explicit_score_matching_by_a_model_independent_constant():
    """HSM = ESM + const: shifting the exact score by ``delta`` raises the loss by ``delta^2 D E_t[l_t^-2]``."""
    sde = CLD()
    mix = _mixture()
    loss = get_method("cld").make_loss(sde)
    assert isinstance(loss, HSMLoss)
    exact = mixture_velocity_score(sde, mix)
    x0, _ = mix.sample(4000, torch.Generator().manual_seed(0))
    delta = 2.0
    at_exact = loss(exact, x0, torch.Generator().manual_seed(3)).item()
    shifted = loss(lambda u, t: exact(u, t) + delta, x0, torch.Generator().manual_seed(3)).item()
    t = torch.linspace(loss.eps, sde.T, 20001, dtype=torch.float64)
    expected = delta**2 * x0.shape[1] * sde.loss_weight(t).mean().item()
    assert shifted - at_exact == pytest.approx(expected, rel=0.15)


def test_hsm_loss_is_the_velocity_noise_error():
    """For point-mass data the exact score is the conditional one: a score off by ``l_t`` (the velocity noise
    off by 1) costs exactly 1 per coordinate under the ``l_t^-2`` weight."""
    sde = CLD()
    point = GaussianMixture(torch.ones(1, dtype=torch.float64), torch.tensor([[0.3, -0.2]], dtype=torch.float64),
                            torch.zeros(1, dtype=torch.float64))
    exact = mixture_velocity_score(sde, point)

    def l_t(t):
        _, (sxx, sxv, svv) = sde.kernel(t.double())
        return (1 / (svv - sxv**2 / sxx).sqrt())[:, None]

    x0 = point.means.repeat(256, 1)
    loss = HSMLoss(sde)
    assert loss(exact, x0, torch.Generator().manual_seed(0)).item() == pytest.approx(0.0, abs=1e-6)
    off_by_one = loss(lambda u, t: exact(u, t) - l_t(t), x0, torch.Generator().manual_seed(0)).item()
    assert off_by_one == pytest.approx(2.0, rel=1e-4)


def test_score_from_eps_is_the_mixed_score():
    sde = CLD()
    u = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.4)
    _, (_, _, svv) = sde.kernel(t)
    torch.testing.assert_close(sde.score_from_eps(torch.zeros(3, 1), u, t), -u[:, 1:] / svv[:, None].float())
    lt = 1 / sde.velocity_noise_scale(t)
    torch.testing.assert_close(sde.score_from_eps(torch.ones(3, 1), u, t) - sde.score_from_eps(torch.zeros(3, 1), u, t),
                               -lt[:, None].float())


@pytest.mark.parametrize("method", ["sscs", "cld-em"])
def test_cld_samplers_recover_mixture_weights_with_exact_score(method):
    sde = CLD()
    mix, x, result = _run(sde, method, steps=50)
    assert result.nfe == 51  # 50 steps + the denoising step
    weights = torch.bincount(mix.assign(x), minlength=3).double() / x.shape[0]
    assert (weights - mix.weights).abs().sum().item() < 0.06
    assert sliced_wasserstein(x, mix.sample(x.shape[0], torch.Generator().manual_seed(9))[0]) < 0.05


def test_sscs_at_least_as_accurate_as_euler_maruyama_at_low_nfe():
    sde = CLD()
    distances = {}
    for method in ("sscs", "cld-em"):
        mix, x, result = _run(sde, method, steps=20)
        distances[method] = sliced_wasserstein(x, mix.sample(x.shape[0], torch.Generator().manual_seed(9))[0])
    assert distances["sscs"] <= distances["cld-em"], distances


def test_cld_samplers_apply_only_to_cld():
    mix = _mixture()
    with pytest.raises(ValueError, match="sampler: method 'sscs' does not apply"):
        sample(GBM(), lambda x, t: x, torch.ones(2, 2), method="sscs", steps=2)
    with pytest.raises(ValueError, match="sampler: method 'em' does not apply"):
        sample(CLD(), mixture_velocity_score(CLD(), mix), torch.zeros(2, 4), method="em", steps=2)
    with pytest.raises(ValueError, match="grid"):
        sample(CLD(), mixture_velocity_score(CLD(), mix), torch.zeros(2, 4), method="sscs", steps=2, grid="cubic")


def test_cld_refuses_hyperparameters_off_critical_damping():
    with pytest.raises(ValueError, match="sde.Gamma"):
        CLD(Gamma=2.0)
    with pytest.raises(ValueError, match="sde.Gamma"):
        make_sde("cld", mass_inv=1.0, Gamma=1.0)
    with pytest.raises(ValueError, match="sde.critical"):
        make_sde("cld", critical=False)
    with pytest.raises(ValueError, match="sde.beta"):
        CLD(beta=-1.0)
    with pytest.raises(ValueError, match="CLD state"):
        CLD().drift_diffusion(torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="z: CLD noise"):
        CLD().perturb(torch.zeros(2, 1), torch.ones(2), torch.zeros(2, 1))
