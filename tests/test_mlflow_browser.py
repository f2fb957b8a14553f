"""The MLflow UI as a user sees it: the smoke config's training and evaluation runs (run through the real
Snakemake) served by a real ``mlflow server`` on loopback, opened in headless Chromium (Debian's package,
driven by selenium). Screenshots are kept in tests/artifacts/mlflow-browser/ (printed; ignored by git).

Select with ``-m browser``; it runs by default. Skipped, with the reason, where Chromium and its driver are
missing and cannot be installed (``apt-get install chromium chromium-driver`` needs root on Debian).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_serving import mlflow_server

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts" / "mlflow-browser"
SMOKE = REPO / "config" / "smoke.yaml"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=2800,900"]
ROW = "mnist|gbm|dale-langevin|2"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def chromium_or_skip() -> None:
    """Chromium and chromedriver from Debian's packages, installed when root on Debian, else a skip."""
    if Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
        return
    if os.geteuid() == 0 and Path("/etc/debian_version").is_file() and shutil.which("apt-get"):
        command = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
        install = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if install.returncode != 0:  # a fresh machine has no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=900)
            install = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if install.returncode == 0 and Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file():
            return
        pytest.skip(f"apt-get install chromium chromium-driver failed: {install.stderr[-500:]}")
    pytest.skip("no Chromium: needs Debian's chromium and chromium-driver packages (apt-get as root)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium with a fresh profile."""
    chromium_or_skip()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[test]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory) -> Path:
    """The smoke config's GBM runs (both seeds, both samplers) through the real Snakemake: live training runs,
    then sampling, scoring and the mirror's evaluation runs."""
    workdir = tmp_path_factory.mktemp("smoke")
    bin_dir = Path(sys.executable).parent
    (workdir / "results" / "data").mkdir(parents=True)
    subprocess.run([str(bin_dir / "gbm"), "prepare-data", "mnist", "--out", str(workdir / "results/data/mnist.npz")],
                   check=True, capture_output=True)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    targets = [f"results/mnist/gbm/seed{seed}/mlflow.json" for seed in (0, 1)]
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *targets, "--directory",
                          str(workdir), "--cores", "2", "--configfile", str(SMOKE)],
                         capture_output=True, text=True, cwd=workdir, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return workdir / "results"


SCROLL_DOWN = """
for (const e of document.querySelectorAll('*')) {
  const y = getComputedStyle(e).overflowY;
  if ((y === 'auto' || y === 'scroll') && e.scrollHeight > e.clientHeight) e.scrollBy(0, 400);
}"""


def shows(driver, texts: list[str], screenshot: str, timeout: float = 180.0, scroll: bool = False) -> str:
    """The page's text once it shows every one of ``texts``; a screenshot either way (kept as an artefact).
    With ``scroll``, the page is scrolled down between looks, as a reader scrolls to a table's lower rows
    (MLflow renders only the rows in view)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    body = lambda: driver.find_element("tag name", "body").text  # noqa: E731

    def shown(d) -> bool:
        if all(t in body() for t in texts):
            return True
        if scroll:
            d.execute_script(SCROLL_DOWN)
        return False

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(shown)
    except TimeoutException:
        pytest.fail(f"{driver.current_url} does not show {[t for t in texts if t not in body()]}")
    finally:
        driver.save_screenshot(str(ARTIFACTS / screenshot))
        print(f"screenshot: {ARTIFACTS / screenshot}")
    return body()


def displayed(value: float) -> list[str]:
    """How the runs table may print a metric value (MLflow rounds to a few decimals)."""
    return {f"{value:.{digits}f}".rstrip("0").rstrip(".") for digits in range(0, 5)}


def test_experiment_shows_training_and_evaluation_runs_with_fid_and_compares_a_rows_seeds(smoke_results,
                                                                                         browser):
    from mlflow.tracking import MlflowClient

    from gbm.tracking.mirror import view_url

    with mlflow_server(smoke_results) as base:
        client = MlflowClient(base)
        experiment = client.get_experiment_by_name("smoke").experiment_id
        evaluations = client.search_runs([experiment], "tags.kind = 'evaluation'")
        trainings = client.search_runs([experiment], "tags.kind = 'training'")
        assert len(evaluations) == 4 and len(trainings) == 2

        browser.get(view_url(base, experiment, "training"))
        shows(browser, ["Model training", "mnist/gbm/seed0", "mnist/gbm/seed1", "train_loss"], "training.png")

        browser.get(view_url(base, experiment, "evaluations"))
        text = shows(browser, ["fid", "kid_mean", "domain.fd", "collapse.any", "nfe", "method", "sampler", "seed"]
                     + [r.info.run_name for r in evaluations],
                     "evaluations.png")
        for run in evaluations:
            fid = json.loads((smoke_results / run.info.run_name / "metrics.json").read_text())["fid"]
            assert run.data.metrics["fid"] == fid
            assert any(shown in text for shown in displayed(fid)), f"FID {fid} of {run.info.run_name} not shown"

        row = [r for r in evaluations if r.data.tags["row"] == ROW]
        assert sorted(r.data.tags["seed"] for r in row) == ["0", "1"]
        ids = json.dumps([r.info.run_id for r in row])
        browser.get(f"{base}/#/compare-runs?runs={ids}&experiments={json.dumps([experiment])}")
        # Its metrics table lists the metrics by name (collapse.*, domain.* before fid): scroll down to FID.
        compare = shows(browser, ["Comparing 2 Runs", "\nfid\n"] + [r.info.run_name for r in row], "compare.png",
                        scroll=True)
        for run in row:
            assert any(shown in compare for shown in displayed(run.data.metrics["fid"]))
