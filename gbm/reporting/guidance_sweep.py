"""The guidance weight sweep (issue 18): which kernel-discriminator-guidance weight and bank size (SPEC §7,
a reconstruction) to use, measured on a validation slice of the training split, never the test split.

Config section ``guidance_sweep`` (``sweep_spec`` fills the defaults): for each listed ``{method, sampler}``
entry of ``methods`` and each dataset, the model of training seed ``seed`` samples ``n_samples`` images at
``steps`` steps unguided (weight 0) and with every ``weights`` x ``bank_sizes`` setting, the bank drawn from
``train-minus-validation-V`` and the samples scored against ``validation-V`` (the last V training images,
``gbm.data.prepared.resolve_split``). ``gbm report guidance-sweep`` turns the scores into a table with the
memorisation check (``gbm.guidance.memorisation_check``) and the pick (``pick_settings``), and a figure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gbm.pipeline.layout import SWEEP_ROOT, Evaluation, data_file, parse_sweep_directory, sweep_directory

DEFAULTS = {"seed": 0, "validation": 1000, "n_samples": 200, "steps": 100, "batch_bank": None,
            "guidance": {"schedule": "clean", "kernel": "polyharmonic", "repel": False}}
MEMORISATION_FLOOR = 0.9  # a picked setting keeps its samples' nearest-bank distance >= 0.9 x the bank's own spacing
RELATIVE_MARGIN = 0.05  # and beats the unguided KID by at least 5 % (the KID subset std vanishes when N <= subset size)


@dataclass(frozen=True)
class SweepRun:
    """One sampled setting of the sweep: unguided (``weight`` 0, ``bank_size`` None) or guided."""

    dataset: str
    method: str
    seed: int
    sampler: str
    steps: int
    weight: float
    bank_size: int | None

    @property
    def setting(self) -> str:
        return "unguided" if self.bank_size is None else f"w{self.weight:g}_bank{self.bank_size}"

    @property
    def directory(self) -> str:
        evaluation = Evaluation(self.dataset, self.method, self.seed, self.sampler, self.steps, SWEEP_ROOT)
        return sweep_directory(evaluation, self.setting)


def sweep_spec(config: dict) -> dict | None:
    """The ``guidance_sweep`` section with its defaults (None when the config has none)."""
    section = config.get("guidance_sweep")
    if section is None:
        return None
    spec = {**DEFAULTS, "datasets": list(config["datasets"]), **section}
    spec["guidance"] = {**DEFAULTS["guidance"], **section.get("guidance", {})}
    return spec


def check_sweep(config: dict) -> None:
    """Cross-field checks of ``guidance_sweep`` (the schema checks types), naming the key."""
    spec = sweep_spec(config)
    if spec is None:
        return
    from gbm.guidance import GuidanceOptions

    for dataset in spec["datasets"]:
        if dataset not in config["datasets"]:
            raise ValueError(f"config key 'guidance_sweep.datasets': dataset {dataset!r} is not in 'datasets'")
    if spec["seed"] not in config["seeds"]:
        raise ValueError(f"config key 'guidance_sweep.seed': seed {spec['seed']} is not in 'seeds' {config['seeds']}")
    for i, entry in enumerate(spec["samplers"]):
        method, sampler = entry["method"], entry["sampler"]
        if method not in config["methods"]:
            raise ValueError(f"config key 'guidance_sweep.samplers[{i}].method': {method!r} is not an entry of 'methods'")
        if sampler not in config["methods"][method]["samplers"]:
            raise ValueError(f"config key 'guidance_sweep.samplers[{i}].sampler': {sampler!r} is not a sampler label "
                             f"of methods.{method}")
        if config["methods"][method]["samplers"][sampler].get("guidance") is not None:
            raise ValueError(f"config key 'guidance_sweep.samplers[{i}].sampler': {sampler!r} is already guided; "
                             "name its unguided label")
    if spec["validation"] < spec["n_samples"]:
        raise ValueError(f"config key 'guidance_sweep.validation': the validation slice ({spec['validation']} images) "
                         f"must hold at least n_samples = {spec['n_samples']} reference images")
    for bank_size in spec["bank_sizes"]:
        try:
            GuidanceOptions(**spec["guidance"], bank_size=bank_size, batch_bank=spec["batch_bank"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"config key 'guidance_sweep': {error}") from None


def sweep_runs(config: dict) -> list[SweepRun]:
    """Every sampled setting of the sweep (the unguided baseline once per model and sampler)."""
    spec = sweep_spec(config)
    if spec is None:
        return []
    runs = []
    for dataset in spec["datasets"]:
        for entry in spec["samplers"]:
            base = dict(dataset=dataset, method=entry["method"], seed=spec["seed"], sampler=entry["sampler"],
                        steps=spec["steps"])
            runs.append(SweepRun(**base, weight=0.0, bank_size=None))
            runs += [SweepRun(**base, weight=float(w), bank_size=b)
                     for w in spec["weights"] if w > 0 for b in spec["bank_sizes"]]
    return runs


def guidance_args(spec: dict, run: SweepRun) -> list[str]:
    """``gbm sample`` guidance flags of a sweep setting (none for the unguided baseline)."""
    if run.bank_size is None:
        return []
    options = spec["guidance"] | {"weight": run.weight, "bank_size": run.bank_size, "batch_bank": spec["batch_bank"]}
    args = ["--guidance-data", f"{data_file(run.dataset)}:train-minus-validation-{spec['validation']}"]
    for key, value in options.items():
        args += ["--guidance", f"{key}={json.dumps(value)}"]
    return args


def _row(metrics_path: Path) -> dict:
    """One sweep row from ``metrics.json`` and the ``samples.json`` beside it (the guidance record)."""
    metrics = json.loads(metrics_path.read_text())
    stats = json.loads((metrics_path.parent / "samples.json").read_text())
    guidance = stats.get("guidance") or {}
    evaluation, _ = parse_sweep_directory(metrics_path.parent)
    return {
        "dataset": evaluation.dataset, "method": evaluation.method, "seed": evaluation.seed,
        "sampler": evaluation.sampler,
        "steps": stats["steps"], "weight": float(guidance.get("weight", 0.0)),
        "bank_size": guidance.get("bank_size"), "batch_bank": guidance.get("batch_bank"),
        "normalise": guidance.get("normalise"), "schedule": guidance.get("schedule"), "kernel": guidance.get("kernel"),
        "n": metrics.get("n_fake"), "reference": metrics.get("real"), "fid": metrics["fid"],
        "kid": metrics["kid_mean"], "kid_subset_std": metrics["kid_std"], "precision": metrics.get("precision"),
        "recall": metrics.get("recall"), "sample_wall_s": stats.get("wall_time_s"), "path": str(metrics_path.parent),
    }


def _pixels(images: np.ndarray) -> "torch.Tensor":  # noqa: F821
    import torch

    return torch.from_numpy(images.astype(np.float64) / 255.0)


def memorisation_columns(rows: pd.DataFrame, data: Path) -> pd.DataFrame:
    """Add the memorisation check of each guided row against its own bank (pixel L2 in [0, 1] units):
    nearest-bank distance of its samples and of the unguided samples of the same model and sampler."""
    from gbm.guidance import bank_images_from_file, bank_indices, memorisation_check

    rows = rows.copy()
    for column in ("nearest_bank_distance", "distance_ratio_to_unguided", "fraction_copies", "bank_spacing"):
        rows[column] = math.nan
    key = ["dataset", "method", "seed", "sampler", "steps"]
    for _, group in rows.groupby(key):
        baseline = group[group["bank_size"].isna()]
        if baseline.empty:
            raise ValueError(f"guidance sweep: no unguided run for {dict(zip(key, group.iloc[0][key]))}")
        unguided = _pixels(np.load(Path(baseline.iloc[0]["path"]) / "samples.npz")["images"])
        for index, row in group[group["bank_size"].notna()].iterrows():
            stats = json.loads((Path(row["path"]) / "samples.json").read_text())["guidance"]
            images, _ = bank_images_from_file(f"{data}:{stats['data']['split']}")
            bank = _pixels(images[bank_indices(len(images), int(stats["bank_size"]), int(stats["seed"])).numpy()])
            guided = _pixels(np.load(Path(row["path"]) / "samples.npz")["images"])
            check = memorisation_check(guided, unguided, bank)
            rows.loc[index, "nearest_bank_distance"] = check["median_nearest_bank_distance_guided"]
            rows.loc[index, "distance_ratio_to_unguided"] = check["ratio_guided_to_unguided"]
            rows.loc[index, "fraction_copies"] = check["fraction_copies_guided"]
            rows.loc[index, "bank_spacing"] = check["bank_median_spacing"]
            rows.loc[baseline.index, "nearest_bank_distance"] = check["median_nearest_bank_distance_unguided"]
            rows.loc[baseline.index, "fraction_copies"] = check["fraction_copies_unguided"]
        rows.loc[baseline.index, "distance_ratio_to_unguided"] = 1.0
    return rows


def pick_settings(rows: pd.DataFrame) -> pd.DataFrame:
    """Mark the picked setting of each model and sampler (column ``picked``; ``helps`` on its unguided row).

    The rule: among guided settings whose samples' median nearest-bank distance stays at least
    ``MEMORISATION_FLOOR`` x the bank's own median nearest-neighbour spacing (real images' distance to each
    other: samples no closer to the bank than real images are, so no copying), the lowest validation KID; it is picked only if it beats the unguided KID by more
    than twice the larger KID subset std and by more than ``RELATIVE_MARGIN`` of it (at N no larger than the KID
    subset size every subset is the whole set and the std is ~0, so the std alone is no noise bound) AND lowers
    FID; otherwise the unguided sampler is picked (guidance does not help: a negative result).
    """
    rows = rows.copy()
    rows["picked"] = False
    for _, group in rows.groupby(["dataset", "method", "seed", "sampler", "steps"]):
        baseline = group[group["bank_size"].isna()].iloc[0]
        allowed = group[group["bank_size"].notna()
                        & (group["nearest_bank_distance"] >= MEMORISATION_FLOOR * group["bank_spacing"])]
        chosen = baseline.name
        if not allowed.empty:
            best = allowed.loc[allowed["kid"].idxmin()]
            margin = max(2 * best["kid_subset_std"], 2 * baseline["kid_subset_std"], RELATIVE_MARGIN * baseline["kid"])
            if best["kid"] < baseline["kid"] - margin and best["fid"] < baseline["fid"]:
                chosen = best.name
        rows.loc[chosen, "picked"] = True
    return rows


def sweep_table(metrics: list[Path], data: dict[str, Path]) -> pd.DataFrame:
    """The sweep's rows (one per setting), memorisation columns and the pick; ``data`` maps dataset -> .npz."""
    rows = pd.DataFrame([_row(Path(p)) for p in metrics])
    parts = [memorisation_columns(group, data[dataset]) for dataset, group in rows.groupby("dataset")]
    rows = pick_settings(pd.concat(parts))
    return rows.sort_values(["dataset", "method", "sampler", "bank_size", "weight"], na_position="first")


