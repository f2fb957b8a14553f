# The resolved configuration of the run, recorded under results/ (and, through the track jobs, in MLflow).
# A rule output, not a parse-time write: dry runs, --report and --lint never overwrite the record of what
# ran. Its params hold the whole configuration, so the file is rewritten (and the track jobs rerun) exactly
# when the configuration changes.


rule resolved_config:
    output:
        RESOLVED_CONFIG,
    params:
        config=json.dumps(config),
        sources=" ".join(f"--configfile {shlex.quote(path)}" for path in CONFIG_FILES),
        overrides=" ".join(f"--override {shlex.quote(item)}" for item in CONFIG_OVERRIDES),
    log:
        "results/logs/resolved_config.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "gbm write-config --json {params.config:q} {params.sources} {params.overrides} --out {output} > {log} 2>&1"
