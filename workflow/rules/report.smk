# Aggregation, tables and figures (`gbm report ...`); figures and tables are wrapped in report() so that
# `snakemake --report results/report.html` shows them with their captions.

# Figures and the prior-mismatch table need only early inputs (data, a model, samples); Snakemake would run
# them between the compute jobs. They run last instead, beside the final score jobs, where a core would
# otherwise idle (the default benchmark's tail had one core idle for 12-24 s). The toy figure keeps the
# default: it needs nothing and fills the second core while the data is prepared.
FILLER = -1


rule aggregate:
    input:
        metrics=[f"{e.directory}/metrics.json" for e in SCORED],
        stats=[f"{e.directory}/samples.json" for e in SCORED],  # the settings of each row: its records
        training=sorted({f"{e.run.run_dir}/train_metrics.json" for e in SCORED}),
    output:
        metrics="results/tables/metrics.csv",
        failed=report("results/tables/failed.csv", caption="../report/failed.rst", category="Tables"),
    params:
        failed=" ".join(f"--failed {e.directory} {sample_log(e)}" for e in FAILED),
    log:
        "results/logs/report/aggregate.log",
    benchmark:
        "results/benchmarks/report/aggregate.tsv"
    shell:
        "gbm report aggregate {input.metrics} --out {output.metrics} {params.failed} --failed-out {output.failed} "
        "> {log} 2>&1"


rule tables:
    input:
        metrics="results/tables/metrics.csv",
        failed="results/tables/failed.csv",
        floors=expand("results/{dataset}/floor.json", dataset=DATASETS),
    output:
        table=report("results/tables/benchmark.csv", caption="../report/table.rst", category="Tables"),
        markdown="results/tables/benchmark.md",
        latex="results/tables/benchmark.tex",
        floor=report("results/tables/floor.csv", caption="../report/floor.rst", category="Tables"),
        floor_markdown="results/tables/floor.md",
        floor_latex="results/tables/floor.tex",
        ablation=report("results/tables/ablation.csv", caption="../report/ablation.rst", category="Tables"),
        ablation_markdown="results/tables/ablation.md",
    params:
        name=config["name"],
    log:
        "results/logs/report/tables.log",
    benchmark:
        "results/benchmarks/report/tables.tsv"
    shell:
        "gbm report tables --metrics {input.metrics} --failed {input.failed} --floor {input.floors} --name {params.name} "
        "--out-dir results/tables > {log} 2>&1"


rule comparisons:
    input:
        "results/tables/metrics.csv",  # one row per seed: the Welch intervals come from the per-seed values
    output:
        table=report("results/tables/comparisons.csv", caption="../report/comparisons.rst", category="Tables"),
        markdown="results/tables/comparisons.md",
        latex="results/tables/comparisons.tex",
        png=report("results/figures/comparisons.png", caption="../report/comparisons.rst", category="Metrics"),
        pdf="results/figures/comparisons.pdf",
    params:
        baseline=f"{config['comparisons']['baseline']['method']}/{config['comparisons']['baseline']['sampler']}",
        name=config["name"],
    log:
        "results/logs/report/comparisons.log",
    benchmark:
        "results/benchmarks/report/comparisons.tsv"
    shell:
        "gbm report comparisons --metrics {input} --baseline {params.baseline} --name {params.name} "
        "--out-dir results/tables --figure {output.png} > {log} 2>&1"


rule figure_samples:
    input:
        [f"{e.directory}/samples.npz" for e in SHOWN],
    output:
        png=[report(p, caption="../report/samples.rst", category="Samples") for p in GRIDS],
        pdf=pdf(GRIDS),
    params:
        n=config["evaluation"]["grid"],
    priority: FILLER
    log:
        "results/logs/report/figure_samples.log",
    benchmark:
        "results/benchmarks/report/figure_samples.tsv"
    shell:
        "gbm report grids --samples {input} --out {output.png} --n {params.n} > {log} 2>&1"


rule figure_neighbours:
    input:
        neighbours=[f"{e.directory}/neighbours.npz" for e in SHOWN],
        samples=[f"{e.directory}/samples.npz" for e in SHOWN],
        data=[data_file(e.dataset) for e in SHOWN],
    output:
        png=[report(p, caption="../report/neighbours.rst", category="Memorisation") for p in NEIGHBOUR_FIGURES],
        pdf=pdf(NEIGHBOUR_FIGURES),
    params:
        queries=config["evaluation"]["neighbours"]["queries"],
    priority: FILLER
    log:
        "results/logs/report/figure_neighbours.log",
    benchmark:
        "results/benchmarks/report/figure_neighbours.tsv"
    shell:
        "gbm report neighbours --neighbours {input.neighbours} --samples {input.samples} --data {input.data} "
        "--queries {params.queries} --out {output.png} > {log} 2>&1"


