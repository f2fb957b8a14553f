"""Shared test fixtures."""

import signal

import pytest
import torch

# A suite started in the background without job control (`nohup ./run-tests &`, some CI runners) inherits
# SIGINT ignored, and so would every process it starts: the tests that stop Snakemake with Ctrl-C (SIGINT)
# would then wait on a Snakemake that never sees it. Handling SIGINT here again gives the processes the
# tests start the default disposition (a handled signal is reset to the default on exec; an ignored one is not).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def one_thread():
    """Run a test module on one torch thread (``pytestmark = pytest.mark.usefixtures("one_thread")``, which also
    covers its module-scoped fixtures): small tensors on a shared 2-core machine are faster without OpenMP."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def no_ambient_tracking(monkeypatch):
    """Tests never write to the developer's MLflow store: a test that tracks names its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
