"""The stream operating curve: replayed window scores equal the real streaming path exactly,
and `python -m benchmarks.stream` runs end to end on a real bundle and dataset layout."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.stream import (
    DEFAULT_SEED,
    ScoredFile,
    false_alarm_sources,
    main,
    plan_stream,
    replay_decisions,
    score_file_windows,
    stream_windows,
)
from device.audio import SAMPLE_RATE, load_audio
from device.bundle import load_bundle
from device.config import DecisionSettings
from device.runtime import Scorer
from device.stream import Chunk, StreamPipeline
from tests.device_fixtures import noise, tone, write_wav


def _files(tmp_path: Path, scorer: Scorer) -> list[ScoredFile]:
    rate = 16000
    bona = [
        write_wav(tmp_path / f"b{i}.wav", tone(200 + 60 * i, 0.6 + 0.55 * i, rate, 0.4), rate)
        for i in range(4)
    ]
    spoof = [
        write_wav(tmp_path / f"s{i}.wav", noise(0.9 + 0.4 * i, rate, 0.25, seed=i), rate)
        for i in range(2)
    ]
    return [score_file_windows(scorer, p, "bonafide") for p in bona] + [
        score_file_windows(scorer, p, "spoof") for p in spoof
    ]


@pytest.mark.parametrize("min_windows_above", [0, 2])
def test_replay_equals_the_streaming_path_exactly(
    fixture_bundle: Path, tmp_path: Path, min_windows_above: int
) -> None:
    scorer = Scorer(fixture_bundle, "int8")
    files = _files(tmp_path, scorer)
    plan = plan_stream(files, hours=25 / 3600, spoofs_per_hour=3600 / 6, seed=DEFAULT_SEED)
    assert plan.spoofs >= 2 and any(s.kind == "pause" for s in plan.segments)
    windows = stream_windows(plan, files, scorer.window_samples, scorer.hop_samples)
    settings = DecisionSettings(
        threshold=0.5, smoothing_windows=2, margin=0.05, min_windows_above=min_windows_above
    )
    replayed = replay_decisions(windows, settings)

    # The real path: every segment's audio, in uneven chunks, a segment break at each edge.
    pipeline = StreamPipeline(scorer, settings)
    results = []
    for k, segment in enumerate(plan.segments):
        if segment.kind == "file":
            audio = load_audio(files[segment.file_index].path)
        else:
            audio = np.zeros(segment.num_samples, dtype=np.float32)
        for i, start in enumerate(range(0, audio.size, 1234)):
            piece = audio[start : start + 1234, None]
            results += pipeline.feed(Chunk(piece, SAMPLE_RATE, 0.0, k > 0 and i == 0))
    results += pipeline.finish()

    assert [r.decision for r in results] == replayed
    assert "spoof" in replayed and "bonafide" in replayed and "silence" in replayed
    np.testing.assert_array_equal([r.silent for r in results], windows.silent)
    loud = ~windows.silent
    np.testing.assert_array_equal(
        np.array([r.p_spoof for r in results])[loud], windows.p_spoof[loud]
    )
    window_s = scorer.window_samples / SAMPLE_RATE
    np.testing.assert_allclose(
        [r.start_s + window_s for r in results], windows.end_s, rtol=0, atol=1e-9
    )


def _file(name: str, label: str, p: list[float], speaker: str) -> ScoredFile:
    n = len(p)
    return ScoredFile(
        name,
        label,
        16000 + (n - 1) * 8000,  # n windows of 1 s at a 0.5 s hop
        np.array(p, dtype=np.float64),
        np.zeros(n, dtype=bool),
        np.arange(n, dtype=np.int64) * 8000,
        np.linspace(-30.0, -20.0, n),
        speaker,
    )


def test_false_alarm_sources_name_the_voice_the_window_and_its_level() -> None:
    files = [
        _file("a", "bonafide", [0.1, 0.9, 0.9, 0.9, 0.1], "voice-x"),  # alarms at window 2
        _file("b", "bonafide", [0.1] * 5, "voice-y"),
        _file("c", "spoof", [0.99] * 4, "tts"),
    ]
    # Pauses of 2-3 s: every pause is >= 2 silent windows, so each file starts afresh.
    plan = plan_stream(files, hours=60 / 3600, spoofs_per_hour=3600 / 10, seed=3, pause_s=(2, 3))
    windows = stream_windows(plan, files, 16000, 8000)
    settings = DecisionSettings(threshold=0.5, smoothing_windows=3, margin=0.05)
    sources = false_alarm_sources(plan, windows, files, settings)
    plays_a = sum(s.kind == "file" and s.file_index == 0 for s in plan.segments)
    plays_b = sum(s.kind == "file" and s.file_index == 1 for s in plan.segments)
    assert plays_a >= 2 and plays_b >= 2 and plan.spoofs >= 1
    assert sources["false_alarms"] == plays_a  # the spoofs' alarms are not false alarms
    assert sources["in_pauses"] == 0
    assert sources["by_speaker"]["voice-x"]["alarms"] == plays_a
    assert sources["by_speaker"]["voice-y"]["alarms"] == 0
    assert sources["entry_window_index_in_file"] == {"2": plays_a}
    assert sources["unique_bonafide_files_alarming"] == 1
    assert sources["unique_bonafide_files"] == 2
    assert sources["entry_window_rms_dbfs_quantiles"]["0.5"] == pytest.approx(-25.0)
    assert sources["bonafide_windows_at_entry_level"] == pytest.approx(3 / 10)
    hours_x = sources["by_speaker"]["voice-x"]["hours"]
    assert hours_x == pytest.approx(plays_a * files[0].duration_s / 3600, abs=1e-4)


def test_stream_benchmark_writes_curves_and_operating_points(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    from tests.convert_fixtures import write_easy_corpus

    corpus = write_easy_corpus(
        tmp_path / "corpus", sizes={"train": (1, 1), "dev": (1, 1), "eval": (8, 2)}
    )
    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest.setdefault("data", {})["trained_on"] = {"format": "asvspoof2019", "root": "/nowhere"}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "results"
    args = [
        "--bundle",
        str(bundle),
        "--out",
        str(out),
        "--hours",
        "0.05",
        "--spoofs-per-hour",
        "200",
    ]
    assert main([*args, "--data", str(corpus), "--write-manifest"]) == 0
    report = json.loads((out / "stream-bundle.json").read_text())
    assert report["stream"]["hours_bonafide"] >= 0.05 and report["stream"]["spoofs"] >= 1
    rules = {(r["smoothing_windows"], r["min_windows_above"]) for r in report["rows"]}
    assert rules == {(1, 0), (3, 0), (5, 0), (9, 0), (2, 2), (3, 2), (3, 3)}
    for row in report["rows"]:
        assert row["false_alarms"] >= 0 and 0.0 <= row["miss_rate"] <= 1.0
        assert 0.0 <= row["detected_within_target"] <= 1.0 - row["miss_rate"] + 1e-12
    best = report["best_per_rule"]["rows"]
    assert best, "the easy corpus's spoofs are detected within 2 s by some rule"
    for row in best:
        assert row["ttd_median_s"] <= 2.0
        same_rule = [
            r
            for r in report["rows"]
            if (r["smoothing_windows"], r["min_windows_above"])
            == (row["smoothing_windows"], row["min_windows_above"])
            and r["ttd_median_s"] is not None
            and r["ttd_median_s"] <= 2.0
        ]
        assert row["fa_per_hour"] == min(r["fa_per_hour"] for r in same_rule)
    points = report["operating_points"]
    assert "eer_dev" in points
    sources = report["false_alarm_sources"]
    assert sources["false_alarms"] == points["eer_dev"]["false_alarms"]
    assert all(name.startswith("LA_E") for name in sources["by_speaker"])  # the voices
    hours = sum(r["hours"] for r in sources["by_speaker"].values())
    assert hours == pytest.approx(report["stream"]["hours_bonafide"], abs=1e-3)
    assert all((p["smoothing_windows"], p["min_windows_above"]) == (3, 0) for p in points.values())
    loaded = load_bundle(bundle)  # the new files are listed with their sha256
    assert loaded.manifest.operating_points["points"].keys() == points.keys()
    for name in ("stream.json", "plots/stream_miss.png", "plots/stream_ttd.png"):
        assert name in loaded.manifest.files
    assert not any(m.startswith("operating_points") for m in loaded.manifest.missing)
    # Without --data, the manifest's root is used (and here it does not exist).
    assert main([*args, "--out", str(tmp_path / "r2")]) == 2
