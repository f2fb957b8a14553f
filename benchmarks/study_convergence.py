"""Convergence study (issue 25): FID, domain FD, seed spread and collapse share against training length for
VP, GBM (paper) and GBM (tuned) under one training recipe. Writes ``results/benchmarks/convergence.json`` and
``results/benchmarks/convergence.png`` and prints a table.

It runs the real pipeline (``snakemake --cores 2 --configfile config/convergence.yaml``) in ``--work`` (a clone
of this repository's committed HEAD, made if absent) once per training length, in increasing order, with
``--config 'train={steps: L}'``, asking only for ``results/tables/metrics.csv`` (no figures, report
tables or MLflow sync). Each longer run resumes every model from the previous length's last checkpoint
(``train.steps`` is a resumable key; the learning rate is constant after warm-up and the data order a function
of (seed, step), so the weights equal those of a run of that length from scratch) and re-samples and re-scores
it; the script keeps each length's ``results/tables/metrics.csv`` and training records. Verdicts against VP
at each length use the project's Welch interval over seeds (``gbm.metrics.seeds.compare``), with all seeds and
with the first two (what a two-seed benchmark would conclude).

    .venv/bin/python benchmarks/study_convergence.py --work /tmp/convergence            # 800, 1200, 1600
    .venv/bin/python benchmarks/study_convergence.py --work /tmp/convergence --lengths 800 1200 1600 2400
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gbm.metrics.seeds import Arm, compare  # noqa: E402

CONFIG = "config/convergence.yaml"
BASELINE = ("vp", "em")
LABELS = {("gbm", "sign-agnostic"): "GBM (paper) / sign-agnostic",
          ("gbm", "dale-langevin"): "GBM (paper) / Dale–Langevin",
          ("gbm-tuned", "dale-langevin"): "GBM (tuned) / Dale–Langevin (correlated)",
          ("vp", "em"): "VP / Euler–Maruyama"}
METRICS = ("fid", "domain_fd", "collapse_any")
ONE_PERCENT = 0.01


def pipeline(work: Path, length: int, cores: int) -> float:
    """One pipeline run of the study config at ``length`` training steps; its wall seconds."""
    log = work / "study" / f"snakemake-{length}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    venv_bin = str(Path(sys.executable).parent)
    # the evaluations only (no figures, report tables or MLflow sync); the target before --config, which takes
    # every argument after it
    cmd = ["snakemake", "results/tables/metrics.csv", "--cores", str(cores), "--configfile", CONFIG,
           "--config", f"train={{steps: {length}}}"]
    began = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("# command: " + " ".join(cmd) + "\n")
        handle.flush()
        subprocess.run(cmd, cwd=work, stdout=handle, stderr=subprocess.STDOUT, check=True,
                       env=os.environ | {"PATH": venv_bin + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(work)})
    return time.perf_counter() - began


def keep_length(work: Path, length: int) -> pd.DataFrame:
    """Copy this length's metrics.csv and training records aside (``--work/study/LENGTH``); its rows."""
    kept = work / "study" / str(length)
    kept.mkdir(parents=True, exist_ok=True)
    shutil.copy(work / "results" / "tables" / "metrics.csv", kept / "metrics.csv")
    for run in sorted((work / "results" / "mnist").glob("*/seed*/run/train_metrics.json")):
        method, seed = run.parents[2].name, run.parents[1].name
        shutil.copy(run, kept / f"train_metrics_{method}_{seed}.json")
    return kept_rows(kept, length)


