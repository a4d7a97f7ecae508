"""Shortcut-cue check: can one simple per-file feature tell bona fide from spoof?

For every file (decoded by the shared front end, `device.audio.load_audio`) a handful
of features a lazy detector could latch on to: duration, level, peak, crest factor,
DC, leading/trailing silence, spectral centroid, bandwidth, roll-off, band edge,
high-band energy ratio (above 4 kHz, and above 7 kHz where G.722 and LPCNet stop), flatness and zero-crossing rate. Each feature alone is used
as a detector score (in whichever direction works better) and its equal error rate
is computed for bona fide against all spoofs and against each system. A feature with
an EER well below 50% is a cue the generator leaks; the corpus is tuned so that none
falls below `DEFAULT_MIN_CUE_EER`.

A logistic regression on all the features together, trained on train and scored on
eval, tells whether the cues combined give the classes away.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view

from device.audio import SAMPLE_RATE, load_audio

DEFAULT_MIN_CUE_EER = 0.20
"""A single feature separating the classes better than this (EER below it) is a leak."""

FEATURES = (
    "duration_s",
    "rms_dbfs",
    "peak_dbfs",
    "crest_db",
    "dc",
    "leading_silence_s",
    "trailing_silence_s",
    "centroid_hz",
    "bandwidth_hz",
    "rolloff95_hz",
    "band_edge_hz",
    "high_band_ratio_db",
    "band_7k_ratio_db",
    "flatness_db",
    "zero_crossing_rate",
)

_FRAME_SAMPLES = 160  # 10 ms at 16 kHz
_SILENCE_BELOW_MAX_DB = 35.0
_HIGH_BAND_HZ = 4000.0
_TOP_BAND_HZ = 7000.0  # G.722 and LPCNet stop near here, 16 kHz PCM does not
_BAND_EDGE_BELOW_MAX_DB = 50.0


_WELCH_SAMPLES = 512


def _average_spectrum(signal: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch power spectrum (Hann, 50% overlap, per-segment mean removed), unscaled."""
    if signal.size < _WELCH_SAMPLES:
        signal = np.pad(signal, (0, _WELCH_SAMPLES - signal.size))
    segments = sliding_window_view(signal, _WELCH_SAMPLES)[:: _WELCH_SAMPLES // 2]
    segments = segments - segments.mean(axis=1, keepdims=True)
    spectrum = scipy.fft.rfft(segments * np.hanning(_WELCH_SAMPLES), axis=1)
    psd = np.mean(np.abs(spectrum) ** 2, axis=0)
    return np.fft.rfftfreq(_WELCH_SAMPLES, 1.0 / sample_rate), psd


def file_features(path: str) -> dict[str, float]:
    """The cue features of one audio file (decoded and resampled by the front end)."""
    signal = load_audio(path).astype(np.float64)
    return signal_features(signal, SAMPLE_RATE)


def signal_features(signal: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """The cue features of a mono signal."""
    if signal.size < 2 * _FRAME_SAMPLES:
        raise ValueError(
            f"expected at least {2 * _FRAME_SAMPLES} samples for cue features, got {signal.size}"
        )
    dc = float(np.mean(signal))
    centred = signal - dc
    rms = float(np.sqrt(np.mean(centred**2))) + 1e-12
    peak = float(np.max(np.abs(centred))) + 1e-12

    usable = centred[: centred.size - centred.size % _FRAME_SAMPLES].reshape(-1, _FRAME_SAMPLES)
    frame_db = 10.0 * np.log10(np.mean(usable**2, axis=1) + 1e-20)
    loud = np.flatnonzero(frame_db > frame_db.max() - _SILENCE_BELOW_MAX_DB)
    frame_s = _FRAME_SAMPLES / sample_rate
    leading = loud[0] * frame_s
    trailing = (usable.shape[0] - 1 - loud[-1]) * frame_s

    freqs, psd = _average_spectrum(centred, sample_rate)
    power = psd / (psd.sum() + 1e-30)
    centroid = float(np.sum(freqs * power))
    bandwidth = float(np.sqrt(np.sum((freqs - centroid) ** 2 * power)))
    cumulative = np.cumsum(power)
    rolloff = float(freqs[np.searchsorted(cumulative, 0.95)])
    psd_db = 10.0 * np.log10(psd + 1e-30)
    above = np.flatnonzero(psd_db > psd_db.max() - _BAND_EDGE_BELOW_MAX_DB)
    band_edge = float(freqs[above[-1]])
    high = float(np.sum(power[freqs >= _HIGH_BAND_HZ]))
    top = float(np.sum(power[freqs >= _TOP_BAND_HZ]))
    flatness = float(np.mean(np.log(psd + 1e-30)) - np.log(np.mean(psd) + 1e-30))
    zero_crossings = float(np.mean(np.abs(np.diff(np.signbit(centred).astype(np.int8)))))
    return {
        "duration_s": signal.size / sample_rate,
        "rms_dbfs": 20.0 * np.log10(rms),
        "peak_dbfs": 20.0 * np.log10(peak),
        "crest_db": 20.0 * np.log10(peak / rms),
        "dc": dc,
        "leading_silence_s": float(leading),
        "trailing_silence_s": float(trailing),
        "centroid_hz": centroid,
        "bandwidth_hz": bandwidth,
        "rolloff95_hz": rolloff,
        "band_edge_hz": band_edge,
        "high_band_ratio_db": 10.0 * np.log10(high + 1e-12),
        "band_7k_ratio_db": 10.0 * np.log10(top + 1e-12),
        "flatness_db": 10.0 * flatness / np.log(10.0),
        "zero_crossing_rate": zero_crossings,
    }


def equal_error_rate(bonafide_scores: np.ndarray, spoof_scores: np.ndarray) -> float:
    """EER of a detector whose score is higher for spoof (ties broken evenly)."""
    bonafide_scores = np.asarray(bonafide_scores, dtype=np.float64)
    spoof_scores = np.asarray(spoof_scores, dtype=np.float64)
    if bonafide_scores.size == 0 or spoof_scores.size == 0:
        raise ValueError(
            f"EER needs both classes; got {bonafide_scores.size} bona fide and "
            f"{spoof_scores.size} spoof scores"
        )
    thresholds = np.unique(np.concatenate([bonafide_scores, spoof_scores]))
    bona_sorted = np.sort(bonafide_scores)
    spoof_sorted = np.sort(spoof_scores)
    # decision "spoof" when score >= threshold
    false_alarm = 1.0 - np.searchsorted(bona_sorted, thresholds, side="left") / bona_sorted.size
    miss = np.searchsorted(spoof_sorted, thresholds, side="left") / spoof_sorted.size
    false_alarm = np.concatenate([[1.0], false_alarm, [0.0]])
    miss = np.concatenate([[0.0], miss, [1.0]])
    index = int(np.argmin(np.abs(false_alarm - miss)))
    # interpolate between the two operating points around the crossing
    if false_alarm[index] >= miss[index] and index + 1 < false_alarm.size:
        a, b = index, index + 1
    else:
        a, b = max(index - 1, 0), index
    d_a = false_alarm[a] - miss[a]
    d_b = false_alarm[b] - miss[b]
    if d_a == d_b:
        return float((false_alarm[index] + miss[index]) / 2.0)
    t = d_a / (d_a - d_b)
    return float(false_alarm[a] + t * (false_alarm[b] - false_alarm[a]))


def single_feature_eer(bonafide: np.ndarray, spoof: np.ndarray) -> tuple[float, str]:
    """EER of one feature as a detector, in the better direction: (eer, 'higher'|'lower')."""
    higher = equal_error_rate(bonafide, spoof)
    lower = equal_error_rate(-bonafide, -spoof)
    return (higher, "higher") if higher <= lower else (lower, "lower")


@dataclass(frozen=True)
class CueRow:
    """Single-feature EERs of one feature: against all spoofs and against each system."""

    feature: str
    overall_eer: float
    direction: str  # "higher" or "lower": which side spoofs are on
    per_system_eer: dict[str, float]
    bonafide_mean: float
    spoof_mean: float

    @property
    def worst_eer(self) -> float:
        return min([self.overall_eer, *self.per_system_eer.values()])


def cue_table(features: np.ndarray, labels: Sequence[str], systems: Sequence[str]) -> list[CueRow]:
    """One row per feature. `features` is (files, len(FEATURES)); labels bonafide|spoof."""
    labels_array = np.asarray(labels)
    systems_array = np.asarray(systems)
    bona = labels_array == "bonafide"
    rows = []
    system_ids = sorted({s for s, is_bona in zip(systems, bona, strict=True) if not is_bona})
    for column, name in enumerate(FEATURES):
        values = features[:, column]
        overall, direction = single_feature_eer(values[bona], values[~bona])
        per_system = {
            system: single_feature_eer(values[bona], values[systems_array == system])[0]
            for system in system_ids
        }
        rows.append(
            CueRow(
                feature=name,
                overall_eer=overall,
                direction=direction,
                per_system_eer=per_system,
                bonafide_mean=float(np.mean(values[bona])),
                spoof_mean=float(np.mean(values[~bona])),
            )
        )
    return rows


def logistic_regression_probe(
    train_features: np.ndarray,
    train_is_spoof: np.ndarray,
    test_features: np.ndarray,
    l2: float = 1e-2,
    iterations: int = 50,
) -> np.ndarray:
    """Spoof scores for `test_features` from an L2-regularised logistic regression (Newton).

    Features are standardized on the training set. Enough for a 'can the simple cues
    together separate the classes' check; not a detector.
    """
    mean = train_features.mean(axis=0)
    std = train_features.std(axis=0) + 1e-12
    x = np.hstack([(train_features - mean) / std, np.ones((train_features.shape[0], 1))])
    y = train_is_spoof.astype(np.float64)
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) / y.size + penalty @ w
        hessian = (x.T * (p * (1 - p))) @ x / y.size + penalty
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    test = np.hstack([(test_features - mean) / std, np.ones((test_features.shape[0], 1))])
    return test @ w


def format_cue_table(rows: list[CueRow], min_eer: float = DEFAULT_MIN_CUE_EER) -> str:
    """A fixed-width text table of the single-feature EERs (percent)."""
    systems = list(rows[0].per_system_eer) if rows else []
    header = f"{'feature':<20} {'bona mean':>11} {'spoof mean':>11} {'all':>6} " + " ".join(
        f"{s:>6}" for s in systems
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        flag = "  <- cue" if row.worst_eer < min_eer else ""
        lines.append(
            f"{row.feature:<20} {row.bonafide_mean:>11.4g} {row.spoof_mean:>11.4g} "
            f"{100 * row.overall_eer:>5.1f}% "
            + " ".join(f"{100 * row.per_system_eer[s]:>5.1f}%" for s in systems)
            + flag
        )
    return "\n".join(lines)
