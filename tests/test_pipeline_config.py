"""Which configuration a pipeline run uses: a config file alone (plus the schema's defaults), the default
file only when none is given, ``--config`` on top; its record in results/ and MLflow (real Snakemake)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gbm.pipeline.config import (
    ConfigError, RESOLVED_CONFIG_NAME, check_config, evaluations, load_schema, parse_overrides, resolve_config,
    with_defaults,
)

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
PAPER = REPO / "config" / "paper.yaml"
CPU_DEFAULT = REPO / "config" / "config.yaml"

ONE_METHOD = {
    "name": "one", "datasets": ["mnist"], "seeds": [0], "model": {"size": "tiny"}, "train": {"steps": 10},
    "methods": {"gbm": {"samplers": {"dale-langevin": {"steps": [4]}}}},
}


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(SNAKEMAKE + ["--directory", str(workdir), "--cores", "1", *args], capture_output=True,
                          text=True, cwd=workdir)


def dry_run(workdir: Path, *args: str) -> list[str]:
    """The shell commands ``snakemake -n -p`` plans in an empty working directory."""
    out = snakemake(workdir, "-n", "-p", *args)
    assert out.returncode == 0, out.stderr + out.stdout
    return [line for line in out.stdout.splitlines() if "gbm " in line or "python -m gbm" in line]


def planned_config(commands: list[str]) -> dict:
    """The configuration the dry run would record: the ``--json`` of its ``gbm write-config`` job."""
    (command,) = [c for c in commands if "gbm write-config" in c]
    words = shlex.split(command[command.index("gbm write-config"):])
    return json.loads(words[words.index("--json") + 1])


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("via", ["--configfile", "--profile"])
def test_a_config_with_one_method_and_one_sampler_plans_only_them(tmp_path, via):
    configfile = write_yaml(tmp_path / "one.yaml", ONE_METHOD)
    if via == "--configfile":
        commands = dry_run(tmp_path, "--configfile", str(configfile))
    else:
        (tmp_path / "profile").mkdir()
        write_yaml(tmp_path / "profile" / "config.yaml", {"configfile": [str(configfile)]})
        commands = dry_run(tmp_path, "--profile", str(tmp_path / "profile"))
    trains = [c for c in commands if "gbm train" in c]
    samples = [c for c in commands if "gbm sample" in c]
    assert len(trains) == 1 and "results/mnist/gbm/seed0/run" in trains[0]
    assert len(samples) == 1 and "--sampler dale-langevin --steps 4" in samples[0]
    assert not any("/vp/" in c or "fashion_mnist" in c or "sign-agnostic" in c for c in commands)
    assert planned_config(commands) == with_defaults(ONE_METHOD)


def without_cpu_shrunk_keys(config: dict) -> dict:
    """The paper config without the keys config/config.yaml sets for speed (bank size, threads)."""
    del config["evaluation"]["neighbours"]["training_images"], config["threads"]
    return config


def test_paper_config_dry_run_searches_the_whole_training_set(tmp_path):
    commands = dry_run(tmp_path, "--configfile", str(PAPER))
    neighbours = [c for c in commands if "gbm neighbours" in c]
    paper = with_defaults(yaml.safe_load(PAPER.read_text()))
    assert len(neighbours) == len({(e.dataset, e.method, e.sampler) for e in evaluations(paper)}) > 40
    assert not any("--data-limit" in c for c in neighbours)
    assert planned_config(commands) == with_defaults(yaml.safe_load(PAPER.read_text()))


def test_no_key_of_a_config_file_run_comes_from_the_cpu_default(tmp_path):
    raw = yaml.safe_load(PAPER.read_text())
    del raw["evaluation"]["neighbours"]["training_images"], raw["threads"]  # what config.yaml sets for speed
    cpu_default = yaml.safe_load(CPU_DEFAULT.read_text())
    assert cpu_default["evaluation"]["neighbours"]["training_images"] == 500 and cpu_default["threads"] == 1
    neighbours = "results/mnist/gbm/seed0/dale-langevin/steps1000/neighbours.npz"
    commands = dry_run(tmp_path, f"results/{RESOLVED_CONFIG_NAME}", neighbours, "--configfile",
                       str(write_yaml(tmp_path / "paper.yaml", raw)))
    resolved = planned_config(commands)
    assert resolved == with_defaults(raw)  # the file and the schema's defaults, nothing else
    assert resolved["evaluation"]["neighbours"]["training_images"] is None
    assert resolved["threads"] == load_schema()["properties"]["threads"]["default"]
    (command,) = [c for c in commands if "gbm neighbours" in c]
    assert "--data-limit" not in command


def test_config_overrides_apply_with_and_without_a_config_file(tmp_path):
    default_run = planned_config(dry_run(tmp_path, f"results/{RESOLVED_CONFIG_NAME}", "--config",
                                         "data_limit=123", "evaluation={n_samples: 37}"))
    cpu_default = yaml.safe_load(CPU_DEFAULT.read_text())
    cpu_default["data_limit"], cpu_default["evaluation"]["n_samples"] = 123, 37  # the rest of the section stays
    assert default_run == with_defaults(cpu_default)

    configfile = write_yaml(tmp_path / "one.yaml", ONE_METHOD)
    out = snakemake(tmp_path, f"results/{RESOLVED_CONFIG_NAME}", "--configfile", str(configfile),
                    "--config", "seeds=[3, 4]", "evaluation={n_samples: 37}")
    assert out.returncode == 0, out.stderr + out.stdout
    text = (tmp_path / "results" / RESOLVED_CONFIG_NAME).read_text()
    assert f"# Config file(s): {configfile}" in text and "seeds=[3, 4]" in text
    expected = with_defaults(dict(ONE_METHOD, seeds=[3, 4], evaluation={"n_samples": 37}))
    assert yaml.safe_load(text) == expected


def test_an_unknown_config_key_stops_snakemake_naming_it(tmp_path):
    out = snakemake(tmp_path, "-n", "--config", "evaluation={n_sampels: 37}")
    assert out.returncode != 0
    assert "config key 'evaluation.n_sampels': unknown key" in out.stderr + out.stdout


def test_the_default_file_applies_only_when_no_config_file_is_given(tmp_path):
    other = write_yaml(tmp_path / "default.yaml", dict(ONE_METHOD, threads=1, data_limit=500))
    given = write_yaml(tmp_path / "given.yaml", dict(ONE_METHOD, name="given"))
    assert resolve_config([], default=other)["data_limit"] == 500
    resolved = resolve_config([given], default=other)
    assert resolved == with_defaults(dict(ONE_METHOD, name="given"))
    assert resolved["threads"] == 2 and resolved["data_limit"] is None


def test_config_files_merge_in_order_and_overrides_go_on_top(tmp_path):
    first = write_yaml(tmp_path / "first.yaml", ONE_METHOD)
    second = write_yaml(tmp_path / "second.yaml", {"evaluation": {"n_samples": 50, "grid": 16}})
    overrides = parse_overrides(["evaluation={grid: 4}", "data_limit=100", "name=over"])
    resolved = resolve_config([first, second], overrides)
    assert resolved["evaluation"]["n_samples"] == 50 and resolved["evaluation"]["grid"] == 4
    assert resolved["data_limit"] == 100 and resolved["name"] == "over"


def test_every_key_without_a_schema_default_must_be_set_and_is_named(tmp_path):
    for section, key in (("train", "steps"), ("model", "size")):
        config = json.loads(json.dumps(ONE_METHOD))
        del config[section][key]
        with pytest.raises(ConfigError, match=f"config key '{section}.{key}': missing"):
            check_config(config)
    with pytest.raises(ConfigError, match="config key 'seeds': missing"):
        check_config({k: v for k, v in ONE_METHOD.items() if k != "seeds"})


def test_keys_the_cpu_default_shrinks_have_full_scale_schema_defaults():
    defaults = with_defaults(ONE_METHOD)
    assert defaults["data_limit"] is None  # every training image
    assert defaults["evaluation"]["neighbours"]["training_images"] is None  # the whole training set
    assert defaults["evaluation"]["n_samples"] == yaml.safe_load(PAPER.read_text())["evaluation"]["n_samples"]


def write_config(tmp_path: Path, config: dict) -> Path:
    from gbm.cli import main

    out = tmp_path / "results" / RESOLVED_CONFIG_NAME
    assert main(["write-config", "--json", json.dumps(config), "--configfile", "one.yaml", "--out", str(out)]) == 0
    return out


def test_resolved_config_is_rewritten_only_when_it_changes(tmp_path):
    out = write_config(tmp_path, with_defaults(ONE_METHOD))
    assert yaml.safe_load(out.read_text()) == with_defaults(ONE_METHOD)
    first = out.stat().st_mtime_ns
    write_config(tmp_path, with_defaults(ONE_METHOD))
    assert out.stat().st_mtime_ns == first
    write_config(tmp_path, with_defaults(dict(ONE_METHOD, seeds=[1])))
    assert yaml.safe_load(out.read_text())["seeds"] == [1]


def test_mlflow_training_record_carries_the_resolved_config(tmp_path):
    from gbm.tracking.mirror import training_record

    run = tmp_path / "results" / "mnist" / "gbm" / "seed0" / "run"
    run.mkdir(parents=True)
    (run / "train_metrics.json").write_text("{}")
    out = write_config(tmp_path, with_defaults(ONE_METHOD))
    record = training_record(run.parent, "one")
    assert out in record.artifacts
    digest = record.digest()
    write_config(tmp_path, with_defaults(dict(ONE_METHOD, seeds=[1])))
    assert training_record(run.parent, "one").digest() != digest  # a changed config is mirrored again


def test_the_schemas_choices_are_the_codes():
    """Every enum of the config schema that mirrors a list in the code equals it, so a choice the code adds
    or drops cannot pass (or fail) validation before any job starts while the job then refuses (or ignores) it."""
    from gbm.config import LR_SCHEDULES
    from gbm.data.sources import DATASETS
    from gbm.grids import GRIDS
    from gbm.guidance import KERNELS, SCHEDULES
    from gbm.speed import PRECISIONS

    whole = load_schema()
    schema = whole["properties"]
    train = schema["train"]["properties"]
    options = whole["$defs"]["options"]["properties"]
    assert set(schema["datasets"]["items"]["enum"]) == set(DATASETS)
    assert set(train["lr_schedule"]["enum"]) == set(LR_SCHEDULES)
    assert set(train["precision"]["enum"]) == set(PRECISIONS)
    assert set(options["grid"]["enum"]) == set(GRIDS)
    guidance = whole["$defs"]["sampler"]["properties"]["guidance"]["properties"]
    assert set(guidance["kernel"]["enum"]) == set(KERNELS)
    assert set(guidance["schedule"]["enum"]) == set(SCHEDULES)