def kept_rows(kept: Path, length: int) -> pd.DataFrame:
    """The evaluation rows of one kept length, with each model's training time and final loss."""
    rows = pd.read_csv(kept / "metrics.csv")
    rows = rows[rows["dataset"] == "mnist"].copy()
    training = {}
    for path in kept.glob("train_metrics_*_seed*.json"):
        method, seed = path.stem.removeprefix("train_metrics_").rsplit("_seed", 1)
        record = json.loads(path.read_text())
        if record["steps"] != length:
            raise RuntimeError(f"{path}: trained {record['steps']} steps, expected {length}")
        training[(method, int(seed))] = record
    rows["train_steps"] = length
    rows["train_wall_s"] = [training[(m, int(s))]["wall_time_s"] for m, s in zip(rows["method"], rows["seed"])]
    rows["final_loss"] = [training[(m, int(s))]["final_loss"] for m, s in zip(rows["method"], rows["seed"])]
    return rows


def summarise(rows: pd.DataFrame) -> list[dict]:
    """Per length and row: per-seed values, mean, std (ddof 1), largest collapse share, verdicts against VP."""
    out = []
    for length, at_length in rows.groupby("train_steps"):
        is_base = (at_length["method"] == BASELINE[0]) & (at_length["sampler"] == BASELINE[1])
        base = at_length[is_base].sort_values("seed")
        for (method, sampler), group in at_length.groupby(["method", "sampler"], sort=False):
            group = group.sort_values("seed")
            entry = {"train_steps": int(length), "method": method, "sampler": sampler,
                     "label": LABELS.get((method, sampler), f"{method} / {sampler}"),
                     "seeds": [int(s) for s in group["seed"]],
                     "train_wall_s": [float(v) for v in group["train_wall_s"]],
                     "final_loss": [float(v) for v in group["final_loss"]]}
            for metric in METRICS:
                values = [float(v) for v in group[metric]]
                entry[metric] = {"per_seed": values, "mean": float(np.mean(values)),
                                 "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                                 "max": float(np.max(values))}
            entry["collapse_over_1pct"] = entry["collapse_any"]["max"] > ONE_PERCENT
            if (method, sampler) != BASELINE and len(base):
                for metric in ("fid", "domain_fd"):
                    for name, count in (("all_seeds", None), ("two_seeds", 2)):
                        mine = group[metric].to_numpy(float)[:count]
                        theirs = base[metric].to_numpy(float)[:count]
                        entry[f"vs_vp_{metric}_{name}"] = compare(Arm(tuple(mine)), Arm(tuple(theirs)))
                    entry[f"vs_vp_{metric}_seeds_needed"] = seeds_needed(group[metric].to_numpy(float),
                                                                         base[metric].to_numpy(float))
            out.append(entry)
    return out


def seeds_needed(mine: np.ndarray, theirs: np.ndarray, most: int = 50) -> int | None:
    """The fewest seeds per side whose expected Welch interval excludes 0, were the seed means and sds the
    measured ones: the smallest S with ``t_nu(0.975) sqrt((s_a^2 + s_b^2) / S) < |difference|`` (nu the
    Welch-Satterthwaite df at S); None when more than ``most`` (or no spread is measured)."""
    from scipy.stats import t

    difference, var_a, var_b = abs(mine.mean() - theirs.mean()), mine.var(ddof=1), theirs.var(ddof=1)
    if not var_a + var_b > 0:
        return None
    for seeds in range(2, most + 1):
        df = (var_a + var_b) ** 2 * (seeds - 1) / (var_a**2 + var_b**2)
        if t.ppf(0.975, df) * np.sqrt((var_a + var_b) / seeds) < difference:
            return seeds
    return None


def figure(summary: list[dict], rows: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {"fid": "Inception FID", "domain_fd": "domain FD (MNIST classifier)", "collapse_any": "collapsed frames"}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    colours = dict(zip(LABELS, ("tab:blue", "tab:cyan", "tab:green", "tab:red")))
    for ax, metric in zip(axes, METRICS):
        for key, label in LABELS.items():
            mine = [s for s in summary if (s["method"], s["sampler"]) == key]
            if not mine:
                continue
            lengths = [s["train_steps"] for s in mine]
            summary_of = "max" if metric == "collapse_any" else "mean"  # the 1 % goal is per evaluation
            ax.plot(lengths, [s[metric][summary_of] for s in mine], "-", color=colours[key], label=label)
            points = rows[(rows["method"] == key[0]) & (rows["sampler"] == key[1])]
            ax.plot(points["train_steps"], points[metric], "o", color=colours[key], alpha=0.5, ms=4)
        ax.set_xlabel("training steps (batch 64)")
        ax.set_title(titles[metric])
        if metric == "collapse_any":
            ax.axhline(ONE_PERCENT, color="grey", ls=":", lw=1)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes[0].legend(fontsize=7)
    fig.suptitle("Seed means (lines; collapsed frames: the largest over seeds) and per-seed values (dots), N = 200, "
                 "100 sampler steps, MNIST", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(summary: list[dict]) -> str:
    lines = ["| steps | row | FID mean ± std | domain FD mean ± std | collapsed (max) | FID vs VP (all seeds) | "
             "domain FD vs VP (all seeds) | FID vs VP (2 seeds) | seeds needed (FID, domain FD) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        def cell(metric):
            m = s[metric]
            return f"{m['mean']:.1f} ± {m['std']:.1f}" if m["std"] is not None else f"{m['mean']:.1f}"

        def verdict(key):
            if key not in s:
                return "baseline"
            c = s[key]
            return f"{c['difference']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}] {c['verdict']}"
        lines.append(f"| {s['train_steps']} | {s['label']} | {cell('fid')} | {cell('domain_fd')} | "
                     f"{100 * s['collapse_any']['max']:.1f} % | {verdict('vs_vp_fid_all_seeds')} | "
                     f"{verdict('vs_vp_domain_fd_all_seeds')} | {verdict('vs_vp_fid_two_seeds')} | "
                     f"{s.get('vs_vp_fid_seeds_needed', '')}, {s.get('vs_vp_domain_fd_seeds_needed', '')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="a clone of this repository (made if absent)")
    ap.add_argument("--lengths", nargs="+", type=int, default=[800, 1200, 1600])
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--summarise-only", action="store_true",
                    help="rebuild the JSON, figure and table from an earlier run's kept files in --work/study")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "convergence.json")
    args = ap.parse_args()
    if args.lengths != sorted(set(args.lengths)):
        ap.error("--lengths: give increasing, distinct training lengths (each run resumes the previous one)")
    work = args.work.resolve()
    if not work.exists():
        subprocess.run(["git", "clone", "-q", str(REPO), str(work)], check=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=work, capture_output=True, text=True,
                            check=True).stdout.strip()
    walls, frames = {}, []
    for length in args.lengths:
        if args.summarise_only:  # the kept files of an earlier run; its pipeline times from its JSON
            frames.append(kept_rows(work / "study" / str(length), length))
            continue
        print(f"training length {length}: snakemake ...", flush=True)
        walls[length] = pipeline(work, length, args.cores)
        frames.append(keep_length(work, length))
        print(f"  {walls[length]:.0f} s", flush=True)
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.summarise_only and args.out.exists():  # the run's own time, commit and pipeline times
        earlier = json.loads(args.out.read_text())
        walls, date = earlier.get("pipeline_wall_s", {}), earlier.get("date", date)
        commit = earlier.get("commit", commit)
    rows = pd.concat(frames, ignore_index=True)
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {"study": "convergence", "config": CONFIG, "commit": commit, "lengths": args.lengths,
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
              "date": date, "pipeline_wall_s": walls,
              "rows": summary,
              "evaluations": rows[["train_steps", "method", "sampler", "seed", *METRICS, "kid", "train_wall_s",
                                   "final_loss", "sample_wall_s"]].to_dict("records")}
    args.out.write_text(json.dumps(record, indent=1, default=float) + "\n")
    figure(summary, rows, args.out.with_suffix(".png"))
    print(table(summary))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
