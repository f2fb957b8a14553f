"""Half-sample intervals and FID_inf (gbm.metrics.uncertainty) on Gaussians whose FID is known in closed form.

Low dimensions keep these fast; the Gram form and the (d x d) form are both exercised (n <= d and n > d).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from gbm.metrics.uncertainty import FeaturePair, fid_inf_applies, fid_infinity, frechet_distance, half_sample_intervals


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


def test_half_sample_standard_error_matches_the_fids_spread_over_independent_sample_sets():
    """The estimand of fid_ci is the expected FID of N generated images against the fixed reference (the number
    printed). Over independent generated sets (n < d: the Gram form), the half-sample standard error matches
    the FID's true standard deviation (a with-replacement bootstrap overstates it ~2.5 times here), and
    ``fid ± 1.96 se`` covers the expected FID in about 95 % of sets."""
    rng = np.random.default_rng(0)
    d, n, reps = 64, 50, 150
    mixing = np.eye(d) + 0.3 * rng.normal(size=(d, d)) / np.sqrt(d)
    reference = rng.normal(size=(n, d))
    fids, ses, intervals = [], [], []
    for rep in range(reps):
        fake = rng.normal(size=(n, d)) @ mixing + 0.2
        result = half_sample_intervals(reference, fake, draws=50, seed=rep)
        fids.append(result["protocol"]["fid_centre"])
        ses.append(result["fid_se"])
        intervals.append(result["fid_ci"])
    fids, expected = np.asarray(fids), float(np.mean(fids))
    ratio = float(np.mean(ses)) / float(fids.std(ddof=1))
    coverage = np.mean([low <= expected <= high for low, high in intervals])
    assert 0.8 <= ratio <= 1.25, ratio
    assert 0.9 <= coverage <= 1.0, coverage  # nominal 0.95; binomial sd over 150 sets ~0.018


def test_every_interval_is_centred_on_the_estimate_printed_beside_it():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(60, 8)), rng.normal(size=(60, 8)) * 1.4 + 0.5
    result = half_sample_intervals(real, fake, draws=50, seed=1)
    for metric in ("fid", "kid"):
        low, high = result[f"{metric}_ci"]
        centre = result["protocol"][f"{metric}_centre"]
        assert low < centre < high and (low + high) / 2 == pytest.approx(centre, rel=1e-12)
    assert result["protocol"]["fid_centre"] == pytest.approx(frechet_distance(real, fake), rel=1e-10)


def test_half_sample_interval_narrows_as_n_grows():
    rng = np.random.default_rng(1)
    scale_a, scale_b, shift, _ = gaussian_pair(4, np.random.default_rng(7))
    reference = rng.normal(size=(2000, 4)) * scale_a

    def width(n: int) -> float:
        return float(np.mean([np.diff(half_sample_intervals(reference, rng.normal(size=(n, 4)) * scale_b + shift,
                                                            draws=100, seed=rep)["fid_ci"])[0] for rep in range(8)]))

    assert width(400) < 0.6 * width(50)  # ~ 1/sqrt(8) = 0.35 expected


def test_intervals_are_repeatable_and_kid_interval_brackets_zero_for_one_distribution():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(150, 16)), rng.normal(size=(150, 16))
    first, second = half_sample_intervals(real, fake, draws=100, seed=5), half_sample_intervals(real, fake, draws=100, seed=5)
    assert first == second
    low, high = first["kid_ci"]
    assert low < 0 < high


def test_fid_inf_of_two_samples_of_one_distribution_is_near_zero_where_it_applies():
    rng = np.random.default_rng(4)
    d, n = 32, 128  # n/2 >= d: the subsets exceed the dimension (fid_inf_applies)
    assert fid_inf_applies(n, d) and not fid_inf_applies(2 * d - 1, d) and fid_inf_applies(2 * d, d)
    scale = rng.gamma(2.0, 0.5, size=d)
    real, fake = rng.normal(size=(n, d)) * scale, rng.normal(size=(n, d)) * scale
    assert abs(fid_infinity(real, fake, seed=0)["fid_inf"]) < 0.2 * frechet_distance(real, fake)


def test_scoring_leaves_fid_inf_out_below_twice_the_feature_dimension_and_says_why():
    from gbm.metrics.scoring import metrics_from_features

    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(40, 2048)), rng.normal(size=(40, 2048)) + 0.05
    result = metrics_from_features(real, fake, interval_draws=20)
    assert result["fid_inf"] is None and "N >= 4096" in result["protocol"]["fid_inf"]
    low, high = result["kid_ci"]
    assert (low + high) / 2 == pytest.approx(result["kid_mean"], rel=1e-9)  # the KID printed, not another
    assert (sum(result["fid_ci"]) / 2) == pytest.approx(result["fid"], rel=1e-9)


@pytest.mark.parametrize("options, named", [({"draws": 1}, "--interval-draws"), ({"level": 1.5}, "--interval-level")])
def test_bad_interval_options_are_named(options, named):
    with pytest.raises(ValueError, match=named):
        half_sample_intervals(np.zeros((5, 2)) + np.arange(10).reshape(5, 2), np.ones((5, 2)) + np.arange(10).reshape(5, 2),
                              **options)


def test_thread_count_changes_the_intervals_only_in_the_last_digits():
    """Same seed, 1 versus 2 threads: the linear algebra may sum in another order, nothing more."""
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(80, 96)), rng.normal(size=(80, 96)) + 0.1
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(half_sample_intervals(real, fake, draws=100, seed=0))
    finally:
        torch.set_num_threads(before)
    for key in ("fid_ci", "kid_ci"):
        np.testing.assert_allclose(results[0][key], results[1][key], rtol=1e-9)
