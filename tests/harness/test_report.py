"""Reports from a real small study (study runner -> MLflow sqlite store -> rho report): the tables'
numbers against the metrics MLflow logged, the files, the parent run's artifacts, the leaderboard,
optuna-dashboard."""

import base64
import csv
import json
import math
import re
import signal
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient
from report_study import METRIC, NAME, build_small_study
from scipy import stats as scipy_stats

from harness.report import write_report
from harness.report.build import _reference_block
from harness.report.compare import reference_table
from harness.report.plots import pareto_front
from harness.report.references import REFERENCES
from harness.report.render import to_html, to_markdown
from harness.report.stats import cell_stats

REPO = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def small_study(tiny_synth, _mlflow_template, tmp_path_factory):
    return build_small_study(tmp_path_factory.getbasetemp() / "report_study", tiny_synth, _mlflow_template)


def rho(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,
    )


def logged_runs(study) -> list:
    """The MLflow run of every Optuna trial, fetched one by one (not through the report's search)."""
    trials = optuna.load_study(study_name=NAME, storage=study.storage).trials
    client = MlflowClient(study.tracking_uri)
    return [client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials]


def expected_cells(runs) -> dict[tuple[str, str], list[float]]:
    """(method, ρ or "baseline") -> the metric of each seed, straight from the logged runs."""
    cells: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        method = run.data.params["method.name"]
        column = "baseline" if method == "random" else run.data.params["data.clips"]
        cells.setdefault((method, column), []).append(run.data.metrics[METRIC])
    return cells


