"""Uncertainty speed: bootstrap intervals and FID_inf at the default benchmark's size, on synthetic features.

Writes JSON (default results/benchmarks/uncertainty.json): seconds for ``draws`` bootstrap resamples of N
generated 2048-d features against N reference features (FID and KID), for FID_inf, and the Gram-form FID
against scipy's matrix-square-root FID on the same features (value and seconds). Usage:

    python benchmarks/bench_uncertainty.py [--n 200] [--dim 2048] [--draws 1000] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from gbm.data.atomic import write_text_atomic
from gbm.metrics.uncertainty import bootstrap, fid_infinity, frechet_distance


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(root).real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--out", default="results/benchmarks/uncertainty.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    scales = rng.gamma(1.0, 1.0, size=args.dim)
    real = rng.normal(size=(args.n, args.dim)) * scales + 1.0
    fake = rng.normal(size=(args.n, args.dim)) * scales * 1.1 + 1.05
    timings = {}
    began = time.perf_counter()
    gram = frechet_distance(real, fake)
    timings["gram_fid_s"] = time.perf_counter() - began
    began = time.perf_counter()
    reference = scipy_fid(real, fake)
    timings["scipy_sqrtm_fid_s"] = time.perf_counter() - began
    began = time.perf_counter()
    bootstrap(real, fake, draws=args.draws)
    timings["bootstrap_s"] = time.perf_counter() - began
    began = time.perf_counter()
    fid_infinity(real, fake)
    timings["fid_inf_s"] = time.perf_counter() - began
    result = {"n": args.n, "dim": args.dim, "draws": args.draws, **timings, "gram_fid": gram, "scipy_fid": reference,
              "relative_difference": abs(gram - reference) / reference, "torch_threads": torch.get_num_threads(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.platform(),
              "load_average": os.getloadavg()}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
