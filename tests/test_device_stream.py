"""Streaming: ring-buffer windows equal file windows; stream scores equal file scores; decisions."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from device.audio import frame, load_audio, window_starts
from device.runtime import Scorer
from device.stream import (
    Chunk,
    Decider,
    DecisionSettings,
    StreamPipeline,
    WindowRing,
    mean_of_scores,
    replay,
)
from tests.device_fixtures import noise, scenario, to_pcm16, tone, write_wav


@pytest.fixture(scope="module")
def int8_scorer(fixture_bundle) -> Scorer:
    return Scorer(fixture_bundle, "int8")


def _chunks(signal: np.ndarray, rng: np.random.Generator, largest: int) -> list[np.ndarray]:
    cuts = []
    position = 0
    while position < len(signal):
        size = int(rng.integers(1, largest + 1))
        cuts.append(signal[position : position + size])
        position += size
    return cuts


@pytest.mark.parametrize("window_hop", [(400, 160), (400, 400), (300, 500)])
@pytest.mark.parametrize("length", [1, 299, 400, 401, 560, 4000, 4321])
def test_ring_windows_equal_file_windows(window_hop: tuple[int, int], length: int) -> None:
    window, hop = window_hop
    rng = np.random.default_rng(length + window)
    signal = rng.standard_normal(length).astype(np.float32)
    ring = WindowRing(window, hop)
    got = []
    for piece in _chunks(signal, rng, largest=3 * window):  # pieces larger than the ring too
        got += ring.push(piece)
    got += ring.finish()
    expected = frame(signal, window, hop)
    starts = window_starts(max(length, window), window, hop)
    assert [w.index for w in got] == list(range(len(expected)))
    assert [w.start_sample for w in got] == starts.tolist()
    np.testing.assert_array_equal(np.stack([w.raw for w in got]), expected)


def test_ring_emits_each_window_as_soon_as_its_last_sample_arrives() -> None:
    ring = WindowRing(4, 2)
    assert ring.push(np.arange(3, dtype=np.float32)) == []
    (first,) = ring.push(np.array([3.0], dtype=np.float32))
    assert first.start_sample == 0 and first.raw.tolist() == [0, 1, 2, 3]
    assert ring.push(np.array([4.0], dtype=np.float32)) == []
    (second,) = ring.push(np.array([5.0], dtype=np.float32))
    assert second.raw.tolist() == [2, 3, 4, 5]
    assert ring.capacity == 8  # bounded: a window plus a hop's worth of room


def test_ring_restart_keeps_windows_off_a_gap() -> None:
    ring = WindowRing(4, 2)
    ring.push(np.ones(5, dtype=np.float32))
    ring.restart()
    windows = ring.push(np.full(4, 2.0, dtype=np.float32))
    assert [w.start_sample for w in windows] == [5]
    assert windows[0].raw.tolist() == [2.0] * 4


def _decide(settings: DecisionSettings, steps: list[tuple[float, bool]]) -> list[str]:
    decider = Decider(settings)
    return [decider.update(p, silent).decision for p, silent in steps]


def test_one_odd_window_does_not_flap_the_alarm() -> None:
    settings = DecisionSettings(threshold=0.5, smoothing_windows=3, margin=0.05)
    steps = [(0.1, False)] * 4 + [(0.99, False)] + [(0.1, False)] * 3
    assert _decide(settings, steps) == ["bonafide"] * 8


def test_hysteresis_enters_above_and_leaves_below_the_band() -> None:
    settings = DecisionSettings(threshold=0.5, smoothing_windows=1, margin=0.1)
    steps = [(p, False) for p in (0.55, 0.65, 0.45, 0.41, 0.39, 0.55, 0.59, 0.6)]
    assert _decide(settings, steps) == [
        "bonafide",  # 0.55 < 0.6: not enough to enter
        "spoof",  # 0.65 >= 0.6
        "spoof",  # 0.45 inside the band: stays
        "spoof",  # 0.41 still >= 0.4
        "bonafide",  # 0.39 < 0.4: leaves
        "bonafide",
        "bonafide",
        "spoof",
    ]


def test_spoof_needs_a_full_history_after_silence() -> None:
    settings = DecisionSettings(threshold=0.5, smoothing_windows=3, margin=0.05, silence_windows=2)
    steps = [(0.9, False)] * 3 + [(0.0, True)] * 2 + [(0.9, False)] * 3
    assert _decide(settings, steps) == [
        "bonafide",
        "bonafide",
        "spoof",  # three windows of evidence
        "spoof",  # one silent window is a pause, not silence
        "silence",
        "bonafide",  # history restarted: one window is not enough evidence
        "bonafide",
        "spoof",
    ]


def test_k_of_n_votes_need_k_windows_above_the_entry_level() -> None:
    # Entry level 0.55. The mean of (0.99, 0.99, 0.3) is 0.76: the mean alone (and 2 of 3)
    # enter on it; 3 of 3 waits for three windows at or above 0.55 in a row.
    steps = [(p, False) for p in (0.99, 0.99, 0.3, 0.99, 0.99, 0.99, 0.3)]
    mean_only = DecisionSettings(threshold=0.5, smoothing_windows=3, margin=0.05)
    two_of_three = DecisionSettings(
        threshold=0.5, smoothing_windows=3, margin=0.05, min_windows_above=2
    )
    three_of_three = DecisionSettings(
        threshold=0.5, smoothing_windows=3, margin=0.05, min_windows_above=3
    )
    assert _decide(mean_only, steps) == ["bonafide"] * 2 + ["spoof"] * 5
    assert _decide(two_of_three, steps) == ["bonafide"] * 2 + ["spoof"] * 5
    # 3 of 3 only once three loud windows are in a row; leaving is unchanged (mean < 0.45).
    assert _decide(three_of_three, steps) == ["bonafide"] * 5 + ["spoof"] * 2


def test_votes_count_windows_at_the_entry_level_not_the_threshold() -> None:
    # 0.52 is above the threshold 0.5 but below the entry level 0.55: it is no vote.
    steps = [(p, False) for p in (0.9, 0.9, 0.52)]
    settings = DecisionSettings(
        threshold=0.5, smoothing_windows=3, margin=0.05, min_windows_above=3
    )
    assert _decide(settings, steps) == ["bonafide"] * 3
    assert _decide(dataclasses.replace(settings, min_windows_above=2), steps)[-1] == "spoof"


def test_replay_applies_the_votes_like_the_decider() -> None:
    rng = np.random.default_rng(7)
    p = rng.random(400).tolist()
    silent = (rng.random(400) < 0.2).tolist()
    settings = DecisionSettings(
        threshold=0.5, smoothing_windows=3, margin=0.05, min_windows_above=3
    )
    replayed = replay(p, silent, settings)
    decider = Decider(settings)
    direct = [decider.update(0.0 if s else x, s).decision for x, s in zip(p, silent, strict=True)]
    assert replayed == direct
    assert "spoof" in replayed  # the rule can fire on this sequence, so the test compares both
    mean_only = replay(p, silent, dataclasses.replace(settings, min_windows_above=0))
    # On this sequence the votes hold back alarms the mean alone raises.
    assert _entries(replayed) < _entries(mean_only)


def _entries(decisions: list[str]) -> int:
    return sum(
        d == "spoof" and b != "spoof"
        for d, b in zip(decisions, ["silence", *decisions[:-1]], strict=True)
    )


def test_the_smoothed_score_is_np_mean_bit_for_bit() -> None:
    """The Decider's mean is numpy's summation order, so a smoothed score (and a decision
    at the threshold) is what np.mean gave: uniform scores, scores spanning 12 decades, and
    float32-rounded ones (what the model gives), for every history length up to 140."""
    rng = np.random.default_rng(0)
    for n in range(1, 141):
        for values in (
            rng.random(n),
            rng.random(n) * 10.0 ** rng.integers(-12, 1, n),
            rng.random(n).astype(np.float32).astype(np.float64),
        ):
            for _ in range(20):
                rng.shuffle(values)
                scores = tuple(float(v) for v in values)
                assert mean_of_scores(scores) == float(np.mean(scores)), (n, scores)
    with pytest.raises(ValueError, match="at least one score"):
        mean_of_scores(())


def test_decision_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="smoothing_windows"):
        DecisionSettings(threshold=0.5, smoothing_windows=0)
    with pytest.raises(ValueError, match="threshold"):
        DecisionSettings(threshold=1.5)
    with pytest.raises(ValueError, match="margin"):
        DecisionSettings(threshold=0.5, margin=0.7)
    with pytest.raises(ValueError, match="min_windows_above: expected 0-3"):
        DecisionSettings(threshold=0.5, smoothing_windows=3, min_windows_above=4)
    with pytest.raises(ValueError, match="min_windows_above"):
        DecisionSettings(threshold=0.5, min_windows_above=-1)


@pytest.mark.parametrize(("rate", "channels"), [(48000, 1), (44100, 2), (16000, 1)])
def test_stream_scores_equal_file_scores(int8_scorer: Scorer, tmp_path, rate, channels) -> None:
    """Chunks of random sizes through the stream path give the file path's window scores."""
    mono = scenario(rate)
    signal = mono if channels == 1 else np.stack([mono, 0.5 * mono[::-1]], axis=1)
    path = write_wav(tmp_path / "scene.wav", signal, rate)
    expected = int8_scorer.score_file(path, window_scores=True)["window_scores"]
    pcm = to_pcm16(signal).astype(np.float32) / 32768.0  # what the WAV holds
    pcm = pcm.reshape(len(mono), channels)

    pipeline = StreamPipeline(int8_scorer, DecisionSettings(threshold=0.5))
    rng = np.random.default_rng(rate)
    results = []
    for piece in _chunks(pcm, rng, largest=rate // 5):
        results += pipeline.feed(Chunk(piece, rate, 0.0))
    results += pipeline.finish()

    assert [round(r.start_s, 6) for r in results] == [w["start_s"] for w in expected]
    assert [r.silent for r in results] == [w["silent"] for w in expected]
    # Stated tolerance 1e-6; the resampler is bit-exact, so the model sees identical windows.
    np.testing.assert_allclose(
        [r.p_spoof for r in results], [w["p_spoof"] for w in expected], rtol=0, atol=1e-6
    )
    assert load_audio(path).size == pipeline.ring.samples_seen


def test_stream_decisions_follow_the_audio(int8_scorer: Scorer) -> None:
    rate = 16000
    audio = np.concatenate(
        [tone(200.0, 1.0, rate, 0.4), noise(1.5, rate, 0.3, seed=1), np.zeros(rate // 2)]
    ).astype(np.float32)
    pipeline = StreamPipeline(int8_scorer, DecisionSettings(threshold=0.5, smoothing_windows=3))
    results = pipeline.feed(Chunk(audio[:, None], rate, 0.0)) + pipeline.finish()
    changes = [(r.decision, round(r.start_s, 3)) for r in results if r.changed]
    assert [d for d, _ in changes] == ["bonafide", "spoof", "silence"]
    assert all(r.inference_ms > 0 for r in results)


def test_a_discontinuity_closes_the_segment(int8_scorer: Scorer) -> None:
    rate = 16000
    pipeline = StreamPipeline(int8_scorer, DecisionSettings(threshold=0.5))
    first = pipeline.feed(Chunk(tone(200.0, 0.3, rate)[:, None], rate, 1.0))
    assert [r.start_s for r in first] == [0.0]  # one full window so far
    resumed = pipeline.feed(Chunk(tone(200.0, 0.3, rate)[:, None], rate, 2.0, discontinuity=True))
    starts = [round(r.start_s, 4) for r in resumed]
    # The first segment's end-aligned tail (0.05 s), then windows from the gap on (0.3 s).
    assert starts == [0.05, 0.3]
    assert pipeline.discontinuities == 1
    # A change of rate (a device reopened at another rate) also starts a new segment.
    pipeline.feed(Chunk(tone(200.0, 0.3, 48000)[:, None], 48000, 3.0))
    assert pipeline.discontinuities == 2
