"""Time grids and M-DSM weightings (issue 16), as JSON: (1) with the exact score of a log-normal mixture, the
log-moment error of GBM's samplers against the number of steps, per grid; (2) the cost of each option: building
each grid, one sampler step under each grid, one M-DSM loss evaluation under each weighting.

The error is ``LogNormalMixture.log_moment_error`` of ``|x|`` plus the fraction of samples whose sign flipped
(the sign-agnostic sampler's failure mode); the Monte-Carlo floor at ``--n`` samples is about ``1 / sqrt(n)``.

    python benchmarks/bench_grids.py --out results/bench/grids.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gbm.grids import GRIDS, time_grid
from gbm.methods.gbm import GBM, MDSMLoss
from gbm.methods.gbm_loss_weights import WEIGHTINGS
from gbm.runs import environment_record
from gbm.sampling import sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from toy_distributions import GaussianMixture, LogNormalMixture  # noqa: E402  (test helpers: exact scores)

F64 = torch.float64


def mixture(log_std: float) -> LogNormalMixture:
    """Two log-normal modes at log-means -0.5 and 0.5 (weights 0.3, 0.7), log-stds ``log_std`` and 1.5 of it."""
    return LogNormalMixture(GaussianMixture(torch.tensor([0.3, 0.7], dtype=F64), torch.tensor([[-0.5], [0.5]], dtype=F64),
                                            torch.tensor([log_std, 1.5 * log_std], dtype=F64)))


def end_time_of(grid: str, end_time: float | None) -> float | None:
    """GBM's rho grid needs an end time with a positive noise scale."""
    return 1e-3 if grid == "rho" and end_time is None else end_time


def error_table(method: str, log_std: float, n: int, steps_list, end_time) -> dict:
    sde, data = GBM(), mixture(log_std)
    table = {}
    for grid in GRIDS:
        row = {}
        for steps in steps_list:
            g = torch.Generator().manual_seed(0)
            x_T, _ = data.diffused(sde, sde.T).sample(n, g)
            x = sample(sde, data.hyvarinen_score(sde), x_T, method=method, steps=steps, generator=g, grid=grid,
                       end_time=end_time_of(grid, end_time)).x
            row[steps] = data.log_moment_error(x.abs()) + (x <= 0).double().mean().item()
        table[grid] = row
    return table


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def costs(repeats: int) -> dict:
    sde = GBM()
    x = 1 + torch.rand(256, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    free_score = lambda x, t: torch.full_like(x, -1.0)  # noqa: E731 - a score that costs nothing: the sampler alone
    out = {"grid_build_s": {}, "sampler_step_s": {}, "mdsm_loss_s": {}}
    for grid in GRIDS:
        end = end_time_of(grid, None)
        out["grid_build_s"][grid] = _median_time(lambda: time_grid(sde, 1000, grid, end), repeats)
        out["sampler_step_s"][grid] = _median_time(
            lambda: sample(sde, free_score, x, method="dale-langevin", steps=20, grid=grid, end_time=end), repeats) / 20
    for weighting in WEIGHTINGS:
        loss = MDSMLoss(sde, weighting=weighting)
        out["mdsm_loss_s"][weighting] = _median_time(lambda: loss(free_score, x, torch.Generator().manual_seed(0)),
                                                     repeats)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_000, help="samples per sampler run")
    parser.add_argument("--log-std", type=float, default=0.1, help="log-std of the narrower mode")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--end-time", type=float, default=None, help="sampler end time (default GBM's, 0)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="results/bench/grids.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {
        "what": "GBM exact-score log-moment error vs steps per time grid; cost of each grid and M-DSM weighting",
        "n": args.n, "log_std": args.log_std, "end_time": args.end_time,
        "log_moment_error": {m: error_table(m, args.log_std, args.n, args.steps, args.end_time)
                             for m in ("dale-langevin", "sign-agnostic")},
        "cost": costs(args.repeats),
        "environment": environment_record(torch.device("cpu")),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("log_moment_error", "cost")}, indent=1))


if __name__ == "__main__":
    main()
