"""Samplers recover known distributions when given their exact scores (SPEC §3, §5)."""

import math

import pytest
import torch

from gbm.sampling import sample
from gbm.methods.additive import VESDE, VPSDE
from gbm.methods.gbm import GBM
from gbm.seeding import PerSampleGenerator
from toy_distributions import GaussianMixture, LogNormalMixture

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
N = 20_000


def lognormal_mixture(dim: int, weights=(0.3, 0.7)) -> LogNormalMixture:
    means = torch.tensor([[-0.5] * dim, [0.8] * dim], dtype=F64)
    return LogNormalMixture(GaussianMixture(torch.tensor(weights, dtype=F64), means, torch.tensor([0.2, 0.25], dtype=F64)))


def gaussian_mixture(dim: int) -> GaussianMixture:
    means = torch.tensor([[-0.5] * dim, [0.5] * dim], dtype=F64)
    return GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), means, torch.tensor([0.2, 0.3], dtype=F64))


def gbm_errors(method: str, mixture: LogNormalMixture, steps: int, seed: int = 0) -> dict:
    """Run a GBM sampler from the exact x_T with the exact score; errors against the data distribution."""
    sde = GBM()
    g = torch.Generator().manual_seed(seed)
    x_T, _ = mixture.diffused(sde, sde.T).sample(N, g)
    result = sample(sde, mixture.hyvarinen_score(sde), x_T.float(), method=method, steps=steps, generator=g)
    x = result.x.double()
    positive = (x > 0).all(dim=1)
    y = x[positive].log()
    weight = (mixture.assign(x[positive]) == 1).double().mean().item()
    w, m, s = mixture.log_mixture.weights[:, None], mixture.log_mixture.means, mixture.log_mixture.stds[:, None]
    exact_mean = (w * m).sum(0)
    exact_std = ((w * (s**2 + m**2)).sum(0) - exact_mean**2).sqrt()
    return {
        "weight": abs(weight - mixture.log_mixture.weights[1].item()),
        "log_mean": (y.mean(0) - exact_mean).abs().max().item(),
        "log_std": (y.std(0) - exact_std).abs().max().item(),
        "result": result,
    }


def total(errors: dict) -> float:
    return errors["weight"] + errors["log_mean"] + errors["log_std"]


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("method", ["sign-agnostic", "dale-langevin"])
def test_gbm_sampler_recovers_lognormal_mixture_with_exact_score(method, dim):
    fine = gbm_errors(method, lognormal_mixture(dim), steps=200)
    assert fine["weight"] < 0.02, fine
    assert fine["log_mean"] < 0.02 and fine["log_std"] < 0.02, fine
    assert fine["result"].nfe == 200
    coarse = gbm_errors(method, lognormal_mixture(dim), steps=4)
    assert total(coarse) > 2 * total(fine), (coarse, fine)


@pytest.mark.parametrize("method", ["sign-agnostic", "dale-langevin"])
def test_gbm_sampler_recovers_single_lognormal(method):
    single = lognormal_mixture(1, weights=(1e-9, 1.0))
    errors = gbm_errors(method, single, steps=200)
    assert errors["log_mean"] < 0.02 and errors["log_std"] < 0.02, errors


def test_dale_langevin_stays_positive_where_sign_agnostic_flips_signs():
    mixture = lognormal_mixture(2)
    dale = gbm_errors("dale-langevin", mixture, steps=4)["result"]
    agnostic = gbm_errors("sign-agnostic", mixture, steps=4)["result"]
    assert (dale.x > 0).all()
    assert dale.stats["fraction_negative"] == 0.0
    fraction = (agnostic.x < 0).float().mean().item()
    assert fraction > 0.001  # coarse steps do flip signs ...
    assert agnostic.stats["fraction_negative"] == pytest.approx(fraction)  # ... and the sampler says how often


