"""Paired seed statistics (issue 29, items 4 and 5): intervals against scipy, verdicts, the Welch
fallback, the seed planner against simulated studies, the report's comparison table on a real
MLflow store and the command-line flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from scipy import stats as scipy_stats

from harness.cli import main
from harness.report import write_report
from harness.report.paired import (
    PAIRED,
    WELCH,
    default_pairs,
    detectable,
    difference,
    paired_interval,
    power,
    seeds_needed,
    verdict,
    welch_interval,
)

METRIC = "eval.synth-linear.linear.top1"
STUDY = "paired-demo"

# Known data: per method and ρ, the metric of seeds 0, 1, 2 (ρ = 2 above ρ = 1 by 4-6 points with a
# shared per-seed offset, the pairing's point; byol and moco at ρ = 2 within noise of each other).
VALUES = {
    ("byol", 1): [40.0, 47.0, 43.0],
    ("byol", 2): [45.0, 52.5, 47.5],
    ("moco", 1): [38.0, 44.0, 41.0],
    ("moco", 2): [44.5, 48.0, 47.5],
}


def test_the_paired_interval_is_scipys_ttest_rel():
    a, b = VALUES[("byol", 2)], VALUES[("byol", 1)]
    mean, sd, low, high, n = paired_interval(a, b)
    expected = scipy_stats.ttest_rel(a, b).confidence_interval(0.95)
    assert n == 3 and mean == pytest.approx(np.mean(np.subtract(a, b)))
    assert sd == pytest.approx(np.std(np.subtract(a, b), ddof=1))
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    rng = np.random.default_rng(7)
    for n in (2, 3, 5, 20):
        a, b = rng.normal(0, 1, n), rng.normal(0.3, 1, n)
        expected = scipy_stats.ttest_rel(a, b).confidence_interval(0.9)
        assert paired_interval(a, b, 0.9)[2:4] == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_the_welch_fallback_is_scipys_unequal_variance_ttest():
    a, b = [45.0, 52.5, 47.5, 50.0], [44.5, 48.0, 47.5]
    mean, se, low, high, df = welch_interval(a, b)
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(0.95)
    assert (low, high) == pytest.approx((ci.low, ci.high), rel=1e-12)
    assert df == pytest.approx(result.df)
    assert mean / se == pytest.approx(result.statistic)


def test_verdicts():
    assert verdict(0.5, 3.0, 3, "ρ=2", "ρ=1") == "ρ=2 > ρ=1"
    assert verdict(-3.0, -0.5, 3, "ρ=2", "ρ=1") == "ρ=1 > ρ=2"
    assert verdict(-0.5, 3.0, 3) == "not resolved at n=3"
    assert verdict(math.nan, math.nan, 1).startswith("one seed: no interval")  # n = 1: nothing to resolve
    runs = _frame()
    byol = difference("", "ρ=2", "ρ=1", _cell(runs, "byol", 2), _cell(runs, "byol", 1), METRIC)
    assert byol.test == PAIRED and byol.verdict == "ρ=2 > ρ=1"  # +5, +5.5, +4.5: resolved
    methods = difference("", "byol", "moco", _cell(runs, "byol", 2), _cell(runs, "moco", 2), METRIC)
    assert methods.verdict == "not resolved at n=3"  # +0.5, +4.5, 0
    # Unpaired (the same values, but as 6 runs of different seeds), the seed offset is noise: the
    # ρ = 2 lead of byol is no longer resolved at n = 3. Pairing is what resolves it.
    unpaired = _cell(runs, "byol", 1).assign(seed=[10, 11, 12])
    welch = difference("", "ρ=2", "ρ=1", _cell(runs, "byol", 2), unpaired, METRIC)
    assert welch.test == WELCH and "unpaired" in welch.note and welch.verdict == "not resolved at n=3"
    ci = scipy_stats.ttest_ind(
        VALUES[("byol", 2)], VALUES[("byol", 1)], equal_var=False
    ).confidence_interval()
    assert (welch.low, welch.high) == pytest.approx((ci.low, ci.high))


def test_a_missing_seed_pairs_the_others():
    runs = _frame()
    a, b = _cell(runs, "byol", 2), _cell(runs, "byol", 1).iloc[:2]
    diff = difference("", "A", "B", a, b, METRIC)
    expected = scipy_stats.ttest_rel(a[METRIC].iloc[:2], b[METRIC]).confidence_interval()
    assert diff.test == PAIRED and diff.n == 2 and "1 run without a partner seed" in diff.note
    assert (diff.low, diff.high) == pytest.approx((expected.low, expected.high))


def test_power_and_the_detectable_difference_agree_with_scipys_noncentral_t():
    # at n = 3 and sd 1, 80% power needs a difference of ~3.3 sd (the (t + t) sd / sqrt(n) rule: 3.1)
    mde = detectable(1.0, 3)
    assert power(mde, 1.0, 3) == pytest.approx(0.8, abs=1e-6)
    assert 3.0 < mde < 3.6
    assert detectable(2.0, 3) == pytest.approx(2 * mde)
    assert math.isnan(detectable(1.0, 1))


@pytest.mark.parametrize(("effect", "sd", "target"), [(1.0, 1.0, 0.8), (2.0, 3.0, 0.8), (1.0, 2.0, 0.9)])
def test_the_seed_planner_against_simulated_studies(effect, sd, target):
    """Draw many studies at the planned n: the fraction whose 95% paired interval lies above 0 is the
    asked power (within Monte-Carlo error), and one seed fewer falls short of it."""
    n = seeds_needed(effect, sd, target)
    assert n is not None and n >= 2
    rng = np.random.default_rng(2024)
    studies = 20_000

    def resolved(n: int) -> float:
        d = rng.normal(effect, sd, (studies, n))
        mean, s = d.mean(axis=1), d.std(axis=1, ddof=1)
        low = mean - scipy_stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
        return float((low > 0).mean())

    tolerance = 4 * math.sqrt(target * (1 - target) / studies)  # ~0.011 at 0.8
    at_n = resolved(n)
    assert at_n == pytest.approx(power(effect, sd, n), abs=tolerance)
    assert at_n >= target - tolerance
    if n > 2:
        assert resolved(n - 1) < target + tolerance
        assert power(effect, sd, n - 1) < target
    # and the planner's own check of the interval equals the report's
    d = rng.normal(effect, sd, n)
    assert paired_interval(d, np.zeros(n))[2] == pytest.approx(
        d.mean() - scipy_stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / math.sqrt(n)
    )


def test_default_pairs_are_rho_per_method_and_methods_at_the_last_rho():
    pairs = default_pairs(_frame(), "method.name", "data.clips")
    assert pairs == [
        ({"method.name": "byol"}, ("data.clips", "2"), ("data.clips", "1")),
        ({"method.name": "moco"}, ("data.clips", "2"), ("data.clips", "1")),
        ({"data.clips": "2"}, ("method.name", "byol"), ("method.name", "moco")),
    ]


def test_the_report_shows_paired_verdicts(mlflow_uri, tmp_path):
    _log_study(mlflow_uri)
    result = write_report(mlflow_uri, STUDY, out=tmp_path / "r", log_to_parent=False)
    diffs = result.differences[METRIC]
    assert [(d.at, d.a, d.b) for d in diffs] == [
        ("method.name=byol", "data.clips=2", "data.clips=1"),
        ("method.name=moco", "data.clips=2", "data.clips=1"),
        ("data.clips=2", "method.name=byol", "method.name=moco"),
    ]
    for d, (a, b) in zip(
        diffs,
        [(("byol", 2), ("byol", 1)), (("moco", 2), ("moco", 1)), (("byol", 2), ("moco", 2))],
        strict=True,
    ):
        ci = scipy_stats.ttest_rel(VALUES[a], VALUES[b]).confidence_interval()
        assert d.test == PAIRED and d.n == 3
        assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    assert [d.verdict for d in diffs] == [
        "data.clips=2 > data.clips=1",
        "data.clips=2 > data.clips=1",
        "not resolved at n=3",
    ]
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"### {METRIC}: differences paired by seed" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| method.name=byol | data.clips=2"))
    ci = scipy_stats.ttest_rel(VALUES[("byol", 2)], VALUES[("byol", 1)]).confidence_interval()
    assert f"{ci.low:+.1f} to {ci.high:+.1f}" in row and "**data.clips=2 > data.clips=1**" in row
    assert "| data.clips=2 | method.name=byol | method.name=moco | paired t (n=3) |" in markdown
    page = (tmp_path / "r" / "report.html").read_text()
    assert f'id="paired-{METRIC}"' in page and "not resolved at n=3" in page
    frame = pd.read_csv(tmp_path / "r" / f"{METRIC}.paired.csv")
    assert list(frame["verdict"]) == [d.verdict for d in diffs]

    chosen = write_report(
        mlflow_uri,
        STUDY,
        out=tmp_path / "c",
        log_to_parent=False,
        compare=[("method.name", ["byol", "moco"])],
        at={"data.clips": "1"},
    )
    [d] = chosen.differences[METRIC]
    ci = scipy_stats.ttest_rel(VALUES[("byol", 1)], VALUES[("moco", 1)]).confidence_interval()
    assert (d.at, d.a, d.b) == ("data.clips=1", "method.name=byol", "method.name=moco")
    assert (d.low, d.high) == pytest.approx((ci.low, ci.high))
    # without --at: once per value of the other swept key
    each = write_report(
        mlflow_uri,
        STUDY,
        out=tmp_path / "e",
        log_to_parent=False,
        compare=[("method.name", ["byol", "moco"])],
    )
    assert [d.at for d in each.differences[METRIC]] == ["data.clips=1", "data.clips=2"]


def test_compare_flags_parse_and_name_a_bad_key(mlflow_uri, tmp_path, capsys):
    _log_study(mlflow_uri)
    base = ["report", STUDY, "--tracking-uri", mlflow_uri, "--no-log", "--out", str(tmp_path / "r")]
    assert main([*base, "--compare", "method.nme=byol,moco", "--at", "data.clips=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method.nme" in err and "data.clips, method.name" in err, err
    assert main([*base, "--compare", "method.name=byol,mocoo", "--at", "data.clips=2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "mocoo" in err and "byol, moco" in err and err.count("\n") == 0, err
    assert main([*base, "--compare", "method.name=byol,moco", "--at", "data.clip=2"]) == 2
    assert "--at data.clip" in capsys.readouterr().err
    for bad in (["--compare", "method.name"], ["--compare", "method.name=byol"], ["--at", "data.clips"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*base, *bad])
        assert exit_info.value.code == 2
        assert "expected KEY=" in capsys.readouterr().err
    assert main([*base, "--compare", "method.name=byol,moco", "--at", "data.clips=2"]) == 0
    out = capsys.readouterr().out
    assert "method.name=byol - method.name=moco at data.clips=2" in out and "paired t, n=3" in out


def test_study_plan_prints_the_seeds_needed(mlflow_uri, capsys):
    _log_study(mlflow_uri)
    assert main(["study", "plan", STUDY, "--effect", "2", "--tracking-uri", mlflow_uri]) == 0
    out = capsys.readouterr().out
    sd = np.std(np.subtract(VALUES[("byol", 2)], VALUES[("moco", 2)]), ddof=1)
    assert "seeds needed" in out and "pooled over 3 comparisons (6 df)" in out
    row = next(
        line
        for line in out.splitlines()
        if line.split()[:3] == ["data.clips=2", "method.name=byol", "method.name=moco"]
    )
    assert row.split()[-1] == str(seeds_needed(2, sd))
    assert main(["study", "plan", STUDY, "--effect", "0", "--tracking-uri", mlflow_uri]) == 2
    assert "--effect" in capsys.readouterr().err


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method.name": m, "data.clips": rho, "seed": seed, METRIC: v, "baseline": False}
            for (m, rho), values in VALUES.items()
            for seed, v in enumerate(values)
        ]
    )


def _cell(frame: pd.DataFrame, method: str, rho: int) -> pd.DataFrame:
    return frame[(frame["method.name"] == method) & (frame["data.clips"] == rho)]


def _log_study(uri: str) -> None:
    """A study as the runner logs it (parent run, one finished child run per trial with its tags,
    params and metric), written with MLflow directly into a real sqlite store."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(STUDY)
    parent = client.create_run(experiment, tags={"rho.role": "study"}, run_name=STUDY)
    for key, value in {
        "objective": METRIC,
        "direction": "maximize",
        "grid": json.dumps(["method.name", "data.clips"]),
    }.items():
        client.log_param(parent.info.run_id, key, value)
    trial = 0
    for (method, rho), values in VALUES.items():
        for seed, value in enumerate(values):
            tags = {
                "mlflow.parentRunId": parent.info.run_id,
                "study": STUDY,
                "trial": str(trial),
                "seed": str(seed),
                "rho.key": f"{method}-{rho}-{seed}",
                "swept.method.name": method,
                "swept.data.clips": str(rho),
            }
            run = client.create_run(experiment, tags=tags, run_name=f"t{trial}")
            params = {
                "method.name": method,
                "data.clips": rho,
                "backbone.name": "r3d_tiny",
                "optim.epochs": 100,
            }
            for key, param in params.items():
                client.log_param(run.info.run_id, key, str(param))
            client.log_metric(run.info.run_id, METRIC, value)
            client.set_terminated(run.info.run_id)
            trial += 1
    client.set_terminated(parent.info.run_id)
