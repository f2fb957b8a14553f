"""The pipeline's domain metrics (evaluation.domain): one classifier job per dataset whose file every score
and the floor read, its settings from the config; none of it when the domain metrics are off."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def dry_run_commands(tmp_path: Path, **evaluation) -> str:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["evaluation"] |= evaluation
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n", "-p", "--cores", "2",
                          "--directory", str(tmp_path), "--configfile", str(configfile)],
                         check=False, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout + out.stderr


def test_every_score_and_the_floor_read_the_one_classifier_of_their_dataset(tmp_path):
    text = dry_run_commands(tmp_path, domain={"epochs": 3, "training_images": 500, "seed": 2})
    classifier_jobs = re.findall(r"gbm classifier (\S+) --out (\S+) .*", text)
    assert classifier_jobs == [("results/data/mnist.npz", "results/mnist/classifier/classifier.pt")]
    assert "--seed 2 --epochs 3 --training-images 500" in text
    scores = re.findall(r"gbm score .*", text)
    floors = re.findall(r"gbm floor .*", text)
    assert len(scores) == 6 and len(floors) == 1
    assert all("--classifier results/mnist/classifier/classifier.pt" in line for line in scores + floors)


def test_no_classifier_job_or_option_when_the_domain_metrics_are_off(tmp_path):
    text = dry_run_commands(tmp_path, domain={"enabled": False})
    assert "gbm classifier" not in text and "--classifier" not in text
    assert len(re.findall(r"gbm score .*", text)) == 6
