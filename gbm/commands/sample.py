"""``gbm sample RUN_DIR --sampler NAME --steps K --n N --out FILE.npz``: draw images from a trained run.

Uses the run's EMA weights and starts from the prior named by ``--prior`` (a method's default without it;
the SDE's own prior for methods without named priors), fitted at training and stored in ``model.pt``. Image
i is drawn from seed ``seed_start + i`` alone (``gbm.seeding.PerSampleGenerator``), whatever the batch size
or device — except with ``--guidance repel=true`` (the default when guiding), whose particle term couples a
batch's images.

A sampler whose state becomes non-finite stops the command with ``SamplerDiverged`` (exit status 2) and
nothing is written; with ``--allow-nonfinite`` the files are written and record the fraction of non-finite
images (``nonfinite``), which ``gbm score`` then refuses unless told otherwise.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from gbm.config import parse_yaml


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample", help="draw samples from a trained run into an .npz",
        description="Sample N images with the run's EMA weights; writes FILE.npz (images uint8 (N,C,H,W), "
                    "seeds int64, meta JSON) and FILE.json (nfe, wall time, fractions clamped/negative).",
    )
    parser.add_argument("run_dir", help="training run directory (with model.pt)")
    parser.add_argument("--sampler", required=True, help="sampler name (sign-agnostic, dale-langevin, em, pc, ode, ...)")
    parser.add_argument("--steps", type=int, required=True, help="number of noise levels / time steps")
    parser.add_argument("--n", type=int, required=True, help="number of samples")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--seed-start", type=int, default=0, help="image i uses seed SEED_START + i")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a sampler option (YAML-parsed), e.g. --option grid=sqrt-t, --option snr=0.16, "
                             "--option delta=0.005; repeatable. The options are the sampler's keyword parameters "
                             "(gbm.methods: Method.sampler_options); an unknown one is refused naming the known")
    parser.add_argument("--prior", metavar="NAME",
                        help="start distribution x_T for methods with named priors (GBM: iid (the paper's, "
                             "default), correlated, class-mean, authors); statistics come from model.pt "
                             "(older models: gbm fit-prior RUN_DIR)")
    parser.add_argument("--prior-option", action="append", default=[], metavar="KEY=VALUE",
                        help="prior option (YAML-parsed), e.g. --prior-option rank=64 for a low-rank "
                             "plus diagonal 'correlated' prior; repeatable")
    parser.add_argument("--guidance", action="append", default=[], metavar="KEY=VALUE",
                        help="closed-form kernel discriminator guidance (a reconstruction of SPEC §7) for any sampler; "
                             "keys weight, schedule (constant|noisy|clean), kernel (polyharmonic|gaussian|imq), "
                             "bandwidth, bank_size (default 1024), seed, repel (default true), normalise (default true: weight 1 "
                             "pulls as hard as the model's score, per image and level; false: the raw critic gradient), "
                             "batch_bank (bank members drawn afresh per step; default: the whole bank); YAML-parsed, repeatable; "
                             "needs --guidance-data. With repel=true the particle term couples the images of a batch, "
                             "so image i then depends on its batch-mates and the batch size, not on seed i alone; "
                             "repel=false keeps per-image reproducibility")
    parser.add_argument("--guidance-data", metavar="FILE.npz[:SPLIT]",
                        help="prepared dataset whose images (split train unless given) form the guidance bank")
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="keep going when the sampler's state becomes NaN or infinite: write the files and record "
                             "the fraction of non-finite images as 'nonfinite' (gbm score refuses such files unless "
                             "given --allow-nonfinite); by default the command stops with an error and writes nothing")
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="the network's arithmetic: fp32, or bf16 autocast (CUDA only); default: the model's "
                             "train.precision (gbm.speed)")
    parser.add_argument("--tf32", choices=["true", "false"],
                        help="TF32 matmuls on CUDA (not applied on the CPU); default: the model's train.tf32")
    parser.add_argument("--channels-last", choices=["true", "false"],
                        help="NHWC memory format on CUDA (not applied on the CPU); default: the model's "
                             "train.channels_last")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def sampler_options(args) -> dict:
    """Sampler keyword options from the command line (only those given)."""
    options = {}
    for item in args.option:
        if "=" not in item:
            raise ValueError(f"--option {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        options[key.strip().replace("-", "_")] = parse_yaml(text)
    return options


def prior_options(args) -> dict:
    """``--prior-option KEY=VALUE`` pairs as a dict (values YAML-parsed)."""
    options = {}
    for item in args.prior_option:
        if "=" not in item:
            raise ValueError(f"--prior-option {item!r}: expected KEY=VALUE")
        key, text = item.split("=", 1)
        options[key.strip().replace("-", "_")] = parse_yaml(text)
    return options


def _check_args(args) -> None:
    for name in ("steps", "n", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: must be positive, got {getattr(args, name)}")
    if args.seed_start < 0:
        raise ValueError(f"--seed-start: must be >= 0, got {args.seed_start}")
    if Path(args.out).suffix != ".npz":
        raise ValueError(f"--out: the sample file must end in .npz, got {args.out!r}")
    if args.guidance and args.guidance_data is None:
        raise ValueError("--guidance-data: --guidance needs a bank of real images, give --guidance-data FILE.npz[:split]")
    if args.guidance_data is not None and not args.guidance:
        raise ValueError("--guidance: --guidance-data given without any --guidance KEY=VALUE (e.g. --guidance weight=1)")


def sampling_speed(args, record: dict, device) -> tuple:
    """The speed switches (``gbm.speed``) to sample with, each from its flag or else the model's training
    setting (none for a model from before the switches: fp32, off, off); returns (applied, requested)."""
    from gbm.speed import Speed, resolve

    trained = record.get("config", {}).get("train", {})

    def flag(value, key, default):
        return trained.get(key, default) if value is None else value == "true"

    requested = Speed(args.precision or trained.get("precision", "fp32"), flag(args.tf32, "tf32", False),
                      flag(args.channels_last, "channels_last", False))
    keys = ("--precision (default: the model's train.precision)", "--tf32", "--channels-last")
    return resolve(requested, device, keys), requested


def _guidance_bank(args, record: dict) -> tuple:
    """The ``--guidance-data`` images (uint8 numpy) checked against the run's data, and where they came from."""
    from gbm.guidance import bank_images_from_file

    if record["data"]["space"] == "toy":
        raise ValueError("--guidance-data: guidance draws its bank from images; this run was trained on toy points")
    images, source = bank_images_from_file(args.guidance_data)
    if list(images.shape[1:]) != list(record["data"]["shape"]):
        raise ValueError(f"--guidance-data: images of shape {list(images.shape[1:])} do not match the run's data "
                         f"shape {list(record['data']['shape'])}")
    return images, source


