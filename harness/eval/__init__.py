"""Evaluation of an encoder on a benchmark (``benchmarks/*.yaml``: a dataset and a protocol).

``spec`` reads and validates the benchmark files; ``protocols`` holds the registry of the
linear probe on cached features (``linear``), SlowFast's linear protocol on augmented clips
(``linear_slowfast``), kNN (``knn``), fine-tuning (``finetune``) and V-JEPA's attentive probe on
cached token features (``attentive``) protocols and ``evaluate``, which dispatches through it;
``features`` extracts and caches frozen (pooled or token) features; ``monitor`` is
the kNN monitor of pretraining; ``metrics`` scores class predictions.
"""

from harness.eval.attentive import AttentiveClassifier, attentive_probe, run_attentive
from harness.eval.context import EvalContext
from harness.eval.features import (
    FeatureCache,
    benchmark_views,
    cached_features,
    extract_features,
    weights_fingerprint,
)
from harness.eval.finetune import (
    classifier_network,
    run_finetune,
    score_on_views,
    train_classifier,
    train_on_clips,
)
from harness.eval.knn import knn_probe, knn_scores, run_knn, video_embeddings
from harness.eval.linear import fit_linear, linear_probe, run_linear, standardize
from harness.eval.linear_slowfast import (
    FrozenEncoderProbe,
    fit_linear_on_clips,
    probe_network,
    run_linear_slowfast,
    slowfast_lr,
)
from harness.eval.metrics import accuracy, topk_accuracy, view_probabilities
from harness.eval.monitor import knn_monitor
from harness.eval.protocols import PROTOCOLS, Protocol, evaluate
from harness.eval.spec import (
    AttentiveSpec,
    Benchmark,
    FinetuneSpec,
    KnnSpec,
    LinearSlowFastSpec,
    LinearSpec,
    ViewsSpec,
    check_manifests,
    load_benchmark,
)

__all__ = [
    "PROTOCOLS",
    "AttentiveClassifier",
    "AttentiveSpec",
    "Benchmark",
    "EvalContext",
    "FeatureCache",
    "FinetuneSpec",
    "FrozenEncoderProbe",
    "KnnSpec",
    "LinearSlowFastSpec",
    "LinearSpec",
    "Protocol",
    "ViewsSpec",
    "accuracy",
    "attentive_probe",
    "benchmark_views",
    "cached_features",
    "check_manifests",
    "classifier_network",
    "evaluate",
    "extract_features",
    "fit_linear",
    "fit_linear_on_clips",
    "knn_monitor",
    "knn_probe",
    "knn_scores",
    "linear_probe",
    "load_benchmark",
    "probe_network",
    "run_attentive",
    "run_finetune",
    "run_knn",
    "run_linear",
    "run_linear_slowfast",
    "score_on_views",
    "slowfast_lr",
    "standardize",
    "topk_accuracy",
    "train_classifier",
    "train_on_clips",
    "video_embeddings",
    "view_probabilities",
    "weights_fingerprint",
]
