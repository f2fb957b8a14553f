"""Closed-form kernel discriminator guidance (SPEC §7, a reconstruction): gradient, effect, bad input."""

import pytest
import torch

from gbm.methods.cld import CLD
from gbm.guidance import (
    GuidanceOptions,
    bank_from_images,
    critic_gradient,
    guided_from_options,
    guided_score_fn,
    memorisation_check,
)
from gbm.sampling import sample
from gbm.methods.additive import VPSDE
from gbm.methods.gbm import GBM
from gbm.toy import GaussianMixture, LogNormalMixture, mixture_velocity_score

D64 = torch.float64


def _mixture(weights):
    return GaussianMixture(torch.tensor(weights, dtype=D64), torch.tensor([[0.2, 0.5], [0.7, 0.0]], dtype=D64),
                           torch.tensor([0.08, 0.08], dtype=D64))


TRUE, WRONG = _mixture([0.5, 0.5]), _mixture([0.85, 0.15])  # the biased score believes WRONG


def _weight_error(mixture, x):
    estimate = torch.bincount(mixture.assign(x), minlength=2).double() / x.shape[0]
    return (estimate - mixture.weights).abs().sum().item()


def _critic(x, particles, bank, kernel, bandwidth):
    """``D(x)`` written out directly, to differentiate with autograd."""
    n = x.shape[1]
    psi = {
        "polyharmonic": (lambda r: r) if n % 2 else (lambda r: r.log()),
        "gaussian": lambda r: -torch.exp(-0.5 * (r / bandwidth) ** 2),
        "imq": lambda r: -(r**2 + bandwidth**2).rsqrt(),
    }[kernel]
    own = torch.cdist(x, particles)
    mask = torch.ones_like(own).fill_diagonal_(0.0)
    return (psi(own.clamp_min(1e-30)) * mask).sum(1) / particles.shape[0] - psi(torch.cdist(x, bank)).mean(1)


@pytest.mark.parametrize("kernel", ["polyharmonic", "gaussian", "imq"])
@pytest.mark.parametrize("dimension", [2, 3])
def test_closed_form_critic_gradient_matches_autograd(kernel, dimension):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, dimension, generator=g, dtype=D64)
    bank = torch.randn(11, dimension, generator=g, dtype=D64) + 0.5
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(_critic(leaf, x, bank, kernel, 0.7).sum(), leaf)
    torch.testing.assert_close(critic_gradient(x, bank, kernel, bandwidth=0.7), expected)


def test_critic_gradient_pulls_toward_the_bank():
    x = torch.zeros(1, 2, dtype=D64)
    bank = torch.tensor([[3.0, 0.0], [3.0, 0.5]], dtype=D64)
    assert critic_gradient(x, bank)[0, 0] > 0


def test_guidance_corrects_a_biased_gbm_score_under_dale_langevin():
    sde = GBM()
    true, wrong = LogNormalMixture(TRUE), LogNormalMixture(WRONG)
    bank = true.sample(256, torch.Generator().manual_seed(2))[0]
    x_T = wrong.diffused(sde, sde.T).sample(300, torch.Generator().manual_seed(3))[0]
    errors = {}
    for weight in (0.0, 30.0):
        score = guided_score_fn(sde, wrong.hyvarinen_score(sde), bank, weight=weight)
        x = sample(sde, score, x_T, method="dale-langevin", steps=50, generator=torch.Generator().manual_seed(4)).x
        errors[weight] = _weight_error(true.log_mixture, x.log())
    assert errors[0.0] > 0.5  # the biased score really is biased
    assert errors[30.0] < 0.5 * errors[0.0], errors


@pytest.mark.parametrize("sde, method", [(VPSDE(), "em"), (CLD(), "sscs")])
def test_guidance_corrects_a_biased_additive_score(sde, method):
    bank = TRUE.sample(256, torch.Generator().manual_seed(2))[0]
    if isinstance(sde, CLD):
        biased, state = mixture_velocity_score(sde, WRONG), 4
    else:
        biased, state = WRONG.stein_score(sde), 2
    x_T = sde.prior_sample((300, state), noise=torch.randn(300, state, generator=torch.Generator().manual_seed(3),
                                                           dtype=D64))
    errors = {}
    for weight in (0.0, 30.0):
        score = guided_score_fn(sde, biased, bank, weight=weight)
        x = sample(sde, score, x_T, method=method, steps=50, generator=torch.Generator().manual_seed(4)).x
        errors[weight] = _weight_error(TRUE, sde.positions(x) if isinstance(sde, CLD) else x)
    assert errors[0.0] > 0.5
    assert errors[30.0] < 0.5 * errors[0.0], errors


