"""Sources with real parts: PyAudio capture from an ALSA file-backed microphone, stdin, files.

The microphone is ALSA's `file` PCM reading a raw file (docs/toolchain.md, "Audio I/O without
a sound card"), selected per test with ALSA_CONFIG_PATH. It has no real-time clock (reads
return at once) and returns stale data past the end, so every capture here stops at the
file's length (--max-seconds).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from device.sources import (
    END,
    FileSource,
    MicSource,
    SourceError,
    StdinSource,
    choose_device,
    list_input_devices,
)
from device.stream import Chunk
from tests.device_fixtures import (
    REPO,
    device_env,
    json_lines,
    noise,
    run_device,
    scenario,
    to_pcm16,
    write_alsa_file_mic,
    write_raw,
    write_wav,
)

pyaudio = pytest.importorskip("pyaudio", reason="the microphone tests need PyAudio")

# Stated tolerance for stream vs file window scores. The capture is bit-exact and the
# streaming resampler reproduces resample_poly bit-exactly, so the scores are equal; the
# tolerance only allows for float printing.
SCORE_ATOL = 1e-6


def _drain(source, timeout_s: float = 20.0) -> list[Chunk]:
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = source.get(timeout_s=0.5)
        if item is END:
            return chunks
        if item is not None:
            chunks.append(item)
    raise AssertionError(f"the source did not end within {timeout_s} s")


def _window_scores(events: list[dict]) -> list[tuple[float, float]]:
    return [(e["start_s"], e["p_spoof"]) for e in events if e["type"] in ("window", "decision")]


def _file_scores(fixture_bundle: Path, path: Path) -> list[tuple[float, float]]:
    out = run_device(["score", str(path), "--bundle", str(fixture_bundle), "--json", "--windows"])
    assert out.returncode == 0, out.stderr.decode()
    (result,) = json_lines(out.stdout)
    return [(w["start_s"], w["p_spoof"]) for w in result["window_scores"]]


def _assert_same_scores(stream: list[tuple[float, float]], file: list[tuple[float, float]]):
    assert [s for s, _ in stream] == [s for s, _ in file]
    np.testing.assert_allclose(
        [p for _, p in stream], [p for _, p in file], rtol=0, atol=SCORE_ATOL
    )


# --------------------------------------------------------------------------- microphone


@pytest.mark.parametrize(("rate", "channels"), [(48000, 1), (44100, 2)])
def test_mic_capture_scores_equal_file_scores(
    fixture_bundle: Path, tmp_path: Path, rate: int, channels: int
) -> None:
    mono = scenario(rate)
    signal = mono if channels == 1 else np.stack([mono, 0.5 * np.roll(mono, 7)], 1)
    raw = write_raw(tmp_path / "mic.raw", signal)
    config = write_alsa_file_mic(tmp_path / "asound.conf", raw)
    wav = write_wav(tmp_path / "same.wav", signal, rate)
    events_path = tmp_path / "events.jsonl"
    args = ["listen", "--bundle", str(fixture_bundle), "--source", "mic", "--device", "filemic"]
    args += ["--channels", str(channels), "--max-seconds", str(len(mono) / rate)]
    if rate != 48000:
        args += ["--rate", str(rate)]  # the file PCM serves any rate; ask for the file's own
    args += ["--json", "--every-window", "--events-file", str(events_path)]
    out = run_device(args, ALSA_CONFIG_PATH=str(config))
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    events = json_lines(out.stdout)
    assert events[0]["type"] == "start"
    opened = next(e for e in events if e["type"] == "source")
    assert opened["source_state"] == "running" and opened["sample_rate"] == rate
    assert "filemic" in opened["device"] and opened["channels"] == channels
    assert events[-1]["type"] == "stop" and events[-1]["reason"] == "end of stream"
    assert events[-1]["overflows"] == 0
    _assert_same_scores(_window_scores(events), _file_scores(fixture_bundle, wav))
    # The event file holds the same windows (every-window) and decision changes.
    assert _window_scores(json_lines(events_path.read_text())) == _window_scores(events)
    decisions = [e["decision"] for e in events if e["type"] == "decision"]
    assert decisions == ["bonafide", "spoof", "silence", "bonafide"]


def test_mic_chooses_48k_and_lists_devices(tmp_path: Path, monkeypatch) -> None:
    raw = write_raw(tmp_path / "mic.raw", scenario(48000)[:4800])
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", raw)))
    devices = list_input_devices()
    names = [d["name"] for d in devices]
    assert "filemic" in names
    filemic = next(d for d in devices if d["name"] == "filemic")
    assert filemic["supported_rates"][0] == 48000
    assert choose_device(devices, "FILEMIC")["name"] == "filemic"  # case-insensitive substring
    assert choose_device(devices, str(filemic["index"]))["name"] == "filemic"
    with pytest.raises(SourceError, match=r"no input device whose name contains 'usb'.*filemic"):
        choose_device(devices, "usb")
    with pytest.raises(SourceError, match="no input device with index 99"):
        choose_device(devices, "99")

    source = MicSource(device="filemic", max_seconds=0.1)
    source.start()
    chunks = _drain(source)
    assert source.stats.sample_rate == 48000 and source.stats.errors == 0
    captured = np.concatenate([c.samples[:, 0] for c in chunks])
    np.testing.assert_array_equal(captured, to_pcm16(scenario(48000)[:4800]) / 32768.0)


def test_devices_command_lists_the_file_mic(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "mic.raw", np.zeros(4800, dtype=np.float32))
    config = write_alsa_file_mic(tmp_path / "a.conf", raw)
    out = run_device(["devices", "--json"], ALSA_CONFIG_PATH=str(config))
    assert out.returncode == 0, out.stderr.decode()
    assert "filemic" in [d["name"] for d in json_lines(out.stdout)]


def test_overflow_is_counted_never_a_crash(tmp_path: Path, monkeypatch) -> None:
    """A consumer slower than the device: chunks are dropped, counted and flagged."""
    seconds = 20.0
    raw = write_raw(tmp_path / "mic.raw", noise(seconds, 48000, 0.1))
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", raw)))
    # The file microphone delivers as fast as it is read: with a 2-chunk queue and a consumer
    # that stalls until audio has been lost, the loss is real.
    source = MicSource(device="filemic", chunk_ms=10, queue_chunks=2, max_seconds=seconds)
    source.start()
    deadline = time.monotonic() + 10
    while source.stats.overflows < 5 and time.monotonic() < deadline:
        time.sleep(0.001)
    chunks = _drain(source)
    reads = int(seconds * 100)
    assert 5 <= source.stats.overflows < reads
    assert len(chunks) + source.stats.overflows == reads  # every read accounted for
    assert not chunks[0].discontinuity
    assert any(c.discontinuity for c in chunks)  # a chunk after a loss says so
    assert source.stats.state == "ended" and source.stats.errors == 0


def test_missing_device_backs_off_then_opens_when_it_appears(tmp_path: Path, monkeypatch) -> None:
    """A microphone that is not there at start (a USB mic enumerated late) is waited for."""
    config = write_alsa_file_mic(tmp_path / "a.conf", None)  # no microphone at all
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(config))
    source = MicSource(
        device="filemic", backoff_initial_s=0.05, backoff_max_s=0.2, max_seconds=0.05
    )
    source.start()
    deadline = time.monotonic() + 10
    while source.stats.errors < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.stats.errors >= 2 and source.stats.state == "backoff"
    assert "no input device whose name contains 'filemic'" in source.stats.last_error
    raw = write_raw(tmp_path / "mic.raw", scenario(48000)[:2400])
    write_alsa_file_mic(config, raw)  # the device appears; PortAudio is re-initialised per try
    chunks = _drain(source)
    assert sum(c.samples.shape[0] for c in chunks) == 2400
    assert source.stats.state == "ended"


class _WrappedPyAudio:
    """The real PyAudio module and devices; subclasses replace one call of the PyAudio object
    (`open` or `is_format_supported`) to cause a fault that cannot be caused for real here,
    and say which and why."""

    def __init__(self) -> None:
        self.paInt16 = pyaudio.paInt16
        self.paInputOverflowed = pyaudio.paInputOverflowed

    def PyAudio(self):
        outer = self
        real = pyaudio.PyAudio()

        class _PA:
            def __getattr__(self, name):
                return getattr(real, name)

            def open(self, **kwargs):
                return outer.open(real, **kwargs)

            def is_format_supported(self, rate, **kwargs):
                return outer.is_format_supported(real, rate, **kwargs)

        return _PA()

    def open(self, real, **kwargs):
        return real.open(**kwargs)

    def is_format_supported(self, real, rate, **kwargs):
        return real.is_format_supported(rate, **kwargs)


class _FlakyPyAudio(_WrappedPyAudio):
    """Real PyAudio whose stream fails once mid-capture, as an unplugged USB microphone does.

    An unplug cannot be caused for real on a machine without sound hardware, so this
    wrapper raises the error PortAudio raises then (-9999, unanticipated host error) from
    the Nth read of the first stream; everything else is the real library and device.
    """

    def __init__(self, fail_on_read: int, errno: int = -9999) -> None:
        super().__init__()
        self.fail_on_read = fail_on_read
        self.errno = errno
        self.opened = 0

    def open(self, real, **kwargs):
        stream = real.open(**kwargs)
        self.opened += 1
        if self.opened > 1:
            return stream
        outer, reads = self, {"n": 0}

        class _Stream:
            def __getattr__(self, name):
                return getattr(stream, name)

            def read(self, frames, exception_on_overflow=True):
                reads["n"] += 1
                if reads["n"] == outer.fail_on_read:
                    raise OSError(outer.errno, "injected stream fault")
                return stream.read(frames, exception_on_overflow=exception_on_overflow)

        return _Stream()


def test_stream_error_mid_capture_is_survived_by_reopening(tmp_path: Path, monkeypatch) -> None:
    raw = write_raw(tmp_path / "mic.raw", scenario(48000)[:48000])
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", raw)))
    flaky = _FlakyPyAudio(fail_on_read=3)
    source = MicSource(
        device="filemic", chunk_ms=20, backoff_initial_s=0.05, max_seconds=0.5, pyaudio_module=flaky
    )
    source.start()
    chunks = _drain(source)
    assert flaky.opened == 2 and source.stats.errors == 1 and source.stats.reopens == 1
    assert "injected stream fault" in source.stats.last_error
    assert [c.discontinuity for c in chunks].count(True) == 1
    assert chunks[2].discontinuity  # the first chunk after the reopen
    assert sum(c.samples.shape[0] for c in chunks) == 24000  # max_seconds of audio in all


def test_driver_overflow_is_counted_and_capture_goes_on(tmp_path: Path, monkeypatch) -> None:
    raw = write_raw(tmp_path / "mic.raw", scenario(48000)[:48000])
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", raw)))
    flaky = _FlakyPyAudio(fail_on_read=2, errno=pyaudio.paInputOverflowed)
    source = MicSource(device="filemic", chunk_ms=20, max_seconds=0.2, pyaudio_module=flaky)
    source.start()
    chunks = _drain(source)
    assert source.stats.overflows == 1 and source.stats.errors == 0 and flaky.opened == 1
    assert chunks[1].discontinuity


class _RateLimitedPyAudio(_WrappedPyAudio):
    """Real PyAudio on the file microphone, except that `is_format_supported` refuses the rates
    in `refused` with the ValueError PortAudio raises for a rate the hardware lacks.

    The ALSA file microphone accepts every rate (the plug layer converts), so a device without
    48 or 44.1 kHz cannot be made from it; everything apart from the rate check is real.
    """

    def __init__(self, refused: set[int]) -> None:
        super().__init__()
        self.refused = refused

    def is_format_supported(self, real, rate, **kwargs):
        if int(rate) in self.refused:
            raise ValueError(("Invalid sample rate", -9997))
        return real.is_format_supported(rate, **kwargs)


@pytest.mark.parametrize(
    ("refused", "expected_rate"),
    [({48000}, 44100), ({48000, 44100}, 16000), ({48000, 44100, 16000}, "default")],
)
def test_mic_falls_back_through_the_preferred_rates_to_the_device_default(
    tmp_path: Path, monkeypatch, refused: set[int], expected_rate: int | str
) -> None:
    raw = write_raw(tmp_path / "mic.raw", scenario(48000)[:4800])
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", raw)))
    if expected_rate == "default":
        filemic = next(d for d in list_input_devices() if d["name"] == "filemic")
        expected_rate = filemic["default_sample_rate"]
    source = MicSource(
        device="filemic", max_seconds=0.05, pyaudio_module=_RateLimitedPyAudio(refused)
    )
    source.start()
    chunks = _drain(source)
    assert source.stats.sample_rate == expected_rate and source.stats.errors == 0
    assert all(c.sample_rate == expected_rate for c in chunks)
    captured = np.concatenate([c.samples[:, 0] for c in chunks])
    frames = round(0.05 * expected_rate)
    assert captured.size == frames  # max_seconds at the chosen rate, read from the raw file
    np.testing.assert_array_equal(captured, to_pcm16(scenario(48000)[:frames]) / 32768.0)


# --------------------------------------------------------------------------- stdin and files


def test_stdin_pcm_scores_equal_file_scores(fixture_bundle: Path, tmp_path: Path) -> None:
    """The Arm parity harness's command: listen --source stdin --rate R --channels C --json."""
    rate = 44100
    mono = scenario(rate, seed=5)
    signal = np.stack([mono, mono * 0.25], axis=1)
    wav = write_wav(tmp_path / "same.wav", signal, rate)
    pcm = to_pcm16(signal).tobytes()
    args = ["listen", "--bundle", str(fixture_bundle), "--source", "stdin"]
    args += ["--rate", str(rate), "--channels", "2", "--json"]
    out = run_device(args, input=pcm)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    events = json_lines(out.stdout)
    assert events[0]["type"] == "start" and events[-1]["type"] == "stop"
    _assert_same_scores(_window_scores(events), _file_scores(fixture_bundle, wav))


