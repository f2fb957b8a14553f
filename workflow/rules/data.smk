# Data: one canonical prepared file per dataset, its classifier for the domain metrics, and the real-vs-real
# floor under the benchmark's N.

DOMAIN = config["evaluation"]["domain"]


def classifier_input(wildcards):
    """The dataset's classifier when the domain metrics are on (evaluation.domain.enabled), else nothing."""
    return f"results/{wildcards.dataset}/classifier/classifier.pt" if DOMAIN["enabled"] else []


def classifier_flag(wildcards, input):
    """`--classifier FILE` for gbm score and gbm floor when the domain metrics are on."""
    return f"--classifier {input.classifier}" if DOMAIN["enabled"] else ""


def classifier_settings():
    """The classifier's settings from evaluation.domain, as `gbm classifier` options."""
    limit = DOMAIN["training_images"]
    return f"--seed {DOMAIN['seed']} --epochs {DOMAIN['epochs']}" + (f" --training-images {limit}" if limit else "")


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


rule classifier:
    # The domain metrics' instrument: trained once per dataset on one CPU thread, so that its weights are the
    # same whatever the config's thread count or device; reused from the user cache when its key matches.
    input:
        data="results/data/{dataset}.npz",
    output:
        classifier="results/{dataset}/classifier/classifier.pt",
        record="results/{dataset}/classifier/classifier.json",
    params:
        settings=classifier_settings(),
    log:
        "results/logs/classifier/{dataset}.log",
    benchmark:
        "results/benchmarks/classifier/{dataset}.tsv"
    priority: 1
    threads: 1
    resources:
        mem_mb=4000,
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1; "
        "gbm classifier {input.data} --out {output.classifier} --record {output.record} {params.settings} "
        "--no-progress > {log} 2>&1"


rule floor:
    # Also the per-dataset features job: the reference (first N test images) and the neighbour search bank
    # (first B training images) are extracted here once, written beside floor.json (keyed by content hash),
    # and read by every `score` and `neighbours` job instead of running Inception on them again.
    input:
        data="results/data/{dataset}.npz",
        classifier=classifier_input,
    output:
        floor="results/{dataset}/floor.json",
        reference="results/{dataset}/features/reference.npz",
        bank="results/{dataset}/features/bank.npz",
    params:
        n=config["evaluation"]["n_samples"],
        bank=config["evaluation"]["neighbours"]["training_images"] or "all",
        draws=config["evaluation"]["interval_draws"],
        domain=classifier_flag,
    log:
        "results/logs/floor/{dataset}.log",
    benchmark:
        "results/benchmarks/floor/{dataset}.tsv"
    # Every score job waits for it: start it as soon as the data is ready, not when Snakemake happens to
    # pick it (one default benchmark ran it after all 22 sample jobs, and a core idled 29 s beside it).
    priority: 1
    threads: THREADS
    resources:
        gpu=1,
        mem_mb=config["mem_mb"],
        runtime=config["runtime"]["score"],
    shell:
        "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
        "python -m gbm.jobs.devices -- gbm floor {input.data} --n {params.n} --save-reference {output.reference} "
        "--bank {params.bank} --save-bank {output.bank} --interval-draws {params.draws} {params.domain} --no-progress "
        "--out {output.floor} > {log} 2>&1"
