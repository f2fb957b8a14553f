"""Stored Inception features (gbm.metrics.store) are read back only for the images they came from."""

from __future__ import annotations

import numpy as np
import pytest

from gbm.metrics import ImageSet
from gbm.metrics.store import load_features, save_features


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")


def images(seed: int) -> ImageSet:
    return ImageSet(np.random.default_rng(seed).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8), f"set {seed}")


def test_stored_features_are_returned_for_the_same_images_under_another_description(tmp_path):
    features = np.random.default_rng(0).normal(size=(5, 2048)).astype(np.float32)
    save_features(tmp_path / "f.npz", images(0), features, "torch-fidelity")
    again = ImageSet(images(0).images, "the same pixels, read from elsewhere")
    np.testing.assert_array_equal(load_features(tmp_path / "f.npz", again, "torch-fidelity"), features)


@pytest.mark.parametrize("other, library", [(1, "torch-fidelity"), (0, "clean-fid")])
def test_features_of_other_images_or_another_extractor_are_refused_naming_the_file(tmp_path, other, library):
    save_features(tmp_path / "f.npz", images(0), np.zeros((5, 2048), np.float32), "torch-fidelity")
    with pytest.raises(ValueError, match="f.npz: features of other images or another extractor"):
        load_features(tmp_path / "f.npz", images(other), library)
