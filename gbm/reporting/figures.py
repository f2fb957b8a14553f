"""The benchmark's figures (SPEC §10), each written as PNG and PDF: sample and nearest-neighbour grids,
reverse trajectories, FID/KID versus NFE, loss curves, comparisons, and the figures a method draws of its own
process (``method_figures``: e.g. forward-process histograms, a 2-D toy).

Every function takes plain arrays or files and an output ``.png`` path; the ``.pdf`` goes beside it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gbm.data.atomic import atomic_path  # noqa: E402
from gbm.pipeline.layout import Evaluation, Run  # noqa: E402

plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 9})


def save(fig, png: Path) -> None:
    """Write ``png`` and its ``.pdf`` sibling atomically."""
    png = Path(png)
    for path in (png, png.with_suffix(".pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight")
    plt.close(fig)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """uint8 (N, C, H, W) -> one (H', W') or (H', W', 3) mosaic with ``pad`` white pixels between tiles."""
    n, c, h, w = images.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.full((c, rows * (h + pad) + pad, cols * (w + pad) + pad), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = image
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def _show(ax, mosaic: np.ndarray) -> None:
    ax.imshow(mosaic, cmap="gray" if mosaic.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()


def _describe_eval(samples_npz: Path) -> str:
    eval_dir = Path(samples_npz).parent
    e = Evaluation.from_directory(eval_dir)
    stats_path = eval_dir / "samples.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    nfe = stats.get("nfe")
    return (f"{e.dataset} · {e.method} · {e.sampler} · {e.steps} steps" + (f" (NFE {nfe})" if nfe is not None else "")
            + f" · seed{e.seed}")


def sample_grid(samples_npz: Path, png: Path, n: int = 64) -> None:
    with np.load(samples_npz) as data:
        images = data["images"][:n]
    fig, ax = plt.subplots(figsize=(4.2, 4.5))
    _show(ax, tile(images))
    ax.set_title(_describe_eval(samples_npz))
    save(fig, png)


def neighbour_grid(neighbours_npz: Path, samples_npz: Path, data_npz: Path, png: Path, queries: int = 8) -> None:
    """Generated images (first column) with their nearest training images by Inception features and pixel L2."""
    from gbm.data import load_prepared

    train = load_prepared(data_npz).images("train")
    with np.load(samples_npz) as data:
        samples = data["images"]
    with np.load(neighbours_npz) as data:
        panels = [(label, data[f"{key}_indices"]) for key, label in (("inception", "Inception features"),
                                                                     ("pixel", "pixel L2")) if f"{key}_indices" in data]
    count = min(queries, len(panels[0][1]))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.5 * count + 1.2), squeeze=False,
                             layout="constrained")
    for ax, (label, indices) in zip(axes[0], panels):
        rows = [np.concatenate([samples[i][None], train[indices[i]]]) for i in range(count)]
        _show(ax, tile(np.concatenate(rows), cols=rows[0].shape[0]))
        ax.set_title(f"sample | nearest training images\nby {label}")
    fig.suptitle(_describe_eval(samples_npz))
    save(fig, png)


def method_figures(method_name: str, figure: str, outputs: list[tuple[Path, dict]]) -> None:
    """Draw a method's own figure (``forward`` or ``toy``: ``Method.forward_figure``, ``Method.toy_figure``)
    once per ``(png, arguments)``; a method without that figure is an error naming it."""
    from gbm.methods import get_method

    method = get_method(method_name, field="--method")
    draw = getattr(method, f"{figure}_figure")
    if draw is None:
        raise ValueError(f"--method: method {method.name!r} declares no {figure} figure")
    for png, arguments in outputs:
        save(draw(**arguments), png)


#: The panels of ``metric_vs_nfe``: column, axis name; the domain FD's only where the runs have it.
NFE_METRICS = (("fid", "Inception FID"), ("kid", "Inception KID"), ("domain_fd", "domain FD"))


def metric_vs_nfe(runs: pd.DataFrame, png: Path) -> None:
    """FID, KID and (scored with ``--classifier``) the domain FD (mean over seeds, with the interval of
    ``seed_mean_with_interval``) against NFE, one panel per dataset and metric; a red cross marks each collapsed
    evaluation's own value (``collapse.flagged``), which the mean includes."""
    from gbm.reporting.domain import flagged, has_domain

    metrics = [(m, name) for m, name in NFE_METRICS if m != "domain_fd" or has_domain(runs, "domain_fd")]
    datasets = list(dict.fromkeys(runs["dataset"]))
    fig, axes = plt.subplots(len(metrics), len(datasets), figsize=(4.2 * len(datasets), 3 * len(metrics)),
                             squeeze=False)
    runs = runs.assign(label=runs["method"] + " / " + runs["sampler"], collapsed=flagged(runs))
    for col, dataset in enumerate(datasets):
        subset = runs[runs["dataset"] == dataset]
        for row, (metric, name) in enumerate(metrics):
            ax = axes[row][col]
            lines = list(subset.groupby("label", sort=True))
            for (label, group), offset in zip(lines, _offsets(len(lines))):
                _plot_with_interval(ax, seed_mean_with_interval(group, metric), label, offset)
            collapsed = subset[subset["collapsed"]]
            if len(collapsed):
                ax.scatter(collapsed["nfe"], collapsed[metric], marker="x", s=40, color="red", zorder=3,
                           label="collapsed evaluation")
            _nfe_axis(ax, subset["nfe"])
            ax.set_ylabel(name)
            ax.set_title(f"{dataset}: {name} vs NFE (N = {int(subset['n'].max()) if subset['n'].notna().any() else '?'})")
            ax.grid(alpha=0.3)
        axes[0][col].legend(fontsize=7)
    fig.tight_layout()
    save(fig, png)


