"""``gbm floor NAME-or-FILE --n N``: the real-vs-real FID/KID floor, a train subset against the test split.

Reference: the first N test images. Compared set: N training images drawn without replacement with a
fixed seed (``--seed``, default 0). Every model's score at the same N should be read against this number;
FID_inf (in the output) shows how much of it is small-N bias.

Also the pipeline's per-dataset features job: ``--save-reference`` writes the reference images' features
(read by every ``gbm score --real-features``), ``--bank B --save-bank`` the first B training images'
features (read by every ``gbm neighbours --data-features``), so each is extracted once per dataset. Each
extraction shows a progress bar on stderr (``--no-progress``: none); the bank's takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from gbm.commands.score import add_metric_arguments, emit, metric_options
from gbm.data import DATASETS, load_prepared
from gbm.metrics import ImageSet, score


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("floor", help="real-vs-real floor: train subset vs test at N images")
    parser.add_argument("dataset", help=f"prepared dataset file, or a name ({', '.join(DATASETS)}) in --data-dir")
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--data-dir", default="results/data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-reference", default=None, help="write the reference (test[:N]) features here (.npz)")
    parser.add_argument("--bank", type=_bank_size, default=None,
                        help="also extract the first BANK training images' features ('all': the whole training set)")
    parser.add_argument("--save-bank", default=None, help="where the --bank features go (.npz)")
    add_metric_arguments(parser)
    parser.set_defaults(func=run)


def _bank_size(text: str) -> int | str:
    """``--bank``: a number of training images, or ``all``."""
    return text if text == "all" else int(text)


def floor(path: Path, n: int, seed: int = 0, *, bank: int | None = None, save_bank: str | None = None,
          **options) -> dict:
    """Score N seeded training images against the first N test images of a prepared dataset; with ``bank``,
    also write the first ``bank`` training images' features to ``save_bank``."""
    prepared = load_prepared(path)
    train = prepared.images("train")
    if not 2 <= n <= min(len(train), len(prepared.images("test"))):
        raise ValueError(f"--n {n}: need 2 <= n <= {min(len(train), len(prepared.images('test')))} for {path}")
    if (bank is None) != (save_bank is None):
        raise ValueError("--bank and --save-bank: give both or neither")
    if bank == "all":
        bank = len(train)
    if bank is not None and not 1 <= bank:
        raise ValueError(f"--bank {bank}: must be a positive number of training images, or 'all'")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
    fake = ImageSet(train[chosen], f"{path}:train[seed {seed}, {n} images]")
    result = score(ImageSet(prepared.images("test"), f"{path}:test"), fake, n=n, **options)
    result["floor"] = {"dataset": prepared.meta.get("name"), "n": n, "seed": seed}
    if bank is not None:
        import time

        from gbm.metrics import extract_features
        from gbm.metrics.store import save_features

        began = time.perf_counter()
        images = ImageSet(train, f"{path}:train").first(min(bank, len(train)))
        library, mode = options.get("library", "torch-fidelity"), options.get("cleanfid_mode", "clean")
        features = extract_features(images.images, library, device=options.get("device", "auto"), cleanfid_mode=mode,
                                    what=images.description, progress=options.get("progress", False))
        save_features(save_bank, images, features, library, mode)
        result["timing"]["features_s"] += time.perf_counter() - began
        result["floor"]["bank"] = {"images": bank, "file": str(save_bank)}
    return result


def run(args: argparse.Namespace) -> int:
    path = Path(args.data_dir) / f"{args.dataset}.npz" if args.dataset in DATASETS else Path(args.dataset)
    emit(floor(path, args.n, args.seed, bank=args.bank, save_bank=args.save_bank,
               save_real_features=args.save_reference, **metric_options(args)), args.out)
    return 0
