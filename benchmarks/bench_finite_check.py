"""Cost of the non-finite check in ``gbm.sampling.sample`` (issue 17), as JSON: the check alone against one
network forward (goal: (forward + check) / forward <= 1.01), and whole ``sample`` calls (watched) against the
method's raw sampler function (unwatched) on the same start and noise.

The network is the shared U-Net from ``gbm.nets`` (random weights, output layer zeroed so states stay finite)
on 28x28 grayscale (MNIST-shaped) batches; medians over repeats. On a shared CPU the paired whole-run ratio is
noisy; the isolated ratio is the figure to quote.

    python benchmarks/bench_finite_check.py --size small --out results/bench/finite_check.json
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

from gbm.methods import make_sde, method_of
from gbm.models import ScoreModel, state_shape
from gbm.nets import UNet, count_parameters, unet_config
from gbm.runs import environment_record, resolve_device
from gbm.sampling import FiniteWatch, sample
from gbm.seeding import PerSampleGenerator

CASES = [("gbm", "dale-langevin"), ("vp", "em"), ("cld", "sscs")]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def bench(sde_name, method, size, batch, steps, repeats, device, shape) -> dict:
    sde = make_sde(sde_name)
    torch.manual_seed(0)
    state = state_shape(sde, shape)
    net = UNet(unet_config(size, in_channels=state[0], out_channels=shape[0])).to(device).eval()
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)
    model = ScoreModel(sde, net)
    seeds = list(range(batch))
    x_T = sde.prior_sample((batch, *state), noise=PerSampleGenerator(seeds).randn(state)).to(device)
    t = torch.full((batch,), 0.5, device=device)
    watch = FiniteWatch(sde, method, steps, {}, batch, allow=False)
    with torch.no_grad():
        forward_s = _median_time(lambda: model(x_T, t), device, 2 * repeats + 1)
        check_s = _median_time(lambda: watch.look(x_T, t, 1), device, 20 * repeats + 1)
        raw_fn = method_of(sde).samplers[method]
        raw_s = _median_time(lambda: raw_fn(sde, model, x_T.clone(), steps=steps, generator=PerSampleGenerator(seeds)),
                             device, repeats)
    watched_s = _median_time(lambda: sample(sde, model, x_T, method=method, steps=steps,
                                            generator=PerSampleGenerator(seeds)), device, repeats)
    return {"sde": sde_name, "sampler": method, "forward_s": forward_s, "check_s": check_s,
            "ratio_isolated": (forward_s + check_s) / forward_s, "raw_sample_s": raw_s, "watched_sample_s": watched_s,
            "ratio_whole_run": watched_s / raw_s, "goal": 1.01}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="U-Net size from gbm.nets (tiny, small, base, paper)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/finite_check.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    shape = (1, 28, 28)
    began = time.perf_counter()
    result = {
        "benchmark": "non-finite check of gbm.sampling.sample (issue 17)",
        "network": {"kind": "gbm.nets.UNet", "size": args.size, "params": count_parameters(UNet(unet_config(args.size)))},
        "data_shape": list(shape),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "cases": [bench(s, m, args.size, args.batch_size, args.steps, args.repeats, device, shape) for s, m in CASES],
        "machine": {"device": str(device), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "environment": environment_record(device),
    }
    result["wall_s"] = time.perf_counter() - began
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["cases"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
