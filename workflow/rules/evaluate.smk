# Evaluation of every trained model: sample (sampler x step count), score (FID/KID against the
# reference split; reference statistics are cached by `gbm score`), nearest neighbours for the figure.
# A sampler that diverges fails its sample job (gbm sample exits 2, writes nothing); its log starts with the
# command (common.smk: FAILED), so a later run lists it in results/tables/failed.csv instead of waiting on it.


rule sample:
    input:
        model="results/{dataset}/{method}/seed{seed}/run/model.pt",
        data="results/data/{dataset}.npz",  # the bank of real images when a sampler is guided
    output:
        samples="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.npz",
        stats="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.json",
    params:
        command=sample_command,
        record=lambda wildcards: COMMAND_PREFIX + sample_command(wildcards),
    log:
        "results/logs/sample/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.log",
    benchmark:
        "results/benchmarks/sample/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.tsv"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["sample"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "printf '%s\\n' {params.record:q} > {log}; python -m gbm.pipeline.devices -- {params.command} >> {log} 2>&1"


rule score:
    input:
        data="results/data/{dataset}.npz",
        reference="results/{dataset}/floor.json",  # the cached reference statistics
        samples="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.npz",
    output:
        "results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/metrics.json",
    params:
        n=config["evaluation"]["n_samples"],
        split=config["evaluation"]["reference_split"],
    log:
        "results/logs/score/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.log",
    benchmark:
        "results/benchmarks/score/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.tsv"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.pipeline.devices -- gbm score --real {input.data} --real-split {params.split} "
        "--fake {input.samples} --n {params.n} --out {output} > {log} 2>&1"


rule neighbours:
    input:
        data="results/data/{dataset}.npz",
        samples="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.npz",
    output:
        "results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/neighbours.npz",
    params:
        queries=config["evaluation"]["neighbours"]["queries"],
        bank=neighbour_bank_args(),
        k=config["evaluation"]["neighbours"]["k"],
    log:
        "results/logs/neighbours/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.log",
    benchmark:
        "results/benchmarks/neighbours/{dataset}_{method}_seed{seed}_{sampler}_steps{steps}.tsv"
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.pipeline.devices -- gbm neighbours --data {input.data} --samples {input.samples} "
        "--n {params.queries} {params.bank} --k {params.k} --out {output} > {log} 2>&1"
