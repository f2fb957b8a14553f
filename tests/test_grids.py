"""Named time grids (gbm.grids): their shapes, their closed forms, and exact-score samplers converging under
each; a sqrt-t grid needs fewer steps than a uniform one for GBM (SPEC §1a)."""

import math

import pytest
import torch

from gbm.grids import GRIDS, RHO, time_grid
from gbm.methods.additive import SubVPSDE, VESDE, VPSDE
from gbm.methods.cld import CLD
from gbm.methods.gbm import GBM
from gbm.sampling import sample
from toy_distributions import GaussianMixture, LogNormalMixture

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")
SDES = [GBM(), GBM(sigma=0.5, T=2.0), VPSDE(), SubVPSDE(), VESDE(), CLD()]
SDE_IDS = ["gbm", "gbm-sigma0.5-T2", "vp", "subvp", "ve", "cld"]


def grid_end(sde, grid: str) -> float | None:
    """The default end time, except for GBM's rho grid, which needs a positive noise scale at its end."""
    return 1e-3 if grid == "rho" and sde.name == "gbm" else None


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("end_time", ["default", 0.01])
def test_each_grid_decreases_strictly_from_T_to_the_configured_end_time(sde, grid, end_time):
    end = grid_end(sde, grid) if end_time == "default" else end_time
    for steps in (1, 7, 200):
        times = time_grid(sde, steps, grid, end)
        assert times.dtype == F64 and times.shape == (steps + 1,)
        assert times[0].item() == sde.T
        assert times[-1].item() == (sde.end_time if end is None else end)
        assert (times[1:] < times[:-1]).all(), times


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_each_grid_has_its_closed_form(sde):
    steps, end = 8, 0.01
    i = torch.arange(steps + 1, dtype=F64) / steps
    uniform = time_grid(sde, steps, "uniform-t", end)
    torch.testing.assert_close(uniform.diff(), torch.full((steps,), -(sde.T - end) / steps, dtype=F64))
    root = time_grid(sde, steps, "sqrt-t", end).sqrt()
    torch.testing.assert_close(root.diff(), torch.full((steps,), (math.sqrt(end) - math.sqrt(sde.T)) / steps, dtype=F64))
    torch.testing.assert_close(time_grid(sde, steps, "quadratic", end), end + (sde.T - end) * (1 - i) ** 2)
    levels = sde.noise_scale(time_grid(sde, steps, "rho", end)) ** (1 / RHO)
    torch.testing.assert_close(levels.diff(), torch.full((steps,), (levels[-1] - levels[0]).item() / steps, dtype=F64))


@pytest.mark.parametrize("sde", SDES, ids=SDE_IDS)
def test_time_of_noise_scale_inverts_the_increasing_noise_scale(sde):
    t = torch.linspace(0.01, sde.T, 50, dtype=F64)
    scale = sde.noise_scale(t)
    assert (scale.diff() > 0).all()
    torch.testing.assert_close(sde.time_of_noise_scale(scale), t, rtol=1e-9, atol=1e-12)


def test_noise_scales_are_each_sdes_noise_to_signal_ratio():
    t = torch.tensor([0.1, 0.5, 1.0], dtype=F64)
    torch.testing.assert_close(GBM(sigma=0.8).noise_scale(t), 0.8 * t.sqrt())
    alpha, std = VPSDE().mean_coeff_std(t)
    torch.testing.assert_close(VPSDE().noise_scale(t), std / alpha)
    torch.testing.assert_close(VESDE().noise_scale(t), VESDE().sigma(t))


def test_cld_default_grid_is_still_quadratic():
    sde, steps = CLD(), 10
    expected = sde.end_time + (sde.T - sde.end_time) * torch.linspace(1, 0, steps + 1, dtype=F64) ** 2
    assert torch.equal(time_grid(sde, steps, "quadratic"), expected)


@pytest.mark.parametrize("call,field", [
    (lambda: time_grid(GBM(), 4, "cubic"), "grid"),
    (lambda: time_grid(GBM(), 4, "uniform-t", end_time=1.0), "end_time"),
    (lambda: time_grid(GBM(), 4, "uniform-t", end_time=-0.1), "end_time"),
    (lambda: time_grid(GBM(), 4, "rho"), "end_time"),  # GBM's default end 0 has noise scale 0
])
def test_bad_grid_requests_name_the_field(call, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        call()


# --- exact-score samplers under each grid -------------------------------------------------------


def narrow_lognormal_mixture() -> LogNormalMixture:
    """Two log-normal modes whose log-stds (0.1, 0.15) make the score steep at small t."""
    means = torch.tensor([[-0.5], [0.5]], dtype=F64)
    return LogNormalMixture(GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), means, torch.tensor([0.1, 0.15], dtype=F64)))


