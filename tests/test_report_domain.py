"""The domain metrics and collapse counters in the report: benchmark and floor tables, comparisons with a
domain FD verdict, the NFE figure; a collapsed evaluation is named wherever its values enter, and results
scored without a classifier still report (issue 24, items 2 and 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from gbm.metrics.seeds import BETTER, WORSE, Arm, compare
from gbm.reporting.comparisons import comparisons_table, write_comparisons
from gbm.reporting.tables import aggregate, benchmark_table, floor_table, write_tables

#: Per method and seed: Inception FID, domain FD. GBM is worse by Inception FID and better by domain FD.
SCORES = {"gbm": {0: (140.0, 4.0), 1: (144.0, 4.3), 2: (142.0, 4.1)},
          "vp": {0: (110.0, 19.7), 1: (113.0, 16.1), 2: (111.0, 18.0)}}
SAMPLERS = {"gbm": "sign-agnostic", "vp": "em"}
#: VP seed 0 as in the default benchmark's run of 2026-12-06 (docs/domain-metrics.md).
VP_SEED0_COLLAPSE = {"empty": 0.235, "saturated": 0.22, "flat": 0.0, "duplicate": 0.08, "any": 0.455, "flagged": True}


def metrics_json(fid: float, fd: float | None, collapse: dict | None) -> dict:
    metrics = {"fid": fid, "kid_mean": fid / 1000, "n_fake": 200, "n_real": 200, "fid_ci": [fid - 2, fid + 2],
               "kid_ci": [fid / 1000 - 0.002, fid / 1000 + 0.002], "fid_inf": None,
               "protocol": {"intervals": {"level": 0.95}}}
    if fd is not None:
        metrics["domain"] = {"fd": fd, "fd_ci": [fd - 0.5, fd + 0.5], "fd_inf": None, "kid": fd / 50,
                             "kid_ci": [fd / 50 - 0.01, fd / 50 + 0.01], "class_tv": 0.2, "confident_share": 0.55}
    if collapse is not None:
        metrics["collapse"] = collapse
    return metrics


def write_results(root: Path, *, domain: bool = True, collapsed: bool = True) -> list[Path]:
    """metrics.json and samples.json of gbm and vp, 3 seeds each, at 20 steps; VP seed 0 collapsed."""
    paths = []
    for method, seeds in SCORES.items():
        for seed, (fid, fd) in seeds.items():
            directory = root / "mnist" / method / f"seed{seed}" / SAMPLERS[method] / "steps20"
            directory.mkdir(parents=True)
            clean = {"empty": 0.0, "saturated": 0.005, "flat": 0.0, "duplicate": 0.0, "any": 0.005, "flagged": False}
            collapse = (VP_SEED0_COLLAPSE if collapsed and (method, seed) == ("vp", 0) else clean) if domain else None
            (directory / "metrics.json").write_text(json.dumps(metrics_json(fid, fd if domain else None, collapse)))
            (directory / "samples.json").write_text(json.dumps({"sampler": SAMPLERS[method], "nfe": 20, "prior": "fixed"}))
            paths.append(directory / "metrics.json")
    return paths


def floor_json(path: Path, domain: bool = True) -> Path:
    values = {"fid": 34.8, "kid_mean": 0.001, "fid_ci": [33.0, 36.0], "fid_inf": None, "n": 200}
    if domain:
        values["domain"] = {"fd": 2.94, "fd_ci": [1.74, 4.15], "kid": 0.017, "class_tv": 0.13, "confident_share": 0.94}
    path.write_text(json.dumps(values))
    return path


def round_trip(runs: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """metrics.csv as the pipeline's later steps read it back (the flag then is text or a float column)."""
    runs.to_csv(tmp_path / "metrics.csv", index=False)
    return pd.read_csv(tmp_path / "metrics.csv")


