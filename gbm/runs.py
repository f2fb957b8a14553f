"""The training run directory: layout, atomic writes, checkpoints and the final ``model.pt``.

``RUN_DIR/config.yaml`` (resolved config), ``environment.json`` (versions, git revision, seed, device per
session), ``checkpoints/step_XXXXXXXX.pt`` (resumable), ``model.pt`` (EMA weights, SDE with its fitted
prior, backbone config, parameterisation), ``loss.csv`` (step,loss), ``train_metrics.json``.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from gbm.data.atomic import write_stream_atomic, write_text_atomic
from gbm.models import ScoreModel
from gbm.nets import build_backbone
from gbm.methods import make_sde
from gbm.sde import SDE

MODEL_FORMAT = "gbm-model/1"


class RunDir:
    """Paths inside one training run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.environment = self.root / "environment.json"
        self.checkpoints = self.root / "checkpoints"
        self.model = self.root / "model.pt"
        self.loss = self.root / "loss.csv"
        self.metrics = self.root / "train_metrics.json"

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:08d}.pt"

    def list_checkpoints(self) -> list[tuple[int, Path]]:
        """Checkpoints as ``(step, path)``, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for path in self.checkpoints.glob("step_*.pt"):
            try:
                found.append((int(path.stem.split("_")[1]), path))
            except ValueError:
                continue
        return sorted(found)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; otherwise the named device, checked to exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"--device: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available")
    return device


def atomic_torch_save(obj, path: Path) -> None:
    write_stream_atomic(path, lambda handle: torch.save(obj, handle))


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def git_revision() -> dict:
    """Git revision of the source tree this package runs from, and whether it has local changes."""
    root = Path(__file__).resolve().parent.parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()

    try:
        revision = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": revision or None, "dirty": dirty if revision else None}


def environment_record(device: torch.device) -> dict:
    """Versions, git revision, host and device for a run record."""
    import numpy

    import gbm

    record = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "gbm": gbm.__version__,
        "git": git_revision(),
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "argv": sys.argv,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        record["cuda"] = torch.version.cuda
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def sde_record(sde: SDE) -> dict:
    """``{"name", "params"}`` from which ``make_sde`` rebuilds ``sde`` exactly (fitted prior included)."""
    if not dataclasses.is_dataclass(sde):
        raise ValueError(f"sde: cannot record SDE {sde.name!r}: it is not a dataclass")
    params = {f.name: getattr(sde, f.name) for f in dataclasses.fields(sde) if f.init}
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    return {"name": sde.name, "params": params}


def sde_from_record(record: dict) -> SDE:
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in record["params"].items()}
    return make_sde(record["name"], **params)


def check_finite_weights(state_dict: dict, path: Path) -> None:
    """Refuse a model file with a NaN or infinite weight, naming the first such tensor."""
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"RUN_DIR: {str(path)!r} has non-finite weights: tensor {name!r} holds {bad} NaN or "
                             f"infinite value(s) of {tensor.numel()}; the model cannot be used")


def load_model(run_dir: str | Path, device: torch.device | str = "cpu") -> tuple[ScoreModel, dict]:
    """The EMA score model of a finished run and its ``model.pt`` record (without the weights)."""
    path = RunDir(run_dir).model
    if not path.is_file():
        raise FileNotFoundError(f"RUN_DIR: no model.pt in {str(run_dir)!r}; has `gbm train` finished there?")
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("format") != MODEL_FORMAT:
        raise ValueError(f"RUN_DIR: {str(path)!r} is not a {MODEL_FORMAT} file")
    sde = sde_from_record(record["sde"])
    backbone = build_backbone(record["backbone"], record["backbone_config"])
    state_dict = record.pop("state_dict")
    check_finite_weights(state_dict, path)
    backbone.load_state_dict(state_dict)
    model = ScoreModel(sde, backbone, record["parameterisation"]).to(device).eval()
    return model, record