def gbm_log_moment_error(method: str, grid: str, steps: int, n: int = 10_000) -> float:
    """Log-moment error of a GBM sampler's output from the exact x_T with the exact Hyvärinen score, plus the
    fraction of samples whose sign flipped (the sign-agnostic sampler's failure mode)."""
    mixture, sde = narrow_lognormal_mixture(), GBM()
    g = torch.Generator().manual_seed(0)
    x_T, _ = mixture.diffused(sde, sde.T).sample(n, g)
    result = sample(sde, mixture.hyvarinen_score(sde), x_T, method=method, steps=steps, generator=g, grid=grid,
                    end_time=grid_end(sde, grid))
    return mixture.log_moment_error(result.x.abs()) + (result.x <= 0).double().mean().item()


@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("method", ["dale-langevin", "sign-agnostic"])
def test_exact_score_gbm_samplers_converge_under_each_grid(method, grid):
    coarse, fine = gbm_log_moment_error(method, grid, 4), gbm_log_moment_error(method, grid, 64)
    assert fine < 0.015 and coarse > 3 * fine, (coarse, fine)


@pytest.mark.slow
@pytest.mark.parametrize("grid", sorted(GRIDS))
@pytest.mark.parametrize("sde,method", [(VPSDE(), "em"), (VESDE(), "em"), (CLD(), "sscs")], ids=["vp-em", "ve-em", "cld-sscs"])
def test_exact_score_additive_and_cld_samplers_converge_under_each_grid(sde, method, grid):
    dim = 16
    mixture = GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-0.5] * dim, [0.5] * dim], dtype=F64),
                              torch.tensor([0.1, 0.15], dtype=F64))

    def error(steps: int) -> float:
        g = torch.Generator().manual_seed(0)
        if sde.name == "cld":
            from toy_distributions import mixture_velocity_score

            x0, _ = mixture.sample(2000, g)
            u_T = sde.prior_sample((2000, 2 * dim), noise=torch.randn(2000, 2 * dim, generator=g, dtype=F64))
            x = sde.positions(sample(sde, mixture_velocity_score(sde, mixture), u_T, method=method, steps=steps,
                                     generator=g, grid=grid).x)
        else:
            x_T, _ = mixture.diffused(sde, sde.T).sample(2000, g)
            x = sample(sde, mixture.stein_score(sde), x_T, method=method, steps=steps, generator=g, grid=grid).x
        labels = mixture.assign(x)
        if not torch.isfinite(x).all() or min((labels == k).sum() for k in (0, 1)) < 2:
            return math.inf
        return abs((labels == 1).double().mean().item() - 0.7) + sum(
            (x[labels == k].std() / mixture.stds[k] - 1).abs().item() for k in (0, 1))

    coarse, fine = error(16), error(256)
    assert coarse > 2 * fine, (coarse, fine)


def steps_to_reach(grid: str, target: float) -> int:
    """Fewest steps (of 4, 8, ..., 128) at which Dale–Langevin reaches log-moment error ``target``."""
    for steps in (4, 8, 16, 32, 64, 128):
        if gbm_log_moment_error("dale-langevin", grid, steps) <= target:
            return steps
    return math.inf


def test_sqrt_t_grid_reaches_a_log_moment_error_in_fewer_steps_than_uniform_t_for_gbm():
    sqrt_steps, uniform_steps = steps_to_reach("sqrt-t", 0.015), steps_to_reach("uniform-t", 0.015)
    assert sqrt_steps < uniform_steps, (sqrt_steps, uniform_steps)


def test_benchmark_config_schema_offers_every_grid():
    from gbm.pipeline.config import load_schema

    assert load_schema()["$defs"]["options"]["properties"]["grid"]["enum"] == list(GRIDS)


def test_the_grid_figure_compares_grids_only_within_one_model_sampler_and_prior(tmp_path):
    import pandas as pd

    from gbm.reporting.figures import fid_vs_nfe_by_grid, grid_groups

    def row(method, sampler_method, grid, nfe, seed, guided=False, prior="iid"):
        return {"dataset": "mnist", "method": method, "sampler_method": sampler_method, "prior": prior,
                "grid": grid, "nfe": nfe, "seed": seed, "guided": guided, "fid": 100.0 + nfe + seed,
                "fid_ci_low": 90.0, "fid_ci_high": 110.0}

    rows = [row("gbm", "dale-langevin", grid, nfe, seed) for grid in ("uniform-t", "sqrt-t")
            for nfe in (20, 100) for seed in (0, 1)]
    rows += [row("gbm-tuned", "dale-langevin", "sqrt-t", 20, 0), row("vp", "em", "uniform-t", 20, 0),
             row("gbm", "dale-langevin", "rho", 20, 0, guided=True),
             row("gbm", "dale-langevin", "rho", 20, 0, prior="correlated")]
    groups = grid_groups(pd.DataFrame(rows))
    assert [key for key, _ in groups] == [("mnist", "gbm", "dale-langevin", "iid")]
    assert sorted(set(groups[0][1]["grid"])) == ["sqrt-t", "uniform-t"]
    fid_vs_nfe_by_grid(pd.DataFrame(rows), tmp_path / "grids.png")
    fid_vs_nfe_by_grid(pd.DataFrame(rows[-4:]), tmp_path / "none.png")  # nothing to compare: says so
    assert (tmp_path / "grids.png").stat().st_size > 0 and (tmp_path / "none.pdf").stat().st_size > 0


