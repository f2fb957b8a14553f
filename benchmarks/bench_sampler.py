"""Sampler overhead: time of one sampler step divided by one network forward on the same batch, per method.

The network is the shared U-Net (random weights, output layer zeroed so every state stays finite); the
forward is timed as the bare backbone call. A step is timed as a whole ``gbm.sampling.sample`` call
divided by its steps, so validation, the time grid and the sampler's statistics are all charged to it.
Goal: <= 1.05 per network call for the GBM samplers and "em". Because on a shared machine
the paired timing is noisy (a few per cent), ``ratio_isolated`` also times the sampler with a free stand-in
network (the score wrapper included) and reports ``(own work per call + forward) / forward``. Timed both with one batch
``torch.Generator`` and with the per-image ``PerSampleGenerator`` that ``gbm sample`` uses.

    python benchmarks/bench_sampler.py --size tiny --batch-size 64 --out results/bench/sampler.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from gbm.models import ScoreModel, state_shape
from gbm.nets import UNet, count_parameters, unet_config
from gbm.runs import environment_record, resolve_device
from gbm.sampling import sample
from gbm.methods import make_sde
from gbm.seeding import PerSampleGenerator

METHODS = [("gbm", "sign-agnostic"), ("gbm", "dale-langevin"), ("vp", "em"), ("vp", "pc"), ("vp", "ode"),
           ("cld", "sscs")]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device) -> float:
    _sync(device)
    began = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - began


class ZeroBackbone(torch.nn.Module):
    """A free stand-in for the network: zeros of the output shape, so only the sampler's own work is timed."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.out_channels = out_channels

    def forward(self, x, t):
        return torch.zeros_like(x[:, : self.out_channels])


def bench_method(sde_name: str, method: str, size: str, batch: int, image: int, steps: int, repeats: int,
                 device, per_sample: bool) -> dict:
    sde = make_sde(sde_name)
    shape = (1, image, image)
    state = state_shape(sde, shape)
    torch.manual_seed(0)
    net = UNet(unet_config(size, in_channels=state[0], out_channels=shape[0])).to(device).eval()
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)
    model = ScoreModel(sde, net)
    x_T = sde.prior_sample((batch, *state), noise=torch.randn(batch, *state)).to(device)
    t = torch.full((batch,), 0.5, device=device)
    net_input = sde.network_input(x_T)

    def forwards():
        with torch.no_grad():
            for _ in range(steps):
                net(net_input, t)

    def run():
        generator = PerSampleGenerator(range(batch)) if per_sample else torch.Generator().manual_seed(0)
        return sample(sde, model, x_T, method=method, steps=steps, generator=generator)

    def run_free():
        generator = PerSampleGenerator(range(batch)) if per_sample else torch.Generator().manual_seed(0)
        return sample(sde, free_model, x_T, method=method, steps=steps, generator=generator)

    free_model = ScoreModel(sde, ZeroBackbone(shape[0]))
    nfe = run().nfe
    run_free()
    forwards()
    # Paired measurements (forwards then sampler, back to back) so load changes on a shared machine cancel.
    pairs = [(_time(forwards, device) / steps, _time(run, device)) for _ in range(repeats)]
    forward = statistics.median(f for f, _ in pairs)
    own = statistics.median(_time(run_free, device) for _ in range(repeats))
    return {
        "sde": sde_name,
        "method": method,
        "generator": "per-sample" if per_sample else "batch",
        "steps": steps,
        "nfe": nfe,
        "forward_s": forward,
        "sampler_step_s": statistics.median(s for _, s in pairs) / steps,
        "ratio_step_to_forward": statistics.median(s / steps / f for f, s in pairs),
        "ratio_per_network_call": statistics.median(s / nfe / f for f, s in pairs),
        "sampler_own_work_per_step_s": own / steps,
        "ratio_isolated": (own / nfe + forward) / forward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=[m for _, m in METHODS])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/sampler.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    rows = []
    for sde_name, method in METHODS:
        if method not in args.methods:
            continue
        for per_sample in (False, True):
            row = bench_method(sde_name, method, args.size, args.batch_size, args.image_size, args.steps,
                               args.repeats, device, per_sample)
            rows.append(row)
            print(f"{sde_name:4s} {method:14s} {row['generator']:10s} nfe {row['nfe']:4d}  step/forward "
                  f"{row['ratio_step_to_forward']:.3f}  per-call/forward {row['ratio_per_network_call']:.3f}  "
                  f"isolated {row['ratio_isolated']:.4f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "sampler_overhead",
        "goal": "ratio_per_network_call <= 1.05 for sign-agnostic, dale-langevin and em",
        "size": args.size,
        "params": count_parameters(UNet(unet_config(args.size))),
        "batch_size": args.batch_size,
        "image_shape": [1, args.image_size, args.image_size],
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": os.getloadavg(),
        "threads": torch.get_num_threads(),
        "environment": environment_record(device),
        "results": rows,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
