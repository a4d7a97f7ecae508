"""EER and friends against cases worked out by hand, and against the ASVspoof reference rule."""

from __future__ import annotations

import numpy as np
import pytest

from train.metrics import (
    MetricsError,
    accuracy_at,
    compute_eer,
    error_rates,
    per_attack_eer,
    pooled_eer,
)


def test_perfect_separation_has_zero_eer_and_full_accuracy() -> None:
    result = compute_eer([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert result.eer == 0.0
    assert result.accuracy == 1.0
    # The threshold found lies between the classes: spoof is >= 0.8, bona fide below it.
    assert 0.2 < result.threshold <= 0.8


def test_reversed_scores_have_full_eer() -> None:
    result = compute_eer([0.9, 0.8, 0.1, 0.2], [0, 0, 1, 1])
    assert result.eer == 1.0
    assert result.accuracy == 0.0


def test_constant_scores_give_half() -> None:
    assert compute_eer([0.5] * 6, [0, 0, 0, 1, 1, 1]).eer == 0.5


def test_exact_crossing_worked_by_hand() -> None:
    # bona fide 0.1 0.2 0.3 0.7 | spoof 0.4 0.6 0.8 0.9.
    # At t = 0.6: bona fide rejected (>= 0.6) = {0.7} -> 1/4; spoof accepted (< 0.6) = {0.4}
    # -> 1/4. Equal, so EER = 25 %; at t = 0.6, 3 + 3 of 8 trials are right: accuracy 75 %.
    scores = [0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    result = compute_eer(scores, labels)
    assert result.eer == pytest.approx(0.25)
    assert result.threshold == pytest.approx(0.6)
    assert result.bonafide_rejection == pytest.approx(0.25)
    assert result.spoof_acceptance == pytest.approx(0.25)
    assert result.accuracy == pytest.approx(0.75)
    assert accuracy_at(scores, labels, 0.6) == pytest.approx(0.75)
    assert (result.num_bonafide, result.num_spoof) == (4, 4)


def test_no_exact_crossing_takes_the_mean_at_the_closest_point() -> None:
    # bona fide 0.1 0.5 0.6 | spoof 0.4 0.7.
    # t:      0.1  0.4  0.5  0.6  0.7  inf
    # reject  3/3  2/3  2/3  1/3  0    0
    # accept  0    0    1/2  1/2  1/2  1
    # |gap| is smallest (1/6) at 0.5 and 0.6; the ASVspoof rule keeps the point calling the
    # fewest trials spoof (t = 0.6): EER = (1/3 + 1/2) / 2 = 5/12.
    result = compute_eer([0.1, 0.5, 0.6, 0.4, 0.7], [0, 0, 0, 1, 1])
    assert result.eer == pytest.approx(5 / 12)
    assert result.threshold == pytest.approx(0.6)
    assert result.accuracy == pytest.approx(3 / 5)  # 0.1 0.5 right, 0.6 wrong; 0.7 right, 0.4 wrong


def test_error_rates_are_monotone_and_span_zero_to_one() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=200)
    labels = rng.integers(0, 2, size=200)
    thresholds, rejection, acceptance = error_rates(scores, labels)
    assert np.all(np.diff(thresholds) > 0)
    assert np.all(np.diff(rejection) <= 0) and np.all(np.diff(acceptance) >= 0)
    assert rejection[0] == 1.0 and acceptance[0] == 0.0
    assert rejection[-1] == 0.0 and acceptance[-1] == 1.0


def _asvspoof_reference_eer(bonafide_scores: np.ndarray, spoof_scores: np.ndarray) -> float:
    """compute_eer of the ASVspoof 2019 evaluation package (eval_metrics.py), transcribed.

    Its scores are bona-fide oriented (higher = more bona fide)."""
    n_scores = bonafide_scores.size + spoof_scores.size
    all_scores = np.concatenate((bonafide_scores, spoof_scores))
    labels = np.concatenate((np.ones(bonafide_scores.size), np.zeros(spoof_scores.size)))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]
    tar_trial_sums = np.cumsum(labels)
    nontarget_trial_sums = spoof_scores.size - (np.arange(1, n_scores + 1) - tar_trial_sums)
    frr = np.concatenate((np.atleast_1d(0), tar_trial_sums / bonafide_scores.size))
    far = np.concatenate((np.atleast_1d(1), nontarget_trial_sums / spoof_scores.size))
    min_index = np.argmin(np.abs(frr - far))
    return float(np.mean((frr[min_index], far[min_index])))


@pytest.mark.parametrize("seed", range(5))
def test_matches_the_asvspoof_reference_on_continuous_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    bonafide = rng.normal(1.0, 1.0, size=int(rng.integers(20, 200)))
    spoof = rng.normal(-0.5, 1.3, size=int(rng.integers(20, 300)))
    # Ours is spoof-oriented: negate the bona-fide-oriented scores.
    scores = np.concatenate([-bonafide, -spoof])
    labels = np.concatenate([np.zeros(bonafide.size), np.ones(spoof.size)])
    assert compute_eer(scores, labels).eer == pytest.approx(
        _asvspoof_reference_eer(bonafide, spoof), abs=1e-12
    )


def test_per_attack_and_pooled_eer() -> None:
    # Bona fide at 0.1 0.2; attack A easy (0.8 0.9), attack B hard (0.15 0.05).
    scores = [0.1, 0.2, 0.8, 0.9, 0.15, 0.05]
    labels = [0, 0, 1, 1, 1, 1]
    attacks = ["bonafide", "bonafide", "A", "A", "B", "B"]
    per = per_attack_eer(scores, labels, attacks)
    assert set(per) == {"A", "B"}
    assert per["A"]["eer"] == 0.0
    # B vs bona fide: 0.05 < 0.1 < 0.15 < 0.2 -> half of each is on the wrong side.
    assert per["B"]["eer"] == pytest.approx(0.5)
    only_a = pooled_eer(scores, labels, attacks, {"A"})
    assert only_a is not None and only_a.eer == 0.0
    assert pooled_eer(scores, labels, attacks, {"Z"}) is None


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2], [0, 0], "need both classes"),
        ([0.1, 0.2], [1, 1], "need both classes"),
        ([0.1, 0.2, 0.3], [0, 1], "one label per score"),
        ([0.1, float("nan")], [0, 1], "not finite"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
    ],
)
def test_bad_input_is_refused_with_the_reason(scores, labels, message: str) -> None:
    with pytest.raises(MetricsError, match=message):
        compute_eer(scores, labels)
