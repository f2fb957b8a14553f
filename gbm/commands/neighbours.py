"""``gbm neighbours --samples S --data D --k K --out FILE``: nearest training images of each sample.

Writes ``.npz`` with ``inception_indices``/``inception_distances`` (TF-Inception pool3 features) and
``pixel_indices``/``pixel_distances`` (L2 on pixels scaled to [0, 1]), each (N, K), and ``meta`` JSON.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from gbm.data.atomic import atomic_path
from gbm.metrics import LIBRARIES, extract_features, extractor_description, load_image_set, nearest_neighbours, reference_features


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("neighbours", help="k nearest training images by Inception features and pixel L2")
    parser.add_argument("--samples", required=True, help="sample .npz or image folder")
    parser.add_argument("--data", required=True, help="prepared dataset FILE.npz (train split unless FILE.npz:test)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--n", type=int, default=None, help="only the first N generated images (default: all)")
    parser.add_argument("--data-limit", type=int, default=None,
                        help="search only the first N training images (CPU-sized runs; default: all)")
    parser.add_argument("--sample-features", default=None,
                        help="features of all the samples from `gbm score --save-features` (checked by hash)")
    parser.add_argument("--data-features", default=None,
                        help="features of the searched training images from `gbm floor --save-bank` (checked by hash)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--library", choices=LIBRARIES, default="torch-fidelity")
    parser.add_argument("--device", default="auto")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gbm.metrics.store import load_features

    all_samples = load_image_set(args.samples)
    samples = all_samples.first(args.n)
    data = load_image_set(args.data, "train")
    data = data.first(min(args.data_limit, len(data.images))) if args.data_limit else data
    if samples.images.shape[1:] != data.images.shape[1:]:
        raise ValueError(f"samples {samples.images.shape[1:]} and data {data.images.shape[1:]} differ in shape")
    began = time.perf_counter()
    if args.data_features:
        train_features = load_features(args.data_features, data, args.library)
    else:
        train_features, _ = reference_features(data, args.library, device=args.device)
    if args.sample_features:
        sample_features = load_features(args.sample_features, all_samples, args.library)[: len(samples.images)]
    else:
        sample_features = extract_features(samples.images, args.library, device=args.device, what=samples.description)
    features_seconds = time.perf_counter() - began
    inception = nearest_neighbours(sample_features, train_features, args.k)
    pixel = nearest_neighbours(samples.images.astype(np.float32) / 255, data.images.astype(np.float32) / 255, args.k)
    meta = {"samples": samples.description, "data": data.description, "k": args.k,
            "feature_extractor": extractor_description(args.library), "pixel_metric": "L2 on pixels / 255",
            "timing": {"features_s": features_seconds}}
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, inception_indices=inception[0], inception_distances=inception[1],
                     pixel_indices=pixel[0], pixel_distances=pixel[1], meta=np.array(json.dumps(meta)))
    print(json.dumps({"out": args.out, **meta}, indent=2))
    return 0
