"""Beta diffusion (gbm.methods.beta): forward marginal, KLUB, the ancestral sampler with an exact x0 predictor,
per-image seeding, bad input, and a tiny train + sample through the command line."""

import json
import math

import numpy as np
import pytest
import torch
import yaml
from torch.distributions import Beta, kl_divergence

from gbm.cli import main
from gbm.config import config_from_dict
from gbm.methods import get_method
from gbm.methods.beta import BetaDiffusion, KLUBLoss, kl_beta, logit_beta
from gbm.sampling import sample
from gbm.seeding import PerSampleGenerator
from gbm.training import prepare
from helpers import noise_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def test_forward_marginal_matches_simulated_forward_chain():
    """The chain ``z_t = z_s pi``, ``pi ~ Beta(eta alpha_t x0, eta (alpha_s - alpha_t) x0)`` started from the
    marginal at t = 0, and the module's own marginal draw, both have the closed-form Beta moments
    (mean ``alpha_t x0``, variance ``alpha_t x0 (1 - alpha_t x0) / (eta + 1)``) within 4.5 Monte Carlo SE."""
    torch.manual_seed(0)
    sde, n, x = BetaDiffusion(eta=200.0), 40000, 0.3
    x0 = sde.to_unit(torch.tensor(x, dtype=torch.float64))
    times = [0.0, 0.2, 0.4, 0.5, 0.6]
    alpha = [sde.alpha(torch.tensor(t)).item() for t in times]
    z = Beta(sde.eta * alpha[0] * x0, sde.eta * (1 - alpha[0] * x0)).sample((n,))
    for k in range(1, len(times)):
        z = z * Beta(sde.eta * alpha[k] * x0, sde.eta * (alpha[k - 1] - alpha[k]) * x0).sample((n,))
        mean, var = alpha[k] * x0, alpha[k] * x0 * (1 - alpha[k] * x0) / (sde.eta + 1)
        drawn = torch.sigmoid(sde.sample_logit(torch.full((n, 1), x, dtype=torch.float64), times[k]))
        for simulated in (z, drawn.flatten()):
            assert abs(simulated.mean() - mean) < 4.5 * math.sqrt(var / n), times[k]
            assert abs(simulated.var() - var) < 4.5 * var * math.sqrt(2 / n) * 2, times[k]  # x2: Beta kurtosis


def test_logit_beta_is_exact_for_tiny_shapes():
    """At t = 1 with the paper's eta the Beta shape is ~0.02 (z_T ~ exp(-50)): the logit draw keeps the exact
    moments ``E logit z = psi(a) - psi(b)``, ``Var = psi'(a) + psi'(b)`` (no underflow to -inf), within 4.5 SE."""
    torch.manual_seed(1)
    a, b, n = torch.full((40000,), 0.02, dtype=torch.float64), torch.full((40000,), 9999.98, dtype=torch.float64), 40000
    y = logit_beta(a, b)
    assert torch.isfinite(y).all()
    mean = torch.digamma(a[0]) - torch.digamma(b[0])
    var = torch.polygamma(1, a[0]) + torch.polygamma(1, b[0])
    assert abs(y.mean() - mean) < 4.5 * math.sqrt(var / n)
    assert abs(y.var() / var - 1) < 0.1


