"""config/gpu.yaml, the one-GPU benchmark (issue 28): its full DAG (fast, a dry run), and the same file with
tiny steps, sizes and N run end to end on the CPU (slow): both datasets, every method and sampler it lists,
its speed switches accepted and recorded (TF32 and channels_last are not applied on the CPU).
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from test_pipeline import REPO, dry_run_counts, edit
from test_pipeline_e2e import prepared_mnist, snakemake, with_data  # noqa: F401 - a fixture

GPU = REPO / "config" / "gpu.yaml"
EVALUATIONS = [("cld", "sscs"), ("gbm", "dale-langevin"), ("gbm", "sign-agnostic"), ("gbm-tuned", "dale-langevin"),
               ("vp", "em")]


def test_gpu_benchmark_dag_trains_four_models_per_dataset_and_scores_five_samplers(tmp_path):
    counts = dry_run_counts(tmp_path, GPU)
    # (mnist, fashion_mnist) x (gbm, gbm-tuned, vp, cld) x seed 0 = 8 models; per dataset 5 evaluations (GBM's
    # two samplers, GBM (tuned)'s Dale-Langevin, VP's EM, CLD's SSCS) at one step count: 10 sample and score jobs
    assert {rule: counts[rule] for rule in ("prepare_data", "classifier", "floor", "train", "sample", "score",
                                            "neighbours", "track", "total")} == {
        "prepare_data": 2, "classifier": 2, "floor": 2, "train": 8, "sample": 10, "score": 10, "neighbours": 10,
        "track": 8, "total": 66}


def test_gpu_benchmark_scores_ten_thousand_samples_of_a_few_million_parameter_unet():
    config = yaml.safe_load(GPU.read_text())
    assert config["evaluation"]["n_samples"] == 10000 and config["evaluation"]["reference_split"] == "test"
    assert config["model"]["size"] == "base"  # 6.5M parameters (gbm/nets.py)
    assert config["datasets"] == ["mnist", "fashion_mnist"]


def tiny(config: dict) -> dict:
    """config/gpu.yaml with CPU-sized steps, network, data and N; its methods, samplers and switches kept."""
    for key, value in {"data_limit": 256, "threads": 1, "model.size": "tiny", "train.steps": 4,
                       "train.batch_size": 8, "train.warmup": 0, "train.checkpoint_every": 2,
                       "train.log_every": 2, "evaluation.n_samples": 16, "evaluation.batch_size": 16,
                       "evaluation.interval_draws": 4, "evaluation.grid": 16,
                       "evaluation.neighbours": {"queries": 2, "k": 2, "training_images": 64},
                       "evaluation.domain": {"training_images": 2000},  # the classifiers in seconds
                       "figures": {"trajectory_snapshots": 3, "toy_paths": 8}}.items():
        config = edit(config, key, value)
    config["model"]["channels"] = 4
    config["warm_workers"] = True  # 66 short jobs: the opt-in worker spares each its imports (same results)
    for entry in config["methods"].values():
        for sampler in entry["samplers"].values():
            sampler["steps"] = [2]
    return config


@pytest.mark.slow
def test_gpu_benchmark_with_tiny_steps_runs_end_to_end_on_the_cpu(tmp_path, prepared_mnist):  # noqa: F811
    workdir = with_data(tmp_path / "work", prepared_mnist)
    configfile = tmp_path / "gpu-tiny.yaml"
    configfile.write_text(yaml.safe_dump(tiny(yaml.safe_load(GPU.read_text()))))
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", str(configfile))

    table = pd.read_csv(workdir / "results" / "tables" / "benchmark.csv")
    for dataset in ("mnist", "fashion_mnist"):
        rows = table[table["dataset"] == dataset]
        assert sorted(zip(rows["method"], rows["sampler"])) == EVALUATIONS
    assert table[["fid_mean", "kid_mean", "nfe"]].notna().all().all() and (table["n"] == 16).all()
    cpu_speed = {"precision": "fp32", "tf32": False, "channels_last": False,
                 "requested": {"precision": "fp32", "tf32": True, "channels_last": True}}
    results = workdir / "results"
    train_metrics = sorted(results.glob("*/*/seed0/run/train_metrics.json"))
    samples = sorted(results.glob("*/*/seed0/*/steps2/samples.json"))
    assert len(train_metrics) == 8 and len(samples) == 10
    for path in train_metrics + samples:
        assert json.loads(path.read_text())["speed"] == cpu_speed, path


def test_comparisons_figure_of_one_seed_draws_each_point_without_an_interval(tmp_path):
    """config/gpu.yaml has one seed: every verdict is 'too few seeds' and no interval exists."""
    from gbm.reporting.figures import comparison_figure

    nan = float("nan")
    table = pd.DataFrame([{"dataset": d, "method": m, "sampler": s, "steps": 20, "baseline": "vp / em",
                           "level": 0.95, "fid_difference": 1.5, "fid_low": nan, "fid_high": nan,
                           "fid_verdict": "too few seeds", "kid_difference": 1e-3, "kid_low": nan, "kid_high": nan,
                           "kid_verdict": "too few seeds"}
                          for d in ("mnist", "fashion_mnist") for m, s in EVALUATIONS if m != "vp"])
    comparison_figure(table, tmp_path / "comparisons.png")
    assert (tmp_path / "comparisons.png").stat().st_size > 0
