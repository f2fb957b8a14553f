"""Benchmark configuration: schema validation with messages that name the key, and the evaluation plan.

The schema (``workflow/schemas/config.schema.yaml``) checks types and ranges; ``check_config`` adds the
checks a schema cannot express (which samplers belong to which method, per-dataset options for datasets
that are not benchmarked). Both raise ``ConfigError`` naming the offending key, e.g.
``config key 'methods.vp.samplers.em.steps[0]': -5 is less than the minimum of 1``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A benchmark configuration that cannot run; the message names the key."""


def _key_path(path) -> str:
    key = ""
    for part in path:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    return key or "<top level>"


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(Path(path).read_text())


def validate_schema(config: dict, schema: dict | None = None) -> None:
    """Check ``config`` against the JSON schema; the first error names its key."""
    import jsonschema

    schema = load_schema() if schema is None else schema
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if not errors:
        return
    error = errors[0]
    if error.validator == "additionalProperties" and error.absolute_path is not None:
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        parent = list(error.absolute_path)
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        raise ConfigError(f"config key '{_key_path(parent + extra[:1])}': unknown key (allowed: {allowed})")
    raise ConfigError(f"config key '{_key_path(error.absolute_path)}': {error.message}")


def check_config(config: dict) -> None:
    """Schema validation plus the cross-field checks; raises ``ConfigError`` naming the key."""
    validate_schema(config)
    from gbm.methods import get_method, load_method_modules

    try:
        load_method_modules(config.get("method_modules") or [])
    except ValueError as error:
        raise ConfigError(f"config key 'method_modules': {error}") from None
    datasets = set(config["datasets"])
    for entry, spec in config["methods"].items():
        where = f"methods.{entry}.method" if "method" in spec else f"methods.{entry}"
        try:
            method = get_method(method_name(config, entry), field=where)
        except ValueError as error:
            raise ConfigError(f"config key '{where}': {str(error).partition(': ')[2]}") from None
        allowed = sorted(method.samplers)
        for label, sampler_spec in spec["samplers"].items():
            key = f"methods.{entry}.samplers.{label}"
            sampler = sampler_spec.get("sampler", label)
            if sampler not in allowed:
                where = f"{key}.sampler" if "sampler" in sampler_spec else key
                raise ConfigError(
                    f"config key '{where}': unknown sampler {sampler!r} for method {method.name!r} "
                    f"(allowed: {', '.join(allowed)})"
                )
            if "prior" in sampler_spec or "prior_options" in sampler_spec:
                field = f"config key '{key}.prior'"
                try:
                    method.get_prior(sampler_spec.get("prior"), field=field)
                except ValueError as error:
                    raise ConfigError(str(error)) from None
            for dataset in sampler_spec.get("dataset_options", {}):
                if dataset not in datasets:
                    raise ConfigError(
                        f"config key '{key}.dataset_options.{dataset}': dataset {dataset!r} is not in "
                        f"'datasets' ({', '.join(sorted(datasets))})"
                    )
    check_training_configs(with_defaults(config))


def with_defaults(config: dict) -> dict:
    """A copy of ``config`` with the schema's defaults filled in (what the rules read)."""
    config = copy.deepcopy(config)
    config.setdefault("data_dir", None)
    config.setdefault("method_modules", [])
    config.setdefault("threads", 2)
    config.setdefault("mem_mb", 8000)
    runtime = config.setdefault("runtime", {})
    for rule, minutes in (("train", 60), ("sample", 30), ("score", 30)):
        runtime.setdefault(rule, minutes)
    config.setdefault("data_limit", None)
    config.setdefault("model", {})
    evaluation = config.setdefault("evaluation", {})
    evaluation.setdefault("reference_split", "test")
    evaluation.setdefault("batch_size", 250)
    evaluation.setdefault("grid", 64)
    neighbours = evaluation.setdefault("neighbours", {})
    neighbours.setdefault("queries", 8)
    neighbours.setdefault("k", 5)
    neighbours.setdefault("training_images", 60000)
    figures = config.setdefault("figures", {})
    figures.setdefault("trajectory_snapshots", 8)
    figures.setdefault("histogram_times", [0.0, 0.05, 0.2, 0.5, 1.0])
    figures.setdefault("toy_paths", 64)
    for spec in config["methods"].values():
        spec.setdefault("sde", {})
        spec.setdefault("loss", {})
        spec.setdefault("train", {})
    return config