def test_report_tables_match_the_metrics_logged_in_mlflow(small_study, tmp_path):
    out = tmp_path / "report"
    result = write_report(small_study.tracking_uri, NAME, out=out, page_size=3)  # 4 pages of runs
    runs = logged_runs(small_study)
    assert len(runs) == 10 and len(result.runs.frame) == 10, "paging found every child run"
    assert set(result.runs.frame["run_id"]) == {r.info.run_id for r in runs}

    comp = result.comparisons[0]
    assert (comp.metric, comp.rows, comp.columns, comp.direction) == (
        METRIC,
        "method.name",
        "data.clips",
        "maximize",
    )
    expected = expected_cells(runs)
    assert comp.row_labels == ["byol", "simclr", "random"] and comp.column_labels == ["1", "2", "baseline"]
    assert len(comp.stats) == len(expected) == 5
    for (method, column), values in expected.items():
        cell = comp.cell(method, column)
        assert cell["n"] == len(values) == 2
        assert cell["mean"] == pytest.approx(statistics.mean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        sem = statistics.stdev(values) / math.sqrt(len(values))
        low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=statistics.mean(values), scale=sem)
        if sem > 0:
            assert (cell["ci_low"], cell["ci_high"]) == pytest.approx((low, high))
        else:
            assert cell["ci_low"] == cell["ci_high"] == pytest.approx(statistics.mean(values))
        assert bool(cell["baseline"]) == (method == "random")
    for column in ("1", "2"):
        means = {m: statistics.mean(v) for (m, c), v in expected.items() if c == column}
        best = {m for m, v in means.items() if v == max(means.values())}
        assert {m for m in means if comp.cell(m, column)["best"]} == best
    assert not comp.cell("random", "baseline")["best"], "baselines are references, never marked best"

    with open(out / f"{METRIC}.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method.name"], r["data.clips"]): float(r["mean"]) for r in rows} == pytest.approx(
        {key: statistics.mean(values) for key, values in expected.items()}
    )

    markdown = (out / "report.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0] == "| method.name \\ data.clips | 1 | 2 | baseline |"
    byol = next(line for line in table if line.startswith("| byol "))
    cells = [c.strip() for c in byol.strip("|").split("|")][1:3]
    for column, text in zip(("1", "2"), cells, strict=True):
        values = expected[("byol", column)]
        assert text.strip("*").startswith(f"{statistics.mean(values):.1f} ± ")
        assert text.startswith("**") == bool(comp.cell("byol", column)["best"])
        assert "n=2, 95% CI" in text

    page = (out / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page, "self-contained"
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(p for p in out.glob("*.png"))
    assert len(images) == len(pngs) >= 3
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    assert {p.name for p in pngs} >= {f"{METRIC}_vs_data.clips.png", f"{METRIC}_vs_compute.png"}
    assert any(p.name.startswith("curves_") for p in pngs), "training curves of the best trials"

    listed = pd.read_csv(out / "runs.csv")
    assert set(listed["run_id"]) == {r.info.run_id for r in runs} and len(listed) == 10
    client = MlflowClient(small_study.tracking_uri)
    logged = {Path(a.path).name for a in client.list_artifacts(result.runs.parent.info.run_id, "report")}
    assert logged == {p.name for p in result.files}


def test_pareto_front_and_the_compute_plot(small_study, tmp_path):
    assert pareto_front([1, 2, 3, 4], [50, 40, 60, 60]) == [0, 2]
    assert pareto_front([1, 2, 3], [0.5, 0.3, 0.4], maximize=False) == [0, 1]
    result = write_report(small_study.tracking_uri, NAME, out=tmp_path, log_to_parent=False)
    runs = result.runs.finished
    cost = runs["device_hours"].to_list()  # cost.device_seconds / 3600 (tests/harness/test_cost.py)
    expected = [runs["run_id"].iloc[i] for i in pareto_front(cost, runs[METRIC].to_list())]
    assert result.pareto_run_ids == expected
    best = runs.sort_values(METRIC, ascending=False)["run_id"].head(3).to_list()
    assert result.best_run_ids == best


def test_cell_stats_orders_numbers_naturally_and_gives_t_intervals():
    frame = pd.DataFrame(
        {"m": ["a", "a", "a", "b", "b"], "rho": [10, 2, 2, 2, None], "top1": [70.0, 40.0, 50.0, 60.0, 30.0]}
    )
    stats = cell_stats(frame, "m", "rho", "top1")
    assert list(zip(stats["m"], stats["rho"], stats["n"], strict=True)) == [
        (
            "a",
            "2",
            2,
        ),
        ("a", "10", 1),
        ("b", "2", 1),
        ("b", "-", 1),
    ]
    two = stats.iloc[0]
    assert two["mean"] == 45.0 and two["std"] == pytest.approx(math.sqrt(50))
    assert two["ci_high"] - two["mean"] == pytest.approx(12.7062047 * math.sqrt(50) / math.sqrt(2))
    assert math.isnan(stats.iloc[1]["ci_low"])


def _full_scale_frame(metric: str = "eval.k400.linear_slowfast.top1") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "backbone.name": ["slow_r50", "slow_r50", "slow_r50", "slow_r50", "r3d_tiny"],
            "optim.epochs": [200, 200, 200, 200, 200],
            "method.name": ["moco", "moco", "moco", "byol", "moco"],
            "data.clips": [2, 2, 3, 3, 2],
            metric: [66.0, 64.0, 68.0, 60.0, 10.0],
        }
    )


def test_published_figures_sit_beside_full_scale_runs_in_one_column_per_source():
    metric = "eval.k400.linear_slowfast.top1"
    table, citations = reference_table(_full_scale_frame(), metric)
    rows = {(r["method"], r["rho"]): r for _, r in table.iterrows()}
    assert set(rows) == {("moco", 2), ("moco", 3)}, "byol ρ=3 has no published figure; r3d_tiny none at all"
    moco2, moco3 = rows["moco", 2], rows["moco", 3]
    assert (moco2["ours"], moco2["n"], moco2["paper"], moco2["model zoo"]) == (65.0, 2, 65.8, 66.6)
    assert moco2["ours - paper"] == pytest.approx(-0.8) and moco2["ours - model zoo"] == pytest.approx(-1.6)
    assert moco3["paper"] == 67.3 and math.isnan(moco3["model zoo"]), "the zoo has no ρ = 3 model"
    assert citations[0].startswith("Feichtenhofer") and "contrastive_ssl/README.md" in citations[1]
    # the cached-feature probe is compared too (its metric names the protocol); other setups are not
    assert not reference_table(_full_scale_frame("eval.k400.linear.top1"), "eval.k400.linear.top1")[0].empty
    assert reference_table(_full_scale_frame().assign(**{"optim.epochs": 100}), metric)[0].empty
    assert reference_table(_full_scale_frame(), "eval.synth-linear.linear.top1")[0].empty


