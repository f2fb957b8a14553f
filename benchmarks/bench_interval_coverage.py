"""Does the printed FID interval (gbm.metrics.uncertainty.half_sample_intervals) cover what it claims?

Gaussian features (d, N as given; N < d like 200 Inception features of 2048-d), a fixed reference set, and
``--reps`` independent generated sets: the FID's true standard deviation over those sets, against the mean
half-sample standard error and, for contrast, the with-replacement bootstrap's standard deviation (what the
intervals used before); and the share of ``fid ± z se`` intervals that contain the expected FID at this N
(the mean over the sets). Writes JSON (default results/benchmarks/interval_coverage.json). Usage:

    python benchmarks/bench_interval_coverage.py [--cases 64x100 256x100 256x200] [--reps 60] [--draws 100]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from gbm.data.atomic import write_text_atomic
from gbm.metrics.uncertainty import FeaturePair, half_sample_intervals


def one_case(dim: int, n: int, reps: int, draws: int, level: float, rng) -> dict:
    mixing = np.eye(dim) + 0.3 * rng.normal(size=(dim, dim)) / np.sqrt(dim)
    reference = rng.normal(size=(n, dim))
    fids, half_ses, boot_sds, intervals = [], [], [], []
    for rep in range(reps):
        fake = rng.normal(size=(n, dim)) @ mixing + 0.2
        result = half_sample_intervals(reference, fake, draws=draws, level=level, seed=rep)
        fids.append(result["protocol"]["fid_centre"])
        half_ses.append(result["fid_se"])
        intervals.append(result["fid_ci"])
        resamples = np.random.default_rng(rep).integers(0, n, (draws, n))
        boot_sds.append(float(FeaturePair(reference, fake).fid(np.tile(np.arange(n), (draws, 1)), resamples).std(ddof=1)))
    fids = np.asarray(fids)
    expected = float(fids.mean())
    return {"dim": dim, "n": n, "reps": reps, "true_sd": float(fids.std(ddof=1)),
            "half_sample_se_mean": float(np.mean(half_ses)), "bootstrap_sd_mean": float(np.mean(boot_sds)),
            "coverage_of_expected_fid": float(np.mean([lo <= expected <= hi for lo, hi in intervals]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["64x100", "256x100", "256x200"], help="DIMxN")
    parser.add_argument("--reps", type=int, default=60)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--out", default="results/benchmarks/interval_coverage.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    began = time.perf_counter()
    rows = []
    for case in args.cases:
        dim, n = (int(v) for v in case.split("x"))
        rows.append(one_case(dim, n, args.reps, args.draws, args.level, rng))
        print(json.dumps(rows[-1]))
    result = {"level": args.level, "draws": args.draws, "rows": rows, "seconds": time.perf_counter() - began,
              "machine": platform.platform()}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
