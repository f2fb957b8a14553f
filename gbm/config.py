"""Training configuration: frozen dataclasses built from validated YAML (STYLE: nanoGPT).

Every key is checked before any work starts: an unknown key, a wrong type or an out-of-range value
raises ``ValueError`` naming the key path (``train.steps``). The ``sde`` and ``loss`` sections are open
(their keys are the SDE's and the loss's own parameters) and are checked by building them.
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """Parse YAML text with ``_Loader``."""
    return yaml.load(text, Loader=_Loader)


@dataclass(frozen=True)
class DataConfig:
    """Either a prepared dataset (``path`` to the ``.npz``, ``split``) or a toy set (``toy``, ``n``)."""

    path: str | None = None
    split: str = "train"
    limit: int | None = None  # use only the first ``limit`` images (CPU-sized runs)
    toy: str | None = None
    n: int = 10000

    def __post_init__(self):
        if (self.path is None) == (self.toy is None):
            raise ValueError("data: give exactly one of data.path (a prepared .npz) or data.toy (e.g. two_spirals)")
        if self.split not in ("train", "test"):
            raise ValueError(f"data.split: must be 'train' or 'test', got {self.split!r}")
        _require(self.limit is None or self.limit > 0, "data.limit", "must be positive", self.limit)
        _require(self.n > 0, "data.n", "must be positive", self.n)


@dataclass(frozen=True)
class SDEConfig:
    """``name`` (a registered method; none given: ``gbm.methods.DEFAULT_METHOD``) plus the SDE's own parameters
    (e.g. ``sigma`` for GBM, ``beta_max`` for VP)."""

    name: str = field(default_factory=lambda: default_method())
    params: dict = field(default_factory=dict)


def default_method() -> str:
    """The method a training config without ``sde.name`` trains (the registry's default)."""
    from gbm.methods import DEFAULT_METHOD

    return DEFAULT_METHOD


@dataclass(frozen=True)
class ModelConfig:
    """Backbone and score parameterisation; unset U-Net/MLP fields come from the named ``size``."""

    backbone: str = "unet"
    size: str = "tiny"
    parameterisation: str = "eps"
    channels: int | None = None
    channel_mult: tuple[int, ...] | None = None
    num_res_blocks: int | None = None
    attention_levels: tuple[int, ...] | None = None
    dropout: float | None = None
    hidden: int | None = None
    num_layers: int | None = None

    def __post_init__(self):
        from gbm.models import PARAMETERISATIONS
        from gbm.nets import UNET_SIZES

        if self.backbone not in ("unet", "mlp"):
            raise ValueError(f"model.backbone: unknown backbone {self.backbone!r}; choose 'unet' or 'mlp'")
        sizes = sorted(UNET_SIZES) if self.backbone == "unet" else ["tiny"]
        if self.size not in sizes:
            raise ValueError(f"model.size: unknown size {self.size!r} for the {self.backbone!r} backbone; choose one of {sizes}")
        if self.parameterisation not in PARAMETERISATIONS:
            raise ValueError(
                f"model.parameterisation: unknown {self.parameterisation!r}; choose one of {list(PARAMETERISATIONS)}"
            )

    def backbone_overrides(self) -> dict:
        names = ("hidden", "num_layers") if self.backbone == "mlp" else (
            "channels", "channel_mult", "num_res_blocks", "attention_levels", "dropout")
        other = [f.name for f in fields(self) if f.name not in names and f.name not in ("backbone", "size", "parameterisation")
                 and getattr(self, f.name) is not None]
        if other:
            raise ValueError(f"model.{other[0]}: not a field of the {self.backbone!r} backbone")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 0  # linear learning-rate warm-up steps
    lr_schedule: str = "constant"  # after the warm-up: constant at lr, or cosine decay from lr to 0 at train.steps
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 100  # how often per-step losses are flushed to loss.csv and checked for finiteness
    precision: str = "fp32"  # the backbone's arithmetic: fp32, or bf16 autocast (CUDA only; gbm.speed)
    tf32: bool = False  # TF32 matmuls on CUDA; not applied on the CPU
    channels_last: bool = False  # NHWC memory format on CUDA; not applied on the CPU

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
            _require(getattr(self, name) > 0, f"train.{name}", "must be positive", getattr(self, name))
        _require(self.lr > 0, "train.lr", "must be positive", self.lr)
        _require(self.warmup >= 0, "train.warmup", "must be >= 0", self.warmup)
        _require(self.warmup <= self.steps, "train.warmup", f"is longer than the schedule (train.steps = {self.steps}): "
                 "training would end before the learning rate reaches train.lr", self.warmup)
        _require(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {list(LR_SCHEDULES)}",
                 self.lr_schedule)
        _require(self.lr_schedule == "constant" or self.warmup < self.steps, "train.warmup",
                 f"leaves no step for the {self.lr_schedule} decay (train.steps = {self.steps})", self.warmup)
        _require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables)", self.grad_clip)
        _require(0 <= self.ema_decay < 1, "train.ema_decay", "must be in [0, 1)", self.ema_decay)
        from gbm.speed import check_precision

        check_precision(self.precision, "train.precision")


