"""Reverse-time trajectories of a method's samplers: snapshots of x along the sampler (SPEC §10).

The samplers call the score once per update with the current state, so wrapping the model's score
function records the trajectory without touching the samplers: the state at every network call is kept
for a few evenly spaced calls, then the final sample is appended.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def sampler_snapshots(run_dir: Path, sampler: str, steps: int, count: int, images: int, device: str = "auto"):
    """uint8 frames (count, images, C, H, W) from the prior to the final sample, and their times."""
    from gbm import pixels
    from gbm.models import state_shape
    from gbm.runs import load_model, resolve_device
    from gbm.sampling import sample
    from gbm.seeding import PerSampleGenerator

    device = resolve_device(device)
    model, record = load_model(run_dir, device)
    sde = model.sde
    shape = state_shape(sde, tuple(record["data"]["shape"]))
    to_pixels = pixels.DATA_SPACE[record["data"]["space"]][1]
    generator = PerSampleGenerator(list(range(images)))
    x_T = sde.prior_sample((images, *shape), noise=generator.randn(shape).to(device))
    keep = set(np.linspace(0, steps - 1, count - 1).round().astype(int).tolist())
    frames, times, calls = [], [], 0

    def recording_score(x, t):
        nonlocal calls
        if calls in keep:
            frames.append(to_pixels(x.float().cpu())[0].numpy())
            times.append(float(t[0]))
        calls += 1
        return model(x, t)

    result = sample(sde, recording_score, x_T, method=sampler, steps=steps, generator=generator)
    frames.append(to_pixels(result.x.float().cpu())[0].numpy())
    times.append(float(sde.end_time))
    return np.stack(frames), times


def trajectory_figures(run_dir: Path, png: Path, steps: int, snapshots: int = 8, images: int = 6,
                       device: str = "auto") -> None:
    import yaml

    from gbm.methods import get_method
    from gbm.pipeline.layout import Run
    from gbm.reporting.figures import trajectory_figure
    from gbm.runs import RunDir

    method = get_method(yaml.safe_load(RunDir(run_dir).config.read_text())["sde"]["name"])
    frames = {name: sampler_snapshots(run_dir, name, steps, snapshots, images, device) for name in method.samplers}
    dataset = Run.from_run_dir(run_dir).dataset
    trajectory_figure(frames, png, title=f"{dataset}: reverse-time trajectories of the {method.label} samplers "
                                         f"({steps} steps, exact variant, image i from seed i)")
