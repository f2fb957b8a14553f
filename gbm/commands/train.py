"""``gbm train CONFIG --out RUN_DIR``: train a score model, resuming from RUN_DIR's latest checkpoint."""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train a score model into a run directory (resumes if interrupted)",
        description="Train the model a YAML config describes into RUN_DIR: config.yaml, environment.json, "
                    "checkpoints/, model.pt (EMA weights), loss.csv, train_metrics.json. Re-running the same "
                    "command resumes from the latest checkpoint.",
    )
    parser.add_argument("config", help="YAML training config (see config/train/)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a config value (YAML-parsed), e.g. --set train.steps=500; repeatable")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gbm.config import load_config
    from gbm.training import TrainingDiverged, prepare, train

    config = load_config(args.config, args.overrides)
    setup = prepare(config, args.device)
    try:
        metrics = train(config, args.out, progress=not args.no_progress, setup=setup)
    except TrainingDiverged as error:
        print(f"gbm train: error: {error}", file=sys.stderr)
        return 1
    print(f"gbm train: {metrics['steps']} steps, final loss {metrics['final_loss']:.5g}, "
          f"model in {args.out}/model.pt", file=sys.stderr)
    return 0
