"""Job machinery, outside the science: GPU slots for each job (``devices``), the SLURM preflight (``slurm``) and
the warm worker (``warm``). Kept free of heavy imports: ``python -m gbm.jobs.devices`` must start instantly."""
