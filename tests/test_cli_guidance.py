"""``gbm sample --guidance KEY=VALUE --guidance-data FILE.npz``: guidance reaches every SDE's sampler from the
command line, changes the images, is recorded in the sample meta, is a no-op at weight 0, and bad input
names the field before any sampling."""

import json

import numpy as np
import pytest
import yaml

from gbm.cli import main
from helpers import noise_dataset


pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLERS = {"gbm": "dale-langevin", "vp": "em", "cld": "sscs"}


def _dataset(path, shape=(1, 8, 8), n_train=32, seed=0):
    return noise_dataset(path, n_train=n_train, shape=shape, seed=seed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny 4-step runs on a synthetic 1x8x8 dataset, one per SDE (trained on first use), and the dataset."""
    root = tmp_path_factory.mktemp("guidance")
    data = _dataset(root / "data.npz")
    trained = {}

    def run(sde):
        if sde not in trained:
            config = {"data": {"path": str(data)}, "sde": {"name": sde}, "model": {"size": "tiny"},
                      "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 1}}
            (root / f"{sde}.yaml").write_text(yaml.safe_dump(config))
            assert main(["train", str(root / f"{sde}.yaml"), "--out", str(root / sde), "--device", "cpu",
                         "--no-progress"]) == 0
            trained[sde] = root / sde
        return trained[sde]

    run.data = data
    return run


def _sample(run_dir, out, *extra, sampler="dale-langevin", n=4, batch_size=4, seed_start=0):
    return main(["sample", str(run_dir), "--sampler", sampler, "--steps", "5", "--n", str(n), "--out", str(out),
                 "--batch-size", str(batch_size), "--seed-start", str(seed_start), "--device", "cpu", "--no-progress",
                 *extra])


def _load(out):
    with np.load(out) as f:
        return f["images"], json.loads(str(f["meta"]))


@pytest.mark.parametrize("sde", sorted(SAMPLERS))
def test_guidance_changes_the_images_is_recorded_and_is_a_no_op_at_weight_zero(tmp_path, runs, sde):
    run, sampler = runs(sde), SAMPLERS[sde]
    bank = ["--guidance-data", str(runs.data)]
    assert _sample(run, tmp_path / "plain.npz", sampler=sampler) == 0
    assert _sample(run, tmp_path / "guided.npz", "--guidance", "weight=1", "--guidance", "bank_size=16",
                   "--guidance", "kernel=gaussian", *bank, sampler=sampler) == 0
    assert _sample(run, tmp_path / "zero.npz", "--guidance", "weight=0", "--guidance", "bank_size=16", *bank,
                   sampler=sampler) == 0
    plain, plain_meta = _load(tmp_path / "plain.npz")
    guided, meta = _load(tmp_path / "guided.npz")
    zero, _ = _load(tmp_path / "zero.npz")
    assert plain_meta["guidance"] is None
    assert np.array_equal(zero, plain)
    assert not np.array_equal(guided, plain)
    record = meta["guidance"]
    assert record["label"] == "reconstruction (SPEC §7)"
    assert {k: record[k] for k in ("weight", "bank_size", "kernel", "schedule", "repel", "normalise", "batch_bank")} == \
        {"weight": 1, "bank_size": 16, "kernel": "gaussian", "schedule": "constant", "repel": True, "normalise": True,
         "batch_bank": None}
    assert record["data"] == {"path": str(runs.data.resolve()), "split": "train", "n_images": 32}
    assert json.loads((tmp_path / "guided.json").read_text())["guidance"] == record


@pytest.mark.parametrize("extra", [[], ["--guidance", "batch_bank=3"], ["--guidance", "normalise=false"]])
def test_guidance_without_repulsion_keeps_image_i_a_function_of_seed_i(tmp_path, runs, extra):
    guide = ["--guidance", "weight=1", "--guidance", "bank_size=8", "--guidance", "repel=false", *extra,
             "--guidance-data", f"{runs.data}:test"]  # the test split holds 8 images
    assert _sample(runs("gbm"), tmp_path / "whole.npz", *guide) == 0
    assert _sample(runs("gbm"), tmp_path / "part.npz", *guide, n=2, batch_size=1, seed_start=2) == 0
    whole, meta = _load(tmp_path / "whole.npz")
    part, _ = _load(tmp_path / "part.npz")
    assert np.array_equal(whole[2:], part)
    assert meta["guidance"]["data"]["split"] == "test" and meta["guidance"]["repel"] is False


@pytest.mark.parametrize("argv, field", [
    (["--guidance", "weight=1"], "--guidance-data"),
    (["--guidance-data", "{data}"], "--guidance"),
    (["--guidance", "wieght=1", "--guidance-data", "{data}"], "--guidance 'wieght=1': expected KEY=VALUE"),
    (["--guidance", "weight", "--guidance-data", "{data}"], "--guidance 'weight': expected KEY=VALUE"),
    (["--guidance", "weight=-1", "--guidance-data", "{data}"], "--guidance: guidance.weight"),
    (["--guidance", "repel=maybe", "--guidance-data", "{data}"], "--guidance: guidance.repel"),
    (["--guidance", "normalise=2", "--guidance-data", "{data}"], "--guidance: guidance.normalise"),
    (["--guidance", "batch_bank=2000", "--guidance-data", "{data}"], "--guidance: guidance.batch_bank"),
    (["--guidance", "bank_size=64", "--guidance-data", "{data}"], "guidance.bank_size"),
    (["--guidance", "weight=1", "--guidance-data", "{data}:valid"], "--guidance-data: unknown split"),
    (["--guidance", "weight=1", "--guidance-data", "{empty}"], "--guidance-data"),
    (["--guidance", "weight=1", "--guidance-data", "{wrong}"], "--guidance-data: images of shape [1, 4, 4]"),
    (["--guidance", "weight=1", "--guidance-data", "{missing}"], "--guidance-data"),
])
def test_bad_guidance_input_names_the_field_and_writes_nothing(tmp_path, runs, capsys, argv, field):
    empty = tmp_path / "empty.npz"
    arrays = {f"{split}_{kind}": np.zeros((0, 1, 8, 8), np.uint8) if kind == "images" else np.zeros(0, np.int64)
              for split in ("train", "test") for kind in ("images", "labels")}
    np.savez(empty, meta=np.array("{}"), **arrays)
    files = {"{data}": str(runs.data), "{empty}": str(empty), "{wrong}": str(_dataset(tmp_path / "wrong.npz", (1, 4, 4))),
             "{missing}": str(tmp_path / "missing.npz")}
    argv = [files.get(item.split(":")[0], "") + item[len(item.split(":")[0]):] if item.split(":")[0] in files
            else item for item in argv]
    out = tmp_path / "s.npz"
    assert _sample(runs("gbm"), out, *argv) == 2
    error = capsys.readouterr().err
    assert field in error, error
    assert not out.exists() and not out.with_suffix(".json").exists()
