"""Detection metrics: equal error rate, its threshold, accuracy there, DET curve.

Internal convention (as in the model bundle): a score is P(spoof) or anything that grows
with it, and a trial is called spoof when ``score >= threshold``. Labels: 0 = bona fide,
1 = spoof. ASVspoof score files flip the sign (higher = more bona fide); see
``train.scoring.asvspoof_score``.

Error rates at a threshold t:

- bona fide rejection rate (miss):  bona fide trials with score >= t, over all bona fide
- spoof acceptance rate (false alarm): spoof trials with score < t, over all spoof

The EER is taken where the two are closest among all distinct thresholds, and reported as
their mean there: the rule of the ASVspoof evaluation package (``compute_eer`` in its
``eval_metrics.py``), including its tie-break (of equally close points, the one that calls
the fewest trials spoof), so figures compare with published ones. With continuous scores
it equals that package's value exactly (a test holds it to a transcription of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


class MetricsError(ValueError):
    """Scores and labels that cannot give the requested metric (e.g. one class only)."""


@dataclass(frozen=True)
class EER:
    eer: float
    threshold: float
    accuracy: float  # at the threshold
    bonafide_rejection: float  # at the threshold
    spoof_acceptance: float  # at the threshold
    num_bonafide: int
    num_spoof: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "eer": self.eer,
            "threshold": self.threshold,
            "accuracy": self.accuracy,
            "bonafide_rejection": self.bonafide_rejection,
            "spoof_acceptance": self.spoof_acceptance,
            "num_bonafide": self.num_bonafide,
            "num_spoof": self.num_spoof,
        }


def _as_arrays(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray):
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise MetricsError(
            f"expected one label per score, got {scores.size} scores and {labels.size} labels"
        )
    if not np.isfinite(scores).all():
        raise MetricsError(f"{int((~np.isfinite(scores)).sum())} scores are not finite")
    bad = set(np.unique(labels).tolist()) - {0, 1}
    if bad:
        raise MetricsError(f"labels must be 0 (bona fide) or 1 (spoof), got {sorted(bad)}")
    return scores, labels.astype(np.int64)


def error_rates(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, bonafide_rejection, spoof_acceptance) at every distinct threshold.

    Thresholds are the distinct scores in increasing order plus +inf (everything called
    bona fide), so rejection falls from 1 towards 0 and acceptance rises from 0 to 1.
    """
    scores, labels = _as_arrays(scores, labels)
    bonafide = np.sort(scores[labels == 0])
    spoof = np.sort(scores[labels == 1])
    if bonafide.size == 0 or spoof.size == 0:
        raise MetricsError(
            f"need both classes for an error rate, got {bonafide.size} bona fide and "
            f"{spoof.size} spoof trials"
        )
    thresholds = np.append(np.unique(scores), np.inf)
    # Count of each class strictly below each threshold.
    bonafide_below = np.searchsorted(bonafide, thresholds, side="left")
    spoof_below = np.searchsorted(spoof, thresholds, side="left")
    rejection = 1.0 - bonafide_below / bonafide.size
    acceptance = spoof_below / spoof.size
    return thresholds, rejection, acceptance


def compute_eer(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> EER:
    """Equal error rate of spoof-oriented scores (higher = more spoof)."""
    scores_arr, labels_arr = _as_arrays(scores, labels)
    thresholds, rejection, acceptance = error_rates(scores_arr, labels_arr)
    gaps = np.abs(rejection - acceptance)
    index = int(np.flatnonzero(gaps == gaps.min())[-1])
    threshold = float(thresholds[index])
    predicted_spoof = scores_arr >= threshold
    accuracy = float(np.mean(predicted_spoof == (labels_arr == 1)))
    return EER(
        eer=float((rejection[index] + acceptance[index]) / 2.0),
        threshold=threshold,
        accuracy=accuracy,
        bonafide_rejection=float(rejection[index]),
        spoof_acceptance=float(acceptance[index]),
        num_bonafide=int(np.sum(labels_arr == 0)),
        num_spoof=int(np.sum(labels_arr == 1)),
    )


def accuracy_at(
    scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray, threshold: float
) -> float:
    """Fraction of trials classified correctly when spoof means score >= threshold."""
    scores_arr, labels_arr = _as_arrays(scores, labels)
    if scores_arr.size == 0:
        raise MetricsError("no trials to score")
    return float(np.mean((scores_arr >= threshold) == (labels_arr == 1)))


def per_attack_eer(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    attacks: Sequence[str],
    bonafide_attack: str = "bonafide",
) -> dict[str, dict[str, float | int]]:
    """EER of all bona fide trials against each attack's spoof trials, by attack id."""
    scores_arr, labels_arr = _as_arrays(scores, labels)
    attacks_arr = np.asarray(list(attacks), dtype=object)
    if attacks_arr.size != scores_arr.size:
        raise MetricsError(
            f"expected one attack id per score, got {attacks_arr.size} for {scores_arr.size}"
        )
    bonafide = labels_arr == 0
    out: dict[str, dict[str, float | int]] = {}
    for attack in sorted({str(a) for a in attacks_arr[labels_arr == 1]}):
        if attack == bonafide_attack:
            continue
        chosen = bonafide | ((attacks_arr == attack) & (labels_arr == 1))
        if not bonafide.any():
            continue
        out[attack] = compute_eer(scores_arr[chosen], labels_arr[chosen]).to_dict()
    return out


def pooled_eer(
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    attacks: Sequence[str],
    chosen_attacks: set[str],
) -> EER | None:
    """EER of all bona fide trials against the spoof trials of `chosen_attacks` together."""
    scores_arr, labels_arr = _as_arrays(scores, labels)
    attacks_arr = np.asarray(list(attacks), dtype=object)
    keep = (labels_arr == 0) | np.isin(attacks_arr, sorted(chosen_attacks))
    if not np.any(keep & (labels_arr == 1)) or not np.any(keep & (labels_arr == 0)):
        return None
    return compute_eer(scores_arr[keep], labels_arr[keep])
