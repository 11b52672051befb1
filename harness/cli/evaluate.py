"""``rho evaluate``: evaluate a checkpoint's encoder on evaluation benchmarks."""

from __future__ import annotations

import argparse

from harness.cli.common import print_metrics


def _evaluate(args: argparse.Namespace) -> int:
    from harness.eval import check_manifests, evaluate, load_benchmark
    from harness.eval.attentive import require_tokens
    from harness.train import load_trained

    benchmarks = [load_benchmark(path) for path in args.benchmark]  # every file read before compute
    for benchmark in benchmarks:
        check_manifests(benchmark)
    method, experiment, state = load_trained(args.checkpoint)
    for benchmark in benchmarks:  # before any compute: an attentive benchmark needs token features
        require_tokens(method.encoder, benchmark)
    metrics = {}
    for benchmark in benchmarks:
        metrics.update(
            evaluate(
                method.encoder,
                benchmark,
                encoder_key=f"{state['config_hash']}-epoch{state['epoch']}",
                device=args.device,
                workers=args.workers,
                seed=experiment.runtime.seed,
                decoder=args.decoder or experiment.data.decoder,
            )
        )
    print_metrics(metrics)
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho evaluate``."""
    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on benchmarks (linear, linear_slowfast, knn, finetune, attentive protocols)",
        description="Evaluate the encoder of CHECKPOINT on each --benchmark YAML; prints top-1/top-5.",
    )
    evaluate.add_argument("checkpoint", help="a checkpoint written by rho pretrain (last.pt)")
    evaluate.add_argument(
        "--benchmark", action="append", required=True, help="benchmarks/X.yaml (repeatable)"
    )
    evaluate.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    evaluate.add_argument("--workers", type=int, default=2, help="decoding processes (default 2)")
    evaluate.add_argument(
        "--decoder",
        choices=("pyav", "torchcodec"),
        help="decoding backend (default: the checkpoint's data.decoder); the frames are the same",
    )
    evaluate.set_defaults(func=_evaluate)
