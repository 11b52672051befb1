"""The protocol registry, and ``evaluate``, which runs a benchmark's protocol on an encoder.

Each protocol pairs the settings class its benchmark-file section is validated into
(``harness.eval.spec``) with the function that runs it. Accuracies are percentages; top-5 is
top-min(5, classes). Installed distributions add protocols through the entry-point group
``rho.protocols`` (``name = "package.module:PROTOCOL"``, a ``Protocol``); a built-in name wins
over an entry point of the same name (docs/extending.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from harness.eval.attentive import run_attentive
from harness.eval.context import EvalContext
from harness.eval.finetune import run_finetune
from harness.eval.knn import run_knn
from harness.eval.linear import run_linear
from harness.eval.linear_slowfast import run_linear_slowfast
from harness.eval.spec import (
    AttentiveSpec,
    Benchmark,
    FinetuneSpec,
    KnnSpec,
    LinearSlowFastSpec,
    LinearSpec,
    plugin_protocol,
)
from harness.runtime import Device, Runtime

ProtocolRunner = Callable[[nn.Module, Benchmark, EvalContext], dict[str, float]]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol: its settings class and its runner (encoder, benchmark, context → top1/top5).

    Attributes:
        settings: a dataclass of ``harness.schema.field_spec`` fields: the benchmark file's
            section of the protocol (its name) is validated into one (``benchmark.settings``).
        run: ``run(encoder, benchmark, context) -> {"top1": %, "top5": %, ...}``; ``evaluate``
            names each key ``eval.<benchmark>.<protocol>.<key>`` and adds ``skipped``.
    """

    settings: type
    run: ProtocolRunner


#: Every protocol by the name benchmark files give (``protocol:``) and metric names carry
#: (``eval.<benchmark>.<protocol>.top1``); must list the same names as ``spec.PROTOCOL_SPECS``.
PROTOCOLS: dict[str, Protocol] = {
    "linear": Protocol(LinearSpec, run_linear),
    "linear_slowfast": Protocol(LinearSlowFastSpec, run_linear_slowfast),
    "knn": Protocol(KnnSpec, run_knn),
    "finetune": Protocol(FinetuneSpec, run_finetune),
    "attentive": Protocol(AttentiveSpec, run_attentive),
}


def protocol(name: str) -> Protocol:
    """The protocol called ``name``: a built-in one (``PROTOCOLS``), else the one its entry point
    (``rho.protocols``) loads.

    Raises:
        ValueError: for an unknown name (listing the choices), or an entry point that is not a
            protocol (``settings`` dataclass and ``run``).
    """
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    found = plugin_protocol(name)
    return found if isinstance(found, Protocol) else Protocol(found.settings, found.run)


def evaluate(
    encoder: nn.Module,
    benchmark: Benchmark,
    *,
    encoder_key: str,
    cache_dir: str | Path = "mlruns/features",
    device: Device = "cpu",
    workers: int = 0,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 8,
    decoder: str = "pyav",
) -> dict[str, float]:
    """Run ``benchmark``'s protocol on ``encoder``.

    Args:
        encoder: clips [B, C, T, H, W] → features [B, D]; moved to ``device`` in place, its
            train/eval mode restored afterwards; fine-tuning trains a copy.
        benchmark: from ``harness.eval.load_benchmark``.
        encoder_key: names the encoder in the feature cache (e.g. a run's config hash); the
            cache key also holds a fingerprint of the weights, so changed weights never hit.
        cache_dir: feature cache folder.
        device: where the encoder (and the linear classifier) run; bf16 autocast and
            channels_last_3d on CUDA.
        workers: DataLoader decoding processes.
        seed: the classifier's initialisation, data order and augmentation.
        progress: print progress bars.
        batch_size: videos per forward pass when extracting features (each with all its views).
        decoder: the decoding backend (``data.decoder``); the frames are the same with either.

    Unreadable videos are skipped, one line per manifest printed (how many, the first, the
    ``rho data check`` command) and their count returned; more than ``MAX_UNREADABLE`` of a
    manifest's videos is refused (``ManifestError``).

    Returns:
        ``{"eval.<name>.<protocol>.top1": %, "eval.<name>.<protocol>.top5": %,
        "eval.<name>.<protocol>.skipped": unreadable videos left out}``.
    """
    context = EvalContext(
        runtime=Runtime.for_device(device),
        encoder_key=encoder_key,
        cache_dir=Path(cache_dir),
        workers=workers,
        seed=seed,
        progress=progress,
        batch_size=batch_size,
        decoder=decoder,
    )
    scores = protocol(benchmark.protocol).run(encoder, benchmark, context)
    for skipped in context.skipped:
        print(f"{benchmark.name}: {skipped.summary()}", flush=True)
    scores["skipped"] = float(len(context.skipped_files()))
    return {benchmark.metric(name): value for name, value in scores.items()}
