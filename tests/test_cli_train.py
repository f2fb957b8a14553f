"""``gbm train`` and ``gbm sample`` end to end on a tiny synthetic dataset: run directory, sample file,
per-image seeds, and errors that name the field before any work."""

import json

import numpy as np
import pytest
import torch
import yaml

from gbm.cli import main
from helpers import noise_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def config_file(tmp_path):
    data = noise_dataset(tmp_path / "data.npz")
    config = {
        "data": {"path": str(data)},
        "sde": {"name": "gbm"},
        "model": {"size": "tiny"},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "log_every": 1},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_writes_a_self_describing_run_directory(tmp_path, config_file):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run), "--set", "seed=5", "--device", "cpu", "--no-progress"]) == 0
    for name in ("config.yaml", "environment.json", "model.pt", "loss.csv", "train_metrics.json"):
        assert (run / name).is_file(), name
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002.pt", "step_00000004.pt"]
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 5
    environment = json.loads((run / "environment.json").read_text())
    assert environment["seed"] == 5 and environment["sessions"][0]["torch"] == torch.__version__
    assert "revision" in environment["sessions"][0]["git"]
    metrics = json.loads((run / "train_metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["parameterisation"] == "eps" and metrics["params"] > 0
    assert 0 < metrics["fit_s"] < metrics["wall_time_s"] + 60  # GBM fits its priors before the loop
    assert (run / "loss.csv").read_text().splitlines()[0] == "step,loss"


def test_sample_writes_the_sample_file_with_per_image_seeds(tmp_path, config_file):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run), "--device", "cpu", "--no-progress"]) == 0
    whole = tmp_path / "whole.npz"
    assert main(["sample", str(run), "--sampler", "dale-langevin", "--steps", "5", "--n", "4", "--out", str(whole),
                 "--batch-size", "4", "--device", "cpu", "--no-progress"]) == 0
    part = tmp_path / "part.npz"
    assert main(["sample", str(run), "--sampler", "dale-langevin", "--steps", "5", "--n", "2", "--seed-start", "2",
                 "--out", str(part), "--batch-size", "1", "--device", "cpu", "--no-progress"]) == 0
    with np.load(whole) as a, np.load(part) as b:
        assert a["images"].dtype == np.uint8 and a["images"].shape == (4, 1, 8, 8)
        assert a["seeds"].dtype == np.int64 and a["seeds"].tolist() == [0, 1, 2, 3]
        assert np.array_equal(a["images"][2:], b["images"])
        meta = json.loads(str(a["meta"]))
    assert meta["sampler"] == "dale-langevin" and meta["steps"] == 5 and meta["nfe"] == 5
    assert 0.0 <= meta["fraction_clamped"] <= 1.0 and meta["run_dir"] == str(run.resolve())
    assert json.loads(whole.with_suffix(".json").read_text())["nfe"] == 5


def test_sign_agnostic_practical_variant_records_options_and_negative_fraction(tmp_path, config_file):
    run = tmp_path / "run"
    main(["train", str(config_file), "--out", str(run), "--device", "cpu", "--no-progress"])
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--sampler", "sign-agnostic", "--steps", "3", "--n", "2", "--out", str(out),
                 "--option", "delta=1e-3", "--option", "inner_steps=2", "--option", "gamma=0.99", "--device", "cpu",
                 "--no-progress"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["options"] == {"delta": 1e-3, "inner_steps": 2, "gamma": 0.99}
    assert meta["nfe"] == 6 and meta["fraction_negative"] is not None
    assert (meta["grid"], meta["end_time"]) == ("uniform-t", 0.0)  # the paper's grid and GBM's own end time


def test_sample_records_the_time_grid_it_ran_on(tmp_path, config_file):
    run = tmp_path / "run"
    main(["train", str(config_file), "--out", str(run), "--device", "cpu", "--no-progress"])
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--sampler", "dale-langevin", "--steps", "3", "--n", "2", "--out", str(out),
                 "--option", "grid=sqrt-t", "--option", "end_time=1e-3", "--device", "cpu", "--no-progress"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["grid"], meta["end_time"]) == ("sqrt-t", 1e-3)
    sqrt_t_second_last = (1 - (1 - 1e-3**0.5) * 2 / 3) ** 2  # the sqrt-t grid's times before 1e-3: 1, ..., this
    assert meta["last_network_level"] == pytest.approx(sqrt_t_second_last, rel=1e-12) and meta["state_ends_at"] == 0.0
    assert main(["sample", str(run), "--sampler", "dale-langevin", "--steps", "4", "--n", "2", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert (meta["grid"], meta["end_time"], meta["last_network_level"], meta["state_ends_at"]) == (
        "uniform-t", 0.0, 0.25, 0.0)  # end_time 0: the uniform grid's last positive time T/steps


@pytest.mark.parametrize("sde, sampler", [("vp", "em"), ("cld", "sscs")])
def test_additive_run_samples_in_centered_space(tmp_path, config_file, sde, sampler):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run), "--set", f"sde.name={sde}", "--device", "cpu",
                 "--no-progress"]) == 0
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--sampler", sampler, "--steps", "3", "--n", "2", "--out", str(out),
                 "--device", "cpu", "--no-progress"]) == 0
    with np.load(out) as f:
        assert f["images"].shape == (2, 1, 8, 8)
        assert json.loads(str(f["meta"]))["fraction_negative"] is None


@pytest.mark.parametrize("argv, field", [
    (["--set", "train.stepz=3"], "train.stepz"),
    (["--set", "sde.name=ou"], "sde.name"),
    (["--set", "train.steps=0"], "train.steps"),
    (["--device", "cuda:7" if not torch.cuda.is_available() else "nonsense"], "--device"),
])
def test_bad_train_input_names_the_field_and_writes_nothing(tmp_path, config_file, capsys, argv, field):
    run = tmp_path / "run"
    assert main(["train", str(config_file), "--out", str(run), "--no-progress", *argv]) == 2
    assert field in capsys.readouterr().err
    assert not run.exists()


@pytest.mark.parametrize("argv, field", [
    (["--sampler", "euler"], "--sampler"),
    (["--sampler", "em"], "sampler"),
    (["--steps", "0"], "--steps"),
    (["--n", "-1"], "--n"),
    (["--option", "snr=0.1"], "sampler options"),
])
def test_bad_sample_input_names_the_field_before_sampling(tmp_path, config_file, capsys, argv, field):
    run = tmp_path / "run"
    main(["train", str(config_file), "--out", str(run), "--device", "cpu", "--no-progress"])
    args = {"--sampler": "dale-langevin", "--steps": "2", "--n": "2"} | dict(zip(argv[::2], argv[1::2]))
    flat = [item for pair in args.items() for item in pair]
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), *flat, "--out", str(out), "--device", "cpu", "--no-progress"]) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_sample_from_a_directory_without_a_model_is_refused(tmp_path, capsys):
    assert main(["sample", str(tmp_path), "--sampler", "em", "--steps", "2", "--n", "2",
                 "--out", str(tmp_path / "s.npz")]) == 2
    assert "model.pt" in capsys.readouterr().err


def test_diverging_training_exits_non_zero_without_a_model(tmp_path, config_file, capsys):
    run = tmp_path / "run"
    code = main(["train", str(config_file), "--out", str(run), "--set", "train.lr=1e30", "--set", "train.grad_clip=0",
                 "--set", "sde.name=ve", "--device", "cpu", "--no-progress"])
    assert code == 1 and "non-finite" in capsys.readouterr().err
    assert not (run / "model.pt").exists()
