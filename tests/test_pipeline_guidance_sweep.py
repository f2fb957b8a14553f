"""The guidance weight sweep (config key ``guidance_sweep``): its rules run end to end on a tiny config (the
smoke benchmark plus a two-setting sweep), score against the validation slice with the bank drawn from the
rest of the training split; the pick rule; and bad sweep config named before any job."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from gbm.pipeline.config import ConfigError, check_config
from gbm.reporting.guidance_sweep import pick_settings

REPO = Path(__file__).resolve().parents[1]
SMOKE = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
SWEEP = {"weights": [0, 1], "bank_sizes": [8], "samplers": [{"method": "gbm", "sampler": "dale-langevin"}],
         "validation": 16, "n_samples": 16, "steps": 2}


@pytest.mark.slow
def test_sweep_rules_sample_score_on_the_validation_slice_and_write_table_and_figure(tmp_path):
    data = REPO / "results" / "data" / "mnist.npz"
    (tmp_path / "results" / "data").mkdir(parents=True)
    if data.is_file():
        shutil.copy(data, tmp_path / "results" / "data" / "mnist.npz")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SMOKE | {"seeds": [0], "guidance_sweep": SWEEP}))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                          "results/tables/guidance_sweep.csv", "--cores", "2", "--configfile",
                          str(tmp_path / "sweep.yaml")], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    table = pd.read_csv(tmp_path / "results" / "tables" / "guidance_sweep.csv")
    assert list(table["weight"]) == [0.0, 1.0] and table["picked"].sum() == 1
    assert table["reference"].str.endswith(":validation-16[:16]").all()
    assert table[["fid", "kid", "nearest_bank_distance", "distance_ratio_to_unguided"]].notna().all().all()
    guided = json.loads((tmp_path / "results/guidance_sweep/mnist/gbm/seed0/dale-langevin/steps2/w1_bank8/"
                         "samples.json").read_text())["guidance"]
    assert guided["data"]["split"] == "train-minus-validation-16" and guided["normalise"] is True
    assert "Pick: lowest KID" in (tmp_path / "results" / "tables" / "guidance_sweep.md").read_text()
    for name in ("guidance_sweep.png", "guidance_sweep.pdf"):
        assert (tmp_path / "results" / "figures" / name).stat().st_size > 1000


def _rows(kids, fids, ratios, std=0.001):
    """Sweep rows of one model: the unguided baseline first, then guided weights 0.1, 1, 10."""
    weights = [0.0, 0.1, 1.0, 10.0]
    return pd.DataFrame({"dataset": "mnist", "method": "gbm", "seed": 0, "sampler": "dale-langevin", "steps": 100,
                         "weight": weights, "bank_size": [np.nan, 256, 256, 256], "kid": kids, "fid": fids,
                         "kid_subset_std": std, "nearest_bank_distance": [6.0, *(6.0 * r for r in ratios)],
                         "bank_spacing": [np.nan, 5.0, 5.0, 5.0]})


def test_pick_is_the_lowest_kid_that_beats_unguided_beyond_noise_without_copying():
    picked = pick_settings(_rows([0.05, 0.04, 0.03, 0.01], [100, 95, 90, 60], [1.0, 0.95, 0.5]))
    assert list(picked["picked"]) == [False, False, True, False]  # weight 10: 3.0 < 0.9 x spacing 5.0


@pytest.mark.parametrize("kids, fids", [([0.05, 0.049, 0.0495, 0.0499], [100, 90, 90, 90]),  # within 2 std
                                        ([0.5, 0.49, 0.495, 0.48], [100, 90, 90, 90]),  # within 5 %
                                        ([0.05, 0.03, 0.04, 0.04], [100, 101, 99, 99])])  # KID better, FID worse
def test_pick_falls_back_to_unguided_when_no_weight_helps(kids, fids):
    picked = pick_settings(_rows(kids, fids, [1.0, 1.0, 1.0]))
    assert list(picked["picked"]) == [True, False, False, False]


@pytest.mark.parametrize("change, key", [
    ({"samplers": [{"method": "cld", "sampler": "sscs"}]}, "guidance_sweep.samplers[0].method"),
    ({"samplers": [{"method": "gbm", "sampler": "em"}]}, "guidance_sweep.samplers[0].sampler"),
    ({"seed": 7}, "guidance_sweep.seed"),
    ({"validation": 8}, "guidance_sweep.validation"),
    ({"guidance": {"kernel": "laplace"}}, "guidance.kernel"),
    ({"batch_bank": 64}, "guidance.batch_bank"),
    ({"wieghts": [1]}, "guidance_sweep"),
])
def test_bad_sweep_config_is_refused_naming_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        check_config(SMOKE | {"guidance_sweep": SWEEP | change})


def test_paper_sweep_samples_each_setting_once_with_the_validation_bank(tmp_path):
    """config/paper.yaml: 3 datasets x 2 samplers x (unguided + 6 weights x 3 bank sizes) = 114 sample and score
    jobs; a guided one draws its bank from the training split minus the validation slice."""
    target = "results/tables/guidance_sweep.csv"
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--directory",
                          str(tmp_path), target, "--configfile", str(REPO / "config" / "paper.yaml")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    stats = (out.stdout + out.stderr).split("Job stats:")[1]
    counts = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, re.M)}
    assert counts["guidance_sweep_sample"] == counts["guidance_sweep_score"] == 114
    assert counts["guidance_sweep_report"] == 1
    commands = [line for line in out.stdout.splitlines() if "gbm sample" in line and "w0.1_bank1024" in line]
    assert commands and all("--guidance-data results/data/" in c and ".npz:train-minus-validation-5000" in c
                            and "--guidance weight=0.1" in c and "--guidance normalise=true" in c for c in commands)
    assert any("--real-split validation-5000" in line for line in out.stdout.splitlines() if "gbm score" in line)
