"""How much two training seeds of one row share their samples. Image i of an evaluation is drawn from noise seed
``seed_start + i`` (the ``seeds`` array of samples.npz). Until issue 26 every training seed sampled from
seed_start 0, so two networks of one row were given the same noise and drew nearly the same images; since
then seed s starts at s * N (gbm.pipeline.config.noise_seed_start). This measures, per row of a finished run,
how many noise seeds seed 0's and seed 1's evaluations share, and the mean pixel correlation of image i at
seed 0 with image i at seed 1 (the same index: the same noise under the old protocol) and with image i+1
(another index), and the same across two methods at seed 0 (which share noise by design: paired within a
seed). A same-index correlation well above the other-index one says the seeds' spread of a metric leaves out
most of the N samples' variation. Writes JSON. Usage:

    python benchmarks/bench_shared_noise.py --results results --out results/benchmarks/shared_noise.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np

from gbm.data.atomic import write_text_atomic
from gbm.pipeline.layout import Evaluation

PAIRS_ACROSS_METHODS = ((("vp", "em"), ("logvp-control", "em")), (("vp", "em"), ("gbm-tuned", "dale-langevin")),
                        (("vp", "em"), ("gbm", "dale-langevin")))


def _samples(evaluation: Evaluation) -> Path:
    return Path(evaluation.directory) / "samples.npz"


def _images(path: Path) -> tuple[np.ndarray, set[int]]:
    """The flattened images of a samples.npz and the noise seeds they were drawn from."""
    with np.load(path) as data:
        images, seeds = data["images"], data["seeds"]
    return images.reshape(len(images), -1).astype(np.float64), {int(s) for s in seeds}


def mean_correlation(a: np.ndarray, b: np.ndarray, shift: int = 0) -> float:
    """Mean over i of the Pearson correlation of a[i] with b[(i + shift) % n] (flat frames give NaN, skipped)."""
    b = np.roll(b, -shift, axis=0)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (a * b).sum(axis=1) / denominator
    return float(np.nanmean(values))


def pair_reading(first: Path, second: Path) -> dict:
    """How two sample files relate: the noise seeds they share, and image i's correlation with image i of the
    other (the same index) and with image i+1 (another index)."""
    (a, noise_a), (b, noise_b) = _images(first), _images(second)
    return {"noise_seeds_shared": len(noise_a & noise_b), "same_index": mean_correlation(a, b),
            "other_index": mean_correlation(a, b, shift=1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("results/benchmarks/shared_noise.json"))
    args = parser.parse_args()
    rows, across = [], []
    for seed0 in sorted(args.results.glob(f"*/*/seed0/*/steps{args.steps}/samples.npz")):
        evaluation = Evaluation.from_directory(seed0.parent)
        seed1 = _samples(dataclasses.replace(evaluation, seed=1))
        if not seed1.exists():
            continue
        rows.append({"dataset": evaluation.dataset, "method": evaluation.method, "sampler": evaluation.sampler,
                     **pair_reading(seed0, seed1)})
    for dataset in sorted({row["dataset"] for row in rows}):
        for (m1, s1), (m2, s2) in PAIRS_ACROSS_METHODS:
            p1 = _samples(Evaluation(dataset, m1, 0, s1, args.steps, str(args.results)))
            p2 = _samples(Evaluation(dataset, m2, 0, s2, args.steps, str(args.results)))
            if p1.exists() and p2.exists():
                across.append({"dataset": dataset, "rows": [f"{m1}/{s1}", f"{m2}/{s2}"], "seed": 0,
                               **pair_reading(p1, p2)})
    if not rows:
        raise SystemExit(f"--results: no row with samples at seeds 0 and 1 under {args.results}")
    for row in rows + across:
        name = row.get("rows") or f"{row['method']}/{row['sampler']}"
        print(f"{row['dataset']:14s} {str(name):60s} noise seeds shared {row['noise_seeds_shared']:4d}  "
              f"same index {row['same_index']:.2f}  other {row['other_index']:.2f}")
    report = {"machine": platform.platform(), "results": args.results.name, "steps": args.steps,
              "seed0_vs_seed1": rows, "across_methods": across}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
