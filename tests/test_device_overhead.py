"""The agent's own overhead: deferred fsync of window events, resampling held back until a
window is due, and imports only for the paths in use (docs/device.md, "Load on this machine")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from device.audio import StreamingResampler
from device.cli import _parser, listen_settings
from device.config import ConfigError, EventSettings, Settings, validate
from device.events import EventFile, read_events
from device.stream import Chunk
from tests.device_fixtures import REPO, bundle_for, device_env, noise, scenario, to_pcm16


@pytest.fixture(scope="session")
def fixture_bundle(request: pytest.FixtureRequest) -> Path:
    return bundle_for(request)


def _event(kind: str, index: int) -> dict:
    return {"schema": 1, "type": kind, "window": index}


# --------------------------------------------------------------------------- event file fsync


def test_window_events_are_synced_within_the_interval_others_at_once(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    events = EventFile(path, max_bytes=0, fsync=True, fsync_interval_s=0.2)
    for i in range(5):
        events.write(_event("window", i))
    # Written (one os.write each: another reader sees them now), not yet synced.
    assert [e["window"] for e in read_events(path)] == [0, 1, 2, 3, 4]
    assert events.fsyncs == 0
    events.sync_due()  # too early: nothing to do
    assert events.fsyncs == 0
    time.sleep(0.25)
    events.sync_due()
    assert events.fsyncs == 1
    events.sync_due()  # nothing unsynced any more
    assert events.fsyncs == 1
    events.write(_event("decision", 5))  # a decision is synced at once
    assert events.fsyncs == 2
    events.write(_event("window", 6))
    events.close()  # the last window is synced on close
    assert events.fsyncs == 3
    assert [e["window"] for e in read_events(path)] == [0, 1, 2, 3, 4, 5, 6]


def test_a_late_window_event_syncs_the_ones_before_it(tmp_path: Path) -> None:
    events = EventFile(tmp_path / "e.jsonl", max_bytes=0, fsync=True, fsync_interval_s=0.1)
    events.write(_event("window", 0))
    time.sleep(0.15)
    events.write(_event("window", 1))  # the oldest unsynced line is past the interval
    assert events.fsyncs == 1
    events.close()


def test_the_event_file_says_when_its_next_sync_is_due(tmp_path: Path) -> None:
    """The agent's loop waits for a chunk at most until then (Agent._wait_s), so window
    lines are synced on time without the loop waking every 0.25 s."""
    events = EventFile(tmp_path / "e.jsonl", max_bytes=0, fsync=True, fsync_interval_s=0.3)
    assert events.sync_due_in_s() is None  # nothing unsynced
    events.write(_event("window", 0))
    due_s = events.sync_due_in_s()
    assert due_s is not None and 0.2 < due_s <= 0.3
    time.sleep(due_s + 0.01)
    assert events.sync_due_in_s() == 0.0
    events.sync_due()
    assert events.fsyncs == 1 and events.sync_due_in_s() is None
    events.close()
    off = EventFile(tmp_path / "f.jsonl", max_bytes=0, fsync=False, fsync_interval_s=0.3)
    off.write(_event("window", 0))
    assert off.sync_due_in_s() is None  # fsync off: never due
    off.close()


def test_interval_zero_syncs_every_event_and_fsync_off_syncs_none(tmp_path: Path) -> None:
    every = EventFile(tmp_path / "a.jsonl", max_bytes=0, fsync=True, fsync_interval_s=0)
    for i in range(3):
        every.write(_event("window", i))
    assert every.fsyncs == 3
    never = EventFile(tmp_path / "b.jsonl", max_bytes=0, fsync=False, fsync_interval_s=0)
    for i in range(3):
        never.write(_event("decision", i))
    never.sync_due()
    never.close()
    assert never.fsyncs == 0
    with pytest.raises(ValueError, match="fsync_interval_s must be >= 0 seconds, got -1"):
        EventFile(tmp_path / "c.jsonl", fsync_interval_s=-1)


def test_rotation_syncs_the_file_it_rotates(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    events = EventFile(path, max_bytes=200, backups=1, fsync=True, fsync_interval_s=30)
    for i in range(6):
        events.write(_event("window", i))
    assert events.fsyncs >= 1  # the rotated file was synced before it was renamed
    events.close()
    indices = [e["window"] for e in read_events(path.with_name("e.jsonl.1"))]
    indices += [e["window"] for e in read_events(path)]
    assert indices == list(range(6))


@pytest.mark.parametrize("value", [-1.0, 61.0, float("nan")])
def test_fsync_interval_setting_is_checked(value: float) -> None:
    with pytest.raises(ConfigError, match=r"events\.fsync_interval_s: expected 0-60 seconds"):
        validate(Settings(events=EventSettings(fsync_interval_s=value)))


def test_fsync_interval_flag_overrides_the_setting() -> None:
    listen = ["listen", "--bundle", "b", "--source", "stdin", "--rate", "16000"]
    args = _parser().parse_args([*listen, "--fsync-interval-s", "0"])
    assert listen_settings(args).events.fsync_interval_s == 0.0
    args = _parser().parse_args(["listen", "--bundle", "b", "--source", "stdin", "--rate", "8000"])
    assert listen_settings(args).events.fsync_interval_s == EventSettings().fsync_interval_s == 1.0


def test_the_loop_waits_for_chunks_until_a_duty_is_due(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """At most LOOP_WAIT_S (so a 256 ms chunk is one wake-up), less when the event file's
    next fsync comes sooner, and never below SYNC_RETRY_S when a sync stays due: an fsync that
    fails (which no test disk can be made to do, so its state is set by hand here) is retried
    and logged 4 times a second, not in a tight loop."""
    from device.agent import LOOP_WAIT_S, SYNC_RETRY_S, build_agent

    listen = ["listen", "--bundle", str(fixture_bundle), "--source", "stdin", "--rate", "16000"]
    events = ["--events-file", str(tmp_path / "e.jsonl"), "--every-window"]
    agent = build_agent(listen_settings(_parser().parse_args([*listen, *events])))
    assert agent._wait_s == LOOP_WAIT_S  # nothing unsynced yet
    file = next(sink.file for sink in agent.sinks if hasattr(sink, "file"))
    file.write({"type": "window", "window": 0})
    assert SYNC_RETRY_S <= agent._wait_s <= LOOP_WAIT_S
    file._unsynced_since = time.monotonic() - 60.0  # overdue, as after a failed fsync
    assert agent._wait_s == SYNC_RETRY_S
    file.close()
    args = _parser().parse_args([*listen, *events, "--heartbeat-s", "0.1"])
    often = build_agent(listen_settings(args))
    assert often._wait_s == 0.1
    for sink in often.sinks:
        sink.close()


def test_sigterm_loses_no_event_with_a_long_fsync_interval(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """A real agent on a pipe, a real SIGTERM: every window it reported is in the file."""
    events_path = tmp_path / "events.jsonl"
    command = [
        sys.executable, "-m", "device", "--log-level", "warning", "listen",
        "--bundle", str(fixture_bundle), "--source", "stdin", "--rate", "16000",
        "--json", "--every-window", "--events-file", str(events_path),
        "--fsync-interval-s", "60", "--heartbeat-s", "3600",
    ]  # fmt: skip
    agent = subprocess.Popen(
        command,
        cwd=REPO,
        env=device_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert agent.stdin is not None and agent.stdout is not None
    agent.stdin.write(to_pcm16(scenario(16000)).tobytes())  # ~4 s of audio; the pipe stays open
    agent.stdin.flush()
    seen: list[dict] = []
    while len([e for e in seen if e["type"] in ("window", "decision")]) < 4:
        line = agent.stdout.readline()
        assert line, "the agent ended before 4 windows"
        seen.append(json.loads(line))
    agent.send_signal(signal.SIGTERM)  # the pipe stays open: only the signal ends it
    rest = agent.stdout.read()  # the same buffered reader readline() used: nothing skipped
    assert agent.wait(timeout=30) == 0, agent.stderr.read().decode()[-2000:] if agent.stderr else ""
    agent.stdin.close()
    stdout_events = seen + [json.loads(line) for line in rest.splitlines() if line.strip()]
    file_events = list(read_events(events_path))
    windows = [e["window"] for e in stdout_events if e["type"] in ("window", "decision")]
    assert len(windows) >= 4
    assert [e["window"] for e in file_events if e["type"] in ("window", "decision")] == windows
    assert file_events[-1]["type"] == "stop" and file_events[-1]["reason"] == "SIGTERM"


# --------------------------------------------------------------------------- held-back resampling


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
def test_outputs_after_predicts_what_process_returns(rate: int) -> None:
    rng = np.random.default_rng(rate)
    signal_in = noise(2.0, rate)
    predicted, fed = StreamingResampler(rate), StreamingResampler(rate)
    position = 0
    while position < signal_in.size:
        size = int(rng.integers(1, rate // 5))
        piece = signal_in[position : position + size]
        expected = predicted.outputs_after(piece.size)
        assert fed.outputs_emitted + fed.process(piece).size == expected
        predicted.process(piece)
        position += size


def test_pipeline_counts_the_chunks_it_holds_back(fixture_bundle: Path) -> None:
    from device.runtime import Scorer
    from device.stream import StreamPipeline

    scorer = Scorer(fixture_bundle)
    pipeline = StreamPipeline(scorer, Settings().decision)
    reference = StreamingResampler(48000)
    audio = scenario(48000)
    chunk = 3072  # 64 ms
    resampled = 0
    windows = 0
    for first in range(0, audio.size, chunk):
        piece = audio[first : first + chunk, None]
        windows += len(pipeline.feed(Chunk(piece, 48000, 0.0)))
        resampled += reference.process(piece[:, 0]).size
        assert pipeline.samples_seen == resampled  # held-back chunks included
    windows += len(pipeline.finish())
    assert windows == pipeline.windows_scored > 0


# --------------------------------------------------------------------------- imports


_LISTEN_AND_REPORT_MODULES = """
import json, sys
from device.cli import main
status = main(sys.argv[3:])
heavy = ["scipy.signal", "scipy.signal._upfirdn_apply", "scipy", "soundfile", "http.server", "email.parser", "sqlite3",
         "paho", "cryptography"]
