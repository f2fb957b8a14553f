"""Cost of fitting the GBM priors: wall time and peak memory of ``fit`` per prior and form, on a prepared
dataset (MNIST's 60k training images) and on CIFAR-10-shaped (3,072-d) data, plus one prior draw and the
log-space mismatch diagnostic.

Each case runs in its own process; a thread polls its resident memory every 5 ms, and ``fit_extra_peak_mb``
is the peak during ``fit`` minus the resident memory just before it (the data already loaded). CIFAR-10 is not available offline: its case uses
random positive images of its shape (the cost of the moments and of the eigendecomposition depends on the
shape and the count, not on the pixel values).

    python benchmarks/bench_priors.py --data results/data/mnist.npz --out results/bench/priors.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from gbm.methods.gbm import GBM
from gbm.methods.gbm_priors import get_prior, log_data_moments, prior_mismatch
from gbm.pixels import to_positive
from gbm.runs import environment_record
from gbm.seeding import PerSampleGenerator


class PeakMemory:
    """Peak resident memory (MiB) of this process while the ``with`` block runs, polled every 5 ms."""

    def __enter__(self):
        import psutil

        self.process, self.running = psutil.Process(), True
        self.before_mb = self.peak_mb = self.process.memory_info().rss / 2**20
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        while self.running:
            self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak_mb = max(self.peak_mb, self.process.memory_info().rss / 2**20)


def _load(case: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if case["data"] == "synthetic-cifar10":
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (case["n"], 3, 32, 32), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (case["n"],), generator=g)
        return to_positive(images), labels, to_positive(images[:2000])
    from gbm.data import load_prepared

    prepared = load_prepared(case["data"])
    train = torch.from_numpy(np.ascontiguousarray(prepared.images("train")))[: case["n"]]
    labels = torch.from_numpy(prepared.labels("train"))[: case["n"]]
    return to_positive(train), labels, to_positive(torch.from_numpy(np.ascontiguousarray(prepared.images("test"))))


def run_case(case: dict) -> dict:
    """Time one prior fit (for ``correlated`` also its two parts), one draw of 256 and the diagnostic."""
    torch.set_num_threads(case["threads"])
    x0, labels, held_out = _load(case)
    sde, prior = GBM(), get_prior(case["prior"])
    options = {"rank": case["rank"]} if case.get("rank") else {}
    with PeakMemory() as memory:
        began = time.perf_counter()
        stats = prior.fit(sde, x0, labels, **options)
        fit_s = time.perf_counter() - began
    began = time.perf_counter()
    prior.sample(sde, stats, (256, *x0.shape[1:]), PerSampleGenerator(range(256)))
    sample_s = time.perf_counter() - began
    began = time.perf_counter()
    mismatch = prior_mismatch(sde, prior, stats, held_out)
    mismatch_s = time.perf_counter() - began
    result = case | {
        "n_train": len(x0), "dim": int(np.prod(x0.shape[1:])), "fit_s": fit_s, "sample_256_s": sample_s,
        "mismatch_s": mismatch_s, "n_held_out": len(held_out), "frechet": mismatch["frechet"],
        "relative_frechet": mismatch["relative_frechet"], "rss_before_fit_mb": memory.before_mb,
        "fit_peak_rss_mb": memory.peak_mb, "fit_extra_peak_mb": memory.peak_mb - memory.before_mb,
        "stats_mb": sum(v.numel() * v.element_size() for v in stats.values() if torch.is_tensor(v)) / 2**20,
    }
    if case["prior"] == "correlated":
        began = time.perf_counter()
        cov = log_data_moments(x0)["cov"]
        result["moments_s"] = time.perf_counter() - began
        began = time.perf_counter()
        torch.linalg.eigh(cov)
        result["eigh_s"] = time.perf_counter() - began
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="results/data/mnist.npz", help="prepared dataset (gbm prepare-data)")
    parser.add_argument("--n", type=int, default=60000, help="training images to fit on")
    parser.add_argument("--cifar-n", type=int, default=10000, help="CIFAR-10-shaped images (50k is the real split)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="results/bench/priors.json")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case as JSON (the child process)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return 0
    cases = [{"data": args.data, "n": args.n, "prior": "iid"},
             {"data": args.data, "n": args.n, "prior": "correlated"},
             {"data": args.data, "n": args.n, "prior": "correlated", "rank": 64},
             {"data": args.data, "n": args.n, "prior": "class-mean"},
             {"data": "synthetic-cifar10", "n": args.cifar_n, "prior": "correlated"},
             {"data": "synthetic-cifar10", "n": args.cifar_n, "prior": "correlated", "rank": 256}]
    results = []
    for case in cases:
        case = case | {"threads": args.threads}
        output = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], check=True,
                                capture_output=True, text=True).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    record = {"benchmark": "priors", "environment": environment_record(torch.device("cpu")), "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
