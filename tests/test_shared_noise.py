"""benchmarks/bench_shared_noise.py: the per-image correlation against numpy's definition, and the run's
reading (two seeds' images from the same noise against another image's noise) on a results tree."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from test_pipeline import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench_shared_noise  # noqa: E402


def test_mean_correlation_is_the_mean_of_per_image_pearson_correlations():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(12, 49)), rng.normal(size=(12, 49))
    b[:, :10] += a[:, :10]
    for shift in (0, 1, 5):
        expected = np.mean([np.corrcoef(a[i], b[(i + shift) % 12])[0, 1] for i in range(12)])
        assert abs(bench_shared_noise.mean_correlation(a, b, shift=shift) - expected) < 1e-12


def _run(tmp_path, starts):
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, size=(20, 1, 28, 28)).astype(np.float32)
    for seed, images in ((0, base), (1, base + 0.1 * rng.normal(size=base.shape).astype(np.float32))):
        folder = tmp_path / "mnist" / "vp" / f"seed{seed}" / "em" / "steps100"
        folder.mkdir(parents=True)
        np.savez(folder / "samples.npz", images=images, seeds=np.arange(starts[seed], starts[seed] + 20))
    out = tmp_path / "shared.json"
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_shared_noise.py"), "--results", str(tmp_path),
                    "--out", str(out)], check=True, capture_output=True, cwd=REPO)
    (row,) = json.loads(out.read_text())["seed0_vs_seed1"]
    assert (row["dataset"], row["method"], row["sampler"]) == ("mnist", "vp", "em")
    return row


def test_run_reads_same_index_above_other_index_and_counts_the_shared_noise_seeds(tmp_path):
    row = _run(tmp_path, {0: 0, 1: 0})
    assert row["same_index"] > 0.9 and abs(row["other_index"]) < 0.1 and row["noise_seeds_shared"] == 20


def test_seeds_with_their_own_noise_share_no_noise_seed(tmp_path):
    assert _run(tmp_path, {0: 0, 1: 20})["noise_seeds_shared"] == 0
    assert _run(tmp_path / "overlap", {0: 0, 1: 15})["noise_seeds_shared"] == 5
