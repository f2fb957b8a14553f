"""How much two training seeds of one row share their samples: every evaluation samples image i from noise seed
i (``--seed-start 0`` in workflow/rules/common.smk), at every training seed and for every method, so two
networks of one row are given the same noise. This measures, per row of a finished run, the mean pixel
correlation of image i at seed 0 with image i at seed 1 (same noise) and with image i+1 (other noise), and the
same across two methods at seed 0. A same-noise correlation well above the other-noise one says the seeds'
spread of a metric leaves out most of the N samples' variation. Writes JSON. Usage:

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


def _images(path: Path) -> np.ndarray:
    with np.load(path) as data:
        images = data["images"]
    return images.reshape(len(images), -1).astype(np.float64)


def mean_correlation(a: np.ndarray, b: np.ndarray, shift: int = 0) -> float:
    """Mean over i of the Pearson correlation of a[i] with b[(i + shift) % n] (flat frames give NaN, skipped)."""
    b = np.roll(b, -shift, axis=0)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (a * b).sum(axis=1) / denominator
    return float(np.nanmean(values))


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
        a, b = _images(seed0), _images(seed1)
        rows.append({"dataset": evaluation.dataset, "method": evaluation.method, "sampler": evaluation.sampler,
                     "same_noise": mean_correlation(a, b), "other_noise": mean_correlation(a, b, shift=1)})
    for dataset in sorted({row["dataset"] for row in rows}):
        for (m1, s1), (m2, s2) in PAIRS_ACROSS_METHODS:
            p1 = _samples(Evaluation(dataset, m1, 0, s1, args.steps, str(args.results)))
            p2 = _samples(Evaluation(dataset, m2, 0, s2, args.steps, str(args.results)))
            if p1.exists() and p2.exists():
                a, b = _images(p1), _images(p2)
                across.append({"dataset": dataset, "rows": [f"{m1}/{s1}", f"{m2}/{s2}"], "seed": 0,
                               "same_noise": mean_correlation(a, b), "other_noise": mean_correlation(a, b, shift=1)})
    if not rows:
        raise SystemExit(f"--results: no row with samples at seeds 0 and 1 under {args.results}")
    for row in rows + across:
        name = row.get("rows") or f"{row['method']}/{row['sampler']}"
        print(f"{row['dataset']:14s} {str(name):60s} same noise {row['same_noise']:.2f}  other {row['other_noise']:.2f}")
    report = {"machine": platform.node(), "results": str(args.results), "steps": args.steps,
              "seed0_vs_seed1": rows, "across_methods": across}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
