"""`gbm score` on folders of PNGs shows how far the Inception features have got (issue 24: it printed nothing
for minutes), and `--no-progress` silences it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture
def folders(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("real", "fake"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("quiet", [False, True])
def test_score_of_two_png_folders_shows_progress_unless_told_not_to(folders, capsys, monkeypatch, quiet):
    from gbm.cli import main

    monkeypatch.setenv("GBM_NO_DOWNLOAD", "1")
    argv = ["score", "--real", str(folders / "real"), "--fake", str(folders / "fake"), "--no-cache",
            "--interval-draws", "0", "--no-sid"] + (["--no-progress"] if quiet else [])
    assert main(argv) == 0
    err = capsys.readouterr().err
    for name in ("real", "fake"):
        assert (f"Inception features: {folders / name}" in err) != quiet
    assert ("3/3" in err) != quiet
