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

import time

import numpy as np
import torch

from gbm.metrics.features import check_library, extract_features, extractor_description
from gbm.metrics.inputs import ImageSet, load_image_set
from gbm.metrics.reference import reference_features
from gbm.metrics.distances import metrics_from_features
from gbm.metrics.uncertainty import DEFAULT_DRAWS, DEFAULT_LEVEL, check_interval_options


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
