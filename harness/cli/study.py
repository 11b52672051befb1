"""``rho study``: run a study (or one worker of it), show, list and delete studies."""

from __future__ import annotations

import argparse

from harness.cli.common import STORAGE_HELP, TRACKING_URI_HELP, UserError

# Columns `rho study status` leaves out of its table (per-epoch speed, evaluation details): the
# final metrics they come from are not even read from the storage.
HIDDEN_COLUMNS = ("eval.", "epoch_", "clips_", "data_wait", "bad_files")


def _add_trial_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``rho study run`` and ``rho study worker``: where trials are stored and logged, GPUs."""
    parser.add_argument("--storage", help=STORAGE_HELP)
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    parser.add_argument(
        "--gpus-per-trial", type=int, default=0, help="run each trial as a K-process torchrun job"
    )


def _study_run(args: argparse.Namespace) -> int:
    from harness.redact import redact
    from harness.runtime import EXIT_PREEMPTED, command_stop_signals
    from harness.study import load_study, prepare_study, resolve_storage, run_worker, run_workers
    from harness.study.worker import stop_signal_names
    from harness.tracking import resolve_tracking_uri

    spec = load_study(args.spec)
    signals = stop_signal_names(spec)
    storage_url = resolve_storage(args.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    added, parent = prepare_study(spec, storage_url, tracking_uri)
    total = len(spec.points()) + spec.n_trials
    print(
        f"study {spec.name}: {total} trials planned, {added} newly queued; storage {redact(storage_url)}; "
        f"MLflow {redact(tracking_uri)} (parent run {parent})",
        flush=True,
    )
    with command_stop_signals(signals):  # a stop signal: trials stop at a step, re-queued; status 75
        if args.workers > 1:
            code = run_workers(
                args.spec, storage_url, tracking_uri, args.workers, args.gpus_per_trial, signals
            )
        else:
            report = run_worker(spec, storage_url, tracking_uri, gpus_per_trial=args.gpus_per_trial)
            code = EXIT_PREEMPTED if report.preempted else 0
        _print_study(spec.name, storage_url, spec)
        if code == EXIT_PREEMPTED:
            print(
                f"study {spec.name}: stopped by a signal; interrupted trials are re-queued and resume "
                f"from their checkpoints when the study runs again (exit status {EXIT_PREEMPTED})",
                flush=True,
            )
    return code


def _print_study(name: str, storage_url: str, spec=None) -> None:
    import optuna
    import pandas as pd

    from harness.study import comparison_table, trials_frame
    from harness.study.queries import stored_trials

    study = optuna.load_study(study_name=name, storage=storage_url)
    frame = trials_frame(stored_trials(study))
    if frame.empty:
        print(f"study {name}: no trials yet")
        return
    counts = frame["state"].value_counts().to_dict()
    print(f"\nstudy {name}: " + ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())))
    if spec is not None:
        table = comparison_table(frame, spec.table_rows, spec.table_columns, spec.objective_metric)
        if not table.empty:
            print(f"\n{spec.objective_metric} (mean ± std over seeds):")
            with pd.option_context("display.width", 200, "display.max_columns", 50):
                print(table.to_string())


def _add_run_parser(study: argparse._SubParsersAction) -> None:
    run = study.add_parser(
        "run",
        help="run (or resume) a study spec",
        description="Queue every trial of SPEC that is not done yet and run them; re-running resumes. "
        "Each trial is an MLflow child run of the study's parent run. Many machines: run the same "
        "command on each with a shared --storage (PostgreSQL) and --tracking-uri (MLflow server).",
    )
    run.add_argument("spec", help="studies/X.yaml")
    _add_trial_options(run)
    run.add_argument(
        "--workers", type=int, default=1, help="local worker processes (one GPU each if there are GPUs)"
    )
    run.set_defaults(func=_study_run)


def _study_worker(args: argparse.Namespace) -> int:
    import os

    from harness.runtime import EXIT_PREEMPTED, command_stop_signals
    from harness.study import load_study, resolve_storage, run_worker
    from harness.study.launch import PARENT_ENV, die_with_parent
    from harness.study.worker import stop_signal_names

    if os.environ.get(PARENT_ENV):  # started by `rho study run --workers`: do not outlive it
        die_with_parent(int(os.environ[PARENT_ENV]))
    spec = load_study(args.spec)
    with command_stop_signals(stop_signal_names(spec)):
        report = run_worker(
            spec, resolve_storage(args.storage), args.tracking_uri, gpus_per_trial=args.gpus_per_trial
        )
    stopped = (
        f", stopped by a signal (its trial re-queued; status {EXIT_PREEMPTED})" if report.preempted else ""
    )
    print(
        f"worker done: {report.completed} complete, {report.failed} failed, {report.pruned} pruned{stopped}",
        flush=True,
    )
    return EXIT_PREEMPTED if report.preempted else 0


def _add_worker_parser(study: argparse._SubParsersAction) -> None:
    worker = study.add_parser("worker", help="run trials of an already queued study (used by --workers)")
    worker.add_argument("spec")
    _add_trial_options(worker)
    worker.set_defaults(func=_study_worker)


def _study_status(args: argparse.Namespace) -> int:
    """The table of a study's trials, read as a few columns (``queries.stored_trials``), not as
    a FrozenTrial per trial: 100k stored trials cost their rows, not their every attribute."""
    import optuna
    import pandas as pd

    from harness.study import resolve_storage, trials_frame
    from harness.study.attrs import ATTR_METRIC_PREFIX
    from harness.study.queries import stored_trials

    storage_url = resolve_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.name, storage=storage_url)
    except KeyError:
        raise UserError(
            f"no study named {args.name!r} in this storage; `rho study list` shows the studies"
        ) from None
    frame = trials_frame(
        stored_trials(study, skip_attrs=tuple(ATTR_METRIC_PREFIX + c for c in HIDDEN_COLUMNS))
    )
    if frame.empty:
        print(f"study {args.name}: no trials")
        return 0
    hide = [c for c in frame.columns if c.startswith(HIDDEN_COLUMNS)]
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        print(frame.drop(columns=hide).to_string(index=False))
    return 0


def _add_status_parser(study: argparse._SubParsersAction) -> None:
    status = study.add_parser("status", help="a table of a study's trials")
    status.add_argument("name")
    status.add_argument("--storage", help="Optuna storage URL")
    status.set_defaults(func=_study_status)


def _study_delete(args: argparse.Namespace) -> int:
    from harness.redact import redact
    from harness.study import delete_study, load_study, resolve_storage

    spec = load_study(args.spec, check_files=False)
    storage_url = resolve_storage(args.storage)
    trials, folders = delete_study(spec, storage_url)
    print(
        f"deleted study {spec.name} ({trials} trial{'' if trials == 1 else 's'}) from {redact(storage_url)}"
    )
    for folder in folders:
        print(f"removed its checkpoints {folder}")
    print(f"its MLflow runs stay in experiment {spec.name}; `rho study run {args.spec}` starts it over")
    return 0


def _add_delete_parser(study: argparse._SubParsersAction) -> None:
    delete = study.add_parser(
        "delete",
        help="delete a study's trials and checkpoints (its MLflow runs stay), to start it over",
    )
    delete.add_argument("spec", help="studies/X.yaml")
    delete.add_argument("--storage", help="Optuna storage URL")
    delete.set_defaults(func=_study_delete)


def _study_list(args: argparse.Namespace) -> int:
    from harness.study import resolve_storage
    from harness.study.backend import make_storage, study_summaries

    summaries = study_summaries(make_storage(resolve_storage(args.storage)))
    if not summaries:
        print("no studies yet; start one with `rho study run studies/demo.yaml`")
        return 0
    print(f"{'study':30} {'trials':>7} {'best':>10}  started")
    for summary in summaries:
        best = f"{summary['best']:.4g}" if summary["best"] is not None else "-"
        started = summary["started"].strftime("%Y-%m-%d %H:%M") if summary["started"] else "-"
        print(f"{summary['name']:30} {summary['trials']:>7} {best:>10}  {started}")
    return 0


def _add_list_parser(study: argparse._SubParsersAction) -> None:
    listing = study.add_parser("list", help="every study in the storage")
    listing.add_argument("--storage", help="Optuna storage URL")
    listing.set_defaults(func=_study_list)


def _study_plan(args: argparse.Namespace) -> int:
    """Seeds needed to resolve ``--effect`` per comparison, from the variance a study measured."""
    from pathlib import Path

    import pandas as pd

    from harness.report.paired import plan_seeds
    from harness.tracking import resolve_tracking_uri

    name, planned = args.study, None
    if args.study.endswith((".yaml", ".yml")) or Path(args.study).is_file():
        from harness.study import load_study

        spec = load_study(args.study, check_files=False)
        name, planned = spec.name, len(spec.seeds)
    source = args.source or name
    plan = plan_seeds(
        resolve_tracking_uri(args.tracking_uri),
        source,
        args.effect,
        metric=args.metric,
        target=args.power,
        compare=args.compare,
        at=dict(args.at or []),
        rows=args.rows,
        columns=args.columns,
    )
    print(
        f"seeds for study {name} to resolve a difference of {args.effect:g} in {plan.metric} with "
        f"{args.power:.0%} power (95% paired t interval above 0), from the sd of the paired differences "
        f"that study {source} measured:"
    )
    table = plan.table.assign(**{"seeds needed": plan.table["seeds needed"].map(_seeds_text)})
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.max_colwidth", 50):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    needed = plan.table["seeds needed"].iloc[-1]
    if planned is not None:
        print(
            f"{name} plans {planned} seed{'s' if planned != 1 else ''}; pooled, it needs {_seeds_text(needed)}"
        )
    return 0


def _seeds_text(value) -> str:
    return "over 10000" if value is None or value != value else str(int(value))


def _add_plan_parser(study: argparse._SubParsersAction) -> None:
    from harness.cli.report import add_compare_options

    plan = study.add_parser(
        "plan",
        help="how many seeds a study needs to resolve a given difference",
        description="From the variance of the seed-paired differences that a finished study (--from, default "
        "the study itself) measured: the smallest number of seeds with which the 95% paired t interval "
        "resolves a true difference --effect with probability --power, per comparison (as `rho report` "
        "makes them) and pooled over them.",
    )
    plan.add_argument("study", metavar="SPEC_OR_NAME", help="studies/X.yaml or a study's name")
    plan.add_argument(
        "--effect", type=float, required=True, help="the difference to resolve, in the metric's units"
    )
    plan.add_argument("--from", dest="source", metavar="STUDY", help="the study whose runs give the variance")
    plan.add_argument("--metric", help="metric (default: the study's objective)")
    plan.add_argument("--power", type=float, default=0.8, help="probability of resolving it (default 0.8)")
    plan.add_argument("--rows", help="config key of the table rows (default method.name)")
    plan.add_argument("--columns", help="config key of the table columns (default data.clips when swept)")
    plan.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    add_compare_options(plan)
    plan.set_defaults(func=_study_plan)


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho study`` and its actions."""
    study = commands.add_parser("study", help="run and inspect studies (Optuna + MLflow)").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    _add_run_parser(study)
    _add_worker_parser(study)
    _add_status_parser(study)
    _add_delete_parser(study)
    _add_list_parser(study)
    _add_plan_parser(study)
