"""Helpers shared by the tests: small prepared datasets written in the canonical format (``gbm.data``).

Tests import them as ``from helpers import ...`` (pytest puts ``tests/`` on the path, as for ``conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gbm.data import RawDataset, save_prepared


def noise_dataset(path: Path, *, n_train: int = 32, n_test: int = 8, shape: tuple = (1, 8, 8), classes: int = 10,
                  seed: int = 0, name: str = "synthetic") -> Path:
    """Uniform random uint8 images with random labels (training images, training labels, test images, test
    labels drawn in that order from one generator); returns the prepared file's path."""
    rng = np.random.default_rng(seed)
    images = lambda n: rng.integers(0, 256, (n, *shape), dtype=np.uint8)  # noqa: E731
    labels = lambda n: rng.integers(0, classes, n).astype(np.int64)  # noqa: E731
    raw = RawDataset(images(n_train), labels(n_train), images(n_test), labels(n_test), source="synthetic")
    return save_prepared(raw, name, path)


def blob_dataset(path: Path, *, n: int = 48, size: int = 8, channels: int = 1, seed: int = 0) -> Path:
    """Noisy Gaussian blobs at random centres (``n`` training images, ``n // 2`` test images, random labels):
    images with structure a tiny network learns in a few steps; returns the prepared file's path."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]

    def images(count):
        centres = rng.uniform(2, size - 2, (count, 2))
        blobs = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 4.0)
        pixels = 255 * blobs[:, None].repeat(channels, axis=1) + rng.normal(0, 8, (count, channels, size, size))
        return pixels.clip(0, 255).astype(np.uint8)

    labels = lambda count: rng.integers(0, 10, count).astype(np.int64)  # noqa: E731
    raw = RawDataset(images(n), labels(n), images(n // 2), labels(n // 2), source="synthetic")
    return save_prepared(raw, "synthetic", path)
