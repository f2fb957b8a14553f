"""The prior-mismatch table and figure (SPEC §1a): how far each method's start distribution is from p_T.

For every dataset, the training split is cut into a fitting part and a held-out part (its last
``held_out`` images). Each method measures its own start distributions against p_T of the held-out images
(``Method.prior_mismatch``: named priors fitted on the first part, in log space for a multiplicative SDE; a
fixed Gaussian prior in the SDE's own data space); a method without that hook has no rows. The relative
Fréchet distance (divided by the total variance of p_T) makes the spaces comparable.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gbm.data.atomic import write_text_atomic

COLUMNS = ["dataset", "method", "prior", "paper", "sigma2_T", "frechet", "relative_frechet", "dim", "n_fit",
           "n_held_out"]


def _split(data_npz: Path, held_out: int, limit: int | None):
    from gbm.data import load_prepared

    prepared = load_prepared(data_npz)
    images = torch.from_numpy(np.ascontiguousarray(prepared.images("train")[:limit]))
    labels = torch.from_numpy(prepared.labels("train")[:limit])
    held_out = min(held_out, len(images) // 2)
    if held_out < 2:
        raise ValueError(f"--held-out: {data_npz} has too few training images ({len(images)}) to hold any out")
    cut = len(images) - held_out
    return prepared.meta.get("name", Path(data_npz).stem), images[:cut], labels[:cut], images[cut:]


def mismatch_rows(data_npz: Path, methods: dict[str, dict], held_out: int = 10000,
                  sigma2_T_grid: tuple[float, ...] = (), limit: int | None = None,
                  timing: dict | None = None) -> list[dict]:
    """The rows of every method entry whose method measures its prior mismatch (``Method.prior_mismatch``): one
    per start distribution at the entry's own settings (``at_config``), and any the method adds for
    ``sigma2_T_grid``. ``methods``: entry -> ``{"name", "sde"}``; ``limit``: use the first ``limit`` training
    images (the benchmark's ``data_limit``), at most half held out; ``timing``: gets ``metrics_s`` added, the
    seconds spent fitting and measuring (not loading the data)."""
    from gbm.methods import get_method

    dataset, fit_images, labels, held_images = _split(Path(data_npz), held_out, limit)
    began = time.perf_counter()
    rows = []
    common = {"dataset": dataset, "dim": int(np.prod(fit_images.shape[1:])), "n_fit": len(fit_images),
              "n_held_out": len(held_images)}
    for entry, spec in methods.items():
        method = get_method(spec["name"], field=f"methods.{entry}")
        if method.prior_mismatch is None:
            continue
        measured = method.prior_mismatch(method, spec.get("sde", {}), fit_images, labels, held_images, dataset,
                                         tuple(sigma2_T_grid))
        rows += [common | {"method": entry} | row for row in measured]
    if timing is not None:
        timing["metrics_s"] = timing.get("metrics_s", 0.0) + time.perf_counter() - began
    return rows


def _markdown(table: pd.DataFrame, caption: str) -> str:
    header = "| Dataset | Method | Prior | σ²T | Fréchet (log space for GBM) | relative |"
    body = [f"| {r.dataset} | {r.method} | {r.prior}{'' if r.paper else ' *'} | "
            f"{'–' if pd.isna(r.sigma2_T) else f'{r.sigma2_T:.3g}'} | {r.frechet:.4g} | {r.relative_frechet:.3g} |"
            for r in table.itertuples()]
    return "\n".join([caption, "", header, "|---|---|---|---|---|---|", *body]) + "\n"


def _latex(table: pd.DataFrame, caption: str) -> str:
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{caption}}}", r"\label{tab:prior-mismatch}",
             r"\begin{tabular}{lllrrr}", r"\toprule",
             r"Dataset & Method & Prior & $\sigma^2 T$ & Fréchet & relative \\", r"\midrule"]
    lines += [f"{r.dataset.replace('_', chr(92) + '_')} & {r.method} & {r.prior}{'' if r.paper else '$^*$'} & "
              f"{'--' if pd.isna(r.sigma2_T) else f'{r.sigma2_T:.3g}'} & {r.frechet:.4g} & "
              f"{r.relative_frechet:.3g} \\\\" for r in table.itertuples()]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


CAPTION = ("Prior mismatch: Fréchet distance between each start distribution and p_T of held-out training "
           "images pushed through the forward kernel (GBM: in log space; additive SDEs: in their data space), "
           "and that distance divided by the total variance of p_T (relative, comparable across spaces). "
           "* marks this project's priors (correlated; class-mean, a variant of the authors' class-averaged "
           "start, docs/priors.md) and the authors' constants (authors); "
           "GBM's iid is the paper's prior. A Fréchet distance compares two moments only.")


def write_mismatch(rows: list[dict], out_dir: Path, record: dict | None = None) -> list[Path]:
    """prior_mismatch.{csv,md,tex} (rows at each method's configured sigma^2 T; the CSV has every row), and
    prior_mismatch.json with ``record`` (how the table was made and its compute seconds) when given."""
    out_dir = Path(out_dir)
    frame = pd.DataFrame(rows, columns=None if rows else [*COLUMNS, "at_config"])
    shown = frame[frame["at_config"].astype(bool)].drop(columns="at_config")
    written = {"prior_mismatch.csv": frame.to_csv(index=False),
               "prior_mismatch.md": _markdown(shown, CAPTION),
               "prior_mismatch.tex": _latex(shown, CAPTION)}
    if record is not None:
        written["prior_mismatch.json"] = json.dumps(record, indent=2, sort_keys=True) + "\n"
    for name, text in written.items():
        write_text_atomic(out_dir / name, text)
    return [out_dir / name for name in written]


def mismatch_figure(rows: list[dict], png: Path) -> None:
    """Relative mismatch of each GBM prior against sigma^2 T, one panel per dataset; additive priors as lines."""
    from gbm.reporting.figures import plt, save

    frame = pd.DataFrame(rows, columns=None if rows else [*COLUMNS, "at_config"])
    datasets = list(dict.fromkeys(frame["dataset"]))
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(4.2 * max(1, len(datasets)), 3.4), squeeze=False)
    if not datasets:  # no method of this configuration has a prior to compare with p_T (e.g. Beta diffusion alone)
        axes[0][0].text(0.5, 0.5, "no method of this configuration\nhas a prior-mismatch row", ha="center",
                        va="center", transform=axes[0][0].transAxes)
        axes[0][0].set_axis_off()
        save(fig, png)
        return
    for ax, dataset in zip(axes[0], datasets):
        part = frame[frame["dataset"] == dataset]
        multiplicative = part[part["prior"] != "fixed"].sort_values("sigma2_T")
        for (method, prior), curve in multiplicative.groupby(["method", "prior"], sort=False):
            curve = curve.drop_duplicates("sigma2_T")
            ax.plot(curve["sigma2_T"], curve["relative_frechet"], marker="o", ms=3,
                    label=f"{method}: {prior}{'' if curve['paper'].iloc[0] else ' *'}")
        configured = multiplicative[multiplicative["at_config"]]["sigma2_T"].unique()
        for s2t in configured:
            ax.axvline(s2t, color="0.6", lw=0.8, ls=":")
        for row in part[part["prior"] == "fixed"].itertuples():
            ax.axhline(row.relative_frechet, ls="--", lw=1, color="k")
            ax.annotate(f"{row.method}: fixed Gaussian prior", (0.98, row.relative_frechet), fontsize=7,
                        xycoords=("axes fraction", "data"), va="bottom", ha="right")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$\sigma^2 T$ (dotted: configured)")
        ax.set_ylabel("relative Fréchet distance to $p_T$")
        ax.set_title(dataset)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    fig.suptitle("How far each start distribution is from p_T (* = not the paper's prior)", y=1.02)
    save(fig, png)