def test_figure_intervals_are_the_tables_seed_mean_intervals(tmp_path):
    import json

    import pandas as pd

    from gbm.reporting.figures import seed_mean_with_interval
    from gbm.reporting.tables import benchmark_table

    rows = []
    for seed, fid in ((0, 150.0), (1, 160.0)):
        path = tmp_path / f"seed{seed}"
        path.mkdir()
        (path / "metrics.json").write_text(json.dumps({"fid": fid}))
        rows.append({"dataset": "mnist", "method": "gbm", "sampler": "dale-langevin", "prior": "iid", "steps": 20,
                     "nfe": 20, "seed": seed, "n": 200, "reference_split": "test", "guided": False, "fid": fid,
                     "kid": 0.1, "fid_ci_low": fid - 6, "fid_ci_high": fid + 6, "kid_ci_low": 0.08,
                     "kid_ci_high": 0.12, "ci_level": 0.95, "path": str(path)})
    runs = pd.DataFrame(rows)
    table = benchmark_table(runs).iloc[0]
    stats = seed_mean_with_interval(runs, "fid").iloc[0]
    assert (stats["mean"], stats["low"], stats["high"]) == (155.0, table["fid_ci_low"], table["fid_ci_high"])
    half = 12.7062047 * 5.0  # t_{0.975, 1} x s / sqrt(2), s = 7.07: the t interval over two seeds
    assert (stats["low"], stats["high"]) == pytest.approx((155 - half, 155 + half), rel=1e-6)
    one_seed = seed_mean_with_interval(runs.iloc[:1], "fid").iloc[0]
    assert (one_seed["low"], one_seed["high"]) == (144.0, 156.0)  # that model's own interval over its samples


# --- the end of a grid: last network level at end_time, then the final update to t = 0 ----------------


def near_point_masses() -> LogNormalMixture:
    """Two log-normal modes of log-std 1e-3 (a pixel that is nearly constant in the data, like MNIST's
    background): any multiplicative noise left at the end shows as within-mode spread."""
    means = torch.tensor([[-0.3], [0.3]], dtype=F64)
    return LogNormalMixture(GaussianMixture(torch.tensor([0.4, 0.6], dtype=F64), means, torch.tensor([1e-3, 1e-3], dtype=F64)))


def within_mode_log_std_error(method: str, steps: int, grid: str, end_time: float | None) -> float:
    """Largest |std of log x within a mode - 1e-3| of an exact-score GBM sampler's output."""
    mixture, sde = near_point_masses(), GBM()
    g = torch.Generator().manual_seed(0)
    x_T, _ = mixture.diffused(sde, sde.T).sample(4000, g)
    x = sample(sde, mixture.hyvarinen_score(sde), x_T, method=method, steps=steps, generator=g, grid=grid,
               end_time=end_time).x
    y = x.abs().log().squeeze(1)
    return max(abs(y[(y > 0) == positive].std().item() - 1e-3) for positive in (False, True))


@pytest.mark.parametrize("method", ["dale-langevin", "sign-agnostic"])
def test_exact_score_gbm_sampler_on_the_sqrt_t_grid_ends_at_zero_without_residual_noise(method):
    # Stopping the state at end_time = 1e-3 would leave log-std sigma sqrt(1e-3) = 0.025 of noise at every
    # step count; the last network level at 1e-3 and the final update to 0 leave none, as on the uniform grid.
    errors = [within_mode_log_std_error(method, steps, "sqrt-t", 1e-3) for steps in (8, 64)]
    uniform = within_mode_log_std_error(method, 256, "uniform-t", None)
    assert errors[1] < 0.003 and errors[0] > 3 * errors[1] and uniform < 0.003, (errors, uniform)


@pytest.mark.parametrize("sde", [GBM(), VPSDE(), VESDE()], ids=["gbm", "vp", "ve"])
@pytest.mark.parametrize("grid", ["uniform-t", "sqrt-t"])
@pytest.mark.parametrize("end_time", [None, 1e-3])
def test_sampling_levels_are_the_grid_to_end_time_with_the_final_update_landing_at_zero(sde, grid, end_time):
    from gbm.grids import sampling_levels

    for steps in (1, 2, 20):
        levels, grid_times = sampling_levels(sde, steps, grid, end_time), time_grid(sde, steps, grid, end_time)
        assert torch.equal(levels[:-1], grid_times[:-1]) and levels[-1].item() == 0.0