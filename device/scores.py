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

Calibration (issue 13) is not part of the contract yet: P(spoof) is the uncalibrated
softmax. A calibration map belongs here, applied to the file margin before step 3, so that
every runtime and the manifest's threshold pick it up together.

numpy only: this module runs on the Pi.
"""

from __future__ import annotations

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


def p_spoof(logits: np.ndarray) -> np.ndarray:
    """P(spoof) of (..., 2) logits, float64, shaped logits.shape[:-1] (a 0-d array for one pair)."""
    return p_spoof_from_margin(spoof_margin(logits))


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
