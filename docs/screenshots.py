"""Regenerate the docs site's screenshots (docs/images/*.png) from a real small demo store.

    .venv/bin/python docs/screenshots.py                 # about 5-8 minutes on 2 cores
    .venv/bin/python docs/screenshots.py --workdir /tmp/shots --keep

1. In an empty folder, ``rho demo --spec SPEC`` (the real command line) synthesises the demo
   dataset (copied from the checkout's ``data/synth`` when it is there: the demo checks its stamp
   and regenerates it when stale), runs a small study into ``mlruns/`` (MLflow sqlite store, Optuna
   storage) and writes its report; ``rho leaderboard`` writes the leaderboard. The default spec is
   ``docs-demo``: ρSimCLR and ρBYOL × ρ ∈ {1, 2} plus random init, 20 epochs of 5 steps each (the
   demo's experiment, shortened; not a finding). ``--spec studies/cpu/smoke.yaml`` runs the one-trial
   smoke demo instead.
2. ``rho ui`` serves the MLflow UI on that store (127.0.0.1, a free port); headless Chromium
   (Debian's ``chromium`` and ``chromedriver``, through Selenium, as tests/harness/test_browser.py)
   opens the report, the leaderboard and the UI at 1280×800 and saves PNGs, reduced to a 256-colour
   palette to keep each under 300 KB.

Needs the dev environment (selenium) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"
WINDOW = (1280, 800)
MAX_BYTES = 300_000
STUDY = "docs-demo"
SPEC = f"""\
# The docs site's screenshot study (docs/screenshots.py): the demo's experiment, shortened.
name: {STUDY}
description: >-
  Screenshots for the docs: rho-SimCLR and rho-BYOL x rho in {{1, 2}} plus random init on the
  synthetic dataset, 20 epochs of 5 steps each. A picture of the tools, not a finding.
experiment: {REPO / "studies" / "experiments" / "demo.yaml"}
overrides:
  optim.epochs: 20
grid:
  method:
    - {{name: simclr, temperature: 0.2, hidden_dims: [256], out_dim: 64}}
    - {{name: byol, projector_hidden_dims: [256], predictor_hidden_dims: [256], out_dim: 64, momentum: 0.99}}
  data.clips: [1, 2]
baselines:
  - {{method: {{name: random}}}}
seeds: [0]
objective: {{metric: eval.synth-linear.linear.top1, direction: maximize}}
table: {{rows: method.name, columns: data.clips}}
"""


def rho(*args: str, cwd: Path) -> None:
    print("$ rho", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, check=True)


def study_name(spec: str | None) -> str:
    """The study that ``spec`` (None: the docs-demo study) names."""
    if spec is None:
        return STUDY
    import yaml

    from harness.resources import locate

    return yaml.safe_load(locate(spec).read_text())["name"]


def build_store(work: Path, spec: str | None) -> str:
    """Run the demo study in ``work`` and write the leaderboard; returns the study's name."""
    data = REPO / "data" / "synth"
    if data.is_dir() and not (work / "data" / "synth").exists():
        shutil.copytree(data, work / "data" / "synth")  # the demo regenerates it if stale
    if spec is None:
        (work / "docs-demo.yaml").write_text(SPEC)
    rho("demo", "--spec", spec or "docs-demo.yaml", cwd=work)
    rho("leaderboard", "--benchmark", "synth-linear", cwd=work)
    return study_name(spec)


def start_ui(work: Path) -> tuple[subprocess.Popen, str]:
    """``rho ui`` on the store, in its own process group; its URL once it answers."""
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--tracking-uri", f"sqlite:///{work}/mlruns/mlflow.db"],
        cwd=work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    first = ui.stdout.readline()
    ready = ui.stdout.readline()
    if "MLflow UI ready" not in ready:
        raise SystemExit(f"rho ui did not start:\n{first}{ready}{ui.stdout.read()}")
    return ui, first.split(" at ")[1].split()[0]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--hide-scrollbars"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={WINDOW[0]},{WINDOW[1]}")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    # --window-size sizes the window, not the page: make the viewport itself 1280×800.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


def wait_for(driver, css: str, timeout: float = 120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    )


def save(driver, name: str) -> Path:
    """The viewport as a palette PNG (256 colours) under ``IMAGES``; refuses one over ``MAX_BYTES``."""
    from PIL import Image

    time.sleep(1.0)  # let transitions and lazy images settle
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path = IMAGES / name
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    size = path.stat().st_size
    print(f"{path.relative_to(REPO)}: {image.size[0]}x{image.size[1]}, {size / 1000:.0f} KB", flush=True)
    if size > MAX_BYTES:
        raise SystemExit(f"{path} is {size} bytes, over {MAX_BYTES}")
    return path


def widen_columns(driver, extra: dict[str, int]) -> None:
    """Drag the resize handle of each runs-table column whose header starts with a key by its pixels."""
    from selenium.webdriver import ActionChains
    from selenium.webdriver.common.by import By

    for header, pixels in extra.items():
        cells = [
            c
            for c in driver.find_elements(By.CSS_SELECTOR, ".ag-header-cell")
            if c.text.strip().startswith(header)
        ]
        if cells:
            handle = cells[0].find_element(By.CSS_SELECTOR, ".ag-header-cell-resize")
            ActionChains(driver).click_and_hold(handle).move_by_offset(pixels, 0).release().perform()
            time.sleep(0.3)


