# Guidance weight sweep (config key guidance_sweep, opt-in; gbm/reporting/guidance_sweep.py): sample each
# listed sampler unguided and at every weight x bank size, score against the validation slice of the training
# split, then one table and one figure. Without the key these rules are not defined and add no job.

from gbm.pipeline.layout import SWEEP_ROOT  # noqa: E402
from gbm.pipeline.config import noise_seed_start  # noqa: E402
from gbm.reporting.guidance_sweep import guidance_args, sweep_runs, sweep_spec  # noqa: E402

SWEEP = sweep_spec(config)
SWEEP_RUNS = {r.directory: r for r in sweep_runs(config)}
SWEEP_DIR = pattern(EVALUATION_DIR, SWEEP_ROOT) + "/{setting}"


def sweep_sample_args(wildcards):
    run = SWEEP_RUNS[SWEEP_DIR.format(**wildcards)]
    return sample_args(wildcards) + " " + " ".join(shlex.quote(a) for a in guidance_args(SWEEP, run))


def sweep_seed_start(wildcards):
    return noise_seed_start(int(wildcards.seed), SWEEP["n_samples"])


if SWEEP is not None:

    rule guidance_sweep_sample:
        input:
            model=RUN_PATTERN + "/model.pt",
            data=data_file("{dataset}"),
        output:
            samples=SWEEP_DIR + "/samples.npz",
            stats=SWEEP_DIR + "/samples.json",
        wildcard_constraints:
            setting=r"unguided|w[0-9.e+-]+_bank\d+",
        params:
            run_dir=run_dir,
            args=sweep_sample_args,
            n=SWEEP["n_samples"],
            batch_size=config["evaluation"]["batch_size"],
            seed_start=sweep_seed_start,
        log:
            "results/logs/guidance_sweep/sample_{dataset}_{method}_seed{seed}_{sampler}_steps{steps}_{setting}.log",
        benchmark:
            "results/benchmarks/guidance_sweep/sample_{dataset}_{method}_seed{seed}_{sampler}_steps{steps}_{setting}.tsv"
        threads: THREADS
        resources:
            gpu=1,
            mem_mb=config["mem_mb"],
            runtime=config["runtime"]["sample"],
        shell:
            "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
            "python -m gbm.jobs.devices -- gbm sample {params.run_dir} {params.args} --steps {wildcards.steps} "
            "--n {params.n} --batch-size {params.batch_size} --seed-start {params.seed_start} --out {output.samples} > {log} 2>&1"

    rule guidance_sweep_score:
        input:
            data=data_file("{dataset}"),
            samples=SWEEP_DIR + "/samples.npz",
        output:
            SWEEP_DIR + "/metrics.json",
        wildcard_constraints:
            setting=r"unguided|w[0-9.e+-]+_bank\d+",
        params:
            n=SWEEP["n_samples"],
            split=f"validation-{SWEEP['validation']}",
        log:
            "results/logs/guidance_sweep/score_{dataset}_{method}_seed{seed}_{sampler}_steps{steps}_{setting}.log",
        benchmark:
            "results/benchmarks/guidance_sweep/score_{dataset}_{method}_seed{seed}_{sampler}_steps{steps}_{setting}.tsv"
        threads: THREADS
        resources:
            gpu=1,
            mem_mb=config["mem_mb"],
            runtime=config["runtime"]["score"],
        shell:
            "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
            "python -m gbm.jobs.devices -- gbm score --real {input.data} --real-split {params.split} "
            "--fake {input.samples} --n {params.n} --out {output} > {log} 2>&1"

    rule guidance_sweep_report:
        input:
            metrics=[f"{d}/metrics.json" for d in SWEEP_RUNS],
            samples=[f"{d}/samples.npz" for d in SWEEP_RUNS],
            data=[data_file(d) for d in SWEEP["datasets"]],
        output:
            table=report("results/tables/guidance_sweep.csv", caption="../report/guidance_sweep.rst", category="Tables"),
            markdown="results/tables/guidance_sweep.md",
            png=report("results/figures/guidance_sweep.png", caption="../report/guidance_sweep.rst",
                       category="Guidance"),
            pdf="results/figures/guidance_sweep.pdf",
        log:
            "results/logs/report/guidance_sweep.log",
        benchmark:
            "results/benchmarks/report/guidance_sweep.tsv"
        shell:
            "gbm report guidance-sweep --metrics {input.metrics} --data {input.data} --out-dir results/tables "
            "--figure {output.png} > {log} 2>&1"
