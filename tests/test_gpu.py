"""Device-sensitive properties on every device present: the CPU always, CUDA when torch sees one (marker ``gpu``).

Each per-device test runs once per entry of ``DEVICES``; its ``cuda`` case is skipped, saying why, where
``torch.cuda.is_available()`` is False. The cross-device tests compare the CPU's result for one seed with
CUDA's, hold the largest difference to a tolerance stated here and record it as a JUnit property, which
``scripts/gpu-check`` copies into its JSON summary (docs/gpu.md); they are skipped without CUDA. The
tolerances of those comparisons are first estimates, to be confirmed on a GPU: convolutions run in TF32 there
(``torch.backends.cudnn.allow_tf32`` is on by default, a 10-bit mantissa).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gbm.cli import main
from gbm.config import config_from_dict
from gbm.methods import method_of
from gbm.models import state_shape
from gbm.runs import load_model
from gbm.sampling import sample
from gbm.seeding import PerSampleGenerator
from gbm.training import prepare, train
from helpers import blob_dataset

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("one_thread")]

NO_CUDA = "CUDA is not available (torch.cuda.is_available() is False)"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

SAMPLERS = [("gbm", "sign-agnostic"), ("gbm", "dale-langevin"), ("vp", "em"), ("cld", "sscs")]
METHODS = ["gbm", "vp", "cld"]
STEPS = 3
# CPU versus CUDA, same seed: the largest difference allowed, relative to the largest CPU value (at least 1)
LOSS_RTOL = 1e-3
SAMPLE_RTOL = 1e-2
FEATURE_RTOL = 1e-2
# one device, batch of 6 versus batches of 4 and 2: per-image noise makes them equal up to rounding
BATCH_RTOL, BATCH_ATOL = 1e-4, 1e-5


def tiny_config(data: Path, method: str, **train_options):
    return config_from_dict({
        "seed": 3,
        "data": {"path": str(data)},
        "sde": {"name": method},
        "model": {"size": "tiny", "dropout": 0.0},
        "train": {"steps": 2, "batch_size": 8, "lr": 1e-3, "warmup": 0, "checkpoint_every": 2, "log_every": 1}
                 | train_options,
    })


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("data") / "synthetic.npz", n=32)


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """``trained(method)``: a run directory trained for two steps on the CPU (built once per method)."""
    runs = {}

    def run_dir(method: str) -> Path:
        if method not in runs:
            runs[method] = tmp_path_factory.mktemp(method) / "run"
            train(tiny_config(dataset, method), runs[method], device="cpu", progress=False)
        return runs[method]

    return run_dir


def final_states(run_dir: Path, sampler: str, device: str, seeds: list[int], batch_size: int) -> torch.Tensor:
    """Final sampler states (float, moved to the CPU) of images ``seeds``, drawn ``batch_size`` at a time
    as ``gbm sample`` draws them: EMA weights on ``device``, x_T and the noise of image i from seed i."""
    model, record = load_model(run_dir, device)
    sde, method = model.sde, method_of(model.sde)
    shape = state_shape(sde, tuple(record["data"]["shape"]))
    states = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        generator = PerSampleGenerator(chunk)
        x_T = method.start(sde, record, None, {}, (len(chunk), *shape), generator, device)
        x = sample(sde, model, x_T, method=sampler, steps=STEPS, generator=generator).x
        assert x.device.type == torch.device(device).type
        states.append(x.float().cpu())
    return torch.cat(states)


def loss_and_gradients(dataset: Path, method: str, device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One training loss (a batch of 8, noise from seed 5) of a freshly built network on ``device``, and the
    gradients it gives every parameter."""
    setup = prepare(tiny_config(dataset, method), device)
    x0 = setup.data.batch(0, 8)
    loss = setup.loss_fn(setup.model, x0, generator=torch.Generator().manual_seed(5))
    loss.backward()
    return loss.detach(), [p.grad for p in setup.backbone.parameters()]


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """(largest absolute difference, that divided by the larger of 1 and the reference's largest magnitude)."""
    difference = (reference.double() - other.double().cpu()).abs().max().item()
    return difference, difference / max(1.0, reference.abs().max().item())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method, sampler", SAMPLERS)
