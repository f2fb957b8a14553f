"""Where the CPU study's compute goes, kernel by kernel, and what the alternatives to the pipeline's arithmetic buy.

The study (config/study.yaml) spends 95 % of its core-time in three kernels: a training step of the tiny
U-Net (batch 64), the network's forward pass while sampling (batch ``evaluation.batch_size`` = 200), and the
TF-Inception forward pass of the score jobs (torch-fidelity, batch 8 on the CPU). This benchmark times each
the way the pipeline runs it (one thread, fp32, oneDNN, default memory layout) against the alternatives a
CPU user could switch on without changing the science:

- training: channels-last layout; oneDNN off (im2col + GEMM); ``torch.compile`` (``--compile``: its first
  step compiles for minutes, so it is off by default)
- sampling forward: channels-last; batch 100 instead of 200
- Inception: batch 16 (oneDNN then also takes the 1x1 convolutions); TorchScript freeze +
  ``optimize_for_inference`` (folds batch norm into the convolutions); the features' largest difference from
  the pipeline's is reported beside each

Variants are timed in interleaved rounds (A B C A B C ...) and reported as the median over rounds with the
spread, since a shared virtual machine's speed drifts (steal time) over a minute. Usage:

    python benchmarks/bench_kernels.py [--rounds 5] [--compile] [--out docs/results/kernels.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from gbm.nets import UNet, count_parameters, unet_config

TRAIN_BATCH, SAMPLE_BATCH, INCEPTION_IMAGES = 64, 200, 48


def _layout(net: torch.nn.Module, x: torch.Tensor, channels_last: bool):
    if channels_last:
        return net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    return net, x


def training_step_s(base: UNet, *, channels_last=False, onednn=True, compiled=False, steps=8) -> float:
    """Seconds per Adam step of ``base`` on a batch of 64 MNIST-sized images (noise regression loss)."""
    torch.backends.mkldnn.enabled = onednn
    try:
        net, x = _layout(copy.deepcopy(base), torch.randn(TRAIN_BATCH, 1, 28, 28), channels_last)
        t = torch.rand(TRAIN_BATCH)
        optimizer = torch.optim.Adam(net.parameters(), lr=2e-4)
        forward = torch.compile(net) if compiled else net

        def step():
            optimizer.zero_grad()
            forward(x, t).pow(2).mean().backward()
            optimizer.step()

        step()  # warm-up (and compilation)
        began = time.perf_counter()
        for _ in range(steps):
            step()
        return (time.perf_counter() - began) / steps
    finally:
        torch.backends.mkldnn.enabled = True


def sampling_forward_ms(base: UNet, *, batch=SAMPLE_BATCH, channels_last=False, images=800) -> float:
    """Milliseconds per image of the network's forward pass without gradients at ``batch`` images."""
    net, x = _layout(copy.deepcopy(base).eval(), torch.randn(batch, 1, 28, 28), channels_last)
    t = torch.rand(batch)
    with torch.no_grad():
        net(x, t)
        began, done = time.perf_counter(), 0
        while done < images:
            net(x, t)
            done += batch
    return 1000 * (time.perf_counter() - began) / done


def inception_variants():
    """The pipeline's extractor and a TorchScript-frozen copy of it (traced on a batch of 8)."""
    from gbm.metrics.features import torch_fidelity_extractor

    eager = torch_fidelity_extractor(torch.device("cpu"))
    example = torch.zeros(8, 3, 28, 28, dtype=torch.uint8)
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(eager, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    return eager, frozen


def inception_s_per_200(model, images: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    """Seconds per 200 images (one score job's fakes) and the features."""
    out = []
    with torch.no_grad():
        model(images[:batch])
        began = time.perf_counter()
        for start in range(0, len(images), batch):
            out.append(model(images[start:start + batch])[0])
    return (time.perf_counter() - began) / len(images) * 200, torch.cat(out)


def rounds_summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "rounds": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (minutes to compile)")
    parser.add_argument("--out", default="results/benchmarks/kernels.json")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = UNet(unet_config("tiny", in_channels=1, out_channels=1))
    rng = np.random.default_rng(0)
    digits = torch.from_numpy(np.repeat(rng.integers(0, 256, (INCEPTION_IMAGES, 1, 28, 28), dtype=np.uint8), 3, 1))
    eager, frozen = inception_variants()

    train_variants = {"pipeline (oneDNN, default layout)": {}, "channels-last": {"channels_last": True},
                      "oneDNN off": {"onednn": False}}
    forward_variants = {"pipeline (batch 200, default layout)": {}, "channels-last": {"channels_last": True},
                        "batch 100": {"batch": 100}}
    inception = {"pipeline (batch 8)": (eager, 8), "batch 16": (eager, 16), "TorchScript frozen (batch 8)": (frozen, 8)}
    timings: dict = {"training_step_s": {}, "sampling_forward_ms_per_image": {}, "inception_s_per_200_images": {}}
    differences: dict = {}
    for round_ in range(args.rounds):
        for name, kwargs in train_variants.items():
            timings["training_step_s"].setdefault(name, []).append(training_step_s(base, **kwargs))
        for name, kwargs in forward_variants.items():
            timings["sampling_forward_ms_per_image"].setdefault(name, []).append(sampling_forward_ms(base, **kwargs))
        reference = None
        for name, (model, batch) in inception.items():
            seconds, features = inception_s_per_200(model, digits, batch)
            timings["inception_s_per_200_images"].setdefault(name, []).append(seconds)
            reference = features if reference is None else reference
            differences[name] = float((features - reference).abs().max())
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    compiled = None
    if args.compile:
        began = time.perf_counter()
        compiled = {"step_s": training_step_s(base, compiled=True), "first_call_included_s": None}
        compiled["first_call_included_s"] = time.perf_counter() - began

    result = {
        "benchmark": "bench_kernels",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(), "torch": torch.__version__},
        "network": {"size": "tiny", "parameters": count_parameters(base), "train_batch": TRAIN_BATCH,
                    "sample_batch": SAMPLE_BATCH},
        "inception_images_timed": INCEPTION_IMAGES,
        "rounds": args.rounds,
    }
    for kernel, variants in timings.items():
        summary = {name: rounds_summary(values) for name, values in variants.items()}
        pipeline = next(iter(summary.values()))["median"]
        for entry in summary.values():
            entry["relative_to_pipeline"] = entry["median"] / pipeline
        result[kernel] = summary
    result["inception_feature_max_abs_difference"] = differences
    if compiled is not None:
        result["training_step_s"]["torch.compile"] = compiled
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {n: round(v["median"], 4) for n, v in result[k].items() if "median" in v}
                      for k in timings}, indent=2))


if __name__ == "__main__":
    main()
