"""Validation ladder (issue 24, item 3): do Inception FID/KID and the domain metrics order image sets whose
order is known?

Rungs (``gbm.metrics.ladder``): held-out test images, mild multiplicative grain, additive noise, blurred, one
class over-represented, blobs, empty and saturated frames; and, outside the order, 40 % collapsed frames among
real ones (VP Euler-Maruyama's failure), which must rank below mild grain. Each rung holds N images scored
against the first N test images by both families at the same N, with the pipeline's intervals. Writes JSON
(every number, the inversions of each metric, how it was run) and a markdown table. Usage:

    python benchmarks/bench_metric_ladder.py results/data/mnist.npz [--n 500] [--classifier FILE]
        [--out results/benchmarks/metric_ladder_mnist.json]

Without ``--classifier`` the dataset's classifier is trained with the default settings or taken from the
user cache (``gbm classifier``). Cost: Inception features of 9 x N images (~7-14 images/s on one CPU core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from gbm.data import load_prepared
from gbm.data.atomic import write_text_atomic
from gbm.metrics import ImageSet, extract_features, reference_features
from gbm.metrics.collapse import collapse_counters
from gbm.metrics.domain import (
    ClassifierSettings,
    classifier_for,
    domain_metrics,
    load_classifier,
)
from gbm.metrics.ladder import EXTRA, LADDER, inversions, ladder_sets, ordered
from gbm.metrics.scoring import metrics_from_features

#: (family, column, key in that family's result); lower is better for every one of them.
METRICS = (("inception", "FID", "fid"), ("inception", "KID", "kid_mean"), ("domain", "FD", "fd"),
           ("domain", "KID", "kid"), ("domain", "class TV", "class_tv"), ("domain", "1 - confident", "unconfident"))


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def score_rungs(prepared, classifier, n: int, draws: int, seed: int) -> dict:
    reference = prepared.test_images[:n]
    held_out, held_labels = prepared.test_images[n:2 * n], prepared.test_labels[n:2 * n]
    sets = ladder_sets(held_out, held_labels, prepared.test_images[2 * n:], prepared.test_labels[2 * n:], seed=seed)
    began = time.perf_counter()
    real_inception, cache = reference_features(ImageSet(reference, f"test[:{n}]"), "torch-fidelity", progress=True)
    options = {"interval_draws": draws, "seed": seed}
    rows = {}
    for name, images in sets.items():
        fake = extract_features(images, what=name, progress=True)
        inception = metrics_from_features(real_inception, fake, **options)
        domain = domain_metrics(classifier, reference, images, **options)
        domain["unconfident"] = 1 - domain["confident_share"]
        collapse = collapse_counters(images, classifier.record["collapse_calibration"])
        rows[name] = {
            "inception": {k: inception.get(k) for k in ("fid", "fid_ci", "kid_mean", "kid_ci")},
            "domain": {k: domain.get(k) for k in ("fd", "fd_ci", "kid", "kid_ci", "class_tv", "confident_share",
                                                   "unconfident")},
            "collapse": {k: v for k, v in collapse.items() if k != "protocol"},
        }
        print(f"{name:>16}: FID {inception['fid']:8.2f}  FD {domain['fd']:8.2f}  class TV {domain['class_tv']:.3f}",
              flush=True)
    return {"rows": rows, "reference_cache": cache, "seconds": time.perf_counter() - began}


def verdicts(rows: dict) -> dict:
    """Per metric: whether it orders the ladder, its inverted pairs, and whether it ranks the mixed collapse
    below mild grain."""
    out = {}
    for family, label, key in METRICS:
        values = [rows[name][family][key] for name in LADDER]
        out[f"{family} {label}"] = {
            "orders_ladder": ordered(values),
            "inversions": inversions(list(LADDER), values),
            "grain_better_than_mixed_collapse": rows["grain"][family][key] < rows["mixed-collapse"][family][key],
        }
    return out


def markdown(result: dict) -> str:
    rows, n = result["rows"], result["n"]
    header = ["rung"] + [f"{family} {label}" for family, label, _ in METRICS] + ["collapsed"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in LADDER + EXTRA:
        row = rows[name]
        cells = [name] + [_cell(row[family][key], key) for family, _, key in METRICS] + [f"{row['collapse']['any']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"N = {n} per rung against the first {n} test images of {result['dataset']}; lower is better in every "
                 "metric column; `collapsed`: share of frames any collapse counter flags.")
    lines.append("")
    for metric, verdict in result["verdicts"].items():
        inverted = ", ".join(f"{a} >= {b}" for a, b in verdict["inversions"]) or "none"
        lines.append(f"- {metric}: orders the ladder: {'yes' if verdict['orders_ladder'] else 'no'} "
                     f"(inversions: {inverted}); mild grain better than 40 % collapsed frames: "
                     f"{'yes' if verdict['grain_better_than_mixed_collapse'] else 'no'}")
    return "\n".join(lines) + "\n"


def _cell(value: float, key: str) -> str:
    return f"{value:.4f}" if key.startswith("kid") else f"{value:.3f}" if value < 1 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="prepared dataset file (gbm prepare-data)")
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--classifier", default=None, help="the dataset's classifier (gbm classifier); default: "
                                                           "trained with the default settings or from the cache")
    parser.add_argument("--interval-draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="JSON file (default results/benchmarks/metric_ladder_DATASET.json); "
                                                    "the markdown table goes beside it (.md)")
    args = parser.parse_args()
    prepared = load_prepared(args.data)
    dataset = prepared.meta.get("name", Path(args.data).stem)
    if 3 * args.n > len(prepared.test_images):
        raise SystemExit(f"--n {args.n}: the ladder needs 3 x N test images, {dataset} has {len(prepared.test_images)}")
    classifier = (load_classifier(args.classifier) if args.classifier
                  else classifier_for(args.data, ClassifierSettings(), progress=True)[0])
    scored = score_rungs(prepared, classifier, args.n, args.interval_draws, args.seed)
    result = {
        "dataset": dataset, "n": args.n, "ladder": list(LADDER), "extra": list(EXTRA), "rows": scored["rows"],
        "verdicts": verdicts(scored["rows"]), "classifier": classifier.description(),
        "run": {"git_revision": git_revision(), "seconds": scored["seconds"], "reference_cache": scored["reference_cache"],
                "interval_draws": args.interval_draws, "seed": args.seed, "torch_threads": torch.get_num_threads(),
                "machine": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
                "load_average": os.getloadavg(), "torch": torch.__version__, "numpy": np.__version__},
    }
    out = Path(args.out or f"results/benchmarks/metric_ladder_{dataset}.json")
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    write_text_atomic(out.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
