"""The bundle's plots: per-format score agreement with PyTorch, DET per format, int8 histogram."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from convert.parity import Row
from device.scores import p_spoof, spoof_margin
from train.plots import plot_det, plot_histograms

AGREEMENT_PLOT = "score_agreement.png"
DET_PLOT = "det.png"
HISTOGRAM_PLOT = "hist_int8.png"


def plot_agreement(
    rows: Sequence[Row], reference: Row, labels: np.ndarray, threshold: float, path: Path
) -> None:
    """P(spoof) of each format against PyTorch's, file by file, one panel per format."""
    others = [r for r in rows if r is not reference and r.status == "ok"]
    if not others or reference.file_logits is None:
        return
    columns = min(3, len(others))
    lines = math.ceil(len(others) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 4.0 * lines), squeeze=False)
    x = p_spoof(reference.file_logits)
    for ax, row in zip(axes.flat, others, strict=False):
        y = p_spoof(row.file_logits)
        for target, name, marker in ((0, "bona fide", "o"), (1, "spoof", "x")):
            chosen = labels == target
            ax.scatter(x[chosen], y[chosen], s=10, marker=marker, alpha=0.6, label=name)
        ax.plot([0, 1], [0, 1], ":", color="grey", linewidth=0.8)
        ax.axvline(threshold, color="k", linestyle="--", linewidth=0.7)
        ax.axhline(threshold, color="k", linestyle="--", linewidth=0.7)
        m = row.metrics
        ax.set_title(
            f"{row.name}: agreement {100 * m['agreement']:.1f}%, max |dP| "
            f"{m['max_abs_dp_spoof']:.1e}",
            fontsize=9,
        )
        ax.set_xlabel("P(spoof), torch")
        ax.set_ylabel(f"P(spoof), {row.name}")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    for ax in list(axes.flat)[len(others) :]:
        ax.axis("off")
    fig.suptitle("file scores against PyTorch (dashed: the bundle's threshold)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(
    rows: Sequence[Row],
    reference: Row,
    labels: np.ndarray,
    threshold_p_spoof: float,
    threshold_margin: float,
    plots_dir: Path,
) -> list[Path]:
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = plots_dir / AGREEMENT_PLOT
    plot_agreement(rows, reference, labels, threshold_p_spoof, path)
    if path.is_file():
        written.append(path)
    curves = {
        row.name: (spoof_margin(row.file_logits), labels)
        for row in rows
        if row.status == "ok" and row.file_logits is not None
    }
    path = plots_dir / DET_PLOT
    plot_det(curves, path, title="DET per format (eval files)")
    written.append(path)
    int8 = next((r for r in rows if r.name == "int8" and r.status == "ok"), None)
    if int8 is not None and int8.file_logits is not None:
        path = plots_dir / HISTOGRAM_PLOT
        plot_histograms(
            spoof_margin(int8.file_logits),
            labels,
            path,
            threshold=threshold_margin if math.isfinite(threshold_margin) else None,
            title="int8 TFLite scores on eval files",
        )
        written.append(path)
    return written
