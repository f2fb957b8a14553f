"""The log-space control (gbm.methods.logspace, issue 26): its state is the standardised log of GBM's positive
data, its forward marginal VP's in that state, its sampler with an exact score recovers a log-normal mixture,
its samples are positive before the pixel conversion, and it trains and samples through the command line.

The expected map ``y = 2 log2(x) - 1`` (log of GBM's [1, 2] onto [-1, 1]) and VP's closed form are written
out here, not taken from the module, so that a wrong constant there fails these tests."""

import json
import math

import numpy as np
import pytest
import torch
import yaml

from gbm import pixels
from gbm.cli import main
from gbm.methods import get_method
from gbm.data import load_prepared
from gbm.methods.additive import DSMLoss, VPSDE
from gbm.methods.gbm_priors import additive_prior_mismatch
from gbm.methods.logspace import LogSpaceDSMLoss, LogSpaceVPSDE
from gbm.reporting.prior_mismatch import mismatch_rows
from gbm.sampling import sample
from helpers import noise_dataset
from toy_distributions import GaussianMixture, LogNormalMixture

F64 = torch.float64
LOG2 = math.log(2.0)
pytestmark = pytest.mark.usefixtures("one_thread")


def expected_state(log_x):
    """``y = (log x - c) / h`` with ``c = h = log(2) / 2``: the log of [1, 2] onto [-1, 1]."""
    return 2 * log_x / LOG2 - 1


def vp_alpha_std(t: float, beta_min: float = 0.1, beta_max: float = 20.0) -> tuple[float, float]:
    """VP's kernel (SPEC §5): ``alpha = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)``, ``std^2 = 1 - alpha^2``."""
    alpha = math.exp(-0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min)
    return alpha, math.sqrt(1 - alpha**2)


def test_the_state_of_the_pixel_range_is_minus_one_to_one_and_samples_invert_it():
    sde = LogSpaceVPSDE()
    x = pixels.to_positive(torch.tensor([0, 51, 255], dtype=torch.uint8))
    y = sde.initial_state(x)
    assert torch.allclose(y, expected_state(x.log()), atol=1e-6)
    assert y[0].item() == pytest.approx(-1.0, abs=1e-6) and y[-1].item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(sde.positions(y), x, atol=1e-6)


def test_forward_marginal_of_log_x_matches_the_vp_closed_form_by_simulation():
    """From ``x_0 = 1.3``, 20,000 paths of the forward SDE (Euler–Maruyama with the SDE's own drift and diffusion,
    2,000 steps on [0, 1]) and the closed-form draw ``perturb`` both give ``log x_t`` with the mean
    ``c + alpha_t (log x_0 - c)`` and std ``h std_t`` (``c = h = log(2)/2``) of VP's kernel within 4.5 Monte Carlo
    SE (plus 1 % of the std for the discretisation), at t = 0.1, 0.3, 0.6 and 1."""
    torch.manual_seed(0)
    sde, n, steps, x0 = LogSpaceVPSDE(), 20000, 2000, 1.3
    c = h = LOG2 / 2
    y = sde.initial_state(torch.full((n, 1), x0, dtype=F64))
    checks, dt = {200: 0.1, 600: 0.3, 1200: 0.6, 2000: 1.0}, 1.0 / steps
    for k in range(1, steps + 1):
        t = torch.full((n,), (k - 1) * dt, dtype=F64)
        f, g = sde.drift_diffusion(y, t)
        y = y + f * dt + g * math.sqrt(dt) * torch.randn_like(y)
        if k in checks:
            tt = checks[k]
            alpha, std = vp_alpha_std(tt)
            mean, sd = c + alpha * (math.log(x0) - c), h * std
            drawn = sde.perturb(sde.initial_state(torch.full((n, 1), x0, dtype=F64)), torch.full((n,), tt, dtype=F64),
                                torch.randn(n, 1, dtype=F64))
            for what, state in (("simulated", y), ("perturb", drawn)):
                log_x = sde.positions(state).log().flatten()
                assert abs(log_x.mean().item() - mean) < 4.5 * sd / math.sqrt(n) + 0.01 * sd, (what, tt)
                assert abs(log_x.std().item() / sd - 1) < 4.5 * math.sqrt(0.5 / n) + 0.01, (what, tt)