def test_image_depends_only_on_its_own_seed_not_on_the_batch_size(trained, method, sampler, device):
    together = final_states(trained(method), sampler, device, [0, 1, 2, 3, 4, 5], batch_size=6)
    in_two_batches = final_states(trained(method), sampler, device, [0, 1, 2, 3, 4, 5], batch_size=4)
    alone = final_states(trained(method), sampler, device, [4], batch_size=1)
    assert torch.isfinite(together).all()
    torch.testing.assert_close(in_two_batches, together, rtol=BATCH_RTOL, atol=BATCH_ATOL)
    torch.testing.assert_close(alone, together[4:5], rtol=BATCH_RTOL, atol=BATCH_ATOL)
    assert not torch.allclose(together[0], together[1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_training_steps_on_the_device_give_a_finite_loss_and_a_model_that_loads_on_the_cpu(dataset, tmp_path, method,
                                                                                             device):
    metrics = train(tiny_config(dataset, method), tmp_path / "run", device=device, progress=False)
    assert torch.device(metrics["device"]).type == device
    assert np.isfinite(metrics["last_loss"]) and metrics["steps"] == 2
    environment = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert torch.device(environment["device"]).type == device
    model, _ = load_model(tmp_path / "run", "cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_loss_is_finite_on_the_device_and_reaches_every_parameter(dataset, method, device):
    loss, gradients = loss_and_gradients(dataset, method, device)
    assert loss.device.type == device and loss.ndim == 0 and torch.isfinite(loss)
    assert all(g is not None and g.device.type == device and torch.isfinite(g).all() for g in gradients)
    assert sum(g.abs().sum().item() for g in gradients) > 0


@pytest.fixture(scope="module")
def inception():
    """The offline Inception weights (downloads blocked); the test is skipped, naming why, without them."""
    from gbm.metrics import inception_weights

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GBM_NO_DOWNLOAD", "1")
        try:
            return inception_weights()
        except (OSError, ValueError) as error:
            pytest.skip(f"Inception weights unavailable (scripts/setup caches them): {error}")


def feature_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)


@pytest.mark.parametrize("device", DEVICES)
def test_inception_features_on_the_device_are_finite_and_do_not_depend_on_the_batch(inception, device):
    from gbm.metrics import extract_features

    together = extract_features(feature_images(), device=device, batch_size=4)
    one_by_one = extract_features(feature_images(), device=device, batch_size=1)
    assert together.shape == (4, 2048) and together.dtype == np.float32 and np.isfinite(together).all()
    np.testing.assert_allclose(one_by_one, together, rtol=1e-4, atol=1e-4 * np.abs(together).max())


WRAPPERS = {
    "python -m gbm.jobs.devices": [sys.executable, "-m", "gbm.jobs.devices", "--"],
    "gbm with-device": [sys.executable, "-m", "gbm", "with-device", "--"],
}
WHAT_THE_JOB_SEES = (
    "import json, os, torch; from gbm.runs import resolve_device; print(json.dumps({"
    "'visible': os.environ.get('CUDA_VISIBLE_DEVICES'), 'gbm_device': os.environ.get('GBM_DEVICE'), "
    "'count': torch.cuda.device_count(), 'auto': str(resolve_device('auto'))}))"
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_device_wrapper_gives_the_job_exactly_the_device_it_announces(tmp_path, wrapper, device):
    """No GPU visible: the job runs on the CPU and ``--device auto`` picks it. A real GPU (found as the
    pipeline finds it: CUDA_VISIBLE_DEVICES or nvidia-smi): torch in the job sees that one device only."""
    env = {k: v for k, v in os.environ.items() if k not in ("GBM_GPU_SLOTS", "GBM_WARM_SOCKET")}
    env["GBM_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run(WRAPPERS[wrapper] + [sys.executable, "-c", WHAT_THE_JOB_SEES], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    if device == "cpu":
        assert "CPU (no GPU visible)" in out.stderr
        assert seen == {"visible": "", "gbm_device": "cpu", "count": 0, "auto": "cpu"}
    else:
        assert "gbm with-device: GPU" in out.stderr
        assert seen["count"] == 1 and seen["gbm_device"] == "cuda:0" and seen["auto"].startswith("cuda")
        assert len(seen["visible"].split(",")) == 1


@needs_cuda
@pytest.mark.parametrize("method, sampler", SAMPLERS)
def test_cpu_and_cuda_samples_of_one_seed_agree(trained, record_property, method, sampler):
    on_cpu = final_states(trained(method), sampler, "cpu", [0, 1, 2, 3], batch_size=4)
    on_cuda = final_states(trained(method), sampler, "cuda", [0, 1, 2, 3], batch_size=4)
    absolute, relative = relative_difference(on_cpu, on_cuda)
    record_property("max_abs_diff", absolute)
    record_property("max_rel_diff", relative)
    record_property("tolerance_rel", SAMPLE_RTOL)
    assert relative <= SAMPLE_RTOL


@needs_cuda
@pytest.mark.parametrize("method", METHODS)
def test_cpu_and_cuda_losses_of_one_seed_agree(dataset, record_property, method):
    on_cpu, _ = loss_and_gradients(dataset, method, "cpu")
    on_cuda, _ = loss_and_gradients(dataset, method, "cuda")
    absolute, relative = relative_difference(on_cpu, on_cuda)
    record_property("max_abs_diff", absolute)
    record_property("max_rel_diff", relative)
    record_property("tolerance_rel", LOSS_RTOL)
    assert relative <= LOSS_RTOL


@needs_cuda
def test_cpu_and_cuda_inception_features_agree(inception, record_property):
    from gbm.metrics import extract_features

    on_cpu = torch.from_numpy(extract_features(feature_images(), device="cpu"))
    on_cuda = torch.from_numpy(extract_features(feature_images(), device="cuda"))
    absolute, relative = relative_difference(on_cpu, on_cuda)
    record_property("max_abs_diff", absolute)
    record_property("max_rel_diff", relative)
    record_property("tolerance_rel", FEATURE_RTOL)
    assert relative <= FEATURE_RTOL


@pytest.fixture
def without_cuda(monkeypatch):
    """This process as on a machine without CUDA, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("command", ["train", "sample", "score"])
def test_asking_for_cuda_without_cuda_is_an_error_naming_the_option(trained, dataset, tmp_path, capsys, without_cuda,
                                                                    command):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(tiny_config(dataset, "vp").to_dict()))
    argv = {
        "train": ["train", str(config), "--out", str(tmp_path / "run")],
        "sample": ["sample", str(trained("vp")), "--sampler", "em", "--steps", "2", "--n", "2",
                   "--out", str(tmp_path / "samples.npz"), "--no-progress"],
        "score": ["score", "--real", f"{dataset}:test", "--fake", f"{dataset}:train", "--no-cache"],
    }[command]
    assert main(argv + ["--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert f"gbm {command}: error: --device: 'cuda' requested but CUDA is not available" in error
    assert not list(tmp_path.glob("run/*")) and not (tmp_path / "samples.npz").exists()


def test_device_auto_without_cuda_runs_on_the_cpu_and_says_so_in_the_samples_record(trained, tmp_path, without_cuda):
    out = tmp_path / "samples.npz"
    assert main(["sample", str(trained("vp")), "--sampler", "em", "--steps", "2", "--n", "2", "--out", str(out),
                 "--no-progress", "--device", "auto"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["device"] == "cpu"
