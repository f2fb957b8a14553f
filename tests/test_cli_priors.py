"""Priors through the command line: fitted at training into model.pt, chosen by ``gbm sample --prior``,
recorded with the samples; older models refused with a pointer to ``gbm fit-prior``, which adds them."""

import json

import numpy as np
import pytest
import torch
import yaml

from gbm.cli import main
from gbm.runs import atomic_torch_save
from helpers import noise_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A GBM run and a VP run on 32 synthetic 8x8 images (4 training steps each)."""
    tmp_path = tmp_path_factory.mktemp("priors")
    data = noise_dataset(tmp_path / "data.npz", classes=3, name="mnist")
    runs = {}
    for sde in ("gbm", "vp"):
        config = {"data": {"path": str(data)}, "sde": {"name": sde}, "model": {"size": "tiny"},
                  "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 1}}
        path = tmp_path / f"{sde}.yaml"
        path.write_text(yaml.safe_dump(config))
        runs[sde] = tmp_path / sde
        assert main(["train", str(path), "--out", str(runs[sde]), "--device", "cpu", "--no-progress"]) == 0
    return runs


def _sample(run, out, *extra):
    return main(["sample", str(run), "--sampler", "dale-langevin", "--steps", "3", "--n", "3", "--out", str(out),
                 "--device", "cpu", "--no-progress", *extra])


def test_training_stores_every_gbm_prior_in_model_pt(trained):
    record = torch.load(trained["gbm"] / "model.pt", weights_only=True)
    assert sorted(record["priors"]) == ["authors", "class-mean", "correlated", "iid"]
    assert record["priors"]["correlated"]["eigenvectors"].shape == (64, 64)
    assert record["priors"]["class-mean"]["classes"] == [0, 1, 2]
    assert record["priors"]["authors"]["dataset"] == "mnist"


def test_sample_records_the_prior_and_prior_changes_the_start(trained, tmp_path):
    outputs = {}
    for prior in ("iid", "correlated", "class-mean", "authors"):
        out = tmp_path / f"{prior}.npz"
        assert _sample(trained["gbm"], out, "--prior", prior) == 0
        assert json.loads(out.with_suffix(".json").read_text())["prior"] == prior
        with np.load(out) as f:
            outputs[prior] = f["images"]
    assert _sample(trained["gbm"], tmp_path / "default.npz") == 0
    assert json.loads((tmp_path / "default.json").read_text())["prior"] == "iid"
    with np.load(tmp_path / "default.npz") as f:
        assert np.array_equal(f["images"], outputs["iid"])
    assert not np.array_equal(outputs["iid"], outputs["correlated"])
    assert _sample(trained["gbm"], tmp_path / "low.npz", "--prior", "correlated", "--prior-option", "rank=4") == 0
    assert json.loads((tmp_path / "low.json").read_text())["prior_options"] == {"rank": 4}


def test_score_records_how_the_samples_were_drawn(trained, tmp_path):
    from gbm.commands.score import sample_provenance

    assert _sample(trained["gbm"], tmp_path / "c.npz", "--prior", "correlated") == 0
    provenance = sample_provenance(str(tmp_path / "c.npz"))
    assert provenance["prior"] == "correlated" and provenance["sampler"] == "dale-langevin"
    assert sample_provenance(str(trained["gbm"].parent / "data.npz")) is None  # a prepared dataset


@pytest.mark.parametrize("argv,field", [
    (["--prior", "gaussian"], "--prior: unknown prior 'gaussian'"),
    (["--prior", "correlated", "--prior-option", "rank=64"], "prior option 'rank'"),
    (["--prior", "correlated", "--prior-option", "rank=0"], "prior option 'rank'"),
    (["--prior", "iid", "--prior-option", "rank=3"], "not understood by the 'iid' prior"),
])
def test_bad_prior_input_names_the_field_before_sampling(trained, tmp_path, capsys, argv, field):
    out = tmp_path / "bad.npz"
    assert _sample(trained["gbm"], out, *argv) == 2
    assert field in capsys.readouterr().err
    assert not out.exists()


def test_a_prior_for_an_additive_sde_is_refused(trained, tmp_path, capsys):
    argv = ["sample", str(trained["vp"]), "--sampler", "em", "--steps", "3", "--n", "2", "--out",
            str(tmp_path / "vp.npz"), "--device", "cpu", "--no-progress"]
    assert main(argv + ["--prior", "correlated"]) == 2
    assert "--prior: method 'vp' has one fixed prior" in capsys.readouterr().err
    assert main(argv) == 0
    assert json.loads((tmp_path / "vp.json").read_text())["prior"] == "fixed"


def test_older_model_is_refused_naming_prior_and_fit_prior_adds_the_statistics(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "old"
    shutil.copytree(trained["gbm"], run)
    record = torch.load(run / "model.pt", weights_only=True)
    del record["priors"]  # a model.pt from before named priors
    atomic_torch_save(record, run / "model.pt")
    assert _sample(run, tmp_path / "iid_old.npz") == 0  # iid: recovered from the SDE's fitted parameters
    assert _sample(run, tmp_path / "x.npz", "--prior", "correlated") == 2
    error = capsys.readouterr().err
    assert "--prior correlated" in error and "gbm fit-prior" in error
    assert main(["fit-prior", str(run)]) == 0
    refitted = torch.load(run / "model.pt", weights_only=True)
    assert sorted(refitted["priors"]) == ["authors", "class-mean", "correlated", "iid"]
    assert all(torch.equal(refitted["state_dict"][k], v) for k, v in record["state_dict"].items())
    assert _sample(run, tmp_path / "x.npz", "--prior", "correlated") == 0
    with np.load(tmp_path / "x.npz") as a, np.load(tmp_path / "iid_old.npz") as b:
        assert a["images"].shape == b["images"].shape
    assert _sample(trained["gbm"], tmp_path / "iid_new.npz") == 0
    with np.load(tmp_path / "iid_new.npz") as a, np.load(tmp_path / "iid_old.npz") as b:
        assert np.array_equal(a["images"], b["images"])  # the stored and the recovered iid prior agree
