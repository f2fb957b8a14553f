"""Each method/sampler against the configured baseline: the FID and KID difference, its interval, a verdict.

The interval is Welch's t interval over training seeds (``gbm.metrics.seeds``): each seed's FID carries its
model's training variation and its N samples' variation, so the seeds' spread is the whole uncertainty of the
seed mean. Its 95 % coverage was verified by simulation at 2, 3 and 5 seeds (``COVERAGE_NOTE``). Fewer than two
seeds on either side: no interval, verdict ``too few seeds``.

The domain FD (docs/domain-metrics.md) gets the same interval and verdict where both sides were scored with the
dataset's classifier (else ``n/a``). A comparison in which either side has a collapsed evaluation
(``collapse.flagged``) names it in the ``collapsed`` column, beside the verdicts it enters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gbm.metrics.seeds import TOO_FEW, Arm, compare
from gbm.reporting.domain import COLLAPSE_MARK, flagged

#: Verdict of a metric one side was not scored with (the domain FD without a classifier).
NO_METRIC = "n/a"

#: What the captions say of the verdicts' coverage (gbm.metrics.seeds; benchmarks/bench_verdict_coverage.py).
COVERAGE_NOTE = ("Welch t interval over training seeds (each seed samples its own noise, so the seeds' spread carries "
                 "training and sample variation); simulated coverage of the 95 % interval 93.7-97.7 % at 2, 3 and 5 "
                 "seeds per side (normal per-seed values, equal or 10x unequal spreads), 94.5-99.9 % with a "
                 "noise-set effect per seed")


def arm(runs: pd.DataFrame, metric: str) -> Arm:
    """An ``Arm`` from the rows (one per seed) of one evaluated configuration."""
    return Arm(tuple(runs[metric].astype(float)))


def group_columns(runs: pd.DataFrame) -> list[str]:
    """dataset, method, sampler (and prior, when the runs have one), step count."""
    return ["dataset", "method", "sampler"] + (["prior"] if "prior" in runs else []) + ["steps"]


def comparisons_table(runs: pd.DataFrame, baseline: dict, *, level: float = 0.95) -> pd.DataFrame:
    """One row per dataset x step count x non-baseline configuration: ΔFID, ΔKID, intervals, verdicts."""
    method, sampler = baseline["method"], baseline["sampler"]
    is_baseline = (runs["method"] == method) & (runs["sampler"] == sampler)
    if not is_baseline.any():
        raise ValueError(f"config key 'comparisons.baseline': no evaluated runs of method {method!r} with sampler "
                         f"{sampler!r}")
    columns = group_columns(runs)
    rows = []
    for key, group in runs[~is_baseline].groupby(columns, sort=False, dropna=False):
        values = dict(zip(columns, key))
        reference = runs[is_baseline & (runs["dataset"] == values["dataset"]) & (runs["steps"] == values["steps"])]
        if reference.empty:
            continue
        row = {**values, "baseline": f"{method} / {sampler}", "seeds": len(group), "baseline_seeds": len(reference),
               "n": group["n"].iloc[0]}
        for metric in ("fid", "kid"):
            result = compare(arm(group, metric), arm(reference, metric), level=level)
            row.update({f"{metric}_{k}": v for k, v in result.items()})
        row.update(_domain_comparison(group, reference, level))
        row["collapsed"] = "; ".join(collapsed_evaluations(side, name) for side, name in
                                     ((group, f"{values['method']} / {values['sampler']}"),
                                      (reference, f"{method} / {sampler}")) if flagged(side).any())
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table.insert(len(columns), "level", level)
    return table


def _domain_comparison(group: pd.DataFrame, reference: pd.DataFrame, level: float) -> dict:
    """``domain_fd_{difference, low, high, df, verdict}``: ``compare`` on the domain FD, or NaN and ``n/a`` where a
    side has an evaluation without it."""
    finite = [bool(np.isfinite(side["domain_fd"].astype(float)).all()) if "domain_fd" in side else False
              for side in (group, reference)]
    if not all(finite):
        return {"domain_fd_difference": float("nan"), "domain_fd_low": float("nan"), "domain_fd_high": float("nan"),
                "domain_fd_df": float("nan"), "domain_fd_verdict": NO_METRIC}
    result = compare(arm(group, "domain_fd"), arm(reference, "domain_fd"), level=level)
    return {f"domain_fd_{k}": v for k, v in result.items()}


def collapsed_evaluations(side: pd.DataFrame, name: str) -> str:
    """``vp / em seed 0 (45.5 %)``: the collapsed evaluations of one side, with their collapsed share."""
    rows = side[flagged(side)].sort_values("seed")
    seeds = ", ".join(f"seed {int(r.seed)} ({100 * float(r.collapse_any):.1f} %)" for r in rows.itertuples(index=False))
    return f"{name} {seeds}"


def _display(table: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    columns = {"Dataset": table["dataset"], "Method": table["method"], "Sampler": table["sampler"]}
    if "prior" in table:
        columns["Prior"] = table["prior"].fillna("–")
    delta = r"$\Delta$" if latex else "Δ"
    columns.update({
        "Steps": table["steps"].astype(int),
        "Seeds": table["seeds"].astype(str) + " vs " + table["baseline_seeds"].astype(str),
    })
    if "collapsed" in table and table["collapsed"].fillna("").astype(bool).any():
        columns["Collapsed"] = [f"{COLLAPSE_MARK} {c}" if isinstance(c, str) and c else "–" for c in table["collapsed"]]
    columns.update({
        f"{delta}FID [CI]": [_difference(d, lo, hi) for d, lo, hi in
                             zip(table["fid_difference"], table["fid_low"], table["fid_high"])],
        "FID verdict": table["fid_verdict"],
        f"{delta}KID ×10³ [CI]": [_difference(d, lo, hi, 1e3) for d, lo, hi in
                                  zip(table["kid_difference"], table["kid_low"], table["kid_high"])],
        "KID verdict": table["kid_verdict"],
    })
    if "domain_fd_verdict" in table and (table["domain_fd_verdict"] != NO_METRIC).any():
        columns[f"{delta}Domain FD [CI]"] = [
            NO_METRIC if pd.isna(d) else _difference(d, lo, hi)
            for d, lo, hi in zip(table["domain_fd_difference"], table["domain_fd_low"], table["domain_fd_high"])]
        columns["Domain FD verdict"] = table["domain_fd_verdict"]
    return pd.DataFrame(columns)


def _difference(value: float, low: float, high: float, scale: float = 1.0) -> str:
    """``+d [lo, hi]``, or ``+d`` alone where there is no interval (too few seeds)."""
    if pd.isna(low):
        return f"{scale * value:+.2f}"
    return f"{scale * value:+.2f} [{scale * low:+.2f}, {scale * high:+.2f}]"


def write_comparisons(table: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """comparisons.{csv,md,tex} under ``out_dir``."""
    from gbm.data.atomic import write_text_atomic
    from gbm.reporting.formats import latex, markdown

    out_dir = Path(out_dir)
    if table.empty:
        raise ValueError("comparisons: no configuration shares a dataset and step count with the baseline")
    baseline = table["baseline"].iloc[0]
    level = f"{100 * table['level'].iloc[0]:g}%"
    caption = (f"Benchmark '{name}': each configuration against the baseline {baseline} at the same dataset and "
               f"step count, N = {int(table['n'].iloc[0])}. Δ = configuration − baseline in the seed means "
               f"(negative is better) with a {level} {COVERAGE_NOTE}; 'not resolved' when the interval contains 0, "
               f"'{TOO_FEW}' (no interval) when a side has one seed.")
    if (table["domain_fd_verdict"] != NO_METRIC).any():
        caption += (" Domain FD: the same interval and verdict for the FD in the dataset's classifier features "
                    "(docs/domain-metrics.md).")
    if table["collapsed"].fillna("").astype(bool).any():
        from gbm.metrics.collapse import FLAG_SHARE

        caption += (f" {COLLAPSE_MARK} Collapsed: the evaluations of either side with more than {100 * FLAG_SHARE:g} % "
                    f"of their frames empty, saturated, flat or duplicates (collapse.flagged, with that share); their "
                    f"seeds' values enter that row's verdicts, which then judge a failure, not a working sampler.")
    written = {
        "comparisons.csv": table.to_csv(index=False),
        "comparisons.md": markdown(_display(table), caption),
        "comparisons.tex": latex(_display(table, latex=True), caption, "tab:comparisons"),
    }
    for filename, text in written.items():
        write_text_atomic(out_dir / filename, text)
    return [out_dir / f for f in written]
