"""``gbm train CONFIG --out RUN_DIR`` (or ``--json TEXT`` for the configuration itself, as the pipeline passes it):
train a score model, resuming from RUN_DIR's latest checkpoint."""

from __future__ import annotations

import os
import signal
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a score model into a run directory (resumes if interrupted)",
        description="Train the model a YAML config file (or --json) describes into RUN_DIR: config.yaml, "
                    "environment.json, checkpoints/, model.pt (EMA weights), loss.csv, train_metrics.json. "
                    "Re-running the same command resumes from the latest checkpoint.",
    )
    parser.add_argument("config", nargs="?", help="YAML training config file (see config/train/)")
    parser.add_argument("--json", metavar="TEXT",
                        help="the training config itself as JSON, instead of a file (the pipeline's train rule "
                             "passes gbm.pipeline.config.training_config)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (YAML-parsed), e.g. --set train.steps=500; repeatable")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--tracking-uri", default=None,
                        help="log params, loss, learning rate and throughput to this MLflow store while training "
                             "(default: $MLFLOW_TRACKING_URI; none when unset)")
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment of the live run (default: $MLFLOW_EXPERIMENT_NAME, else Default)")
    parser.set_defaults(func=run)


def _interrupt_on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def config_from_args(args):
    """The validated training config: the YAML file or the ``--json`` text, then the ``--set`` overrides."""
    import json

    from gbm.config import apply_overrides, config_from_dict, load_config

    if (args.config is None) == (args.json is None):
        raise ValueError("config: give exactly one of a YAML config file or --json TEXT")
    if args.config is not None:
        return load_config(args.config, args.overrides)
    try:
        raw = json.loads(args.json)
    except json.JSONDecodeError as error:
        raise ValueError(f"--json: not JSON ({error})") from None
    return config_from_dict(apply_overrides(raw, args.overrides))


def run(args) -> int:
    from gbm.tracking.live import FAILED, FINISHED, KILLED, process_start_time, tracker_from_environment
    from gbm.training import TrainingDiverged, prepare, train

    started_at = process_start_time()
    config = config_from_args(args)
    setup = prepare(config, args.device)
    tracker = tracker_from_environment(args.tracking_uri, args.experiment, args.out, config.to_dict(), started_at)
    previous_handler = signal.signal(signal.SIGTERM, _interrupt_on_sigterm)  # a killed job ends as KILLED
    status = FAILED
    try:
        metrics = train(config, args.out, progress=not args.no_progress, setup=setup, observer=tracker)
        status = FINISHED
    except TrainingDiverged as error:
        print(f"gbm train: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        status = KILLED
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
        if tracker is not None:
            tracker.close(status)
    print(f"gbm train: {metrics['steps']} steps, final loss {metrics['final_loss']:.5g}, "
          f"model in {args.out}/model.pt", file=sys.stderr)
    if tracker is not None:
        _exit_now(0)
    return 0


def _exit_now(code: int) -> None:
    """End the process at once, so that the live run's end time is the job's: every file is written and
    closed by now, and tearing down torch and mlflow would add a second or more (seen on a loaded 2-core
    machine) to the job after its run ended."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
