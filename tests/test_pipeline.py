"""The pipeline's DAG, configuration checks and GPU slots (fast; no training, no Inception)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from gbm.jobs import devices
from gbm.pipeline.config import ConfigError, check_config, evaluations, load_config, training_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def dry_run_counts(tmp_path: Path, configfile: Path | None = None) -> dict[str, int]:
    """Job counts per rule of ``snakemake -n`` in an empty working directory."""
    args = SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-n", "--cores", "2", "--directory", str(tmp_path)]
    if configfile is not None:
        args += ["--configfile", str(configfile)]
    out = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    stats = (out.stdout + out.stderr).split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}


def test_default_benchmark_dag_has_one_model_per_dataset_method_seed(tmp_path):
    counts = dry_run_counts(tmp_path)
    # MNIST x (gbm, gbm-tuned, vp) x 2 seeds at 100 sampler steps: gbm with 2 samplers, gbm-tuned and vp with
    # one each (the headline rows; the ablation rows are config/ablation.yaml). Inception runs in floor
    # (reference and neighbour bank, once per dataset) and score only.
    assert counts == {
        "resolved_config": 1, "prepare_data": 1, "classifier": 1, "floor": 1, "train": 6, "sample": 8, "score": 8,
        "neighbours": 4, "track": 6, "aggregate": 1, "tables": 1, "comparisons": 1, "figure_samples": 1,
        "figure_neighbours": 1, "figure_forward": 1, "figure_trajectories": 1, "figure_toy": 1, "figure_nfe": 1,
        "figure_loss": 1, "timing": 1, "prior_mismatch": 1, "all": 1, "total": 49,
    }


def test_paper_dag_covers_three_datasets_every_method_three_seeds(tmp_path):
    counts = dry_run_counts(tmp_path, REPO / "config" / "paper.yaml")
    # 3 datasets x 10 method entries (6 methods, Beta diffusion among them, + the GBM variants uniform-eps,
    # tuned, sigma0p5, sigma1p2) x 3 seeds = 90 models; per dataset and seed the sqrt-t, other-prior and guided
    # GBM rows, the additive and CLD rows and Beta diffusion's three step counts give 54 evaluations, so 486
    # sample and score jobs (guidance sweep apart); one neighbours job per dataset x entry x sampler shown (84).
    assert counts["prepare_data"] == counts["classifier"] == 3
    assert counts["train"] == 90
    assert counts["sample"] == counts["score"] == 486
    assert counts["track"] == 90
    assert counts["neighbours"] == 84


def test_prior_rows_pass_their_prior_to_gbm_sample(tmp_path):
    target = "results/mnist/gbm/seed0/dale-langevin-correlated/steps100/samples.npz"
    out = subprocess.run(SNAKEMAKE + ["-n", "-p", "--directory", str(tmp_path), target, "--configfile",
                                      str(REPO / "config" / "ablation.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    command = next(line for line in out.stdout.splitlines() if "gbm sample" in line)
    assert "--sampler dale-langevin" in command and "--prior correlated" in command
    config = edit(good_config(), "methods.gbm.samplers.dale-langevin-low",
                  {"sampler": "dale-langevin", "prior": "correlated", "prior_options": {"rank": 8}, "steps": [2]})
    check_config(config)


def test_guided_paper_rows_pass_the_guidance_and_the_train_split_bank_to_gbm_sample(tmp_path):
    target = "results/mnist/gbm/seed0/dale-langevin-guided/steps1000/samples.npz"
    out = subprocess.run(SNAKEMAKE + ["-n", "-p", "--directory", str(tmp_path), target, "--configfile",
                                      str(REPO / "config" / "paper.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    command = next(line for line in out.stdout.splitlines() if "gbm sample" in line)
    assert "--sampler dale-langevin" in command and "--option delta=0.000616545" in command
    assert "--guidance-data results/data/mnist.npz:train" in command
    assert "--guidance weight=0.1" in command and "--guidance repel=false" in command
    assert "--guidance normalise=true" in command


def test_paper_config_uses_the_authors_sampler_settings():
    config = load_config(REPO / "config" / "paper.yaml")
    samplers = config["methods"]["gbm"]["samplers"]
    assert samplers["dale-langevin"]["dataset_options"]["fashion_mnist"] == {
        "delta": 5.86273e-4, "inner_steps": 1, "gamma": 0.995}
    assert samplers["sign-agnostic"]["dataset_options"]["kmnist"] == {
        "delta": 2.11316e-4, "inner_steps": 3, "gamma": 1.0}
    assert samplers["sign-agnostic"]["steps"] == [1000]


def good_config() -> dict:
    return yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())


def edit(config: dict, key: str, value) -> dict:
    config = copy.deepcopy(config)
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[part]
    if value is KeyError:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return config


BAD_CONFIGS = [
    ("datasets", ["mnist", "imagenet"], "datasets[1]"),
    ("methods.ddpm", {"samplers": {"em": {"steps": [2]}}}, "methods.ddpm"),
    ("methods.gbm.samplers.heun", {"steps": [2]}, "methods.gbm.samplers.heun"),
    ("methods.vp.samplers.em.steps", [-5], "methods.vp.samplers.em.steps[0]"),
    ("methods.vp.samplers.em.steps", [], "methods.vp.samplers.em.steps"),
    ("seeds", [], "seeds"),
    ("seeds", "zero", "seeds"),
    ("train.steps", "many", "train.steps"),
    ("train.stepz", 5, "train.stepz"),
    ("train.warmup", 10**6, "train.warmup"),  # a schedule shorter than its warm-up cannot train
    ("train.lr_schedule", "linear", "train.lr_schedule"),
    ("model.size", "huge", "model.size"),
    ("train.steps", KeyError, "train.steps"),
    ("model.size", KeyError, "model.size"),
    ("model.sizes", "tiny", "model.sizes"),
    ("methods.gbm.sde", {"sigmaa": 1.0}, "methods.gbm.sde"),
    ("methods.gbm.sde", {"prior_log_mean": 0.0}, "methods.gbm.sde.prior_log_mean"),
    ("methods.vp.loss", {"weighting": "x"}, "methods.vp.loss.weighting"),
    ("evaluation.neighbours.bank", 5, "evaluation.neighbours.bank"),
    ("evaluaton", {}, "evaluaton"),
    ("methods.vp.samplers.em.prior", "correlated", "methods.vp.samplers.em.prior"),
    ("methods.gbm.samplers.dale-langevin.prior", "gaussian", "methods.gbm.samplers.dale-langevin.prior"),
    ("methods.gbm.samplers.dale-langevin.prior_options", {"rank": 0},
     "methods.gbm.samplers.dale-langevin.prior_options.rank"),
    ("methods.gbm.samplers.dale-langevin", {"steps": [5], "options": {"delta": 50}},
     "methods.gbm.samplers.dale-langevin"),
    ("methods.vp.samplers.em.options", {"snr": 0.16}, "methods.vp.samplers.em.options.snr"),
    ("methods.gbm.samplers.dale-langevin", {"steps": [5], "dataset_options": {"mnist": {"deltaa": 0.1}}},
     "methods.gbm.samplers.dale-langevin.dataset_options.mnist.deltaa"),
    ("comparisons", {"baseline": {"method": "ve", "sampler": "em"}}, "comparisons.baseline.method"),
    ("comparisons", {"baseline": {"method": "vp", "sampler": "pc"}}, "comparisons.baseline.sampler"),
    ("comparisons", {"baseline": {"method": "vp"}}, "comparisons.baseline.sampler"),
]


@pytest.mark.parametrize("key,value,named", BAD_CONFIGS, ids=[b[2] for b in BAD_CONFIGS])
def test_bad_config_is_refused_naming_the_key(key, value, named):
    check_config(good_config())
    with pytest.raises(ConfigError, match=re.escape(f"config key '{named}'")):
        check_config(edit(good_config(), key, value))


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(edit(good_config(), "methods.vp.samplers.em.steps", [-5])))
    out = subprocess.run(SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "--cores", "1", "--configfile", str(bad)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0
    assert "config key 'methods.vp.samplers.em.steps[0]'" in out.stderr + out.stdout
    assert not (tmp_path / "results").exists()


def test_training_configs_keep_the_backbone_and_budget_equal_across_methods():
    config = load_config(REPO / "config" / "config.yaml")
    gbm, vp, tuned = (training_config(config, "mnist", entry, 0) for entry in ("gbm", "vp", "gbm-tuned"))
    assert {k: v for k, v in gbm.items() if k != "sde"} == {k: v for k, v in vp.items() if k != "sde"}
    without_loss = lambda c: {k: v for k, v in c.items() if k != "loss"}  # noqa: E731
    assert without_loss(tuned) == without_loss(gbm)  # the tuned GBM variant differs in its loss only
    assert tuned["loss"] == {"weighting": "uniform-eps"}
    assert len({e.run for e in evaluations(config)}) == 6  # 1 dataset (MNIST) x 3 method entries x 2 seeds


def test_train_jobs_pass_the_whole_training_config_as_json_without_a_base_file(tmp_path):
    import json
    import shlex

    target = "results/mnist/gbm-tuned/seed1/run/model.pt"
    out = subprocess.run(SNAKEMAKE + ["-n", "-p", "--directory", str(tmp_path), target], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    command = shlex.split(next(line for line in out.stdout.splitlines() if "gbm train" in line))
    train = command[command.index("train"):]
    assert train[1] == "--json" and train[3:5] == ["--out", "results/mnist/gbm-tuned/seed1/run"]
    assert json.loads(train[2]) == training_config(load_config(REPO / "config" / "config.yaml"), "mnist",
                                                   "gbm-tuned", 1)
    assert not (REPO / "workflow" / "resources" / "train-base.yaml").exists()


def test_gbm_train_reads_the_same_configuration_from_json_as_from_a_yaml_file(tmp_path, capsys):
    import json

    from gbm.cli import build_parser, main
    from gbm.commands.train import config_from_args

    raw = training_config(load_config(REPO / "config" / "config.yaml"), "mnist", "gbm-tuned", 1)
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(raw))
    parse = build_parser("train").parse_args
    from_file = config_from_args(parse(["train", str(tmp_path / "train.yaml"), "--out", "run", "--set", "seed=3"]))
    from_json = config_from_args(parse(["train", "--json", json.dumps(raw), "--out", "run", "--set", "seed=3"]))
    assert from_json == from_file and from_json.seed == 3 and from_json.loss == {"weighting": "uniform-eps"}
    assert main(["train", "--out", str(tmp_path / "run")]) == 2
    assert "give exactly one of a YAML config file or --json TEXT" in capsys.readouterr().err


# --- GPU slots ------------------------------------------------------------------------------------------

SLOT_PROBE = [sys.executable, "-c", textwrap.dedent("""
    import os, sys, time
    start = time.time(); time.sleep(1.5)
    print(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), os.environ["GBM_DEVICE"], start, time.time())
