"""End to end in a real browser: headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven
by Selenium) opens the MLflow UI that ``rho ui`` serves for a real small study's store, finds the
study's parent run, expands it, opens one child run and reads its metric; then opens the study's
HTML report. Screenshots are saved under the test's tmp_path."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from report_study import METRIC, NAME, build_small_study

from harness.report import write_report
from harness.report.compare import format_value

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (CHROMIUM and CHROMEDRIVER),
        reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
    ),
]


@pytest.fixture(scope="module")
def small_study(tiny_synth, _mlflow_template, tmp_path_factory):
    return build_small_study(tmp_path_factory.getbasetemp() / "report_study", tiny_synth, _mlflow_template)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def rho_ui(small_study):
    """``rho ui`` as a real process in its own process group (as a terminal runs it); its URL."""
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--tracking-uri", small_study.tracking_uri],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    first = ui.stdout.readline()
    assert "http://127.0.0.1:" in first, first
    ready = ui.stdout.readline()
    assert "MLflow UI ready" in ready, ready + (ui.stdout.read() if ui.poll() is not None else "")
    url = first.split(" at ")[1].split()[0]
    yield url
    os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the whole group
    rest = ui.communicate(timeout=90)[0]
    assert ui.returncode == 0 and "MLflow UI stopped" in rest, rest
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    listing = subprocess.run(["ps", "-eo", "pgid="], capture_output=True, text=True).stdout.split()
    assert str(ui.pid) not in listing, "a server process outlived Ctrl-C"


def wait_for(driver, css: str, timeout: float = 120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def test_mlflow_ui_and_html_report_in_chromium(small_study, rho_ui, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    client = MlflowClient(small_study.tracking_uri)
    experiment = client.get_experiment_by_name(NAME)
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rho.role") == "study")
    child = next(r for r in runs if r.data.tags.get("trial") == "0")
    shots = tmp_path / "screenshots"
    shots.mkdir()

    browser.get(f"{rho_ui}/#/experiments/{experiment.experiment_id}/runs")
    link = wait_for(browser, f"a[href$='/runs/{parent.info.run_id}']")
    assert link.text == NAME, "the study's parent run is listed under its name"
    browser.save_screenshot(str(shots / "mlflow_study_runs.png"))
    row = link.find_element(By.XPATH, "./ancestor::div[contains(@class, 'ag-row')]")
    row.find_element(By.TAG_NAME, "button").click()  # expand the parent: its trials appear
    child_link = wait_for(browser, f"a[href$='/runs/{child.info.run_id}']")
    assert child_link.text == child.info.run_name
    browser.save_screenshot(str(shots / "mlflow_study_expanded.png"))

    child_link.click()
    name_cell = WebDriverWait(browser, 120).until(
        lambda d: next(iter(d.find_elements(By.XPATH, f"//*[normalize-space(text())='{METRIC}']")), None)
    )
    metric_row = name_cell.find_element(By.XPATH, "./ancestor::*[@role='row' or self::tr][1]")
    shown = metric_row.text.replace(METRIC, "").split()
    assert float(shown[0]) == pytest.approx(child.data.metrics[METRIC]), metric_row.text
    body = browser.find_element(By.TAG_NAME, "body").text
    assert "Parent run" in body and NAME in body
    browser.save_screenshot(str(shots / "mlflow_child_run.png"))

    report = write_report(small_study.tracking_uri, NAME, out=tmp_path / "report", log_to_parent=False)
    browser.get((tmp_path / "report" / "report.html").as_uri())
    table = wait_for(browser, f"table[id='table-{METRIC}']", timeout=30)
    comp = report.comparisons[0]
    best = [cell.text.split("\n")[0] for cell in table.find_elements(By.CSS_SELECTOR, "td.best")]
    expected = [
        f"{format_value(row['mean'])} ± {format_value(row['std'], row['mean'])}"
        for _, row in comp.stats[comp.stats["best"]].iterrows()
    ]
    assert sorted(best) == sorted(expected) and best
    baseline = table.find_element(By.CSS_SELECTOR, "tr.baseline").text
    assert baseline.startswith("random")
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) >= 3 and all(
        browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in images
    ), "every embedded plot renders"
    browser.save_screenshot(str(shots / "report.png"))
    saved = sorted(p.name for p in shots.glob("*.png"))
    assert saved == [
        "mlflow_child_run.png",
        "mlflow_study_expanded.png",
        "mlflow_study_runs.png",
        "report.png",
    ]
    print(f"screenshots in {shots}")
