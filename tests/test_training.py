"""Training loop: bitwise resume, refusal to checkpoint non-finite weights, config validation, EMA, prior."""

import csv
import math

import numpy as np
import pytest
import torch

from gbm import training
from gbm.config import TrainConfig, config_from_dict, load_config
from gbm.ema import EMA
from gbm.pixels import to_positive
from gbm.runs import RunDir, load_model
from gbm.sampling import sample
from gbm.data.toy import two_spirals
from gbm.methods.gbm import GBM
from toy_distributions import sliced_wasserstein
from gbm.training import TrainingDiverged, learning_rate, prepare, train
from helpers import blob_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


def image_config(data_path, **train):
    return config_from_dict({
        "seed": 3,
        "data": {"path": str(data_path)},
        "sde": {"name": "gbm"},
        "model": {"size": "tiny", "dropout": 0.1},
        "train": {"steps": 6, "batch_size": 8, "lr": 1e-3, "warmup": 2, "checkpoint_every": 2, "log_every": 1} | train,
    })


class Interrupt(Exception):
    pass


def interrupt_after(setup, calls):
    """Make the loss raise on its ``calls``+1-th call, as if the process were killed mid-run."""
    loss_fn, count = setup.loss_fn, [0]

    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] > calls:
            raise Interrupt
        return loss_fn(*args, **kwargs)

    setup.loss_fn = wrapped
    return setup


def test_resume_after_interruption_gives_bitwise_identical_weights(tmp_path):
    data = blob_dataset(tmp_path / "data.npz")
    config = image_config(data)
    train(config, tmp_path / "straight", device="cpu", progress=False)

    setup = interrupt_after(prepare(config, "cpu"), calls=5)
    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", progress=False, setup=setup)
    assert [s for s, _ in RunDir(tmp_path / "resumed").list_checkpoints()] == [2, 4]
    metrics = train(config, tmp_path / "resumed", device="cpu", progress=False)
    assert metrics["resumed_from_step"] == 4

    straight, resumed = RunDir(tmp_path / "straight"), RunDir(tmp_path / "resumed")
    a = torch.load(straight.checkpoint(6), weights_only=True)
    b = torch.load(resumed.checkpoint(6), weights_only=True)
    for key in a["backbone"]:
        assert torch.equal(a["backbone"][key], b["backbone"][key]), key
    model_a = torch.load(straight.model, weights_only=True)["state_dict"]
    model_b = torch.load(resumed.model, weights_only=True)["state_dict"]
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    assert straight.loss.read_text() == resumed.loss.read_text()


def test_extending_a_finished_run_continues_from_its_last_checkpoint(tmp_path):
    data = blob_dataset(tmp_path / "data.npz")
    train(image_config(data, steps=4), tmp_path / "run", device="cpu", progress=False)
    metrics = train(image_config(data, steps=6), tmp_path / "run", device="cpu", progress=False)
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 6
    with pytest.raises(ValueError, match="train.lr"):
        train(image_config(data, steps=8, lr=0.5), tmp_path / "run", device="cpu", progress=False)


