# Evaluation of every trained model: sample (sampler x step count), score (FID/KID against the reference
# split, whose features `floor` extracted; writes the samples' features; with evaluation.domain, the domain
# metrics in the dataset classifier's features and the collapse counters), nearest neighbours for the figure
# (no Inception: it reads the samples' features and the dataset's bank features).
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
        "printf '%s\\n' {params.record:q} > {log}; python -m gbm.jobs.devices -- {params.command} >> {log} 2>&1"


rule score:
    input:
        data="results/data/{dataset}.npz",
        reference="results/{dataset}/features/reference.npz",
        samples="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.npz",
        classifier=classifier_input,
    output:
        metrics="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/metrics.json",
        features="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/features.npz",
    params:
        n=config["evaluation"]["n_samples"],
        split=config["evaluation"]["reference_split"],
        draws=config["evaluation"]["interval_draws"],
        domain=classifier_flag,
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
        "python -m gbm.jobs.devices -- gbm score --real {input.data} --real-split {params.split} "
        "--real-features {input.reference} --fake {input.samples} --n {params.n} --save-features {output.features} "
        "--interval-draws {params.draws} {params.domain} --no-progress "
        "--out {output.metrics} > {log} 2>&1"


rule neighbours:
    input:
        data="results/data/{dataset}.npz",
        samples="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/samples.npz",
        features="results/{dataset}/{method}/seed{seed}/{sampler}/steps{steps}/features.npz",
        bank="results/{dataset}/features/bank.npz",
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
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "gbm neighbours --data {input.data} --samples {input.samples} "
        "--sample-features {input.features} --data-features {input.bank} --n {params.queries} "
        "{params.bank} --k {params.k} --out {output} > {log} 2>&1"
