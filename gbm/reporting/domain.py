"""The domain metrics and collapse counters of a metrics.json as report columns, and what the report says of
them (docs/domain-metrics.md): one place for the tables, the comparisons and the figures."""

from __future__ import annotations

import math

import pandas as pd


def interval_bounds(values: dict, key: str) -> tuple:
    """``(low, high)`` of the two-element list ``values[key]``; ``(None, None)`` when there is none."""
    value = values.get(key)
    return tuple(value) if isinstance(value, list) and len(value) == 2 else (None, None)


COLLAPSE_MARK = "⚠"
DOMAIN_NOTE = ("Domain FD/KID: the same distances in the features of a classifier trained on the dataset "
               "(docs/domain-metrics.md), mean ± std over seeds, CI as for FID; class TV: total variation between "
               "the generated and the reference class histograms (mode balance); confident %: share of images "
               "the classifier assigns a class with probability > 0.9 (recognisability).")


def collapse_rule() -> str:
    """What ``collapse.flagged`` means, for the captions."""
    from gbm.metrics.collapse import FLAG_SHARE

    return (f"Collapsed %: the largest share over seeds of frames that are empty, saturated, flat or duplicates "
            f"(gbm.metrics.collapse); {COLLAPSE_MARK} marks a row with an evaluation above {100 * FLAG_SHARE:g} % "
            f"(collapse.flagged): its seed is in the means, named under the table, not a working sampler.")


#: The collapse counters of ``gbm.metrics.collapse`` as ``collapse_{name}`` columns (shares of frames).
COLLAPSE_COUNTERS = ("empty", "saturated", "flat", "duplicate", "nonfinite")


def domain_columns(metrics: dict) -> dict:
    """The ``domain`` and ``collapse`` blocks of a metrics.json (or floor.json) as flat columns; None where the
    file has no such block (scored without ``--classifier``)."""
    domain, collapse = metrics.get("domain") or {}, metrics.get("collapse") or {}
    return {
        "domain_fd": domain.get("fd"),
        "domain_fd_ci_low": interval_bounds(domain, "fd_ci")[0],
        "domain_fd_ci_high": interval_bounds(domain, "fd_ci")[1],
        "domain_fd_inf": domain.get("fd_inf"),
        "domain_kid": domain.get("kid"),
        "domain_kid_ci_low": interval_bounds(domain, "kid_ci")[0],
        "domain_kid_ci_high": interval_bounds(domain, "kid_ci")[1],
        "class_tv": domain.get("class_tv"),
        "confident_share": domain.get("confident_share"),
        **{f"collapse_{name}": collapse.get(name) for name in COLLAPSE_COUNTERS},
        "collapse_any": collapse.get("any"),
        "collapse_flagged": collapse.get("flagged"),
    }


def flagged(runs: pd.DataFrame) -> pd.Series:
    """Per row: whether its evaluation collapsed (``collapse.flagged``); False where it has no collapse block
    (also when ``metrics.csv`` read back holds the flag as text, or the column is missing)."""
    if "collapse_flagged" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["collapse_flagged"].map(lambda v: v is True or str(v).strip().lower() in ("true", "1", "1.0"))


def collapse_note(row: dict) -> str:
    """``seed 0, 45.5 % of frames (23.5 % empty, 22.0 % saturated, 8.0 % duplicate)`` for one flagged row."""
    def share(name: str) -> float:
        value = row.get(f"collapse_{name}")
        return math.nan if value is None or pd.isna(value) else float(value)

    parts = [f"{100 * share(name):.1f} % {name}" for name in COLLAPSE_COUNTERS if share(name) > 0]
    total = "n/a" if math.isnan(share("any")) else f"{100 * share('any'):.1f} %"
    return f"seed {int(row['seed'])}, {total} of frames" + (f" ({', '.join(parts)})" if parts else "")


def has_domain(table: pd.DataFrame, column: str) -> bool:
    """Whether any row has a value in ``column`` (scored with ``--classifier``)."""
    return column in table and table[column].notna().any()
