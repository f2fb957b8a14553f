"""Coverage of the verdict interval (gbm.metrics.seeds.compare: Welch's t interval over training seeds) by
simulation, at the seed counts configs use, with a true difference of 0.

Per-seed values are normal with the given seed standard deviations for candidate and baseline (equal, and
10x unequal as VP against GBM in the default benchmark). Writes JSON (default
results/benchmarks/verdict_coverage.json) with each coverage and its binomial standard error. Usage:

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
    result = {"interval": "Welch t over per-seed values (gbm.metrics.seeds.compare)", "level": args.level,
              "draws": args.draws, "true_difference": 0.0, "rows": rows,
              "min_coverage": min(r["coverage"] for r in rows), "max_coverage": max(r["coverage"] for r in rows),
              "seconds": time.perf_counter() - began, "machine": platform.platform()}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
