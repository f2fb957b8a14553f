# gbm benchmark: multiplicative (GBM) diffusion vs additive-noise diffusion, from data to the paper's tables.
#
#   snakemake --cores 2                                   # default benchmark (config/config.yaml)
#   snakemake --cores 8 --resources gpu=2 --configfile config/paper.yaml   # that file alone, not merged
#   snakemake --report results/report.html                # HTML report of every table and figure
#
# Each rule calls one `gbm` command; the science lives in the `gbm` package (see README.md).

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


envvars:
    "PATH",


include: "workflow/rules/common.smk"
include: "workflow/rules/config.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/track.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/guidance.smk"


# Light rules run where Snakemake runs (on a cluster: the submit host, which can also reach the network and
# the MLflow server); compute rules (train, sample, score, neighbours, floor, figure_trajectories) are jobs.
localrules:
    all,
    resolved_config,
    prepare_data,
    track,
    aggregate,
    tables,
    comparisons,
    prior_mismatch,
    figure_samples,
    figure_neighbours,
    figure_forward,
    figure_toy,
    figure_nfe,
    figure_loss,
    timing,


rule all:
    input:
        all_targets(),
    default_target: True
