"""``gbm report prior-mismatch``: the mismatch table and figure from prepared datasets (SPEC §1a)."""

import json

import numpy as np
import pandas as pd
import pytest

from gbm.cli import main
from gbm.data import RawDataset, save_prepared

pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_images(n: int, rng) -> np.ndarray:
    """8x8 images whose pixels share one random brightness each (strong pixel correlations, like digits)."""
    level = rng.uniform(0, 200, (n, 1, 1, 1))
    return np.clip(level + rng.normal(0, 10, (n, 1, 8, 8)), 0, 255).astype(np.uint8)


def test_mismatch_table_ranks_priors_and_shows_additive_priors_near_exact(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 700).astype(np.int64)
    data = save_prepared(RawDataset(correlated_images(700, rng), labels, correlated_images(8, rng), labels[:8],
                                    source="synthetic"), "mnist", tmp_path / "mnist.npz")
    methods = {"gbm": {"name": "gbm", "sde": {}}, "vp": {"name": "vp", "sde": {}}}
    assert main(["report", "prior-mismatch", "--data", str(data), "--methods", json.dumps(methods), "--held-out",
                 "200", "--limit", "600", "--sigma2-t", "0.16", "1.0", "--out-dir", str(tmp_path / "tables"),
                 "--figure", str(tmp_path / "mismatch.png")]) == 0
    table = pd.read_csv(tmp_path / "tables" / "prior_mismatch.csv")
    at_config = table[table["at_config"]].set_index("prior")
    assert sorted(at_config.index) == ["authors", "class-mean", "correlated", "fixed", "iid"]
    assert at_config.loc["correlated", "n_fit"] == 400 and at_config.loc["correlated", "n_held_out"] == 200
    assert at_config.loc["correlated", "relative_frechet"] < 0.1 * at_config.loc["iid", "relative_frechet"]
    assert at_config.loc["fixed", "relative_frechet"] < 0.01 * at_config.loc["iid", "relative_frechet"]
    iid = table[(table["prior"] == "iid") & ~table["at_config"]].sort_values("sigma2_T")
    assert iid["sigma2_T"].tolist() == pytest.approx([0.16, 1.0])
    assert iid["relative_frechet"].is_monotonic_decreasing  # more kernel noise washes out the correlations
    markdown = (tmp_path / "tables" / "prior_mismatch.md").read_text()
    assert "| mnist | gbm | correlated * | 0.64 |" in markdown and "| mnist | gbm | iid | 0.64 |" in markdown
    assert (tmp_path / "mismatch.png").is_file() and (tmp_path / "mismatch.pdf").is_file()
    record = json.loads((tmp_path / "tables" / "prior_mismatch.json").read_text())
    assert record["rows"] == len(table) and record["sigma2_T_grid"] == [0.16, 1.0] and record["limit"] == 600
    assert record["timing"]["metrics_s"] > 0  # counted as work in results/timing.json


def test_bad_mismatch_input_names_the_option(tmp_path, capsys):
    argv = ["report", "prior-mismatch", "--data", str(tmp_path / "none.npz"), "--out-dir", str(tmp_path)]
    assert main(argv + ["--methods", "[1, 2]"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(argv + ["--methods", '{"gbm": {"name": "gbm"}}', "--sigma2-t", "0"]) == 2
    assert "--sigma2-t" in capsys.readouterr().err


def test_a_configuration_without_prior_mismatch_rows_writes_an_empty_table_and_a_figure_saying_so(tmp_path):
    """Beta diffusion alone (no method with a prior to compare with p_T) must not stop the pipeline."""
    from gbm.reporting.prior_mismatch import mismatch_figure, write_mismatch

    written = write_mismatch([], tmp_path, record={"rows": 0})
    assert sorted(p.name for p in written) == ["prior_mismatch.csv", "prior_mismatch.json", "prior_mismatch.md",
                                               "prior_mismatch.tex"]
    assert "Prior mismatch" in (tmp_path / "prior_mismatch.md").read_text()
    mismatch_figure([], tmp_path / "prior_mismatch.png")
    assert (tmp_path / "prior_mismatch.png").stat().st_size > 0
