"""Benchmark configuration: which file is the run's configuration, validation naming the key, the plan.

A run's configuration is the config file(s) given with ``--configfile`` (or a profile) alone, or
``config/config.yaml`` when none is given, then the ``--config KEY=VALUE`` overrides; it is completed only
by the schema's documented defaults (``resolve_config``), never by another file's keys.
The schema (``workflow/schemas/config.schema.yaml``) checks types and ranges; ``check_config`` adds the
checks a schema cannot express (which samplers belong to which method, per-dataset options for datasets
that are not benchmarked). Both raise ``ConfigError`` naming the offending key, e.g.
``config key 'methods.vp.samplers.em.steps[0]': -5 is less than the minimum of 1``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from gbm.pipeline.layout import Evaluation, data_file

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
#: The configuration used when no config file is given (the CPU-sized default benchmark).
DEFAULT_CONFIG_PATH = REPO_ROOT / "config" / "config.yaml"
#: Where every pipeline run records its resolved configuration, under ``results/``.
RESOLVED_CONFIG_NAME = "config.resolved.yaml"


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
    if error.validator == "required":
        missing = next(key for key in error.validator_value if key not in error.instance)
        raise ConfigError(f"config key '{_key_path(list(error.absolute_path) + [missing])}': missing; "
                          "this key has no default, so the config file must set it")
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
            _check_sampler_option_names(sampler_spec, method, sampler, key)
            _check_sampler_stability(config, entry, label, method, sampler, key)
    if "baseline" in config.get("comparisons", {}):  # the default baseline is optional: no VP, no comparisons
        check_baseline(with_defaults(config))
    check_training_configs(with_defaults(config))
    from gbm.reporting.guidance_sweep import check_sweep

    try:
        check_sweep(config)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def _check_sampler_option_names(spec: dict, method, sampler: str, key: str) -> None:
    """Every ``options`` (and ``dataset_options``) key is an option of the sampler (``Method.sampler_options``)."""
    known = method.sampler_options(sampler)
    given = [(f"{key}.options", spec.get("options", {}))]
    given += [(f"{key}.dataset_options.{d}", options) for d, options in spec.get("dataset_options", {}).items()]
    for where, options in given:
        for name in options:
            if name not in known:
                raise ConfigError(f"config key '{where}.{name}': not an option of sampler {sampler!r} of method "
                                  f"{method.name!r} (its options: {', '.join(sorted(known))})")


def _check_sampler_stability(config: dict, entry: str, label: str, method, sampler: str, key: str) -> None:
    """The method's own check of sampler options that cannot be stable (e.g. GBM's delta), before any job."""
    try:
        sde = method.make_sde(**config["methods"][entry].get("sde", {}))
    except (ValueError, TypeError):
        return  # the training-config check names the bad sde key
    for dataset in config["datasets"]:
        options = sampler_options(config, dataset, entry, label)
        for index, steps in enumerate(config["methods"][entry]["samplers"][label]["steps"]):
            try:
                method.check_sampler_options(sde, sampler, steps, options)
            except ValueError as error:
                raise ConfigError(f"config key '{key}' (dataset {dataset}, steps[{index}] = {steps}): {error}") from None


def has_baseline(config: dict) -> bool:
    """Whether the comparisons baseline (given, or the default VP Euler–Maruyama) is evaluated in ``config``."""
    baseline = config["comparisons"]["baseline"]
    return baseline["sampler"] in config["methods"].get(baseline["method"], {}).get("samplers", {})


def check_baseline(config: dict) -> None:
    """The comparisons baseline is an evaluated method and sampler label; ConfigError naming the key."""
    baseline = config["comparisons"]["baseline"]
    if baseline["method"] not in config["methods"]:
        raise ConfigError(f"config key 'comparisons.baseline.method': {baseline['method']!r} is not under 'methods' "
                          f"({', '.join(config['methods'])})")
    samplers = config["methods"][baseline["method"]]["samplers"]
    if baseline["sampler"] not in samplers:
        raise ConfigError(f"config key 'comparisons.baseline.sampler': {baseline['sampler']!r} is not a sampler of "
                          f"method {baseline['method']!r} ({', '.join(samplers)})")


def with_defaults(config: dict, schema: dict | None = None) -> dict:
    """A copy of ``config`` with the schema's documented defaults filled in (what the rules read)."""
    schema = load_schema() if schema is None else schema
    config = copy.deepcopy(config)
    _fill_defaults(config, schema, schema)
    return config