def test_stdin_reassembles_frames_split_across_reads() -> None:
    read_fd, write_fd = os.pipe()
    pcm = to_pcm16(np.stack([np.linspace(-1, 1, 999), np.linspace(1, -1, 999)], 1)).tobytes()

    def writer() -> None:
        for i in range(0, len(pcm), 7):  # 7 bytes: never a whole 4-byte stereo frame
            os.write(write_fd, pcm[i : i + 7])
        os.close(write_fd)

    with os.fdopen(read_fd, "rb", buffering=0) as stream:
        source = StdinSource(8000, channels=2, chunk_ms=10, stream=stream)
        thread = threading.Thread(target=writer)
        thread.start()
        source.start()
        chunks = _drain(source)
        thread.join()
    got = np.concatenate([c.samples for c in chunks])
    expected = np.frombuffer(pcm, "<i2").reshape(-1, 2) / 32768.0
    np.testing.assert_array_equal(got, expected)


def test_stdin_needs_a_rate() -> None:
    with pytest.raises(SourceError, match="expected a positive --rate"):
        StdinSource(0)


def test_file_source_replays_in_real_time(tmp_path: Path) -> None:
    """Paced: no chunk arrives before its audio's own end time (a lower bound, which a busy
    machine cannot break). How much faster the unpaced source is, is measured by the stream
    benchmark, not asserted here."""
    path = write_wav(tmp_path / "a.wav", scenario(16000)[:8000], 16000)  # 0.5 s
    fast, paced = FileSource(path), FileSource(path, realtime=True, chunk_ms=50)
    for source in (fast, paced):
        started = time.monotonic()
        source.start()
        chunks = _drain(source)
        assert sum(c.samples.shape[0] for c in chunks) == 8000
        if source is paced:
            audio_end_s = np.cumsum([c.samples.shape[0] for c in chunks]) / 16000
            arrived_s = np.array([c.arrival_s for c in chunks]) - started
            assert (arrived_s >= audio_end_s).all()  # paced: the audio's own duration


