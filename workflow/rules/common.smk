# Configuration validation (before any job runs), input functions and the command prefixes the rules use.

import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, workflow.basedir)

from gbm.pipeline.config import (  # noqa: E402
    RESOLVED_CONFIG_NAME,
    method_name,
    evaluations,
    noise_seed_start,
    has_baseline,
    parse_overrides,
    resolve_config,
    sampler_name,
    sampler_guidance,
    sampler_options,
    sampler_prior,
    training_config,
)
from gbm.pipeline.layout import EVALUATION_DIR, RUN_DIR, SEED_DIR, Evaluation, Run, data_file, pattern  # noqa: E402
from gbm.reporting.failures import COMMAND_PREFIX, sampling_failure  # noqa: E402

# The run's configuration: the --configfile file(s) (also those a profile names) alone, or else
# config/config.yaml, then the --config overrides; completed only by the schema's defaults. Snakemake's own
# merge (the CLI config files on top of a `configfile:`) is replaced. Spawned cluster jobs receive the same
# --configfiles and --config arguments, so they resolve the same configuration.
# Errors name the key: "config key 'methods.vp.samplers.em.steps[0]': ...".
CONFIG_FILES = [str(path) for path in workflow.config_settings.configfiles]
CONFIG_OVERRIDES = list(workflow.config_settings.config_args or [])
_resolved = resolve_config(
    CONFIG_FILES, parse_overrides(CONFIG_OVERRIDES), default=Path(workflow.basedir) / "config" / "config.yaml"
)
config.clear()
config.update(_resolved)
RESOLVED_CONFIG = f"results/{RESOLVED_CONFIG_NAME}"

# Extra method modules (config key method_modules) are registered in every job through the environment.
os.environ["GBM_METHOD_MODULES"] = os.pathsep.join(
    str(Path(m).resolve()) if m.endswith(".py") else m for m in config["method_modules"]
)

# The local run's warm worker (gbm/jobs/warm/launch.py): started here, while Snakemake parses, for a
# plain `snakemake --cores N ...` (its preload then overlaps Snakemake's start-up), else in onstart.
WARM_WORKER = []
if config["warm_workers"] and workflow.is_main_process:
    from gbm.jobs.warm.launch import early_start, start_worker

    if early_start(sys.argv):
        WARM_WORKER.append(start_worker("results/logs/warm_worker.log", "while Snakemake parses the workflow"))


onstart:
    # On SLURM: stop here, before any job is submitted, where the executor's job-status query fails
    # (it would otherwise lose every job and wait forever; gbm/jobs/slurm.py).
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        from gbm.jobs.slurm import check_status_query

        settings = workflow.executor_settings
        check_status_query(settings.status_command, settings.init_seconds_before_status_checks)
    # Local runs: one warm worker serves every job's `gbm` command (gbm/jobs/warm/client.py).
    from gbm.jobs.warm.launch import start_worker, stop_worker

    if config["warm_workers"] and workflow.executor_plugin is not None and workflow.executor_plugin.name == "local":
        if not WARM_WORKER:
            WARM_WORKER.append(start_worker("results/logs/warm_worker.log", "in onstart"))
    else:  # started while parsing, but the jobs run elsewhere (a profile's executor) or not at all
        while WARM_WORKER:
            stop_worker(WARM_WORKER.pop())


onsuccess:
    from gbm.jobs.warm.launch import stop_worker

    for worker in WARM_WORKER:
        stop_worker(worker)


onerror:
    from gbm.jobs.warm.launch import stop_worker

    for worker in WARM_WORKER:
        stop_worker(worker)


EVALUATIONS = list(evaluations(config))
DATASETS = config["datasets"]
METHODS = list(config["methods"])
SEEDS = config["seeds"]
THREADS = config["threads"]
NEIGHBOUR_SEED = SEEDS[0]


def _method(entry):
    from gbm.methods import get_method

    return get_method(method_name(config, entry))


# The reverse-trajectory figure (SPEC §10) of the first method entry whose method declares one, and the figures
# of its own forward process of the first method that declares them (Method.forward_figure, .toy_figure).
TRAJECTORY_ENTRY = next((m for m in METHODS if _method(m).trajectory_figure), None)
FORWARD_METHOD = next((_method(m).name for m in METHODS if _method(m).forward_figure), None)
TOY_METHOD = next((_method(m).name for m in METHODS if _method(m).toy_figure), None)

# Jobs run `gbm` and `python` from the environment Snakemake runs in. Compute jobs use exactly their
# declared threads and hold one GPU for their command through `python -m gbm.jobs.devices --` (a lock
# file per device; CPU when there is none).
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
# `gbm train` logs live to the MLflow store the `track` jobs mirror into (environment, not params: moving
# results/ must not rerun training).
os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path('results').resolve() / 'mlflow.db'}")
os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", config["name"])


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    seed=r"\d+",
    sampler=r"[a-z0-9]+(-[a-z0-9]+)*",
    steps=r"\d+",


# The results layout (gbm/pipeline/layout.py) as a wildcard pattern: results/{dataset}/{method}/seed{seed}/run
RUN_PATTERN = pattern(RUN_DIR)


def run_dir(wildcards):
    return Run(wildcards.dataset, wildcards.method, int(wildcards.seed)).run_dir


def training_json(wildcards):
    """The run's whole `gbm train` configuration as JSON (its changes rerun the job: Snakemake's params trigger)."""
    return json.dumps(training_config(config, wildcards.dataset, wildcards.method, int(wildcards.seed)))