def seed_mean_with_interval(group: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """Per NFE: the mean over seeds and its interval, as in the tables (``gbm.reporting.tables.
    seed_mean_interval``: a t interval over seeds, or one seed's interval over its samples; NaN bounds when
    the runs were scored without intervals)."""
    from gbm.reporting.tables import seed_mean_interval

    rows = []
    for nfe, at in group.groupby("nfe"):
        low, high, _, _ = seed_mean_interval(at, metric)
        rows.append({"nfe": nfe, "mean": at[metric].mean(), "low": low, "high": high})
    return pd.DataFrame(rows).sort_values("nfe")


def _plot_with_interval(ax, stats: pd.DataFrame, label: str, offset: float = 0.0) -> None:
    """The seed means joined by a line, each interval (centred on its mean) a vertical bar; ``offset`` shifts
    means and bars sideways by that fraction of the NFE so that the lines at one NFE stay apart."""
    x = stats["nfe"] * (1 + offset)
    (line,) = ax.plot(x, stats["mean"], marker="o", ms=3, label=label)
    ax.vlines(x, stats["low"], stats["high"], color=line.get_color(), lw=1.5, alpha=0.7)


def _nfe_axis(ax, nfes) -> None:
    """A log NFE axis with a tick at each evaluated NFE, spanning at least a factor of 4 (one NFE alone, as in
    a benchmark with one step count, would otherwise zoom the axis onto the sideways offsets)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    values = sorted({float(v) for v in nfes if pd.notna(v) and v > 0})
    ax.set_xscale("log")
    ax.set_xlabel("NFE per sample")
    if not values:
        return
    low, high = values[0], values[-1]
    if high / low < 4:
        middle = math.sqrt(low * high)
        ax.set_xlim(middle / 2, middle * 2)
    ax.xaxis.set_major_locator(FixedLocator(values))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _offsets(count: int, spread: float = 0.025) -> list[float]:
    return [spread * (i - (count - 1) / 2) for i in range(count)]


def grid_groups(runs: pd.DataFrame) -> list[tuple[tuple, pd.DataFrame]]:
    """The (dataset, method, sampler, prior) sets of unguided rows evaluated on more than one time grid."""
    if "grid" not in runs:
        return []
    runs = runs[runs["grid"].notna() & ~runs["guided"].astype(bool)]
    keys = ["dataset", "method", "sampler_method", "prior"]
    return [(key, group) for key, group in runs.groupby(keys, sort=True) if group["grid"].nunique() > 1]


def fid_vs_nfe_by_grid(runs: pd.DataFrame, png: Path) -> None:
    """FID against NFE, one panel per model and sampler evaluated on several time grids, one line per grid,
    with the interval of ``seed_mean_with_interval``."""
    groups = grid_groups(runs)
    cols = min(3, max(len(groups), 1))
    rows = max(math.ceil(len(groups) / cols), 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(groups):]:
        ax.axis("off")
    if not groups:
        axes[0][0].text(0.5, 0.5, "no sampler of this configuration\nwas evaluated on more than one time grid",
                        ha="center", va="center", transform=axes[0][0].transAxes)
    for ax, ((dataset, method, sampler, prior), group) in zip(axes.flat, groups):
        grids = list(group.groupby("grid", sort=True))
        for (grid, at_grid), offset in zip(grids, _offsets(len(grids))):
            _plot_with_interval(ax, seed_mean_with_interval(at_grid, "fid"), grid, offset)
        _nfe_axis(ax, group["nfe"])
        ax.set_ylabel("FID")
        ax.set_title(f"{dataset}: {method} / {sampler} ({prior})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="time grid", title_fontsize=7)
    fig.tight_layout()
    save(fig, png)


def loss_curves(loss_csvs: list[Path], png: Path, window: int = 25) -> None:
    """Training loss per dataset (rows) and method (columns), one line per seed (running mean)."""
    frames = []
    for path in loss_csvs:
        run = Run.from_run_dir(Path(path).parent)
        frame = pd.read_csv(path)
        frames.append(frame.assign(dataset=run.dataset, method=run.method, seed=f"seed{run.seed}"))
    losses = pd.concat(frames)
    datasets = list(dict.fromkeys(losses["dataset"]))
    methods = list(dict.fromkeys(losses["method"]))
    fig, axes = plt.subplots(len(datasets), len(methods), figsize=(3.6 * len(methods), 2.6 * len(datasets)),
                             squeeze=False)
    for r, dataset in enumerate(datasets):
        for c, method in enumerate(methods):
            ax = axes[r][c]
            subset = losses[(losses["dataset"] == dataset) & (losses["method"] == method)]
            for seed, group in subset.groupby("seed"):
                smooth = group["loss"].rolling(window, min_periods=1).mean()
                ax.plot(group["step"], smooth, lw=1, label=seed)
            ax.set_yscale("log")
            ax.set_title(f"{dataset} · {method}")
            ax.set_xlabel("step")
            ax.set_ylabel("loss (running mean)")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.tight_layout()
    save(fig, png)


def trajectory_figure(snapshots: dict[str, tuple[np.ndarray, list[float]]], png: Path, title: str) -> None:
    """Rows: samplers; columns: snapshots (uint8 images, (S, N, C, H, W)) at the listed times."""
    frames0 = next(iter(snapshots.values()))[0]
    width, height = 0.75 * frames0.shape[0] + 0.5, 0.75 * frames0.shape[1] + 0.6
    fig, axes = plt.subplots(len(snapshots), 1, figsize=(width, height * len(snapshots)), squeeze=False)
    for ax, (sampler, (frames, times)) in zip(axes[:, 0], snapshots.items()):
        per_image = np.concatenate([frames[:, i] for i in range(frames.shape[1])])  # row per image
        _show(ax, tile(per_image, cols=frames.shape[0]))
        ax.set_title(f"{sampler}: t = " + ", ".join(f"{t:.2f}" for t in times), fontsize=8)
    fig.suptitle(title, y=1.0)
    save(fig, png)


VERDICT_COLOURS = {"better": "tab:green", "worse": "tab:red", "not resolved": "tab:grey",
                   "too few seeds": "tab:olive"}  # one seed on a side: the point alone, no interval


def comparison_figure(table: pd.DataFrame, png: Path) -> None:
    """ΔFID, ΔKID and (where compared) Δ domain FD against the baseline with their intervals, one row per
    configuration, coloured by verdict; a configuration whose comparison has a collapsed evaluation is labelled
    ``(collapsed)``."""
    datasets = list(dict.fromkeys(table["dataset"]))
    labels = table["method"] + " / " + table["sampler"]
    if "prior" in table:
        labels = labels + table["prior"].map(lambda p: "" if pd.isna(p) else f" ({p})")
    labels = labels + " · " + table["steps"].astype(int).astype(str) + " steps"
    if "collapsed" in table:
        labels = labels + table["collapsed"].map(lambda c: " (collapsed)" if isinstance(c, str) and c else "")
    table = table.assign(label=labels)
    metrics = [("fid", "ΔFID", 1.0), ("kid", "ΔKID ×10³", 1e3)]
    if "domain_fd_verdict" in table and (table["domain_fd_verdict"] != "n/a").any():
        metrics.append(("domain_fd", "Δ domain FD", 1.0))
    rows = max(len(table[table["dataset"] == d]) for d in datasets)
    fig, axes = plt.subplots(len(datasets), len(metrics),
                             figsize=(4.5 * len(metrics), 0.35 * rows * len(datasets) + 1.4 * len(datasets)),
                             squeeze=False, layout="constrained")
    for r, dataset in enumerate(datasets):
        subset = table[table["dataset"] == dataset].reset_index(drop=True)
        for c, (metric, name, scale) in enumerate(metrics):
            ax = axes[r][c]
            for y, row in subset.iterrows():
                if row[f"{metric}_verdict"] not in VERDICT_COLOURS:  # not compared on this metric
                    continue
                centre, low, high = (scale * row[f"{metric}_{k}"] for k in ("difference", "low", "high"))
                colour = VERDICT_COLOURS[row[f"{metric}_verdict"]]
                xerr = None if pd.isna(low) or pd.isna(high) else [[centre - low], [high - centre]]
                ax.errorbar(centre, y, xerr=xerr, fmt="o", ms=4, capsize=3, color=colour)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(subset)), subset["label"] if c == 0 else [""] * len(subset))
            ax.invert_yaxis()
            ax.set_xlabel(f"{name} vs {subset['baseline'].iloc[0]} (negative: better)")
            ax.set_title(f"{dataset}: {name}, {100 * subset['level'].iloc[0]:g}% interval (seeds and samples)")
            ax.grid(axis="x", alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=v) for v, c in VERDICT_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    save(fig, png)
