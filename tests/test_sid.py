"""Signed inception distance (issue 6) on Gaussian feature sets, where the right sign is known."""

import numpy as np
import pytest
import torch

import gbm.metrics.features
from gbm.metrics.sid import signed_inception_distance, signed_inception_distance_images

D, N = 32, 600


def _gaussian(seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(N, D, generator=g, dtype=torch.float64) + shift).numpy()


def _sid(fake, **options):
    return signed_inception_distance(_gaussian(0), fake, subsets=3, subset_size=400, **options)


def test_sid_has_no_small_sample_bias_for_one_distribution_in_high_dimension():
    """With the centre taken from the subset itself, 30 vs 30 points in 512-d would give SID >> 0."""
    g = torch.Generator().manual_seed(0)
    results = [signed_inception_distance(torch.randn(60, 512, generator=g, dtype=torch.float64),
                                         torch.randn(30, 512, generator=g, dtype=torch.float64), subsets=4, seed=s)
               for s in range(5)]
    sids = np.array([r["sid"] for r in results])
    assert abs(sids.mean()) < 3 * sids.std() / np.sqrt(len(sids)) + 0.05


def test_sid_is_near_zero_for_two_samples_of_one_distribution():
    same, shifted = _sid(_gaussian(1)), _sid(_gaussian(1, shift=0.3))
    assert abs(same["sid"]) < 0.15 * shifted["sid"]
    assert abs(same["sid"]) < 3 * same["sid_std"] + 0.1


def test_sid_is_negative_for_an_under_dispersed_sample():
    result = _sid(_gaussian(1, scale=0.6))
    assert result["sid"] < 0 and result["sid_sign"] == -1
    assert all(value < 0 for value in result["sid_curve"])


def test_sid_is_positive_for_a_shifted_sample():
    result = _sid(_gaussian(1, shift=0.3))
    assert result["sid"] > 0 and result["sid_sign"] == 1
    assert result["sid"] > 3 * result["sid_std"]


def test_sid_is_positive_for_an_over_dispersed_sample_and_for_negative_orders():
    assert _sid(_gaussian(1, scale=1.5))["sid"] > 0
    assert _sid(_gaussian(1, scale=0.6), order=-1.0)["sid"] < 0


def test_sid_curve_has_one_value_per_radius_and_records_its_protocol():
    result = _sid(_gaussian(1), radii=(1.0, 2.0, 3.0), points=16)
    assert len(result["sid_curve"]) == 3
    assert result["sid"] == pytest.approx(sum(result["sid_curve"]))
    assert result["protocol"]["subset_size"] == N // 2 and result["protocol"]["radii_in_rms_std"] == [1.0, 2.0, 3.0]


def test_sid_from_images_uses_the_pipeline_feature_extractor(monkeypatch):
    def fake_extractor(images, library, *, device, cleanfid_mode, what):
        return np.asarray(images, dtype=np.float32).reshape(len(images), -1)

    monkeypatch.setattr(gbm.metrics.features, "extract_features", fake_extractor)
    rng = np.random.default_rng(0)
    real = rng.integers(60, 200, size=(200, 1, 4, 4), dtype=np.uint8)
    dull = np.full((200, 1, 4, 4), 130, dtype=np.uint8)  # every image the same grey: fully collapsed
    assert signed_inception_distance_images(real, dull, subsets=2, subset_size=100)["sid"] < 0


def test_sid_refuses_bad_input_naming_the_field():
    good = _gaussian(1)
    with pytest.raises(ValueError, match="sid.fake: feature dimension"):
        signed_inception_distance(good, good[:, :5])
    with pytest.raises(ValueError, match="sid.real"):
        signed_inception_distance(good[:1], good)
    with pytest.raises(ValueError, match="sid.fake"):
        signed_inception_distance(good, np.full((5, D), np.nan))
    with pytest.raises(ValueError, match="sid.order"):
        signed_inception_distance(good, good, order=0)
    with pytest.raises(ValueError, match="sid.radii"):
        signed_inception_distance(good, good, radii=())
    with pytest.raises(ValueError, match="sid.subsets"):
        signed_inception_distance(good, good, subsets=0)
