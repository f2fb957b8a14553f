"""config/study.yaml, the CPU study of issue 26: it validates, and its dry run (``snakemake -n -p``) plans both
datasets, every method entry the issue lists with its samplers (GBM (paper) with both samplers, GBM (tuned), the
loss-weight x time-grid 2x2 of SPEC 1a, VP EM and PC, CLD SSCS, the log-space control), two seeds, 100 steps,
N = 200, and the job counts of train, sample and score."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest

from gbm.pipeline.config import check_config, evaluations, load_config, noise_seed_start
from test_pipeline import REPO, SNAKEMAKE

STUDY = REPO / "config" / "study.yaml"
DATASETS = ["fashion_mnist", "mnist"]
SEEDS = [0, 1]
#: entry -> (registered method, loss options) of each trained model.
MODELS = {"gbm": ("gbm", {}), "gbm-tuned": ("gbm", {"weighting": "uniform-eps"}), "vp": ("vp", {}),
          "cld": ("cld", {}), "logvp-control": ("logvp", {})}
#: (entry, sampler label) -> the ``gbm sample`` arguments that make the row what it is.
ROWS = {
    ("gbm", "sign-agnostic"): ["--sampler sign-agnostic"],  # GBM (paper)
    ("gbm", "dale-langevin"): ["--sampler dale-langevin"],
    # the 2x2 of SPEC 1a, all from the correlated start: weight (sigma^2 t)^2 on gbm, sigma^2 t on gbm-tuned
    ("gbm", "dale-langevin-correlated"): ["--sampler dale-langevin", "--prior correlated"],
    ("gbm", "dale-langevin-correlated-sqrt-t"): ["--sampler dale-langevin", "--prior correlated",
                                                 "--option grid=sqrt-t", "--option end_time=0.001"],
    ("gbm-tuned", "dale-langevin-uniform-t"): ["--sampler dale-langevin", "--prior correlated"],
    ("gbm-tuned", "dale-langevin"): ["--sampler dale-langevin", "--prior correlated", "--option grid=sqrt-t",
                                     "--option end_time=0.001"],  # GBM (tuned)
    ("vp", "em"): ["--sampler em"],
    ("vp", "pc"): ["--sampler pc"],
    ("cld", "sscs"): ["--sampler sscs"],
    ("logvp-control", "em"): ["--sampler em"],
}


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[dict[str, int], list[str]]:
    """Job counts per rule and the shell commands of ``snakemake -n -p --configfile config/study.yaml``."""
    workdir = tmp_path_factory.mktemp("study")
    out = subprocess.run(SNAKEMAKE + ["-s", str(REPO / "Snakefile"), "-n", "-p", "--cores", "2", "--directory",
                                      str(workdir), "--configfile", str(STUDY)], capture_output=True, text=True,
                         cwd=workdir)
    assert out.returncode == 0, out.stderr + out.stdout
    stats = (out.stdout + out.stderr).split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    commands = [line for line in out.stdout.splitlines() if "gbm " in line]
    return counts, commands


def test_study_config_validates_with_two_seeds_n_200_and_100_steps():
    config = load_config(STUDY)
    check_config(config)
    assert sorted(config["datasets"]) == DATASETS and config["seeds"] == SEEDS
    assert config["evaluation"]["n_samples"] == 200 and config["train"]["steps"] == 1200
    assert config["comparisons"]["baseline"] == {"method": "vp", "sampler": "em"}
    assert {(e.method, e.sampler) for e in evaluations(config)} == set(ROWS)
    assert {e.steps for e in evaluations(config)} == {100}


def test_study_dry_run_plans_every_model_and_row_on_both_datasets(planned):
    counts, commands = planned
    # 2 datasets x 5 entries x 2 seeds = 20 models; per dataset and seed 10 rows -> 40 sample and score jobs;
    # one neighbours job per dataset x row
    assert {rule: counts[rule] for rule in ("prepare_data", "classifier", "floor", "train", "sample", "score",
                                            "track", "neighbours")} == {
        "prepare_data": 2, "classifier": 2, "floor": 2, "train": 20, "sample": 40, "score": 40, "track": 20,
        "neighbours": 20}
    trains = {}
    for command in (c for c in commands if "gbm train" in c):
        words = shlex.split(command[command.index("gbm train"):])
        dataset, entry, seed = re.search(r"results/(\w+)/([\w-]+)/seed(\d)/run", words[words.index("--out") + 1]).groups()
        trains[(dataset, entry, int(seed))] = json.loads(words[words.index("--json") + 1])
    assert set(trains) == {(d, e, s) for d in DATASETS for e in MODELS for s in SEEDS}
    for (dataset, entry, seed), job in trains.items():
        assert (job["sde"]["name"], job["loss"]) == MODELS[entry] and job["seed"] == seed
        assert job["train"]["steps"] == 1200 and job["model"]["size"] == "tiny"
    samples = {}
    for command in (c for c in commands if "gbm sample" in c):
        path = re.search(r"--out results/(\w+)/([\w-]+)/seed(\d)/([\w-]+)/steps(\d+)/samples.npz", command)
        samples[(path[1], path[2], int(path[3]), path[4])] = command
        assert path[5] == "100" and "--steps 100 --n 200" in command
    assert set(samples) == {(d, e, s, label) for d in DATASETS for (e, label) in ROWS for s in SEEDS}
    for (_, entry, _, label), command in samples.items():
        assert all(argument in command for argument in ROWS[(entry, label)]), command
        assert ("--prior correlated" in command) == ("--prior correlated" in ROWS[(entry, label)]), command
        assert ("grid=sqrt-t" in command) == ("--option grid=sqrt-t" in ROWS[(entry, label)]), command



def test_each_training_seed_samples_its_own_noise_and_every_row_of_a_seed_shares_it(planned):
    # issue 26: with one noise set for every seed, two seeds' networks drew nearly the same images and the
    # seeds' spread left out the samples' own variation. Seed s draws image i from noise seed s * N + i.
    _, commands = planned
    starts = {}
    for command in (c for c in commands if "gbm sample" in c):
        words = shlex.split(command[command.rindex("gbm sample"):])  # the command run, after its log's copy
        dataset, entry, seed, label = re.search(r"results/(\w+)/([\w-]+)/seed(\d)/([\w-]+)/steps",
                                                words[words.index("--out") + 1]).groups()
        n, start = int(words[words.index("--n") + 1]), int(words[words.index("--seed-start") + 1])
        starts[(dataset, entry, int(seed), label)] = range(start, start + n)
    assert len(starts) == 2 * len(ROWS) * len(SEEDS)
    for seed in SEEDS:  # every dataset, method and sampler at one seed: the same noise (paired within the seed)
        assert {starts[key] for key in starts if key[2] == seed} == {range(seed * 200, seed * 200 + 200)}
    assert not set(starts[("mnist", "vp", 0, "em")]) & set(starts[("mnist", "vp", 1, "em")])


def test_noise_seed_start_is_disjoint_across_seeds_and_refuses_what_it_cannot_place():
    n = 200
    ranges = [range(noise_seed_start(seed, n), noise_seed_start(seed, n) + n) for seed in range(6)]
    assert ranges[0] == range(0, 200)  # seed 0 keeps the noise every earlier evaluation used
    assert all(not set(a) & set(b) for i, a in enumerate(ranges) for b in ranges[i + 1:])
    for seed, n_samples in ((-1, 200), (0, 0)):
        with pytest.raises(ValueError, match="noise_seed_start"):
            noise_seed_start(seed, n_samples)