""")]


def run_concurrently(n: int, env: dict) -> list[list[str]]:
    wrapper = [sys.executable, "-m", "gbm.jobs.devices", "--"]
    procs = [subprocess.Popen(wrapper + SLOT_PROBE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(n)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    return [o[0].split() for o in outs]


def slot_env(tmp_path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", devices.SLOTS_ENV)}
    env.update({devices.LOCK_DIR_ENV: str(tmp_path / "locks"), "PYTHONPATH": str(REPO)}, **extra)
    return env


def test_two_concurrent_jobs_hold_different_gpus(tmp_path):
    results = run_concurrently(2, slot_env(tmp_path, GBM_GPU_SLOTS="2"))
    assert sorted(r[0] for r in results) == ["0", "1"]
    assert all(r[1] == "cuda:0" for r in results)  # each job sees exactly its one device
    (a_start, a_end), (b_start, b_end) = [(float(r[2]), float(r[3])) for r in results]
    assert a_start < b_end and b_start < a_end  # they really ran at the same time


def test_jobs_share_out_the_devices_a_scheduler_made_visible(tmp_path):
    results = run_concurrently(2, slot_env(tmp_path, CUDA_VISIBLE_DEVICES="5,7"))
    assert sorted(r[0] for r in results) == ["5", "7"]


def test_a_single_scheduler_assigned_gpu_is_used_as_given(tmp_path):
    slot = devices.acquire(tmp_path, environ={"CUDA_VISIBLE_DEVICES": "GPU-1234"})
    assert slot == devices.Slot("GPU-1234", None)


def test_no_gpu_means_cpu_and_an_untouched_environment(tmp_path):
    env = slot_env(tmp_path, CUDA_VISIBLE_DEVICES="")
    assert devices.acquire(tmp_path, environ=env) == devices.Slot("cpu", None)
    assert devices.job_environment(devices.Slot("cpu", None), env)["CUDA_VISIBLE_DEVICES"] == ""


def test_a_job_waits_while_every_gpu_is_held(tmp_path):
    env = {devices.SLOTS_ENV: "1"}
    held = devices.acquire(tmp_path, environ=env)
    with pytest.raises(TimeoutError):
        devices.acquire(tmp_path, environ=env, timeout=0.3, poll=0.05)
    os.close(held.fd)  # the job exits: its lock goes with it
    assert devices.acquire(tmp_path, environ=env, timeout=1).device == "0"


def test_snakemake_gpu_resource_gives_concurrent_jobs_different_devices(tmp_path):
    (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""
        rule all:
            input: expand("job{{i}}.txt", i=[1, 2])
        rule job:
            output: "job{{i}}.txt"
            resources: gpu=1
            shell: "{sys.executable} -m gbm.jobs.devices -- sh -c "
                   "'echo $CUDA_VISIBLE_DEVICES $(date +%s.%N) > {{output}}; sleep 2; date +%s.%N >> {{output}}'"
    """))
    out = subprocess.run(SNAKEMAKE + ["--cores", "2", "--resources", "gpu=2"], capture_output=True, text=True,
                         cwd=tmp_path, env=slot_env(tmp_path, GBM_GPU_SLOTS="0,1"))
    assert out.returncode == 0, out.stderr
    lines = [(tmp_path / f"job{i}.txt").read_text().split() for i in (1, 2)]
    assert sorted(line[0] for line in lines) == ["0", "1"]
    starts, ends = [float(line[1]) for line in lines], [float(line[2]) for line in lines]
    assert max(starts) < min(ends)  # both held a GPU at the same time
