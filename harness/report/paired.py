"""Paired seed statistics: differences between two cells of a study, paired by seed.

Trials of different points with the same seed share their data order and, where the
architecture matches, their initialisation (docs/reports.md, "Paired comparisons"), so the
difference between two cells is measured seed by seed: d_i = A_i - B_i. The interval is the
paired Student-t interval of the mean of d (what ``scipy.stats.ttest_rel`` gives): at the
usual n of 3 to 5 seeds a bootstrap has only 10 to 126 distinct resamples and its percentile
interval is far too narrow, while the t interval is exact for normal differences. Where the
seeds of the two cells do not match (a failed trial, several runs per seed), the comparison
falls back to Welch's unequal-variance t interval (``ttest_ind(equal_var=False)``) and says so.

Power is exact for that test: under a true mean difference delta, the paired t statistic is
noncentral t with n - 1 degrees of freedom and noncentrality delta * sqrt(n) / sd; a comparison
is *resolved* (A > B) when its 95% interval lies above 0, i.e. t > t_{0.975, n-1}. The smallest
detectable difference at n is the delta resolved with 80% power; ``seeds_needed`` is the
smallest n that resolves a given delta with the asked power.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.stats import nct
from scipy.stats import t as student_t

from harness.report.stats import _label, natural_key

CONFIDENCE = 0.95
POWER = 0.8
MAX_SEEDS = 10_000
PAIRED, WELCH = "paired t", "Welch t"

# One comparison: the keys held fixed (key -> value label), then (key, value) of A and of B.
Pair = tuple[dict[str, str], tuple[str, str], tuple[str, str]]


@dataclass
class Difference:
    """A - B over seeds: the test used, n (pairs, or runs of A and B), the mean difference, the sd
    of the paired differences (Welch: the standard error times sqrt(n)), the interval, the
    verdict and the smallest difference the test resolves with 80% power at this n."""

    at: str
    a: str
    b: str
    test: str
    n: int
    n_a: int
    n_b: int
    mean: float
    sd: float
    low: float
    high: float
    df: float
    verdict: str
    mde: float
    note: str = ""


def paired_interval(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float, float, int]:
    """Mean of a - b (paired), the sample sd of the differences, the ``confidence`` t interval, n."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(d)
    mean = float(d.mean()) if n else math.nan
    if n < 2:
        return mean, math.nan, math.nan, math.nan, n
    sd = float(d.std(ddof=1))
    half = float(student_t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, sd, mean - half, mean + half, n


def welch_interval(a, b, confidence: float = CONFIDENCE) -> tuple[float, float, float, float, float]:
    """Mean of a minus mean of b, its standard error, the Welch-Satterthwaite t interval and df."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    mean = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return mean, 0.0, mean, mean, math.inf
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(student_t.ppf(0.5 + confidence / 2, df)) * se
    return mean, se, mean - half, mean + half, float(df)


def verdict(low: float, high: float, n: int, a: str = "A", b: str = "B") -> str:
    """``A > B`` when the interval lies above 0, ``B > A`` below it, else not resolved at n seeds
    (with one seed there is no interval: the verdict says to add seeds)."""
    if n < 2:
        return "one seed: no interval (run 3 or more seeds; `rho study plan` says how many)"
    if low > 0:
        return f"{a} > {b}"
    if high < 0:
        return f"{b} > {a}"
    return f"not resolved at n={n}"


def power(effect: float, sd: float, n: int, confidence: float = CONFIDENCE, df: float | None = None) -> float:
    """Probability that the paired t interval of n differences with mean ``effect`` and sd ``sd``
    lies above 0 (the comparison resolves A > B); ``df`` overrides n - 1 (Welch)."""
    df = n - 1 if df is None else df
    if n < 2 or df <= 0:
        return 0.0
    if sd == 0:
        return 1.0 if effect > 0 else 0.0
    critical = student_t.ppf(0.5 + confidence / 2, df)
    return float(nct.sf(critical, df, effect * math.sqrt(n) / sd))


def detectable(
    sd: float, n: int, target: float = POWER, confidence: float = CONFIDENCE, df: float | None = None
) -> float:
    """The smallest true difference resolved with probability ``target`` at n (NaN below n = 2)."""
    if n < 2 or not math.isfinite(sd) or (df is not None and df <= 0):
        return math.nan
    if sd == 0:
        return 0.0
    high = sd
    while power(high, sd, n, confidence, df) < target:
        high *= 2
    return float(
        optimize.brentq(lambda e: power(e, sd, n, confidence, df) - target, 0.0, high, xtol=sd * 1e-9)
    )


def seeds_needed(
    effect: float, sd: float, target: float = POWER, confidence: float = CONFIDENCE, limit: int = MAX_SEEDS
) -> int | None:
    """The smallest n >= 2 whose paired t interval resolves a true difference ``effect`` with
    probability ``target`` given differences of sd ``sd``; None beyond ``limit``."""
    effect = abs(effect)
    if effect == 0 or not math.isfinite(sd):
        return None
    if power(effect, sd, limit, confidence) < target:
        return None
    low, high = 2, limit  # power grows with n: bisect
    while low < high:
        mid = (low + high) // 2
        if power(effect, sd, mid, confidence) >= target:
            high = mid
        else:
            low = mid + 1
    return low


def difference(
    at: str, a: str, b: str, runs_a: pd.DataFrame, runs_b: pd.DataFrame, metric: str
) -> Difference:
    """A - B of ``metric`` between two cells' runs: paired by seed where the cells share at least
    two seeds, each once; else Welch's t over all runs."""
    runs_a, runs_b = runs_a[runs_a[metric].notna()], runs_b[runs_b[metric].notna()]
    n_a, n_b = len(runs_a), len(runs_b)
    unique = runs_a["seed"].is_unique and runs_b["seed"].is_unique
    common = sorted(set(runs_a["seed"]) & set(runs_b["seed"]), key=str) if unique else []
    if len(common) >= 2 or (unique and n_a == n_b == 1 and len(common) == 1):
        xa = runs_a.set_index("seed").loc[common, metric]
        xb = runs_b.set_index("seed").loc[common, metric]
        mean, sd, low, high, n = paired_interval(xa.to_numpy(), xb.to_numpy())
        left = n_a + n_b - 2 * n
        note = f"{left} run{'s' if left != 1 else ''} without a partner seed left out" if left else ""
        return Difference(
            at, a, b, PAIRED, n, n_a, n_b, mean, sd, low, high, n - 1.0,
            verdict(low, high, n, a, b) if n > 1 else f"not resolved at n={n}",
            detectable(sd, n), note,
        )  # fmt: skip
    why = "several runs per seed in a cell" if not unique else "seeds do not match"
    if n_a < 2 or n_b < 2:
        mean = float(runs_a[metric].mean() - runs_b[metric].mean()) if n_a and n_b else math.nan
        return Difference(
            at, a, b, WELCH, min(n_a, n_b), n_a, n_b, mean, math.nan, math.nan, math.nan, math.nan,
            f"not resolved at n={min(n_a, n_b)}", math.nan, f"unpaired ({why}); too few runs for an interval",
        )  # fmt: skip
    mean, se, low, high, df = welch_interval(runs_a[metric], runs_b[metric])
    n = min(n_a, n_b)
    # Welch's standard error as that of n pairs: sd = se * sqrt(n), so that detectable() applies
    sd = se * math.sqrt(n)
    return Difference(
        at, a, b, WELCH, n, n_a, n_b, mean, sd, low, high, df,
        verdict(low, high, n, a, b), detectable(sd, n, df=df), f"unpaired ({why})",
    )  # fmt: skip


def default_pairs(frame: pd.DataFrame, rows: str, columns: str) -> list[Pair]:
    """The comparisons a report makes unasked: along the column axis, each column against the one
    before it in every row (ρ = 2 vs ρ = 1 per method); then, at the last column, every pair of
    rows (the methods at the largest ρ)."""
    grid = frame[~frame["baseline"].astype(bool)] if "baseline" in frame else frame
    if grid.empty or rows not in grid or columns not in grid:
        return []
    row_labels = sorted(set(grid[rows].map(_label)), key=natural_key)
    column_labels = sorted(set(grid[columns].map(_label)), key=natural_key)
    present = set(zip(grid[rows].map(_label), grid[columns].map(_label), strict=True))
    pairs = []
    for row in row_labels:
        cols = [c for c in column_labels if (row, c) in present]
        pairs += [({rows: row}, (columns, hi), (columns, lo)) for lo, hi in pairwise(cols)]
    if column_labels:
        last = column_labels[-1]
        here = [r for r in row_labels if (r, last) in present]
        pairs += [
            ({columns: last}, (rows, here[i]), (rows, here[j]))
            for i in range(len(here))
            for j in range(i + 1, len(here))
        ]
    return pairs


def select(frame: pd.DataFrame, conditions: dict[str, str]) -> pd.DataFrame:
    """The grid runs of ``frame`` whose config matches every key=value (compared as table labels)."""
    mask = ~frame["baseline"].astype(bool) if "baseline" in frame else pd.Series(True, index=frame.index)
    for key, value in conditions.items():
        mask &= frame[key].map(_label) == value
    return frame[mask]


def differences(
    frame: pd.DataFrame,
    metric: str,
    pairs: list[Pair],
    at: dict[str, str] | None = None,
) -> list[Difference]:
    """One ``Difference`` per pair (none where a cell has no run); ``at`` (key=value) fixes more
    keys for every pair."""
    at = at or {}
    out = []
    for fixed, (key_a, value_a), (key_b, value_b) in pairs:
        base = {**at, **fixed}
        runs_a = select(frame, {**base, key_a: value_a})
        runs_b = select(frame, {**base, key_b: value_b})
        if runs_a.empty or runs_b.empty:
            continue
        label = ", ".join(f"{k}={v}" for k, v in base.items())
        out.append(difference(label, f"{key_a}={value_a}", f"{key_b}={value_b}", runs_a, runs_b, metric))
    return out


def differences_frame(diffs: list[Difference], metric: str) -> pd.DataFrame:
    """The differences as a table (the report's ``<metric>.paired.csv``)."""
    columns = list(Difference.__dataclass_fields__)
    return pd.DataFrame([d.__dict__ for d in diffs], columns=columns).assign(metric=metric)


def pooled_sd(diffs: list[Difference]) -> tuple[float, int]:
    """The sd of paired differences pooled over comparisons (weights n - 1) and its degrees of freedom."""
    usable = [d for d in diffs if d.n >= 2 and math.isfinite(d.sd)]
    dof = sum(d.n - 1 for d in usable)
    if not dof:
        return math.nan, 0
    return math.sqrt(sum((d.n - 1) * d.sd**2 for d in usable) / dof), dof


def parse_compare(text: str) -> tuple[str, list[str]]:
    """``method.name=byol,moco`` -> ("method.name", ["byol", "moco"]); ValueError if malformed."""
    key, sep, values = text.partition("=")
    choices = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or len(choices) < 2 or len(set(choices)) != len(choices):
        raise ValueError(
            f"{text!r}: expected KEY=A,B (two or more different values), e.g. method.name=byol,moco"
        )
    return key.strip(), choices


def parse_at(text: str) -> tuple[str, str]:
    """``data.clips=3`` -> ("data.clips", "3"); ValueError if malformed."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip() or "," in value:
        raise ValueError(f"{text!r}: expected KEY=VALUE, e.g. data.clips=3")
    return key.strip(), value.strip()


def requested_pairs(
    frame: pd.DataFrame, compare: list[tuple[str, list[str]]], at: dict[str, str], swept: list[str]
) -> list[Pair]:
    """The pairs of ``--compare KEY=A,B[,C…]`` (each value against each later one) at ``--at``;
    at each combination of the other swept keys that vary among the grid runs and ``--at`` leaves
    free (``--compare method.name=byol,moco`` alone: once per ρ).

    Raises:
        KeyError: with one line naming a key no run logged, or a value no grid run has, and the choices.
    """
    grid = frame[~frame["baseline"].astype(bool)] if "baseline" in frame else frame
    for option, key, values in [
        *(("--compare", key, values) for key, values in compare),
        *(("--at", key, [value]) for key, value in at.items()),
    ]:
        if key not in grid:
            raise KeyError(
                f"{option} {key}: no run logged that key; swept keys: {', '.join(swept) or 'none'} "
                "(any config key such as method.name or data.clips also works)"
            )
        logged = sorted(set(grid[key].map(_label)), key=natural_key)
        for value in values:
            if value not in logged:
                raise KeyError(
                    f"{option} {key}={value}: no finished run has it; {key} values: {', '.join(logged)}"
                )
    pairs: list[Pair] = []
    for key, values in compare:
        if key in at:
            raise KeyError(f"--compare {key} and --at {key}: a key is either compared or fixed, not both")
        free = [
            k for k in swept if k != key and k not in at and k in grid and grid[k].map(_label).nunique() > 1
        ]
        combos = grid[free].map(_label).drop_duplicates().to_dict("records") if free else [{}]
        combos.sort(key=lambda c: [natural_key(c[k]) for k in free])
        pairs += [
            (combo, (key, values[i]), (key, values[j]))
            for combo in combos
            for i in range(len(values))
            for j in range(i + 1, len(values))
        ]
    return pairs


@dataclass
class SeedPlan:
    """Seeds needed per comparison of ``study`` for ``effect`` on ``metric``: ``table`` has one row
    per pair and a last row pooling the sd of the differences over the pairs."""

    study: str
    metric: str
    effect: float
    target: float
    table: pd.DataFrame


@dataclass
class Selection:
    """What a report or a seed plan compares: the finished runs, the checked metrics, the table's
    axes and the pairs (``select_pairs``)."""

    finished: pd.DataFrame
    metrics: list[str]
    rows: str
    columns: str
    pairs: list[Pair]


def select_pairs(
    runs,
    study: str,
    metrics: list[str],
    compare: list[tuple[str, list[str]]] | None = None,
    at: dict[str, str] | None = None,
    rows: str | None = None,
    columns: str | None = None,
) -> Selection:
    """The finished runs of ``runs`` (study ``study``'s ``StudyRuns``), ``metrics`` checked against what they
    logged, the table's axes (``choose_axes``) and the pairs to compare: ``compare``'s with the
    keys of ``at`` fixed, else ``default_pairs``.

    Raises:
        ReportError: no finished runs, a metric no finished run logged, or a bad key.
    """
    from harness.report.compare import choose_axes
    from harness.report.runs import ReportError

    finished = runs.finished
    if finished.empty:
        counts = runs.frame["status"].value_counts().to_dict() if not runs.frame.empty else {}
        raise ReportError(
            f"study {study!r} has no finished runs yet ({counts or 'no child runs'}); "
            f"run it with `rho study run` (`rho study status {study}` lists its trials)"
        )
    missing = [m for m in metrics if m not in finished]
    if missing or not metrics:
        logged = sorted(c for c in finished.columns if c.startswith(("eval.", "epoch.")))
        raise ReportError(
            f"--metric {', '.join(missing) or '(none)'}: not logged by any finished run of {study!r}; "
            f"logged: {', '.join(logged)}"
        )
    if at and not compare:
        raise ReportError("--at fixes keys of --compare's pairs: give --compare KEY=A,B with it")
    try:
        rows, columns = choose_axes(finished, runs.swept, rows, columns)
        pairs = (
            requested_pairs(finished, compare, at or {}, runs.swept)
            if compare
            else default_pairs(finished, rows, columns)
        )
    except KeyError as exc:
        raise ReportError(exc.args[0]) from None
    return Selection(finished, metrics, rows, columns, pairs)


def plan_seeds(
    tracking_uri: str,
    study: str,
    effect: float,
    metric: str | None = None,
    target: float = POWER,
    compare: list[tuple[str, list[str]]] | None = None,
    at: dict[str, str] | None = None,
    rows: str | None = None,
    columns: str | None = None,
) -> SeedPlan:
    """How many seeds resolve a true difference ``effect`` (A > B by the paired t interval) with
    probability ``target``, from the sd of the paired differences ``study`` measured.

    Raises:
        ReportError: no such study, no finished runs, an unlogged metric or a bad key.
    """
    from harness.report.runs import ReportError, load_study_runs

    if not effect > 0:
        raise ReportError(f"--effect {effect}: give the difference to resolve, a number above 0")
    if not 0 < target < 1:
        raise ReportError(f"--power {target}: give a probability between 0 and 1, e.g. 0.8")
    runs = load_study_runs(tracking_uri, study)
    metric = metric or runs.objective
    chosen = select_pairs(runs, study, [metric] if metric else [], compare, at, rows, columns)
    diffs = [d for d in differences(chosen.finished, metric, chosen.pairs, at) if math.isfinite(d.sd)]
    if not diffs:
        raise ReportError(
            f"study {study!r}: no comparison with two or more seeds to measure the sd of differences from"
        )
    records = [
        {
            "at": d.at or "-",
            "A": d.a,
            "B": d.b,
            "test": d.test,
            "n": d.n,
            "mean A-B": d.mean,
            "sd": d.sd,
            "detectable now": detectable(d.sd, d.n, target),
            "seeds needed": seeds_needed(effect, d.sd, target),
        }
        for d in diffs
    ]
    sd, dof = pooled_sd(diffs)
    records.append(
        {
            "at": f"pooled over {len(diffs)} comparisons ({dof} df)",
            "A": "",
            "B": "",
            "test": "",
            "n": max(d.n for d in diffs),
            "mean A-B": math.nan,
            "sd": sd,
            "detectable now": detectable(sd, max(d.n for d in diffs), target),
            "seeds needed": seeds_needed(effect, sd, target),
        }
    )
    return SeedPlan(study, metric, effect, target, pd.DataFrame(records))
