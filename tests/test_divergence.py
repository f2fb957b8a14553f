"""A diverged sampler fails loudly (issue 17): `gbm sample` stops with a named error and writes nothing,
`--allow-nonfinite` records the non-finite share and `gbm score` refuses it, non-finite weights and
features are refused, unstable GBM options are refused before sampling, and finite runs are untouched."""

import json

import numpy as np
import pytest
import torch
import yaml

from gbm.cli import main
from gbm.methods import method_of
from gbm.methods.gbm import GBM, dale_langevin_update
from gbm.metrics import load_image_set, metrics_from_features
from gbm.runs import load_model
from gbm.sampling import SamplerDiverged, sample
from gbm.seeding import PerSampleGenerator
from helpers import noise_dataset


pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLERS = {"gbm": "dale-langevin", "vp": "em", "cld": "sscs", "gbm-score": "dale-langevin"}
# The final conv's bias that makes each network's score overflow float32 in its sampler's next update
# ("gbm-score": the score parameterisation, whose raw output h Dale-Langevin exponentiates).
BLOW_UP_BIAS = {"gbm": -3e38, "vp": 3e38, "cld": 3e38, "gbm-score": 3e38}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny 4-step runs on a synthetic 1x8x8 dataset, one per SDE (trained on first use)."""
    root = tmp_path_factory.mktemp("divergence")
    data = noise_dataset(root / "data.npz")
    trained = {}

    def run(sde):
        if sde not in trained:
            name, _, parameterisation = sde.partition("-")
            config = {"data": {"path": str(data)}, "sde": {"name": name},
                      "model": {"size": "tiny", "parameterisation": parameterisation or "eps"},
                      "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 4, "log_every": 1}}
            (root / f"{sde}.yaml").write_text(yaml.safe_dump(config))
            assert main(["train", str(root / f"{sde}.yaml"), "--out", str(root / sde), "--device", "cpu",
                         "--no-progress"]) == 0
            trained[sde] = root / sde
        return trained[sde]

    return run


def _with_weights(run_dir, target, change):
    """A copy of ``run_dir`` (config and model.pt only) whose EMA weights ``change(state_dict)`` edited."""
    target.mkdir()
    (target / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    record = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    change(record["state_dict"])
    torch.save(record, target / "model.pt")
    return target


def _blown_up(runs, sde, tmp_path):
    def change(state):
        state["head.2.weight"].zero_()
        state["head.2.bias"].fill_(BLOW_UP_BIAS[sde])

    return _with_weights(runs(sde), tmp_path / f"{sde}-blown", change)


def _sample(run_dir, out, *extra, sampler, steps=5, n=4):
    return main(["sample", str(run_dir), "--sampler", sampler, "--steps", str(steps), "--n", str(n), "--out", str(out),
                 "--batch-size", str(n), "--device", "cpu", "--no-progress", *extra])


@pytest.mark.parametrize("sde", sorted(SAMPLERS))
def test_a_state_that_becomes_non_finite_stops_gbm_sample_with_a_named_error_and_no_files(runs, sde, tmp_path, capsys):
    run = _blown_up(runs, sde, tmp_path)
    out = tmp_path / "samples.npz"
    assert _sample(run, out, sampler=SAMPLERS[sde], n=4) == 2
    error = capsys.readouterr().err
    assert f"sampler {SAMPLERS[sde]!r} diverged" in error
    assert "network call 2 (t = " in error or "final state" in error
    assert "4 of 4 images" in error and "steps=5" in error and "--allow-nonfinite" in error
    assert not out.exists() and not out.with_suffix(".json").exists()


def test_allow_nonfinite_records_the_share_and_gbm_score_refuses_the_file_unless_told(runs, tmp_path, capsys):
    run = _blown_up(runs, "vp", tmp_path)
    out = tmp_path / "samples.npz"
    assert _sample(run, out, "--allow-nonfinite", sampler="em", n=4) == 0
    stats = json.loads(out.with_suffix(".json").read_text())
    with np.load(out) as archive:
        meta = json.loads(str(archive["meta"]))
    assert stats["nonfinite"] == meta["nonfinite"] == 1.0 and stats["allow_nonfinite"] is True
    capsys.readouterr()
    assert main(["score", "--real", str(out), "--fake", str(out), "--device", "cpu"]) == 2
    assert "--allow-nonfinite" in capsys.readouterr().err
    assert len(load_image_set(out, allow_nonfinite=True).images) == 4


def test_a_finite_run_records_no_nonfinite_images(runs, tmp_path):
    out = tmp_path / "samples.npz"
    assert _sample(runs("gbm"), out, sampler="dale-langevin") == 0
    assert json.loads(out.with_suffix(".json").read_text())["nonfinite"] == 0.0
    assert len(load_image_set(out).images) == 4


def test_a_model_file_with_a_nan_weight_is_refused_on_load_naming_the_tensor(runs, tmp_path, capsys):
    def change(state):
        state["stem.weight"][0, 0, 0, 0] = float("nan")

    run = _with_weights(runs("vp"), tmp_path / "nan", change)
    with pytest.raises(ValueError, match="'stem.weight' holds 1 NaN"):
        load_model(run)
    assert _sample(run, tmp_path / "samples.npz", sampler="em") == 2
    assert "stem.weight" in capsys.readouterr().err
    assert not (tmp_path / "samples.npz").exists()


def test_a_feature_set_with_a_nan_is_refused_by_scoring():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(8, 2048)).astype(np.float32), rng.normal(size=(8, 2048)).astype(np.float32)
    assert np.isfinite(metrics_from_features(real, fake)["fid"])
    fake[3, 7] = np.nan
    with pytest.raises(ValueError, match="fake features: 1 of 8 .* row 3"):
        metrics_from_features(real, fake)
    with pytest.raises(ValueError, match="real features"):
        metrics_from_features(fake, real)


@pytest.mark.parametrize("sde,sampler", [("gbm", "dale-langevin"), ("gbm", "sign-agnostic"), ("vp", "em"),
                                         ("vp", "pc"), ("vp", "ode"), ("cld", "sscs"), ("cld", "cld-em")])
def test_the_finite_check_leaves_samples_bit_identical(runs, sde, sampler):
    """``sample`` (watching every state) against the method's raw sampler function (no watch), same noise."""
    model, record = load_model(runs(sde))
    shape = tuple(record["data"]["shape"])
    state = model.sde.initial_state(torch.zeros(1, *shape)).shape[1:]

    def start():
        generator = PerSampleGenerator([0, 1, 2])
        return model.sde.prior_sample((3, *state), noise=generator.randn(state)), generator

    steps = 25 if sampler == "pc" else 5  # fewer are refused for pc (test_pc_with_too_few_steps_is_refused...)
    x_T, generator = start()
    watched = sample(model.sde, model, x_T, method=sampler, steps=steps, generator=generator).x
    x_T, generator = start()
    with torch.no_grad():
        raw, _ = method_of(model.sde).samplers[sampler](model.sde, model, x_T, steps=steps, generator=generator)
    assert torch.isfinite(raw).all()
    assert torch.equal(watched, raw)