def test_ucf101_figures_are_those_of_fine_tuning():
    metric = "eval.ucf101-split1.finetune.top1"
    frame = _full_scale_frame(metric).assign(**{"data.clips": [4, 4, 2, 4, 2], "method.name": ["byol"] * 5})
    table, _ = reference_table(frame, metric)
    rows = {r["rho"]: r for _, r in table.iterrows()}
    assert (rows[4]["paper"], rows[4]["model zoo"]) == (93.8, 94.7)
    assert math.isnan(rows[2]["paper"]) and rows[2]["model zoo"] == 94.0


def test_every_reference_is_the_figure_of_its_source():
    """The table as checked against SlowFast's projects/contrastive_ssl/README.md (model zoo) and
    the paper's numbers as issue 16 quotes them."""
    figures = {(r.source, r.task, r.method, r.rho): r.value for r in REFERENCES}
    assert len(figures) == len(REFERENCES), "one figure per source, task, method and ρ"
    assert {k[2:]: v for k, v in figures.items() if k[:2] == ("paper", "k400-linear")} == {
        ("moco", 2): 65.8, ("moco", 3): 67.3, ("byol", 4): 68.9, ("simclr", 2): 60.5, ("swav", 2): 61.6,
    }  # fmt: skip
    assert {k[2:]: v for k, v in figures.items() if k[:2] == ("model zoo", "k400-linear")} == {
        ("moco", 2): 66.6, ("byol", 2): 67.4, ("simclr", 2): 61.5, ("swav", 2): 62.6,
        ("moco", 4): 71.0, ("byol", 4): 70.1,
    }  # fmt: skip
    assert {k[2:]: v for k, v in figures.items() if k[:2] == ("model zoo", "ucf101-finetune")} == {
        ("moco", 2): 91.3, ("byol", 2): 94.0, ("simclr", 2): 88.3, ("swav", 2): 90.2,
        ("moco", 4): 94.5, ("byol", 4): 94.7,
    }  # fmt: skip
    assert figures["paper", "ucf101-finetune", "byol", 4] == 93.8


def test_a_report_renders_each_source_in_its_own_column():
    table, citations = reference_table(_full_scale_frame(), "eval.k400.linear_slowfast.top1")
    block = _reference_block(table, citations)
    assert block.header == [
        "method",
        "ρ",
        "ours",
        "paper [1]",
        "SlowFast model zoo [2]",
        "ours − paper",
        "ours − model zoo",
    ]
    markdown = to_markdown([block])
    lines = [line for line in markdown.splitlines() if line.startswith("| moco")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [c[:5] for c in cells] == [
        ["moco", "2", "65.0 (n=2)", "65.8", "66.6"],
        ["moco", "3", "68.0 (n=1)", "67.3", "-"],
    ]
    assert cells[1][5:] == ["+0.7", "-"]
    html = to_html([block], "t")
    assert "<th>paper [1]</th>" in html and "<th>SlowFast model zoo [2]</th>" in html


def test_report_and_leaderboard_from_the_command_line(small_study, tmp_path):
    uri = small_study.tracking_uri
    out = rho("report", NAME, "--tracking-uri", uri, "--out", str(tmp_path / "r"), "--no-log")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "r" / "report.html").is_file() and "report.html" in out.stdout

    board = rho(
        "leaderboard", "--tracking-uri", uri, "--benchmark", "tiny-knn", "--out", str(tmp_path / "lb")
    )
    assert board.returncode == 0, board.stderr[-3000:]
    best: dict[tuple[str, str], tuple[float, str]] = {}
    for run in logged_runs(small_study):
        key = (run.data.tags["method"], run.data.tags["rho"])
        value = run.data.metrics[METRIC]
        if key not in best or value > best[key][0]:
            best[key] = (value, run.info.run_id)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])
    table = pd.read_csv(tmp_path / "lb" / "leaderboard.csv")
    assert len(table) == len(best) == 5 and table["rank"].to_list() == [1, 2, 3, 4, 5]
    assert table["top1"].to_list() == [value for _, (value, _) in ranked]
    for _, row in table.iterrows():
        value, run_id = best[(row["method"], str(row["rho"]))]
        assert (row["top1"], row["run_id"]) == (value, run_id)  # ties: the earliest run
        assert run_id in board.stdout
    assert (tmp_path / "lb" / "leaderboard.html").read_text().count("<tr>") == 6

    unknown = rho("leaderboard", "--tracking-uri", uri, "--benchmark", "nope")
    assert unknown.returncode == 2 and "--benchmark nope" in unknown.stderr and "tiny-knn" in unknown.stderr
    missing = rho("report", "no-such-study", "--tracking-uri", uri)
    assert missing.returncode == 2 and "no MLflow experiment named 'no-such-study'" in missing.stderr
    assert NAME in missing.stderr and "Traceback" not in missing.stderr
    bad = rho("report", NAME, "--tracking-uri", uri, "--rows", "method.nme", "--no-log")
    assert bad.returncode == 2 and "--rows method.nme" in bad.stderr


