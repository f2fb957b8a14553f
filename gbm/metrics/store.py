"""Inception features stored beside the images they came from, keyed by content hash (computed once, read by
``score``, ``neighbours`` and ``floor``).

A features file holds ``features`` (N x 2048, float32), ``key`` (``gbm.metrics.reference.reference_key``:
sha256 of the images' shape and pixels, the extractor and its weights) and ``description``. Reading checks the
key against the images the caller holds, so features of other images, or from another extractor, are refused
with an error naming the file, never used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gbm.data.atomic import atomic_path
from gbm.metrics.inputs import ImageSet
from gbm.metrics.reference import reference_key


def save_features(path: str | Path, images: ImageSet, features: np.ndarray, library: str,
                  cleanfid_mode: str = "clean") -> None:
    """Write ``features`` of ``images`` with their key, atomically."""
    if features.shape != (len(images.images), 2048):
        raise ValueError(f"{path}: {len(images.images)} images but features of shape {features.shape}")
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, features=features, key=np.array(reference_key(images, library, cleanfid_mode)),
                     description=np.array(images.description))


def load_features(path: str | Path, images: ImageSet, library: str, cleanfid_mode: str = "clean") -> np.ndarray:
    """Features stored at ``path`` for exactly ``images``; ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such features file (written by `gbm floor` or `gbm score`)")
    with np.load(path, allow_pickle=False) as archive:
        features, key, description = archive["features"], str(archive["key"]), str(archive["description"])
    if key != reference_key(images, library, cleanfid_mode) or len(features) != len(images.images):
        raise ValueError(f"{path}: features of other images or another extractor ({description}), "
                         f"not of {images.description}")
    return features