def _fill_defaults(node: Any, schema: dict, root: dict) -> None:
    """Set every absent key whose schema gives a ``default``, recursing into (defaulted) sections."""
    schema = _resolve_ref(schema, root)
    if not isinstance(node, dict):
        return
    properties = schema.get("properties", {})
    for key, sub in properties.items():
        sub = _resolve_ref(sub, root)
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        if key in node:
            _fill_defaults(node[key], sub, root)
    additional = schema.get("additionalProperties")
    if isinstance(additional, dict):
        for key, value in node.items():
            if key not in properties:
                _fill_defaults(value, additional, root)


def _resolve_ref(schema: dict, root: dict) -> dict:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    node = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return _resolve_ref(node, root)


def read_config_file(path: str | Path) -> dict:
    """The mapping of keys in one YAML config file (``1e-4`` reads as a number)."""
    from gbm.config import parse_yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    config = parse_yaml(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path}: expected a mapping of keys, got {type(config).__name__}")
    return config


def parse_overrides(items: Sequence[str]) -> dict:
    """``--config KEY=VALUE`` overrides as a mapping; each VALUE is YAML (``evaluation={n_samples: 50}``)."""
    from gbm.config import parse_yaml

    overrides: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config {item!r}: expected KEY=VALUE")
        _merge(overrides, {key: parse_yaml(text)})
    return overrides


def _merge(base: dict, update: dict) -> dict:
    """Merge ``update`` into ``base`` in place: mappings key by key, anything else replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)
    return base


def resolve_config(configfiles: Sequence[str | Path], overrides: dict | None = None,
                   default: str | Path = DEFAULT_CONFIG_PATH) -> dict:
    """The configuration of one run: the given config files alone (merged in order) or else ``default``,
    then ``overrides`` (``--config``), checked and completed only with the schema's defaults."""
    config: dict = {}
    for path in list(configfiles) or [default]:
        _merge(config, read_config_file(path))
    _merge(config, overrides or {})
    check_config(config)
    return with_defaults(config)


def resolved_config_text(config: dict, configfiles: Sequence[str | Path], overrides: Sequence[str]) -> str:
    """The YAML record of a run's configuration, headed by where it came from."""
    sources = ", ".join(str(p) for p in configfiles) or f"{DEFAULT_CONFIG_PATH.relative_to(REPO_ROOT)} (no --configfile)"
    header = [
        "# Resolved configuration of the last pipeline run (written by `gbm write-config`): exactly what ran.",
        f"# Config file(s): {sources}",
        f"# --config overrides: {' '.join(overrides) if overrides else 'none'}",
        "# Every other key: the documented default of workflow/schemas/config.schema.yaml.",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)


def load_config(path: str | Path) -> dict:
    """Read, validate and complete one benchmark configuration file (as ``--configfile PATH`` does)."""
    return resolve_config([path])


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


def noise_seed_start(seed: int, n_samples: int) -> int:
    """The first noise seed of training seed ``seed``'s evaluations (``gbm sample --seed-start``).

    Image i of every evaluation of a model trained with seed ``seed`` is drawn from noise seed
    ``seed * n_samples + i``: distinct training seeds sample disjoint noise sets, so the spread over seeds
    that the verdicts measure includes the samples' own variation (with one noise set for every seed, two
    seeds' networks drew nearly the same images; docs/protocol.md), while every method and sampler at one
    training seed shares that seed's set.
    """
    if seed < 0 or n_samples < 1:
        raise ValueError(f"noise_seed_start: need seed >= 0 and n_samples >= 1, got {seed}, {n_samples}")
    return seed * n_samples


def training_config(config: dict, dataset: str, method: str, seed: int) -> dict:
    """The ``gbm train`` configuration of one run: shared backbone and budget, the method's SDE and loss."""
    spec = config["methods"][method]
    return {
        "seed": seed,
        "data": {"path": data_file(dataset), "split": "train", "limit": config["data_limit"]},
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
        check_open_sections(config, method)


def check_open_sections(config: dict, entry: str) -> None:
    """Refuse ``sde`` and ``loss`` keys (open in the schema) that the entry's method does not take."""
    from gbm.methods import get_method

    spec = config["methods"][entry]
    method = get_method(method_name(config, entry))
    fitted = sorted(set(method.fitted_params) & set(spec["sde"]))
    if fitted:
        raise ConfigError(f"config key 'methods.{entry}.sde.{fitted[0]}': fitted from the training data by "
                          f"method {method.name!r}; do not set it")
    try:
        sde = method.make_sde(**spec["sde"])
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config key 'methods.{entry}.sde': {str(error).removeprefix('sde: ')}") from None
    try:
        method.check_loss_options(spec["loss"])
        method.make_loss(sde, **spec["loss"])  # the options' values too (e.g. loss.weighting)
    except ValueError as error:
        key, _, message = str(error).partition(": ")
        raise ConfigError(f"config key 'methods.{entry}.{key}': {message}") from None
