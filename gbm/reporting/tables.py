"""Aggregation of per-run metrics into one tidy table, and the paper tables (CSV, Markdown, LaTeX).

``aggregate`` reads each evaluated sampler's ``metrics.json`` (from ``gbm score``) and ``samples.json``
(from ``gbm sample``) into one row per run; ``benchmark_table`` groups rows by dataset × method × sampler ×
step count and reports FID and KID as mean ± std over training seeds, with N, NFE and the reference split,
the t interval of the seed mean over seeds (``gbm.metrics.seeds``; one seed: that evaluation's own interval
over its samples), FID_inf (N-debiased FID, ``gbm.metrics.uncertainty``, where N allows it) and the largest share
of non-finite images (``nonfinite``, non-zero only for ``--allow-nonfinite`` samples). Failed evaluations
(``gbm.reporting.failures``) are listed beside the tables, never left out silently.

Scored with ``--classifier`` (docs/domain-metrics.md), each row also carries the domain FD and KID (mean ± std
over seeds, the seed mean's interval like FID's), class TV, the confident share and the largest collapse share
over its seeds; a row with a collapsed evaluation (``collapse.flagged``) is marked in the Markdown table and
named under it with its seed and shares. Without those blocks the columns are empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from gbm.data.atomic import write_text_atomic
from gbm.pipeline.layout import Evaluation
from gbm.reporting.domain import (COLLAPSE_MARK, DOMAIN_NOTE, collapse_note, collapse_rule, domain_columns, flagged,
                                  has_domain, interval_bounds)
from gbm.reporting.formats import latex, markdown

GROUP = ["dataset", "method", "sampler", "steps"]
PRIOR_NOTE = ("Prior: the start distribution x_T; for GBM 'iid' is the paper's per-channel log-normal, "
              "'correlated' (log-Gaussian with the data's full covariance) this project's extension, "
              "'class-mean' each class's mean image pushed through this SDE's kernel (a variant of the authors' "
              "class-averaged start, docs/priors.md), 'authors' the authors' hard-coded constants; "
              "'fixed' is an additive SDE's own Gaussian prior.")
GUIDANCE_MARK = "†"
GUIDANCE_NOTE = f"{GUIDANCE_MARK} closed-form kernel discriminator guidance, a reconstruction (SPEC §7), not the authors' recipe."


def pick(values: dict, *names, default=None):
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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _scalars(prefix: str, values: dict, into: dict) -> dict:
    """``prefix.key`` for every number, string or boolean in ``values`` (nested keys joined by dots)."""
    for key, value in values.items():
        if isinstance(value, dict):
            _scalars(f"{prefix}.{key}", value, into)
        elif isinstance(value, (int, float, str, bool)):
            into[f"{prefix}.{key}"] = value
    return into


def training_settings(record: dict) -> dict:
    """The settings a training record (``train_metrics.json``, written with ``model.pt``) holds: the method and
    its SDE parameters (``sde.name``, ``sde.sigma``, ``sde.T``, ...; per-channel fitted statistics, lists, left
    out), the loss and its options (``loss.weighting``, ...), the network and the training budget."""
    settings = _scalars("sde", {k: v for k, v in record.get("sde", {}).items() if k != "score_kind"}, {})
    _scalars("loss", record.get("loss_options", {}), settings)
    settings.update({f"train.{k}": record[k] for k in ("steps", "ema_decay") if k in record})
    settings.update({k: record[k] for k in ("parameterisation", "backbone", "params") if k in record})
    return settings


def sampling_settings(stats: dict) -> dict:
    """The settings a sample record (``samples.json``) holds beyond the tidy row's own columns: each sampler
    option given (``option.delta``, ...; the grid and end time have their resolved columns), each prior option
    (``prior_option.rank``), the last network level and the first image seed."""
    options = {k: v for k, v in (stats.get("options") or {}).items() if k not in ("grid", "end_time")}
    settings = _scalars("option", options, {})
    _scalars("prior_option", stats.get("prior_options") or {}, settings)
    settings.update({k: stats[k] for k in ("last_network_level", "seed_start") if k in stats})
    return settings


def evaluation_row(metrics_path: Path) -> dict:
    """One tidy row for ``results/{dataset}/{method}/seed{seed}/{sampler}/steps{K}/metrics.json``: where it lies
    (``gbm.pipeline.layout``), its scores, and the settings that made it as its records state them: the sample
    record ``samples.json`` beside it and the training record ``run/train_metrics.json`` of its model."""
    metrics_path = Path(metrics_path)
    eval_dir = metrics_path.parent
    evaluation = Evaluation.from_directory(eval_dir)
    metrics = json.loads(metrics_path.read_text())
    stats = _read_json(eval_dir / "samples.json")
    training = _read_json(Path(evaluation.run.run_dir) / "train_metrics.json")
    if "seed" in training and training["seed"] != evaluation.seed:
        raise ValueError(f"{evaluation.run.run_dir}/train_metrics.json: training seed {training['seed']} in a "
                         f"directory of seed {evaluation.seed}")
    kid = pick(metrics, "kid", default=None)
    row = {
        "dataset": evaluation.dataset,
        "method": evaluation.method,
        "seed": evaluation.seed,
        "sampler": evaluation.sampler,
        "sampler_method": pick(stats, "sampler", default=evaluation.sampler),
        "guided": bool(stats.get("guidance")),
        "prior": _prior_label(stats),
        "grid": pick(stats, "grid", "options.grid", default=None),
        "end_time": pick(stats, "end_time", "options.end_time", default=None),
        "steps": evaluation.steps,
        "nfe": pick(stats, "nfe", "meta.nfe"),
        "n": pick(metrics, "n_fake", "n", "counts.fake", "num_fake", "n_samples"),
        "n_reference": pick(metrics, "n_real", "counts.real", "num_real", "n_reference"),
        "reference_split": pick(metrics, "real_split", "reference_split", "split", default="test"),
        "fid": pick(metrics, "fid", "FID"),
        "kid": pick(metrics, "kid_mean", "kid.mean", "KID") if not isinstance(kid, (int, float)) else kid,
        "kid_subset_std": pick(metrics, "kid_std", "kid.std"),
        "fid_ci_low": interval_bounds(metrics, "fid_ci")[0],
        "fid_ci_high": interval_bounds(metrics, "fid_ci")[1],
        "kid_ci_low": interval_bounds(metrics, "kid_ci")[0],
        "kid_ci_high": interval_bounds(metrics, "kid_ci")[1],
        "ci_level": pick(metrics, "protocol.intervals.level"),
        "fid_inf": pick(metrics, "fid_inf"),
        "precision": pick(metrics, "precision"),
        "recall": pick(metrics, "recall"),
        "feature_extractor": pick(metrics, "feature_extractor", "extractor"),
        "library": pick(metrics, "library"),
        "fraction_clamped": pick(stats, "fraction_clamped"),
        "fraction_negative": pick(stats, "fraction_negative"),
        "nonfinite": pick(stats, "nonfinite", default=0.0),
        "sample_wall_s": pick(stats, "wall_time_s", "wall_time", "wall_s"),
        "score_wall_s": pick(metrics, "wall_time_s", "wall_time", "wall_s"),
        **domain_columns(metrics),
        "path": str(eval_dir),
    }
    return row | training_settings(training) | sampling_settings(stats)


def _prior_label(stats: dict) -> str:
    """The start distribution of a sample file: its prior, with a low rank as ``correlated (rank 64)``."""
    prior = stats.get("prior")
    if prior is None:
        return "n/a"  # samples.json from before named priors
    rank = (stats.get("prior_options") or {}).get("rank")
    return f"{prior} (rank {rank})" if rank else prior


def aggregate(metrics_paths: list[Path]) -> pd.DataFrame:
    """``metrics.csv``: one row per evaluation (``evaluation_row``), its own columns first, then the settings
    columns in name order (a setting no record of a row holds is empty there)."""
    if not metrics_paths:
        raise ValueError("metrics: no metrics.json files given")
    rows = [evaluation_row(Path(p)) for p in metrics_paths]
    own = list(rows[0])[:list(rows[0]).index("path") + 1]
    settings = sorted({key for row in rows for key in row} - set(own))
    return pd.DataFrame(rows, columns=own + settings).sort_values(GROUP + ["seed"]).reset_index(drop=True)


FAILED_COLUMNS = ["dataset", "method", "seed", "sampler", "steps", "stage", "reason", "path"]


def failed_table(failed: list[tuple[Path, Path]]) -> pd.DataFrame:
    """``failed.csv``: one row per failed evaluation ``(eval_dir, sample log)``, the reason read from its log."""
    from gbm.reporting.failures import failed_row, sampling_failure

    rows = [failed_row(eval_dir, sampling_failure(log)) for eval_dir, log in failed]
    return pd.DataFrame(rows, columns=FAILED_COLUMNS)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if values.empty:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


#: What an interval of the seed mean is over: the seeds (t interval), or one seed's samples.
OVER_SEEDS, OVER_SAMPLES = "seeds", "samples (1 seed)"


def seed_mean_interval(group: pd.DataFrame, metric: str) -> tuple[float, float, float, str]:
    """The interval of the seed mean printed beside it, its level and what it is over: with two or more seeds
    the t interval over seeds (``gbm.metrics.seeds.mean_interval``), with one seed that evaluation's own
    interval over its samples; NaN bounds when there is no level (scored without intervals)."""
    from gbm.metrics.seeds import mean_interval

    levels = group["ci_level"].dropna().unique() if "ci_level" in group else []
    if len(levels) != 1 or metric not in group or not group[metric].astype(float).map(math.isfinite).all():
        return math.nan, math.nan, math.nan, ""
    level = float(levels[0])
    if len(group) == 1:
        return float(group[f"{metric}_ci_low"].iloc[0]), float(group[f"{metric}_ci_high"].iloc[0]), level, OVER_SAMPLES
    low, high = mean_interval(group[metric].astype(float), level)
    return low, high, level, OVER_SEEDS


def _domain_summary(group: pd.DataFrame) -> dict:
    """The domain and collapse columns of one benchmark row (NaN/empty where the runs have none)."""
    group = group.assign(**{c: math.nan for c in domain_columns({}) if c not in group})
    fd_mean, fd_std = _mean_std(group["domain_fd"])
    kid_mean, kid_std = _mean_std(group["domain_kid"])
    fd_low, fd_high, _, _ = seed_mean_interval(group, "domain_fd")
    kid_low, kid_high, _, _ = seed_mean_interval(group, "domain_kid")
    collapsed = group[flagged(group)].sort_values("seed")
    return dict(domain_fd_mean=fd_mean, domain_fd_std=fd_std, domain_fd_ci_low=fd_low, domain_fd_ci_high=fd_high,
                domain_fd_inf=_mean_std(group["domain_fd_inf"])[0], domain_kid_mean=kid_mean, domain_kid_std=kid_std,
                domain_kid_ci_low=kid_low, domain_kid_ci_high=kid_high, class_tv_mean=_mean_std(group["class_tv"])[0],
                confident_share_mean=_mean_std(group["confident_share"])[0],
                collapse_max=float(group["collapse_any"].astype(float).max()),
                collapsed_seeds=" ".join(str(int(s)) for s in collapsed["seed"]),
                collapsed="; ".join(collapse_note(r) for r in collapsed.to_dict("records")))


def benchmark_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per dataset × method × sampler × step count, the seed mean's interval, FID_inf;
    then the domain metrics the same way, the largest collapse share and the collapsed seeds
    (``_domain_summary``)."""
    rows = []
    group_by = GROUP[:3] + (["prior"] if "prior" in runs else []) + GROUP[3:]
    for key, group in runs.groupby(group_by, sort=False, dropna=False):
        fid_mean, fid_std = _mean_std(group["fid"])
        kid_mean, kid_std = _mean_std(group["kid"])
        fid_low, fid_high, level, over = seed_mean_interval(group, "fid")
        kid_low, kid_high, _, _ = seed_mean_interval(group, "kid")
        fid_inf = _mean_std(group["fid_inf"])[0] if "fid_inf" in group else math.nan
        rows.append(dict(zip(group_by, key), nfe=group["nfe"].dropna().mean() if group["nfe"].notna().any() else math.nan,
                         n=group["n"].iloc[0], reference_split=group["reference_split"].iloc[0],
                         guided=bool(group["guided"].any()) if "guided" in group else False,
                         prior=", ".join(sorted(set(group["prior"]))) if "prior" in group else "n/a",
                         nonfinite=float(group["nonfinite"].fillna(0).max()) if "nonfinite" in group else 0.0,
                         seeds=len(group), fid_mean=fid_mean, fid_std=fid_std, kid_mean=kid_mean, kid_std=kid_std,
                         ci_level=level, ci_over=over, fid_ci_low=fid_low, fid_ci_high=fid_high, kid_ci_low=kid_low,
                         kid_ci_high=kid_high, fid_inf=fid_inf) | _domain_summary(group))
    return pd.DataFrame(rows)


