"""The CPU study's contrasts (issue 26): SPEC 1a's findings and the log-space control, one verdict per dataset
and metric, from a run's ``results/tables/metrics.csv`` (``snakemake --cores 2 --configfile config/study.yaml``).
Writes ``findings.json`` and ``findings.md`` into ``--out``, and with ``--comparisons`` (the run's
``results/tables/comparisons.csv``) ``rows.md``: every row's seed mean ± sd on both metric families, its largest
collapse share and its verdicts against VP as the pipeline printed them.

The pipeline's comparisons table puts every row against VP Euler-Maruyama; the study's questions also need rows
against each other. Two kinds of contrast:

* within one trained model (the same method entry and seeds: a different start, time grid or sampler): the
  per-seed differences are paired (both rows use the same network per seed), so the interval is the one-sample t
  interval of the mean difference (``gbm.metrics.seeds.mean_interval``; exact for normal differences, with
  S - 1 degrees of freedom);
* between trained models (a different loss weight or method): Welch's interval over seeds
  (``gbm.metrics.seeds.compare``, the pipeline's comparison; simulated coverage 93.7-97.7 % at 2-5 seeds).

Lower FID and domain FD are better: ``better`` when the whole interval lies below 0, ``worse`` above 0.

    .venv/bin/python benchmarks/study_findings.py --metrics results/tables/metrics.csv \
        --comparisons results/tables/comparisons.csv --out docs/results/study
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gbm.metrics.seeds import TOO_FEW, Arm, compare, mean_interval, verdict  # noqa: E402

METRICS = {"fid": "Inception FID", "domain_fd": "domain FD"}
#: (question, where it was measured before, candidate row, reference row); a row is (method entry, sampler label).
CONTRASTS = [
    ("correlated start, paper weight and grid", "SPEC 1a: Fashion 272 -> 191",
     ("gbm", "dale-langevin-correlated"), ("gbm", "dale-langevin")),
    ("sqrt(t) grid, paper weight", "SPEC 1a: Fashion 191 -> 189",
     ("gbm", "dale-langevin-correlated-sqrt-t"), ("gbm", "dale-langevin-correlated")),
    ("sigma^2 t weight, uniform t", "SPEC 1a: Fashion 191 -> 168.5",
     ("gbm-tuned", "dale-langevin-uniform-t"), ("gbm", "dale-langevin-correlated")),
    ("sqrt(t) grid, sigma^2 t weight", "SPEC 1a: Fashion 168.5 -> 145.5",
     ("gbm-tuned", "dale-langevin"), ("gbm-tuned", "dale-langevin-uniform-t")),
    ("GBM (tuned) against GBM (paper)", "SPEC 1a: Fashion 272 -> 145.5",
     ("gbm-tuned", "dale-langevin"), ("gbm", "dale-langevin")),
    ("GBM (tuned) against VP", "SPEC 1a: Fashion 145.5 vs 145.3",
     ("gbm-tuned", "dale-langevin"), ("vp", "em")),
    ("Dale-Langevin against sign-agnostic (GBM paper)", "",
     ("gbm", "dale-langevin"), ("gbm", "sign-agnostic")),
    ("log-space control against VP", "same schedule and sampler, log-space data",
     ("logvp-control", "em"), ("vp", "em")),
    ("log-space control against GBM (paper)", "GBM's geometry, VP's schedule",
     ("logvp-control", "em"), ("gbm", "dale-langevin")),
    ("log-space control against GBM (tuned)", "",
     ("logvp-control", "em"), ("gbm-tuned", "dale-langevin")),
]


#: (method entry, sampler label) -> the row's name in rows.md, in the order printed.
ROW_NAMES = {
    ("gbm", "sign-agnostic"): "GBM (paper) / sign-agnostic",
    ("gbm", "dale-langevin"): "GBM (paper) / Dale-Langevin",
    ("gbm", "dale-langevin-correlated"): "(sigma^2 t)^2 weight, uniform t, correlated start",
    ("gbm", "dale-langevin-correlated-sqrt-t"): "(sigma^2 t)^2 weight, sqrt(t) grid, correlated start",
    ("gbm-tuned", "dale-langevin-uniform-t"): "sigma^2 t weight, uniform t, correlated start",
    ("gbm-tuned", "dale-langevin"): "GBM (tuned): sigma^2 t weight, sqrt(t) grid, correlated start",
    ("vp", "em"): "VP / Euler-Maruyama (baseline)",
    ("vp", "pc"): "VP / predictor-corrector",
    ("cld", "sscs"): "CLD / SSCS",
    ("logvp-control", "em"): "log-space control (VP on log x, this project's) / EM",
}


def select(frame: pd.DataFrame, dataset: str, row: tuple[str, str]) -> pd.DataFrame:
    """The lines of ``metrics.csv`` or ``comparisons.csv`` of one row (method entry, sampler label) on one dataset."""
    entry, label = row
    return frame[(frame["dataset"] == dataset) & (frame["method"] == entry) & (frame["sampler"] == label)]


def per_seed(frame: pd.DataFrame, dataset: str, row: tuple[str, str], metric: str) -> pd.Series:
    """The metric of one row on one dataset, indexed by training seed (empty when the run lacks the row)."""
    return select(frame, dataset, row).set_index("seed")[metric].astype(float).sort_index()


def contrast(candidate: pd.Series, reference: pd.Series, *, paired: bool, level: float) -> dict:
    """Difference of seed means (candidate - reference) with its interval and verdict."""
    if paired:
        seeds = candidate.index.intersection(reference.index)
        differences = (candidate[seeds] - reference[seeds]).to_numpy()
        low, high = mean_interval(differences, level)
        result = {"difference": float(np.mean(differences)), "low": low, "high": high,
                  "df": len(differences) - 1, "verdict": verdict(low, high) if math.isfinite(low) else TOO_FEW}
    else:
        result = compare(Arm(tuple(candidate)), Arm(tuple(reference)), level=level)
    return {**result, "interval": "paired t" if paired else "Welch", "seeds": [len(candidate), len(reference)],
            "candidate_mean": float(candidate.mean()), "reference_mean": float(reference.mean())}


def findings(frame: pd.DataFrame, level: float = 0.95) -> list[dict]:
    """Every contrast on every dataset of the run and both metrics; contrasts whose rows the run lacks are skipped."""
    rows = []
    for dataset in sorted(frame["dataset"].unique()):
        for question, before, candidate, reference in CONTRASTS:
            for metric in METRICS:
                a, b = (per_seed(frame, dataset, row, metric) for row in (candidate, reference))
                if a.empty or b.empty or a.isna().any() or b.isna().any():
                    continue
                rows.append({"dataset": dataset, "question": question, "before": before,
                             "candidate": "/".join(candidate), "reference": "/".join(reference), "metric": metric,
                             **contrast(a, b, paired=candidate[0] == reference[0], level=level)})
    return rows


def percent(level: float) -> str:
    return f"{100 * level:g} %"


def markdown(rows: list[dict], level: float = 0.95) -> str:
    lines = [f"| dataset | question | metric | candidate | reference | difference [{percent(level)} interval] | "
             "interval | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['question']} | {METRICS[r['metric']]} | {r['candidate_mean']:.2f} | "
                     f"{r['reference_mean']:.2f} | {r['difference']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] | "
                     f"{r['interval']} | {r['verdict']} |")
    return "\n".join(lines) + "\n"


def rows_markdown(metrics: pd.DataFrame, comparisons: pd.DataFrame) -> str:
    """Per dataset and row: seed mean ± sd of FID and domain FD, class TV, largest collapse share, verdicts vs VP
    (at the level of the pipeline's comparisons, their ``level`` column)."""
    levels = comparisons["level"].unique() if "level" in comparisons else [0.95]
    if len(levels) != 1:
        raise ValueError(f"--comparisons: one interval level expected, the table holds {sorted(levels)}")
    level = percent(float(levels[0]))
    lines = []
    for dataset in sorted(metrics["dataset"].unique()):
        lines += [f"\n**{dataset}**\n", "| row | seeds | FID | domain FD | class TV | collapsed (max) | "
                  f"ΔFID vs VP [{level}] | verdict | Δdomain FD vs VP [{level}] | verdict |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row, name in ROW_NAMES.items():
            hit = select(metrics, dataset, row)
            if hit.empty:
                continue
            cells = [name, str(len(hit))]
            for metric, digits in (("fid", 1), ("domain_fd", 2)):
                cells.append(f"{hit[metric].mean():.{digits}f} ± {hit[metric].std(ddof=1):.{digits}f}")
            cells += [f"{hit['class_tv'].mean():.2f}", f"{100 * hit['collapse_any'].max():.1f} %"]
            versus = select(comparisons, dataset, row)
            for metric in METRICS:
                if versus.empty:
                    cells += ["baseline", "–"]
                    continue
                v = versus.iloc[0]
                cells += [f"{v[metric + '_difference']:+.2f} [{v[metric + '_low']:+.2f}, {v[metric + '_high']:+.2f}]",
                          str(v[metric + "_verdict"])]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", type=Path, default=Path("results/tables/metrics.csv"))
    parser.add_argument("--out", type=Path, default=Path("results/tables"))
    parser.add_argument("--comparisons", type=Path, help="the run's results/tables/comparisons.csv: also write rows.md")
    parser.add_argument("--level", type=float, default=0.95)
    args = parser.parse_args(argv)
    if not 0 < args.level < 1:
        parser.error(f"--level: must lie strictly between 0 and 1, got {args.level}")
    if not args.metrics.is_file():
        parser.error(f"--metrics: {args.metrics} does not exist (run the study first)")
    metrics = pd.read_csv(args.metrics)
    rows = findings(metrics, args.level)
    if not rows:
        parser.error(f"--metrics: {args.metrics} holds none of the study's rows (config/study.yaml)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "findings.json").write_text(json.dumps(rows, indent=1) + "\n")
    findings_table = markdown(rows, args.level)
    (args.out / "findings.md").write_text(findings_table)
    if args.comparisons:
        table = rows_markdown(metrics, pd.read_csv(args.comparisons))
        (args.out / "rows.md").write_text(table)
        print(table)
    print(findings_table)


if __name__ == "__main__":
    main()
