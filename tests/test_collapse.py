"""Collapse counters (gbm.metrics.collapse): exact shares on synthetic frames, and none on real test images
with thresholds calibrated on the training split."""

from __future__ import annotations

import numpy as np
import pytest

from gbm.metrics.collapse import calibrate, collapse_counters, duplicate_mask


def _real_like(n: int, rng: np.random.Generator) -> np.ndarray:
    """Frames with a bright square on black, mean 0.1-0.3, in [0, 1]."""
    frames = np.zeros((n, 1, 10, 10))
    for i, side in enumerate(rng.integers(4, 6, n)):
        frames[i, 0, 2:2 + side, 3:3 + side] = rng.uniform(0.7, 1.0)
    return frames


def test_counters_count_empty_saturated_flat_and_duplicated_frames_exactly():
    rng = np.random.default_rng(0)
    training = _real_like(200, rng)
    calibration = calibrate(training)
    assert 0.1 < calibration["empty_below"] < calibration["saturated_above"] < 0.4
    real = training[:10]
    batch = np.concatenate([
        real,                                  # 10 good frames
        np.zeros((2, 1, 10, 10)),              # 2 empty (flat too; the second duplicates the first)
        np.full((3, 1, 10, 10), 0.95),         # 3 saturated (flat too; two duplicates)
        np.full((1, 1, 10, 10), 0.2),          # 1 flat grey frame, mean inside the real range
        real[:2],                              # 2 exact copies of good frames
        real[2:3] * 0.05,                      # 1 faint frame: empty and flat
    ])
    result = collapse_counters(batch, calibration)
    n = len(batch)
    assert result["n"] == n == 19
    assert result["empty"] == pytest.approx(3 / n)
    assert result["saturated"] == pytest.approx(3 / n)
    assert result["flat"] == pytest.approx(7 / n)
    assert result["duplicate"] == pytest.approx(5 / n)
    assert result["any"] == pytest.approx(9 / n) and result["flagged"]
    as_uint8 = collapse_counters(np.round(batch * 255).astype(np.uint8), calibration)
    assert {k: as_uint8[k] for k in ("empty", "saturated", "flat", "duplicate")} == \
        {k: result[k] for k in ("empty", "saturated", "flat", "duplicate")}
    clean = collapse_counters(real, calibration)
    assert clean["any"] == 0 and not clean["flagged"]


def test_flag_needs_more_than_the_flag_share():
    calibration = {"empty_below": 0.05, "saturated_above": 0.5, "flat_below": 0.01}
    frames = np.tile(np.linspace(0, 0.4, 100).reshape(1, 1, 10, 10), (100, 1, 1, 1))
    frames += np.arange(100).reshape(100, 1, 1, 1) * 1e-3  # all distinct, none broken
    frames[:5] = 0
    frames[:5] += np.arange(5).reshape(5, 1, 1, 1) * 1e-3  # five distinct empty frames: 5 % is not > 5 %
    assert collapse_counters(frames, calibration)["any"] == 0.05
    assert not collapse_counters(frames, calibration)["flagged"]
    frames[5] = 0.9
    assert collapse_counters(frames, calibration)["flagged"]


def test_duplicates_are_the_copies_after_the_first():
    frames = np.array([[1, 2], [3, 4], [1, 2], [1, 2], [5, 6]], dtype=np.uint8)
    assert duplicate_mask(frames).tolist() == [False, False, True, True, False]


def test_float_frames_outside_the_unit_interval_are_refused():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        calibrate(np.full((2, 1, 4, 4), 1.5))
    with pytest.raises(ValueError, match="non-empty"):
        calibrate(np.zeros((0, 1, 4, 4)))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_no_real_test_image_is_flagged_with_thresholds_from_the_training_split(name, monkeypatch):
    from gbm.data.sources import load_raw

    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")
    raw = load_raw(name)
    calibration = calibrate(raw.train_images)
    result = collapse_counters(raw.test_images, calibration)
    assert result["any"] == 0
    if name == "fashion_mnist":  # why the thresholds are calibrated: the fixed 0.4 flags real garments
        means = raw.test_images.reshape(len(raw.test_images), -1).mean(1) / 255
        assert (means > 0.4).mean() > 0.2
        assert calibration["saturated_above"] > 0.7
    else:
        assert calibration["empty_below"] == pytest.approx(0.0254, abs=1e-4)
        assert calibration["saturated_above"] == pytest.approx(0.3976, abs=1e-4)
