# Training: one model per dataset x method x seed (one model serves all of its method entry's samplers), its
# configuration given whole as JSON (gbm.pipeline.config.training_config).
# Only the files written at the end are declared as outputs, never the run directory or loss.csv (which
# grows during training): Snakemake deletes declared outputs before rerunning a job, so an interrupted
# job's checkpoints and loss history survive and the rerun resumes from the latest checkpoint.


rule train:
    input:
        data=data_file("{dataset}"),
    output:
        model=RUN_PATTERN + "/model.pt",
        metrics=RUN_PATTERN + "/train_metrics.json",
    params:
        run_dir=run_dir,
        config=training_json,  # the whole training configuration: a changed setting reruns the job
    log:
        "results/logs/train/{dataset}_{method}_seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{dataset}_{method}_seed{seed}.tsv"
    # The longest jobs, each the root of a model's sample and score jobs: run them first, so the short jobs
    # fill the cores at the end (one default benchmark left VP seed 0's training for last, and a core idled
    # 53 s beside its sample and score jobs).
    priority: 1
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["train"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.jobs.devices -- gbm train --json {params.config:q} --out {params.run_dir} > {log} 2>&1"
