"""The benchmark plan: the pipeline's configuration (checked, resolved, turned into each job's settings).

Its neighbours: ``gbm.reporting`` (tables, comparisons, figures), ``gbm.tracking`` (MLflow) and ``gbm.jobs``
(GPU slots, SLURM, the opt-in warm worker). Kept free of heavy imports at package level.
"""