def test_learning_rate_schedules_follow_their_closed_forms():
    """Warm-up: lr step / warmup; constant: lr after it; cosine: lr (1 + cos(pi (s - w) / (S - w))) / 2, so lr
    at the end of the warm-up, lr / 2 half way through the decay and 0 at the last step, never increasing."""
    constant = TrainConfig(steps=110, lr=0.01, warmup=10)
    cosine = TrainConfig(steps=110, lr=0.01, warmup=10, lr_schedule="cosine")
    for tc in (constant, cosine):
        assert learning_rate(tc, 1) == pytest.approx(0.001) and learning_rate(tc, 10) == pytest.approx(0.01)
    assert [learning_rate(constant, s) for s in (11, 60, 110)] == [0.01] * 3
    assert learning_rate(cosine, 60) == pytest.approx(0.005)
    assert learning_rate(cosine, 35) == pytest.approx(0.01 * (1 + math.cos(math.pi / 4)) / 2)
    assert learning_rate(cosine, 110) == pytest.approx(0.0, abs=1e-12)
    decay = [learning_rate(cosine, s) for s in range(10, 111)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert learning_rate(TrainConfig(steps=100, lr=0.01, warmup=0, lr_schedule="cosine"), 1) < 0.01
    # the constant schedule's rates are, bit for bit, those of the code before the schedules existed (published
    # constant-rate runs reproduce): lr * min(1, step / warmup), which differs from lr * step / warmup at 12 of
    # the default's 50 warm-up steps in the last bit
    recipe = TrainConfig(steps=1200, lr=0.002, warmup=50)
    assert [learning_rate(recipe, s) for s in range(1, 1201)] == [0.002 * min(1.0, s / 50) for s in range(1, 1201)]


def test_cosine_training_uses_the_schedule_resumes_bitwise_and_refuses_a_changed_length(tmp_path):
    """The optimizer runs at the scheduled rate, also without a warm-up (its checkpointed learning rate; the last
    step's is 0; train_log.csv records the same rates); an interrupted
    cosine run resumes to the uninterrupted weights; a different train.steps would change every rate, so
    extending a cosine run is refused naming the key (a constant-schedule run may be extended)."""
    data = blob_dataset(tmp_path / "data.npz")
    config = image_config(data, lr_schedule="cosine", warmup=0)
    train(config, tmp_path / "straight", device="cpu", progress=False)
    for step in (4, 6):
        state = torch.load(RunDir(tmp_path / "straight").checkpoint(step), weights_only=True)
        assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(learning_rate(config.train, step), abs=1e-12)
    assert learning_rate(config.train, 4) == pytest.approx(1e-3 * 0.25)
    logged = np.loadtxt(RunDir(tmp_path / "straight").root / "train_log.csv", delimiter=",", skiprows=1)
    assert logged[:, 1] == pytest.approx([learning_rate(config.train, s) for s in range(1, 7)])
    assert logged[-1, 1] == 0.0

    setup = interrupt_after(prepare(config, "cpu"), calls=3)
    with pytest.raises(Interrupt):
        train(config, tmp_path / "resumed", progress=False, setup=setup)
    train(config, tmp_path / "resumed", device="cpu", progress=False)
    a = torch.load(RunDir(tmp_path / "straight").model, weights_only=True)["state_dict"]
    b = torch.load(RunDir(tmp_path / "resumed").model, weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)

    with pytest.raises(ValueError, match=r"train\.steps"):
        train(image_config(data, steps=8, lr_schedule="cosine"), tmp_path / "straight", device="cpu", progress=False)


def test_non_finite_loss_stops_training_without_checkpointing_bad_weights(tmp_path):
    data = blob_dataset(tmp_path / "data.npz")
    config = image_config(data)
    setup = prepare(config, "cpu")
    loss_fn, count = setup.loss_fn, [0]

    def poisoned(*args, **kwargs):
        count[0] += 1
        loss = loss_fn(*args, **kwargs)
        return loss * math.nan if count[0] == 3 else loss

    setup.loss_fn = poisoned
    with pytest.raises(TrainingDiverged, match="non-finite.*step 3.*last checkpoint, of step 2, is kept"):
        train(config, tmp_path / "run", progress=False, setup=setup)
    run = RunDir(tmp_path / "run")
    assert [s for s, _ in run.list_checkpoints()] == [2]
    assert not run.model.exists()
    state = torch.load(run.checkpoint(2), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["backbone"].values())


def test_a_learning_rate_that_diverges_stops_at_the_first_non_finite_loss_keeping_the_last_checkpoint(tmp_path):
    """No poisoning: lr 3 for Adam on this net takes the loss to NaN within a few steps by itself. The error names
    the step and the checkpoint that stays, which holds finite weights; no model.pt is written."""
    import re

    data = blob_dataset(tmp_path / "data.npz")
    config = image_config(data, steps=40, lr=3.0, warmup=0, checkpoint_every=1, keep_checkpoints=40)
    with pytest.raises(TrainingDiverged) as caught:
        train(config, tmp_path / "run", device="cpu", progress=False)
    message = str(caught.value)
    stopped = int(re.search(r"non-finite \(nan\) at step (\d+)", message).group(1))
    run = RunDir(tmp_path / "run")
    steps = [s for s, _ in run.list_checkpoints()]
    assert 1 < stopped < 40 and steps == list(range(1, stopped)), (message, steps)
    assert f"last checkpoint, of step {stopped - 1}, is kept: {run.checkpoint(stopped - 1)}" in message
    state = torch.load(run.checkpoint(stopped - 1), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["backbone"].values())
    losses = np.loadtxt(run.loss, delimiter=",", skiprows=1)
    assert losses[-1, 0] == stopped and np.isnan(losses[-1, 1]) and np.isfinite(losses[:-1, 1]).all()
    assert not run.model.exists()


def test_non_finite_weights_with_finite_loss_are_never_checkpointed(tmp_path):
    data = blob_dataset(tmp_path / "data.npz")
    config = image_config(data, checkpoint_every=3)
    setup = prepare(config, "cpu")
    loss_fn, count = setup.loss_fn, [0]

    def corrupting(*args, **kwargs):
        count[0] += 1
        loss = loss_fn(*args, **kwargs)
        if count[0] == 3:
            with torch.no_grad():
                next(setup.backbone.parameters()).fill_(math.nan)
        return loss

    setup.loss_fn = corrupting
    with pytest.raises(TrainingDiverged, match="weights became non-finite by step 3.*No checkpoint was written yet"):
        train(config, tmp_path / "run", progress=False, setup=setup)
    assert RunDir(tmp_path / "run").list_checkpoints() == []


def test_model_file_holds_ema_weights_and_the_prior_fitted_to_the_training_data(tmp_path):
    data = blob_dataset(tmp_path / "data.npz")
    train(image_config(data), tmp_path / "run", device="cpu", progress=False)
    model, record = load_model(tmp_path / "run")
    from gbm.data import load_prepared

    expected = GBM().with_prior_from_data(to_positive(torch.from_numpy(load_prepared(data).train_images)))
    assert model.sde == expected
    assert record["parameterisation"] == "eps" and record["data"]["space"] == "positive"
    last = torch.load(RunDir(tmp_path / "run").checkpoint(6), weights_only=True)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, last["ema"]["shadow"][key])
    assert not all(torch.equal(model.backbone.state_dict()[k], last["backbone"][k]) for k in last["backbone"])
    with open(RunDir(tmp_path / "run").loss) as handle:
        assert [int(r["step"]) for r in csv.DictReader(handle)] == list(range(1, 7))


