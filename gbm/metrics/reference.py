"""Reference features cached by content hash: computed once per (images, extractor, protocol).

The key hashes the reference pixels (so dataset, split and N are all in it), the library, its mode and
the converted weights' checksums. Changing any of them gives a new key, so stale statistics are never
reused. Files are written atomically; an unreadable or mismatching file, or one holding NaN or infinity, is
recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from gbm.data.atomic import atomic_path, cache_dir
from gbm.metrics.features import extract_features, extractor_description
from gbm.metrics.inputs import ImageSet

PROTOCOL_VERSION = 1


def reference_key(images: ImageSet, library: str, cleanfid_mode: str) -> str:
    descriptor = {
        "protocol": PROTOCOL_VERSION,
        "images_sha256": images.content_hash(),
        "extractor": extractor_description(library, cleanfid_mode),
    }
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()


def reference_features(
    images: ImageSet, library: str, *, cleanfid_mode: str = "clean", device="auto", stats_dir: str | Path | None = None,
    progress: bool = False,
) -> tuple[np.ndarray, str]:
    """Features of the reference set and ``"hit"`` or ``"miss"``; ``stats_dir`` defaults to the user cache."""
    key = reference_key(images, library, cleanfid_mode)
    path = Path(stats_dir or cache_dir() / "reference") / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as archive:
            features = archive["features"]
            if str(archive["key"]) == key and features.shape == (len(images.images), 2048) and np.isfinite(features).all():
                return features, "hit"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass
    features = extract_features(images.images, library, device=device, cleanfid_mode=cleanfid_mode, what=images.description,
                                progress=progress)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, features=features, key=np.array(key), description=np.array(images.description))
    return features, "miss"