def shoot(work: Path, study: str) -> list[Path]:
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    IMAGES.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    driver = browser()
    ui = None
    try:
        # The study's report: the tables, then the first plot.
        driver.get((work / "reports" / study / "report.html").as_uri())
        wait_for(driver, "table", timeout=30)
        saved.append(save(driver, "report-tables.png"))
        image = driver.find_element(By.TAG_NAME, "img")
        driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", image)
        saved.append(save(driver, "report-plots.png"))

        driver.get((work / "reports" / "leaderboard.html").as_uri())
        wait_for(driver, "table", timeout=30)
        saved.append(save(driver, "leaderboard.png"))

        ui, url = start_ui(work)
        client = MlflowClient(f"sqlite:///{work}/mlruns/mlflow.db")
        experiment = client.get_experiment_by_name(study)
        runs = client.search_runs([experiment.experiment_id])
        parent = next(r for r in runs if r.data.tags.get("rho.role") == "study")
        child = max(
            (r for r in runs if r.data.tags.get("rho.role") != "study" and r.info.status == "FINISHED"),
            key=lambda r: r.data.metrics.get("eval.synth-linear.linear.top1", -1),
        )
        runs_page = f"{url}/#/experiments/{experiment.experiment_id}/runs"
        driver.get(runs_page)
        wait_for(driver, f"a[href$='/runs/{parent.info.run_id}']")
        # The UI keeps its view state in localStorage: the parent run expanded, the swept params and
        # the evaluation metrics as columns, the assistant panel closed.
        metrics = sorted(k for k in child.data.metrics if k.startswith("eval.") and k.endswith(".top1"))
        state = {
            "selectedColumns": [f"params.`{k}`" for k in ("method.name", "data.clips")]
            + [f"metrics.`{k}`" for k in metrics],
            "runsExpanded": {parent.info.run_id: True},
        }
        driver.execute_script(
            """const key = `MLflowLocalStorage-1.1-ExperimentPage-["${arguments[1]}"]-ReactComponentState`;
            localStorage.setItem(key, JSON.stringify({...JSON.parse(localStorage.getItem(key) || '{}'), ...arguments[0]}));
            localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');""",
            state,
            experiment.experiment_id,
        )
        driver.refresh()
        wait_for(driver, f"a[href$='/runs/{child.info.run_id}']")
        driver.find_element(By.CSS_SELECTOR, "button[aria-label='Toggle sidebar']").click()
        time.sleep(1)
        widen_columns(driver, {"Run Name": 150, **{metric: 70 for metric in metrics}})
        saved.append(save(driver, "mlflow-study-runs.png"))

        driver.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{child.info.run_id}")
        # The run page renders in steps: wait for its parent-run line and the metric, then let it settle.
        WebDriverWait(driver, 120).until(
            lambda d: (
                "Parent run" in d.find_element(By.TAG_NAME, "body").text
                and any(
                    e.is_displayed()
                    for e in d.find_elements(By.XPATH, f"//*[normalize-space(text())='{metrics[0]}']")
                )
            )
        )
        time.sleep(3)
        metric = driver.find_element(By.XPATH, f"//*[normalize-space(text())='{metrics[0]}']")
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", metric)
        saved.append(save(driver, "mlflow-trial-run.png"))

        driver.get(f"{url}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts")

        def shown(text: str):
            """A displayed element whose text is ``text``, else None."""
            from selenium.common.exceptions import StaleElementReferenceException

            try:
                found = driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{text}']")
                return next((element for element in found if element.is_displayed()), None)
            except StaleElementReferenceException:  # re-rendered meanwhile: look again
                return None

        folder = WebDriverWait(driver, 120).until(lambda d: shown("report"))
        if shown("report.html") is None:  # the tree may open with the folder expanded already
            folder.click()
        page = WebDriverWait(driver, 60).until(lambda d: shown("report.html"))
        driver.execute_script("arguments[0].click()", page)  # the report, previewed inside the UI
        wait_for(driver, "iframe", timeout=60)
        time.sleep(2)
        saved.append(save(driver, "mlflow-parent-report.png"))
    finally:
        driver.quit()
        if ui is not None:
            # SIGTERM, which rho ui takes as Ctrl-C (it stops its server's process group): SIGINT
            # would be ignored when this script runs in the background of a non-interactive shell.
            ui.terminate()
            ui.communicate(timeout=120)
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, help="folder for the demo store (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--no-demo", action="store_true", help="reuse the store already in --workdir")
    parser.add_argument("--spec", help="a study spec for `rho demo --spec` (default: the docs-demo study)")
    args = parser.parse_args()
    for variable in ("MLFLOW_TRACKING_URI", "RHO_STORAGE", "RHO_DATA"):  # the demo's own stores and data
        os.environ.pop(variable, None)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="rho-docs-shots-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        study = study_name(args.spec) if args.no_demo else build_store(work, args.spec)
        from selenium.common.exceptions import WebDriverException

        for attempt in (1, 2):  # the MLflow UI renders in steps; a stale element gets one more try
            try:
                shoot(work, study)
                break
            except WebDriverException as exc:
                if attempt == 2:
                    raise
                print(f"retrying the screenshots once: {exc.__class__.__name__}: {exc.msg}", flush=True)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"store kept in {work}")
    print(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