def test_sample_reports_the_first_non_finite_call_its_time_and_the_share_of_images():
    def score(x, t):  # finite until t < 0.5, then NaN for the first image only: its state is NaN from t = 0.3
        h = torch.zeros_like(x)
        if float(t[0]) < 0.5:
            h[0] = float("nan")
        return h

    with pytest.raises(SamplerDiverged) as caught:
        sample(GBM(), score, torch.ones(4, 3), method="dale-langevin", steps=10,
               generator=torch.Generator().manual_seed(0))
    assert (caught.value.call, caught.value.affected, caught.value.batch) == (8, 1, 4)
    assert caught.value.t == pytest.approx(0.3)
    assert "1 of 4 images in the batch (25 %)" in str(caught.value)
    allowed = sample(GBM(), score, torch.ones(4, 3), method="dale-langevin", steps=10,
                     generator=torch.Generator().manual_seed(0), allow_nonfinite=True)
    assert allowed.nonfinite.tolist() == [True, False, False, False]


def test_gbm_delta_far_above_the_level_spacing_is_refused_before_sampling(runs, tmp_path, capsys):
    out = tmp_path / "samples.npz"
    assert _sample(runs("gbm"), out, "--option", "delta=50", sampler="dale-langevin", steps=5) == 2
    error = capsys.readouterr().err
    assert "delta: 50 is far above the level spacing T/steps = 0.2" in error
    assert not out.exists()


