"""The probability-flow ODE's adaptive RK45 (gbm.ode): exact on a Gaussian, SciPy's controller per image, and
each image independent of its batch (SPEC §5, §8: image i from seed i alone)."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from gbm.methods.additive import VESDE, VPSDE
from gbm.ode import solve_per_sample
from gbm.sampling import sample
from toy_distributions import GaussianMixture

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def gaussian(dim: int, mean: float = 0.3, std: float = 0.5) -> GaussianMixture:
    return GaussianMixture(torch.ones(1, dtype=F64), torch.full((1, dim), mean, dtype=F64), torch.tensor([std], dtype=F64))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=10.0)], ids=["vp", "ve"])
def test_rk45_probability_flow_maps_gaussian_quantiles_exactly(sde):
    """For Gaussian data the flow is affine: ``x_end = a_e m + r_e (x_T - a_T m) / r_T``, ``r = sqrt(a^2 s^2 + std^2)``;
    from the end time the final noise-free reverse-diffusion step takes it to t = 0 (gbm.grids)."""
    data = gaussian(4)
    x_T = data.diffused(sde, sde.T).sample(64, torch.Generator().manual_seed(0))[0]
    result = sample(sde, data.stein_score(sde), x_T, method="ode", steps=1)
    (a_T, std_T), (a_e, std_e) = (sde.mean_coeff_std(torch.tensor(t, dtype=F64)) for t in (sde.T, sde.end_time))
    r_T, r_e = (torch.sqrt(a**2 * 0.25 + s**2) for a, s in ((a_T, std_T), (a_e, std_e)))
    exact = a_e * 0.3 + r_e * (x_T - a_T * 0.3) / r_T
    t_e = torch.full((64,), sde.end_time, dtype=F64)
    exact = exact - sde.reverse_drift(exact, t_e, data.stein_score(sde)(exact, t_e)) * sde.end_time
    assert (result.x - exact).abs().max().item() < 1e-4
    assert result.stats["error_control"] == "per image"


def test_rk45_takes_scipys_steps_for_one_image():
    """On one image the per-image controller is SciPy's RK45: same number of evaluations, same answer."""
    sde, data = VPSDE(), gaussian(3)
    score = data.stein_score(sde)
    x_T = data.diffused(sde, sde.T).sample(1, torch.Generator().manual_seed(1))[0]

    def rhs(y, t):
        return sde.probability_flow_drift(y, t, score(y, t))

    ours, evaluations = solve_per_sample(rhs, x_T, sde.T, sde.end_time, 1e-5, 1e-5)
    theirs = solve_ivp(lambda t, y: rhs(torch.from_numpy(y)[None], torch.tensor([t], dtype=F64))[0].numpy(),
                       (sde.T, sde.end_time), x_T[0].numpy(), method="RK45", rtol=1e-5, atol=1e-5)
    assert evaluations.item() == theirs.nfev
    np.testing.assert_allclose(ours[0].numpy(), theirs.y[:, -1], rtol=1e-9, atol=1e-9)


def test_each_rk45_image_is_independent_of_its_batch():
    """An image solved alone equals the same image solved beside images that need very different steps."""
    sde, data = VPSDE(), GaussianMixture(torch.tensor([0.5, 0.5], dtype=F64), torch.tensor([[-0.6] * 4, [0.6] * 4], dtype=F64),
                                         torch.tensor([0.02, 0.3], dtype=F64))
    x_T = data.diffused(sde, sde.T).sample(16, torch.Generator().manual_seed(2))[0]
    x_T[1:] *= 6.0  # far out in the prior's tails: stiff, large-drift trajectories
    score = data.stein_score(sde)
    batch = sample(sde, score, x_T, method="ode", steps=1)
    alone = sample(sde, score, x_T[:1], method="ode", steps=1)
    assert batch.stats["nfe_per_image_max"] > alone.stats["nfe_per_image_max"]  # the batch-mates did need other steps
    assert torch.equal(batch.x[:1], alone.x)


def test_rk45_refuses_a_time_grid():
    with pytest.raises(ValueError, match="^grid:"):
        sample(VPSDE(), gaussian(2).stein_score(VPSDE()), torch.zeros(2, 2, dtype=F64), method="ode", steps=1,
               grid="sqrt-t")
