"""The score contract: how logits become a file's P(spoof), in one place.

Every runtime (PyTorch in train/, ONNX Runtime and TFLite in convert/ and benchmarks/,
LiteRT on the device) hands its logits to these functions; nothing else computes a
probability, a margin or a file score.

1. Logits are ``(bonafide, spoof)`` pairs, in the order of `LABELS`.
2. The spoof margin is ``logit_spoof - logit_bonafide``. It ranks files exactly like
   P(spoof) and keeps its precision where P(spoof) saturates at 0 or 1, so EERs and
   thresholds are computed on margins.
3. P(spoof) = softmax(logits)[spoof] = sigmoid(margin), computed stably in float64
   (no overflow for any finite margin).
4. Window selection: a file's score uses its non-silent windows (raw RMS at or above the
   bundle's silence floor); when every window is silent it uses all of them and the
   device reports the file as silence.
5. File aggregation: the mean of the selected windows' logits (float64), then step 3.
6. Calibration (the manifest's optional `calibration`, fitted on the dev split at convert
   time): a monotone affine map of the margin, ``a * margin + b`` with ``a > 0``, applied
   after aggregation and before the sigmoid of step 3, the same way to a file's margin and
   to a stream window's margin. Without one (older bundles) a = 1, b = 0: the softmax.
   Being monotone, it changes no ranking, EER or decision at a threshold mapped with it
   (`calibrate_threshold`); parity between formats is untouched.

numpy only: this module runs on the Pi.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LABELS = ("bonafide", "spoof")
"""Logit order of every model output."""

SCORE_DEFINITION = "P(spoof) = softmax(logits)[1], in [0, 1]; higher = more likely spoofed"
"""The manifest's score.definition text (what `p_spoof` computes)."""

FILE_AGGREGATION = (
    "mean of the logits of the file's non-silent windows (all windows if every one is "
    "silent), then softmax; a file whose every window is silent is reported as silence"
)
"""The manifest's score.file_aggregation text (what `select_windows` + `file_logits` do)."""

CALIBRATED_SCORE_DEFINITION = (
    "P(spoof) = sigmoid(a * (logit_spoof - logit_bonafide) + b) with the manifest's "
    "calibration (a, b); in [0, 1]; higher = more likely spoofed"
)
"""The manifest's score.definition text for a bundle that carries a calibration."""

CALIBRATION_METHODS = ("platt", "temperature")
"""platt: a and b fitted; temperature: a = 1 / T fitted, b = 0."""


@dataclass(frozen=True)
class Calibration:
    """P(spoof) = sigmoid(a * margin + b): the monotone map fitted on the dev split."""

    method: str  # one of CALIBRATION_METHODS
    a: float  # slope on the spoof margin (1 / temperature), > 0
    b: float  # offset, 0 for temperature scaling

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration.method: expected one of {list(CALIBRATION_METHODS)}, got "
                f"{self.method!r}"
            )
        if not (math.isfinite(self.a) and self.a > 0.0):
            raise ValueError(
                f"calibration.a: expected a finite slope > 0 (a monotone increasing map), got "
                f"{self.a}"
            )
        if not math.isfinite(self.b) or (self.method == "temperature" and self.b != 0.0):
            raise ValueError(
                f"calibration.b: expected a finite offset (0 for temperature), got {self.b} "
                f"with method {self.method!r}"
            )

    def margin(self, margin: np.ndarray | float) -> np.ndarray:
        """The calibrated margin a * margin + b, float64."""
        return self.a * np.asarray(margin, dtype=np.float64) + self.b


def spoof_margin(logits: np.ndarray) -> np.ndarray:
    """logit_spoof - logit_bonafide of (..., 2) logits, float64, shaped logits.shape[:-1]."""
    logits = _pairs(logits)
    return logits[..., 1] - logits[..., 0]


def p_spoof_from_margin(margin: np.ndarray | float) -> np.ndarray:
    """sigmoid(margin) in float64, without overflow: the P(spoof) of a spoof margin.

    For margin >= 0: 1 / (1 + exp(-margin)); below: exp(margin) / (1 + exp(margin)). This is
    bit for bit what a max-shifted softmax over (bonafide, spoof) gives; +inf -> 1, -inf -> 0.
    """
    m = np.asarray(margin, dtype=np.float64)
    e = np.exp(-np.abs(m))
    return np.where(m >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def calibrated_margin(
    margin: np.ndarray | float, calibration: Calibration | None = None
) -> np.ndarray:
    """The margin after the bundle's calibration (unchanged, as float64, without one)."""
    if calibration is None:
        return np.asarray(margin, dtype=np.float64)
    return calibration.margin(margin)


def p_spoof(logits: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
    """P(spoof) of (..., 2) logits, float64, shaped logits.shape[:-1] (a 0-d array for one pair).

    With `calibration`: sigmoid(a * margin + b); without: the softmax (step 3).
    """
    return p_spoof_from_margin(calibrated_margin(spoof_margin(logits), calibration))


def margin_from_p_spoof(p: float) -> float:
    """The margin whose sigmoid is `p` (log(p / (1 - p))); +-inf at 1 and 0."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a P(spoof) in [0, 1], got {p}")
    if p == 0.0:
        return -math.inf
    if p == 1.0:
        return math.inf
    return math.log(p) - math.log1p(-p)


def calibrate_threshold(raw_margin: float, calibration: Calibration | None) -> float:
    """The P(spoof) threshold that makes the decisions `margin >= raw_margin` makes."""
    return float(p_spoof_from_margin(calibrated_margin(raw_margin, calibration)))


def select_windows(silent: np.ndarray) -> np.ndarray:
    """Indices of the windows a file's score uses: the non-silent ones, all if every one is."""
    silent = np.asarray(silent, dtype=bool).reshape(-1)
    keep = np.flatnonzero(~silent)
    return keep if keep.size else np.arange(silent.size, dtype=np.int64)


def file_logits(window_logits: np.ndarray) -> np.ndarray:
    """The file's (2,) logits: the float64 mean of its selected windows' (n >= 1, 2) logits."""
    window_logits = np.asarray(window_logits, dtype=np.float64)
    if window_logits.ndim != 2 or window_logits.shape[1] != len(LABELS) or not len(window_logits):
        raise ValueError(
            f"expected window logits shaped (n >= 1, {len(LABELS)}), got "
            f"{tuple(window_logits.shape)}"
        )
    return window_logits.mean(axis=0)


def _pairs(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim == 0 or logits.shape[-1] != len(LABELS):
        raise ValueError(
            f"expected logits whose last axis holds {len(LABELS)} values {list(LABELS)}, got "
            f"shape {tuple(logits.shape)}"
        )
    return logits