def lognormal_mixture(dim: int = 2) -> LogNormalMixture:
    """Data in [1, 2]: ``log x ~ 0.3 N(0.1, 0.05^2) + 0.7 N(0.55, 0.04^2)`` per coordinate."""
    return LogNormalMixture(GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64),
                                            torch.tensor([[0.1] * dim, [0.55] * dim], dtype=F64),
                                            torch.tensor([0.05, 0.04], dtype=F64)))


def state_mixture(mixture: LogNormalMixture) -> GaussianMixture:
    """The same distribution in the state ``y = 2 log2(x) - 1``: a Gaussian mixture, its VP score closed form."""
    log = mixture.log_mixture
    return GaussianMixture(log.weights, expected_state(log.means), 2 * log.stds / LOG2)


def sample_with_exact_score(mixture: LogNormalMixture, sampler: str, steps: int, n: int, seed: int = 0):
    """The method's own prior (``Method.start``) and sampler with the exact state score; samples and result."""
    method, sde = get_method("logvp"), LogSpaceVPSDE()
    generator = torch.Generator().manual_seed(seed)
    dim = mixture.log_mixture.means.shape[1]
    y_T = method.start(sde, {}, None, {}, (n, dim), generator, "cpu")
    result = sample(sde, state_mixture(mixture).stein_score(sde), y_T, method=sampler, steps=steps, generator=generator)
    return sde.positions(result.x).double(), result


@pytest.mark.parametrize("sampler, dim", [("em", 2), ("pc", 64)])
def test_sampler_with_exact_score_recovers_a_lognormal_mixture(sampler, dim):
    """From the N(0, I) prior, 100 levels of the generic sampler with the exact VP score of the state mixture
    (in 64 dimensions for pc, whose Langevin step uses each sample's own score norm: test_sampling.py):
    10,000 samples, mapped back by exp, have the second component's share within 0.02 (~4.4 binomial SE) and
    the per-coordinate mean and std of ``log x`` within 0.01 (data log-std 0.21); NFE as the sampler declares."""
    mixture = lognormal_mixture(dim)
    x, result = sample_with_exact_score(mixture, sampler, steps=100, n=10000)
    assert result.nfe == {"em": 100, "pc": 200}[sampler]
    assert (x > 0).all()
    assert abs((mixture.assign(x) == 1).double().mean().item() - 0.7) < 0.02
    assert mixture.log_moment_error(x) < 0.01, mixture.log_moment_error(x)


def test_samples_are_positive_before_the_pixel_conversion():
    """With the exact score of data whose log sits at the bottom of the range (``log x ~ N(0, 0.05^2)``: half of
    it below x = 1, pixel value 0), every sample is strictly positive and some lie below 1: positivity comes
    from exp, before ``gbm.pixels.from_positive`` clamps them to [1, 2]. Any state the float32 exp can
    represent, down to y = -200, maps to a positive value."""
    low = LogNormalMixture(GaussianMixture(torch.tensor([1.0], dtype=F64), torch.tensor([[0.0, 0.0]], dtype=F64),
                                           torch.tensor([0.05], dtype=F64)))
    x, _ = sample_with_exact_score(low, "em", steps=50, n=2000)
    assert (x > 0).all() and 0.3 < (x < 1).double().mean().item() < 0.7
    images, clamped = pixels.from_positive(x.float())
    assert images.dtype == torch.uint8 and clamped == pytest.approx((x < 1).double().mean().item(), abs=1e-6)
    extreme = LogSpaceVPSDE().positions(torch.linspace(-200, 200, 4001))
    assert (extreme > 0).all() and torch.isfinite(extreme).all()