@pytest.mark.parametrize("sampler", ["dale-langevin", "sign-agnostic"])
def test_gbm_delta_is_accepted_up_to_twice_the_smallest_level_and_refused_above(sampler):
    score = lambda x, t: -torch.ones_like(x)  # noqa: E731
    sample(GBM(), score, torch.ones(2, 3), method=sampler, steps=10, delta=0.2)
    with pytest.raises(ValueError, match="^delta: 0.2001 is far above"):
        sample(GBM(), score, torch.ones(2, 3), method=sampler, steps=10, delta=0.2001)


def test_a_constant_pixel_deviation_is_multiplied_by_one_minus_delta_over_t_per_update():
    """The bound behind the delta check: with the exact score of a point mass at x_0 = 1 (a pixel constant in the
    data), a noise-free Dale–Langevin update at level t scales log x by 1 - delta/t: growth iff delta > 2t."""
    sde, t = GBM(), 0.1
    y = torch.tensor([0.3, -0.2], dtype=torch.float64)
    h = -1.0 - y / (sde.sigma**2 * t)  # x * grad log p_t(x) for log x_t ~ N(0, sigma^2 t)
    for delta in (0.05, 0.19, 0.21, 0.5):
        moved = dale_langevin_update(sde, y.exp(), h, delta, 0.0).log()
        torch.testing.assert_close(moved, y * (1 - delta / t))


def test_gamma_above_one_is_refused_before_sampling():
    calls = []

    def score(x, t):
        calls.append(1)
        return torch.zeros_like(x)

    with pytest.raises(ValueError, match="^gamma: .* must lie in \\[0, 1\\], got 1.01"):
        sample(GBM(), score, torch.ones(2, 3), method="dale-langevin", steps=10, delta=0.01, gamma=1.01)
    assert not calls


def test_log_tweedie_refuses_a_non_positive_or_non_finite_state():
    sde, t = GBM(), torch.full((2,), 0.5)
    assert torch.isfinite(sde.log_tweedie(torch.ones(2, 3), t, torch.zeros(2, 3))).all()
    for bad in (torch.tensor([[1.0, -1.0, 1.0]] * 2), torch.tensor([[1.0, float("inf"), 1.0]] * 2)):
        with pytest.raises(ValueError, match="log_tweedie: x_t"):
            sde.log_tweedie(bad, t, torch.zeros(2, 3))


def test_pc_with_too_few_steps_for_its_langevin_step_factor_is_refused_before_sampling():
    """VP's corrector factor 1 - beta(t) dt (beta_max = 20) is negative at T when the first interval
    (T - end_time)/steps exceeds 1/20 (19 steps or fewer): NaN noise. The check runs on the grid the sampler
    will use: 30 levels uniform in sqrt(t) start with dt = 0.064, also too coarse at T."""
    from gbm.methods.additive import VPSDE

    score = lambda x, t: -x  # noqa: E731
    with pytest.raises(ValueError, match="^steps: 19 is too few for the predictor-corrector"):
        sample(VPSDE(), score, torch.zeros(2, 3), method="pc", steps=19)
    assert torch.isfinite(sample(VPSDE(), score, torch.zeros(2, 3), method="pc", steps=20).x).all()
    with pytest.raises(ValueError, match="^steps: 30 is too few for the predictor-corrector"):
        sample(VPSDE(), score, torch.zeros(2, 3), method="pc", steps=30, grid="sqrt-t")
    assert torch.isfinite(sample(VPSDE(), score, torch.zeros(2, 3), method="pc", steps=30).x).all()


