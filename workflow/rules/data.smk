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
        "{GBM} prepare-data {wildcards.dataset} --out {output} {params.source} > {log} 2>&1"


rule floor:
    input:
        data="results/data/{dataset}.npz",
    output:
        "results/{dataset}/floor.json",
    params:
        n=config["evaluation"]["n_samples"],
        split=config["evaluation"]["floor_split"],
        reference=config["evaluation"]["reference_split"],
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
        THREADS_ENV + "{WITH_DEVICE} {GBM} floor {wildcards.dataset} --data {input.data} --n {params.n} "
        "--split {params.split} --reference-split {params.reference} --out {output} > {log} 2>&1"
