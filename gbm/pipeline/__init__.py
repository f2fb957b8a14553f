"""The benchmark pipeline's helpers: configuration, GPU slots, MLflow tracking, aggregation, tables, figures.

Kept free of heavy imports at package level: ``python -m gbm.pipeline.devices`` must start instantly.
"""
