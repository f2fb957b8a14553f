# MLflow: mirror each finished training run (adopting the run `gbm train` logged live) and its evaluations
# into the store (results/mlflow.db).
# Never fails the pipeline (errors are logged; `gbm mlflow-sync` rebuilds the store from results/).


rule track:
    input:
        run=RUN_PATTERN + "/train_metrics.json",
        config=RESOLVED_CONFIG,  # logged as an artifact of the training run
        metrics=lambda wildcards: [
            f"{d}/metrics.json" for d in evaluation_dirs(wildcards.dataset, wildcards.method, wildcards.seed)
        ],
    output:
        pattern(SEED_DIR) + "/mlflow.json",
    params:
        seed_dir=lambda wildcards, output: os.path.dirname(output[0]),
        experiment=config["name"],
    log:
        "results/logs/track/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "results/benchmarks/track/{dataset}_{method}_seed{seed}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "gbm mlflow-sync results --experiment {params.experiment} --run {params.seed_dir} --out {output} "
        "> {log} 2>&1"
