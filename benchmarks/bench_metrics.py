"""Metrics speed: feature extraction through gbm vs torch-fidelity directly, and cached vs uncached scoring.

Writes JSON (default results/benchmarks/metrics.json) with images/s of both paths on the same images and
device (torch-fidelity's own module in its default layout at batch 64, its default; gbm at its own
device-dependent layout and batch unless --batch-size is given), their ratio (goal >= 0.95), and the wall time of scoring N samples against a reference whose
features are cached vs not cached. Usage:

    python benchmarks/bench_metrics.py [--n-extract 64] [--n-score 1000] [--device auto] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from gbm.data import load_prepared
from gbm.metrics import ImageSet, extract_features, inception_weights, score
from gbm.runs import resolve_device


def torch_fidelity_direct(images: np.ndarray, device: torch.device, batch_size: int) -> float:
    """images/s of torch-fidelity's own extractor on the same weights and images (model build excluded)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with contextlib.redirect_stdout(io.StringIO()):
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=str(inception_weights().torch_fidelity))
    model = model.to(device).eval()
    rgb = torch.from_numpy(np.repeat(images, 3, axis=1) if images.shape[1] == 1 else images)
    with torch.no_grad():
        model(rgb[:2].to(device))
        start = time.perf_counter()
        for i in range(0, len(rgb), batch_size):
            model(rgb[i : i + batch_size].to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def gbm_extraction(images: np.ndarray, device: torch.device, batch_size: int | None) -> float:
    extract_features(images[:2], device=device)
    start = time.perf_counter()
    extract_features(images, device=device, batch_size=batch_size)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/data/mnist.npz")
    parser.add_argument("--n-extract", type=int, default=64)
    parser.add_argument("--n-score", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="gbm's batch (default: its own per device)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks/metrics.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    data = load_prepared(args.data)
    images = data.images("test")[: args.n_extract]

    direct = torch_fidelity_direct(images, device, 64)
    through_gbm = gbm_extraction(images, device, args.batch_size)

    real = ImageSet(data.images("test")[: args.n_score], f"{args.data}:test")
    fake = data.images("train")[: args.n_score]
    with tempfile.TemporaryDirectory() as stats_dir:
        start = time.perf_counter()
        uncached = score(real, fake, device=device, stats_dir=stats_dir)
        uncached_s = time.perf_counter() - start
        start = time.perf_counter()
        cached = score(real, fake, device=device, stats_dir=stats_dir)
        cached_s = time.perf_counter() - start
    assert (uncached["reference_cache"], cached["reference_cache"]) == ("miss", "hit")

    result = {
        "benchmark": "metrics",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "torch-fidelity": version("torch_fidelity"), "clean-fid": version("clean-fid")},
        "image_shape": list(images.shape[1:]),
        "extraction": {
            "n_images": len(images),
            "gbm_batch_size": args.batch_size or "default",
            "torch_fidelity_batch_size": 64,
            "gbm_images_per_s": through_gbm,
            "torch_fidelity_images_per_s": direct,
            "ratio_gbm_over_torch_fidelity": through_gbm / direct,
            "goal_ratio": 0.95,
        },
        "scoring": {
            "n_samples": args.n_score,
            "uncached_reference_s": uncached_s,
            "cached_reference_s": cached_s,
            "ratio_cached_over_uncached": cached_s / uncached_s,
            "fid": cached["fid"],
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
