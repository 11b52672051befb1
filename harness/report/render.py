"""A report as a list of blocks (headings, text, tables, images), written as Markdown and as one
self-contained HTML page (PNG images embedded as data URIs, no external files or scripts)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path

from harness.report.compare import Comparison, format_value
from harness.report.paired import POWER, Difference

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.baseline td { font-style: italic; background: #f6f6f6; }
td.best { font-weight: bold; background: #e8f4e8; }
.sub { color: #666; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    """Cells are (main, detail) text pairs; ``bold`` holds (row, column) indices of marked cells."""

    header: list[str]
    rows: list[list[tuple[str, str]]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    shaded_rows: set[int] = field(default_factory=set)
    id: str = ""


@dataclass
class Image:
    path: Path
    caption: str


Block = Heading | Text | Table | Image


def comparison_block(comp: Comparison) -> Table:
    """A comparison as a table: "mean ± std" with "n, 95% CI" beneath; best of each column bold."""
    columns = comp.column_labels
    rows, bold, shaded = [], set(), set()
    for r, label in enumerate(comp.row_labels):
        cells = [(label, "")]
        for c, column in enumerate(columns):
            stats = comp.cell(label, column)
            if stats is None:
                cells.append(("", ""))
                continue
            cells.append(_cell(stats))
            if stats["best"]:
                bold.add((r, c + 1))
            if stats["baseline"]:
                shaded.add(r)
        rows.append(cells)
    header = [f"{comp.rows} \\ {comp.columns}", *columns]
    return Table(header, rows, bold, shaded, id=f"table-{comp.metric}")


def differences_block(diffs: list[Difference], like: float, metric: str = "") -> Table:
    """Differences A − B as a table, one row per pair: where, A, B, the test and n, mean ± sd of
    the differences, the 95% interval, the verdict (bold where resolved) and the smallest
    difference detectable at this n; numbers with the decimals of the metric's scale ``like``."""
    header = ["at", "A", "B", "test", "A − B", "95% CI", "verdict", f"detectable ({POWER:.0%} power)"]
    rows, bold = [], set()
    for r, d in enumerate(diffs):
        n = f"n={d.n}" if d.test == "paired t" else f"n={d.n_a}+{d.n_b}"
        spread = (
            f"sd {format_value(d.sd, like)}"
            if d.test == "paired t"
            else f"se {format_value(d.sd / d.n**0.5, like)}"
        )
        interval = "-" if d.low != d.low else f"{_signed(d.low, like)} to {_signed(d.high, like)}"
        rows.append(
            [
                (d.at or "-", ""),
                (d.a, ""),
                (d.b, ""),
                (d.test, f"{n}; {d.note}" if d.note else n),
                (_signed(d.mean, like), spread if d.sd == d.sd else ""),
                (interval, ""),
                (d.verdict, ""),
                (format_value(d.mde, like), ""),
            ]
        )
        if not d.verdict.startswith("not resolved"):
            bold.add((r, 6))
    return Table(header, rows, bold, id=f"paired-{metric}" if metric else "paired")


def _signed(value: float, like: float) -> str:
    text = format_value(value, like)
    return text if text == "-" or text.startswith("-") else f"+{text}"


def _cell(stats) -> tuple[str, str]:
    mean, std, n = stats["mean"], stats["std"], int(stats["n"])
    if n == 1:
        return format_value(mean), "n=1"
    low, high = format_value(stats["ci_low"], mean), format_value(stats["ci_high"], mean)
    return f"{format_value(mean)} ± {format_value(std, mean)}", f"n={n}, 95% CI {low} to {high}"


def to_markdown(blocks: list[Block], image_prefix: str = "") -> str:
    """The report as Markdown; images link to their PNG files (relative to the report)."""
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Text):
            out.append(f"{block.text}\n")
        elif isinstance(block, Image):
            out.append(f"![{block.caption}]({image_prefix}{block.path.name})\n\n*{block.caption}*\n")
        else:
            out.append(_markdown_table(block))
    return "\n".join(out)


def _markdown_table(table: Table) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(escape(h) for h in table.header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(table.header) - 1)) + "|")
    for r, row in enumerate(table.rows):
        cells = []
        for c, (main, detail) in enumerate(row):
            text = f"**{main}**" if (r, c) in table.bold and main else main
            if r in table.shaded_rows and c == 0:
                text = f"*{text}*"
            cells.append(escape(f"{text} ({detail})" if detail else text))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(blocks: list[Block], title: str) -> str:
    """The report as one self-contained HTML page."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Image):
            data = base64.b64encode(block.path.read_bytes()).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
        else:
            body.append(_html_table(block))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _html_table(table: Table) -> str:
    ident = f' id="{html.escape(table.id)}"' if table.id else ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    rows = []
    for r, row in enumerate(table.rows):
        cells = []
        for c, (main, detail) in enumerate(row):
            css = ' class="best"' if (r, c) in table.bold else ""
            sub = f'<br><span class="sub">{html.escape(detail)}</span>' if detail else ""
            cells.append(f"<td{css}>{html.escape(main)}{sub}</td>")
        css = ' class="baseline"' if r in table.shaded_rows else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
