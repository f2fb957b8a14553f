"""M-DSM loss weightings (gbm.methods.gbm_loss_weights, SPEC §2, §1a): each equals its closed form, gives
the known loss on cases with a known answer, and keeps the paper's M-DSM = M-ESM + const theorem."""

import math

import pytest
import torch

from gbm.methods import get_method
from gbm.methods.gbm import GBM, MDSMLoss, MESMLoss
from gbm.methods.gbm_loss_weights import WEIGHTINGS
from toy_distributions import GaussianMixture, LogNormalMixture

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
CLOSED_FORMS = {"paper": lambda s, t: (s**2 * t) ** 2, "uniform-eps": lambda s, t: s**2 * t}


def chunked(loss, score_fn, x0, chunks: int, seed: int):
    """Loss on ``chunks`` equal chunks with a fixed seed per chunk: (mean, standard error)."""
    values = torch.stack([loss(score_fn, part, torch.Generator().manual_seed(seed + i))
                          for i, part in enumerate(x0.chunk(chunks))])
    return values.mean().item(), values.std().item() / math.sqrt(chunks)


def test_every_weighting_has_a_closed_form_here():
    assert set(WEIGHTINGS) == set(CLOSED_FORMS)


@pytest.mark.parametrize("weighting", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("sigma", [0.8, 0.3])
def test_each_weighting_equals_its_closed_form(weighting, sigma):
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0, 2.0], dtype=F64)
    expected = CLOSED_FORMS[weighting](sigma, t)
    torch.testing.assert_close(WEIGHTINGS[weighting](sigma, t), expected)
    torch.testing.assert_close(MDSMLoss(GBM(sigma=sigma, T=2.0), weighting=weighting).weight(t), expected)


@pytest.mark.parametrize("weighting", sorted(CLOSED_FORMS))
def test_mdsm_of_a_constant_noise_prediction_matches_closed_form(weighting):
    """A net predicting eps = 0 has ``||h - target||^2 = ||z||^2 / (sigma^2 t)``: M-DSM is
    ``D E_t lambda(t) / (sigma^2 t)``, i.e. ``D`` (uniform-eps) or ``D sigma^2 E t = D sigma^2 T / 2`` (paper)."""
    sde, levels, pixels = GBM(), 1000, 4
    x0 = 1 + torch.rand(100_000, pixels, generator=torch.Generator().manual_seed(0), dtype=F64)

    def zero_eps(x, t):
        return sde.score_from_eps(torch.zeros_like(x), x, t)

    measured, error = chunked(MDSMLoss(sde, levels, weighting), zero_eps, x0, 20, seed=1)
    t = torch.arange(1, levels, dtype=F64) / levels
    closed = pixels * (CLOSED_FORMS[weighting](sde.sigma, t) / (sde.sigma**2 * t)).mean().item()
    assert measured == pytest.approx(closed, abs=4 * error + 1e-4)
    assert closed == pytest.approx(pixels if weighting == "uniform-eps" else pixels * sde.sigma**2 * sde.T / 2)


@pytest.mark.parametrize("weighting", sorted(CLOSED_FORMS))
def test_mdsm_of_exact_score_matches_closed_form_for_lognormal_data_under_each_weighting(weighting):
    """For log x0 ~ N(m, s0^2): E ||h_t - target||^2 = s0^2 / (sigma^2 t (s0^2 + sigma^2 t)) per pixel."""
    sde, s0, levels = GBM(), 0.3, 1000
    x0 = (0.2 + s0 * torch.randn(200_000, 1, generator=torch.Generator().manual_seed(0), dtype=F64)).exp()

    def exact_score(x, t):
        v = s0**2 + sde.sigma**2 * t[:, None]
        return -(x.log() - 0.2 - sde.log_drift * t[:, None]) / v - 1

    measured, error = chunked(MDSMLoss(sde, levels, weighting), exact_score, x0, 20, seed=1)
    t = torch.arange(1, levels, dtype=F64) / levels
    per_level = s0**2 / (sde.sigma**2 * t * (s0**2 + sde.sigma**2 * t))
    closed = (CLOSED_FORMS[weighting](sde.sigma, t) * per_level).mean().item()
    assert measured == pytest.approx(closed, rel=1e-2, abs=4 * error + 1e-4)


@pytest.mark.parametrize("weighting", sorted(CLOSED_FORMS))
def test_mdsm_minus_mesm_is_the_same_constant_for_any_score_function_under_each_weighting(weighting):
    """The paper's equivalence theorem under each weighting, by Monte Carlo with common random numbers."""
    sde = GBM()
    mixture = LogNormalMixture(GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64),
                                               torch.tensor([[0.1], [0.6]], dtype=F64), torch.tensor([0.1, 0.15], dtype=F64)))
    x0 = mixture.sample(100_000, torch.Generator().manual_seed(0))[0]
    true_score = mixture.hyvarinen_score(sde)

    def per_sample_true(x, t):  # the mixture's score takes one time per call: evaluate per distinct level
        out = torch.empty_like(x)
        for level in t.unique():
            rows = t == level
            out[rows] = true_score(x[rows], t[rows])
        return out

    candidates = {
        "true": per_sample_true,
        "constant": lambda x, t: torch.full_like(x, -1.0),
        "wrong": lambda x, t: 0.5 * per_sample_true(x, t) + torch.sin(3 * x.log()),
    }
    mdsm, mesm = MDSMLoss(sde, 50, weighting), MESMLoss(sde, per_sample_true, 50, weighting)
    gaps, losses = {}, {}
    for name, fn in candidates.items():
        d, _ = chunked(mdsm, fn, x0, 10, seed=7)
        e, _ = chunked(mesm, fn, x0, 10, seed=7)
        gaps[name], losses[name] = d - e, d
    spread = max(gaps.values()) - min(gaps.values())
    assert max(losses.values()) - min(losses.values()) > 0.1  # the candidates differ a lot ...
    assert spread < 0.02 * (max(losses.values()) - min(losses.values())), (gaps, losses)  # ... the gap does not
    assert gaps["true"] == pytest.approx(losses["true"])  # M-ESM of the true score is zero


def test_weighting_is_a_validated_loss_option_recorded_with_the_loss():
    loss = get_method("gbm").make_loss(GBM(), weighting="uniform-eps")
    assert loss.describe() == {"name": "MDSMLoss", "num_levels": 1000, "weighting": "uniform-eps"}
    assert get_method("gbm").make_loss(GBM()).weighting == "paper"  # the published weight by default
    with pytest.raises(ValueError, match="^loss.weighting: unknown M-DSM weighting 'likelihood'"):
        get_method("gbm").make_loss(GBM(), weighting="likelihood")
