"""Each method/sampler against the configured baseline: the FID and KID difference, its interval, a verdict.

Interval over seeds and samples (a two-stage bootstrap, unpaired between the two arms): one draw resamples
each arm's training seeds with replacement and, for each drawn seed, one of that evaluation's bootstrap
replicates over its generated samples (``gbm.metrics.uncertainty.bootstrap``); the arm's value is the mean
over its drawn seeds and the draw's difference is candidate minus baseline. The interval is the basic
bootstrap ``[2Δ - q(1-α/2), 2Δ - q(α/2)]`` around the observed difference of the seed means. With one seed
an arm carries sample variation only; with few seeds the seed stage underestimates the training spread by
about ``(S-1)/S`` (S seeds), so the verdicts are optimistic there, never pessimistic.

Verdict (lower FID/KID is better): ``better`` when the whole interval lies below 0, ``worse`` when it lies
above 0, otherwise ``not resolved`` (at this N and number of seeds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gbm.metrics.uncertainty import basic_interval

BETTER, WORSE, UNRESOLVED = "better", "worse", "not resolved"
DRAWS = 2000


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: per-seed point estimates and each seed's bootstrap replicates."""

    estimates: tuple[float, ...]
    replicates: tuple[np.ndarray, ...]

    def __post_init__(self):
        if not self.estimates or len(self.estimates) != len(self.replicates):
            raise ValueError("an arm needs one bootstrap replicate array per seed estimate, and at least one seed")

    @property
    def estimate(self) -> float:
        return float(np.mean(self.estimates))

    def draws(self, rng: np.random.Generator, draws: int) -> np.ndarray:
        """Two-stage bootstrap draws of the seed mean: seeds with replacement, then one replicate each."""
        seeds = len(self.estimates)
        chosen = rng.integers(0, seeds, (draws, seeds))
        values = np.empty((draws, seeds))
        for s, replicates in enumerate(self.replicates):
            picks = rng.integers(0, len(replicates), (draws, seeds))
            values = np.where(chosen == s, np.asarray(replicates)[picks], values)
        return values.mean(1)


def verdict(low: float, high: float) -> str:
    """``better`` if the difference interval lies below 0, ``worse`` if above 0, else ``not resolved``."""
    if high < 0:
        return BETTER
    if low > 0:
        return WORSE
    return UNRESOLVED


def arm_interval(arm: Arm, *, level: float = 0.95, draws: int = DRAWS, seed: int = 0) -> list[float]:
    """Basic-bootstrap interval of one arm's seed mean over seeds and samples."""
    return basic_interval(arm.estimate, arm.draws(np.random.default_rng(seed), draws), level)


def compare(candidate: Arm, baseline: Arm, *, level: float = 0.95, draws: int = DRAWS, seed: int = 0) -> dict:
    """Difference candidate - baseline, its two-stage bootstrap interval and the verdict."""
    rng = np.random.default_rng(seed)
    difference = candidate.estimate - baseline.estimate
    low, high = basic_interval(difference, candidate.draws(rng, draws) - baseline.draws(rng, draws), level)
    return {"difference": difference, "low": low, "high": high, "verdict": verdict(low, high)}


def load_replicates(eval_dir: str | Path) -> dict[str, np.ndarray]:
    """The FID and KID bootstrap replicates stored in an evaluation's metrics.json."""
    path = Path(eval_dir) / "metrics.json"
    values = json.loads(path.read_text())
    if "bootstrap" not in values:
        raise ValueError(f"{path}: no bootstrap replicates; rescore with `gbm score` (--bootstrap-draws > 0)")
    return {metric: np.asarray(values["bootstrap"][metric], dtype=float) for metric in ("fid", "kid")}


def arms(runs: pd.DataFrame, metric: str) -> Arm:
    """An ``Arm`` from the rows (one per seed) of one evaluated configuration, replicates read from disk."""
    return Arm(tuple(runs[metric].astype(float)), tuple(load_replicates(p)[metric] for p in runs["path"]))


def group_columns(runs: pd.DataFrame) -> list[str]:
    """dataset, method, sampler (and prior, when the runs have one), step count."""
    return ["dataset", "method", "sampler"] + (["prior"] if "prior" in runs else []) + ["steps"]


def comparisons_table(runs: pd.DataFrame, baseline: dict, *, level: float = 0.95, draws: int = DRAWS,
                      seed: int = 0) -> pd.DataFrame:
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
            result = compare(arms(group, metric), arms(reference, metric), level=level, draws=draws, seed=seed)
            row.update({f"{metric}_{k}": v for k, v in result.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if not table.empty:
        table.insert(len(columns), "level", level)
    return table


def _display(table: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    columns = {"Dataset": table["dataset"], "Method": table["method"], "Sampler": table["sampler"]}
    if "prior" in table:
        columns["Prior"] = table["prior"].fillna("–")
    delta = r"$\Delta$" if latex else "Δ"
    columns.update({
        "Steps": table["steps"].astype(int),
        "Seeds": table["seeds"].astype(str) + " vs " + table["baseline_seeds"].astype(str),
        f"{delta}FID [CI]": [f"{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" for d, lo, hi in
                             zip(table["fid_difference"], table["fid_low"], table["fid_high"])],
        "FID verdict": table["fid_verdict"],
        f"{delta}KID ×10³ [CI]": [f"{1e3 * d:+.2f} [{1e3 * lo:+.2f}, {1e3 * hi:+.2f}]" for d, lo, hi in
                                  zip(table["kid_difference"], table["kid_low"], table["kid_high"])],
        "KID verdict": table["kid_verdict"],
    })
    return pd.DataFrame(columns)


def write_comparisons(table: pd.DataFrame, out_dir: Path, name: str) -> list[Path]:
    """comparisons.{csv,md,tex} under ``out_dir``."""
    from gbm.data.atomic import write_text_atomic
    from gbm.pipeline.table_formats import latex, markdown

    out_dir = Path(out_dir)
    if table.empty:
        raise ValueError("comparisons: no configuration shares a dataset and step count with the baseline")
    baseline = table["baseline"].iloc[0]
    level = f"{100 * table['level'].iloc[0]:g}%"
    caption = (f"Benchmark '{name}': each configuration against the baseline {baseline} at the same dataset and "
               f"step count, N = {int(table['n'].iloc[0])}. Δ = configuration − baseline (negative is better) with "
               f"a {level} two-stage bootstrap interval over training seeds and generated samples; 'not resolved' "
               f"when the interval contains 0.")
    written = {
        "comparisons.csv": table.to_csv(index=False),
        "comparisons.md": markdown(_display(table), caption),
        "comparisons.tex": latex(_display(table, latex=True), caption, "tab:comparisons"),
    }
    for filename, text in written.items():
        write_text_atomic(out_dir / filename, text)
    return [out_dir / f for f in written]
