"""Cost of Beta diffusion relative to GBM on the same U-Net: seconds per training step (loss + backward + Adam)
and per sampler step (one network level of ``beta`` against one of GBM's ``dale-langevin``), median of
``--repeats`` timings after a warm-up, on 1x28x28 images. Writes one JSON with both ratios.

    python benchmarks/bench_beta_cost.py --size tiny --batch 64 --out results/bench/beta_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gbm.methods import get_method
from gbm.models import ScoreModel
from gbm.nets import UNet, count_parameters, unet_config
from gbm.runs import environment_record
from gbm.sampling import sample
from gbm.seeding import PerSampleGenerator


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def method_costs(name: str, size: str, batch: int, steps: int, repeats: int, per_image_seeds: bool) -> dict:
    """Seconds per training step and per sampler step (``steps`` levels, divided by ``steps``) of method ``name``."""
    torch.manual_seed(0)
    method = get_method(name)
    images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
    x0 = method.to_data(images)
    sde = method.fit(method.make_sde(), x0)
    model = ScoreModel(sde, UNet(unet_config(size, in_channels=1, out_channels=1)))
    loss_fn = method.make_loss(sde)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, x0, generator=generator).backward()
        optimizer.step()

    sampler = {"gbm": "dale-langevin", "beta": "beta"}[name]

    def sampler_run():
        seeds = list(range(batch))
        noise = PerSampleGenerator(seeds) if per_image_seeds else torch.Generator().manual_seed(0)
        x_T = method.start(sde, {"priors": {}}, None, {}, (batch, 1, 28, 28), PerSampleGenerator(seeds), "cpu") \
            if name == "beta" else sde.prior_sample((batch, 1, 28, 28))
        sample(sde, model, x_T, method=sampler, steps=steps, generator=noise)

    return {"method": name, "sampler": sampler, "params": count_parameters(model),
            "train_step_s": _median_seconds(train_step, repeats),
            "sampler_step_s": _median_seconds(sampler_run, max(1, repeats // 4)) / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="sampler levels per timed run")
    parser.add_argument("--repeats", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/bench/beta_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = {}
    for name in ("gbm", "beta"):
        rows[name] = method_costs(name, args.size, args.batch, args.steps, args.repeats, per_image_seeds=True)
    rows["beta-batch-generator"] = method_costs("beta", args.size, args.batch, args.steps, args.repeats, False)
    result = {
        "what": "Beta diffusion cost relative to GBM, same U-Net, 1x28x28, CPU",
        "size": args.size, "batch": args.batch, "sampler_steps": args.steps, "repeats": args.repeats,
        "threads": args.threads, "rows": rows,
        "train_step_ratio_beta_over_gbm": rows["beta"]["train_step_s"] / rows["gbm"]["train_step_s"],
        "sampler_step_ratio_beta_over_gbm": rows["beta"]["sampler_step_s"] / rows["gbm"]["sampler_step_s"],
        "sampler_step_ratio_beta_batch_generator_over_gbm":
            rows["beta-batch-generator"]["sampler_step_s"] / rows["gbm"]["sampler_step_s"],
        "environment": environment_record(torch.device("cpu")),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if "ratio" in k} | {"rows": rows}, indent=2))


if __name__ == "__main__":
    main()
