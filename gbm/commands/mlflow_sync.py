"""``gbm mlflow-sync``: mirror ``results/`` into the MLflow store (idempotent; rebuilds a lost store)."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "mlflow-sync", help="mirror training runs and evaluations under results/ into MLflow",
        description="Mirror training runs and their evaluated samplers under RESULTS into one MLflow experiment. "
                    "Unchanged records are skipped, changed ones replaced, incomplete ones (a sync or job killed "
                    "half-way) completed; stored artifacts that are missing or differ from their files are written "
                    "again and stray files in a run's artifact folder removed, each listed under \"repaired\". "
                    "With no --run, runs whose files are gone are deleted. MLflow errors are reported, never "
                    "fatal (exit 0) unless --strict.",
    )
    parser.add_argument("results", nargs="?", default="results", help="results directory (default: results)")
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the benchmark config's name)")
    parser.add_argument("--run", action="append", default=None, metavar="SEED_DIR",
                        help="only this results/{dataset}/{method}/seed{seed} directory (repeatable)")
    parser.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI or "
                        "sqlite:///RESULTS/mlflow.db)")
    parser.add_argument("--out", default=None, help="write a JSON summary here (atomically)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a record could not be written")
    parser.set_defaults(func=run)


def run(args) -> int:
    from gbm.tracking.mirror import sync, tracking_uri
    from gbm.data.atomic import write_text_atomic

    results = Path(args.results)
    summary = sync(results, args.experiment, seed_dirs=args.run, uri=args.uri)
    report = dict(summary.as_dict(), experiment=args.experiment, uri=args.uri or tracking_uri(results),
                  runs=args.run or "all")
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        write_text_atomic(Path(args.out), text)
    print(text, end="")
    return 1 if args.strict and summary.failed else 0
