"""`clad-agent calibrate` from a file, stdin and the ALSA file-backed mic; `listen` reports
which threshold is in force. Real bundle, real LiteRT, real sources (device.sources)."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from device.bundle import load_bundle
from device.calibrate import write_device_calibration
from device.config import DeviceCalibrationSettings, load_settings
from tests.device_fixtures import (
    noise,
    run_device,
    silence,
    tone,
    write_alsa_file_mic,
    write_raw,
    write_wav,
)


def room(rate: int) -> np.ndarray:
    """A room's genuine sound: a voice-like tone with a little noise, louder noise at times
    (which the fixture model scores near or above 0.5), and pauses."""
    parts = []
    for i in range(4):
        parts += [
            tone(220, 3.0, rate, 0.4) + noise(3.0, rate, 0.1, seed=i),
            tone(220, 1.0, rate, 0.4) + noise(1.0, rate, 0.3, seed=10 + i),
            silence(0.5, rate),
        ]
    return np.concatenate(parts).astype(np.float32)


def _check(out, config: Path, bundle: Path) -> float:
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    text = out.stdout.decode()
    chosen = tomllib.loads(config.read_text())["device_calibration"]
    assert chosen["threshold"] >= 0.5 and chosen["false_alarms_per_hour"] == 0.0
    assert f"chose threshold {chosen['threshold']:.4f}: 0 false alarm(s)" in text
    assert chosen["audio_s"] == pytest.approx(18.0, abs=0.01)
    manifest = load_bundle(bundle).manifest
    assert chosen["model_sha256"] == manifest.files["model_int8.tflite"].sha256
    assert "[model]" in config.read_text()  # the rest of the file is kept
    assert load_settings(config).device_calibration.threshold == chosen["threshold"]
    return chosen["threshold"]


def _config(tmp_path: Path, bundle: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "agent.toml"
    config.write_text(f'# my agent\n[model]\nbundle = "{bundle}"\n\n[decision]\nmargin = 0.05\n')
    return config


def test_calibrate_from_a_file_then_listen_uses_it(fixture_bundle: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, fixture_bundle)
    wav = write_wav(tmp_path / "room.wav", room(16000), 16000)
    out = run_device(["calibrate", "--config", str(config), "--source", str(wav)])
    threshold = _check(out, config, fixture_bundle)
    assert "bundle threshold 0.5000: 4 false alarm(s)" in out.stdout.decode() and threshold > 0.5
    assert "cost: no stream operating table in the manifest" in out.stdout.decode()
    assert "# my agent" in config.read_text()

    listen = ["listen", "--config", str(config), "--source", str(wav), "--json", "--quiet"]
    out = run_device(listen)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert f"threshold {threshold:.4f} from device calibration" in out.stderr.decode()
    out = run_device([*listen, "--threshold", "0.6"])
    assert "threshold 0.6000 from flag (--threshold)" in out.stderr.decode()
    # Calibrating again replaces the table, it does not add a second one.
    out = run_device(["calibrate", "--config", str(config), "--source", str(wav)])
    assert out.returncode == 0 and config.read_text().count("[device_calibration]") == 1


def test_calibrate_from_stdin(fixture_bundle: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, fixture_bundle)
    raw = write_raw(tmp_path / "room.raw", room(16000))
    out = run_device(
        ["calibrate", "--config", str(config), "--source", "stdin", "--rate", "16000"],
        input=raw.read_bytes(),
    )
    _check(out, config, fixture_bundle)
    assert "bundle threshold 0.5000: 4 false alarm(s)" in out.stdout.decode()


def test_calibrate_from_the_alsa_file_mic(fixture_bundle: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, fixture_bundle)
    # The file microphone reads as fast as it is asked: a queue deep enough for all of it.
    config.write_text(config.read_text() + "\n[source]\nqueue_chunks = 10000\n")
    raw = write_raw(tmp_path / "mic.raw", room(48000))
    alsa = write_alsa_file_mic(tmp_path / "asound.conf", raw)
    args = ["calibrate", "--config", str(config), "--source", "mic", "--device", "filemic"]
    # The file PCM returns stale data past its end: stop at the file's length (18 s).
    out = run_device(
        [*args, "--rate", "48000", "--minutes", str(18.0 / 60)], ALSA_CONFIG_PATH=str(alsa)
    )
    from_mic = _check(out, config, fixture_bundle)
    # The same audio from a 48 kHz file: the same windows (one resampler), the same choice.
    wav = write_wav(tmp_path / "room48k.wav", room(48000), 48000)
    file_config = _config(tmp_path / "file", fixture_bundle)
    out_file = run_device(["calibrate", "--config", str(file_config), "--source", str(wav)])
    assert _check(out_file, file_config, fixture_bundle) == from_mic
    heard = [o.stdout.decode().splitlines()[0] for o in (out, out_file)]
    assert heard[0] == heard[1]


def test_listen_reports_bundle_default_operating_point_and_a_stale_calibration(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["operating_points"] = {
        "points": {"fa_1_per_hour": {"threshold": 0.7, "fa_per_hour": 0.5, "miss_rate": 0.1}},
        "curve": [],
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    wav = write_wav(tmp_path / "room.wav", room(16000)[:32000], 16000)
    config = _config(tmp_path, bundle)
    listen = ["listen", "--config", str(config), "--source", str(wav), "--quiet"]
    out = run_device(listen)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert "threshold 0.5000 from bundle default (fixed, dev EER" in out.stderr.decode()

    config.write_text(
        config.read_text().replace("[model]\n", '[model]\noperating_point = "fa_1_per_hour"\n')
    )
    out = run_device(listen)
    assert "threshold 0.7000 from operating point (fa_1_per_hour" in out.stderr.decode()

    write_device_calibration(
        config, DeviceCalibrationSettings(threshold=0.8, model_sha256="0" * 64)
    )
    out = run_device(listen)
    stderr = out.stderr.decode()
    assert "[device_calibration] threshold 0.8 ignored: it was measured with model" in stderr
    assert "threshold 0.7000 from operating point" in stderr

    config.write_text(config.read_text().replace("fa_1_per_hour", "nope"))
    out = run_device(listen)
    assert (
        out.returncode == 2
        and "'nope' is not in the bundle's operating_points" in out.stderr.decode()
    )


def test_k_of_n_votes_from_the_settings_file_and_the_flag(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """[decision] min_windows_above is used by calibrate and recorded with its choice; the
    listen flag overrides it and the start event shows the rule in force."""
    wav = write_wav(tmp_path / "room.wav", room(16000), 16000)
    plain = _config(tmp_path / "plain", fixture_bundle)
    out = run_device(["calibrate", "--config", str(plain), "--source", str(wav)])
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    voting = _config(tmp_path / "votes", fixture_bundle)
    voting.write_text(voting.read_text() + "min_windows_above = 3\n")
    out = run_device(["calibrate", "--config", str(voting), "--source", str(wav)])
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    with_votes = tomllib.loads(voting.read_text())["device_calibration"]
    mean_only = tomllib.loads(plain.read_text())["device_calibration"]
    assert with_votes["min_windows_above"] == 3 and mean_only["min_windows_above"] == 0
    # Votes only remove alarms the mean would raise: the room needs no higher threshold.
    assert with_votes["threshold"] <= mean_only["threshold"]

    listen = ["listen", "--config", str(voting), "--source", str(wav), "--json"]
    for extra, expected in (([], 3), (["--min-windows-above", "2"], 2)):
        out = run_device([*listen, *extra])
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        start = next(
            e for e in map(json.loads, out.stdout.decode().splitlines()) if e["type"] == "start"
        )
        assert start["settings"]["decision"]["min_windows_above"] == expected
    out = run_device([*listen, "--min-windows-above", "4"])
    assert out.returncode == 2
    assert "min_windows_above: expected 0-3" in out.stderr.decode()

    # An operating point measured with another rule says so.
    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    point = {"threshold": 0.7, "fa_per_hour": 0.5, "miss_rate": 0.1, "smoothing_windows": 3}
    manifest["operating_points"] = {"points": {"fa_1_per_hour": point}, "curve": []}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    config = tmp_path / "point.toml"
    config.write_text(
        f'[model]\nbundle = "{bundle}"\noperating_point = "fa_1_per_hour"\n\n'
        "[decision]\nmin_windows_above = 3\n"
    )
    out = run_device(["listen", "--config", str(config), "--source", str(wav), "--quiet"])
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    stderr = out.stderr.decode()
    assert "threshold 0.7000 from operating point (fa_1_per_hour" in stderr
    assert "measured with smoothing_windows 3 and min_windows_above 0" in stderr


def test_stream_cost_only_from_a_table_measured_with_the_same_rule(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    from device.calibrate import eval_stream_cost
    from device.config import DecisionSettings

    bundle = shutil.copytree(fixture_bundle, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    row = {"threshold": 0.6, "fa_per_hour": 2.0, "miss_rate": 0.25}
    row |= {"ttd_median_s": 2.0, "ttd_p90_s": 2.5}
    # An older table: no min_windows_above recorded, which means it was measured without.
    table = {"decision": {"smoothing_windows": 3, "margin": 0.05}, "curve": [row]}
    manifest["operating_points"] = table
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    loaded = load_bundle(bundle).manifest
    mean_only = DecisionSettings(smoothing_windows=3, margin=0.05)
    assert "2.00 false alarms/h, miss rate 25.0%" in eval_stream_cost(loaded, mean_only, 0.6)
    votes = DecisionSettings(smoothing_windows=3, margin=0.05, min_windows_above=3)
    cost = eval_stream_cost(loaded, votes, 0.6)
    assert "min_windows_above 0" in cost and cost.endswith("cost unknown")