# Keys that may change between a run and its resumption (they do not change the trajectory). train.steps only
# with the constant schedule: a cosine decay ends at train.steps, so its every step's learning rate depends on it.
RESUMABLE_KEYS = ("train.steps", "train.checkpoint_every", "train.keep_checkpoints", "train.log_every")


def resumable_keys(train: "TrainConfig") -> tuple[str, ...]:
    """The keys that may change when a run of ``train``'s schedule is resumed."""
    return RESUMABLE_KEYS if train.lr_schedule == "constant" else tuple(k for k in RESUMABLE_KEYS if k != "train.steps")


@dataclass(frozen=True)
class Config:
    data: DataConfig
    sde: SDEConfig = field(default_factory=SDEConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    def to_dict(self) -> dict:
        """The resolved configuration as plain YAML-able data (the inverse of ``config_from_dict``)."""
        out = asdict(self)
        out["sde"] = {"name": self.sde.name, **self.sde.params}
        out["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in out["model"].items() if v is not None}
        return out


def _require(ok: bool, key: str, what: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{key}: {what}, got {value!r}")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, naming ``key``; lists become tuples."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is not bool and isinstance(value, bool)):
            raise ValueError(f"{key}: expected {annotation.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")


def _build(cls: type, raw: Any, prefix: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{prefix}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ValueError(f"{prefix}.{key}: unknown config key; known keys of {prefix}: {sorted(known)}")
    return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in raw.items()})


def config_from_dict(raw: dict) -> Config:
    """Validate a raw mapping (parsed YAML) into a ``Config``, naming the first bad key."""
    if not isinstance(raw, dict):
        raise ValueError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    sections = {f.name for f in fields(Config)}
    for key in raw:
        if key not in sections:
            raise ValueError(f"{key}: unknown config key; known top-level keys: {sorted(sections)}")
    if "data" not in raw:
        raise ValueError("data: missing; give data.path (a prepared .npz) or data.toy")
    sde_raw = dict(raw.get("sde") or {})
    sde_name = _coerce(sde_raw.pop("name") if "name" in sde_raw else default_method(), str, "sde.name")
    loss = _coerce(raw.get("loss") or {}, dict, "loss")
    return Config(
        data=_build(DataConfig, raw["data"], "data"),
        sde=SDEConfig(name=sde_name, params=sde_raw),
        model=_build(ModelConfig, raw.get("model"), "model"),
        loss=loss,
        train=_build(TrainConfig, raw.get("train"), "train"),
        seed=_coerce(raw.get("seed", 0), int, "seed"),
    )


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping."""
    raw = parse_yaml(yaml.safe_dump(raw)) or {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key.path=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {path}: {'.'.join(keys[:depth + 1])} is not a section")
            node = child
        node[keys[-1]] = parse_yaml(text)
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``--set`` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config: no such file {str(path)!r}")
    raw = parse_yaml(path.read_text()) or {}
    return config_from_dict(apply_overrides(raw, list(overrides)))


def diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Key paths where two nested mappings differ."""
    keys = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += diff_keys(va, vb, f"{path}.")
        elif va != vb:
            keys.append(path)
    return keys
