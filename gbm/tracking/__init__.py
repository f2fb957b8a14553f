"""MLflow: the live run a training job logs (``live``) and the mirror of ``results/`` into the store (``mirror``)."""