def markdown(rows: pd.DataFrame) -> str:
    """The sweep table as Markdown with its caption (what was measured, and the pick rule)."""
    shown = rows.assign(
        bank=rows["bank_size"].map(lambda b: "–" if pd.isna(b) else str(int(b))),
        picked=rows["picked"].map(lambda p: "**picked**" if p else ""),
    )
    columns = ["dataset", "method", "sampler", "steps", "weight", "bank", "fid", "kid", "kid_subset_std", "precision",
               "recall", "nearest_bank_distance", "bank_spacing", "distance_ratio_to_unguided", "fraction_copies",
               "picked"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in shown.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    reference = rows["reference"].iloc[0]
    caption = (f"Guidance weight sweep (closed-form kernel discriminator guidance, a reconstruction of SPEC §7; "
               f"normalise={bool(rows['normalise'].dropna().iloc[0]) if rows['normalise'].notna().any() else None}, "
               f"weight relative to the score). N = {int(rows['n'].iloc[0])} samples scored against {reference} "
               f"(a validation slice of the training split, excluded from the bank). Distances: pixel L2 in [0, 1] "
               f"units to the nearest bank image; bank_spacing: the bank's own median nearest-neighbour distance. "
               f"Pick: lowest KID among settings whose samples keep >= {MEMORISATION_FLOOR} x bank_spacing to the "
               "bank, if it beats unguided KID by > 2 subset std and lowers FID; else "
               "unguided (guidance does not help).")
    return caption + "\n\n" + "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def sweep_figure(rows: pd.DataFrame, png: Path) -> None:
    """FID, KID, precision/recall and the nearest-bank distance ratio against the weight (log axis), one line
    per model x sampler x bank size; the unguided value is the dashed line."""
    from gbm.reporting.figures import plt, save

    panels = [("fid", "FID (validation)"), ("kid", "KID (validation)"), ("precision", "precision / recall"),
              ("distance_ratio_to_unguided", "nearest-bank distance / unguided")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    for (dataset, method, sampler), group in rows.groupby(["dataset", "method", "sampler"]):
        baseline = group[group["bank_size"].isna()].iloc[0]
        for ax, (column, title) in zip(axes, panels):
            for bank_size, line in group[group["bank_size"].notna()].groupby("bank_size"):
                label = f"{dataset} {method} {sampler} bank {int(bank_size)}"
                drawn = ax.plot(line["weight"], line[column], marker="o", label=label)[0]
                if column == "precision":
                    ax.plot(line["weight"], line["recall"], marker="x", ls=":", color=drawn.get_color())
            ax.axhline(baseline[column], ls="--", lw=0.8, color="grey")
            ax.set_xscale("log")
            ax.set_xlabel("guidance weight (x score norm)")
            ax.set_title(title)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    save(fig, png)
