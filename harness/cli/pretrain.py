"""``rho pretrain``: pretrain one experiment (also each rank of a study's torchrun trial)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from harness.cli.common import TRACKING_URI_HELP, print_metrics


def _pretrain(args: argparse.Namespace) -> int:
    from harness.config import load_experiment
    from harness.runtime import command_stop_signals

    experiment = load_experiment(args.config, args.overrides)
    # From here to the exit a stop signal never kills the process: the training stops at its next
    # step (or before its first) with a checkpoint there; once it is done, the signal is moot.
    with command_stop_signals(experiment.runtime.stop_signals):
        return _run(args, experiment)


def _run(args: argparse.Namespace, experiment) -> int:
    import json

    from harness.runtime import Preempted
    from harness.train import pretrain

    on_epoch_end, pruned = None, ()
    if os.environ.get("RHO_TRIAL"):  # a rank of a study's torchrun trial (harness.study.launch)
        import optuna

        from harness.study import torchrun_pruning_callback

        on_epoch_end, pruned = torchrun_pruning_callback(), optuna.TrialPruned

    started: dict[str, str] = {}

    def write_run_id(run_id: str) -> None:  # for a caller (a study's torchrun trial) that needs it early
        started["run_id"] = run_id
        Path(args.result_json).write_text(json.dumps({"run_id": run_id}))

    try:
        result = pretrain(
            experiment,
            resume=args.resume,
            resume_run=not args.new_run,
            run_name=args.run_name,
            output=Path(args.output) if args.output else None,
            tracking_uri=args.tracking_uri,
            parent_run_id=args.parent_run_id,
            tags=json.loads(args.tags) if args.tags else None,
            on_epoch_end=on_epoch_end,
            on_run_start=write_run_id if args.result_json else None,
        )
    except pruned as exc:  # a study's torchrun trial, pruned: every rank ends here
        print(f"pruned: {exc}", flush=True)
        if started and args.result_json:
            Path(args.result_json).write_text(json.dumps({**started, "pruned": str(exc)}))
        return 0
    except Preempted as exc:  # a stop signal: a checkpoint at the step every rank stopped at
        print(f"rho: preempted: {exc}", file=sys.stderr, flush=True)
        if started and args.result_json:
            Path(args.result_json).write_text(json.dumps({**started, "preempted": str(exc)}))
        return exc.exit_status
    if result.run_id is None:
        return 0  # not rank 0
    print(f"MLflow run {result.run_id}")
    print(f"checkpoint {result.checkpoint}")
    print_metrics(result.metrics)
    if args.result_json:
        payload = {"run_id": result.run_id, "checkpoint": str(result.checkpoint), "metrics": result.metrics}
        Path(args.result_json).write_text(json.dumps(payload))
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho pretrain``."""
    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain one experiment (checkpoints, MLflow run, evaluation)",
        description="Pretrain CONFIG with key=value overrides; checkpoints every epoch under runtime.output_dir "
        "(and mid-epoch with runtime.checkpoint_every or checkpoint_seconds); evaluates eval.benchmarks at "
        "the end. Under torchrun each process is one rank. A signal of runtime.stop_signals (SIGTERM, SIGUSR1) "
        "stops every rank at the next step with a checkpoint there and exit status 75; --resume continues "
        "there.",
    )
    pretrain.add_argument("config")
    pretrain.add_argument("overrides", nargs="*", metavar="key=value")
    pretrain.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint if there is one"
    )
    pretrain.add_argument(
        "--run-name",
        help="MLflow run name, also the checkpoint folder's name under runtime.output_dir "
        "(default: the run is named '<method> rho<data.clips> <backbone> <config hash, 8 characters> s<seed>', "
        "e.g. 'simclr rho2 r3d_tiny 1a2b3c4d s0', and the folder is the full config hash)",
    )
    pretrain.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    pretrain.add_argument(
        "--output", help="checkpoint folder (default: runtime.output_dir/<run name or config hash>)"
    )
    pretrain.add_argument("--new-run", action="store_true", help="with --resume: log to a new MLflow run")
    pretrain.add_argument("--parent-run-id", help="nest the MLflow run under this run")
    pretrain.add_argument("--tags", help="extra MLflow tags as a JSON object")
    pretrain.add_argument("--result-json", help="write the final metrics to this JSON file")
    pretrain.set_defaults(func=_pretrain)
