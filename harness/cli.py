"""The ``rho`` command line (also ``python -m harness``).

Every subcommand has its own ``--help``. User errors (a bad config key, a missing file, a
bad manifest row) print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from harness.errors import RhoError

EPILOG = """examples:
  rho demo                                        the quick start (what `make demo` runs)
  rho data synth data/synth                       make the demo dataset (real H.264 mp4 files)
  rho data check data/synth/train.csv             list unreadable videos
  rho config show studies/experiments/demo.yaml data.clips=3
  rho pretrain studies/experiments/demo.yaml method.name=moco
  rho evaluate mlruns/checkpoints/RUN/last.pt --benchmark benchmarks/synth_linear.yaml
  rho study run studies/cpu/clips.yaml --workers 2
  rho study status clips
  rho ui                                          the MLflow UI on 127.0.0.1
  rho bench decode --quick                        a speed benchmark (all: rho bench; see --list)
  rho report clips                                tables, plots and report.html in reports/clips/
  rho leaderboard --benchmark synth-linear        the best run per method, backbone and rho
  rho dashboard clips                             optuna-dashboard of a study on 127.0.0.1
"""


DEFAULT_BENCH_OUTPUT = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"


class UserError(RhoError):
    """An error in what the user asked for; printed without a traceback, exit status 2."""


def _config_show(args: argparse.Namespace) -> int:
    from harness.config import load_experiment

    experiment = load_experiment(args.config, args.overrides, check_files=not args.no_check_files)
    print(experiment.to_yaml(), end="")
    return 0


def _config_keys(args: argparse.Namespace) -> int:
    from harness.config import describe

    print(describe())
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from harness.data.synth import SynthSpec, synthesize
    from harness.progress import ProgressBar

    try:
        spec = SynthSpec(
            train_videos=args.train,
            val_videos=args.val,
            classes=args.classes,
            duration=args.duration,
            fps=args.fps,
            size=args.size,
            seed=args.seed,
            constant_nuisance=args.constant_nuisance,
            **({} if args.drift is None else {"drift": args.drift}),
        )
    except ValueError as exc:
        raise UserError(str(exc)) from None
    started = time.monotonic()
    bar = ProgressBar("synth", args.train + args.val, log_every=100)
    paths = synthesize(
        args.out, spec, workers=args.workers, progress=lambda done, total: bar.update(done, {})
    )
    print(f"dataset in {args.out} ({time.monotonic() - started:.1f} s)")
    for split, path in paths.items():
        print(f"  {split:5} manifest: {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from harness.data.check import check_manifest

    results = check_manifest(args.manifest, full=args.full, threads=args.threads)
    bad = [r for r in results if not r.ok]
    for result in bad:
        print(f"BAD  {result.path}: {result.reason}")
    print(f"{len(results) - len(bad)} of {len(results)} videos ok, {len(bad)} bad")
    return 1 if bad else 0


def _data_import(args: argparse.Namespace) -> int:
    from harness.data import importers

    fmt = args.format
    if fmt == "folders":
        written = importers.from_folders(args.root, args.out, val_fraction=args.val_fraction, seed=args.seed)
    elif fmt == "ucf101":
        written = importers.from_ucf101(args.videos, args.splits, args.out, split=args.split)
    elif fmt == "hmdb51":
        written = importers.from_hmdb51(args.videos, args.splits, args.out, split=args.split)
    elif fmt == "kinetics":
        written = importers.from_kinetics(args.csv, args.videos, args.out)
    else:
        written = importers.from_ssv2(args.labels, args.split_json, args.videos, args.out)
    for path in written if isinstance(written, (list, tuple)) else [written]:
        print(f"wrote {path}")
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    import torch

    from harness.config import load_experiment
    from harness.train import train_dataset

    experiment = load_experiment(args.config, args.overrides)
    data = experiment.data
    dataset = train_dataset(experiment)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=min(args.batch, len(dataset)), shuffle=True, num_workers=data.workers
    )
    started = time.monotonic()
    batch = next(iter(loader))
    elapsed = time.monotonic() - started
    clips = batch["clips"]
    span = (data.frames - 1) * data.stride + 1
    print(f"manifest      {data.train} ({len(dataset)} videos)")
    print(
        f"clips         {tuple(clips.shape)}  [B, V, C, T, H, W]  rho={data.clips} T={data.frames} stride={data.stride}"
    )
    print(f"clip span     {span} frames; t_max={data.t_max if data.t_max is not None else 'global'}")
    print(f"values        mean {clips.mean():+.3f} std {clips.std():.3f} (normalised)")
    print(f"labels        {batch['label'].tolist()}")
    starts = batch["starts"]
    gaps = (starts.max(1).values - starts.min(1).values).tolist()
    print(
        f"start gaps    {', '.join(f'{g:.2f}' for g in gaps)} s (max distance between a video's clip starts)"
    )
    print(
        f"padded/skip   {int(batch['padded'].sum())} frames padded, {int(batch['skipped'].sum())} videos skipped"
    )
    print(f"decode time   {elapsed:.2f} s for one batch with {data.workers} workers")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import json

    from harness.config import load_experiment
    from harness.train import pretrain

    experiment = load_experiment(args.config, args.overrides)
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
    if result.run_id is None:
        return 0  # not rank 0
    print(f"MLflow run {result.run_id}")
    print(f"checkpoint {result.checkpoint}")
    _print_metrics(result.metrics)
    if args.result_json:
        payload = {"run_id": result.run_id, "checkpoint": str(result.checkpoint), "metrics": result.metrics}
        Path(args.result_json).write_text(json.dumps(payload))
    return 0


def _study_run(args: argparse.Namespace) -> int:
    from harness.redact import redact
    from harness.study import load_study, prepare_study, resolve_storage, run_worker, run_workers
    from harness.tracking import resolve_tracking_uri

    spec = load_study(args.spec)
    storage_url = resolve_storage(args.storage)
    tracking_uri = resolve_tracking_uri(args.tracking_uri)
    added, parent = prepare_study(spec, storage_url, tracking_uri)
    total = len(spec.points()) + spec.n_trials
    print(
        f"study {spec.name}: {total} trials planned, {added} newly queued; storage {redact(storage_url)}; "
        f"MLflow {redact(tracking_uri)} (parent run {parent})",
        flush=True,
    )
    if args.workers > 1:
        code = run_workers(args.spec, storage_url, tracking_uri, args.workers, args.gpus_per_trial)
    else:
        run_worker(spec, storage_url, tracking_uri, gpus_per_trial=args.gpus_per_trial)
        code = 0
    _print_study(spec.name, storage_url, spec)
    return code


def _study_worker(args: argparse.Namespace) -> int:
    from harness.study import load_study, resolve_storage, run_worker

    spec = load_study(args.spec)
    report = run_worker(
        spec, resolve_storage(args.storage), args.tracking_uri, gpus_per_trial=args.gpus_per_trial
    )
    print(
        f"worker done: {report.completed} complete, {report.failed} failed, {report.pruned} pruned",
        flush=True,
    )
    return 0


def _print_study(name: str, storage_url: str, spec=None) -> None:
    import optuna
    import pandas as pd

    from harness.study import comparison_table, trials_frame

    study = optuna.load_study(study_name=name, storage=storage_url)
    frame = trials_frame(study)
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


def _study_status(args: argparse.Namespace) -> int:
    import optuna
    import pandas as pd

    from harness.study import resolve_storage, trials_frame

    storage_url = resolve_storage(args.storage)
    try:
        study = optuna.load_study(study_name=args.name, storage=storage_url)
    except KeyError:
        raise UserError(
            f"no study named {args.name!r} in this storage; `rho study list` shows the studies"
        ) from None
    frame = trials_frame(study)
    if frame.empty:
        print(f"study {args.name}: no trials")
        return 0
    hide = [c for c in frame.columns if c.startswith(("eval.", "epoch_", "clips_", "data_wait", "bad_files"))]
    with pd.option_context("display.width", 250, "display.max_columns", 50, "display.max_colwidth", 60):
        print(frame.drop(columns=hide).to_string(index=False))
    return 0


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


def _study_list(args: argparse.Namespace) -> int:
    import optuna

    from harness.study import resolve_storage

    summaries = optuna.get_all_study_summaries(resolve_storage(args.storage), include_best_trial=True)
    if not summaries:
        print("no studies yet; start one with `rho study run studies/demo.yaml`")
        return 0
    print(f"{'study':30} {'trials':>7} {'best':>10}  started")
    for summary in summaries:
        best = f"{summary.best_trial.value:.4g}" if summary.best_trial is not None else "-"
        started = summary.datetime_start.strftime("%Y-%m-%d %H:%M") if summary.datetime_start else "-"
        print(f"{summary.study_name:30} {summary.n_trials:>7} {best:>10}  {started}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from harness.eval import evaluate, load_benchmark
    from harness.train import load_trained

    method, experiment, state = load_trained(args.checkpoint)
    metrics = {}
    for path in args.benchmark:
        benchmark = load_benchmark(path)
        metrics.update(
            evaluate(
                method.encoder,
                benchmark,
                encoder_key=f"{state['config_hash']}-epoch{state['epoch']}",
                device=args.device,
                workers=args.workers,
                seed=experiment.runtime.seed,
            )
        )
    _print_metrics(metrics)
    return 0


def _print_metrics(metrics: dict[str, float]) -> None:
    for key, value in sorted(metrics.items()):
        print(f"  {key:40} {value:10.4g}")


def _demo(args: argparse.Namespace) -> int:
    from harness.demo import DEMO_STUDY, run_demo

    return run_demo(Path(args.spec) if args.spec else DEMO_STUDY)


def _ui(args: argparse.Namespace) -> int:
    import signal
    import socket
    import subprocess
    import tempfile

    from harness.redact import redact
    from harness.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    port = args.port
    if not port:
        with socket.socket() as sock:
            sock.bind((args.host, 0))
            port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    command += ["--host", args.host, "--port", str(port), "--workers", "1"]
    # The server's log goes to a file: a pipe nobody reads would block it once full.
    log_file = tempfile.NamedTemporaryFile("w+", prefix="rho-ui-", suffix=".log", delete=False)
    # MLflow 3's GenAI job runner (huey consumers) is of no use here and slows start and stop.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # Its own session: stopping it reaches the uvicorn worker too, and nothing is left behind;
    # SIGTERM (kill, a service manager) stops it as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    url = f"http://{args.host}:{port}"
    print(f"MLflow UI for {redact(uri)} at {url} (Ctrl-C stops it)", flush=True)
    try:
        while server.poll() is None:  # say when it answers; a server that dies says why
            try:
                with socket.create_connection((args.host, port), timeout=1):
                    print(f"MLflow UI ready: {url} (server log {log_file.name})", flush=True)
                    break
            except OSError:
                time.sleep(0.5)
        code = server.wait()
        log_file.seek(0)
        print(f"MLflow UI exited with status {code}:\n{log_file.read()[-3000:]}", file=sys.stderr)
        return code or 1
    except KeyboardInterrupt:
        _stop_process_group(server)
        print("MLflow UI stopped", flush=True)
        return 0


def _stop_process_group(server, grace: float = 15.0) -> None:
    """SIGTERM to ``server``'s whole process group, then SIGKILL to what is left after ``grace`` s."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; make sure its children are too
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def _dashboard(args: argparse.Namespace) -> int:
    import signal

    from harness.dashboard import dashboard_server
    from harness.redact import redact
    from harness.study import resolve_storage

    storage_url = resolve_storage(args.storage)
    try:
        server, url = dashboard_server(storage_url, args.study, args.host, args.port)
    except KeyError:
        raise UserError(
            f"no study named {args.study!r} in {redact(storage_url)}; `rho study list` shows the studies "
            "(or pass --storage)"
        ) from None
    print(
        f"Optuna dashboard of study {args.study} ({redact(storage_url)}) at {url} (Ctrl-C stops it)",
        flush=True,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # kill stops it as Ctrl-C does
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("Optuna dashboard stopped", flush=True)
    finally:
        server.server_close()
    return 0


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
    )
    for comp in result.comparisons:
        print(f"{comp.metric}: {len(comp.row_labels)} rows x {len(comp.column_labels)} columns")
    print(f"report in {result.out}: {', '.join(p.name for p in result.files)}")
    print(f"open {result.out / 'report.html'}")
    if not args.no_log:
        print(f"logged to the study's parent run {result.runs.parent.info.run_id} (artifacts: report/)")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from harness.report.leaderboard import build_leaderboard, write_leaderboard
    from harness.report.render import to_markdown
    from harness.tracking import resolve_tracking_uri

    board = build_leaderboard(resolve_tracking_uri(args.tracking_uri), args.benchmark)
    paths = write_leaderboard(board, args.out)
    print(to_markdown(board.blocks()))
    print(f"written: {', '.join(str(p) for p in paths)}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from harness.speed import discover, run_benchmarks

    if args.list:
        for name, bench in discover().items():
            params = f" (--param {', '.join(bench.params)})" if bench.params else ""
            print(f"{name:14} {bench.title}{params}")
        return 0
    results = run_benchmarks(
        args.names, quick=args.quick, workdir=args.workdir, output=args.output, params=args.param or []
    )
    print(f"results in {args.output}")
    return 1 if any(r.skipped and r.skipped.startswith("failed") for r in results) else 0


def _add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--host and --port of a local web server (``rho ui``, ``rho dashboard``)."""
    parser.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rho",
        description="rho-harness: studies of self-supervised video representation learning with ρ clips per video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    config = commands.add_parser("config", help="show and check experiment configs").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    show = config.add_parser(
        "show",
        help="print the resolved config (or the error)",
        description="Load CONFIG, apply key=value overrides, validate, and print the resolved YAML.",
    )
    show.add_argument("config", help="experiment YAML, e.g. studies/experiments/demo.yaml")
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. data.clips=3")
    show.add_argument(
        "--no-check-files", action="store_true", help="do not require manifests and benchmarks to exist"
    )
    show.set_defaults(func=_config_show)
    keys = config.add_parser("keys", help="list every config key with its default and meaning")
    keys.set_defaults(func=_config_keys)

    data = commands.add_parser("data", help="make, import, check and inspect video datasets").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    synth = data.add_parser(
        "synth",
        help="generate the synthetic dataset (H.264 mp4 + manifests)",
        description="Generate a labelled synthetic video dataset: a class-defining object whose pose, "
        "motion, scale, colour, lighting, background and occluders drift over time. Cached: the same "
        "options on an existing dataset do nothing.",
    )
    synth.add_argument("out", help="output folder (videos/, train.csv, val.csv, classes.txt)")
    synth.add_argument("--train", type=int, default=320, help="training videos (default 320)")
    synth.add_argument("--val", type=int, default=160, help="validation videos (default 160)")
    synth.add_argument("--classes", type=int, default=8, help="classes (default 8)")
    synth.add_argument("--duration", type=float, default=4.0, help="seconds per video (default 4)")
    synth.add_argument("--fps", type=int, default=16, help="frame rate (default 16)")
    synth.add_argument("--size", type=int, default=64, help="frame side in pixels, even (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same files")
    synth.add_argument(
        "--constant-nuisance", action="store_true", help="the control: nuisances constant within each video"
    )
    synth.add_argument(
        "--drift",
        type=float,
        help="how far nuisances move towards a fresh draw at each keyframe, 0..1 (default: the demo's)",
    )
    synth.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    synth.set_defaults(func=_data_synth)

    check = data.add_parser(
        "check",
        help="list unreadable, truncated or missing videos",
        description="Open and decode every video of MANIFEST; print each bad one; exit 1 if any is bad.",
    )
    check.add_argument("manifest")
    check.add_argument(
        "--full", action="store_true", help="decode every frame, not just the first and last second"
    )
    check.add_argument("--threads", type=int, default=4, help="decoding threads (default 4)")
    check.set_defaults(func=_data_check)

    inspect = data.add_parser(
        "inspect",
        help="decode one training batch of a config and summarise it",
        description="Build the training dataset of CONFIG, decode one batch and print its shapes and statistics.",
    )
    inspect.add_argument("config")
    inspect.add_argument("overrides", nargs="*", metavar="key=value")
    inspect.add_argument("--batch", type=int, default=8, help="videos in the batch (default 8)")
    inspect.set_defaults(func=_data_inspect)

    imports = data.add_parser("import", help="turn a public dataset layout into manifests").add_subparsers(
        dest="format", metavar="FORMAT", required=True
    )
    folders = imports.add_parser("folders", help="class-per-folder tree: ROOT/<class>/<video>")
    folders.add_argument("root")
    folders.add_argument("out", help="folder for train.csv (and val.csv), classes.txt")
    folders.add_argument("--val-fraction", type=float, default=0.0, help="stratified validation share")
    folders.add_argument("--seed", type=int, default=0)
    for name, label in (("ucf101", "UCF101"), ("hmdb51", "HMDB51")):
        sub = imports.add_parser(name, help=f"{label} videos and official split files")
        sub.add_argument("videos", help="folder of videos, <class>/<video>")
        sub.add_argument("splits", help="folder of the split files")
        sub.add_argument("out", help="folder for train.csv, val.csv, classes.txt")
        sub.add_argument("--split", type=int, default=1, choices=(1, 2, 3))
    kinetics = imports.add_parser(
        "kinetics", help="a Kinetics CSV (label,youtube_id,time_start,time_end,split)"
    )
    kinetics.add_argument("csv")
    kinetics.add_argument("videos", help="folder of videos, flat or <label>/<file>")
    kinetics.add_argument("out", help="manifest CSV to write")
    ssv2 = imports.add_parser("ssv2", help="Something-Something v2 JSON label files")
    ssv2.add_argument("labels", help="labels.json")
    ssv2.add_argument("split_json", help="train.json or validation.json")
    ssv2.add_argument("videos", help="folder of <id>.webm")
    ssv2.add_argument("out", help="manifest CSV to write")
    for sub in imports.choices.values():
        sub.set_defaults(func=_data_import)

    pretrain = commands.add_parser(
        "pretrain",
        help="pretrain one experiment (checkpoints, MLflow run, evaluation)",
        description="Pretrain CONFIG with key=value overrides; checkpoints every epoch under runtime.output_dir; "
        "evaluates eval.benchmarks at the end. Under torchrun each process is one rank.",
    )
    pretrain.add_argument("config")
    pretrain.add_argument("overrides", nargs="*", metavar="key=value")
    pretrain.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint if there is one"
    )
    pretrain.add_argument(
        "--run-name", help="MLflow run name and checkpoint folder (default: the config's hash)"
    )
    pretrain.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    pretrain.add_argument(
        "--output", help="checkpoint folder (default: runtime.output_dir/<run name or config hash>)"
    )
    pretrain.add_argument("--new-run", action="store_true", help="with --resume: log to a new MLflow run")
    pretrain.add_argument("--parent-run-id", help="nest the MLflow run under this run")
    pretrain.add_argument("--tags", help="extra MLflow tags as a JSON object")
    pretrain.add_argument("--result-json", help="write the final metrics to this JSON file")
    pretrain.set_defaults(func=_pretrain)

    study = commands.add_parser("study", help="run and inspect studies (Optuna + MLflow)").add_subparsers(
        dest="action", metavar="ACTION", required=True
    )
    run = study.add_parser(
        "run",
        help="run (or resume) a study spec",
        description="Queue every trial of SPEC that is not done yet and run them; re-running resumes. "
        "Each trial is an MLflow child run of the study's parent run. Many machines: run the same "
        "command on each with a shared --storage (PostgreSQL) and --tracking-uri (MLflow server).",
    )
    run.add_argument("spec", help="studies/X.yaml")
    for sub in (
        run,
        study.add_parser("worker", help="run trials of an already queued study (used by --workers)"),
    ):
        if sub is not run:
            sub.add_argument("spec")
        sub.add_argument(
            "--storage", help="Optuna storage URL (default: $RHO_STORAGE or sqlite:///mlruns/optuna.db)"
        )
        sub.add_argument(
            "--tracking-uri",
            help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)",
        )
        sub.add_argument(
            "--gpus-per-trial", type=int, default=0, help="run each trial as a K-process torchrun job"
        )
    run.add_argument(
        "--workers", type=int, default=1, help="local worker processes (one GPU each if there are GPUs)"
    )
    run.set_defaults(func=_study_run)
    study.choices["worker"].set_defaults(func=_study_worker)
    status = study.add_parser("status", help="a table of a study's trials")
    status.add_argument("name")
    status.add_argument("--storage", help="Optuna storage URL")
    status.set_defaults(func=_study_status)
    delete = study.add_parser(
        "delete",
        help="delete a study's trials and checkpoints (its MLflow runs stay), to start it over",
    )
    delete.add_argument("spec", help="studies/X.yaml")
    delete.add_argument("--storage", help="Optuna storage URL")
    delete.set_defaults(func=_study_delete)
    listing = study.add_parser("list", help="every study in the storage")
    listing.add_argument("--storage", help="Optuna storage URL")
    listing.set_defaults(func=_study_list)

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on benchmarks (linear, kNN, fine-tune)",
        description="Evaluate the encoder of CHECKPOINT on each --benchmark YAML; prints top-1/top-5.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint written by rho pretrain (last.pt)")
    evaluate.add_argument(
        "--benchmark", action="append", required=True, help="benchmarks/X.yaml (repeatable)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    evaluate.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    evaluate.set_defaults(func=_evaluate)

    demo = commands.add_parser(
        "demo",
        help="the quick start: synthetic data, the demo study, comparison tables",
        description="Synthesise data/synth (cached), run studies/demo.yaml (methods x rho plus baselines) into "
        "./mlruns and print the comparison tables. Re-running resumes the study.",
    )
    demo.add_argument("--spec", help="another study spec to run the same way (default studies/demo.yaml)")
    demo.set_defaults(func=_demo)

    ui = commands.add_parser(
        "ui",
        help="open the MLflow UI on this project's store",
        description="Start the MLflow UI on the project's store (or --tracking-uri), print its URL; Ctrl-C stops it.",
    )
    ui.add_argument(
        "--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    )
    _add_server_arguments(ui)
    ui.set_defaults(func=_ui)

    tracking_help = "MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///mlruns/mlflow.db)"
    report = commands.add_parser(
        "report",
        help="comparison tables and plots of a study (Markdown, CSV, HTML)",
        description="Read STUDY's runs from MLflow and write reports/<study>/: comparison tables (mean ± std "
        "over seeds, n, 95%% interval, best of each column marked, baselines as rows), plots and report.html; "
        "the files are also logged to the study's parent run.",
    )
    report.add_argument("study", help="the study's name (its MLflow experiment)")
    report.add_argument("--tracking-uri", help=tracking_help)
    report.add_argument("--out", help="output folder (default reports/<study>)")
    report.add_argument(
        "--metric", action="append", help="metric to tabulate (repeatable; default: objective + eval top-1s)"
    )
    report.add_argument("--rows", help="config key of the table rows (default method.name)")
    report.add_argument("--columns", help="config key of the table columns (default data.clips when swept)")
    report.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    report.set_defaults(func=_report)

    leaderboard = commands.add_parser(
        "leaderboard",
        help="the best run per (method, backbone, ρ) on each benchmark, across studies",
        description="Across every study in the MLflow store: the best finished run per (method, backbone, ρ) "
        "on each benchmark, ranked, with its MLflow run id; printed as Markdown and written as Markdown, "
        "CSV and HTML.",
    )
    leaderboard.add_argument("--benchmark", help="only this benchmark (a name, or name.protocol)")
    leaderboard.add_argument("--tracking-uri", help=tracking_help)
    leaderboard.add_argument("--out", default="reports", help="output folder (default reports)")
    leaderboard.set_defaults(func=_leaderboard)

    dashboard = commands.add_parser(
        "dashboard",
        help="open optuna-dashboard on a study (history, importances, pruned trials)",
        description="Serve optuna-dashboard for STUDY's Optuna storage on 127.0.0.1 and print the study's URL; "
        "Ctrl-C stops it.",
    )
    dashboard.add_argument("study")
    dashboard.add_argument(
        "--storage", help="Optuna storage URL (default: $RHO_STORAGE or sqlite:///mlruns/optuna.db)"
    )
    _add_server_arguments(dashboard)
    dashboard.set_defaults(func=_dashboard)
    bench = commands.add_parser(
        "bench",
        help="speed and memory benchmarks against reference implementations (benchmarks/RESULTS.md)",
        description="Run benchmarks/speed/NAME.py (all by default): each measures the reference and ours in "
        "the same run, prints a table with the ratio and whether the goal is met, and updates "
        "benchmarks/RESULTS.md (machine, versions, load, date, the command).",
    )
    bench.add_argument(
        "names", nargs="*", metavar="NAME", help="benchmarks to run (default: all; see --list)"
    )
    bench.add_argument("--list", action="store_true", help="list the benchmarks and their parameters")
    bench.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that everything runs, in seconds"
    )
    bench.add_argument(
        "--param", action="append", metavar="[NAME.]KEY=VALUE", help="a benchmark parameter (repeatable)"
    )
    bench.add_argument(
        "--output", default=str(DEFAULT_BENCH_OUTPUT), help="results file (default benchmarks/RESULTS.md)"
    )
    bench.add_argument(
        "--workdir",
        default="mlruns/bench",
        help="cached test videos and scratch files (default mlruns/bench)",
    )
    bench.set_defaults(func=_bench)
    return parser


def _redacted(exc: BaseException) -> str:
    """The error's message with URL passwords hidden."""
    from harness.redact import redact

    return redact(str(exc))


_URL_OPTIONS = {
    "storage": ("--storage", "RHO_STORAGE"),
    "tracking_uri": ("--tracking-uri", "MLFLOW_TRACKING_URI"),
}


def _warn_passwords_in_argv(args: argparse.Namespace) -> None:
    """A URL with a password on the command line is visible to every user of the machine (``ps``)."""
    from harness.redact import redact

    for attribute, (option, variable) in _URL_OPTIONS.items():
        value = getattr(args, attribute, None)
        if isinstance(value, str) and redact(value) != value:
            print(
                f"rho: warning: the password in {option} is visible to every user of this machine "
                f"(ps) while rho runs; set ${variable} instead and leave {option} out",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rho``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    _warn_passwords_in_argv(args)
    try:
        return args.func(args)
    except RhoError as exc:  # 2: the request is wrong; 1: the machine is (a store down, a full disk)
        print(f"rho: error: {_redacted(exc)}", file=sys.stderr)
        return exc.exit_status
    except FileNotFoundError as exc:
        print(f"rho: error: {_redacted(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rho: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
