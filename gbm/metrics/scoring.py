"""FID, KID and precision/recall of a generated set against a reference set (SPEC §8).

- FID: Fréchet distance between Gaussian fits of the 2048-d features. With N <= 2048 on both sides by the
  Gram form (``gbm.metrics.uncertainty.frechet_distance``: the trace term from an N x N eigenproblem, equal
  to the libraries' value to ~1e-6 relative, tested), since the libraries' 2048 x 2048 ``sqrtm`` costs
  tens of CPU seconds per score; with more images by the library that extracted them (torch-fidelity's
  ``fid_statistics_to_metric`` or clean-fid's ``frechet_distance``).
  Biased upward at small N: only equal-N numbers compare.
- KID: unbiased MMD² with the cubic polynomial kernel ``k(x, y) = (x·y / 2048 + 1)^3`` over ``kid_subsets``
  random subsets (seeded), by torch-fidelity's ``kid_features_to_metric`` (clean-fid reports no std).
  Subset size: ``min(kid_subset_size, n_real, n_fake)`` — the requested size (default 1000, the common
  choice) shrinks to the smaller set when fewer images exist, because a subset cannot exceed its set.
- Uncertainty (``gbm.metrics.uncertainty``): intervals ``fid_ci``/``kid_ci`` centred on the printed FID and
  KID, from their spread over random halves of the generated samples (reference fixed), and the N-debiased
  ``fid_inf`` (Chong & Forsyth 2020) where N allows it (N >= 2 x 2048; null with the reason below that), from
  the same features; ``interval_draws=0`` turns them off.
- Precision/recall: k-NN manifolds (Kynkäänniemi et al. 2019, k = ``prc_neighbourhood``, default 3), by
  torch-fidelity's ``prc_features_to_metric``; reported as null when a set has at most k images.
"""

from __future__ import annotations

import contextlib
import io
import time
from importlib.metadata import version

import numpy as np
import torch

