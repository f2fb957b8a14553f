"""Aggregation of per-run metrics into one tidy table, and the paper tables (CSV, Markdown, LaTeX).

``aggregate`` reads each evaluated sampler's ``metrics.json`` (from ``gbm score``) and ``samples.json``
(from ``gbm sample``) into one row per run; ``benchmark_table`` groups rows by dataset × method × sampler ×
step count and reports FID and KID as mean ± std over training seeds, with N, NFE and the reference split,
and the largest share of non-finite images (``nonfinite``, non-zero only for ``--allow-nonfinite`` samples).
Failed evaluations (``gbm.pipeline.failures``) are listed beside the tables, never left out silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from gbm.data.atomic import write_text_atomic

GROUP = ["dataset", "method", "sampler", "steps"]
PRIOR_NOTE = ("Prior: the start distribution x_T; for GBM 'iid' is the paper's per-channel log-normal, "
              "'correlated' (log-Gaussian with the data's full covariance) this project's extension, "
              "'class-mean' and 'authors' the authors' class-averaged start and hard-coded constants; "
              "'fixed' is an additive SDE's own Gaussian prior.")
GUIDANCE_MARK = "†"
GUIDANCE_NOTE = f"{GUIDANCE_MARK} closed-form kernel discriminator guidance, a reconstruction (SPEC §7), not the authors' recipe."


def _pick(values: dict, *names, default=None):
    """The first of ``names`` present in ``values`` (nested keys as ``a.b``)."""
    for name in names:
        node = values
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    return default


def evaluation_row(metrics_path: Path) -> dict:
    """One tidy row for ``results/{dataset}/{method}/seed{seed}/{sampler}/steps{K}/metrics.json``."""
    metrics_path = Path(metrics_path)
    eval_dir = metrics_path.parent
    seed_dir = eval_dir.parent.parent
    metrics = json.loads(metrics_path.read_text())
    stats_path = eval_dir / "samples.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    kid = _pick(metrics, "kid", default=None)
    return {
        "dataset": seed_dir.parent.parent.name,
        "method": seed_dir.parent.name,
        "seed": int(seed_dir.name.removeprefix("seed")),
        "sampler": eval_dir.parent.name,
        "sampler_method": _pick(stats, "sampler", default=eval_dir.parent.name),
        "guided": bool(stats.get("guidance")),
        "prior": _prior_label(stats),
        "steps": int(eval_dir.name.removeprefix("steps")),
        "nfe": _pick(stats, "nfe", "meta.nfe"),
        "n": _pick(metrics, "n_fake", "n", "counts.fake", "num_fake", "n_samples"),
        "n_reference": _pick(metrics, "n_real", "counts.real", "num_real", "n_reference"),
        "reference_split": _pick(metrics, "real_split", "reference_split", "split", default="test"),
        "fid": _pick(metrics, "fid", "FID"),
        "kid": _pick(metrics, "kid_mean", "kid.mean", "KID") if not isinstance(kid, (int, float)) else kid,
        "kid_subset_std": _pick(metrics, "kid_std", "kid.std"),
        "precision": _pick(metrics, "precision"),
        "recall": _pick(metrics, "recall"),
        "feature_extractor": _pick(metrics, "feature_extractor", "extractor"),
        "library": _pick(metrics, "library"),
        "fraction_clamped": _pick(stats, "fraction_clamped"),
        "fraction_negative": _pick(stats, "fraction_negative"),
        "nonfinite": _pick(stats, "nonfinite", default=0.0),
        "sample_wall_s": _pick(stats, "wall_time_s", "wall_time", "wall_s"),
        "score_wall_s": _pick(metrics, "wall_time_s", "wall_time", "wall_s"),
        "path": str(eval_dir),
    }


def _prior_label(stats: dict) -> str:
    """The start distribution of a sample file: its prior, with a low rank as ``correlated (rank 64)``."""
    prior = stats.get("prior")
    if prior is None:
        return "n/a"  # samples.json from before named priors
    rank = (stats.get("prior_options") or {}).get("rank")
    return f"{prior} (rank {rank})" if rank else prior


def aggregate(metrics_paths: list[Path]) -> pd.DataFrame:
    if not metrics_paths:
        raise ValueError("metrics: no metrics.json files given")
    rows = [evaluation_row(Path(p)) for p in metrics_paths]
    return pd.DataFrame(rows).sort_values(GROUP + ["seed"]).reset_index(drop=True)


FAILED_COLUMNS = ["dataset", "method", "seed", "sampler", "steps", "stage", "reason", "path"]


def failed_table(failed: list[tuple[Path, Path]]) -> pd.DataFrame:
    """``failed.csv``: one row per failed evaluation ``(eval_dir, sample log)``, the reason read from its log."""
    from gbm.pipeline.failures import failed_row, sampling_failure

    rows = [failed_row(eval_dir, sampling_failure(log)) for eval_dir, log in failed]
    return pd.DataFrame(rows, columns=FAILED_COLUMNS)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def benchmark_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per dataset × method × sampler × step count."""
    rows = []
    for key, group in runs.groupby(GROUP, sort=False):
        fid_mean, fid_std = _mean_std(group["fid"])
        kid_mean, kid_std = _mean_std(group["kid"])
        rows.append(dict(zip(GROUP, key), nfe=group["nfe"].dropna().mean() if group["nfe"].notna().any() else math.nan,
                         n=group["n"].iloc[0], reference_split=group["reference_split"].iloc[0],
                         guided=bool(group["guided"].any()) if "guided" in group else False,
                         prior=", ".join(sorted(set(group["prior"]))) if "prior" in group else "n/a",
                         nonfinite=float(group["nonfinite"].fillna(0).max()) if "nonfinite" in group else 0.0,
                         seeds=len(group), fid_mean=fid_mean, fid_std=fid_std, kid_mean=kid_mean, kid_std=kid_std))
    return pd.DataFrame(rows)


