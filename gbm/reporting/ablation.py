"""The GBM ablation table (issue 16): every evaluated GBM setting beside the paper's, with the changes from it.

A setting is what a GBM method entry and sampler label of the benchmark config choose: the M-DSM weighting,
the time grid and end time, the start distribution (prior), sigma and T, and whether the authors' practical
sampler options (delta, inner_steps, gamma) are on. The paper's setting (SPEC §1–§3, exact sampler) is the
baseline; each row names what differs from it, so one-change rows are the ablations and the tuned row
("GBM (tuned)") shows them combined.
"""

from __future__ import annotations

import pandas as pd

PAPER_SETTING = {"weighting": "paper", "grid": "uniform-t", "end_time": 0.0, "prior": "iid", "sigma": 0.8,
                 "T": 1.0, "practical": False}
PRACTICAL_OPTIONS = ("delta", "inner_steps", "gamma")


def gbm_settings(config: dict) -> dict[str, dict]:
    """The setting of every GBM entry/sampler label of a completed benchmark config, keyed ``entry/label``."""
    settings = {}
    for entry, spec in config["methods"].items():
        if spec.get("method", entry) != "gbm":
            continue
        for label, sampler in spec["samplers"].items():
            options = dict(sampler.get("options", {}))
            practical = any(k in options or any(k in o for o in sampler.get("dataset_options", {}).values())
                            for k in PRACTICAL_OPTIONS)
            settings[f"{entry}/{label}"] = {
                "weighting": spec.get("loss", {}).get("weighting", PAPER_SETTING["weighting"]),
                "grid": options.get("grid", PAPER_SETTING["grid"]),
                "end_time": float(options.get("end_time", PAPER_SETTING["end_time"])),
                "prior": sampler.get("prior", PAPER_SETTING["prior"]),
                "sigma": float(spec.get("sde", {}).get("sigma", PAPER_SETTING["sigma"])),
                "T": float(spec.get("sde", {}).get("T", PAPER_SETTING["T"])),
                "practical": practical,
            }
    return settings


def changes_from_paper(setting: dict) -> list[str]:
    """``key=value`` for each choice that differs from the paper's setting."""
    return [f"{key}={value}" for key, value in setting.items() if value != PAPER_SETTING[key]]


DELTA_COLUMNS = ["paper_row", "fid_difference", "fid_low", "fid_high", "fid_verdict"]


def _sampler_method(runs: pd.DataFrame | None, method: str, label: str) -> str:
    """The sampler a config label runs (``dale-langevin-correlated`` runs ``dale-langevin``)."""
    if runs is not None and "sampler_method" in runs:
        rows = runs[(runs["method"] == method) & (runs["sampler"] == label)]
        if len(rows):
            return str(rows["sampler_method"].iloc[0])
    return label


def _against_paper(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """ΔFID of each changed setting against the paper's setting with the same dataset, sampler and step count:
    the comparisons table's Welch interval over seeds, and its verdict (``too few seeds`` with one seed)."""
    from gbm.reporting.comparisons import arm, compare

    def seeds(row) -> pd.DataFrame:
        return runs[(runs["dataset"] == row["dataset"]) & (runs["method"] == row["method"])
                    & (runs["sampler"] == row["sampler"]) & (runs["steps"] == row["steps"])]

    values = []
    for _, row in frame.iterrows():
        paper = frame[(frame["changes"] == 0) & (frame["dataset"] == row["dataset"]) & (frame["steps"] == row["steps"])
                      & (frame["sampler_method"] == row["sampler_method"])]
        if row["changes"] == 0 or paper.empty:
            values.append(dict.fromkeys(DELTA_COLUMNS))
            continue
        base = paper.iloc[0]
        result = compare(arm(seeds(row), "fid"), arm(seeds(base), "fid"))
        values.append({"paper_row": f"{base['method']} / {base['sampler']}", "fid_difference": result["difference"],
                       "fid_low": result["low"], "fid_high": result["high"], "fid_verdict": result["verdict"]})
    return pd.DataFrame(values, index=frame.index, columns=DELTA_COLUMNS)


def ablation_table(table: pd.DataFrame, settings: dict[str, dict], runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of the benchmark table (``gbm.reporting.tables.benchmark_table``) for GBM settings, with their
    choices and changes from the paper's, fewest changes first within dataset, sampler and step count. With
    the per-seed ``runs`` (metrics.csv), each changed setting also gets its ΔFID against the paper's setting
    of the same sampler (``gbm.reporting.comparisons``: interval over seeds and samples, verdict)."""
    rows = []
    for row in table.to_dict("records"):
        setting = settings.get(f"{row['method']}/{row['sampler']}")
        if setting is None:
            continue
        changes = changes_from_paper(setting)
        rows.append({**row, **setting, "sampler_method": _sampler_method(runs, row["method"], row["sampler"]),
                     "changes": len(changes),
                     "change_from_paper": ", ".join(changes) if changes else "none (the paper's setting)"})
    columns = [*table.columns, *PAPER_SETTING, "sampler_method", "changes", "change_from_paper"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.sort_values(["dataset", "steps", "changes"], kind="stable").reset_index(drop=True)
    if runs is not None and "path" in runs and not frame.empty:
        frame = pd.concat([frame, _against_paper(frame, runs)], axis=1)
    else:
        frame = frame.assign(**dict.fromkeys(DELTA_COLUMNS))
    return frame


def ablation_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The Markdown columns of the ablation table."""
    fid = [("n/a" if pd.isna(m) else f"{m:.2f}" + ("" if pd.isna(s) else f" ± {s:.2f}"))
           for m, s in zip(frame["fid_mean"], frame["fid_std"])]
    none = pd.Series([None] * len(frame), index=frame.index)
    ci = [("–" if pd.isna(lo) else f"[{lo:.2f}, {hi:.2f}]")
          for lo, hi in zip(frame.get("fid_ci_low", none), frame.get("fid_ci_high", none))]
    delta = [("–" if pd.isna(d) else f"{d:+.2f}" + ("" if pd.isna(lo) else f" [{lo:+.2f}, {hi:+.2f}]"))
             for d, lo, hi in zip(frame["fid_difference"], frame["fid_low"], frame["fid_high"])]
    return pd.DataFrame({
        "Dataset": frame["dataset"], "Entry / sampler": frame["method"] + " / " + frame["sampler"],
        "Steps": frame["steps"].astype(int), "Change from the paper's setting": frame["change_from_paper"],
        "N": frame["n"], "Seeds": frame["seeds"], "FID": fid, "FID CI": ci,
        "ΔFID vs paper's setting [CI]": delta, "Verdict": frame["fid_verdict"].fillna("–"),
    })
