"""Score calibration at convert time: a monotone map of the spoof margin, fitted on dev.

P(spoof) = sigmoid(a * margin + b) (`device.scores.Calibration`), fitted on the dev split's
file margins (the same file scores the thresholds come from). Two candidates:

    temperature   a = 1 / T, b = 0        (one parameter: only the sharpness changes)
    platt         a and b                 (also moves the point where P(spoof) = 0.5)

Both are fitted by Newton's method on the cross-entropy against Platt's smoothed targets
((N+ + 1) / (N+ + 2) for spoof, 1 / (N- + 2) for bona fide): on a dev split the model
separates perfectly the plain maximum likelihood slope is infinite, and these targets keep
it finite (Platt 1999, "Probabilistic outputs for support vector machines"). The method is
chosen by the mean negative log-likelihood on held-out dev files (5-fold, seeded), not on
the files it was fitted on, where the two-parameter map always wins; on a tie (within
1e-4 nats) the one-parameter temperature is kept.

ECE: expected calibration error over 15 equal-width P(spoof) bins (the usual reliability
measure): sum over bins of (files in bin / files) * |fraction spoof - mean P(spoof)|.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from device.scores import Calibration, calibrated_margin, p_spoof_from_margin

ECE_BINS = 15
CV_FOLDS = 5
CV_SEED = 0
TIE_NATS = 1e-4
MAX_NEWTON_STEPS = 100


@dataclass(frozen=True)
class CalibrationFit:
    calibration: Calibration
    cv_nll: dict[str, float]  # held-out dev NLL per candidate, and "none" (uncalibrated)
    reason: str
    files: int
    ece_before: dict[str, float] = field(default_factory=dict)  # split -> ECE
    ece_after: dict[str, float] = field(default_factory=dict)


def expected_calibration_error(p: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of P(spoof) `p` against 0/1 `labels` over `bins` equal-width bins of [0, 1]."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.size != y.size or p.size == 0:
        raise ValueError(f"expected as many labels as scores (>= 1), got {p.size} and {y.size}")
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            total += inside.mean() * abs(float(y[inside].mean()) - float(p[inside].mean()))
    return float(total)


def reliability_bins(
    p: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean P(spoof), fraction spoof, files) of each non-empty bin."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    index = np.minimum((p * bins).astype(np.int64), bins - 1)
    used = [b for b in range(bins) if np.any(index == b)]
    mean_p = np.array([p[index == b].mean() for b in used])
    frac = np.array([y[index == b].mean() for b in used])
    count = np.array([np.count_nonzero(index == b) for b in used])
    return mean_p, frac, count


def _nll(margin: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of sigmoid(margin) against (soft) targets, computed stably."""
    # log sigmoid(z) = -softplus(-z); log(1 - sigmoid(z)) = -softplus(z)
    softplus_pos = np.logaddexp(0.0, margin)
    softplus_neg = np.logaddexp(0.0, -margin)
    return float(np.mean(targets * softplus_neg + (1.0 - targets) * softplus_pos))


def platt_targets(labels: np.ndarray) -> np.ndarray:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    positives, negatives = int(np.sum(y == 1)), int(np.sum(y == 0))
    return np.where(y == 1, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))


def _fit(margins: np.ndarray, targets: np.ndarray, method: str) -> Calibration:
    """Damped Newton on the mean cross-entropy; b stays 0 for temperature."""
    m = np.asarray(margins, dtype=np.float64)
    free_b = method == "platt"
    a, b = 1.0, 0.0
    loss = _nll(a * m + b, targets)
    for _ in range(MAX_NEWTON_STEPS):
        p = p_spoof_from_margin(a * m + b)
        r = p - targets
        w = np.maximum(p * (1.0 - p), 1e-12)
        if free_b:
            grad = np.array([np.mean(r * m), np.mean(r)])
            hess = np.array([[np.mean(w * m * m), np.mean(w * m)], [np.mean(w * m), np.mean(w)]])
            hess += 1e-9 * np.eye(2)
            step = np.linalg.solve(hess, grad)
        else:
            grad = np.array([np.mean(r * m), 0.0])
            step = np.array([grad[0] / (np.mean(w * m * m) + 1e-9), 0.0])
        scale = 1.0
        while scale > 1e-6:
            new_a, new_b = a - scale * step[0], b - scale * step[1]
            if new_a > 0.0:
                new_loss = _nll(new_a * m + new_b, targets)
                if new_loss <= loss:
                    break
            scale /= 2.0
        else:
            break
        converged = loss - new_loss < 1e-12
        a, b, loss = new_a, new_b, new_loss
        if converged:
            break
    return Calibration(method=method, a=float(a), b=float(b) if free_b else 0.0)


