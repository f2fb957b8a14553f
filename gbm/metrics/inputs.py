"""Image sets for scoring: a prepared dataset split (``FILE.npz:test``), a sample ``.npz``, or an image folder."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gbm.data import load_prepared
from gbm.metrics.features import validate_images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


@dataclass(frozen=True)
class ImageSet:
    """uint8 images (N, C, H, W) and a description of where they came from."""

    images: np.ndarray
    description: str

    def content_hash(self) -> str:
        """sha256 of shape and pixels: equal only for identical image sets."""
        digest = hashlib.sha256(json.dumps(list(self.images.shape)).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        return digest.hexdigest()

    def first(self, n: int | None) -> "ImageSet":
        """The first ``n`` images (all when ``n`` is None); an error when fewer exist."""
        if n is None:
            return self
        if n < 1 or n > len(self.images):
            raise ValueError(f"{self.description}: asked for n={n} images, the set has {len(self.images)}")
        return ImageSet(self.images[:n], f"{self.description}[:{n}]")


def load_image_set(spec: str | Path, split: str | None = None, allow_nonfinite: bool = False) -> ImageSet:
    """Resolve ``spec``: ``FILE.npz:SPLIT`` or ``FILE.npz`` + ``split`` (prepared), sample ``.npz``, folder.

    A sample file whose ``meta`` records non-finite images (``nonfinite`` > 0, written by
    ``gbm sample --allow-nonfinite``) is refused unless ``allow_nonfinite``."""
    text = str(spec)
    if ":" in text and text.rsplit(":", 1)[1] in ("train", "test") and not Path(text).exists():
        text, split = text.rsplit(":", 1)
    path = Path(text)
    if path.is_dir():
        return _load_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file or folder")
    if path.suffix != ".npz":
        raise ValueError(f"{path}: expected a .npz file (prepared dataset or samples) or an image folder")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
    if "images" in keys:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
            meta = json.loads(str(archive["meta"])) if "meta" in keys else {}
        nonfinite = meta.get("nonfinite") or 0
        if nonfinite > 0 and not allow_nonfinite:
            raise ValueError(f"{path}: {100 * nonfinite:.3g} % of its images came from a sampler state that became "
                             f"NaN or infinite (meta 'nonfinite' = {nonfinite:.4g}, written with gbm sample "
                             f"--allow-nonfinite); their pixels are not samples. Refusing to score them; pass "
                             f"--allow-nonfinite to score the file anyway")
        return ImageSet(validate_images(images, f"{path} 'images'"), str(path))
    if {"train_images", "test_images"} <= keys:
        if split is None:
            raise ValueError(f"{path} is a prepared dataset: name the split as {path}:test (or {path}:train)")
        prepared = load_prepared(path)
        return ImageSet(prepared.images(split), f"{path}:{split}")
    raise ValueError(f"{path}: no 'images' array (sample file) or 'train_images'/'test_images' (prepared dataset); found {sorted(keys)}")


def _load_folder(folder: Path) -> ImageSet:
    from PIL import Image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    arrays = []
    for file in files:
        with Image.open(file) as image:
            mode = "L" if image.mode in ("L", "1", "I;16") else "RGB"
            array = np.asarray(image.convert(mode), dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: images differ in size or channels {sorted(shapes)}")
    return ImageSet(np.stack(arrays), str(folder))