def test_gbm_guidance_enters_the_stein_score_before_the_multiply_by_x():
    """``h + x * w grad D_t(x)`` with the bank noised by GBM's kernel (noise from ``seed``)."""
    sde = GBM()
    score = LogNormalMixture(WRONG).hyvarinen_score(sde)
    bank = LogNormalMixture(TRUE).sample(16, torch.Generator().manual_seed(0))[0]
    x, t = 3.0 * LogNormalMixture(WRONG).sample(6, torch.Generator().manual_seed(1))[0], torch.full((6,), 0.4, dtype=D64)
    noise = torch.randn(16, 2, generator=torch.Generator().manual_seed(5), dtype=D64)
    bank_t = sde.perturb(bank, torch.full((16,), 0.4, dtype=D64), noise)
    guided = guided_score_fn(sde, score, bank, weight=2.0, seed=5)(x, t)
    torch.testing.assert_close(guided - score(x, t), x * 2.0 * critic_gradient(x, bank_t))


def test_without_repulsion_each_particle_depends_on_itself_only():
    bank = TRUE.sample(32, torch.Generator().manual_seed(0))[0]
    x = WRONG.sample(8, torch.Generator().manual_seed(1))[0]
    for kernel in ("polyharmonic", "gaussian"):
        alone = torch.cat([critic_gradient(x[i:i + 1], bank, kernel, repel=False) for i in range(8)])
        torch.testing.assert_close(critic_gradient(x, bank, kernel, repel=False), alone)


def test_guidance_options_build_a_bank_from_uint8_images():
    images = torch.randint(0, 256, (20, 1, 2, 2), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    sde = GBM()
    score = guided_from_options(sde, lambda x, t: torch.zeros_like(x), images, {"bank_size": 8, "weight": 1.0})
    x = torch.full((3, 1, 2, 2), 1.5)
    assert torch.isfinite(score(x, torch.full((3,), 0.5))).all()
    assert bank_from_images(images, sde, 8).min() >= 1.0  # GBM's positive data space


def test_zero_weight_leaves_the_score_unchanged():
    sde = VPSDE()
    score = WRONG.stein_score(sde)
    x, t = torch.randn(5, 2, dtype=D64), torch.full((5,), 0.3, dtype=D64)
    torch.testing.assert_close(guided_score_fn(sde, score, TRUE.sample(8)[0], weight=0.0)(x, t), score(x, t))


def test_memorisation_check_flags_copies_of_the_bank():
    bank = TRUE.sample(64, torch.Generator().manual_seed(0))[0]
    fresh = TRUE.sample(64, torch.Generator().manual_seed(1))[0]
    report = memorisation_check(bank[:32] + 1e-6, fresh, bank)
    assert report["fraction_copies_guided"] == 1.0
    assert report["fraction_copies_unguided"] < 0.2
    assert report["ratio_guided_to_unguided"] < 0.01


def test_guidance_refuses_bad_input_naming_the_field():
    sde, score = VPSDE(), WRONG.stein_score(VPSDE())
    x, t = torch.randn(4, 2, dtype=D64), torch.full((4,), 0.5, dtype=D64)
    with pytest.raises(ValueError, match="guidance.bank: the bank of real samples is empty"):
        guided_score_fn(sde, score, torch.empty(0, 2))
    with pytest.raises(ValueError, match="guidance.bank: samples of shape"):
        guided_score_fn(sde, score, torch.zeros(5, 3))(x, t)
    with pytest.raises(ValueError, match="guidance.bank: samples of shape"):
        guided_score_fn(CLD(), score, torch.zeros(5, 2))(torch.zeros(4, 2), t)  # CLD bank holds x only
    with pytest.raises(ValueError, match="guidance.bank"):
        guided_score_fn(GBM(), score, torch.zeros(5, 2))  # not positive
    with pytest.raises(ValueError, match="guidance.kernel"):
        guided_score_fn(sde, score, torch.zeros(5, 2), kernel="laplace")
    with pytest.raises(ValueError, match="guidance.schedule"):
        GuidanceOptions(schedule="cosine")
    with pytest.raises(ValueError, match="guidance.weight"):
        GuidanceOptions(weight=-1.0)
    with pytest.raises(ValueError, match="guidance: unknown option"):
        GuidanceOptions.from_dict({"wieght": 1.0})
    with pytest.raises(ValueError, match="guidance.bank_size"):
        bank_from_images(torch.zeros(3, 1, 2, 2, dtype=torch.uint8), sde, size=4)