def test_file_source_names_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC not really")
    with pytest.raises(ValueError, match=r"bad\.flac"):
        FileSource(bad)


def _listen_without_a_microphone(fixture_bundle: Path, tmp_path: Path, *extra: str) -> list[str]:
    """stderr lines of `listen --source mic` until its first warning about the device."""
    conf = write_alsa_file_mic(tmp_path / "none.conf", None)
    args = [sys.executable, "-m", "device", *extra, "listen", "--bundle", str(fixture_bundle)]
    args += ["--source", "mic", "--device", "usb"]
    process = subprocess.Popen(
        args,
        cwd=REPO,
        env=device_env(ALSA_CONFIG_PATH=str(conf), TF_CPP_MIN_LOG_LEVEL="0"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    try:
        for line in process.stderr:  # bounded: the agent warns within its first back-off
            lines.append(line.rstrip("\n"))
            if "WARNING device.sources" in line:
                break
    finally:
        process.terminate()
        process.wait(timeout=20)
    return lines


def test_no_microphone_is_one_clear_line_and_library_noise_is_debug(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    pytest.importorskip("pyaudio")
    default = _listen_without_a_microphone(fixture_bundle, tmp_path)
    # only the agent's own records (the threshold in force, what an older bundle lacks) and
    # exactly one warning: no ALSA/JACK/LiteRT line at the default level
    assert all(re.search(r" (INFO|WARNING) device\.", line) for line in default), default
    warnings = [line for line in default if " WARNING " in line]
    assert len(warnings) == 1, default
    assert "no input device whose name contains 'usb'" in warnings[0]
    debug = _listen_without_a_microphone(fixture_bundle, tmp_path, "--log-level", "debug")
    text = "\n".join(debug)
    assert "Created TensorFlow Lite XNNPACK delegate" in text  # kept, as a debug record
    assert "LiteRT and PortAudio wrote to stderr" in text


def test_score_prints_no_litert_info_line(fixture_bundle: Path, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", scenario(16000), 16000)
    out = run_device(
        ["score", str(path), "--bundle", str(fixture_bundle)], TF_CPP_MIN_LOG_LEVEL="0"
    )
    assert out.returncode == 0 and out.stderr.decode() == ""