def sample_args(wildcards):
    options = sampler_options(config, wildcards.dataset, wildcards.method, wildcards.sampler)
    args = ["--sampler", sampler_name(config, wildcards.method, wildcards.sampler)]
    for key, value in options.items():
        args += ["--option", f"{key}={value}"]
    prior, prior_options = sampler_prior(config, wildcards.method, wildcards.sampler)
    if prior is not None:
        args += ["--prior", prior]
    for key, value in prior_options.items():
        args += ["--prior-option", f"{key}={value}"]
    guidance = sampler_guidance(config, wildcards.method, wildcards.sampler)
    if guidance is not None:
        args += ["--guidance-data", f"{data_file(wildcards.dataset)}:train"]
        for key, value in guidance.items():
            args += ["--guidance", f"{key}={json.dumps(value)}"]
    return " ".join(shlex.quote(a) for a in args)


def sample_log(e):
    return f"results/logs/sample/{e.dataset}_{e.method}_seed{e.seed}_{e.sampler}_steps{e.steps}.log"


def sample_command(e):
    """The `gbm sample` command of an evaluation (or of the sample rule's wildcards); its log starts with it."""
    evaluation = Evaluation(e.dataset, e.method, int(e.seed), e.sampler, int(e.steps))
    n = config["evaluation"]["n_samples"]
    return (
        f"gbm sample {evaluation.run.run_dir} {sample_args(e)} --steps {e.steps} "
        f"--n {n} --batch-size {config['evaluation']['batch_size']} --seed-start {noise_seed_start(int(e.seed), n)} "
        f"--out {evaluation.directory}/samples.npz"
    )


# Evaluations whose sampling failed (e.g. diverged) with the command the pipeline would run now: their
# sample log records the error and no sample file exists. They are listed in results/tables/failed.csv and
# left out of the tables and figures, so the rest of a `--keep-going` benchmark still reports. Changing the
# sampler's settings (a new command) retries them.
FAILED = [
    e
    for e in EVALUATIONS
    if not os.path.exists(f"{e.directory}/samples.npz") and sampling_failure(sample_log(e), sample_command(e))
]
SCORED = [e for e in EVALUATIONS if e not in FAILED]


def neighbour_bank_args():
    """``--data-limit N`` when the neighbour search is limited to the first N training images, else nothing."""
    limit = config["evaluation"]["neighbours"]["training_images"]
    return f"--data-limit {limit}" if limit is not None else ""


def evaluation_dirs(dataset=None, method=None, seed=None):
    return [
        e.directory
        for e in SCORED
        if (dataset is None or e.dataset == dataset)
        and (method is None or e.method == method)
        and (seed is None or e.seed == int(seed))
    ]


def shown_evaluations():
    """One evaluation per dataset x method x sampler for the image figures: first seed, most steps."""
    shown = {}
    for e in SCORED:
        if e.seed == NEIGHBOUR_SEED:
            key = (e.dataset, e.method, e.sampler)
            if key not in shown or e.steps > shown[key].steps:
                shown[key] = e
    return list(shown.values())


def figure_stem(e):
    return f"{e.dataset}_{e.method}_{e.sampler}"


def pdf(png_paths):
    return [p.removesuffix(".png") + ".pdf" for p in png_paths]


SHOWN = shown_evaluations()
GRIDS = [f"results/figures/samples/{figure_stem(e)}.png" for e in SHOWN]
NEIGHBOUR_FIGURES = [f"results/figures/neighbours/{figure_stem(e)}.png" for e in SHOWN]
FORWARD_FIGURES = [f"results/figures/forward_histograms_{d}.png" for d in DATASETS] if FORWARD_METHOD else []
TOY_FIGURES = [f"results/figures/toy_{TOY_METHOD}.png"] if TOY_METHOD else []
TRAJECTORY_FIGURES = [f"results/figures/trajectories_{d}.png" for d in DATASETS]
RUNS = [Run(d, m, s) for d in DATASETS for m in METHODS for s in SEEDS]
RUN_DIRS = [r.run_dir for r in RUNS]


# every method entry with its SDE parameters, for the prior-mismatch table (`gbm report prior-mismatch`)
MISMATCH_METHODS = {m: {"name": method_name(config, m), "sde": config["methods"][m]["sde"]} for m in METHODS}


def all_targets():
    targets = [
        RESOLVED_CONFIG,
        "results/tables/benchmark.csv",
        "results/tables/prior_mismatch.csv",
        "results/tables/floor.csv",
        "results/figures/fid_kid_vs_nfe.png",
        "results/figures/training_loss.png",
        *TOY_FIGURES,
        "results/timing.json",
    ]
    # The comparisons need an evaluated baseline (their intervals come from the per-seed values).
    if has_baseline(config):
        targets += ["results/tables/comparisons.csv", "results/figures/comparisons.png"]
    targets += FORWARD_FIGURES
    targets += [f"results/figures/samples/{figure_stem(e)}.png" for e in shown_evaluations()]
    targets += [f"results/figures/neighbours/{figure_stem(e)}.png" for e in shown_evaluations()]
    if TRAJECTORY_ENTRY is not None:
        targets += [f"results/figures/trajectories_{d}.png" for d in DATASETS]
    targets += [f"{r.seed_dir}/mlflow.json" for r in RUNS]
    if config.get("guidance_sweep") is not None:  # opt-in (workflow/rules/guidance.smk)
        targets += ["results/tables/guidance_sweep.csv", "results/figures/guidance_sweep.png"]
    return targets