def test_report_aggregate_lists_a_failed_evaluation_with_the_reason_from_its_log(tmp_path):
    """`gbm report aggregate` writes failed.csv from the sample job's log; the tables name it and show nonfinite."""
    import pandas as pd

    from test_pipeline_tracking import fake_results

    results = fake_results(tmp_path, seeds=(0,))
    failed_dir = results / "mnist" / "gbm" / "seed0" / "dale-langevin" / "steps5"
    log = tmp_path / "sample.log"
    log.write_text("# command: gbm sample ...\nsome progress\ngbm sample: error: sampler 'dale-langevin' diverged: "
                   "the state became non-finite\n")
    stats = results / "mnist" / "vp" / "seed0" / "em" / "steps10" / "samples.json"
    stats.write_text(json.dumps(json.loads(stats.read_text()) | {"nonfinite": 0.25}))
    metrics = sorted(str(p) for p in results.glob("*/*/seed*/*/steps*/metrics.json"))
    tables = tmp_path / "tables"
    assert main(["report", "aggregate", *metrics, "--out", str(tables / "metrics.csv"), "--failed", str(failed_dir),
                 str(log), "--failed-out", str(tables / "failed.csv")]) == 0
    failed = pd.read_csv(tables / "failed.csv")
    assert failed[["method", "sampler", "steps", "stage"]].values.tolist() == [["gbm", "dale-langevin", 5, "sample"]]
    assert failed["reason"][0] == "sampler 'dale-langevin' diverged: the state became non-finite"
    assert pd.read_csv(tables / "metrics.csv")["nonfinite"].tolist() == [0.0, 0.25]
    floor = tmp_path / "floor.json"
    floor.write_text(json.dumps({"fid": 3.5, "kid_mean": 1e-4}))
    assert main(["report", "tables", "--metrics", str(tables / "metrics.csv"), "--failed", str(tables / "failed.csv"),
                 "--floor", str(floor), "--name", "test", "--out-dir", str(tables)]) == 0
    markdown = (tables / "benchmark.md").read_text()
    assert "1 evaluation(s) failed" in markdown and "Non-finite %" in markdown
    assert "- mnist / gbm / seed 0 / dale-langevin / 5 steps: sampler 'dale-langevin' diverged" in markdown


@pytest.mark.slow
def test_snakemake_leaves_a_failed_sampling_out_of_the_tables_and_lists_it(tmp_path):
    """Dry runs of the default benchmark: once an evaluation's sample log records a failure of its current
    command, no job waits on it and `gbm report aggregate` gets it as --failed; another command retries it."""
    import re
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def dry_run():
        out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-n", "-p", "--cores",
                              "2", "--directory", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr + out.stdout
        counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:")[1], re.M)}
        return counts, out.stdout

    counts, printed = dry_run()
    target = "results/mnist/gbm/seed0/dale-langevin/steps100"
    line = next(line for line in printed.splitlines() if f"--out {target}/samples.npz" in line and "printf" in line)
    record = next(token for token in shlex.split(line) if token.startswith("# command: "))
    log = tmp_path / "results/logs/sample/mnist_gbm_seed0_dale-langevin_steps100.log"
    log.parent.mkdir(parents=True)
    log.write_text(record + "\ngbm sample: error: sampler 'dale-langevin' diverged\n")
    failed_counts, printed = dry_run()
    assert failed_counts["sample"] == counts["sample"] - 1 and failed_counts["score"] == counts["score"] - 1
    aggregate_line = next(line for line in printed.splitlines() if "gbm report aggregate" in line)
    assert f"--failed {target} results/logs/sample/mnist_gbm_seed0_dale-langevin_steps100.log" in aggregate_line
    log.write_text(record.replace("--steps 100", "--steps 101") + "\ngbm sample: error: old settings\n")
    assert dry_run()[0] == counts
