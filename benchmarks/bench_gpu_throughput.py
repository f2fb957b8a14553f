"""GPU throughput of the one-GPU benchmark's pieces (issue 28), each at every speed setting (gbm/speed.py).

For each setting (precision fp32/bf16 x channels_last off/on, x TF32 off/on on CUDA; ``--compile`` adds
torch.compile'd variants) it measures on one device:
- training images/s of the training step ``gbm train`` runs (loss, backward, gradient clipping, Adam, EMA;
  no logging or checkpoints), the model FLOPs per trained image (torch.utils.flop_counter.FlopCounterMode
  over one forward and backward pass; counted once, in fp32: FLOPs do not depend on the precision) and the
  model FLOP utilisation against ``--peak-flops`` (default: an H100 SXM's dense bf16 peak, 989 TFLOP/s);
- sampler images/s of ``gbm.sampling.sample`` for each method's sampler in config/gpu.yaml at ``--sample-steps``
  levels from per-image seeds, and the share of that time spent drawing the per-image noise on the CPU and
  copying it to the device (``gbm.seeding.PerSampleGenerator``, one draw per level);
- Inception (torch-fidelity) feature images/s at each of ``--feature-batches`` (precision and channels_last
  applied around ``gbm.metrics.features.extract_features``; the pipeline's scores stay fp32).
Weights are untrained: throughput does not depend on them (the samplers run with ``allow_nonfinite``).
bf16 runs here on the CPU too (autocast works there), although ``gbm train`` refuses it off CUDA.

    python benchmarks/bench_gpu_throughput.py --out results/bench/gpu_throughput.json           # on a GPU
    python benchmarks/bench_gpu_throughput.py --tiny --out results/bench/gpu_throughput-cpu.json # any CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gbm.config import config_from_dict
from gbm.data import RawDataset, save_prepared
from gbm.ema import EMA
from gbm.methods import method_of
from gbm.models import state_shape
from gbm.nets import count_parameters
from gbm.runs import environment_record, resolve_device
from gbm.sampling import sample
from gbm.seeding import PerSampleGenerator
from gbm.speed import Speed, apply_to_model, tf32_matmuls
from gbm.training import prepare

SAMPLERS = {"gbm": "dale-langevin", "vp": "em", "cld": "sscs"}  # config/gpu.yaml's methods (GBM's other: alike)
H100_BF16_DENSE = 989e12


def synthetic_dataset(path: Path, n: int, size: int) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    return save_prepared(RawDataset(images, labels, images[:16], labels[:16], source="synthetic"), "synthetic", path)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def settings(device: torch.device, compile_too: bool) -> list[dict]:
    tf32 = [False, True] if device.type == "cuda" else [False]
    out = [{"precision": p, "channels_last": c, "tf32": t, "compile": False}
           for p, c, t in itertools.product(["fp32", "bf16"], [False, True], tf32) if not (p == "bf16" and t)]
    if compile_too:
        out += [dict(s, compile=True) for s in out]
    return out


def setup_for(method: str, data: Path, args, setting: dict, device: torch.device):
    config = config_from_dict({"seed": 0, "data": {"path": str(data)}, "sde": {"name": method},
                               "model": {"size": args.size},
                               "train": {"steps": 1, "batch_size": args.batch_size, "lr": 2e-4}})
    setup = prepare(config, device)
    speed = Speed(setting["precision"], setting["tf32"] and device.type == "cuda", setting["channels_last"])
    apply_to_model(setup.model, speed)  # directly, so bf16 is measured on the CPU as well
    setup.speed = speed
    if setting["compile"]:
        setup.model.backbone = torch.compile(setup.backbone)
    return setup


def training_step(setup, optimizer, ema, noise, batch_size: int):
    """One step of ``gbm.training.train``'s loop (its batches in order), without logging or checkpoints."""
    counter = itertools.count()

    def step():
        x0 = setup.data.batch(next(counter), batch_size)
        loss = setup.loss_fn(setup.model, x0, generator=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(list(setup.backbone.parameters()), 1.0, foreach=True)
        optimizer.step()
        ema.update(setup.backbone)
    return step


def flops_per_image(setup, batch_size: int) -> dict:
    """Model FLOPs of one forward and of one forward + backward, per image (fp32 setup, counted once)."""
    x0 = setup.data.batch(0, batch_size)
    t = torch.full((batch_size,), 0.5, device=x0.device)
    x = setup.sde.initial_state(x0)
    with FlopCounterMode(display=False) as forward:
        setup.model.backbone(setup.sde.network_input(x), t)
    with FlopCounterMode(display=False) as step:
        setup.loss_fn(setup.model, x0, generator=torch.Generator().manual_seed(0)).backward()
    setup.backbone.zero_grad(set_to_none=True)
    return {"forward": forward.get_total_flops() / batch_size, "train_step": step.get_total_flops() / batch_size}


def measure_training(setup, args, device) -> float:
    optimizer = torch.optim.Adam(setup.backbone.parameters(), lr=2e-4)
    ema = EMA(setup.backbone, 0.999)
    step = training_step(setup, optimizer, ema, torch.Generator().manual_seed(1), args.batch_size)

    def steps():
        for _ in range(args.steps):
            step()
    with tf32_matmuls(setup.speed):
        seconds = timed(steps, device, warmup=1, repeats=args.repeats)
    return args.steps * args.batch_size / seconds


def measure_sampler(setup, method: str, args, device) -> dict:
    sde = setup.sde
    shape = (args.sample_batch, *state_shape(sde, setup.data.shape))
    seeds = list(range(args.sample_batch))
    record = {"priors": setup.priors}

    def run():
        generator = PerSampleGenerator(seeds)
        x_T = method_of(sde).start(sde, record, None, {}, shape, generator, device)
        with torch.no_grad():
            return sample(sde, setup.model, x_T, method=SAMPLERS[method], steps=args.sample_steps,
                          generator=generator, allow_nonfinite=True)
    setup.backbone.eval()
    with tf32_matmuls(setup.speed):
        seconds = timed(run, device, warmup=1, repeats=args.repeats)
        nfe = run().nfe

    def noise():  # the per-image noise of one batch at every level: drawn on the CPU, copied to the device
        generator = PerSampleGenerator(seeds)
        for _ in range(args.sample_steps):
            generator.randn(shape[1:], device=device)
    noise_seconds = timed(noise, device, warmup=1, repeats=args.repeats)
    return {"sampler": SAMPLERS[method], "steps": args.sample_steps, "nfe": nfe, "batch_size": args.sample_batch,
            "images_per_s": args.sample_batch / seconds, "image_evaluations_per_s": args.sample_batch * nfe / seconds,
            "noise_draw_and_copy_s": noise_seconds, "noise_share": noise_seconds / seconds}


def measure_features(setting: dict, args, device) -> list[dict] | str:
    from gbm.metrics.features import extract_features, torch_fidelity_extractor
    from gbm.metrics.weights import inception_weights

    if inception_weights() is None:
        return "no offline Inception weights (gbm.metrics.weights)"
    if setting["compile"]:
        return "not compiled (the pipeline's feature extractor is used as it is)"
    model = torch_fidelity_extractor(device)
    layout = torch.channels_last if setting["channels_last"] else torch.contiguous_format
    model.to(memory_format=layout)
    images = np.random.default_rng(0).integers(0, 256, (args.feature_n, 1, 28, 28), dtype=np.uint8)
    rows = []
    for batch in args.feature_batches:
        def run():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting["precision"] == "bf16"):
                extract_features(images, device=device, batch_size=batch)
        with tf32_matmuls(Speed(tf32=setting["tf32"])):
            seconds = timed(run, device, warmup=1, repeats=args.repeats)
        rows.append({"batch_size": batch, "images_per_s": args.feature_n / seconds})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="CPU-sized: U-Net tiny, batch 8, 2 timed steps, 8 samples x 2 levels, 8 feature images")
    parser.add_argument("--size", default="base", help="U-Net size (gbm/nets.py; config/gpu.yaml: base)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch (config/gpu.yaml: 128)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    parser.add_argument("--sample-batch", type=int, default=1000, help="sampling batch (config/gpu.yaml: 1000)")
    parser.add_argument("--sample-steps", type=int, default=20, help="sampler levels (config/gpu.yaml: 20)")
    parser.add_argument("--feature-n", type=int, default=2048, help="images per feature measurement")
    parser.add_argument("--feature-batches", type=int, nargs="+", default=[64, 256, 512, 1024])
    parser.add_argument("--methods", nargs="+", default=sorted(SAMPLERS), choices=sorted(SAMPLERS))
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (median)")
    parser.add_argument("--peak-flops", type=float, default=H100_BF16_DENSE,
                        help="the device's peak FLOP/s for the utilisation (default H100 SXM dense bf16, 989e12)")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd backbones")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/gpu_throughput.json")
    args = parser.parse_args()
    if args.tiny:
        args.size, args.batch_size, args.steps, args.repeats = "tiny", 8, 2, 1
        args.sample_batch, args.sample_steps, args.feature_n, args.feature_batches = 8, 2, 8, [4, 8]
    device = resolve_device(args.device)
    began = time.perf_counter()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_dataset(Path(tmp) / "data.npz", n=max(1024, 4 * args.batch_size), size=28)
        flops = {m: flops_per_image(setup_for(m, data, args, settings(device, False)[0], device), args.batch_size)
                 for m in args.methods}
        for setting in settings(device, args.compile):
            row = dict(setting, training={}, sampling={})
            for method in args.methods:
                try:
                    setup = setup_for(method, data, args, setting, device)
                    rate = measure_training(setup, args, device)
                    row["training"][method] = {
                        "images_per_s": rate, "flops_per_image": flops[method]["train_step"],
                        "model_flop_utilisation": rate * flops[method]["train_step"] / args.peak_flops,
                        "params": count_parameters(setup.backbone)}
                    row["sampling"][method] = measure_sampler(setup, method, args, device)
                except Exception as error:  # noqa: BLE001 - a setting that fails (compile) is recorded, not fatal
                    row["training"][method] = row["sampling"][method] = f"{type(error).__name__}: {error}"
            row["features"] = measure_features(setting, args, device)
            rows.append(row)
            summary = {m: round(v["images_per_s"], 1) for m, v in row["training"].items() if isinstance(v, dict)}
            print(f"{setting}: training images/s {summary}", file=sys.stderr)

    record = {
        "benchmark": "gpu_throughput",
        "tiny": args.tiny,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "peak_flops": args.peak_flops,
        "arguments": {k: v for k, v in vars(args).items() if k != "out"},
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "flops_per_image": flops,
        "results": rows,
        "wall_s": time.perf_counter() - began,
        "environment": environment_record(device),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
