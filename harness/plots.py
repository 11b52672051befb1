"""Matplotlib figures saved as PNG (headless: the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(history: list[dict[str, float]], path: str | Path, title: str = "") -> Path:
    """Per-epoch loss (and kNN top-1 when monitored) against epoch; returns the PNG path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs = [h["epoch"] for h in history]
    has_knn = any("knn_top1" in h for h in history)
    fig, axes = plt.subplots(1, 2 if has_knn else 1, figsize=(9 if has_knn else 5, 3.5), squeeze=False)
    axes[0, 0].plot(epochs, [h.get("loss", float("nan")) for h in history], marker="o")
    axes[0, 0].set(xlabel="epoch", ylabel="training loss", title=title)
    if has_knn:
        axes[0, 1].plot(
            epochs, [h.get("knn_top1", float("nan")) for h in history], marker="o", color="tab:green"
        )
        axes[0, 1].set(xlabel="epoch", ylabel="kNN top-1 (%)", title="online kNN monitor")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
