"""Training loop: score model + loss + Adam with warm-up, gradient clipping, EMA, resumable checkpoints.

``prepare`` validates everything (SDE, loss options, data, image shape, positivity for GBM) and builds the
pieces before any file is written; ``train`` runs the loop in a run directory (``gbm.runs``). Resuming from
the latest checkpoint restores model, EMA, optimizer, the loss-noise generator and the global RNG; the
data order is a pure function of (seed, step), so an interrupted and resumed run ends with weights
bitwise equal to an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from gbm.config import Config, diff_keys, resumable_keys
from gbm.data.atomic import write_text_atomic
from gbm.data.toy import two_spirals
from gbm.ema import EMA
from gbm.methods import Method, get_method
from gbm.models import ScoreModel, state_shape
from gbm.nets import MLP, MLPConfig, UNet, backbone_record, count_parameters, unet_config
from gbm.runs import (
    MODEL_FORMAT,
    RunDir,
    atomic_torch_save,
    environment_record,
    resolve_device,
    sde_record,
    write_json,
)
from gbm.losses import describe_loss
from gbm.sde import SDE
from gbm.speed import Speed, apply_to_model, resolve, tf32_matmuls

TOY_DATASETS = {"two_spirals": two_spirals}


class TrainingDiverged(RuntimeError):
    """The loss stopped being finite; no checkpoint was written from the affected weights."""


class TrainingData:
    """Training set held on the device (uint8 images or float toy points); batches in a seeded order.

    The order of epoch e is ``randperm(N)`` from a generator seeded by ``(seed, e)``, so the batch of
    any step is known without replaying earlier steps.
    """

    def __init__(self, values: torch.Tensor, to_data_space: Callable | None, seed: int, device: torch.device):
        self.values = values.to(device)
        self.to_data_space = to_data_space
        self.seed = seed
        self._epoch, self._order = -1, None

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[1:])

    def convert(self, values: torch.Tensor) -> torch.Tensor:
        return values.float() if self.to_data_space is None else self.to_data_space(values)

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """The batch for 0-based ``step`` (drop-last epochs)."""
        per_epoch = len(self) // batch_size
        epoch, position = divmod(step, per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(len(self), generator=generator).to(self.values.device)
            self._epoch = epoch
        return self.convert(self.values[self._order[position * batch_size:(position + 1) * batch_size]])


@dataclass
class TrainingSetup:
    """Everything a run needs, built and validated before any work starts."""

    config: Config
    device: torch.device
    sde: SDE
    backbone: nn.Module
    model: ScoreModel
    loss_fn: Callable
    data: TrainingData
    data_record: dict
    priors: dict  # fitted statistics of the method's named priors (``Method.fit_priors``), stored in model.pt
    fit_s: float = 0.0  # seconds spent fitting the method's data-dependent parameters (SDE statistics, priors)
    speed: Speed = Speed()  # the speed switches applied on this device (gbm.speed)


def _load_data(config: Config, method: Method) -> tuple[torch.Tensor, torch.Tensor | None, Callable | None, dict]:
    data = config.data
    if data.toy is not None:
        if data.toy not in TOY_DATASETS:
            raise ValueError(f"data.toy: unknown toy dataset {data.toy!r}; choose one of {sorted(TOY_DATASETS)}")
        values = TOY_DATASETS[data.toy](data.n, torch.Generator().manual_seed(config.seed))
        return values, None, None, {"toy": data.toy, "n": data.n, "space": "toy"}
    from gbm.data import load_prepared

    prepared = load_prepared(data.path)
    images = torch.from_numpy(np.ascontiguousarray(prepared.images(data.split)))
    labels = torch.from_numpy(prepared.labels(data.split))
    if data.limit is not None:
        images, labels = images[: data.limit], labels[: data.limit]
    record = {"path": str(data.path), "split": data.split, "limit": data.limit, "space": method.data_space,
              "dataset": prepared.meta.get("name"), "meta": prepared.meta}
    return images, labels, method.to_data, record


def _build_backbone(config: Config, sde: SDE, shape: tuple[int, ...]) -> nn.Module:
    model = config.model
    overrides = model.backbone_overrides()
    if model.backbone == "mlp":
        if len(shape) != 1:
            raise ValueError(f"model.backbone: 'mlp' takes vectors, the data has shape {shape}; use 'unet'")
        net_config = MLPConfig(dim=shape[0], out_dim=shape[0], **overrides)
        net_config.check_data_shape(shape)
        return MLP(net_config)
    if len(shape) != 3:
        raise ValueError(f"model.backbone: 'unet' takes images (C, H, W), the data has shape {shape}; use 'mlp'")
    in_ch, out_ch = state_shape(sde, shape)[0], shape[0]
    net_config = unet_config(model.size, in_channels=in_ch, out_channels=out_ch, **overrides)
    net_config.check_image_shape((in_ch, *shape[1:]))
    return UNet(net_config)


def prepare(config: Config, device: str | torch.device = "auto") -> TrainingSetup:
    """Validate the config against the data and build SDE, network, loss and data; writes nothing."""
    device = resolve_device(device) if isinstance(device, str) else device
    method = get_method(config.sde.name)
    params = config.sde.params
    fixed = sorted(set(method.fitted_params) & set(params))
    if fixed:
        raise ValueError(f"sde.{fixed[0]}: fitted from the training data by method {method.name!r}; do not set it")
    try:
        sde = method.make_sde(**params)
    except TypeError as error:
        raise ValueError(f"sde: bad parameter for {config.sde.name!r}: {error}") from None
    method.make_loss(sde, **config.loss)  # checks the loss options before the data is read

    values, labels, to_data_space, data_record = _load_data(config, method)
    full = values.float() if to_data_space is None else to_data_space(values)
    method.check_data(full, "data")
    fit_began = time.perf_counter()
    sde = method.fit(sde, full)
    priors = method.fit_priors(sde, full, labels, data_record.get("dataset"))
    fit_s = time.perf_counter() - fit_began
    loss_fn = method.make_loss(sde, **config.loss)
    del full
    if len(values) < config.train.batch_size:
        raise ValueError(f"train.batch_size: {config.train.batch_size} exceeds the {len(values)} training examples")

    torch.manual_seed(config.seed)
    backbone = _build_backbone(config, sde, tuple(values.shape[1:])).to(device)
    model = ScoreModel(sde, backbone, config.model.parameterisation)
    speed = resolve(requested_speed(config), device, ("train.precision", "train.tf32", "train.channels_last"))
    apply_to_model(model, speed)
    data = TrainingData(values, to_data_space, config.seed, device)
    data_record |= {"shape": list(data.shape), "n_train": len(data)}
    return TrainingSetup(config, device, sde, backbone, model, loss_fn, data, data_record, priors, fit_s, speed)


def requested_speed(config: Config) -> Speed:
    """The speed switches the config asks for (``train.precision``, ``train.tf32``, ``train.channels_last``)."""
    return Speed(config.train.precision, config.train.tf32, config.train.channels_last)


def model_record(setup: TrainingSetup, ema: EMA, step: int) -> dict:
    """The ``model.pt`` content: EMA weights and everything needed to rebuild the score model."""
    kind, net_config = backbone_record(setup.backbone)
    return {
        "format": MODEL_FORMAT,
        "step": step,
        "sde": sde_record(setup.sde),
        "sde_description": setup.sde.describe(),
        "backbone": kind,
        "backbone_config": {k: list(v) if isinstance(v, tuple) else v for k, v in net_config.items()},
        "parameterisation": setup.model.parameterisation,
        "loss": describe_loss(setup.loss_fn),
        "data": setup.data_record,
        "priors": setup.priors,
        "config": setup.config.to_dict(),
        "speed": setup.speed.record(requested_speed(setup.config)),
        "state_dict": {k: v.detach().cpu() for k, v in ema.shadow.items()},
    }


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


STEP_LOG_NAME = "train_log.csv"  # in a run directory: step, learning_rate, images_per_s of each logged step


def _complete_rows(path: Path, columns: tuple[str, ...], keep_until: int) -> list[dict]:
    """The rows of ``path`` up to step ``keep_until`` that a killed job wrote whole, in increasing step order."""
    rows: list[dict] = []
    if keep_until <= 0 or not path.is_file():
        return rows
    with open(path) as handle:
        for row in csv.DictReader(handle):
            if any(not row.get(c) for c in columns):
                continue  # a row cut short by a kill
            try:
                step = int(row["step"])
            except ValueError:
                continue
            if step <= keep_until and (not rows or step > int(rows[-1]["step"])):
                rows.append(row)
    return rows


def _restart_csv(path: Path, columns: tuple[str, ...], keep_until: int) -> list[dict]:
    """Rewrite ``path`` with its whole rows of steps ``<= keep_until`` (those a checkpoint covers); return them."""
    rows = _complete_rows(path, columns, keep_until)
    text = io.StringIO()
    text.write(",".join(columns) + "\n")
    for row in rows:
        text.write(",".join(row[c] for c in columns) + "\n")
    write_text_atomic(path, text.getvalue())
    return rows


class _LossLog:
    """Per-step losses kept on the device and flushed to ``loss.csv``; the flush checks finiteness.

    Beside it, ``train_log.csv`` holds the other metrics of each flushed step (learning rate, throughput):
    with ``loss.csv`` it is the whole local record a resumed job and ``gbm mlflow-sync`` fill MLflow from.
    """

    COLUMNS = ("step", "loss")
    STEP_COLUMNS = ("step", "learning_rate", "images_per_s")

    def __init__(self, path: Path):
        self.path, self.steps_path, self.pending, self.recent = path, path.with_name(STEP_LOG_NAME), [], []

    def start(self, keep_until: int) -> None:
        """Keep the rows of steps ``<= keep_until`` (those a checkpoint covers); start the files if absent."""
        rows = _restart_csv(self.path, self.COLUMNS, keep_until)
        _restart_csv(self.steps_path, self.STEP_COLUMNS, keep_until)
        self.recent = [float(r["loss"]) for r in rows[-100:]]

    def add(self, step: int, loss: torch.Tensor) -> None:
        self.pending.append((step, loss.detach()))

    def flush(self, learning_rate: Callable[[int], float], throughput: Callable[[int], float]) -> tuple[list, float]:
        """Write pending rows; return them as ``(step, loss)`` with the throughput ``throughput(rows)`` measured
        once their losses reached the host. Raise ``TrainingDiverged`` at the first non-finite loss."""
        if not self.pending:
            return [], 0.0
        steps = [s for s, _ in self.pending]
        values = torch.stack([v for _, v in self.pending]).float().cpu().tolist()
        images_per_s = throughput(len(steps))
        self.pending = []
        with open(self.steps_path, "a") as handle:
            handle.write("".join(f"{step},{learning_rate(step)!r},{images_per_s!r}\n" for step in steps))
        with open(self.path, "a") as handle:
            for step, value in zip(steps, values):
                handle.write(f"{step},{value!r}\n")
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"loss became non-finite ({value}) at step {step}; no checkpoint was written from these "
                        "weights. Lower train.lr, raise train.warmup or set train.grad_clip"
                    )
        self.recent = (self.recent + values)[-100:]
        return list(zip(steps, values)), images_per_s


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _check_resumable(run: RunDir, config: Config) -> None:
    with open(run.config) as handle:
        previous = yaml.safe_load(handle)
    for key, default in (("precision", "fp32"), ("tf32", False), ("channels_last", False), ("lr_schedule", "constant")):
        previous.setdefault("train", {}).setdefault(key, default)  # a run from before these switches
    changed = [k for k in diff_keys(previous, config.to_dict()) if k not in resumable_keys(config.train)]
    if changed:
        raise ValueError(
            f"{changed[0]}: differs from the run being resumed in {str(run.root)!r} "
            f"(changed: {changed}); use a new --out directory"
        )


def learning_rate(tc, step: int) -> float:
    """The learning rate of 1-based ``step``: linear warm-up over ``train.warmup`` steps to ``train.lr``, then
    ``train.lr`` (``lr_schedule: constant``) or lr (1 + cos(pi (step - warmup) / (steps - warmup))) / 2, which
    reaches 0 at the last step (``cosine``, SGDR's annealing without restarts)."""
    if step <= tc.warmup:
        return tc.lr * min(1.0, step / tc.warmup)  # this expression, bit for bit, since before the schedules
    if tc.lr_schedule == "constant":
        return tc.lr
    progress = (step - tc.warmup) / (tc.steps - tc.warmup)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(config: Config, run_dir: str | Path, device: str | torch.device = "auto", progress: bool = True,
          setup: TrainingSetup | None = None, observer: Callable | None = None) -> dict:
    """Train in ``run_dir``, resuming from its latest checkpoint; returns the training metrics.

    ``observer(step, loss, learning_rate, images_per_s)``, when given, is called for every step once its
    loss is written to ``loss.csv`` and its learning rate and throughput since the previous write to
    ``train_log.csv`` (every ``train.log_every`` steps): whatever the observer was given is on disk first,
    so a killed job loses no metric point. It must return quickly (``gbm.tracking.live`` only queues).
    """
    setup = setup or prepare(config, device)
    device, tc = setup.device, config.train
    run = RunDir(run_dir)
    checkpoints = run.list_checkpoints()
    start = 0
    if checkpoints:
        _check_resumable(run, config)
        start = checkpoints[-1][0]
        if start > tc.steps:
            raise ValueError(f"train.steps: {tc.steps} is below the {start} steps already done in {str(run.root)!r}")
        if start == tc.steps and run.model.is_file() and run.metrics.is_file():
            return json.loads(run.metrics.read_text())

    params = list(setup.backbone.parameters())
    optimizer = torch.optim.Adam(params, lr=tc.lr)
    ema = EMA(setup.backbone, tc.ema_decay)
    noise = torch.Generator().manual_seed(config.seed + 1)
    wall_before = 0.0
    if checkpoints:
        state = torch.load(checkpoints[-1][1], map_location=device, weights_only=True)
        setup.backbone.load_state_dict(state["backbone"])
        optimizer.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        noise.set_state(state["rng"]["noise"])
        _set_rng_state(state["rng"]["global"], device)
        wall_before = state["wall_time_s"]

    run.root.mkdir(parents=True, exist_ok=True)
    for stray in [*run.root.glob(".tmp-*"), *run.checkpoints.glob(".tmp-*")]:
        stray.unlink(missing_ok=True)  # a killed job's unfinished atomic writes (gbm.data.atomic)
    write_text_atomic(run.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
    environment = json.loads(run.environment.read_text()) if start and run.environment.is_file() else {}
    sessions = environment.get("sessions", []) + [environment_record(device) | {"resumed_from_step": start}]
    write_json(run.environment, {"seed": config.seed, "device": str(device), "sessions": sessions})
    log = _LossLog(run.loss)
    log.start(start)

    def save_checkpoint(step: int, wall: float) -> None:
        if not (_all_finite(params) and _all_finite(ema.shadow.values())):
            raise TrainingDiverged(f"weights became non-finite by step {step}; no checkpoint was written")
        atomic_torch_save(
            {
                "step": step,
                "backbone": setup.backbone.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.state_dict(),
                "rng": {"noise": noise.get_state(), "global": _rng_state(device)},
                "wall_time_s": wall,
                "sde": sde_record(setup.sde),
            },
            run.checkpoint(step),
        )
        for _, old in run.list_checkpoints()[: -tc.keep_checkpoints]:
            old.unlink(missing_ok=True)

    setup.backbone.train()
    began = time.perf_counter()
    bar = tqdm(total=tc.steps, initial=start, desc=f"train {config.sde.name}", unit="step", file=sys.stderr,
               disable=not progress, mininterval=1.0, dynamic_ncols=True)
    window_began = began

    def throughput(rows: int) -> float:
        """Images per second since the previous flush."""
        nonlocal window_began
        now = time.perf_counter()
        rate, window_began = rows * tc.batch_size / (now - window_began), now
        return rate

    try:
        with tf32_matmuls(setup.speed):
            for step in range(start + 1, tc.steps + 1):
                if tc.warmup or tc.lr_schedule != "constant":
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate(tc, step)
                x0 = setup.data.batch(step - 1, tc.batch_size)
                loss = setup.loss_fn(setup.model, x0, generator=noise)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip > 0:
                    nn.utils.clip_grad_norm_(params, tc.grad_clip, foreach=True)
                optimizer.step()
                ema.update(setup.backbone)
                log.add(step, loss)
                bar.update(1)
                checkpoint_now = step % tc.checkpoint_every == 0 or step == tc.steps
                if checkpoint_now or step % tc.log_every == 0:
                    rows, rate = log.flush(lambda s: learning_rate(tc, s), throughput)
                    bar.set_postfix(loss=f"{rows[-1][1]:.4g}", refresh=False)
                    if observer is not None:
                        for row_step, value in rows:
                            observer(row_step, value, learning_rate(tc, row_step), rate)
                if checkpoint_now:
                    save_checkpoint(step, wall_before + time.perf_counter() - began)
    except TrainingDiverged as error:  # stopped at the first non-finite loss or weights
        bar.close()
        raise TrainingDiverged(f"{error}. {_kept_checkpoint(run, tc)}") from None
    bar.close()
    session = time.perf_counter() - began

    done = tc.steps - start
    atomic_torch_save(model_record(setup, ema, tc.steps), run.model)
    metrics = {
        "steps": tc.steps,
        "final_loss": float(np.mean(log.recent)) if log.recent else None,
        "final_loss_window": len(log.recent),
        "last_loss": log.recent[-1] if log.recent else None,
        "wall_time_s": wall_before + session,
        "session_wall_time_s": session,
        "fit_s": setup.fit_s,  # this session's fit of the SDE statistics and priors, before the loop
        "session_steps": done,
        "images_per_s": done * tc.batch_size / session if done and session > 0 else None,
        "resumed_from_step": start,
        "params": count_parameters(setup.backbone),
        "backbone": backbone_record(setup.backbone)[0],
        "backbone_config": asdict(setup.backbone.config),
        "parameterisation": setup.model.parameterisation,
        "sde": setup.sde.describe(),
        "loss": type(setup.loss_fn).__name__,
        "loss_options": describe_loss(setup.loss_fn),
        "ema_decay": tc.ema_decay,
        "seed": config.seed,
        "device": str(device),
        "speed": setup.speed.record(requested_speed(config)),
    }
    write_json(run.metrics, metrics)
    return metrics


def _kept_checkpoint(run: RunDir, tc) -> str:
    """What a stopped run keeps, for its error message: the latest checkpoint (all written from finite weights)."""
    checkpoints = run.list_checkpoints()
    if not checkpoints:
        return f"No checkpoint was written yet (the first is due at step {tc.checkpoint_every})"
    step, path = checkpoints[-1]
    return f"The last checkpoint, of step {step}, is kept: {path}"