def report(tmp_path: Path, **results) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    runs = round_trip(aggregate(write_results(tmp_path / "results", **results)), tmp_path)
    floor = floor_table([floor_json(tmp_path / "floor.json", results.get("domain", True))])
    written = write_tables(runs, floor, tmp_path / "tables", "test")
    comparisons = comparisons_table(runs, {"method": "vp", "sampler": "em"})
    written += write_comparisons(comparisons, tmp_path / "tables", "test")
    return {p.name: p.read_text() for p in written}, pd.read_csv(tmp_path / "tables" / "benchmark.csv"), comparisons


def test_a_collapsed_evaluation_is_marked_in_the_benchmark_table_and_named_with_its_seed_and_shares(tmp_path):
    text, table, _ = report(tmp_path)
    markdown = text["benchmark.md"]
    vp_row = next(line for line in markdown.splitlines() if line.startswith("| mnist | vp |"))
    gbm_row = next(line for line in markdown.splitlines() if line.startswith("| mnist | gbm |"))
    assert "| em ⚠ |" in vp_row and "| 45.5 ⚠ |" in vp_row
    assert "⚠" not in gbm_row and "| 0.5 |" in gbm_row
    assert ("- ⚠ collapsed: mnist / vp / em / 20 steps: seed 0, 45.5 % of frames (23.5 % empty, 22.0 % saturated, "
            "8.0 % duplicate)") in markdown
    assert "above 5 % (collapse.flagged)" in markdown
    assert table.set_index("method").loc["vp", "collapsed_seeds"] == 0  # read back from CSV as a number
    assert r"\textbf{(!)}" in text["benchmark.tex"] and "seed 0, 45.5 \\% of frames" in text["benchmark.tex"]


def test_a_comparison_with_a_collapsed_side_names_the_evaluation_before_its_verdicts(tmp_path):
    text, _, comparisons = report(tmp_path)
    assert comparisons["collapsed"].tolist() == ["vp / em seed 0 (45.5 %)"]
    header, _, row = text["comparisons.md"].splitlines()[2:5]
    assert header.index("Collapsed") < header.index("FID verdict")
    assert "| ⚠ vp / em seed 0 (45.5 %) |" in row


def test_the_collapse_marks_go_when_no_evaluation_collapsed(tmp_path):
    text, table, comparisons = report(tmp_path, collapsed=False)
    rows = [line for name in ("benchmark.md", "comparisons.md") for line in text[name].splitlines()
            if line.startswith("| mnist")]
    assert len(rows) == 3 and not any("⚠" in line for line in rows)
    assert "Collapsed evaluations" not in text["benchmark.md"] and "⚠" not in text["comparisons.md"]
    assert table["collapsed_seeds"].isna().all() and comparisons["collapsed"].tolist() == [""]


def test_domain_fd_gets_welchs_interval_and_a_verdict_like_fid(tmp_path):
    _, table, comparisons = report(tmp_path)
    row = comparisons.iloc[0]
    per_seed = {m: tuple(fd for _, fd in SCORES[m].values()) for m in SCORES}
    expected = compare(Arm(per_seed["gbm"]), Arm(per_seed["vp"]))
    assert [row[f"domain_fd_{k}"] for k in ("difference", "low", "high", "df")] == pytest.approx(
        [expected[k] for k in ("difference", "low", "high", "df")], rel=1e-12)
    assert (row["fid_verdict"], row["domain_fd_verdict"], expected["verdict"]) == (WORSE, BETTER, BETTER)
    gbm = table.set_index("method").loc["gbm"]
    assert gbm["domain_fd_mean"] == pytest.approx(sum(per_seed["gbm"]) / 3)
    assert gbm["domain_fd_ci_low"] < gbm["domain_fd_mean"] < gbm["domain_fd_ci_high"]