def test_dashboard_serves_the_study_and_stops_on_ctrl_c(small_study):
    dashboard = subprocess.Popen(
        [sys.executable, "-m", "harness", "dashboard", NAME, "--storage", small_study.storage],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        first = dashboard.stdout.readline()
        assert f"Optuna dashboard of study {NAME}" in first and "http://127.0.0.1:" in first, first
        url = first.split(" at ")[1].split()[0]
        root = url.split("/dashboard/")[0]
        study_id = int(url.rsplit("/", 1)[1])
        studies = json.load(urllib.request.urlopen(f"{root}/api/studies", timeout=30))["study_summaries"]
        assert [(s["study_id"], s["study_name"]) for s in studies] == [(study_id, NAME)]
        detail = json.load(urllib.request.urlopen(f"{root}/api/studies/{study_id}", timeout=60))
        trials = optuna.load_study(study_name=NAME, storage=small_study.storage).trials
        assert sorted((t["number"], t["values"][0]) for t in detail["trials"]) == [
            (t.number, t.value) for t in trials
        ]
        assert {t["state"] for t in detail["trials"]} == {"Complete"}
        importances = json.load(
            urllib.request.urlopen(f"{root}/api/studies/{study_id}/param_importances", timeout=60)
        )
        assert "param_importances" in importances
        assert urllib.request.urlopen(url, timeout=30).status == 200  # the study's page (the web app)
    finally:
        dashboard.send_signal(signal.SIGINT)
        rest = dashboard.communicate(timeout=60)[0]
    assert dashboard.returncode == 0 and "Optuna dashboard stopped" in rest
    missing = rho("dashboard", "no-such-study", "--storage", small_study.storage)
    assert missing.returncode == 2 and "no study named 'no-such-study'" in missing.stderr


def test_the_fast_param_parser_gives_what_yaml_gives():
    """parse_value's fast paths (numbers, booleans, names) agree with yaml.safe_load on every kind
    of text a param or tag holds, the ones YAML reads unexpectedly included."""
    import yaml

    from harness.report.runs import parse_value

    texts = [
        "0", "7", "-3", "+4", "010", "0x10", "1_000", "12345678901234567890", "0.5", "-0.25", "1.", "1.0e+5",
        "1.0e5", "1e-3", "3.0E-2", ".5", ".inf", "-.inf", ".nan", "True", "true", "TRUE", "yes", "No", "on",
        "OFF", "y", "n", "None", "null", "~", "", "simclr", "r3d_tiny", "cosine_with_warmup", "a-b", "a b",
        "[1, 2]", "{a: 1}", "2026-12-07", "12:30", "'quoted'", "sgd:", "# x",
    ]  # fmt: skip

    def reference(text):  # parse_value before its fast paths: YAML for everything
        if text == "None":
            return None
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            return text
        return value if isinstance(value, (int, float, str, bool)) else text

    for text in texts:
        expected, got = reference(text), parse_value(text)
        assert type(got) is type(expected) and (got == expected or got != got), (text, got, expected)