def floor_table(floor_paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in floor_paths:
        path = Path(path)
        values = json.loads(path.read_text())
        rows.append({
            "dataset": _pick(values, "dataset", "name", default=path.parent.name),
            "split": _pick(values, "split", "fake_split", default="train"),
            "reference_split": _pick(values, "reference_split", "real_split", default="test"),
            "n": _pick(values, "n", "n_fake", "counts.fake"),
            "fid": _pick(values, "fid", "FID"),
            "kid": _pick(values, "kid_mean", "kid.mean"),
            "kid_subset_std": _pick(values, "kid_std", "kid.std"),
        })
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, digits: int, latex: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    pm = r" $\pm$ " if latex else " ± "
    spread = "–" if std is None or math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{spread}"


def _display(table: pd.DataFrame, latex: bool = False) -> pd.DataFrame:
    shown = pd.DataFrame({
        "Dataset": table["dataset"],
        "Method": table["method"],
        "Sampler": [f"{s} + guidance{GUIDANCE_MARK}" if g else s for s, g in zip(table["sampler"], table["guided"])],
        "Prior": table["prior"],
        "Steps": table["steps"].astype(int),
        "NFE": table["nfe"].map(lambda v: "n/a" if pd.isna(v) else f"{v:.0f}"),
        "N": table["n"].map(lambda v: "n/a" if pd.isna(v) else f"{int(v)}"),
        "Ref.": table["reference_split"],
        "Seeds": table["seeds"],
        "FID": [_pm(m, s, 2, latex) for m, s in zip(table["fid_mean"], table["fid_std"])],
        "KID ×10³": [_pm(1e3 * m, 1e3 * s, 2, latex) for m, s in zip(table["kid_mean"], table["kid_std"])],
    })
    if (table["nonfinite"] > 0).any():
        shown["Non-finite %"] = [f"{100 * v:.1f}" for v in table["nonfinite"]]
    return shown


def _floor_display(floor: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "Dataset": floor["dataset"],
        "Split vs ref.": floor["split"].astype(str) + " vs " + floor["reference_split"].astype(str),
        "N": floor["n"],
        "FID": floor["fid"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{v:.2f}"),
        "KID ×10³": floor["kid"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{1e3 * v:.2f}"),
    })


def markdown(table: pd.DataFrame, caption: str) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([f"{caption}\n", header, rule, *body]) + "\n"


def latex(table: pd.DataFrame, caption: str, label: str) -> str:
    def cell(value) -> str:
        text = str(value).replace("_", r"\_").replace("×10³", r"$\times 10^3$").replace("–", "--")
        return text

    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{cell(caption)}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{" + "l" * 4 + "r" * (len(table.columns) - 4) + "}", r"\toprule",
             " & ".join(cell(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(cell(v) for v in row) + r" \\" for row in table.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(runs: pd.DataFrame, floor: pd.DataFrame, out_dir: Path, name: str,
                 failed: pd.DataFrame | None = None) -> list[Path]:
    """benchmark.{csv,md,tex} and floor.{csv,md,tex} under ``out_dir``; returns the paths written.

    ``failed`` (``failed.csv``): evaluations without metrics, named under the Markdown table and in the caption."""
    out_dir = Path(out_dir)
    table = benchmark_table(runs)
    n = ", ".join(sorted({str(int(v)) for v in table["n"].dropna()})) or "n/a"
    caption = (f"Benchmark '{name}': FID and KID (mean ± std over training seeds) with N = {n} samples per "
               f"sampler against the reference split; TF-Inception pool3 features.")
    caption += " " + PRIOR_NOTE
    if table["guided"].any():
        caption += " " + GUIDANCE_NOTE
    if (table["nonfinite"] > 0).any():
        caption += (" Non-finite %: share of images whose sampler state became NaN or infinite (sampled with "
                    "--allow-nonfinite); their FID/KID are not those of a working sampler.")
    failures = ""
    if failed is not None and len(failed):
        caption += f" {len(failed)} evaluation(s) failed and are not in the table (failed.csv)."
        failures = "\nFailed evaluations (no metrics):\n\n" + "\n".join(
            f"- {r.dataset} / {r.method} / seed {r.seed} / {r.sampler} / {r.steps} steps: {r.reason}"
            for r in failed.itertuples(index=False)) + "\n"
    floor_caption = f"Real-vs-real floor (benchmark '{name}'): the same N and feature extractor."
    written = {
        "benchmark.csv": table.to_csv(index=False),
        "benchmark.md": markdown(_display(table), caption) + failures,
        "benchmark.tex": latex(_display(table, latex=True), caption.replace("±", r"$\pm$"), "tab:benchmark"),
        "floor.csv": floor.to_csv(index=False),
        "floor.md": markdown(_floor_display(floor), floor_caption),
        "floor.tex": latex(_floor_display(floor), floor_caption, "tab:floor"),
    }
    for filename, text in written.items():
        write_text_atomic(out_dir / filename, text)
    return [out_dir / f for f in written]