def floor_table(floor_paths: list[Path]) -> pd.DataFrame:
    rows = []
    for path in floor_paths:
        path = Path(path)
        values = json.loads(path.read_text())
        rows.append({
            "dataset": pick(values, "dataset", "name", default=path.parent.name),
            "split": pick(values, "split", "fake_split", default="train"),
            "reference_split": pick(values, "reference_split", "real_split", default="test"),
            "n": pick(values, "n", "n_fake", "counts.fake"),
            "fid": pick(values, "fid", "FID"),
            "kid": pick(values, "kid_mean", "kid.mean"),
            "kid_subset_std": pick(values, "kid_std", "kid.std"),
            "fid_ci_low": interval_bounds(values, "fid_ci")[0],
            "fid_ci_high": interval_bounds(values, "fid_ci")[1],
            "fid_inf": pick(values, "fid_inf"),
            **{k: v for k, v in domain_columns(values).items() if not k.startswith("collapse_")
               or k == "collapse_any"},
        })
    return pd.DataFrame(rows)


def _pm(mean: float, std: float, digits: int, latex: bool = False) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    pm = r" $\pm$ " if latex else " ± "
    spread = "–" if std is None or math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f}{pm}{spread}"


def _ci(low, high, scale: float = 1.0) -> str:
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return "n/a"
    return f"[{scale * low:.2f}, {scale * high:.2f}]"


