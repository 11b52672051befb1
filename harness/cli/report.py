"""``rho report`` and ``rho leaderboard``: tables and plots of the results in MLflow."""

from __future__ import annotations

import argparse

from harness.cli.common import TRACKING_URI_HELP


def _report(args: argparse.Namespace) -> int:
    from harness.report import write_report
    from harness.tracking import resolve_tracking_uri

    result = write_report(
        resolve_tracking_uri(args.tracking_uri),
        args.study,
        out=args.out,
        metrics=args.metric,
        rows=args.rows,
        columns=args.columns,
        log_to_parent=not args.no_log,
        compare=args.compare,
        at=dict(args.at or []),
    )
    for comp in result.comparisons:
        print(f"{comp.metric}: {len(comp.row_labels)} rows x {len(comp.column_labels)} columns")
        for diff in result.differences.get(comp.metric, []):
            where = f" at {diff.at}" if diff.at else ""
            interval = (
                f"95% CI {diff.low:+.4g} to {diff.high:+.4g}" if diff.low == diff.low else "no interval"
            )
            print(
                f"  {diff.a} - {diff.b}{where}: {diff.mean:+.4g} ({interval}, {diff.test}, n={diff.n}): "
                f"{diff.verdict}"
            )
    print(f"report in {result.out}: {', '.join(p.name for p in result.files)}")
    print(f"open {result.out / 'report.html'}")
    if not args.no_log:
        print(f"logged to the study's parent run {result.runs.parent.info.run_id} (artifacts: report/)")
    return 0


def _add_report_parser(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report",
        help="comparison tables and plots of a study (Markdown, CSV, HTML)",
        description="Read STUDY's runs from MLflow and write reports/<study>/: comparison tables (mean ± std "
        "over seeds, n, 95% interval, best of each column marked, baselines as rows), plots and report.html; "
        "the files are also logged to the study's parent run.",
    )
    report.add_argument("study", help="the study's name (its MLflow experiment)")
    report.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    report.add_argument("--out", help="output folder (default reports/<study>)")
    report.add_argument(
        "--metric", action="append", help="metric to tabulate (repeatable; default: objective + eval top-1s)"
    )
    report.add_argument("--rows", help="config key of the table rows (default method.name)")
    report.add_argument("--columns", help="config key of the table columns (default data.clips when swept)")
    report.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    add_compare_options(report)
    report.set_defaults(func=_report)


def _compare_arg(text: str) -> tuple[str, list[str]]:
    from harness.report.paired import parse_compare

    try:
        return parse_compare(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _at_arg(text: str) -> tuple[str, str]:
    from harness.report.paired import parse_at

    try:
        return parse_at(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_compare_options(parser: argparse.ArgumentParser) -> None:
    """``--compare KEY=A,B`` and ``--at KEY=VALUE``: the pairs of cells compared seed by seed."""
    parser.add_argument(
        "--compare",
        action="append",
        type=_compare_arg,
        metavar="KEY=A,B",
        help="compare these values of KEY seed by seed, e.g. method.name=byol,moco (repeatable; default: "
        "each column against the one before it per row, and the rows at the last column)",
    )
    parser.add_argument(
        "--at",
        action="append",
        type=_at_arg,
        metavar="KEY=VALUE",
        help="hold KEY at VALUE in --compare's pairs, e.g. data.clips=3 (repeatable; default: each value)",
    )


def _leaderboard(args: argparse.Namespace) -> int:
    from harness.report.leaderboard import build_leaderboard, write_leaderboard
    from harness.report.render import to_markdown
    from harness.tracking import resolve_tracking_uri

    board = build_leaderboard(resolve_tracking_uri(args.tracking_uri), args.benchmark)
    paths = write_leaderboard(board, args.out)
    print(to_markdown(board.blocks()))
    print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _add_leaderboard_parser(commands: argparse._SubParsersAction) -> None:
    leaderboard = commands.add_parser(
        "leaderboard",
        help="the best run per (method, backbone, ρ) on each benchmark, across studies",
        description="Across every study in the MLflow store: the best finished run per (method, backbone, ρ) "
        "on each benchmark, ranked, with its MLflow run id; printed as Markdown and written as Markdown, "
        "CSV and HTML.",
    )
    leaderboard.add_argument("--benchmark", help="only this benchmark (a name, or name.protocol)")
    leaderboard.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    leaderboard.add_argument("--out", default="reports", help="output folder (default reports)")
    leaderboard.set_defaults(func=_leaderboard)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho report`` and ``rho leaderboard``."""
    _add_report_parser(commands)
    _add_leaderboard_parser(commands)