with open(sys.argv[1], "w") as out:
    json.dump({"status": status, "loaded": [m for m in heavy if m in sys.modules]}, out)
"""


def _modules_of_a_stdin_listen(bundle: Path, rate: int, tmp_path: Path) -> dict:
    report = tmp_path / f"modules{rate}.json"
    pcm = to_pcm16(noise(1.5, rate)).tobytes()
    listen = ["listen", "--bundle", str(bundle), "--source", "stdin", "--rate", str(rate)]
    result = subprocess.run(
        [sys.executable, "-c", _LISTEN_AND_REPORT_MODULES, str(report), "-", *listen, "--quiet"],
        cwd=REPO,
        env=device_env(),
        input=pcm,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    return json.loads(report.read_text())


def test_a_16khz_stream_imports_no_resampler_decoder_or_network_stack(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    report = _modules_of_a_stdin_listen(fixture_bundle, 16000, tmp_path)
    assert report == {"status": 0, "loaded": []}


def test_a_48khz_stream_loads_scipys_kernel_not_scipy_signal(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    # The same check sees a real import: resampling 48 kHz loads scipy's upfirdn kernel (the
    # design's scipy resampler), without scipy.signal's package and its 76 MiB of imports.
    report = _modules_of_a_stdin_listen(fixture_bundle, 48000, tmp_path)
    assert report == {"status": 0, "loaded": ["scipy.signal._upfirdn_apply", "scipy"]}


def test_the_agent_process_starts_without_scipy(tmp_path: Path) -> None:
    """`import device.cli, device.agent` (what the process loads before the settings)."""
    code = (
        "import sys, device.cli, device.agent, device.api;"
        "print(sorted(m for m in ('scipy', 'soundfile', 'sqlite3') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=device_env(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    # device.api (the HTTP server) is imported here on purpose: it needs none of them either.
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the benchmark


def test_agent_load_profiles_a_16khz_stdin_stream(fixture_bundle: Path, tmp_path: Path) -> None:
    from benchmarks.agent_load import main as agent_load

    out = tmp_path / "agent_load.json"
    args = ["--bundle", str(fixture_bundle), "--seconds", "1.5", "--rate", "16000"]
    args += ["--source", "stdin", "--profile", "--cold-starts", "1", "--out", str(out)]
    assert agent_load(args) == 0
    report = json.loads(out.read_text())
    run = report["runs"]["this tree"][0]
    assert run["source"] == "stdin" and run["capture_rate_hz"] == 16000
    assert run["audio_s"] == 1.5 and run["windows"] == 11 and run["overflows"] == 0
    # The agent's own VmHWM (ru_maxrss would carry over this test process's peak).
    assert 10 < run["peak_rss_mib"] < 200
    cold = report["cold_start"]["this tree"]
    assert len(cold["cold_starts_s"]) == 1 and cold["cold_start_s"] > 0
    profile = report["profiles"]["this tree"]
    assert set(profile["stages_cpu_s"]) == {
        "source", "queue", "resample", "ring", "gate", "model", "decide", "events",
    }  # fmt: skip
    assert profile["stages_cpu_s"]["model"] > 0 and profile["stages_cpu_s"]["events"] > 0
    rss = profile["peak_rss_mib"]
    assert rss["interpreter"] <= rss["imports"] <= rss["agent_built"] <= rss["end"]
    assert out.with_name("agent_load.profile.this_tree.json").is_file()


def test_agent_load_steady_state_leaves_out_the_first_windows_and_the_shutdown() -> None:
    """The steady state runs from SETTLE_S after the start event to the last poll at least
    END_MARGIN_S before the audio ends: the first windows' one-time costs and the exit (stop
    event, close, interpreter teardown) were half of the old "steady" figure at 256 ms chunks
    (0.99-1.08 % against 0.50-0.55 %, docs/device.md)."""
    from benchmarks.agent_load import END_MARGIN_S, SETTLE_S, _steady_marks

    pid, audio_s = os.getpid(), 60.0  # this process: a real /proc entry
    settled = last = None
    for now_s in (0.05, 1.0, SETTLE_S - 0.01):
        settled, last = _steady_marks(pid, now_s, 0.0, audio_s, settled, last)
        assert settled is None and last is None
    settled, last = _steady_marks(pid, SETTLE_S, 0.0, audio_s, settled, last)
    assert settled is not None and settled[0] == SETTLE_S and last is None
    for now_s in (10.0, audio_s - END_MARGIN_S):
        settled, last = _steady_marks(pid, now_s, 0.0, audio_s, settled, last)
        assert last is not None and last[0] == now_s and last[1] >= settled[1]
    settled, last = _steady_marks(pid, audio_s - 0.1, 0.0, audio_s, settled, last)
    assert last[0] == audio_s - END_MARGIN_S  # the end of the stream is not steady state
    short, _ = _steady_marks(pid, 1.0, 0.0, 2.0, None, None)
    assert short is not None  # a 2 s run settles after a quarter of it


def test_handoff_floor_hands_chunks_over_and_reports(tmp_path: Path) -> None:
    from benchmarks.handoff_floor import main as handoff_floor

    out = tmp_path / "floor.json"
    assert handoff_floor(["--seconds", "0.5", "--chunk-ms", "100", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert 1 <= report["chunks"] <= 5 and report["chunk_ms"] == 100.0
    assert report["cpu_s"] >= 0 and report["wall_s"] >= 0.5