def load_config(path: str | Path) -> dict:
    """Read, validate and complete a benchmark configuration file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(config).__name__}")
    check_config(config)
    return with_defaults(config)


@dataclass(frozen=True)
class Evaluation:
    """One evaluated sampler: a trained model (dataset, method, seed) sampled at one step count."""

    dataset: str
    method: str
    seed: int
    sampler: str
    steps: int

    @property
    def run_dir(self) -> str:
        return f"results/{self.dataset}/{self.method}/seed{self.seed}"

    @property
    def directory(self) -> str:
        return f"{self.run_dir}/{self.sampler}/steps{self.steps}"


def method_name(config: dict, entry: str) -> str:
    """The registered method behind a ``methods`` entry (the entry's key unless ``method`` is given)."""
    return config["methods"][entry].get("method", entry)


def sampler_name(config: dict, method: str, label: str) -> str:
    """The sampling method behind a sampler label (the label itself unless ``sampler`` is given)."""
    return config["methods"][method]["samplers"][label].get("sampler", label)


def sampler_options(config: dict, dataset: str, method: str, label: str) -> dict[str, Any]:
    """Options for ``gbm sample``: the sampler's ``options`` overridden by its ``dataset_options``."""
    spec = config["methods"][method]["samplers"][label]
    options = dict(spec.get("options", {}))
    options.update(spec.get("dataset_options", {}).get(dataset, {}))
    return options


def sampler_prior(config: dict, method: str, label: str) -> tuple[str | None, dict[str, Any]]:
    """The prior of a sampler label (None: the method's default) and its options, for ``gbm sample --prior``."""
    spec = config["methods"][method]["samplers"][label]
    return spec.get("prior"), dict(spec.get("prior_options", {}))


def sampler_guidance(config: dict, method: str, label: str) -> dict[str, Any] | None:
    """Kernel discriminator guidance options of a sampler label (SPEC §7 reconstruction), or None."""
    return config["methods"][method]["samplers"][label].get("guidance")


def evaluations(config: dict) -> Iterator[Evaluation]:
    """Every (dataset, method, seed, sampler, steps) the benchmark evaluates, in a stable order."""
    for dataset in config["datasets"]:
        for method, spec in config["methods"].items():
            for seed in config["seeds"]:
                for sampler, sampler_spec in spec["samplers"].items():
                    for steps in sampler_spec["steps"]:
                        yield Evaluation(dataset, method, seed, sampler, steps)


def training_config(config: dict, dataset: str, method: str, seed: int) -> dict:
    """The ``gbm train`` configuration of one run: shared backbone and budget, the method's SDE and loss."""
    spec = config["methods"][method]
    return {
        "seed": seed,
        "data": {"path": f"results/data/{dataset}.npz", "split": "train", "limit": config["data_limit"]},
        "sde": {"name": method_name(config, method), **spec["sde"]},
        "model": dict(config["model"]),
        "loss": dict(spec["loss"]),
        "train": {**config["train"], **spec["train"]},
    }


def check_training_configs(config: dict) -> None:
    """Validate every method's training configuration with ``gbm train``'s own checks, naming the key."""
    from gbm.config import config_from_dict

    for method in config["methods"]:
        raw = training_config(config, config["datasets"][0], method, config["seeds"][0])
        try:
            config_from_dict(raw)
        except ValueError as error:
            key, _, message = str(error).partition(": ")
            raise ConfigError(f"config key '{key}': {message} (training configuration of method {method!r})") from None


def training_overrides(config: dict, dataset: str, method: str, seed: int) -> list[str]:
    """``KEY=VALUE`` overrides that make ``gbm train``'s config for one run (over an empty base file)."""
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            flat[prefix] = node

    walk("", training_config(config, dataset, method, seed))
    return [f"{key}={_format_value(value)}" for key, value in flat.items()]


def _format_value(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    return str(value)
