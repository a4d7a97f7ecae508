"""The file-scoring rule: silence handling, mean of logits, and parity with the device's rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.audio import windows_from_file
from device.runtime import aggregate as device_aggregate
from device.scores import FILE_AGGREGATION, p_spoof, select_windows
from train.scoring import (
    AGGREGATION_RULE,
    aggregate,
    asvspoof_score,
    prepare_windows,
    score_file,
    score_files,
    write_asvspoof_scores,
)

RATE = 16000
WINDOW = 4000
HOP = 2000


def energy_predictor(windows: np.ndarray) -> np.ndarray:
    """A stand-in model whose logits are plain functions of the window: (0, mean |diff| * 10)."""
    high = np.mean(np.abs(np.diff(windows, axis=1)), axis=1)
    return np.stack([np.zeros_like(high), 10.0 * high - 1.0], axis=1)


def test_rule_text_is_the_bundle_contract() -> None:
    assert AGGREGATION_RULE == FILE_AGGREGATION


def test_silent_windows_are_dropped_unless_all_are_silent() -> None:
    assert select_windows(np.array([True, False, True, False])).tolist() == [1, 3]
    assert select_windows(np.array([True, True])).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(4))
def test_file_probability_equals_the_device_rule(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(7, 2))
    silent = rng.random(7) < 0.4
    if seed == 3:
        silent[:] = True
    keep = select_windows(silent)
    ours = aggregate(logits[keep], windows_total=7, all_silent=bool(silent.all()))
    theirs, label = device_aggregate(logits, silent, threshold=0.5)
    assert ours.p_spoof == theirs  # one rule (device.scores), so bit for bit
    assert ours.all_silent == (label == "silence")
    np.testing.assert_array_equal(ours.logits, logits[keep].mean(axis=0))


def test_scores_are_consistent_with_each_other() -> None:
    logits = np.array([0.3, 2.3])
    assert p_spoof(logits) == pytest.approx(1 / (1 + np.exp(-2.0)))
    assert asvspoof_score(logits) == pytest.approx(-2.0)  # higher = more bona fide
    # Saturated probabilities keep their order in the margin.
    assert asvspoof_score(np.array([0.0, 80.0])) < asvspoof_score(np.array([0.0, 60.0]))


def _tone_with_silence(path: Path) -> np.ndarray:
    t = np.arange(RATE) / RATE
    signal = np.zeros(2 * RATE, dtype=np.float32)
    signal[RATE:] = 0.3 * np.sin(2 * np.pi * 300 * t)
    sf.write(path, signal, RATE)
    return signal


def test_score_file_keeps_only_the_sounding_windows(tmp_path: Path) -> None:
    _tone_with_silence(tmp_path / "half.flac")
    windows = windows_from_file(tmp_path / "half.flac", WINDOW, HOP)
    prepared = prepare_windows(windows)
    assert prepared.windows_total == windows.normalized.shape[0]
    assert prepared.windows.shape[0] == int((~windows.silent).sum()) < prepared.windows_total

    score = score_file(tmp_path / "half.flac", energy_predictor, WINDOW, HOP)
    expected = energy_predictor(windows.normalized[~windows.silent]).mean(axis=0)
    assert np.allclose(score.logits, expected)
    assert score.windows_used == prepared.windows.shape[0]
    assert not score.all_silent


def test_all_silent_file_is_flagged(tmp_path: Path) -> None:
    sf.write(tmp_path / "quiet.wav", np.full(RATE, 1e-5, dtype=np.float32), RATE)
    score = score_file(tmp_path / "quiet.wav", energy_predictor, WINDOW, HOP)
    assert score.all_silent
    assert score.windows_used == score.windows_total


def test_batched_scoring_equals_one_file_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        path = tmp_path / f"f{i}.flac"
        sf.write(
            path, (0.2 * rng.standard_normal(int(RATE * (0.2 + 0.3 * i)))).astype(np.float32), RATE
        )
        paths.append(path)
    one_by_one = [score_file(p, energy_predictor, WINDOW, HOP) for p in paths]
    batched = score_files(paths, energy_predictor, WINDOW, HOP, batch_windows=3)
    for a, b in zip(one_by_one, batched, strict=True):
        assert np.allclose(a.logits, b.logits, atol=1e-12)
        assert a.windows_used == b.windows_used


def test_predictor_with_the_wrong_output_shape_is_refused(tmp_path: Path) -> None:
    _tone_with_silence(tmp_path / "half.flac")
    with pytest.raises(ValueError, match=r"logits shaped \(\d+,\), expected \(\d+, 2\)"):
        score_file(tmp_path / "half.flac", lambda w: w[:, 0], WINDOW, HOP)


def test_asvspoof_score_file_layout(tmp_path: Path) -> None:
    scores = [
        aggregate(np.array([[2.0, -1.0]]), 1, False),
        aggregate(np.array([[0.0, 1.5]]), 1, False),
    ]
    write_asvspoof_scores(
        tmp_path / "scores.txt",
        ["LA_E_1", "LA_E_2"],
        ["bonafide", "A07"],
        ["bonafide", "spoof"],
        scores,
    )
    assert (tmp_path / "scores.txt").read_text().splitlines() == [
        "LA_E_1 - bonafide 3.000000",
        "LA_E_2 A07 spoof -1.500000",
    ]