def test_ema_warm_up_follows_min_decay_and_one_plus_n_over_ten_plus_n():
    net = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(net.weight)
    ema = EMA(net, decay=0.9)
    shadow = 0.0
    for n in range(30):
        with torch.no_grad():
            net.weight.fill_(float(n + 1))
        decay = min(0.9, (1 + n) / (10 + n))
        shadow = decay * shadow + (1 - decay) * (n + 1)
        ema.update(net)
        assert ema.shadow["weight"].item() == pytest.approx(shadow, rel=1e-6)


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
    data = training.TrainingData(torch.arange(10.0)[:, None], None, seed=1, device=torch.device("cpu"))
    epoch = torch.cat([data.batch(step, 5) for step in range(2)]).flatten()
    assert sorted(epoch.tolist()) == list(range(10))
    assert not torch.equal(epoch, torch.cat([data.batch(step, 5) for step in range(2, 4)]).flatten())
    again = training.TrainingData(torch.arange(10.0)[:, None], None, seed=1, device=torch.device("cpu"))
    assert torch.equal(again.batch(1, 5), data.batch(1, 5))


@pytest.mark.parametrize("override, key", [
    ({"train": {"stepz": 3}}, "train.stepz"),
    ({"train": {"steps": 0}}, "train.steps"),
    ({"train": {"batch_size": "big"}}, "train.batch_size"),
    ({"train": {"lr": -1.0}}, "train.lr"),
    ({"train": {"steps": 5, "warmup": 6}}, "train.warmup"),  # a schedule shorter than its warm-up
    ({"train": {"steps": 5, "warmup": 5, "lr_schedule": "cosine"}}, "train.warmup"),  # no step left to decay
    ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule"),
    ({"model": {"size": "huge"}}, "model.size"),
    ({"model": {"parameterisation": "v"}}, "model.parameterisation"),
    ({"optimiser": {}}, "optimiser"),
    ({"data": {"toy": "two_spirals"}}, "data"),
])
def test_config_errors_name_the_key(tmp_path, override, key):
    raw = {"data": {"path": "x.npz"}, "train": {"steps": 5}}
    for section, values in override.items():
        raw[section] = (raw.get(section) or {}) | values
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config_from_dict(raw)