def test_tables_and_comparisons_build_without_domain_blocks_and_keep_the_inception_numbers(tmp_path):
    with_domain, table, comparisons = report(tmp_path / "domain")
    without, plain_table, plain_comparisons = report(tmp_path / "plain", domain=False)
    assert plain_table["domain_fd_mean"].isna().all() and plain_table["collapse_max"].isna().all()
    assert "Domain FD" not in without["benchmark.md"] + without["floor.md"] + without["comparisons.md"]
    assert "Domain FD" in with_domain["benchmark.md"] and "| 2.94 | [1.74, 4.15] |" in with_domain["floor.md"]
    assert plain_comparisons["domain_fd_verdict"].tolist() == ["n/a"]
    inception = [c for c in table if c.startswith(("fid", "kid"))]
    pd.testing.assert_frame_equal(table[inception], plain_table[inception])
    inception = [c for c in comparisons if c.startswith(("fid", "kid"))]
    pd.testing.assert_frame_equal(comparisons[inception], plain_comparisons[inception])


def test_benchmark_from_metrics_csv_without_domain_columns_still_builds(tmp_path):
    """A metrics.csv from before the domain metrics: no domain or collapse columns at all."""
    runs = round_trip(aggregate(write_results(tmp_path / "results", domain=False)), tmp_path)
    runs = runs.drop(columns=[c for c in runs if c.startswith(("domain_", "collapse_", "class_tv", "confident"))])
    table = benchmark_table(runs)
    assert table["domain_fd_mean"].isna().all() and (table["collapsed"] == "").all()
    assert comparisons_table(runs, {"method": "vp", "sampler": "em"})["domain_fd_verdict"].tolist() == ["n/a"]


@pytest.mark.parametrize("domain", [True, False])
def test_the_nfe_figure_draws_domain_fd_in_its_own_panel_when_scored_with_a_classifier(tmp_path, monkeypatch, domain):
    from gbm.reporting import figures

    runs = round_trip(aggregate(write_results(tmp_path / "results", domain=domain)), tmp_path)
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, png: drawn.update(fig=fig))
    figures.metric_vs_nfe(runs, tmp_path / "nfe.png")
    labels = [ax.get_ylabel() for ax in drawn["fig"].axes]
    assert labels == ["Inception FID", "Inception KID"] + (["domain FD"] if domain else [])
    crosses = [c for ax in drawn["fig"].axes for c in ax.collections if c.get_label() == "collapsed evaluation"]
    assert len(crosses) == (3 if domain else 0)


def test_the_nfe_figure_of_one_step_count_keeps_a_readable_axis_and_each_mean_on_its_bar(tmp_path, monkeypatch):
    """The default benchmark evaluates one step count: the axis must not zoom onto the sideways offsets of the
    lines (it once did, with overlapping tick labels and each bar far from its mean)."""
    from gbm.reporting import figures

    runs = round_trip(aggregate(write_results(tmp_path / "results")), tmp_path)
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, png: drawn.update(fig=fig))
    figures.metric_vs_nfe(runs, tmp_path / "nfe.png")
    for ax in drawn["fig"].axes:
        low, high = ax.get_xlim()
        assert high / low >= 4 and low < 20 < high
        assert list(ax.get_xticks()) == [20.0]
        for line, bars in zip(ax.get_lines(), [c for c in ax.collections if c.get_label() != "collapsed evaluation"]):
            bar_x = [segment[0][0] for segment in bars.get_segments()]
            assert list(line.get_xdata()) == pytest.approx(bar_x)


def test_the_comparison_figure_has_a_domain_fd_panel_and_labels_a_collapsed_comparison(tmp_path, monkeypatch):
    from gbm.reporting import figures

    _, _, comparisons = report(tmp_path)
    drawn = {}
    monkeypatch.setattr(figures, "save", lambda fig, png: drawn.update(fig=fig))
    figures.comparison_figure(comparisons, tmp_path / "comparisons.png")
    axes = drawn["fig"].axes
    assert [ax.get_xlabel().split(" vs ")[0] for ax in axes] == ["ΔFID", "ΔKID ×10³", "Δ domain FD"]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["gbm / sign-agnostic (fixed) · 20 steps (collapsed)"]
