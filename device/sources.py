"""Where a stream's audio comes from: a microphone (PyAudio), a file, or raw PCM on stdin.

Every source reads in its own thread into a bounded queue of `Chunk`s and the agent takes
them with `get()`. Chunks keep the source's own rate and channels; the stream pipeline
downmixes and resamples them with the shared front end (device.audio), so all three
sources reach the model through the same numbers.

- MicSource: device by index or name substring, opened at a rate it supports (48 kHz, then
  44.1 kHz, then 16 kHz). A full queue drops the chunk and counts an overflow (so does an
  input overflow reported by PortAudio); the next chunk is marked as a discontinuity. A
  stream error, or a device that is missing or unplugged, is logged and the source backs off
  (doubling up to a limit) and reopens it, re-initialising PortAudio to see new devices.
- FileSource: the whole file as fast as the consumer takes it, or paced in real time.
- StdinSource: raw little-endian int16 PCM at a given rate and channel count.

PyAudio is imported only when a microphone is used.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import re
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from device.audio import decode, pcm16_to_float
from device.stream import Chunk

log = logging.getLogger("device.sources")

PREFERRED_RATES = (48000, 44100, 16000)
"""Capture rates tried in order; resampling to 16 kHz happens in Python, bit-exactly."""


class SourceError(RuntimeError):
    """A source that cannot deliver audio (a configuration problem, not a passing fault)."""


_OWN_LOG_LINE = re.compile(rb"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
_C_STDERR_LOCK = threading.RLock()
_C_STDERR_MAX_BYTES = 1 << 20


@contextmanager
def c_stderr_to_debug(what: str) -> Iterator[None]:
    """Run C library code (PortAudio with ALSA and JACK, LiteRT) with its stderr chatter
    turned into one DEBUG log record, so a default run shows one clear line per fault and
    `--log-level debug` still shows the libraries' own words.

    File descriptor 2 is process-wide: lines our own log handler writes meanwhile (from any
    thread) are passed through to the real stderr, not hidden.
    """
    with _C_STDERR_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no usable stderr: nothing to quieten
            yield
            return
        try:
            with tempfile.TemporaryFile() as capture:
                os.dup2(capture.fileno(), 2)
                try:
                    yield
                finally:
                    with suppress(OSError, ValueError):  # a closed sys.stderr: restored below
                        sys.stderr.flush()
                    os.dup2(saved, 2)
                    capture.seek(0)
                    _replay(what, capture.read(_C_STDERR_MAX_BYTES), saved)
        finally:
            os.close(saved)


def _replay(what: str, captured: bytes, stderr_fd: int) -> None:
    ours, noise = [], []
    for line in captured.splitlines(keepends=True):
        (ours if _OWN_LOG_LINE.match(line) else noise).append(line)
    if ours:
        os.write(stderr_fd, b"".join(ours))
    if noise:
        log.debug(
            "%s wrote to stderr (%d line(s)):\n%s",
            what,
            len(noise),
            b"".join(noise).decode("utf-8", "replace").rstrip(),
        )


class _End:
    """Sentinel: the source has no more audio."""


END = _End()


@dataclass
class SourceStats:
    chunks: int = 0
    frames: int = 0
    overflows: int = 0  # chunks lost: queue full, or an input overflow reported by the driver
    errors: int = 0  # stream errors (each followed by a back-off and a reopen)
    reopens: int = 0
    state: str = "starting"  # starting | running | backoff | ended | stopped
    last_error: str = ""
    sample_rate: int = 0
    channels: int = 0
    device: str = ""


class Source:
    """Base: a reader thread filling a bounded queue; `get()` for the consumer."""

    name = "source"
    lossless = True  # block the reader when the queue is full (files, pipes) instead of dropping

    def __init__(self, queue_chunks: int = 64) -> None:
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be at least 1, got {queue_chunks}")
        self.queue: queue.Queue[Chunk | _End] = queue.Queue(maxsize=queue_chunks)
        self.stats = SourceStats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False  # a chunk was dropped: mark the next one as a discontinuity
        self.failure = ""  # set when the reader thread died of an error (not a clean end)
        self._lock = threading.Lock()
        self._transitions: deque[SourceStats] = deque(maxlen=256)

    # ----------------------------------------------------------------- consumer side

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run_guarded, name=self.name, daemon=True)
        self._thread.start()

    def get(self, timeout_s: float = 0.25) -> Chunk | _End | None:
        """The next chunk, END when the source is exhausted, or None after timeout_s."""
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def stop(self, join_timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self.stats.state != "ended":
            self._set_state("stopped")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(join_timeout_s)

    def pop_transitions(self) -> list[SourceStats]:
        """Snapshots of the stats at each state change since the last call, oldest first."""
        with self._lock:
            out = list(self._transitions)
            self._transitions.clear()
        return out

    def _set_state(self, state: str) -> None:
        with self._lock:
            if state == self.stats.state and state != "running":
                return
            self.stats.state = state
            self._transitions.append(dataclasses.replace(self.stats))

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def describe(self) -> dict[str, Any]:
        return {"source": self.name}

    @property
    def expected_rate(self) -> int | None:
        """The sample rate the chunks will most likely have (None: unknown until opened)."""
        return self.stats.sample_rate or None

    # ----------------------------------------------------------------- reader side

    def _run(self) -> None:
        raise NotImplementedError

    def _run_guarded(self) -> None:
        try:
            self._run()
        except Exception as error:  # the reader thread must report, not vanish
            log.exception("%s: reader failed", self.name)
            self.stats.last_error = f"{type(error).__name__}: {error}"
            self.stats.errors += 1
            self.failure = self.stats.last_error
        finally:
            self._set_state("stopped" if self._stop.is_set() else "ended")
            self._put_end()

    def _put_end(self) -> None:
        while True:
            try:
                self.queue.put(END, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return

    def _deliver(self, samples: np.ndarray, sample_rate: int, arrival_s: float) -> bool:
        """Queue one chunk; False when the source was stopped meanwhile."""
        chunk = Chunk(samples, sample_rate, arrival_s, discontinuity=self._lost)
        if self.lossless:
            while not self._stop.is_set():
                try:
                    self.queue.put(chunk, timeout=0.1)
                    break
                except queue.Full:
                    continue
            else:
                return False
        else:
            try:
                self.queue.put_nowait(chunk)
            except queue.Full:
                self._count_overflow("the queue is full (the consumer fell behind)")
                return not self._stop.is_set()
        self._lost = False
        self.stats.chunks += 1
        self.stats.frames += samples.shape[0]
        return not self._stop.is_set()

    def _count_overflow(self, why: str) -> None:
        with self._lock:
            self.stats.overflows += 1
        self._lost = True
        if self.stats.overflows == 1 or self.stats.overflows % 100 == 0:
            log.warning(
                "%s: audio lost (%s); %d overflow(s) so far", self.name, why, self.stats.overflows
            )


# --------------------------------------------------------------------------- file


class FileSource(Source):
    """A decoded file, as fast as the consumer takes it, or paced in real time (`realtime`)."""

    def __init__(
        self,
        path: str | Path,
        realtime: bool = False,
        chunk_ms: float = 100.0,
        queue_chunks: int = 64,
        max_seconds: float | None = None,
    ) -> None:
        super().__init__(queue_chunks)
        self.path = Path(path)
        self.realtime = realtime
        self.chunk_ms = float(chunk_ms)
        self.max_seconds = max_seconds
        self.name = f"file:{self.path}"
        # Decode now so a bad file is an error at start, with the file named.
        # No length limit: a long recording is a legitimate stream; rate and channels are checked.
        self._samples, self._rate = decode(self.path, max_duration_s=None)
        self.stats.sample_rate = self._rate
        self.stats.channels = int(self._samples.shape[1])
        self.stats.device = str(self.path)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "sample_rate": self._rate,
            "channels": self.stats.channels,
            "realtime": self.realtime,
        }

    def _run(self) -> None:
        self._set_state("running")
        samples = self._samples
        if self.max_seconds is not None:
            samples = samples[: round(self.max_seconds * self._rate)]
        chunk_frames = max(1, round(self.chunk_ms * self._rate / 1000.0))
        start = time.monotonic()
        for first in range(0, samples.shape[0], chunk_frames):
            piece = samples[first : first + chunk_frames]
            if self.realtime:
                due = start + (first + piece.shape[0]) / self._rate
                # One wait per chunk: a stop request ends it at once (Event.wait).
                while (wait := due - time.monotonic()) > 0:
                    if self._stop.wait(wait):
                        return
            if not self._deliver(piece, self._rate, time.monotonic()):
                return


# --------------------------------------------------------------------------- stdin


class StdinSource(Source):
    """Raw s16le PCM from a byte stream (stdin by default), e.g. `arecord -t raw -f S16_LE`."""

    def __init__(
        self,
        sample_rate: int,
        channels: int = 1,
        chunk_ms: float = 100.0,
        queue_chunks: int = 64,
        stream: BinaryIO | None = None,
        max_seconds: float | None = None,
    ) -> None:
        super().__init__(queue_chunks)
        if sample_rate <= 0:
            raise SourceError(f"stdin: expected a positive --rate in Hz, got {sample_rate}")
        if channels < 1:
            raise SourceError(f"stdin: expected at least 1 channel, got {channels}")
        self.sample_rate = int(sample_rate)
        self.channels = int(channels)
        self.chunk_frames = max(1, round(chunk_ms * sample_rate / 1000.0))
        self.max_seconds = max_seconds
        self._stream = stream
        self.name = "stdin"
        self.stats.sample_rate = self.sample_rate
        self.stats.channels = self.channels
        self.stats.device = "stdin (s16le)"

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "sample_rate": self.sample_rate,
            "channels": self.channels,
            "format": "s16le",
        }

    def stop(self, join_timeout_s: float = 0.1) -> None:
        # The reader may sit in a blocking read of a pipe that stays open; it is a daemon
        # thread, so do not wait for it long.
        super().stop(join_timeout_s)

    def _run(self) -> None:
        import sys

        stream = self._stream if self._stream is not None else sys.stdin.buffer
        frame_bytes = 2 * self.channels
        want = self.chunk_frames * frame_bytes
        limit_frames = (
            None if self.max_seconds is None else round(self.max_seconds * self.sample_rate)
        )
        pending = b""
        frames_done = 0
        self._set_state("running")
        # os.read on the descriptor, not the buffered reader: a daemon thread blocked in a
        # BufferedReader holds its lock, and Python aborts at exit when it finds it taken.
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            read = getattr(stream, "read1", stream.read)
        else:

            def read(size: int) -> bytes:
                return os.read(fd, size)

        while not self._stop.is_set():
            data = read(want)
            if not data:
                if pending:
                    log.warning(
                        "stdin: %d trailing byte(s) do not make a whole %d-channel frame; dropped",
                        len(pending),
                        self.channels,
                    )
                return
            pending += data
            usable = len(pending) - len(pending) % frame_bytes
            if usable == 0:
                continue
            block, pending = pending[:usable], pending[usable:]
            samples = pcm16_to_float(block, self.channels)
            if limit_frames is not None:
                samples = samples[: limit_frames - frames_done]
            frames_done += samples.shape[0]
            if samples.shape[0] and not self._deliver(samples, self.sample_rate, time.monotonic()):
                return
            if limit_frames is not None and frames_done >= limit_frames:
                return


# --------------------------------------------------------------------------- microphone


def import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as error:
        raise SourceError(
            "the microphone source needs PyAudio: expected `import pyaudio` to work, got "
            f"{error}. On a Pi: sudo apt install portaudio19-dev && pip install pyaudio==0.2.14"
        ) from error
    return pyaudio


def _supported_rates(pa: Any, pyaudio: Any, index: int, channels: int) -> list[int]:
    rates = []
    for rate in PREFERRED_RATES:
        try:
            if pa.is_format_supported(
                rate, input_device=index, input_channels=channels, input_format=pyaudio.paInt16
            ):
                rates.append(rate)
        except ValueError:
            continue
    return rates


def list_input_devices(pyaudio_module: Any = None) -> list[dict[str, Any]]:
    """Every capture device PortAudio sees: index, name, channels, default and supported rates."""
    pyaudio = pyaudio_module or import_pyaudio()
    with c_stderr_to_debug("PortAudio"):
        return _list_input_devices(pyaudio)


def _list_input_devices(pyaudio: Any) -> list[dict[str, Any]]:
    pa = pyaudio.PyAudio()
    try:
        try:
            default_index = int(pa.get_default_input_device_info()["index"])
        except OSError:
            default_index = -1
        devices = []
        for index in range(pa.get_device_count()):
            info = pa.get_device_info_by_index(index)
            channels = int(info.get("maxInputChannels", 0))
            if channels < 1:
                continue
            devices.append(
                {
                    "index": index,
                    "name": str(info.get("name", "")),
                    "max_input_channels": channels,
                    "default_sample_rate": int(info.get("defaultSampleRate", 0)),
                    "supported_rates": _supported_rates(pa, pyaudio, index, 1),
                    "default": index == default_index,
                }
            )
        return devices
    finally:
        pa.terminate()


def choose_device(devices: list[dict[str, Any]], wanted: str | int | None) -> dict[str, Any]:
    """Pick by index ("3"), by case-insensitive name substring, or the default input."""
    if not devices:
        raise SourceError(
            "no capture device: PortAudio lists no input devices; plug in a microphone "
            "(`clad-agent devices` lists what it sees) or listen to --source FILE or stdin"
        )
    if wanted is None or wanted == "":
        for device in devices:
            if device["default"]:
                return device
        return devices[0]
    text = str(wanted).strip()
    if text.isdigit():
        for device in devices:
            if device["index"] == int(text):
                return device
        raise SourceError(
            f"no input device with index {text}; inputs are "
            + ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        )
    matches = [d for d in devices if text.lower() in d["name"].lower()]
    if not matches:
        raise SourceError(
            f"no input device whose name contains {text!r}; inputs are "
            + ", ".join(f"{d['index']}: {d['name']}" for d in devices)
        )
    exact = [d for d in matches if d["name"].lower() == text.lower()]
    return (exact or matches)[0]


class MicSource(Source):
    """PyAudio capture in a thread; overflows counted, errors survived by backing off."""

    lossless = False

    def __init__(
        self,
        device: str | int | None = None,
        sample_rate: int | None = None,
        channels: int = 1,
        chunk_ms: float = 64.0,
        queue_chunks: int = 64,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_seconds: float | None = None,
        pyaudio_module: Any = None,
        sleep: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(queue_chunks)
        self.device = device
        self.requested_rate = sample_rate
        self.channels = int(channels)
        self.chunk_ms = float(chunk_ms)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_seconds = max_seconds
        self._pyaudio = pyaudio_module or import_pyaudio()
        self._sleep = sleep or self._stop.wait
        self.name = f"mic:{device}" if device not in (None, "") else "mic"

    @property
    def expected_rate(self) -> int | None:
        # The rate asked for, else the first rate tried at open (most devices take it).
        return int(self.requested_rate or PREFERRED_RATES[0])

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.name,
            "device": self.stats.device,
            "sample_rate": self.stats.sample_rate,
            "channels": self.channels,
        }

    def _open(self) -> tuple[Any, Any, int, int]:
        """(PyAudio, stream, rate, frames_per_buffer); raises SourceError/OSError."""
        pyaudio = self._pyaudio
        pa = pyaudio.PyAudio()
        try:
            devices = []
            try:
                default_index = int(pa.get_default_input_device_info()["index"])
            except OSError:
                default_index = -1
            for index in range(pa.get_device_count()):
                info = pa.get_device_info_by_index(index)
                if int(info.get("maxInputChannels", 0)) >= 1:
                    devices.append(
                        {
                            "index": index,
                            "name": str(info.get("name", "")),
                            "default": index == default_index,
                            "default_sample_rate": int(info.get("defaultSampleRate", 0)),
                        }
                    )
            device = choose_device(devices, self.device)
            if self.requested_rate:
                rate = int(self.requested_rate)
            else:
                rates = _supported_rates(pa, pyaudio, device["index"], self.channels)
                rate = rates[0] if rates else device["default_sample_rate"]
            frames = max(1, round(self.chunk_ms * rate / 1000.0))
            stream = pa.open(
                format=pyaudio.paInt16,
                channels=self.channels,
                rate=rate,
                input=True,
                input_device_index=device["index"],
                frames_per_buffer=frames,
            )
        except BaseException:
            pa.terminate()
            raise
        self.stats.device = f"{device['index']}: {device['name']}"
        self.stats.sample_rate = rate
        self.stats.channels = self.channels
        return pa, stream, rate, frames

    def _run(self) -> None:
        pyaudio = self._pyaudio
        backoff_s = self.backoff_initial_s
        frames_done = 0
        limit_frames: int | None = None
        first_open = True
        while not self._stop.is_set():
            try:
                with c_stderr_to_debug("PortAudio"):
                    pa, stream, rate, frames_per_read = self._open()
            except (OSError, SourceError) as error:
                self._fault(f"cannot open the input device ({error})", backoff_s)
                if self._sleep(backoff_s):
                    return
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
                continue
            if not first_open:
                self.stats.reopens += 1
                self._lost = True  # audio was missed while the device was away
            first_open = False
            if self.max_seconds is not None and limit_frames is None:
                limit_frames = round(self.max_seconds * rate)
            log.info(
                "%s: capturing from %s at %d Hz, %d channel(s)",
                self.name,
                self.stats.device,
                rate,
                self.channels,
            )
            self._set_state("running")
            try:
                while not self._stop.is_set():
                    want = frames_per_read
                    if limit_frames is not None:
                        want = min(want, limit_frames - frames_done)
                        if want <= 0:
                            return
                    try:
                        data = stream.read(want, exception_on_overflow=True)
                    except OSError as error:
                        if getattr(error, "errno", None) == pyaudio.paInputOverflowed:
                            # PortAudio lost input before this read; the read's data is gone too.
                            self._count_overflow("input overflow reported by the driver")
                            continue
                        raise
                    arrival_s = time.monotonic()
                    samples = pcm16_to_float(data, self.channels)
                    frames_done += samples.shape[0]
                    backoff_s = self.backoff_initial_s
                    if not self._deliver(samples, rate, arrival_s):
                        return
            except OSError as error:
                self._fault(f"stream error ({error})", backoff_s)
                if self._sleep(backoff_s):
                    return
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
            finally:
                _close_quietly(stream, pa)

    def _fault(self, what: str, backoff_s: float) -> None:
        repeated = what == self.stats.last_error
        self.stats.errors += 1
        self.stats.last_error = what
        self._set_state("backoff")
        # The same fault again (a mic still missing): one warning, then debug, not a flood.
        level = logging.DEBUG if repeated else logging.WARNING
        log.log(level, "%s: %s; retrying in %.1f s", self.name, what, backoff_s)


def _close_quietly(stream: Any, pa: Any) -> None:
    try:
        if stream.is_active():
            stream.stop_stream()
        stream.close()
    except OSError as error:  # an unplugged device may refuse even to close
        log.debug("closing the input stream: %s", error)
    pa.terminate()
