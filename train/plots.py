"""PNG plots of a run: loss and EER curves, DET curves, score histograms per class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm

from train.metrics import compute_eer, error_rates

_DET_TICKS = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95]


def plot_training_curves(history: Sequence[Mapping[str, float]], path: str | Path) -> None:
    """Train and dev loss, and dev EER (%), per epoch."""
    epochs = [int(h["epoch"]) for h in history]
    fig, (ax_loss, ax_eer) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train (crops)")
    ax_loss.plot(epochs, [h["dev_loss"] for h in history], "s-", label="dev (files)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_eer.plot(epochs, [100 * h["dev_eer"] for h in history], "o-", color="C3")
    ax_eer.set_xlabel("epoch")
    ax_eer.set_ylabel("EER (%)")
    ax_eer.set_title("dev EER")
    ax_eer.grid(alpha=0.3)
    for ax in (ax_loss, ax_eer):
        ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_det(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = "DET"
) -> None:
    """DET curves (normal-deviate axes) of spoof-oriented scores, one per named set."""
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    clip = 1e-4
    for name, (scores, labels) in curves.items():
        _, rejection, acceptance = error_rates(scores, labels)
        x = norm.ppf(np.clip(acceptance, clip, 1 - clip))
        y = norm.ppf(np.clip(rejection, clip, 1 - clip))
        eer = compute_eer(scores, labels).eer
        ax.plot(x, y, label=f"{name} (EER {100 * eer:.2f} %)")
    ticks = norm.ppf(_DET_TICKS)
    labels_text = [f"{100 * t:g}" for t in _DET_TICKS]
    ax.set_xticks(ticks, labels_text)
    ax.set_yticks(ticks, labels_text)
    limit = norm.ppf([0.0005, 0.96])
    ax.set_xlim(*limit)
    ax.set_ylim(*limit)
    ax.plot(limit, limit, ":", color="grey", linewidth=0.8, label="EER line")
    ax.set_xlabel("spoof accepted as bona fide (%)")
    ax.set_ylabel("bona fide rejected as spoof (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_histograms(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    threshold: float | None = None,
    title: str = "scores",
) -> None:
    """Histograms of spoof-oriented scores (logit margin) for bona fide and spoof files."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.linspace(scores.min(), scores.max(), 60) if scores.size else 10
    ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label="bona fide", density=True)
    ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label="spoof", density=True)
    if threshold is not None:
        ax.axvline(
            threshold,
            color="k",
            linestyle="--",
            label=f"dev EER threshold (margin {threshold:.2f})",
        )
    ax.set_xlabel("logit_spoof - logit_bonafide (higher = more spoof)")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