def _margins_and_labels(margins: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat float64 margins and int64 labels, one 0/1 label per margin, both classes present."""
    m = np.asarray(margins, dtype=np.float64).reshape(-1)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if m.size != y.size or set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError(
            f"expected one 0/1 label per margin with both classes present, got {m.size} margins "
            f"and labels {sorted(set(np.unique(y).tolist()))}"
        )
    return m, y


def fit_map(
    margins: np.ndarray, labels: np.ndarray, method: str, hard_labels: bool = False
) -> Calibration:
    """One map of `method` (temperature | platt) fitted on these margins: against Platt's
    smoothed targets, or the 0/1 labels themselves with `hard_labels` (which diverges when
    the margins separate the classes perfectly)."""
    m, y = _margins_and_labels(margins, labels)
    targets = y.astype(np.float64) if hard_labels else platt_targets(y)
    return _fit(m, targets, method)


def _cv_nll(margins: np.ndarray, labels: np.ndarray, method: str) -> float:
    """Mean held-out NLL (hard labels) over CV_FOLDS seeded folds."""
    rng = np.random.default_rng(CV_SEED)
    order = rng.permutation(labels.size)
    folds = np.array_split(order, min(CV_FOLDS, labels.size))
    total = 0.0
    for held in folds:
        train = np.setdiff1d(order, held)
        if method == "none":
            z = margins[held]
        else:
            fitted = _fit(margins[train], platt_targets(labels[train]), method)
            z = fitted.margin(margins[held])
        total += _nll(z, labels[held].astype(np.float64)) * held.size
    return total / labels.size


def fit_calibration(margins: np.ndarray, labels: np.ndarray) -> CalibrationFit:
    """Choose temperature or Platt scaling by held-out dev NLL and fit it on all of dev."""
    m, y = _margins_and_labels(margins, labels)
    if not np.all(np.isfinite(m)):
        raise ValueError("expected finite dev margins to fit a calibration on")
    cv = {method: _cv_nll(m, y, method) for method in ("none", "temperature", "platt")}
    chosen = "platt" if cv["platt"] < cv["temperature"] - TIE_NATS else "temperature"
    other = "temperature" if chosen == "platt" else "platt"
    reason = (
        f"{chosen}: held-out dev NLL {cv[chosen]:.4f} nats vs {other} {cv[other]:.4f} and "
        f"uncalibrated {cv['none']:.4f} ({CV_FOLDS}-fold, seed {CV_SEED}"
        + (", tie within 1e-4 keeps the one-parameter map" if chosen == "temperature" else "")
        + ")"
    )
    calibration = _fit(m, platt_targets(y), chosen)
    return CalibrationFit(
        calibration=calibration,
        cv_nll={k: round(v, 6) for k, v in cv.items()},
        reason=reason,
        files=int(m.size),
    )


def ece_pair(
    margins: np.ndarray, labels: np.ndarray, calibration: Calibration
) -> tuple[float, float]:
    """(ECE uncalibrated, ECE calibrated) of file margins."""
    before = expected_calibration_error(p_spoof_from_margin(margins), labels)
    after = expected_calibration_error(
        p_spoof_from_margin(calibrated_margin(margins, calibration)), labels
    )
    return before, after


def manifest_entry(fit: CalibrationFit, dev_source: str) -> dict[str, Any]:
    """The manifest's `calibration` object."""
    c = fit.calibration
    return {
        "method": c.method,
        "a": c.a,
        "b": c.b,
        "applies_to": "the spoof margin, after aggregation (a file) or of one window (a "
        "stream): P(spoof) = sigmoid(a * margin + b)",
        "fitted_on": {"split": "dev", "files": fit.files, "level": "file", "scores": dev_source},
        "selection": {"held_out_dev_nll": fit.cv_nll, "reason": fit.reason},
        "ece_bins": ECE_BINS,
        "ece_before": dict(fit.ece_before),
        "ece_after": dict(fit.ece_after),
    }


def plot_reliability(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], calibration: Calibration, path: Path
) -> Path:
    """Reliability diagrams (one panel per split: before and after calibration) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits), 4.0), squeeze=False)
    for ax, (split, (margins, labels)) in zip(axes[0], splits.items(), strict=True):
        before, after = ece_pair(margins, labels, calibration)
        ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1)
        for name, p, ece, style in (
            ("uncalibrated", p_spoof_from_margin(margins), before, "o--"),
            (c_name(calibration), p_spoof_from_margin(calibration.margin(margins)), after, "s-"),
        ):
            mean_p, frac, _ = reliability_bins(p, labels)
            ax.plot(mean_p, frac, style, markersize=3, label=f"{name} (ECE {ece:.3f})")
        ax.set_title(f"{split}: {len(labels)} files", fontsize=9)
        ax.set_xlabel("mean P(spoof) in bin")
        ax.set_ylabel("fraction spoof in bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"reliability, {ECE_BINS} bins (calibration fitted on dev)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def c_name(calibration: Calibration) -> str:
    if calibration.method == "temperature":
        return f"temperature T={1.0 / calibration.a:.3g}"
    return f"platt a={calibration.a:.3g} b={calibration.b:.3g}"
