"""``gbm report ...``: aggregation, tables and figures of a benchmark (each sub-command one step)."""

from __future__ import annotations

import json
from pathlib import Path


def _pairs(inputs: list[str], outputs: list[str], what: str) -> list[tuple[Path, Path]]:
    if len(inputs) != len(outputs):
        raise ValueError(f"{what}: {len(inputs)} inputs but {len(outputs)} --out paths")
    return [(Path(i), Path(o)) for i, o in zip(inputs, outputs)]


def _aggregate(args) -> int:
    from gbm.data.atomic import write_text_atomic
    from gbm.reporting.tables import aggregate, failed_table

    if args.failed_out is None and args.failed:
        raise ValueError("--failed-out: --failed evaluations given without a file to list them in")
    if args.failed_out is not None:
        failed = failed_table([(Path(d), Path(log)) for d, log in args.failed])
        write_text_atomic(Path(args.failed_out), failed.to_csv(index=False))
        for row in failed.itertuples(index=False):
            print(f"failed: {row.path}: {row.reason}")
    runs = aggregate([Path(p) for p in args.metrics])
    write_text_atomic(Path(args.out), runs.to_csv(index=False))
    print(f"{len(runs)} evaluated runs -> {args.out}")
    return 0


def _tables(args) -> int:
    import pandas as pd

    from gbm.reporting.tables import floor_table, write_tables

    runs = pd.read_csv(args.metrics)
    failed = pd.read_csv(args.failed) if args.failed else None
    written = write_tables(runs, floor_table([Path(p) for p in args.floor]), Path(args.out_dir), args.name, failed)
    print("\n".join(str(p) for p in written))
    return 0


def _comparisons(args) -> int:
    import pandas as pd

    from gbm.reporting.comparisons import comparisons_table, write_comparisons
    from gbm.reporting.figures import comparison_figure

    method, _, sampler = args.baseline.partition("/")
    if not method or not sampler:
        raise ValueError(f"--baseline: expected METHOD/SAMPLER (e.g. vp/em), got {args.baseline!r}")
    if not 0 < args.level < 1:
        raise ValueError(f"--level: must lie strictly between 0 and 1, got {args.level}")
    table = comparisons_table(pd.read_csv(args.metrics), {"method": method, "sampler": sampler}, level=args.level)
    written = write_comparisons(table, Path(args.out_dir), args.name)
    comparison_figure(table, Path(args.figure))
    print("\n".join(str(p) for p in [*written, args.figure]))
    return 0


def _grids(args) -> int:
    from gbm.reporting.figures import sample_grid

    for samples, png in _pairs(args.samples, args.out, "samples"):
        sample_grid(samples, png, n=args.n)
    return 0


def _neighbours(args) -> int:
    from gbm.reporting.figures import neighbour_grid

    pairs = _pairs(args.neighbours, args.out, "neighbours")
    for (neighbours, png), (samples, data) in zip(pairs, _pairs(args.samples, args.data, "samples")):
        neighbour_grid(neighbours, samples, data, png, queries=args.queries)
    return 0


def _forward(args) -> int:
    from gbm.reporting.figures import method_figures

    outputs = [(png, {"data_npz": data, "times": args.times, "images": args.images})
               for data, png in _pairs(args.data, args.out, "data")]
    method_figures(args.method, "forward", outputs)
    return 0


def _toy(args) -> int:
    from gbm.reporting.figures import method_figures

    method_figures(args.method, "toy", [(Path(args.out), {"paths": args.paths})])
    return 0


def _nfe(args) -> int:
    import pandas as pd

    from gbm.reporting.figures import fid_vs_nfe_by_grid, metric_vs_nfe

    runs = pd.read_csv(args.metrics)
    metric_vs_nfe(runs, Path(args.out))
    if args.grids_out:
        fid_vs_nfe_by_grid(runs, Path(args.grids_out))
    return 0


def _loss(args) -> int:
    from gbm.reporting.figures import loss_curves

    loss_curves([Path(p) for p in args.loss], Path(args.out))
    return 0


def _trajectories(args) -> int:
    from gbm.reporting.trajectories import trajectory_figures

    for run, png in _pairs(args.runs, args.out, "runs"):
        trajectory_figures(Path(run), png, steps=args.steps, snapshots=args.snapshots, images=args.images,
                           device=args.device)
    return 0


