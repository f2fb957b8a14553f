"""``gbm fit-prior RUN_DIR``: add the statistics of a method's named priors to a trained ``model.pt``.

For models trained before named priors existed (or to refit one): reloads the run's training data as its
recorded config describes, fits each missing prior (``--prior NAME`` for some only, ``--refit`` to replace
stored ones) and rewrites ``model.pt`` atomically; the weights are untouched, so no retraining.
"""

from __future__ import annotations

import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "fit-prior", help="add missing prior statistics to a trained model.pt (no retraining)",
        description="Fit the start distributions of the run's method (GBM: iid, correlated, class-mean, "
                    "authors) on its training data and store them in model.pt, atomically.",
    )
    parser.add_argument("run_dir", help="training run directory (with model.pt)")
    parser.add_argument("--prior", action="append", default=[], metavar="NAME",
                        help="fit only this prior (repeatable); default: every prior model.pt lacks")
    parser.add_argument("--refit", action="store_true", help="refit priors already stored")
    parser.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import replace
    from datetime import datetime, timezone

    import torch

    from gbm.config import config_from_dict
    from gbm.methods import get_method
    from gbm.runs import MODEL_FORMAT, RunDir, atomic_torch_save, git_revision, sde_from_record
    from gbm.training import _load_data

    path = RunDir(args.run_dir).model
    if not path.is_file():
        raise FileNotFoundError(f"RUN_DIR: no model.pt in {str(args.run_dir)!r}; has `gbm train` finished there?")
    record = torch.load(path, map_location="cpu", weights_only=True)
    if record.get("format") != MODEL_FORMAT:
        raise ValueError(f"RUN_DIR: {str(path)!r} is not a {MODEL_FORMAT} file")
    method = get_method(record["sde"]["name"])
    if not method.priors:
        raise ValueError(f"--prior: method {method.name!r} has one fixed prior; nothing to fit")
    names = args.prior or sorted(method.priors)
    for name in names:
        method.get_prior(name)
    stored = record.get("priors", {})
    missing = [n for n in names if args.refit or n not in stored or "unavailable" in stored[n]]
    if not missing:
        print(f"gbm fit-prior: {path} already holds {', '.join(names)} (use --refit to replace)", file=sys.stderr)
        return 0

    config = config_from_dict(record["config"])
    values, labels, to_data_space, _ = _load_data(config, method)
    x0 = values.float() if to_data_space is None else to_data_space(values)
    sde = sde_from_record(record["sde"])
    subset = replace(method, priors={n: method.priors[n] for n in missing}, default_prior=missing[0])
    fitted = subset.fit_priors(sde, x0, labels, record["data"].get("dataset"))
    record["priors"] = stored | fitted
    record.setdefault("prior_fits", []).append(
        {"priors": missing, "by": "gbm fit-prior", "git": git_revision(),
         "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_torch_save(record, path)
    for name in missing:
        status = fitted[name].get("unavailable", "fitted")
        print(f"gbm fit-prior: {name}: {status}", file=sys.stderr)
    return 0