def _number(value, digits: int = 2) -> str:
    return "n/a" if value is None or pd.isna(value) else f"{value:.{digits}f}"


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
        "FID CI": [_ci(lo, hi) for lo, hi in zip(table["fid_ci_low"], table["fid_ci_high"])],
        "FID∞": table["fid_inf"].map(_number),
        "KID ×10³": [_pm(1e3 * m, 1e3 * s, 2, latex) for m, s in zip(table["kid_mean"], table["kid_std"])],
        "KID ×10³ CI": [_ci(lo, hi, 1e3) for lo, hi in zip(table["kid_ci_low"], table["kid_ci_high"])],
    })
    if (table["nonfinite"] > 0).any():
        shown["Non-finite %"] = [f"{100 * v:.1f}" for v in table["nonfinite"]]
    if has_domain(table, "domain_fd_mean"):
        shown["Domain FD"] = [_pm(m, s, 2, latex) for m, s in zip(table["domain_fd_mean"], table["domain_fd_std"])]
        shown["Domain FD CI"] = [_ci(lo, hi) for lo, hi in zip(table["domain_fd_ci_low"], table["domain_fd_ci_high"])]
        shown["Domain KID"] = [_pm(m, s, 3, latex) for m, s in zip(table["domain_kid_mean"], table["domain_kid_std"])]
        shown["Class TV"] = table["class_tv_mean"].map(lambda v: _number(v, 3))
        shown["Confident %"] = table["confident_share_mean"].map(lambda v: _number(100 * v, 1))
    if has_domain(table, "collapse_max"):
        marked = table["collapsed_seeds"].fillna("").astype(str) != ""
        shown["Collapsed %"] = [_number(100 * v, 1) + (f" {COLLAPSE_MARK}" if m else "")
                                for v, m in zip(table["collapse_max"], marked)]
        shown["Sampler"] = [f"{s} {COLLAPSE_MARK}" if m else s for s, m in zip(shown["Sampler"], marked)]
    return shown


