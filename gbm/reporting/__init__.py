"""Reporting: the benchmark's tables, seed comparisons, ablation, figures and timing, read from ``results/``."""