def _timing(args) -> int:
    from gbm.data.atomic import write_text_atomic
    from gbm.reporting.timing import timing_report

    text = json.dumps(timing_report(Path(args.results), args.cores, args.threads), indent=2) + "\n"
    write_text_atomic(Path(args.out), text)
    print(text, end="")
    return 0


def _guidance_sweep(args) -> int:
    from gbm.data.atomic import write_text_atomic
    from gbm.reporting.guidance_sweep import markdown, sweep_figure, sweep_table

    rows = sweep_table([Path(p) for p in args.metrics], {Path(d).stem: Path(d) for d in args.data})
    out = Path(args.out_dir)
    write_text_atomic(out / "guidance_sweep.csv", rows.to_csv(index=False))
    write_text_atomic(out / "guidance_sweep.md", markdown(rows))
    sweep_figure(rows, Path(args.figure))
    picked = rows[rows["picked"]][["dataset", "method", "sampler", "weight", "bank_size"]]
    print(picked.to_string(index=False))
    return 0


def _prior_mismatch(args) -> int:
    from gbm.reporting.prior_mismatch import mismatch_figure, mismatch_rows, write_mismatch

    methods = json.loads(args.methods)
    if not isinstance(methods, dict) or not all(isinstance(v, dict) and "name" in v for v in methods.values()):
        raise ValueError('--methods: expected JSON {"ENTRY": {"name": METHOD, "sde": {...}}, ...}')
    if any(not v > 0 for v in args.sigma2_t):
        raise ValueError(f"--sigma2-t: every value must be positive, got {args.sigma2_t}")
    if args.limit is not None and args.limit < 4:
        raise ValueError(f"--limit: need at least 4 training images, got {args.limit}")
    timing: dict = {}
    rows = [row for data in args.data
            for row in mismatch_rows(Path(data), methods, args.held_out, tuple(args.sigma2_t), args.limit, timing)]
    record = {"data": args.data, "methods": methods, "held_out": args.held_out, "sigma2_T_grid": args.sigma2_t,
              "limit": args.limit, "rows": len(rows), "timing": timing}
    written = write_mismatch(rows, Path(args.out_dir), record)
    if args.figure:
        mismatch_figure(rows, Path(args.figure))
    print("\n".join(str(p) for p in written))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("report", help="aggregate metrics, write tables and figures",
                                   description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    p = steps.add_parser("aggregate", help="one row per evaluated run (CSV) from metrics.json files")
    p.add_argument("metrics", nargs="*", help=".../{sampler}/steps{K}/metrics.json files")
    p.add_argument("--out", required=True)
    p.add_argument("--failed", nargs=2, action="append", default=[], metavar=("EVAL_DIR", "SAMPLE_LOG"),
                   help="an evaluation whose sampling failed, and its job log (the reason); repeatable")
    p.add_argument("--failed-out", help="failed.csv listing the --failed evaluations (written even when empty)")
    p.set_defaults(func=_aggregate)

    p = steps.add_parser("tables", help="benchmark, floor and ablation tables as CSV, Markdown and LaTeX")
    p.add_argument("--metrics", required=True, help="the aggregated CSV (its settings columns give the ablation)")
    p.add_argument("--floor", nargs="+", required=True, help="floor.json files from `gbm floor`")
    p.add_argument("--name", required=True, help="benchmark name for the captions")
    p.add_argument("--failed", help="failed.csv from `gbm report aggregate`: listed under the table")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=_tables)

    p = steps.add_parser("comparisons", help="each configuration against the baseline: ΔFID/ΔKID/Δ domain FD, "
                                             "interval, verdict, collapsed evaluations")
    p.add_argument("--metrics", required=True, help="the aggregated CSV (its paths lead to each metrics.json)")
    p.add_argument("--baseline", default="vp/em", help="METHOD/SAMPLER compared against (config 'comparisons')")
    p.add_argument("--level", type=float, default=0.95)
    p.add_argument("--name", required=True, help="benchmark name for the caption")
    p.add_argument("--out-dir", required=True, help="comparisons.{csv,md,tex} go here")
    p.add_argument("--figure", required=True, help="comparisons .png (a .pdf beside it)")
    p.set_defaults(func=_comparisons)

    p = steps.add_parser("grids", help="sample grid figures")
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--out", nargs="+", required=True, help="one .png per samples file (a .pdf beside it)")
    p.add_argument("--n", type=int, default=64, help="images per grid")
    p.set_defaults(func=_grids)

    p = steps.add_parser("neighbours", help="nearest-neighbour grid figures")
    p.add_argument("--neighbours", nargs="+", required=True, help="files from `gbm neighbours`")
    p.add_argument("--samples", nargs="+", required=True, help="the sample file of each neighbours file")
    p.add_argument("--data", nargs="+", required=True, help="the prepared dataset of each neighbours file")
    p.add_argument("--queries", type=int, default=8, help="generated images shown")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=_neighbours)

    p = steps.add_parser("forward", help="a method's own figure of its forward process on each dataset")
    p.add_argument("--method", required=True, help="registered method that declares a forward figure")
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset files")
    p.add_argument("--times", nargs="+", type=float, required=True)
    p.add_argument("--images", type=int, default=1000, help="training images used")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=_forward)

    p = steps.add_parser("toy", help="a method's own figure of its forward process on a 2-D toy set")
    p.add_argument("--method", required=True, help="registered method that declares a toy figure")
    p.add_argument("--paths", type=int, default=64)
    p.add_argument("--out", required=True)
    p.set_defaults(func=_toy)

    p = steps.add_parser("nfe", help="FID/KID (and the domain FD) versus NFE, and FID versus NFE per time grid")
    p.add_argument("--metrics", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--grids-out", help="also draw FID versus NFE per time grid into this file")
    p.set_defaults(func=_nfe)

    p = steps.add_parser("loss", help="training loss curves")
    p.add_argument("--loss", nargs="+", required=True, help="loss.csv files of run directories")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_loss)

    p = steps.add_parser("trajectories", help="reverse-time snapshots of a method's samplers")
    p.add_argument("--runs", nargs="+", required=True, help="run directories of a method with a trajectory figure")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--snapshots", type=int, default=8)
    p.add_argument("--images", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", nargs="+", required=True)
    p.set_defaults(func=_trajectories)

    p = steps.add_parser("guidance-sweep", help="guidance weight sweep: table (with memorisation check and pick) "
                                                 "and figure")
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of every sweep setting")
    p.add_argument("--data", nargs="+", required=True, help="prepared dataset files (the banks), DATASET.npz")
    p.add_argument("--out-dir", required=True, help="writes guidance_sweep.csv and guidance_sweep.md here")
    p.add_argument("--figure", required=True, help="PNG (and PDF beside it)")
    p.set_defaults(func=_guidance_sweep)

    p = steps.add_parser("timing", help="wall time split into compute and pipeline overhead")
    p.add_argument("--results", default="results")
    p.add_argument("--cores", type=int, required=True, help="cores the pipeline ran with")
    p.add_argument("--threads", type=int, required=True, help="threads of each compute job")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_timing)

    p = steps.add_parser("prior-mismatch", help="distance of each start distribution from p_T (table + figure)")
    p.add_argument("--data", nargs="+", required=True, help="prepared datasets (.npz)")
    p.add_argument("--methods", required=True, help='JSON {"ENTRY": {"name": METHOD, "sde": {...}}, ...}')
    p.add_argument("--held-out", type=int, default=10000,
                   help="last training images held out as p_T's sample (at most half of them)")
    p.add_argument("--limit", type=int, help="use only the first N training images (the config's data_limit)")
    p.add_argument("--sigma2-t", type=float, nargs="*", default=[0.04, 0.16, 0.36, 0.64, 1.0, 2.56, 6.25],
                   help="sigma^2 T values of the figure, for methods whose prior mismatch varies with it "
                        "(gbm.methods: Method.prior_mismatch)")
    p.add_argument("--out-dir", required=True, help="writes prior_mismatch.{csv,md,tex}")
    p.add_argument("--figure", help="PNG (and PDF) of the mismatch against sigma^2 T")
    p.set_defaults(func=_prior_mismatch)
