"""Training throughput of ``gbm train`` divided by a bare PyTorch loop with the same network, batch and optimizer.

The bare loop draws a random batch, perturbs it with the GBM kernel and regresses the noise (the M-DSM loss
in its epsilon form) with Adam: no EMA, clipping, logging, checkpoints or progress bar. ``gbm train`` is
timed on its steady state: a short run is trained first, then resumed for ``--steps`` more steps and the
resumed session's images/s (which includes its final checkpoint) is taken. Goal: ratio >= 0.9.

    python benchmarks/bench_train.py --sizes tiny small --out results/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from gbm.config import config_from_dict
from gbm.data import RawDataset, save_prepared
from gbm.nets import UNet, count_parameters, unet_config
from gbm.pixels import to_positive
from gbm.runs import environment_record, resolve_device
from gbm.training import train


def synthetic_dataset(path: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    return save_prepared(RawDataset(images, labels, images[:16], labels[:16], source="synthetic"), "synthetic", path)


def gbm_train_images_per_s(data: Path, size: str, batch: int, warmup: int, steps: int, device, workdir: Path) -> float:
    raw = {
        "data": {"path": str(data)},
        "sde": {"name": "gbm"},
        "model": {"size": size},
        "train": {"steps": warmup, "batch_size": batch, "lr": 2e-4, "checkpoint_every": 10**9},
    }
    run = Path(tempfile.mkdtemp(dir=workdir))
    train(config_from_dict(raw), run, device=device, progress=False)
    raw["train"]["steps"] = warmup + steps
    return train(config_from_dict(raw), run, device=device, progress=True)["images_per_s"]


def bare_images_per_s(images: torch.Tensor, size: str, batch: int, warmup: int, steps: int, device) -> float:
    torch.manual_seed(0)
    net = UNet(unet_config(size, in_channels=images.shape[1], out_channels=images.shape[1])).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
    images = images.to(device)
    sigma = 0.8

    def step():
        x0 = to_positive(images[torch.randint(len(images), (batch,), device=device)])
        t = torch.randint(1, 1000, (batch,), device=device).float() / 1000
        z = torch.randn_like(x0)
        x_t = x0 * torch.exp(sigma * t.sqrt()[:, None, None, None] * z)
        loss = (sigma**2 * t * (net(x_t.log(), t) - z).pow(2).flatten(1).sum(1)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    _sync(device)
    began = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - began)


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repetitions (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/train.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = synthetic_dataset(workdir / "data.npz", n=max(1024, 4 * args.batch_size), size=args.image_size)
        images = torch.from_numpy(np.load(data)["train_images"])
        for size in args.sizes:
            ours, bare = [], []
            for _ in range(args.repeats):
                bare.append(bare_images_per_s(images, size, args.batch_size, args.warmup, args.steps, device))
                ours.append(gbm_train_images_per_s(data, size, args.batch_size, args.warmup, args.steps, device, workdir))
            row = {
                "size": size,
                "params": count_parameters(UNet(unet_config(size))),
                "batch_size": args.batch_size,
                "image_shape": [1, args.image_size, args.image_size],
                "timed_steps": args.steps,
                "repeats": args.repeats,
                "gbm_train_images_per_s": statistics.median(ours),
                "bare_loop_images_per_s": statistics.median(bare),
                "ratio": statistics.median(ours) / statistics.median(bare),
                "gbm_train_all": ours,
                "bare_loop_all": bare,
            }
            results.append(row)
            print(f"{size}: gbm train {row['gbm_train_images_per_s']:.1f} img/s, bare {row['bare_loop_images_per_s']:.1f} "
                  f"img/s, ratio {row['ratio']:.3f} (goal >= 0.9)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "train_throughput",
        "goal": "ratio >= 0.9",
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "environment": environment_record(device),
        "results": results,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
