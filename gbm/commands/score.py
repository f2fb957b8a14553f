"""``gbm score --real A --fake B [--n N] [--classifier FILE]``: FID, KID, precision/recall as JSON (SPEC §8);
with ``--classifier`` (``gbm classifier``) also the domain metrics and the collapse counters (issue 24)."""

from __future__ import annotations

import argparse
import json

from gbm.data.atomic import write_bytes_atomic
from gbm.metrics import LIBRARIES, score
from gbm.metrics.features import CLEANFID_MODES


def add_metric_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--library", choices=LIBRARIES, default="torch-fidelity")
    parser.add_argument("--cleanfid-mode", choices=CLEANFID_MODES, default="clean")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="shrinks to the smaller set when needed")
    parser.add_argument("--interval-draws", type=int, default=100,
                        help="random halves of the generated features whose spread gives fid_ci/kid_ci "
                             "(0: no intervals, no fid_inf)")
    parser.add_argument("--interval-level", type=float, default=0.95, help="confidence level of fid_ci/kid_ci")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache", action="store_true", help="do not use or write cached reference features")
    parser.add_argument("--no-sid", action="store_true", help="skip the signed inception distance (gbm.metrics.sid)")
    parser.add_argument("--classifier", default=None,
                        help="the dataset's classifier (`gbm classifier`): adds the 'domain' block (FD, KID, intervals, "
                             "class balance, confident share in its features) and the 'collapse' block")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar for the Inception features")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("score", help="FID/KID/precision/recall of generated images against a reference")
    parser.add_argument("--real", required=True, help="prepared dataset FILE.npz:test, sample .npz, or image folder")
    parser.add_argument("--fake", required=True, help="sample .npz, prepared dataset FILE.npz:SPLIT, or image folder")
    parser.add_argument("--real-split", default=None,
                        help="split of a prepared --real file: train, test, validation-N (the last N training "
                             "images) or train-minus-validation-N")
    parser.add_argument("--n", type=int, default=None, help="use the first N images of each set")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="score a sample file that records non-finite images (gbm sample --allow-nonfinite); "
                             "refused by default")
    parser.add_argument("--real-features", default=None,
                        help="features of the reference images from `gbm floor --save-reference` (checked by hash)")
    parser.add_argument("--save-features", default=None, help="write the generated images' features here (.npz)")
    add_metric_arguments(parser)
    parser.set_defaults(func=run)


#: Per-draw values kept in the JSON file but left out of the terminal summary (at the top and in each block).
DRAW_LISTS = ("half_samples",)


def _summary(result: dict) -> dict:
    return {k: _summary(v) if isinstance(v, dict) else v for k, v in result.items() if k not in DRAW_LISTS}


def emit(result: dict, out: str | None) -> None:
    """Write the whole result to ``out`` and print it without the per-draw values (a summary)."""
    text = json.dumps(result, indent=2, sort_keys=True)
    print(json.dumps(_summary(result), indent=2, sort_keys=True))
    if out:
        write_bytes_atomic(out, (text + "\n").encode())


def metric_options(args: argparse.Namespace) -> dict:
    return dict(library=args.library, cleanfid_mode=args.cleanfid_mode, kid_subsets=args.kid_subsets,
                kid_subset_size=args.kid_subset_size, device=args.device, cache=not args.no_cache,
                sid=not args.no_sid, interval_draws=args.interval_draws, interval_level=args.interval_level,
                classifier=args.classifier, progress=not args.no_progress)


def sample_provenance(fake: str) -> dict | None:
    """How a ``gbm sample`` file was drawn (sampler, steps, prior), from its ``meta``; None for other inputs."""
    import numpy as np

    if not fake.endswith(".npz"):
        return None
    with np.load(fake) as arrays:
        if "meta" not in arrays or "seeds" not in arrays:
            return None
        meta = json.loads(str(arrays["meta"]))
    return {key: meta.get(key) for key in ("sampler", "steps", "nfe", "prior", "prior_options", "nonfinite")}


def run(args: argparse.Namespace) -> int:
    from gbm.data.prepared import is_split_name
    from gbm.tracking.live import job_record, process_start_time

    started_at = process_start_time()
    if args.real_split is not None and not is_split_name(args.real_split):
        raise ValueError(f"--real-split: unknown split {args.real_split!r}; choose train, test, validation-N or "
                         "train-minus-validation-N")
    result = score(args.real, args.fake, n=args.n, real_split=args.real_split, allow_nonfinite=args.allow_nonfinite,
                   real_features=args.real_features, save_fake_features=args.save_features, **metric_options(args))
    provenance = sample_provenance(args.fake)
    if provenance is not None:
        result["samples"] = provenance
        if "collapse" in result and provenance["nonfinite"] is not None:  # frames that were NaN or infinite
            result["collapse"]["nonfinite"] = provenance["nonfinite"]
    emit(result | {"job": job_record(started_at)}, args.out)
    return 0
