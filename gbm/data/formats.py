"""Readers for the published dataset formats: idx (optionally gzipped), the MNIST pickle, KMNIST npz, CIFAR-10.

Every reader returns uint8 images as (N, C, H, W) and int64 labels, and validates what it parses: a
truncated or mislabelled file raises ``ValueError`` naming the file.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801


def decompress(path: Path, data: bytes) -> bytes:
    """The payload of a file: gunzipped when the name ends in ``.gz``, else the bytes as they are."""
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: not a valid gzip file ({error})") from error
    return data


def parse_idx(payload: bytes, where: str) -> np.ndarray:
    """Parse an idx file (images: magic 0x803, N x H x W; labels: magic 0x801, N) into a uint8 array."""
    if len(payload) < 8:
        raise ValueError(f"{where}: too short to be an idx file ({len(payload)} bytes)")
    magic, count = struct.unpack(">II", payload[:8])
    if magic == IDX_IMAGES_MAGIC:
        if len(payload) < 16:
            raise ValueError(f"{where}: truncated idx image header")
        rows, cols = struct.unpack(">II", payload[8:16])
        shape, offset = (count, rows, cols), 16
    elif magic == IDX_LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise ValueError(f"{where}: unknown idx magic number {magic:#010x} (expected 0x803 images or 0x801 labels)")
    expected = offset + int(np.prod(shape))
    if len(payload) != expected:
        raise ValueError(f"{where}: idx header promises {expected} bytes, file has {len(payload)}")
    return np.frombuffer(payload, dtype=np.uint8, offset=offset).reshape(shape)


def idx_images(array: np.ndarray) -> np.ndarray:
    """idx image array (N, H, W) -> (N, 1, H, W)."""
    return np.ascontiguousarray(array[:, None])


def parse_mnist_pickle(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``mnist.pkl.gz`` format, gunzipped: ((train 50k), (valid 10k), (test 10k)), float32 = uint8 / 256.

    Only call this on a checksum-verified file: unpickling runs code. Train + valid, in order, is the
    original 60k training split; ``x * 256`` recovers the uint8 pixels exactly, which is checked.
    """
    try:
        train, valid, test = pickle.loads(payload, encoding="latin1")
    except Exception as error:  # any corruption of a pickle surfaces as an arbitrary exception
        raise ValueError(f"{where}: not an MNIST pickle of (train, valid, test) ({error})") from error

    def pixels(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        exact = np.float32 if x.dtype == np.float32 else np.float64  # the file's own precision
        scaled = x.astype(exact, copy=False) * exact(256)  # exact: a power of two
        if scaled.ndim != 2 or scaled.min() < 0 or scaled.max() > 255:
            raise ValueError(f"{where}: pixels are not uint8 / 256 in a (N, H*W) array")
        values = scaled.astype(np.uint8)  # truncates; equal to scaled only where scaled is a whole number
        if not np.array_equal(values, scaled):
            raise ValueError(f"{where}: pixels are not uint8 / 256 in a (N, H*W) array")
        side = int(round(np.sqrt(scaled.shape[1])))
        return values.reshape(-1, 1, side, side)

    train_images = np.concatenate([pixels(train[0]), pixels(valid[0])])
    train_labels = np.concatenate([train[1], valid[1]]).astype(np.int64)
    return train_images, train_labels, pixels(test[0]), np.asarray(test[1], dtype=np.int64)


def parse_npz_array(payload: bytes, where: str) -> np.ndarray:
    """A KMNIST-style ``.npz`` holding one array ``arr_0`` (images N x H x W or labels N)."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return archive["arr_0"]
    except Exception as error:
        raise ValueError(f"{where}: not an npz file with array 'arr_0' ({error})") from error


def parse_cifar_batch(payload: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (a pickled dict with ``data`` N x 3072 uint8 and ``labels``).

    Only call this on a checksum-verified batch: unpickling runs code.
    """
    try:
        batch = pickle.loads(payload, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as error:
        raise ValueError(f"{where}: not a CIFAR-10 python batch ({error})") from error
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise ValueError(f"{where}: CIFAR-10 batch has data {data.shape} and {len(labels)} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_tar_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """Bytes of the members of a ``.tar.gz`` whose base names are in ``names``."""
    found = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive.getmembers():
            base = member.name.rsplit("/", 1)[-1]
            if member.isfile() and base in names:
                found[base] = archive.extractfile(member).read()
    return found
