"""Distances between two feature sets, whatever network made them (SPEC §8): FID, KID, precision/recall,
their half-sample intervals and FID_inf. ``gbm.metrics.scoring`` applies them to Inception features,
``gbm.metrics.domain`` to the domain classifier's; the protocol is described in ``gbm.metrics.scoring``."""

from __future__ import annotations

import contextlib
import io
from importlib.metadata import version

import numpy as np
import torch

from gbm.metrics.uncertainty import (
    DEFAULT_DRAWS,
    DEFAULT_LEVEL,
    fid_inf_applies,
    fid_infinity,
    frechet_distance,
    half_sample_intervals,
    normal_interval,
)


def metrics_from_features(
    real: np.ndarray,
    fake: np.ndarray,
    library: str = "torch-fidelity",
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prc_neighbourhood: int = 3,
    seed: int = 0,
    interval_draws: int = DEFAULT_DRAWS,
    interval_level: float = DEFAULT_LEVEL,
    feature_dim: int | None = 2048,
) -> dict:
    """FID, KID mean/std, precision, recall, their intervals and FID_inf from two feature arrays (N x 2048).

    Generic in the features: ``feature_dim`` None accepts any dimension d shared by both arrays (the domain
    classifier's features, ``gbm.metrics.domain``); the KID kernel is then ``(x·y/d + 1)^3``."""
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    dim = feature_dim or real.shape[-1]
    for what, features in (("real", real), ("fake", fake)):
        if features.ndim != 2 or features.shape[1] != dim or len(features) < 2:
            raise ValueError(f"{what} features: expected (N >= 2, {dim}), got {features.shape}")
        finite = np.isfinite(features).all(axis=1)
        if not finite.all():
            raise ValueError(f"{what} features: {int((~finite).sum())} of {len(features)} feature vectors contain NaN "
                             f"or infinity (first at row {int(np.argmin(finite))}); refusing to score them")
    if max(len(real), len(fake)) <= real.shape[1]:
        fid, fid_by = frechet_distance(real, fake), "Gram form (gbm.metrics.uncertainty), N <= feature dimension"
    elif library == "clean-fid":
        from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

        stats = _gaussian_fits(real, fake)
        fid = float(cleanfid_frechet_distance(stats[0]["mu"], stats[0]["sigma"], stats[1]["mu"], stats[1]["sigma"]))
        fid_by = f"Fréchet distance by {library}"
    else:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        stats = _gaussian_fits(real, fake)
        fid = fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"]
        fid_by = f"Fréchet distance by {library}"
    subset_size = min(kid_subset_size, len(real), len(fake))
    real_t, fake_t = torch.from_numpy(np.ascontiguousarray(real)), torch.from_numpy(np.ascontiguousarray(fake))
    with contextlib.redirect_stdout(io.StringIO()):
        kid = kid_features_to_metric(
            fake_t, real_t, kid_subsets=kid_subsets, kid_subset_size=subset_size, kid_kernel="poly",
            kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=seed, verbose=False,
        )
        prc = None
        if min(len(real), len(fake)) > prc_neighbourhood:
            prc = prc_features_to_metric(fake_t, real_t, prc_neighborhood=prc_neighbourhood, prc_batch_size=10000,
                                         save_cpu_ram=True, verbose=False)
    result = {
        "fid": fid,
        "kid_mean": kid["kernel_inception_distance_mean"],
        "kid_std": kid["kernel_inception_distance_std"],
        "precision": prc["precision"] if prc else None,
        "recall": prc["recall"] if prc else None,
        "n_real": len(real),
        "n_fake": len(fake),
        "protocol": {
            "fid": fid_by,
            "kid": {"estimator": "unbiased MMD^2", "kernel": f"cubic polynomial (x.y/d + 1)^3, d = {dim}", "subsets": kid_subsets,
                    "subset_size": subset_size, "seed": seed, "implementation": f"torch-fidelity {version('torch_fidelity')}"},
            "precision_recall": {"method": "k-NN manifolds (Kynkaanniemi et al. 2019)", "k": prc_neighbourhood,
                                 "implementation": f"torch-fidelity {version('torch_fidelity')}"},
        },
    }
    if interval_draws:
        intervals = half_sample_intervals(real, fake, draws=interval_draws, level=interval_level, seed=seed)
        # centred on the KID printed (torch-fidelity's subset mean; the whole-set value when N <= subset size)
        intervals["kid_ci"] = normal_interval(result["kid_mean"], intervals["kid_se"], interval_level)
        intervals["protocol"]["kid_centre"] = result["kid_mean"]
        result["protocol"]["intervals"] = intervals.pop("protocol")
        result.update(intervals)
        n, dim = min(len(real), len(fake)), real.shape[1]
        if fid_inf_applies(n, dim):
            debiased = fid_infinity(real, fake, seed=seed)
            result["protocol"]["fid_inf"] = debiased.pop("protocol")
            result.update(debiased)
        else:
            result["fid_inf"] = None
            result["protocol"]["fid_inf"] = (f"not computed: FID is linear in 1/n only for subsets larger than the "
                                             f"feature dimension (n/2 >= {dim}, N >= {2 * dim}); N = {n}")
    return result


def _gaussian_fits(real: np.ndarray, fake: np.ndarray) -> list[dict]:
    return [{"mu": f.astype(np.float64).mean(0), "sigma": np.cov(f.astype(np.float64), rowvar=False)} for f in (real, fake)]