def run(args) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from gbm import pixels
    from gbm.guidance import guided_from_options, options_from_pairs
    from gbm.methods import method_of
    from gbm.tracking.live import job_record, process_start_time
    from gbm.models import state_shape
    from gbm.data.atomic import write_stream_atomic
    from gbm.runs import git_revision, load_model, resolve_device, write_json
    from gbm.sampling import SamplerDiverged, sample, sampler_names, time_discretisation, validate_request
    from gbm.seeding import PerSampleGenerator
    from gbm.speed import apply_to_model, tf32_matmuls

    started_at = process_start_time()
    _check_args(args)
    if args.sampler not in sampler_names():
        raise ValueError(f"--sampler: unknown sampler {args.sampler!r}; choose one of {sampler_names()}")
    options = sampler_options(args)
    guidance_options = options_from_pairs(args.guidance) if args.guidance else None
    device = resolve_device(args.device)
    model, record = load_model(args.run_dir, device)
    speed, requested_speed = sampling_speed(args, record, device)
    apply_to_model(model, speed)
    sde = model.sde
    sampler_fn = validate_request(sde, args.sampler, args.steps, options)
    method, start_options = method_of(sde), prior_options(args)
    prior, _ = method.check_start(record, args.prior, start_options)
    prior_name = prior.name if prior is not None else "fixed"
    score_fn, guidance = model, None
    if guidance_options is not None:
        images, source = _guidance_bank(args, record)
        score_fn = guided_from_options(sde, model, torch.from_numpy(images).to(device), guidance_options)
        guidance = {"label": "reconstruction (SPEC §7)"} | guidance_options.describe() | {"data": source}
    if "progress" in inspect.signature(sampler_fn).parameters and not args.no_progress:
        options_run = options | {"progress": True}
    else:
        options_run = options

    shape = tuple(record["data"]["shape"])
    sample_shape = state_shape(sde, shape)
    space = record["data"]["space"]
    seeds = np.arange(args.seed_start, args.seed_start + args.n, dtype=np.int64)
    outputs, nfes, clamped, negative, negative_seen, values, nonfinite = [], [], 0.0, 0.0, False, 0, 0
    began = time.perf_counter()
    bar = tqdm(total=args.n, desc=f"sample {args.sampler}", unit="img", file=sys.stderr, disable=args.no_progress)
    for start in range(0, args.n, args.batch_size):
        chunk = seeds[start:start + args.batch_size].tolist()
        generator = PerSampleGenerator(chunk)
        x_T = method.start(sde, record, args.prior, start_options, (len(chunk), *sample_shape), generator, device)
        try:
            with tf32_matmuls(speed):
                result = sample(sde, score_fn, x_T, method=args.sampler, steps=args.steps, generator=generator,
                                allow_nonfinite=args.allow_nonfinite, **options_run)
        except SamplerDiverged as error:
            bar.close()
            raise SamplerDiverged(f"{error} [batch of seeds {chunk[0]}..{chunk[-1]}; {args.run_dir}]",
                                  sampler=error.sampler, call=error.call, t=error.t, affected=error.affected,
                                  batch=error.batch) from None
        nonfinite += int(result.nonfinite.sum())
        x = sde.positions(result.x).float().cpu()
        if space == "toy":
            outputs.append(x.numpy())
            fraction = 0.0
        else:
            images, fraction = pixels.DATA_SPACE[space][1](x)
            outputs.append(images.numpy())
        clamped += fraction * x.numel()
        if result.stats.get("fraction_negative") is not None:
            negative += float(result.stats["fraction_negative"]) * x.numel()
            negative_seen = True
        values += x.numel()
        nfes.append(result.nfe)
        bar.update(len(chunk))
    bar.close()
    wall = time.perf_counter() - began

    stats = {
        "sampler": args.sampler,
        "steps": args.steps,
        "nfe": nfes[0] if len(set(nfes)) == 1 else float(np.mean(nfes)),
        "nfe_per_batch": nfes,
        "options": options,
        **time_discretisation(sde, sampler_fn, args.steps, options),
        "prior": prior_name,
        "prior_options": start_options,
        "guidance": guidance,
        "n": args.n,
        "seed_start": args.seed_start,
        "batch_size": args.batch_size,
        "fraction_clamped": clamped / values,
        "fraction_negative": negative / values if negative_seen else None,
        "nonfinite": nonfinite / args.n,
        "allow_nonfinite": args.allow_nonfinite,
        "wall_time_s": wall,
        "images_per_s": args.n / wall,
        "device": str(device),
        "speed": speed.record(requested_speed),
    }
    meta = stats | {
        "run_dir": str(Path(args.run_dir).resolve()),
        "model_step": record["step"],
        "sde": record["sde_description"],
        "parameterisation": record["parameterisation"],
        "backbone": record["backbone"],
        "data": {k: v for k, v in record["data"].items() if k != "meta"},
        "git": git_revision(),
        "torch": torch.__version__,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    arrays = {"points" if space == "toy" else "images": np.concatenate(outputs), "seeds": seeds,
              "meta": np.array(json.dumps(meta, default=str))}
    out = Path(args.out)
    write_stream_atomic(out, lambda handle: np.savez(handle, **arrays))
    write_json(out.with_suffix(".json"), meta | {"job": job_record(started_at)})
    if nonfinite:
        print(f"gbm sample: warning: {nonfinite} of {args.n} images are non-finite (--allow-nonfinite); "
              f"recorded as nonfinite = {stats['nonfinite']:.4g}", file=sys.stderr)
    print(f"gbm sample: {args.n} samples, nfe {stats['nfe']}, {wall:.1f} s -> {out}", file=sys.stderr)
    return 0
