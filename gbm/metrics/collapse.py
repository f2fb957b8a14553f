"""Collapse counters: the share of generated frames that are no image of the dataset at all.

A sampler that collapses draws frames a mean over FID or KID hides (issue 24: VP Euler-Maruyama at 100 steps,
seed 0, drew 21 % empty and 21 % saturated frames and still had the best KID). Counted per frame, in [0, 1]
pixel space (uint8 / 255), with thresholds calibrated on the dataset's training split (``calibrate``):

- ``empty``: mean pixel below the darkest training image's mean (MNIST: 0.0254, the issue's 0.02);
- ``saturated``: mean pixel above the brightest training image's mean (MNIST: 0.398, the issue's 0.4;
  Fashion-MNIST: 0.752, where a fixed 0.4 would flag 21 % of the real test images);
- ``flat``: pixel standard deviation below the flattest training image's (MNIST: 0.125): uniform grey,
  black or white frames and frames with only a few lit pixels;
- ``duplicate``: an exact copy of an earlier frame of the set (no two of MNIST's or Fashion-MNIST's 70,000
  images are equal);
- ``any``: the share of frames with at least one of these.

By construction no training image is flagged; on the test splits of MNIST and Fashion-MNIST none is either
(their per-image means and deviations lie inside the training range; tests/test_collapse.py). An evaluation
is ``flagged`` when ``any`` exceeds ``FLAG_SHARE``.
"""

from __future__ import annotations

import numpy as np

FLAG_SHARE = 0.05
COUNTERS = ("empty", "saturated", "flat", "duplicate")


def _pixels(images) -> np.ndarray:
    """Frames as float64 (N, pixels) in [0, 1]: uint8 are divided by 255; floats must already lie in [0, 1]."""
    images = np.asarray(images)
    if images.ndim < 2 or len(images) == 0:
        raise ValueError(f"collapse counters: expected a non-empty batch of frames, got shape {images.shape}")
    flat = images.reshape(len(images), -1)
    if images.dtype == np.uint8:
        return flat.astype(np.float64) / 255
    flat = flat.astype(np.float64)
    if not np.isfinite(flat).all() or flat.min() < 0 or flat.max() > 1:
        raise ValueError("collapse counters: float frames must be finite and lie in [0, 1]")
    return flat


def frame_statistics(images, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each frame's pixels in [0, 1] (computed a chunk of frames at a time)."""
    images = np.asarray(images)
    parts = [_pixels(images[start:start + chunk]) for start in range(0, max(len(images), 1), chunk)]
    return np.concatenate([p.mean(1) for p in parts]), np.concatenate([p.std(1) for p in parts])


def calibrate(images) -> dict:
    """Thresholds from real frames (the training split): the lowest and highest per-frame mean, the lowest
    per-frame standard deviation."""
    means, spreads = frame_statistics(images)
    return {"empty_below": float(means.min()), "saturated_above": float(means.max()),
            "flat_below": float(spreads.min()), "frames": len(means)}


def duplicate_mask(images) -> np.ndarray:
    """True for each frame that equals an earlier frame of the batch exactly (the first copy is not counted)."""
    flat = np.ascontiguousarray(np.asarray(images).reshape(len(images), -1))
    _, first = np.unique(flat, axis=0, return_index=True)
    mask = np.ones(len(flat), dtype=bool)
    mask[first] = False
    return mask


def collapse_masks(images, calibration: dict) -> dict[str, np.ndarray]:
    """Per-frame booleans for every counter (``COUNTERS``)."""
    means, spreads = frame_statistics(images)
    return {
        "empty": means < calibration["empty_below"],
        "saturated": means > calibration["saturated_above"],
        "flat": spreads < calibration["flat_below"],
        "duplicate": duplicate_mask(images),
    }


def collapse_counters(images, calibration: dict, flag_share: float = FLAG_SHARE) -> dict:
    """Share of frames per counter, the share with any, whether that exceeds ``flag_share``, and the rules."""
    masks = collapse_masks(images, calibration)
    union = np.logical_or.reduce(list(masks.values()))
    shares = {name: float(mask.mean()) for name, mask in masks.items()}
    return shares | {
        "any": float(union.mean()),
        "flagged": bool(union.mean() > flag_share),
        "n": len(union),
        "protocol": {
            "pixels": "uint8 / 255",
            "empty": f"mean pixel < {calibration['empty_below']:.4g} (darkest training image's mean)",
            "saturated": f"mean pixel > {calibration['saturated_above']:.4g} (brightest training image's mean)",
            "flat": f"pixel std < {calibration['flat_below']:.4g} (flattest training image's std)",
            "duplicate": "exact copy of an earlier frame in the set",
            "flagged": f"any > {flag_share}",
            "calibration": calibration,
        },
    }
