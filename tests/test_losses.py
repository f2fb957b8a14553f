"""Losses against their closed forms, and the paper's M-DSM = M-ESM + const theorem (SPEC §2, §5)."""

import math

import pytest
import torch

from gbm.methods import get_method
from gbm.methods.additive import DSMLoss, VESDE, VPSDE
from gbm.methods.gbm import GBM, MDSMLoss
from toy_distributions import GaussianMixture, LogNormalMixture

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def chunked(loss, score_fn, x0, chunks: int, seed: int):
    """Loss on ``chunks`` equal chunks with a fixed seed per chunk: (mean, standard error)."""
    values = torch.stack([loss(score_fn, part, torch.Generator().manual_seed(seed + i))
                          for i, part in enumerate(x0.chunk(chunks))])
    return values.mean().item(), values.std().item() / math.sqrt(chunks)


def test_mdsm_of_exact_score_matches_closed_form_for_lognormal_data():
    """For log x0 ~ N(m, s0^2): E lambda ||h_t - target||^2 = s0^2 sigma^2 t / (s0^2 + sigma^2 t) per pixel."""
    sde, s0, levels = GBM(), 0.3, 1000
    x0 = (0.2 + s0 * torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)).exp()
    marginal = LogNormalMixture(GaussianMixture(torch.ones(1, dtype=F64), torch.tensor([[0.2]], dtype=F64),
                                                torch.tensor([s0], dtype=F64)))

    def exact_score(x, t):  # the marginal Hyvärinen score, per sample time
        v = s0**2 + sde.sigma**2 * t[:, None]
        return -(x.log() - 0.2 - sde.log_drift * t[:, None]) / v - 1

    measured, error = chunked(MDSMLoss(sde, levels), exact_score, x0, 20, seed=1)
    t = torch.arange(1, levels, dtype=F64) / levels
    closed = (s0**2 * sde.sigma**2 * t / (s0**2 + sde.sigma**2 * t)).mean().item()
    assert measured == pytest.approx(closed, abs=4 * error + 1e-4)
    assert marginal.hyvarinen_score(sde)(x0[:4], torch.full((4,), 0.5, dtype=F64)).allclose(
        exact_score(x0[:4], torch.full((4,), 0.5, dtype=F64)))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_dsm_of_exact_score_matches_closed_form_for_gaussian_data(sde):
    """For x0 ~ N(0, s0^2): E std^2 ||s_t - target||^2 = E_t alpha^2 s0^2 / (alpha^2 s0^2 + std^2)."""
    s0 = 0.5
    x0 = s0 * torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)

    def exact_score(x, t):
        alpha, std = sde.mean_coeff_std(t[:, None])
        return -x / (alpha**2 * s0**2 + std**2)

    loss = DSMLoss(sde)
    measured, error = chunked(loss, exact_score, x0, 20, seed=1)
    t = torch.linspace(loss.eps, sde.T, 100_001, dtype=F64)
    alpha, std = sde.mean_coeff_std(t)
    closed = (alpha**2 * s0**2 / (alpha**2 * s0**2 + std**2)).mean().item()
    assert measured == pytest.approx(closed, abs=4 * error + 1e-4)


def test_mdsm_uses_one_time_for_noise_and_weight():
    """A network that outputs exactly the conditional target has zero M-DSM loss: t is shared."""
    sde, loss = GBM(), MDSMLoss(GBM(), 1000)
    x0 = 1 + torch.rand(16, 1, 4, 4)
    seen = {}

    def oracle(x_t, t):
        seen["t"] = t
        return -1 - (x_t / x0).log().div(sde.sigma**2 * t[:, None, None, None])

    assert loss(oracle, x0, torch.Generator().manual_seed(3)).item() == pytest.approx(0.0, abs=1e-6)
    assert ((seen["t"] * 1000).round() - seen["t"] * 1000).abs().max() < 1e-3  # on the k/N grid


def test_each_method_declares_its_loss_and_refuses_options_of_another():
    assert isinstance(get_method("gbm").make_loss(GBM()), MDSMLoss)
    assert isinstance(get_method("vp").make_loss(VPSDE()), DSMLoss)
    with pytest.raises(ValueError, match="loss.likelihood_weighting: unknown config key for method 'gbm'"):
        get_method("gbm").make_loss(GBM(), likelihood_weighting=True)
    with pytest.raises(ValueError, match="num_levels"):
        MDSMLoss(GBM(), num_levels=1)
