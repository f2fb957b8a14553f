"""The canonical prepared dataset file: one ``.npz`` per dataset that everything downstream reads.

Arrays: ``train_images``/``test_images`` uint8 (N, C, H, W), ``train_labels``/``test_labels`` int64 (N,),
``meta`` a JSON string (name, source, sha256 and verification of each source file, shapes).

Besides ``train`` and ``test``, a split may name a held-out slice of the training split (``resolve_split``):
``validation-N`` (its last N images, e.g. the reference of the guidance weight sweep, so that tuning never
sees the test split) and ``train-minus-validation-N`` (the rest, e.g. the guidance bank).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gbm.data.atomic import atomic_path
from gbm.data.sources import RawDataset, load_raw

SPLITS = ("train", "test")
HELD_OUT_SPLIT = re.compile(r"(validation|train-minus-validation)-(\d+)")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PreparedDataset:
    """A prepared dataset: uint8 images and int64 labels per split, and the provenance in ``meta``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    meta: dict

    def images(self, split: str) -> np.ndarray:
        base, rows = resolve_split(split, len(self.train_images))
        return getattr(self, f"{base}_images")[rows]

    def labels(self, split: str) -> np.ndarray:
        base, rows = resolve_split(split, len(self.train_labels))
        return getattr(self, f"{base}_labels")[rows]


def is_split_name(text: str) -> bool:
    """Whether ``text`` has the form of a split name (``train``, ``test``, ``validation-N``, ...)."""
    return text in SPLITS or HELD_OUT_SPLIT.fullmatch(text) is not None


def resolve_split(split: str, n_train: int) -> tuple[str, slice]:
    """The stored split (``train``/``test``) and rows a split name selects; ``validation-N`` is the last N
    training images and ``train-minus-validation-N`` the others, so the two never overlap."""
    if split in SPLITS:
        return split, slice(None)
    held_out = HELD_OUT_SPLIT.fullmatch(split) if isinstance(split, str) else None
    if held_out is None:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}, validation-N (the last N "
                         "training images) or train-minus-validation-N (the other training images)")
    n = int(held_out.group(2))
    if not 1 <= n < n_train:
        raise ValueError(f"split {split!r}: N must lie in [1, {n_train - 1}] (the training split has {n_train} images)")
    return "train", slice(n_train - n, None) if held_out.group(1) == "validation" else slice(0, n_train - n)


def validate_split(images: np.ndarray, labels: np.ndarray, what: str) -> None:
    """Raise ValueError naming the problem unless images are uint8 (N, C, H, W), C in {1, 3}, N = len(labels)."""
    if images.dtype != np.uint8:
        raise ValueError(f"{what} images: expected dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what} images: expected shape (N, C, H, W) with C in (1, 3), got {images.shape}")
    if len(images) == 0:
        raise ValueError(f"{what} images: the set is empty")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype != np.int64:
        raise ValueError(f"{what} labels: expected int64 of shape ({len(images)},), got {labels.dtype} {labels.shape}")


def save_prepared(raw: RawDataset, name: str, path: str | Path) -> Path:
    """Write ``raw`` as the canonical prepared file at ``path`` (atomically)."""
    for split in SPLITS:
        validate_split(getattr(raw, f"{split}_images"), getattr(raw, f"{split}_labels"), f"{name} {split}")
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": raw.source,
        "source_files": raw.files,
        "verified": bool(raw.files) and all(record["verified"] for record in raw.files.values()),
        "shapes": {f"{split}_images": list(getattr(raw, f"{split}_images").shape) for split in SPLITS},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                train_images=raw.train_images,
                train_labels=raw.train_labels,
                test_images=raw.test_images,
                test_labels=raw.test_labels,
                meta=np.array(json.dumps(meta, sort_keys=True)),
            )
    return path


def prepare_dataset(name: str, out: str | Path, source_dir: str | Path | None = None) -> Path:
    """Read dataset ``name`` from the first available source and write the canonical file ``out``."""
    return save_prepared(load_raw(name, source_dir), name, out)


def load_prepared(path: str | Path) -> PreparedDataset:
    """Read a prepared dataset file, checking every array; errors name the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prepared dataset {path} not found (create it with `gbm prepare-data NAME --out {path}`)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    missing = [key for key in ("train_images", "train_labels", "test_images", "test_labels", "meta") if key not in arrays]
    if missing:
        raise ValueError(f"{path}: not a prepared dataset, missing arrays {missing} (found {sorted(arrays)})")
    for split in SPLITS:
        validate_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], f"{path} {split}")
    meta = json.loads(str(arrays.pop("meta")))
    return PreparedDataset(meta=meta, **arrays)
