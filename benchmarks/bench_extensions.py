"""Cost of the issue-6 extensions, as JSON: (1) one guided sampler step / one unguided step at batch 256 with
a 1,024-image bank (goal <= 1.1); (2) one SSCS step / one network forward (goal <= 1.1).

The network is the shared U-Net from ``gbm.nets`` (random weights, output layer zeroed so states stay finite)
on 28x28 grayscale (MNIST-shaped) batches. Steps are timed as whole ``gbm.sampling.sample`` calls divided by
their steps (SSCS: also per network call, since it adds one denoising call); the median over repeats is
reported. On a shared CPU the paired ratios are noisy, so ``ratio_isolated`` also times the extra work alone
(the guidance term with a free stand-in score; SSCS with a free score) and reports ``(extra + forward) / forward``.

    python benchmarks/bench_extensions.py --size small --out results/bench/extensions.json
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

from gbm.guidance import guided_score_fn
from gbm.models import ScoreModel, state_shape
from gbm.nets import UNet, count_parameters, unet_config
from gbm.runs import environment_record, resolve_device
from gbm.sampling import sample
from gbm.methods import make_sde

CASES = [("vp", "em"), ("gbm", "dale-langevin"), ("cld", "sscs")]


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, device, repeats: int) -> float:
    fn()  # warm-up: first calls pay for allocation and kernel selection
    times = []
    for _ in range(repeats):
        _sync(device)
        began = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def _model(sde, size: str, shape, device):
    torch.manual_seed(0)
    net = UNet(unet_config(size, in_channels=state_shape(sde, shape)[0], out_channels=shape[0])).to(device).eval()
    torch.nn.init.zeros_(net.head[-1].weight)
    torch.nn.init.zeros_(net.head[-1].bias)
    return net, ScoreModel(sde, net)


def bench_guidance(sde_name, method, size, batch, bank_size, steps, repeats, device, shape) -> dict:
    sde = make_sde(sde_name)
    _, model = _model(sde, size, shape, device)
    state = state_shape(sde, shape)
    x_T = sde.prior_sample((batch, *state), noise=torch.randn(batch, *state)).to(device)
    bank = torch.rand(bank_size, *shape, device=device)
    bank = bank + 1.0 if sde_name == "gbm" else 2 * bank - 1
    guided = guided_score_fn(sde, model, bank, weight=1.0)
    unguided_s = _median_time(lambda: sample(sde, model, x_T, method=method, steps=steps), device, repeats) / steps
    guided_s = _median_time(lambda: sample(sde, guided, x_T, method=method, steps=steps), device, repeats) / steps
    # isolated: the guidance term alone (free stand-in score) against one forward, interleaved, many repeats
    t = torch.full((batch,), 0.5, device=device)
    correction_only = guided_score_fn(sde, lambda x, tt: torch.zeros_like(sde.velocities(x) if sde_name == "cld" else x),
                                      bank, weight=1.0)
    with torch.no_grad():
        forward_s = _median_time(lambda: model(x_T, t), device, 2 * repeats + 1)
        guidance_s = _median_time(lambda: correction_only(x_T, t), device, 2 * repeats + 1)
    return {"sde": sde_name, "sampler": method, "unguided_step_s": unguided_s, "guided_step_s": guided_s,
            "ratio": guided_s / unguided_s, "score_call_s": forward_s, "guidance_term_s": guidance_s,
            "ratio_isolated": (forward_s + guidance_s) / forward_s, "goal": 1.1}


def bench_sscs(size, batch, steps, repeats, device, shape) -> dict:
    sde = make_sde("cld")
    net, model = _model(sde, size, shape, device)
    state = state_shape(sde, shape)
    u_T = sde.prior_sample((batch, *state), noise=torch.randn(batch, *state)).to(device)
    t = torch.full((batch,), 0.5, device=device)

    def forward():
        with torch.no_grad():
            net(sde.network_input(u_T), t)

    forward_s = _median_time(forward, device, repeats)
    nfe = sample(sde, model, u_T, method="sscs", steps=steps).nfe
    total = _median_time(lambda: sample(sde, model, u_T, method="sscs", steps=steps), device, repeats)
    # isolated: the sampler's own work per network call with a free stand-in score
    free = lambda u, tt: torch.zeros_like(sde.velocities(u))  # noqa: E731
    own_s = _median_time(lambda: sample(sde, free, u_T, method="sscs", steps=steps), device, 2 * repeats + 1) / nfe
    return {"forward_s": forward_s, "sscs_step_s": total / steps, "nfe": nfe, "steps": steps,
            "ratio_per_step": total / steps / forward_s, "ratio_per_network_call": total / nfe / forward_s,
            "own_work_per_call_s": own_s, "ratio_isolated": (own_s + forward_s) / forward_s, "goal": 1.1}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", help="U-Net size from gbm.nets (tiny, small, base, paper)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--bank-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/extensions.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    shape = (1, 28, 28)
    began = time.perf_counter()
    result = {
        "benchmark": "extensions (issue 6): guidance overhead and SSCS step cost",
        "network": {"kind": "gbm.nets.UNet", "size": args.size,
                    "params": count_parameters(UNet(unet_config(args.size)))},
        "data_shape": list(shape),
        "batch_size": args.batch_size,
        "bank_size": args.bank_size,
        "guidance": [bench_guidance(s, m, args.size, args.batch_size, args.bank_size, args.steps, args.repeats,
                                    device, shape) for s, m in CASES],
        "sscs": bench_sscs(args.size, args.batch_size, args.steps, args.repeats, device, shape),
        "machine": {"device": str(device), "platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
        "environment": environment_record(device),
    }
    result["wall_s"] = time.perf_counter() - began
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("guidance", "sscs")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
