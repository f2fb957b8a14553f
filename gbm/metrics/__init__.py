"""Offline FID/KID/precision-recall on TF-Inception features through torch-fidelity or clean-fid (SPEC §8)."""

from gbm.metrics.features import LIBRARIES, extract_features, extractor_description, validate_images
from gbm.metrics.inputs import ImageSet, load_image_set
from gbm.metrics.neighbours import nearest_neighbours
from gbm.metrics.reference import reference_features
from gbm.metrics.distances import metrics_from_features
from gbm.metrics.scoring import score
from gbm.metrics.weights import WeightsUnavailableError, inception_weights

__all__ = [
    "LIBRARIES",
    "ImageSet",
    "WeightsUnavailableError",
    "extract_features",
    "extractor_description",
    "inception_weights",
    "load_image_set",
    "metrics_from_features",
    "nearest_neighbours",
    "reference_features",
    "score",
    "validate_images",
]
