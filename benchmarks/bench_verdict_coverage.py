"""Coverage of the verdict interval (gbm.metrics.seeds.compare: Welch's t interval over training seeds) by
simulation, at the seed counts configs use, with a true difference of 0.

Per-seed values are normal with the given seed standard deviations for candidate and baseline (equal, and
10x unequal as VP against GBM in the default benchmark). A second part adds the effect of the noise set a
seed's N images are drawn from, under both sampling protocols: every seed its own noise set (the pipeline's,
gbm.pipeline.config.noise_seed_start) and one noise set for every seed (the protocol before issue 26), with
the two arms' noise effects independent or correlated 0.9 (VP and the log-space control turn the same noise
into similar images). Writes JSON (default results/benchmarks/verdict_coverage.json) with each coverage and
its binomial standard error. Usage:

    python benchmarks/bench_verdict_coverage.py [--seeds 2 3 5] [--draws 10000] [--level 0.95] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

from gbm.data.atomic import write_text_atomic
from gbm.metrics.seeds import simulated_coverage

SPREADS = ((5.0, 5.0), (30.0, 30.0), (3.0, 30.0), (30.0, 3.0), (1.0, 10.0))
#: (training seed sd, noise set sd) per arm: comparable, the noise set dominant (Fashion-MNIST's seeds agreed
#: within 0.02-0.7 FID at one noise set while a noise set moved one evaluation by about 3), training dominant.
NOISE_SPREADS = (((3.0, 3.0), (3.0, 3.0)), ((0.5, 0.5), (3.0, 3.0)), ((3.0, 3.0), (0.5, 0.5)),
                 ((1.0, 3.0), (1.0, 3.0)))
NOISE_CORRELATIONS = (0.0, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--draws", type=int, default=10000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--out", default="results/benchmarks/verdict_coverage.json")
    args = parser.parse_args()
    began = time.perf_counter()
    rows = []
    for seeds in args.seeds:
        for spreads in SPREADS:
            coverage = simulated_coverage(seeds, spreads, draws=args.draws, level=args.level, seed=seeds)
            rows.append({"seeds_per_side": seeds, "candidate_sd": spreads[0], "baseline_sd": spreads[1],
                         "coverage": coverage, "binomial_se": math.sqrt(coverage * (1 - coverage) / args.draws)})
            print(f"{seeds} seeds, sd {spreads[0]:g} vs {spreads[1]:g}: coverage {coverage:.4f}")
    noise_rows = []
    for seeds in args.seeds:
        for spreads, noise in NOISE_SPREADS:
            for correlation in NOISE_CORRELATIONS:
                for per_seed in (True, False):
                    coverage = simulated_coverage(seeds, spreads, draws=args.draws, level=args.level, seed=seeds,
                                                  noise=noise, noise_per_seed=per_seed, noise_correlation=correlation)
                    protocol = "noise set per seed" if per_seed else "one noise set for every seed"
                    noise_rows.append({"seeds_per_side": seeds, "training_sd": list(spreads), "noise_sd": list(noise),
                                       "noise_correlation": correlation, "protocol": protocol, "coverage": coverage,
                                       "binomial_se": math.sqrt(coverage * (1 - coverage) / args.draws)})
                    print(f"{seeds} seeds, training sd {spreads}, noise sd {noise}, correlation {correlation:g}, "
                          f"{protocol}: coverage {coverage:.4f}")
    per_seed_rows = [r["coverage"] for r in noise_rows if r["protocol"] == "noise set per seed"]
    one_set_rows = [r["coverage"] for r in noise_rows if r["protocol"] != "noise set per seed"]
    result = {"interval": "Welch t over per-seed values (gbm.metrics.seeds.compare)", "level": args.level,
              "draws": args.draws, "true_difference": 0.0, "rows": rows,
              "min_coverage": min(r["coverage"] for r in rows), "max_coverage": max(r["coverage"] for r in rows),
              "noise_rows": noise_rows,
              "noise_per_seed_coverage": [min(per_seed_rows), max(per_seed_rows)],
              "one_noise_set_coverage": [min(one_set_rows), max(one_set_rows)],
              "seconds": time.perf_counter() - began, "machine": platform.platform()}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