def additive_errors(sde, method: str, steps: int, dim: int = 32, n: int = 4000, **options) -> dict:
    mixture = gaussian_mixture(dim)
    g = torch.Generator().manual_seed(0)
    x_T, _ = mixture.diffused(sde, sde.T).sample(n, g)
    result = sample(sde, mixture.stein_score(sde), x_T.float(), method=method, steps=steps, generator=g, **options)
    labels = mixture.assign(result.x.double())
    x = result.x.double()
    errors = {"weight": abs((labels == 1).double().mean().item() - 0.7), "std": math.inf, "mean": math.inf,
              "nfe": result.nfe}
    if torch.isfinite(x).all() and min((labels == k).sum() for k in (0, 1)) > 1:
        errors["std"] = max(abs(x[labels == k].std().item() / mixture.stds[k].item() - 1) for k in (0, 1))
        errors["mean"] = max((x[labels == k].mean(0) - mixture.means[k]).abs().max().item() for k in (0, 1))
    return errors


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("method", ["em", "pc", "ode"])
def test_additive_sampler_recovers_gaussian_mixture_with_exact_score(sde, method):
    # PC sizes its Langevin steps from each sample's own score norm: that concentrates only in high dimension
    errors = additive_errors(sde, method, steps=200, dim=64 if method == "pc" else 16)
    assert errors["weight"] < 0.02, errors
    assert errors["std"] < 0.06 and errors["mean"] < 0.05, errors
    assert errors["nfe"] == {"em": 200, "pc": 400}.get(method, errors["nfe"])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("method,options", [("em", {}), ("ode", {"solver": "heun"})])
def test_additive_sampler_error_shrinks_with_more_steps(sde, method, options):
    coarse = additive_errors(sde, method, steps=5, dim=8, **options)
    fine = additive_errors(sde, method, steps=200, dim=8, **options)
    assert coarse["std"] + coarse["mean"] > 2 * (fine["std"] + fine["mean"]), (coarse, fine)


def test_probability_flow_rk45_tolerance_controls_error():
    loose = additive_errors(VPSDE(), "ode", steps=1, dim=8, rtol=1e-1, atol=1e-1)
    tight = additive_errors(VPSDE(), "ode", steps=1, dim=8)
    assert tight["nfe"] > loose["nfe"]
    assert loose["std"] + loose["mean"] > tight["std"] + tight["mean"], (loose, tight)


def test_practical_variant_counts_network_calls_and_reduces_to_exact_variant():
    sde = GBM()
    mixture = lognormal_mixture(2)
    score = mixture.hyvarinen_score(sde)
    x_T = mixture.diffused(sde, 1.0).sample(64, torch.Generator().manual_seed(0))[0].float()
    tuned = sample(sde, score, x_T, method="dale-langevin", steps=20, generator=torch.Generator().manual_seed(1),
                   delta=2.1e-4, inner_steps=3, gamma=0.995, final_denoise_steps=5)
    assert tuned.nfe == 20 * 3 + 5
    exact = sample(sde, score, x_T, method="dale-langevin", steps=20, generator=torch.Generator().manual_seed(1))
    explicit = sample(sde, score, x_T, method="dale-langevin", steps=20, generator=torch.Generator().manual_seed(1),
                      delta=1 / 20, inner_steps=1, gamma=1.0)
    torch.testing.assert_close(exact.x, explicit.x, rtol=1e-6, atol=0)


@pytest.mark.parametrize("method,sde", [("sign-agnostic", GBM()), ("dale-langevin", GBM()), ("em", VPSDE()),
                                        ("pc", VESDE())])
def test_image_depends_only_on_its_own_seed(method, sde):
    mixture = lognormal_mixture(16) if isinstance(sde, GBM) else gaussian_mixture(16)
    score = mixture.hyvarinen_score(sde) if isinstance(sde, GBM) else mixture.stein_score(sde)

    def run(seeds):
        generator = PerSampleGenerator(seeds)
        x_T = sde.prior_sample((len(seeds), 16), noise=generator.randn((16,)))
        return sample(sde, score, x_T, method=method, steps=10, generator=generator).x

    batch = run([0, 1, 2, 3, 4, 5])
    alone = run([4, 2])
    torch.testing.assert_close(alone, batch[[4, 2]], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(batch[0], batch[1])


@pytest.mark.parametrize(
    "call,field",
    [
        (dict(method="dale-langevn"), "sampler"),
        (dict(method="em"), "does not apply"),
        (dict(method="dale-langevin", steps=0), "steps"),
        (dict(method="dale-langevin", steps=2.5), "steps"),
        (dict(method="dale-langevin", stepsize=0.1), "stepsize"),
        (dict(method="dale-langevin", x_T=-torch.ones(4, 2)), "x_T"),
        (dict(method="dale-langevin", delta=-1.0), "delta"),
    ],
)
def test_bad_requests_fail_before_any_work_naming_the_field(call, field):
    calls = []

    def score(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    request = dict(x_T=torch.ones(4, 2), steps=5) | call
    with pytest.raises(ValueError, match=field):
        sample(GBM(), score, request.pop("x_T"), **request)
    assert not calls

