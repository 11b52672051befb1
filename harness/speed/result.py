"""What a speed or memory benchmark hands back: a table, the goals it checks and notes.

A benchmark measures the reference and ours in the same run; each ``Check`` holds a measured
ratio (or difference), the goal it is held to and whether it is met. ``SpeedResult`` renders
as a Markdown section (``markdown``) and round-trips through JSON (``to_dict``/``from_dict``)
so that ``benchmarks/RESULTS.md`` keeps the last result of every benchmark.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Check:
    """One goal: ``value`` compared with ``bound`` (``>=`` or ``<=``)."""

    name: str
    value: float
    op: str
    bound: float
    unit: str = "x"

    def __post_init__(self) -> None:
        if self.op not in (">=", "<="):
            raise ValueError(f"check {self.name!r}: op must be '>=' or '<=', got {self.op!r}")

    @property
    def met(self) -> bool:
        if not math.isfinite(self.value):
            return False
        return self.value >= self.bound if self.op == ">=" else self.value <= self.bound

    def describe(self) -> str:
        verdict = "met" if self.met else "NOT met"
        return f"{self.name}: {format_value(self.value)}{self.unit} (goal {self.op} {format_value(self.bound)}{self.unit}) {verdict}"


@dataclass
class SpeedResult:
    """The outcome of one benchmark.

    Attributes:
        name: the benchmark's file stem (``rho bench NAME``).
        title: one line saying what is compared.
        goal: the goal as the issue states it.
        columns, rows: the measurements, one row per configuration.
        checks: the goals evaluated on this run's numbers.
        notes: what limits a goal that is not met, the sizes used, caveats.
        skipped: why nothing was measured (e.g. no CUDA device), else None.
        size: ``quick`` or ``full``.
        seconds: wall time of the benchmark.
        environment: machine, versions, date and command (filled by the runner).
    """

    name: str
    title: str
    goal: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    size: str = "full"
    seconds: float = 0.0
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        """True when every check is met; None when skipped or without checks."""
        if self.skipped is not None or not self.checks:
            return None
        return all(check.met for check in self.checks)

    def column(self, name: str) -> list[Any]:
        """The values of column ``name``, one per row."""
        index = self.columns.index(name)
        return [row[index] for row in self.rows]

    def row(self, **match: Any) -> dict[str, Any]:
        """The first row whose columns equal ``match``, as a dict."""
        for row in self.rows:
            record = dict(zip(self.columns, row, strict=True))
            if all(record.get(key) == value for key, value in match.items()):
                return record
        raise KeyError(f"{self.name}: no row with {match}")

    def check(self, name: str) -> Check:
        for check in self.checks:
            if check.name == name:
                return check
        raise KeyError(f"{self.name}: no check named {name!r}; have {[c.name for c in self.checks]}")

    def table(self) -> str:
        """The rows as a Markdown table."""
        return markdown_table(self.columns, self.rows)

    def markdown(self) -> str:
        """A ``## name`` section: goal, verdicts, table, notes, and how it was run."""
        lines = [f"## {self.name}: {self.title}", "", f"Goal: {self.goal}", ""]
        if self.skipped is not None:
            lines += [f"**Skipped:** {self.skipped}", ""]
        else:
            verdict = {True: "all goals met", False: "goal NOT met", None: "no goal checked"}[self.met]
            lines += [f"Result ({self.size} size, {self.seconds:.0f} s): **{verdict}**", ""]
            lines += [f"- {check.describe()}" for check in self.checks]
            if self.checks:
                lines.append("")
            if self.rows:
                lines += [self.table(), ""]
        if self.notes:
            lines += [f"- {note}" for note in self.notes] + [""]
        env = self.environment
        if env:
            lines.append(
                f"Run {env.get('date', '?')} on {env.get('machine', '?')}; load average "
                f"{env.get('load_before', '?')} before, {env.get('load_after', '?')} after; "
                f"reproduce with `{env.get('command', 'rho bench ' + self.name)}`."
            )
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedResult:
        data = dict(data)
        data["checks"] = [Check(**check) for check in data.get("checks", [])]
        return cls(**data)


def format_value(value: Any) -> str:
    """Numbers with 3-4 significant digits; everything else as ``str``."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:.0f}"
        if magnitude >= 1:
            return f"{value:.3g}" if magnitude < 100 else f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A pipe table with a header row."""
    cells = [[format_value(value) for value in row] for row in rows]
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)
