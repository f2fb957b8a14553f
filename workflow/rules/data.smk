# Data: one canonical prepared file per dataset, and the real-vs-real floor under the benchmark's N.


rule prepare_data:
    output:
        "results/data/{dataset}.npz",
    params:
        source=lambda wildcards: f"--source-dir {shlex.quote(config['data_dir'])}" if config["data_dir"] else "",
    log:
        "results/logs/prepare_data/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_data/{dataset}.tsv"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "gbm prepare-data {wildcards.dataset} --out {output} {params.source} > {log} 2>&1"


rule floor:
    # Also the reference-statistics step: `gbm floor` extracts the features of the first N images of the
    # test split and caches them by content hash, so every `score` job (which waits for it) reuses them.
    input:
        data="results/data/{dataset}.npz",
    output:
        "results/{dataset}/floor.json",
    params:
        n=config["evaluation"]["n_samples"],
    log:
        "results/logs/floor/{dataset}.log",
    benchmark:
        "results/benchmarks/floor/{dataset}.tsv"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.pipeline.devices -- gbm floor {input.data} --n {params.n} --out {output} > {log} 2>&1"
