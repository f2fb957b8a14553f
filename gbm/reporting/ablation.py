"""The ablation table (issue 16): every evaluated setting of a method that declares its paper's setting
(``Method.paper_setting``) beside that setting, with the changes from it.

A row's setting is read from ``metrics.csv``, whose columns carry what each evaluation's records state (the
loss weighting, sigma and T of its training record; the grid, end time, prior and sampler options of its
sample record); the method reads its choices from those columns (``PaperSetting.of_row``). The paper's setting
is the baseline; each row names what differs from it, so one-change rows are the ablations and a tuned row
shows them combined.
"""

from __future__ import annotations

import pandas as pd

from gbm.methods import registered

DELTA_COLUMNS = ["paper_row", "fid_difference", "fid_low", "fid_high", "fid_verdict"]
KEY = ["dataset", "method", "sampler", "steps"]


def paper_settings(runs: pd.DataFrame) -> dict:
    """The registered methods of ``runs`` (its ``sde.name`` column) that declare a paper setting, by name, in the
    registry's order."""
    names = set(runs["sde.name"].dropna()) if "sde.name" in runs else set()
    return {name: method for name, method in registered().items() if name in names and method.paper_setting}


def _sampler_method(runs: pd.DataFrame, method: str, label: str) -> str:
    """The sampler a config label runs (``dale-langevin-correlated`` runs ``dale-langevin``)."""
    if "sampler_method" in runs:
        rows = runs[(runs["method"] == method) & (runs["sampler"] == label)]
        if len(rows):
            return str(rows["sampler_method"].iloc[0])
    return label


def _seeds(runs: pd.DataFrame, row) -> pd.DataFrame:
    """The per-seed rows of one benchmark row."""
    return runs[(runs["dataset"] == row["dataset"]) & (runs["method"] == row["method"])
                & (runs["sampler"] == row["sampler"]) & (runs["steps"] == row["steps"])]


def _against_paper(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """ΔFID of each changed setting against the paper's setting with the same dataset, sampler and step count:
    the comparisons table's Welch interval over seeds, and its verdict (``too few seeds`` with one seed)."""
    from gbm.reporting.comparisons import arm, compare

    values = []
    for _, row in frame.iterrows():
        paper = frame[(frame["changes"] == 0) & (frame["dataset"] == row["dataset"]) & (frame["steps"] == row["steps"])
                      & (frame["sampler_method"] == row["sampler_method"])]
        if row["changes"] == 0 or paper.empty:
            values.append(dict.fromkeys(DELTA_COLUMNS))
            continue
        base = paper.iloc[0]
        result = compare(arm(_seeds(runs, row), "fid"), arm(_seeds(runs, base), "fid"))
        values.append({"paper_row": f"{base['method']} / {base['sampler']}", "fid_difference": result["difference"],
                       "fid_low": result["low"], "fid_high": result["high"], "fid_verdict": result["verdict"]})
    return pd.DataFrame(values, index=frame.index, columns=DELTA_COLUMNS)


def ablation_table(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of the benchmark table (``gbm.reporting.tables.benchmark_table``) whose method declares a paper
    setting, with their choices (read from the per-seed ``runs``, metrics.csv) and changes from the paper's,
    fewest changes first within dataset, sampler and step count; each changed setting also gets its ΔFID
    against the paper's setting of the same sampler (``gbm.reporting.comparisons``: interval over seeds and
    samples, verdict)."""
    methods = paper_settings(runs)
    choices = list(dict.fromkeys(key for m in methods.values() for key in m.paper_setting.values))
    rows = []
    for row in table.to_dict("records"):
        seeds = _seeds(runs, row)
        name = seeds["sde.name"].iloc[0] if len(seeds) and "sde.name" in seeds else None
        if name not in methods:
            continue
        paper = methods[name].paper_setting
        setting = paper.of_row(seeds.iloc[0])
        changes = paper.changes(setting)
        rows.append({**row, **setting, "sampler_method": _sampler_method(runs, row["method"], row["sampler"]),
                     "changes": len(changes),
                     "change_from_paper": ", ".join(changes) if changes else "none (the paper's setting)"})
    columns = [*table.columns, *choices, "sampler_method", "changes", "change_from_paper"]
    frame = pd.DataFrame(rows, columns=columns)
    frame = frame.sort_values(["dataset", "steps", "changes"], kind="stable").reset_index(drop=True)
    if not frame.empty:
        frame = pd.concat([frame, _against_paper(frame, runs)], axis=1)
    else:
        frame = frame.assign(**dict.fromkeys(DELTA_COLUMNS))
    return frame


def ablation_caption(runs: pd.DataFrame, name: str) -> str:
    """The ablation table's caption: each method's paper setting in its own words, then how to read the rows."""
    heads = [f"{m.label} ablation (benchmark '{name}'): each evaluated {m.label} setting and what it changes from "
             f"the paper's ({m.paper_setting.description}); " for m in paper_settings(runs).values()]
    head = "".join(heads) or (f"Ablation (benchmark '{name}'): no evaluated method declares its paper's setting "
                              "(gbm.methods: Method.paper_setting); ")
    return head + (
        "end_time is a row's last network level, from which every sampler's final noise-free update goes "
        "to t = 0 (gbm/grids.py); "
        "FID mean ± std over training seeds, same N and features as the benchmark table; CI: as in the "
        "benchmark table; ΔFID against the paper's setting with the same sampler, dataset and step count "
        "(negative is better) with the comparisons table's Welch interval over seeds; 'not resolved' when "
        "its interval contains 0, 'too few seeds' with one seed.")


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
