"""The speed switches (gbm/speed.py: train.precision, train.tf32, train.channels_last; gbm sample's flags).

At their defaults, and on the CPU whatever they ask for apart from bf16, training computes exactly what it
computed before the switches existed; bf16 is refused on the CPU naming the key; the switches in effect are
recorded in train_metrics.json, model.pt and samples.json. The CUDA case (marker ``gpu``) trains and samples
with every switch on and checks that image i still depends on seed i alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from gbm.cli import main
from gbm.models import ScoreModel
from gbm.runs import load_model
from gbm.speed import Speed, apply_to_model
from gbm.training import prepare, train
import test_gpu
from test_gpu import NO_CUDA, SAMPLE_RTOL, final_states, relative_difference, tiny_config
from helpers import blob_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["gbm", "vp", "cld"]
ALL_ON = {"precision": "bf16", "tf32": True, "channels_last": True}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return blob_dataset(tmp_path_factory.mktemp("data") / "synthetic.npz", n=32)


def forward_before_the_switches(self, x, t):
    """``ScoreModel.forward`` as it was before gbm/speed.py: the reference of the bitwise comparison."""
    output = self.backbone(self.sde.network_input(x), t)
    if self.parameterisation == "eps":
        return self.sde.score_from_eps(output, x, t)
    return output


def trained_weights(config, run_dir: Path) -> dict:
    train(config, run_dir, device="cpu", progress=False)
    return torch.load(run_dir / "model.pt", weights_only=False)["state_dict"]


@pytest.mark.parametrize("method", METHODS)
def test_default_and_cpu_ignored_switches_leave_training_bitwise_unchanged(dataset, method, tmp_path, monkeypatch):
    current = trained_weights(tiny_config(dataset, method, steps=3), tmp_path / "default")
    # tf32 and channels_last are not applied on the CPU: the same computation
    ignored = trained_weights(tiny_config(dataset, method, steps=3, tf32=True, channels_last=True), tmp_path / "ignored")
    monkeypatch.setattr(ScoreModel, "forward", forward_before_the_switches)
    before = trained_weights(tiny_config(dataset, method, steps=3), tmp_path / "before")
    for name, value in before.items():
        assert torch.equal(value, current[name]), name
        assert torch.equal(value, ignored[name]), name


def test_bf16_on_the_cpu_is_refused_naming_train_precision(dataset):
    with pytest.raises(ValueError, match=r"^train\.precision: bf16 autocast runs only on CUDA .* device is cpu"):
        prepare(tiny_config(dataset, "gbm", precision="bf16"), "cpu")


def test_unknown_precision_is_refused_naming_train_precision(dataset):
    with pytest.raises(ValueError, match=r"^train\.precision: unknown precision 'fp16'"):
        tiny_config(dataset, "gbm", precision="fp16")


def test_switches_in_effect_are_recorded_with_the_model_and_the_samples(dataset, tmp_path):
    run_dir = tmp_path / "run"
    metrics = train(tiny_config(dataset, "gbm", tf32=True, channels_last=True), run_dir, device="cpu",
                    progress=False)
    applied = {"precision": "fp32", "tf32": False, "channels_last": False}
    requested = {"precision": "fp32", "tf32": True, "channels_last": True}
    assert metrics["speed"] == applied | {"requested": requested}
    assert torch.load(run_dir / "model.pt", weights_only=False)["speed"] == metrics["speed"]
    out = tmp_path / "samples.npz"
    assert main(["sample", str(run_dir), "--sampler", "dale-langevin", "--steps", "2", "--n", "3", "--out", str(out),
                 "--device", "cpu", "--tf32", "false", "--no-progress"]) == 0
    # each flag left out takes the model's training setting
    speed = json.loads(out.with_suffix(".json").read_text())["speed"]
    assert speed == applied | {"requested": requested | {"tf32": False}}


def test_gbm_sample_refuses_bf16_on_the_cpu_naming_the_flag(dataset, tmp_path, capsys):
    run_dir = tmp_path / "run"
    train(tiny_config(dataset, "vp"), run_dir, device="cpu", progress=False)
    out = tmp_path / "samples.npz"
    assert main(["sample", str(run_dir), "--sampler", "em", "--steps", "2", "--n", "2", "--out", str(out),
                 "--device", "cpu", "--precision", "bf16", "--no-progress"]) == 2
    assert "--precision (default: the model's train.precision): bf16 autocast runs only on CUDA" in capsys.readouterr().err
    assert not out.exists()


def test_a_run_from_before_the_switches_resumes(dataset, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(dataset, "gbm", steps=2), run_dir, device="cpu", progress=False)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    for key in ("precision", "tf32", "channels_last"):
        del config["train"][key]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    assert train(tiny_config(dataset, "gbm", steps=4), run_dir, device="cpu", progress=False)["resumed_from_step"] == 2


@pytest.mark.parametrize("speed", [Speed(channels_last=True), Speed(precision="bf16")], ids=["channels_last", "bf16"])
def test_fast_paths_compute_the_same_score(dataset, speed):
    """channels_last gives the fp32 score to rounding; bf16 autocast (run here on the CPU, bypassing the CPU
    refusal, to test the code path) to bf16's 8-bit mantissa, and returns float32."""
    setup = prepare(tiny_config(dataset, "gbm"), "cpu")
    x = setup.data.batch(0, 8)
    t = torch.full((8,), 0.3)
    with torch.no_grad():
        reference = setup.model(x, t)
        fast = apply_to_model(setup.model, speed)(x, t)
    assert fast.dtype == torch.float32
    difference = (fast - reference).abs().max().item() / max(1.0, reference.abs().max().item())
    if speed.precision == "bf16":
        assert 0 < difference <= 3e-2  # autocast did run, and to bf16's precision
    else:
        assert difference <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("method, sampler", [("gbm", "dale-langevin"), ("vp", "em"), ("cld", "sscs")])
def test_cuda_with_every_switch_on_trains_and_keeps_per_image_seeding(dataset, method, sampler, tmp_path,
                                                                     monkeypatch):
    """Batches of 6 and of 4 + 2 give the same images to SAMPLE_RTOL (a first estimate: bf16 kernels may
    differ between batch sizes, which the fp32 check's 1e-4 would not allow)."""
    run_dir = tmp_path / "run"
    metrics = train(tiny_config(dataset, method, **ALL_ON), run_dir, device="cuda", progress=False)
    assert metrics["speed"] == ALL_ON | {"requested": ALL_ON}

    def load_fast(run_dir, device):
        model, record = load_model(run_dir, device)
        return apply_to_model(model, Speed(**ALL_ON)), record

    monkeypatch.setattr(test_gpu, "load_model", load_fast)
    seeds = list(range(6))
    whole, split = (final_states(run_dir, sampler, "cuda", seeds, size) for size in (6, 4))
    assert torch.isfinite(whole).all()
    assert relative_difference(whole, split)[1] <= SAMPLE_RTOL