def collapse_notes(table: pd.DataFrame) -> list[str]:
    """One line per row with a collapsed evaluation: the row, then each collapsed seed and its shares."""
    if "collapsed" not in table:
        return []
    return [f"{COLLAPSE_MARK} collapsed: {r.dataset} / {r.method} / {r.sampler} / {int(r.steps)} steps: {r.collapsed}"
            for r in table.itertuples(index=False) if isinstance(r.collapsed, str) and r.collapsed]


def _floor_display(floor: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({
        "Dataset": floor["dataset"],
        "Split vs ref.": floor["split"].astype(str) + " vs " + floor["reference_split"].astype(str),
        "N": floor["n"],
        "FID": floor["fid"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{v:.2f}"),
        "FID CI": [_ci(lo, hi) for lo, hi in zip(floor["fid_ci_low"], floor["fid_ci_high"])],
        "FID∞": floor["fid_inf"].map(_number),
        "KID ×10³": floor["kid"].map(lambda v: "n/a" if v is None or pd.isna(v) else f"{1e3 * v:.2f}"),
    })
    if has_domain(floor, "domain_fd"):
        shown["Domain FD"] = floor["domain_fd"].map(_number)
        shown["Domain FD CI"] = [_ci(lo, hi) for lo, hi in zip(floor["domain_fd_ci_low"], floor["domain_fd_ci_high"])]
        shown["Domain KID"] = floor["domain_kid"].map(lambda v: _number(v, 3))
        shown["Class TV"] = floor["class_tv"].map(lambda v: _number(v, 3))
        shown["Confident %"] = floor["confident_share"].map(lambda v: _number(100 * v, 1))
    return shown


def write_tables(runs: pd.DataFrame, floor: pd.DataFrame, out_dir: Path, name: str,
                 failed: pd.DataFrame | None = None) -> list[Path]:
    """benchmark.{csv,md,tex}, floor.{csv,md,tex} and the ablation table ablation.{csv,md}
    (``gbm.reporting.ablation``, from the settings columns of ``runs``) under ``out_dir``; returns the paths
    written.

    ``failed`` (``failed.csv``): evaluations without metrics, named under the Markdown table and in the caption."""
    from gbm.reporting.ablation import ablation_caption, ablation_display, ablation_table

    out_dir = Path(out_dir)
    table = benchmark_table(runs)
    n = ", ".join(sorted({str(int(v)) for v in table["n"].dropna()})) or "n/a"
    levels = sorted({f"{100 * v:g}%" for v in table["ci_level"].dropna()}) or ["n/a"]
    caption = (f"Benchmark '{name}': FID and KID (mean ± std over training seeds) with N = {n} samples per "
               f"sampler against the reference split; TF-Inception pool3 features. CI: {', '.join(levels)} "
               f"interval of the seed mean printed: a t interval over training seeds (exact for normal per-seed "
               f"values), or with one seed that model's interval over its samples (reference fixed). "
               f"FID∞: N-debiased FID (Chong & Forsyth 2020), mean over seeds; n/a below N = 4096, where FID is "
               f"not linear in 1/N in 2048-d features.")
    caption += " " + PRIOR_NOTE
    if table["guided"].any():
        caption += " " + GUIDANCE_NOTE
    if has_domain(table, "domain_fd_mean"):
        caption += " " + DOMAIN_NOTE
    if has_domain(table, "collapse_max"):
        caption += " " + collapse_rule()
    if (table["nonfinite"] > 0).any():
        caption += (" Non-finite %: share of images whose sampler state became NaN or infinite (sampled with "
                    "--allow-nonfinite); their FID/KID are not those of a working sampler.")
    failures = ""
    if failed is not None and len(failed):
        caption += f" {len(failed)} evaluation(s) failed and are not in the table (failed.csv)."
        failures = "\nFailed evaluations (no metrics):\n\n" + "\n".join(
            f"- {r.dataset} / {r.method} / seed {r.seed} / {r.sampler} / {r.steps} steps: {r.reason}"
            for r in failed.itertuples(index=False)) + "\n"
    notes = collapse_notes(table)
    collapsed = "\nCollapsed evaluations (in the means above; not a working sampler):\n\n" + "\n".join(
        f"- {note}" for note in notes) + "\n" if notes else ""
    floor_caption = (f"Real-vs-real floor (benchmark '{name}'): the same N and feature extractor; CI: interval of "
                     f"the printed FID over random halves of the training subset (reference fixed); FID∞ the "
                     f"N-debiased FID, near 0 when unbiased (n/a below N = 4096).")
    if has_domain(floor, "domain_fd"):
        floor_caption += (" Domain FD (CI over random halves, like FID's), domain KID, class TV and confident %: "
                          "the same metrics in the dataset's classifier features, the values a model is read against.")
    latex_caption = caption.replace("±", r"$\pm$") + "".join(f" {note}." for note in notes)
    written = {
        "benchmark.csv": table.to_csv(index=False),
        "benchmark.md": markdown(_display(table), caption) + collapsed + failures,
        "benchmark.tex": latex(_display(table, latex=True), latex_caption, "tab:benchmark"),
        "floor.csv": floor.to_csv(index=False),
        "floor.md": markdown(_floor_display(floor), floor_caption),
        "floor.tex": latex(_floor_display(floor), floor_caption, "tab:floor"),
    }
    ablation = ablation_table(table, runs)
    written["ablation.csv"] = ablation.to_csv(index=False)
    written["ablation.md"] = markdown(ablation_display(ablation), ablation_caption(runs, name))
    for filename, text in written.items():
        write_text_atomic(out_dir / filename, text)
    return [out_dir / f for f in written]