def test_loss_is_vp_dsm_on_the_log_state():
    """``LogSpaceDSMLoss`` on positive data equals VP's DSM on the state ``2 log2(x) - 1`` (same times and noise)."""
    g = torch.Generator().manual_seed(3)
    x0 = 1 + torch.rand(16, 1, 4, 4, generator=g)

    def score_fn(x, t):
        return -x * (1 + t.reshape(-1, 1, 1, 1))

    ours = LogSpaceDSMLoss(LogSpaceVPSDE())(score_fn, x0, torch.Generator().manual_seed(1))
    vp = DSMLoss(VPSDE())(score_fn, expected_state(x0.log()), torch.Generator().manual_seed(1))
    assert torch.allclose(ours, vp, rtol=1e-5)


def test_non_positive_data_and_guidance_are_refused_naming_the_key():
    check = get_method("logvp").check_data
    with pytest.raises(ValueError, match="^data: the log-space control models strictly positive data"):
        check(torch.tensor([1.0, 0.0]), "data")
    with pytest.raises(ValueError, match="^guidance.bank:"):
        check(torch.tensor([1.5]), "guidance.bank")
    check(torch.tensor([-3.0, 2.0]), "x_T")  # a start is a log-space state: any finite value


def test_its_prior_mismatch_row_is_in_the_state_and_not_a_paper_setting(tmp_path):
    """VP's N(0, I) against p_T of the held-out images (the last 32) in the state ``2 log2(x) - 1``: the same
    Fréchet distance as VP's own diagnostic on that state, small (VP keeps 0.7 % of the signal at T), and marked
    as no paper's setting."""
    data = noise_dataset(tmp_path / "data.npz", n_train=64)
    (row,) = mismatch_rows(data, {"logvp-control": {"name": "logvp", "sde": {}}}, held_out=32)
    assert row["method"] == "logvp-control" and row["prior"] == "fixed" and row["paper"] is False
    held = torch.from_numpy(load_prepared(data).images("train")[32:])
    expected = additive_prior_mismatch(VPSDE(), expected_state(pixels.to_positive(held).log()))
    assert row["frechet"] == pytest.approx(expected["frechet"], rel=1e-6) and row["relative_frechet"] < 1e-3


def test_logvp_trains_and_samples_through_the_command_line(tmp_path):
    """``gbm train`` with ``sde.name: logvp`` on 32 synthetic 8x8 images (4 steps, tiny U-Net), then ``gbm sample``
    with ``em`` and ``pc``: uint8 images, NFE as declared, and the control's label in model.pt and samples.json."""
    data = noise_dataset(tmp_path / "data.npz")
    config = {"data": {"path": str(data)}, "sde": {"name": "logvp"}, "model": {"size": "tiny"},
              "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1}}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "train.yaml"), "--out", str(run), "--device", "cpu", "--no-progress"]) == 0
    record = torch.load(run / "model.pt", weights_only=True)
    assert record["sde"]["name"] == "logvp" and record["data"]["space"] == "positive"
    assert "control" in record["sde_description"]["label"]
    for sampler, steps, nfe in (("em", 3, 3), ("pc", 20, 40)):  # pc: 20 steps keep 1 - beta dt positive
        out = tmp_path / f"{sampler}.npz"
        assert main(["sample", str(run), "--sampler", sampler, "--steps", str(steps), "--n", "3", "--out", str(out),
                     "--batch-size", "2", "--device", "cpu", "--no-progress"]) == 0
        with np.load(out) as samples:
            assert samples["images"].dtype == np.uint8 and samples["images"].shape == (3, 1, 8, 8)
        stats = json.loads(out.with_suffix(".json").read_text())
        assert stats["nfe"] == nfe and "not a published method" in stats["sde"]["label"]
