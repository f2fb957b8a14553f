"""``gbm classifier NAME-or-FILE --out FILE``: the dataset's classifier for the domain metrics (issue 24).

Trains a small CNN on the prepared dataset's training split (``gbm.metrics.domain``), deterministically, or
reuses a stored one with the same content key (data, settings, code version): at ``--out`` first, then in the
user cache. Prints its record as JSON (key, test accuracy, training time, how it was obtained); ``--record``
also writes it to a file. ``gbm score --classifier FILE`` and ``gbm floor --classifier FILE`` read it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gbm.data import DATASETS
from gbm.data.atomic import write_text_atomic
from gbm.metrics.domain import ClassifierSettings, classifier_for

DEFAULTS = ClassifierSettings()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("classifier", help="train (or reuse) a dataset's classifier for the domain metrics")
    parser.add_argument("dataset", help=f"prepared dataset file, or a name ({', '.join(DATASETS)}) in --data-dir")
    parser.add_argument("--data-dir", default="results/data")
    parser.add_argument("--out", default=None, help="where the classifier goes (.pt); reused when its key matches")
    parser.add_argument("--record", default=None, help="also write the printed record (JSON) here")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed)
    parser.add_argument("--epochs", type=int, default=DEFAULTS.epochs)
    parser.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate)
    parser.add_argument("--width", type=int, default=DEFAULTS.width, help="channels of the first convolution")
    parser.add_argument("--feature-dim", type=int, default=DEFAULTS.feature_dim, help="width of the feature layer")
    parser.add_argument("--training-images", type=int, default=DEFAULTS.training_images,
                        help="train on the first N training images only (default: all)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the user cache")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = Path(args.data_dir) / f"{args.dataset}.npz" if args.dataset in DATASETS else Path(args.dataset)
    settings = ClassifierSettings(seed=args.seed, epochs=args.epochs, batch_size=args.batch_size,
                                  learning_rate=args.learning_rate, width=args.width, feature_dim=args.feature_dim,
                                  training_images=args.training_images)
    classifier, state = classifier_for(path, settings, out=args.out, cache=not args.no_cache,
                                       progress=not args.no_progress)
    record = classifier.description() | {"state": state, "data": str(path),
                                         "training_images": classifier.record["training_images"],
                                         "collapse_calibration": classifier.record["collapse_calibration"]}
    text = json.dumps(record, indent=2, sort_keys=True)
    print(text)
    print(f"gbm classifier: {record['dataset']} test accuracy {100 * record['test_accuracy']:.2f} % ({state})",
          file=sys.stderr)
    if args.record:
        write_text_atomic(args.record, text + "\n")
    return 0