from gbm.metrics.features import check_library, extract_features, extractor_description
from gbm.metrics.inputs import ImageSet, load_image_set
from gbm.metrics.reference import reference_features
from gbm.metrics.uncertainty import (
    DEFAULT_DRAWS,
    DEFAULT_LEVEL,
    check_interval_options,
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


def _as_set(value, what: str, split: str | None, allow_nonfinite: bool = False) -> ImageSet:
    if isinstance(value, ImageSet):
        return value
    if isinstance(value, (str, bytes)) or hasattr(value, "__fspath__"):
        return load_image_set(value, split, allow_nonfinite=allow_nonfinite)
    return ImageSet(np.asarray(value.cpu() if isinstance(value, torch.Tensor) else value), what)


def score(
    real,
    fake,
    *,
    n: int | None = None,
    library: str = "torch-fidelity",
    cleanfid_mode: str = "clean",
    real_split: str | None = None,
    device="auto",
    cache: bool = True,
    stats_dir=None,
    sid: bool = True,
    allow_nonfinite: bool = False,
    real_features: str | None = None,
    save_real_features: str | None = None,
    save_fake_features: str | None = None,
    classifier=None,
    progress: bool = False,
    **metric_options,
) -> dict:
    """Score ``fake`` against ``real`` (each: ImageSet, uint8 array (N, C, H, W), or a path spec).

    ``n`` takes the first n images of each set. Reference features are cached by content hash unless
    ``cache`` is False; ``real_features`` reads them from a features file instead (``gbm.metrics.store``,
    checked against the images), and ``save_real_features``/``save_fake_features`` write the features used,
    so later jobs read them instead of running Inception again. Returns metrics with sample counts, the feature extractor and the library;
    with ``sid`` also the signed inception distance (``gbm.metrics.sid``) from the same features.
    A sample file that records non-finite images (``gbm sample --allow-nonfinite``) is refused unless
    ``allow_nonfinite``; feature sets with NaN or infinity are always refused.
    With ``classifier`` (a ``gbm.metrics.domain.Classifier`` or the path of one), the result gains a ``domain``
    block (FD, KID, intervals, class balance, confident share in the dataset classifier's features,
    ``gbm.metrics.domain.domain_metrics``) and a ``collapse`` block (``gbm.metrics.collapse``) for ``fake``.
    ``progress`` shows a progress bar per Inception feature extraction (on stderr).
    """
    check_library(library, cleanfid_mode)
    check_interval_options(metric_options.get("interval_draws", DEFAULT_DRAWS), metric_options.get("interval_level", DEFAULT_LEVEL))
    real_set = _as_set(real, "real images", real_split, allow_nonfinite)
    fake_set = _as_set(fake, "fake images", None, allow_nonfinite)
    real_set, fake_set = real_set.first(n), fake_set.first(n)
    from gbm.metrics.features import validate_images

    validate_images(real_set.images, real_set.description)
    validate_images(fake_set.images, fake_set.description)
    if real_set.images.shape[1] != fake_set.images.shape[1]:
        raise ValueError(
            f"channel counts differ: {real_set.description} has {real_set.images.shape[1]}, "
            f"{fake_set.description} has {fake_set.images.shape[1]}"
        )
    from gbm.metrics.store import load_features, save_features

    began = time.perf_counter()
    if real_features is not None:
        real_features, cache_state = load_features(real_features, real_set, library, cleanfid_mode), "file"
    elif cache:
        real_features, cache_state = reference_features(real_set, library, cleanfid_mode=cleanfid_mode, device=device,
                                                        stats_dir=stats_dir, progress=progress)
    else:
        real_features, cache_state = extract_features(real_set.images, library, device=device, cleanfid_mode=cleanfid_mode,
                                                      what=real_set.description, progress=progress), "off"
    fake_features = extract_features(fake_set.images, library, device=device, cleanfid_mode=cleanfid_mode,
                                     what=fake_set.description, progress=progress)
    features_seconds = time.perf_counter() - began
    if save_real_features:
        save_features(save_real_features, real_set, real_features, library, cleanfid_mode)
    if save_fake_features:
        save_features(save_fake_features, fake_set, fake_features, library, cleanfid_mode)
    began = time.perf_counter()
    result = metrics_from_features(real_features, fake_features, library, **metric_options)
    if sid:
        from gbm.metrics.sid import signed_inception_distance

        signed = signed_inception_distance(real_features, fake_features, seed=metric_options.get("seed", 0))
        result["protocol"]["sid"] = signed.pop("protocol")
        result.update(signed)
    result.update(
        real=real_set.description,
        fake=fake_set.description,
        library=extractor_description(library, cleanfid_mode)["library"],
        feature_extractor=extractor_description(library, cleanfid_mode),
        reference_cache=cache_state,
        timing={"features_s": features_seconds, "metrics_s": time.perf_counter() - began},
    )
    if classifier is not None:
        result.update(domain_and_collapse(classifier, real_set.images, fake_set.images, device=device,
                                          **metric_options))
    return result


def domain_and_collapse(classifier, real_images: np.ndarray, fake_images: np.ndarray, *, device="auto",
                        **metric_options) -> dict:
    """The ``domain`` and ``collapse`` blocks of a score: the classifier's metrics of ``fake_images`` against
    ``real_images``, and the collapse counters of ``fake_images`` with the calibration stored in the classifier."""
    from gbm.metrics.collapse import collapse_counters
    from gbm.metrics.domain import Classifier, domain_metrics, load_classifier
    from gbm.runs import resolve_device

    if not isinstance(classifier, Classifier):
        classifier = load_classifier(classifier)
    return {
        "domain": domain_metrics(classifier, real_images, fake_images, device=resolve_device(device), **metric_options),
        "collapse": collapse_counters(fake_images, classifier.record["collapse_calibration"]),
    }
