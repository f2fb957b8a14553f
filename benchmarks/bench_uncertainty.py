"""Cost of the intervals and FID_inf against the cost of the Inception features they come from, at each N a
config uses (200: default, 1,000, 10,000: paper), on synthetic 2048-d features.

For each N: seconds of ``half_sample_intervals`` (``--draws`` halves) and, where it applies (N >= 4096), of
FID_inf; against the seconds the real TF-Inception extractor spends on N generated 28x28 images (timed on
``--feature-images`` images on this machine and scaled linearly). Where a full run at N would take longer
than ``--budget-s``, the per-draw time of a few draws is measured and scaled to all draws; the JSON says
which figures are measured and which scaled. Also the Gram-form FID against scipy's matrix-square-root FID
at the smallest N (value and seconds). Usage:

    python benchmarks/bench_uncertainty.py [--n 200 1000 10000] [--draws 100] [--out FILE]
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
from gbm.metrics.uncertainty import (
    DEFAULT_INF_DRAWS,
    FeaturePair,
    fid_inf_applies,
    fid_infinity,
    frechet_distance,
    half_sample_intervals,
    inf_sizes,
)


def scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(root).real)


def features_seconds_per_image(images: int) -> float:
    """Seconds per 28x28 image of the real TF-Inception extractor on the CPU (after one warm-up batch)."""
    from gbm.metrics.features import extract_features

    batch = np.random.default_rng(0).integers(0, 256, (images, 1, 28, 28), dtype=np.uint8)
    extract_features(batch[:8], device="cpu")
    began = time.perf_counter()
    extract_features(batch, device="cpu")
    return (time.perf_counter() - began) / images


def timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def synthetic(n: int, dim: int, rng) -> tuple[np.ndarray, np.ndarray]:
    scales = rng.gamma(1.0, 1.0, size=dim)
    return rng.normal(size=(n, dim)) * scales + 1.0, rng.normal(size=(n, dim)) * scales * 1.1 + 1.05


def one_n(n: int, dim: int, draws: int, budget_s: float, per_image_s: float, rng) -> dict:
    real, fake = synthetic(n, dim, rng)
    row = {"n": n, "features_s": per_image_s * n, "features": "scaled from the timed images"}
    if n // 2 <= dim:  # the Gram form: cheap enough to run whole
        row["intervals_s"] = timed(lambda: half_sample_intervals(real, fake, draws=draws))
        row["intervals"] = "measured"
    else:  # (d x d) eigenproblems: time a few draws, scale to all
        few = 2
        row["intervals_s"] = timed(lambda: half_sample_intervals(real, fake, draws=few)) * draws / few
        row["intervals"] = f"{few} draws timed, scaled to {draws}"
    if fid_inf_applies(n, dim):
        sizes = inf_sizes(n)
        pair = FeaturePair(real, fake)
        probe = np.argsort(rng.random((1, n)), axis=1)[:, :sizes[-1]]
        per_fid = timed(lambda: pair.fid(probe, probe))
        row["fid_inf_s"] = per_fid * len(sizes) * DEFAULT_INF_DRAWS
        row["fid_inf"] = f"one subset FID at n = {sizes[-1]} timed, scaled to {len(sizes)} sizes x {DEFAULT_INF_DRAWS}"
        if row["fid_inf_s"] < budget_s:
            row["fid_inf_s"], row["fid_inf"] = timed(lambda: fid_infinity(real, fake)), "measured"
    else:
        row["fid_inf_s"], row["fid_inf"] = 0.0, "not computed (N < 2 d)"
    row["metrics_over_features"] = (row["intervals_s"] + row["fid_inf_s"]) / row["features_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[200, 1000, 10000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--feature-images", type=int, default=24)
    parser.add_argument("--budget-s", type=float, default=120.0, help="longest FID_inf run measured whole")
    parser.add_argument("--out", default="results/benchmarks/uncertainty.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    per_image = features_seconds_per_image(args.feature_images)
    real, fake = synthetic(min(args.n), args.dim, rng)
    gram_s = timed(lambda: frechet_distance(real, fake))
    scipy_s = timed(lambda: scipy_fid(real, fake))
    gram, reference = frechet_distance(real, fake), scipy_fid(real, fake)
    rows = [one_n(n, args.dim, args.draws, args.budget_s, per_image, rng) for n in args.n]
    result = {"dim": args.dim, "draws": args.draws, "features_s_per_image": per_image, "by_n": rows,
              "gram_fid_s": gram_s, "scipy_sqrtm_fid_s": scipy_s, "gram_fid": gram, "scipy_fid": reference,
              "relative_difference": abs(gram - reference) / reference, "torch_threads": torch.get_num_threads(),
              "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "machine": platform.platform(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    write_text_atomic(Path(args.out), json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(f"N = {row['n']:>6}: features {row['features_s']:8.1f} s, intervals {row['intervals_s']:8.1f} s "
              f"({row['intervals']}), FID_inf {row['fid_inf_s']:8.1f} s ({row['fid_inf']}); "
              f"metrics/features = {row['metrics_over_features']:.3f}")


if __name__ == "__main__":
    main()