def test_kl_beta_equals_known_answers():
    """``KL(Beta(1,1) || Beta(2,1)) = 1 - ln 2`` exactly, and torch.distributions' KL on random parameters."""
    one = torch.tensor(1.0, dtype=torch.float64)
    assert kl_beta(one, one, 2 * one, one).item() == pytest.approx(1 - math.log(2), abs=1e-12)
    g = torch.Generator().manual_seed(0)
    p = torch.rand(4, 20, generator=g, dtype=torch.float64) * 50 + 0.01
    expected = kl_divergence(Beta(p[0], p[1]), Beta(p[2], p[3]))
    assert torch.allclose(kl_beta(*p), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("objective", ["klub", "elbo"])
def test_klub_equals_its_closed_form_and_is_minimised_by_the_true_x0(objective):
    """The loss's per-pixel value is ``0.99 KL_cond + 0.01 KL_marg`` with the Beta parameters of the paper
    (checked against torch.distributions' KL, arguments model-first for KLUB, data-first for -ELBO); it is 0 at
    ``x0_hat = x0`` and larger at every other prediction on a grid."""
    sde = BetaDiffusion()
    loss = KLUBLoss(sde, objective=objective)
    t, x, x_hat = 0.3, torch.tensor([[0.2]], dtype=torch.float64), torch.tensor([[-0.4]], dtype=torch.float64)
    a_t, a_s = sde.alpha(torch.tensor(t)).item(), sde.alpha(torch.tensor(0.95 * t)).item()
    x0, h = sde.to_unit(x), sde.to_unit(x_hat)
    eta = sde.eta
    cond_model, cond_data = Beta(eta * (a_s - a_t) * h, eta * (1 - a_s * h)), Beta(eta * (a_s - a_t) * x0, eta * (1 - a_s * x0))
    marg_model, marg_data = Beta(eta * a_t * h, eta * (1 - a_t * h)), Beta(eta * a_t * x0, eta * (1 - a_t * x0))
    pair = (lambda m, d: kl_divergence(m, d)) if objective == "klub" else (lambda m, d: kl_divergence(d, m))
    expected = 0.99 * pair(cond_model, cond_data) + 0.01 * pair(marg_model, marg_data)
    got = loss.divergence(x, x_hat, torch.tensor([t]))
    assert torch.allclose(got, expected, rtol=1e-6)  # lgamma of ~1e4 in float64
    grid = torch.linspace(-1, 1, 201, dtype=torch.float64).reshape(-1, 1)
    values = loss.divergence(torch.full_like(grid, 0.2), grid, torch.full((201,), t)).flatten()
    assert values.argmin().item() == 120 and values.min().item() == pytest.approx(0.0, abs=1e-9)
    assert (values[torch.arange(201) != 120] > 0).all()


def _point_mass_mixture_x0(sde, atoms, weights):
    """The exact ``E[x0 | z_t]`` (data space) of a mixture of point masses at ``atoms`` (data space)."""
    atoms64, log_w = torch.tensor(atoms, dtype=torch.float64), torch.tensor(weights, dtype=torch.float64).log()

    def x0_fn(y, t):
        a, b = sde.marginal_params(atoms64.reshape(1, -1).expand(y.shape[0], -1), t)  # (B, K)
        y64 = y.double().reshape(y.shape[0], -1, 1)  # (B, P, 1)
        log_z, log_1mz = torch.nn.functional.logsigmoid(y64), torch.nn.functional.logsigmoid(-y64)
        a, b = a.unsqueeze(1), b.unsqueeze(1)
        log_pdf = (a - 1) * log_z + (b - 1) * log_1mz - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
        posterior = torch.softmax(log_w + log_pdf, dim=-1)
        return (posterior * atoms64).sum(-1).reshape(y.shape).to(y.dtype)

    return x0_fn


def test_sampler_with_exact_x0_recovers_a_point_mass_mixture_and_stays_in_range():
    """From the prior, 100 ancestral steps with the exact x0 predictor of a 3-atom mixture (paper's eta and
    schedule) give the mixture weights within 0.03 (~3.5 binomial SE at N = 2000), the mean within 0.03 and the
    std within 0.03 (data in [-1, 1]); every value lands in [-1, 1], every state is finite (z in (0, 1))
    and NFE = steps."""
    atoms, weights, n, steps = [-0.6, 0.2, 0.8], [0.2, 0.5, 0.3], 2000, 100
    base = BetaDiffusion()
    sde = BetaDiffusion(prior_mean=float(base.to_unit(torch.tensor(np.dot(atoms, weights)))))
    y_T = sde.prior_sample((n, 1, 1, 1))
    result = sample(sde, _point_mass_mixture_x0(sde, atoms, weights), y_T, method="beta", steps=steps,
                    generator=torch.Generator().manual_seed(0))
    x = result.x.flatten().double()
    assert result.nfe == steps and bool(result.nonfinite.any()) is False
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    nearest = (x.reshape(-1, 1) - torch.tensor(atoms, dtype=torch.float64)).abs().argmin(dim=1)
    for j, w in enumerate(weights):
        assert abs((nearest == j).double().mean().item() - w) < 0.03, j
    mean = float(np.dot(atoms, weights))
    std = math.sqrt(float(np.dot(weights, (np.array(atoms) - mean) ** 2)))
    assert abs(x.mean().item() - mean) < 0.03 and abs(x.std().item() - std) < 0.03


def test_sampler_with_exact_x0_recovers_a_mixture_of_beta_distributions_and_stays_in_range():
    """Data x = 2u - 1 with u ~ 0.3 Beta(3, 12) + 0.7 Beta(10, 3): its E[x0 | z_t] by quadrature over 400
    midpoints of u (the posterior of the discretised density; moments within ~1e-5 of the continuous one's).
    From the prior, 100 ancestral steps give the first component's share (samples below u = 0.45, expected
    from the Beta CDFs) within 0.03, mean and std within 0.03, every value in [-1, 1]."""
    from scipy.special import betainc
    from scipy.stats import beta as beta_dist

    parts, n, steps, k = [(0.3, 3.0, 12.0), (0.7, 10.0, 3.0)], 2000, 100, 400
    u = (np.arange(k) + 0.5) / k
    density = sum(w * beta_dist.pdf(u, a, b) for w, a, b in parts)
    atoms, weights = list(2 * u - 1), list(density / density.sum())
    mean_u = sum(w * a / (a + b) for w, a, b in parts)
    second_u = sum(w * a * (a + 1) / ((a + b) * (a + b + 1)) for w, a, b in parts)
    mean, std = 2 * mean_u - 1, 2 * math.sqrt(second_u - mean_u ** 2)
    below = sum(w * betainc(a, b, 0.45) for w, a, b in parts)  # P(u < 0.45), about 0.3
    base = BetaDiffusion()
    sde = BetaDiffusion(prior_mean=float(base.to_unit(torch.tensor(mean))))
    result = sample(sde, _point_mass_mixture_x0(sde, atoms, weights), sde.prior_sample((n, 1, 1, 1)),
                    method="beta", steps=steps, generator=torch.Generator().manual_seed(0))
    x = result.x.flatten().double()
    assert result.nfe == steps and bool(result.nonfinite.any()) is False
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert abs(((x + 1) / 2 < 0.45).double().mean().item() - below) < 0.03
    assert abs(x.mean().item() - mean) < 0.03 and abs(x.std().item() - std) < 0.03


def test_image_i_depends_on_seed_i_alone():
    """The start (``Method.start``) and every Beta draw of the sampler come from image i's own seed: image 2 is
    bitwise the same alone, in a batch of four and in a batch in another order."""
    method, sde = get_method("beta"), BetaDiffusion()
    x0_fn = _point_mass_mixture_x0(sde, [-0.5, 0.5], [0.5, 0.5])

    def run(seeds):
        generator = PerSampleGenerator(seeds)
        x_T = method.start(sde, {}, None, {}, (len(seeds), 1, 2, 2), generator, "cpu")
        return sample(sde, x0_fn, x_T, method="beta", steps=6, generator=generator).x

    alone, batch, shuffled = run([2]), run([0, 1, 2, 3]), run([7, 2])
    assert torch.equal(alone[0], batch[2]) and torch.equal(alone[0], shuffled[1])
    assert not torch.equal(batch[1], batch[2])


@pytest.mark.parametrize("params, key", [
    ({"shift": 0.7}, "sde.scale"),  # 0.7 + 0.39 > 1: eta (1 - alpha_t x0) <= 0 near t = 0
    ({"eta": 0.0}, "sde.eta"),
    ({"shift": -0.1}, "sde.shift"),
    ({"sigmoid_start": -13.0, "sigmoid_end": 10.0}, "sde.sigmoid_end"),
])
def test_constants_making_a_beta_parameter_non_positive_are_refused_naming_the_key(params, key):
    with pytest.raises(ValueError, match=f"^{key}:"):
        get_method("beta").make_sde(**params)


def test_data_outside_the_range_is_refused_before_training_naming_the_key():
    """Toy two-spirals points reach beyond [-1, 1]: ``prepare`` refuses them naming ``data`` (before any net is
    built); a bad loss option names ``loss.objective``."""
    raw = {"data": {"toy": "two_spirals", "n": 64}, "sde": {"name": "beta"}, "model": {"backbone": "mlp"},
           "train": {"steps": 1, "batch_size": 8}}
    with pytest.raises(ValueError, match=r"^data: beta diffusion models data in \[-1, 1\]"):
        prepare(config_from_dict(raw), "cpu")
    with pytest.raises(ValueError, match="^loss.objective:"):
        prepare(config_from_dict(raw | {"loss": {"objective": "l2"}}), "cpu")


def test_beta_trains_and_samples_through_the_command_line(tmp_path):
    """``gbm train`` with ``sde.name: beta`` on 32 synthetic 8x8 images (4 steps, tiny U-Net), then ``gbm sample
    --sampler beta``: uint8 images, NFE = steps, the fitted prior mean and the constants in model.pt."""
    data = noise_dataset(tmp_path / "data.npz")
    config = {"data": {"path": str(data)}, "sde": {"name": "beta"}, "model": {"size": "tiny"},
              "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    run, out = tmp_path / "run", tmp_path / "s.npz"
    assert main(["train", str(tmp_path / "train.yaml"), "--out", str(run), "--device", "cpu", "--no-progress"]) == 0
    record = torch.load(run / "model.pt", weights_only=True)
    assert record["sde_description"]["data_range"] == [0.6, 0.99] and record["sde_description"]["eta"] == 10000.0
    assert 0.6 <= record["sde"]["params"]["prior_mean"] <= 0.99 and record["loss"]["objective"] == "klub"
    assert main(["sample", str(run), "--sampler", "beta", "--steps", "3", "--n", "3", "--out", str(out),
                 "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
    with np.load(out) as samples:
        assert samples["images"].dtype == np.uint8 and samples["images"].shape == (3, 1, 8, 8)
    assert json.loads(out.with_suffix(".json").read_text())["nfe"] == 3
