"""``rho import-checkpoint``: a SlowFast Slow R-50 ``.pyth`` (e.g. a contrastive_ssl model-zoo
model) as a rho-harness checkpoint that ``rho evaluate`` reads."""

from __future__ import annotations

import argparse


def _import(args: argparse.Namespace) -> int:
    from harness.slowfast_import import import_slowfast

    result = import_slowfast(args.source, args.out, args.method, args.config, args.overrides)
    experiment = result.experiment
    print(
        f"{args.out}: {result.loaded} tensors of {args.source} in the {experiment.backbone.name} encoder of "
        f"method {experiment.method.name} (rho {experiment.data.clips}, {experiment.optim.epochs} epochs); "
        f"{len(result.ignored)} dropped (heads, momentum encoder, queues)"
    )
    print(f"evaluate it: rho evaluate {args.out} --benchmark benchmarks/k400_linear_slowfast.yaml")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """``rho import-checkpoint``."""
    parser = commands.add_parser(
        "import-checkpoint",
        help="a SlowFast Slow R-50 .pyth as a checkpoint rho evaluate reads",
        description=(
            "Load the Slow R-50 weights of a facebookresearch/SlowFast checkpoint (ContrastiveModel of "
            "configs/contrastive_ssl, or ResNet) into our slow_r50 with a strict key mapping and write "
            "them as a rho-harness checkpoint. Heads, the momentum encoder and queues are dropped; "
            "any other unmapped, missing or misshapen key is an error naming it."
        ),
    )
    parser.add_argument("source", help="the SlowFast checkpoint (.pyth), a local file")
    parser.add_argument("out", help="where to write our checkpoint (e.g. mlruns/checkpoints/zoo/moco_r2.pt)")
    parser.add_argument(
        "--method",
        help="the method the config records (default: the file's CONTRASTIVE.TYPE: moco, byol, simclr, swav)",
    )
    parser.add_argument("--config", help="an experiment YAML to record instead of the defaults")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. data.clips=4")
    parser.set_defaults(func=_import)
