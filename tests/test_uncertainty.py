"""Bootstrap intervals and FID_inf (gbm.metrics.uncertainty) on Gaussians whose FID is known in closed form.

Low dimensions keep these fast; the Gram form and the (d x d) form are both exercised (n <= d and n > d).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gbm.metrics.uncertainty import FeaturePair, bootstrap, fid_infinity, frechet_distance


def fid_by_sqrtm(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook FID: scipy's matrix square root of the covariance product."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb)
                 - 2 * np.trace(scipy.linalg.sqrtm(sa @ sb)).real)


def gaussian_pair(d: int, rng):
    """Diagonal Gaussians (scales, mean shift) and their closed-form FID ``|Δμ|² + Σ (σa - σb)²``."""
    scale_a = rng.gamma(2.0, 0.5, size=d)
    scale_b, shift = 1.3 * scale_a, np.full(d, 0.3)
    return scale_a, scale_b, shift, float((shift**2).sum() + ((scale_a - scale_b) ** 2).sum())


@pytest.mark.parametrize("n_real, n_fake, d", [(30, 25, 64), (300, 200, 8)])
def test_gram_and_covariance_forms_equal_scipy_sqrtm_fid(n_real, n_fake, d):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(n_real, d)) * rng.gamma(1, 1, size=d) + 2
    fake = rng.normal(size=(n_fake, d)) * rng.gamma(1, 1, size=d) + 2.5
    assert frechet_distance(real, fake) == pytest.approx(fid_by_sqrtm(real, fake), rel=1e-8)


def test_gram_form_equals_covariance_form_on_the_same_subsets():
    rng = np.random.default_rng(1)
    pair = FeaturePair(rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) * 1.2)
    real_index, fake_index = rng.integers(0, 40, (3, 10)), rng.integers(0, 40, (3, 10))
    real_index, fake_index = torch.as_tensor(real_index), torch.as_tensor(fake_index)
    gram, covariance = pair._fid_gram(real_index, fake_index), pair._fid_covariance(real_index, fake_index)
    np.testing.assert_allclose(gram, covariance, rtol=1e-8)


def _interval_width_and_cover(n: int, reps: int, rng, draws: int = 200, d: int = 4) -> tuple[float, float]:
    scale_a, scale_b, shift, true_fid = gaussian_pair(d, np.random.default_rng(7))
    reference = rng.normal(size=(2000, d)) * scale_a  # large: its own error is small next to the fake side's
    covered, widths = 0, []
    for rep in range(reps):
        fake = rng.normal(size=(n, d)) * scale_b + shift
        low, high = bootstrap(reference, fake, draws=draws, seed=rep)["fid_ci"]
        covered += low <= true_fid <= high
        widths.append(high - low)
    return covered / reps, float(np.mean(widths))


def test_bootstrap_interval_covers_the_true_fid_in_about_the_nominal_share():
    coverage, _ = _interval_width_and_cover(100, 100, np.random.default_rng(0))
    assert 0.87 <= coverage <= 1.0  # nominal 0.95; binomial sd over 100 repetitions ~0.022


def test_bootstrap_interval_narrows_as_n_grows():
    _, wide = _interval_width_and_cover(50, 10, np.random.default_rng(1))
    _, narrow = _interval_width_and_cover(400, 10, np.random.default_rng(2))
    assert narrow < 0.6 * wide  # ~ 1/sqrt(8) = 0.35 expected


def test_bootstrap_is_repeatable_and_kid_interval_brackets_zero_for_one_distribution():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(150, 16)), rng.normal(size=(150, 16))
    first, second = bootstrap(real, fake, draws=300, seed=5), bootstrap(real, fake, draws=300, seed=5)
    assert first == second
    low, high = first["kid_ci"]
    assert low < 0 < high


def test_fid_inf_of_two_samples_of_one_distribution_is_closer_to_zero_than_plain_fid():
    rng = np.random.default_rng(4)
    for d, n in ((32, 100), (64, 48)):  # n > d (covariance form) and n < d (Gram form)
        scale = rng.gamma(2.0, 0.5, size=d)
        real, fake = rng.normal(size=(n, d)) * scale, rng.normal(size=(n, d)) * scale
        plain = frechet_distance(real, fake)
        debiased = fid_infinity(real, fake, seed=0)["fid_inf"]
        assert abs(debiased) < 0.5 * plain


@pytest.mark.parametrize("options, named", [({"draws": 1}, "--bootstrap-draws"), ({"level": 1.5}, "--bootstrap-level")])
def test_bad_bootstrap_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        bootstrap(np.zeros((5, 2)) + np.arange(10).reshape(5, 2), np.ones((5, 2)) + np.arange(10).reshape(5, 2), **options)


def test_thread_count_changes_the_intervals_only_in_the_last_digits():
    """Same seed, 1 versus 2 threads: the linear algebra may sum in another order, nothing more."""
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(80, 96)), rng.normal(size=(80, 96)) + 0.1
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(bootstrap(real, fake, draws=200, seed=0))
    finally:
        torch.set_num_threads(before)
    for key in ("fid_ci", "kid_ci"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-9)