rule figure_forward:
    input:
        [data_file(d) for d in DATASETS],
    output:
        png=[report(p, caption="../report/forward.rst", category="Forward process") for p in FORWARD_FIGURES],
        pdf=pdf(FORWARD_FIGURES),
    params:
        method=FORWARD_METHOD,
        times=" ".join(str(t) for t in config["figures"]["histogram_times"]),
    priority: FILLER
    log:
        "results/logs/report/figure_forward.log",
    benchmark:
        "results/benchmarks/report/figure_forward.tsv"
    shell:
        "gbm report forward --method {params.method} --data {input} --times {params.times} --out {output.png} "
        "> {log} 2>&1"


rule figure_trajectories:
    input:
        [f"{Run(d, TRAJECTORY_ENTRY, NEIGHBOUR_SEED).run_dir}/model.pt" for d in DATASETS],
    output:
        png=[report(p, caption="../report/trajectories.rst", category="Reverse process") for p in TRAJECTORY_FIGURES],
        pdf=pdf(TRAJECTORY_FIGURES),
    params:
        runs=[Run(d, TRAJECTORY_ENTRY, NEIGHBOUR_SEED).run_dir for d in DATASETS],
        snapshots=config["figures"]["trajectory_snapshots"],
        steps=lambda wildcards: max(
            s for spec in config["methods"][TRAJECTORY_ENTRY]["samplers"].values() for s in spec["steps"]
        ),
    priority: FILLER
    log:
        "results/logs/report/figure_trajectories.log",
    benchmark:
        "results/benchmarks/report/figure_trajectories.tsv"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["sample"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.jobs.devices -- gbm report trajectories --runs {params.runs} --steps {params.steps} "
        "--snapshots {params.snapshots} --out {output.png} > {log} 2>&1"


rule figure_toy:
    output:
        png=[report(p, caption="../report/toy.rst", category="Forward process") for p in TOY_FIGURES],
        pdf=pdf(TOY_FIGURES),
    params:
        method=TOY_METHOD,
        paths=config["figures"]["toy_paths"],
    log:
        "results/logs/report/figure_toy.log",
    benchmark:
        "results/benchmarks/report/figure_toy.tsv"
    shell:
        "gbm report toy --method {params.method} --paths {params.paths} --out {output.png} > {log} 2>&1"


rule figure_nfe:
    input:
        "results/tables/metrics.csv",
    output:
        png=report("results/figures/fid_kid_vs_nfe.png", caption="../report/nfe.rst", category="Metrics"),
        pdf="results/figures/fid_kid_vs_nfe.pdf",
        grids=report("results/figures/fid_vs_nfe_by_grid.png", caption="../report/nfe_grids.rst", category="Metrics"),
        grids_pdf="results/figures/fid_vs_nfe_by_grid.pdf",
    log:
        "results/logs/report/figure_nfe.log",
    benchmark:
        "results/benchmarks/report/figure_nfe.tsv"
    shell:
        "gbm report nfe --metrics {input} --out {output.png} --grids-out {output.grids} > {log} 2>&1"


rule figure_loss:
    input:
        [f"{r}/train_metrics.json" for r in RUN_DIRS],  # loss.csv beside each is complete by then
    output:
        png=report("results/figures/training_loss.png", caption="../report/loss.rst", category="Training"),
        pdf="results/figures/training_loss.pdf",
    params:
        loss=[f"{r}/loss.csv" for r in RUN_DIRS],
    priority: FILLER
    log:
        "results/logs/report/figure_loss.log",
    benchmark:
        "results/benchmarks/report/figure_loss.tsv"
    shell:
        "gbm report loss --loss {params.loss} --out {output.png} > {log} 2>&1"


rule timing:
    input:
        [t for t in all_targets() if t != "results/timing.json"],
    output:
        "results/timing.json",
    params:
        threads=THREADS,
    log:
        "results/logs/report/timing.log",
    shell:
        "gbm report timing --results results --cores {workflow.cores} --threads {params.threads} --out {output} "
        "> {log} 2>&1"


rule prior_mismatch:
    input:
        [data_file(d) for d in DATASETS],
    output:
        table=report("results/tables/prior_mismatch.csv", caption="../report/prior_mismatch.rst", category="Tables"),
        markdown="results/tables/prior_mismatch.md",
        latex="results/tables/prior_mismatch.tex",
        record="results/tables/prior_mismatch.json",  # how it was made, and its compute seconds
        png=report("results/figures/prior_mismatch.png", caption="../report/prior_mismatch.rst",
                   category="Forward process"),
        pdf="results/figures/prior_mismatch.pdf",
    params:
        methods=shlex.quote(json.dumps(MISMATCH_METHODS)),
        limit="" if config["data_limit"] is None else f"--limit {config['data_limit']}",
    priority: FILLER
    threads: THREADS  # its fits and eigensolves are compute (counted as metrics in results/timing.json)
    log:
        "results/logs/report/prior_mismatch.log",
    benchmark:
        "results/benchmarks/report/prior_mismatch.tsv"
    shell:
        "gbm report prior-mismatch --data {input} --methods {params.methods} {params.limit} "
        "--out-dir results/tables --figure {output.png} > {log} 2>&1"