@pytest.mark.parametrize("override, key", [
    ({"sde": {"name": "ou"}}, "sde.name"),
    ({"sde": {"name": "gbm", "sigmaa": 1.0}}, "sigmaa"),
    ({"sde": {"name": "gbm", "prior_log_mean": 0.1}}, "sde.prior_log_mean"),
    ({"loss": {"levels": 3}}, "loss.levels"),
    ({"model": {"hidden": 8}}, "model.hidden"),
    ({"train": {"batch_size": 1000}}, "train.batch_size"),
])
def test_setup_errors_name_the_field_before_any_work(tmp_path, override, key):
    data = blob_dataset(tmp_path / "data.npz")
    raw = image_config(data).to_dict()
    for section, values in override.items():
        raw[section] = values if section == "sde" else raw[section] | values
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        prepare(config_from_dict(raw), "cpu")


def test_image_shape_the_network_cannot_take_is_refused_naming_the_field(tmp_path):
    data = blob_dataset(tmp_path / "data.npz", size=10)
    with pytest.raises(ValueError, match="height 10"):
        train(image_config(data), tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()


def test_non_positive_data_is_refused_for_gbm(monkeypatch):
    monkeypatch.setitem(training.TOY_DATASETS, "centred", lambda n, generator: torch.randn(n, 2, generator=generator))
    config = config_from_dict({"data": {"toy": "centred", "n": 64}, "model": {"backbone": "mlp"}})
    with pytest.raises(ValueError, match="data: GBM needs strictly positive values"):
        prepare(config, "cpu")


def test_set_overrides_reach_the_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {toy: two_spirals}\nmodel: {backbone: mlp}\n")
    config = load_config(path, ["train.steps=7", "sde.name=vp", "model.hidden=16", "train.lr=3e-4"])
    assert (config.train.steps, config.sde.name, config.model.hidden, config.train.lr) == (7, "vp", 16, 3e-4)


def _toy_samples(model, sde, method, n, seed):
    generator = torch.Generator().manual_seed(seed)
    x_T = sde.prior_sample((n, 2), noise=torch.randn(n, 2, generator=generator))
    return sample(sde, model, x_T, method=method, steps=100, generator=generator).x


@pytest.mark.parametrize("sde_name, method", [("gbm", "dale-langevin"), ("vp", "em")])
def test_trained_toy_model_beats_its_untrained_self_on_sliced_wasserstein(tmp_path, sde_name, method):
    config = config_from_dict({
        "seed": 0,
        "data": {"toy": "two_spirals", "n": 4000},
        "sde": {"name": sde_name},
        "model": {"backbone": "mlp", "hidden": 64},
        "train": {"steps": 400, "batch_size": 256, "lr": 3e-3, "checkpoint_every": 400, "ema_decay": 0.99},
    })
    untrained = prepare(config, "cpu").model.eval()
    train(config, tmp_path / "run", device="cpu", progress=False)
    trained, _ = load_model(tmp_path / "run")
    data = two_spirals(1000, torch.Generator().manual_seed(123))
    before = sliced_wasserstein(_toy_samples(untrained, untrained.sde, method, 1000, seed=7), data)
    after = sliced_wasserstein(_toy_samples(trained, trained.sde, method, 1000, seed=7), data)
    assert after < 0.5 * before, (before, after)
