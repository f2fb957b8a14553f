"""Results that describe themselves: the results layout built and parsed in one module (gbm.pipeline.layout), and
metrics.csv rows that carry the settings their records state (gbm.reporting.tables)."""

import json
from pathlib import Path

import pytest

from gbm.pipeline.config import load_config
from gbm.pipeline.layout import EVALUATION_DIR, RUN_DIR, Evaluation, Run, parse_sweep_directory, pattern
from gbm.reporting.tables import aggregate
from test_ablation import write_records  # the records gbm train, sample and score write (tests/ is on the path)

REPO = Path(__file__).resolve().parents[1]


def test_every_path_the_layout_builds_parses_back_to_what_built_it():
    evaluation = Evaluation("fashion_mnist", "gbm-tuned", 12, "dale-langevin-sqrt-t", 100)
    assert evaluation.directory == "results/fashion_mnist/gbm-tuned/seed12/dale-langevin-sqrt-t/steps100"
    assert Evaluation.from_directory(evaluation.directory) == evaluation
    assert Run.from_run_dir(evaluation.run.run_dir) == Run.from_seed_dir(evaluation.run.seed_dir) == evaluation.run
    moved = Evaluation.from_directory(f"/tmp/elsewhere/{evaluation.directory}")
    assert (moved.root, moved.directory) == ("/tmp/elsewhere/results", f"/tmp/elsewhere/{evaluation.directory}")
    setting = Path("results/guidance_sweep/mnist/gbm/seed0/dale-langevin/steps100/w0.5_bank64")
    assert parse_sweep_directory(setting) == (Evaluation("mnist", "gbm", 0, "dale-langevin", 100,
                                                         "results/guidance_sweep"), "w0.5_bank64")


@pytest.mark.parametrize("path", ["results/mnist/gbm/0/em/steps20", "results/mnist/gbm/seed0/em/20",
                                  "results/mnist/gbm/seedx/em/steps20", "steps20"])
def test_a_path_outside_the_layout_is_refused_naming_it(path):
    with pytest.raises(ValueError, match=f"^{path}: not an evaluation directory"):
        Evaluation.from_directory(path)
    with pytest.raises(ValueError, match="not a training run directory"):
        Run.from_run_dir("results/mnist/gbm/seed0")


def test_the_rules_wildcard_patterns_are_the_layouts():
    assert pattern(RUN_DIR) == "results/{dataset}/{method}/seed{seed}/run"
    assert pattern(EVALUATION_DIR) == "results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}"
    wildcards = {"dataset": "mnist", "method": "vp", "seed": "1", "sampler": "em", "steps": "20"}
    assert pattern(EVALUATION_DIR).format(**wildcards) == Evaluation("mnist", "vp", 1, "em", 20).directory


def test_metrics_csv_carries_the_settings_of_each_evaluation_from_its_records(tmp_path):
    runs = aggregate(write_records(load_config(REPO / "config" / "ablation.yaml"), tmp_path / "results"))
    tuned = runs[(runs["method"] == "gbm-tuned") & (runs["steps"] == 20) & (runs["seed"] == 1)].iloc[0]
    assert tuned[["sde.name", "sde.sigma", "sde.T", "loss.weighting", "grid", "end_time", "prior", "seed"]].tolist() \
        == ["gbm", 0.8, 1.0, "uniform-eps", "sqrt-t", 0.001, "correlated", 1]
    vp = runs[runs["method"] == "vp"].iloc[0]
    assert (vp["sde.name"], vp["sde.beta_max"], vp["loss.name"], vp["prior"]) == ("vp", 20.0, "DSMLoss", "fixed")
    assert vp.isna()["loss.weighting"]  # a setting its method does not have is empty
    paper = aggregate(write_records(load_config(REPO / "config" / "paper.yaml"), tmp_path / "paper"))
    authors = paper[(paper["dataset"] == "mnist") & (paper["method"] == "gbm") & (paper["sampler"] == "dale-langevin")]
    assert authors[["option.delta", "option.inner_steps", "option.gamma"]].iloc[0].tolist() == [6.16545e-4, 1, 0.995]


def test_a_training_record_of_another_seed_than_its_directory_is_refused(tmp_path):
    paths = write_records(load_config(REPO / "config" / "ablation.yaml"), tmp_path / "results")
    record = tmp_path / "results" / "mnist" / "vp" / "seed1" / "run" / "train_metrics.json"
    record.write_text(json.dumps(json.loads(record.read_text()) | {"seed": 0}))
    with pytest.raises(ValueError, match="training seed 0 in a directory of seed 1"):
        aggregate(paths)
