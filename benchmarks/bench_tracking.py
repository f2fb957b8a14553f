"""Overhead of live MLflow logging on ``gbm train``, as JSON: the same training job with and without a
tracking URI (a SQLite store, as the pipeline uses), as whole ``gbm train`` processes. Goal: <= 1 %.

Each repetition runs the job untracked and tracked (order alternating), from a fresh run directory, on the
same synthetic MNIST-shaped data. Reported per mode: the training session's images/s (``train_metrics.json``:
the loop, checkpoints and final model, while the tracker imports mlflow, opens the store and writes in the
background) and the process wall time (start-up and exit included); the overhead is the relative loss of
median images/s. The store is created by one untimed tracked job first, as in a pipeline whose first job
has created it. ``--log-every`` sets how often the loop hands its losses over (``train.log_every``).

    python benchmarks/bench_tracking.py --steps 400 --repeats 3 --out results/bench/tracking.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from gbm.data import RawDataset, save_prepared

GBM = str(Path(sys.executable).parent / "gbm")


def synthetic_dataset(path: Path, n: int = 1024, size: int = 28) -> Path:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 1, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.int64)
    return save_prepared(RawDataset(images, labels, images[:16], labels[:16], source="synthetic"), "synthetic", path)


def run_job(config: Path, run_dir: Path, store: Path | None, device: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("MLFLOW_TRACKING_URI", None)
    if store is not None:
        env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{store}", "MLFLOW_EXPERIMENT_NAME": "bench"}
    began = time.perf_counter()
    out = subprocess.run([GBM, "train", str(config), "--out", str(run_dir), "--device", device, "--no-progress"],
                         env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if out.returncode != 0 or "warning" in out.stderr:
        raise RuntimeError(f"gbm train failed or warned:\n{out.stderr[-2000:]}")
    metrics = json.loads((run_dir / "train_metrics.json").read_text())
    return {"images_per_s": metrics["images_per_s"], "session_s": metrics["session_wall_time_s"], "process_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", help="U-Net size")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/bench/tracking.json")
    args = parser.parse_args()

    runs = {"untracked": [], "tracked": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        data = synthetic_dataset(workdir / "data.npz")
        config = workdir / "train.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"path": str(data)}, "sde": {"name": "gbm"}, "model": {"size": args.size},
            "train": {"steps": args.steps, "batch_size": args.batch_size, "log_every": args.log_every,
                      "checkpoint_every": args.steps}}))
        store = workdir / "mlflow.db"
        run_job(config, workdir / "store-creation", store, args.device, args.threads)
        for repeat in range(args.repeats):
            order = ["untracked", "tracked"] if repeat % 2 == 0 else ["tracked", "untracked"]
            for mode in order:
                result = run_job(config, workdir / f"{mode}{repeat}", store if mode == "tracked" else None,
                                 args.device, args.threads)
                runs[mode].append(result)
                print(f"repeat {repeat} {mode}: {result['images_per_s']:.1f} img/s, process {result['process_s']:.1f} s",
                      flush=True)

    median = {mode: statistics.median(r["images_per_s"] for r in rows) for mode, rows in runs.items()}
    overhead = 1 - median["tracked"] / median["untracked"]
    record = {
        "benchmark": "live_tracking_overhead",
        "goal": "overhead <= 0.01",
        "overhead": overhead,
        "median_images_per_s": median,
        "median_process_s": {mode: statistics.median(r["process_s"] for r in rows) for mode, rows in runs.items()},
        "runs": runs,
        "size": args.size, "batch_size": args.batch_size, "steps": args.steps, "log_every": args.log_every,
        "repeats": args.repeats, "threads": args.threads, "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": os.getloadavg(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"overhead {overhead:+.2%} (goal <= 1 %); wrote {out}")


if __name__ == "__main__":
    main()
