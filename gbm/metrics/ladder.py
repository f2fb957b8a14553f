"""A ladder of image sets whose order is known, to validate a metric family (issue 24, item 3).

Each rung degrades held-out real images further; a metric that measures sample quality must score them in
this order against the reference images (the first N test images). ``LADDER`` lists the rungs best first:

1. ``real``: held-out test images (the real-vs-real floor at this N);
2. ``grain``: mild multiplicative grain, ``x · exp(0.2 ε - 0.02)`` per pixel (mean-preserving log-normal,
   what a GBM sampler's residual noise looks like; the background stays black);
3. ``additive-noise``: ``x + 0.2 ε`` (the background too);
4. ``blurred``: Gaussian blur, 1.5 px;
5. ``one-class``: half of the set a single class (the first class), the rest held-out images: every frame is
   real, the class balance is not;
6. ``blobs``: one to three Gaussian blobs per frame, no digit or garment;
7. ``empty-saturated``: half empty frames, half saturated ones (0.9 + 0.1 ε).

``mixed-collapse`` (outside the order): 20 % empty and 20 % saturated frames among held-out images, the mix
VP Euler-Maruyama drew at 100 steps (issue 24); a quality metric must rank it below ``grain``.
All pixels in [0, 1] are rounded to uint8; every rung is seeded.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np

LADDER = ("real", "grain", "additive-noise", "blurred", "one-class", "blobs", "empty-saturated")
EXTRA = ("mixed-collapse",)


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, 0, sigma, sigma))


def _blobs(rng: np.random.Generator, shape: tuple, brightness: float) -> np.ndarray:
    n, channels, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.zeros((n, height, width))
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
            radius = rng.uniform(1.5, 4.0)
            frames[i] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
    frames *= brightness / frames.mean(axis=(1, 2), keepdims=True)
    return np.repeat(frames[:, None], channels, axis=1)


def _empty_saturated(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    frames = np.zeros(shape)
    frames[len(frames) // 2:] = 0.9 + 0.1 * rng.standard_normal((len(frames) - len(frames) // 2, *shape[1:]))
    return frames


def ladder_sets(held_out: np.ndarray, held_out_labels: np.ndarray, extra: np.ndarray, extra_labels: np.ndarray,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Every rung of ``LADDER`` and ``EXTRA`` from N held-out real uint8 images (N x C x H x W) and their labels;
    ``extra``/``extra_labels``: other real images from which the one-class rung takes its class-0 frames."""
    n = len(held_out)
    rng = np.random.default_rng(seed)
    x = held_out.astype(np.float64) / 255
    single = extra[extra_labels == 0][: n // 2]
    if len(single) < n // 2:
        raise ValueError(f"ladder: one-class rung needs {n // 2} extra images of class 0, got {len(single)}")
    sets = {
        "real": held_out,
        "grain": _uint8(x * np.exp(0.2 * rng.standard_normal(x.shape) - 0.02)),
        "additive-noise": _uint8(x + 0.2 * rng.standard_normal(x.shape)),
        "blurred": _uint8(_blur(x, 1.5)),
        "one-class": np.concatenate([single, held_out[: n - len(single)]]),
        "blobs": _uint8(_blobs(rng, x.shape, brightness=float(x.mean()))),
        "empty-saturated": _uint8(_empty_saturated(rng, x.shape)),
    }
    mixed = x.copy()
    broken = rng.permutation(n)[: 2 * (n // 5)]
    mixed[broken[: n // 5]] = 0
    mixed[broken[n // 5:]] = 0.9 + 0.1 * rng.standard_normal((len(broken) - n // 5, *x.shape[1:]))
    sets["mixed-collapse"] = _uint8(mixed)
    return sets


def ordered(values: list[float]) -> bool:
    """Whether the values (one per rung of the ladder, best first; lower is better) strictly increase."""
    return all(a < b for a, b in pairwise(values))


def inversions(names: list[str], values: list[float]) -> list[tuple[str, str]]:
    """Pairs (better rung, worse rung) that a metric (lower is better) scores the other way round."""
    return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names)) if values[i] >= values[j]]
