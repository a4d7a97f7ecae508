"""The one audio front end of clad-edge.

Training, calibration, evaluation, benchmarks and the live device all call these
functions, so the numbers a model sees are the same everywhere:

    decode -> downmix to mono -> resample to 16 kHz (resample_poly's polyphase filter) -> float32
           -> cut into windows (window_samples, hop_samples)
           -> silence gate on the raw window (RMS in dBFS below a floor)
           -> normalize each window (remove DC, scale the peak to 1.0)

Only numpy, scipy and soundfile are used: this module runs on the Pi. Resampling runs
scipy's compiled upfirdn kernel with resample_poly's filter designed in numpy
(`device.polyphase`), without importing scipy.signal (76 MiB and about a second); the kernel
loads only when audio is resampled, soundfile only when a file is decoded, so a 16 kHz
microphone or stdin stream needs neither.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import soundfile

SAMPLE_RATE = 16000
"""The model's sample rate in Hz. Every stage resamples to it."""

DEFAULT_SILENCE_FLOOR_DBFS = -50.0
"""Windows whose RMS (before normalization) is below this are silence, not scored."""

NORMALIZATION_RULE = "per-window: subtract the mean, then divide by the peak |x| (peak -> 1.0)"
"""Human-readable statement of `normalize_windows`, written into the model bundle."""

_PEAK_EPSILON = 1e-8

MIN_SAMPLE_RATE_HZ = 4_000
MAX_SAMPLE_RATE_HZ = 384_000
"""Files declaring a sample rate outside this range are refused before decoding."""

MAX_CHANNELS = 32
"""Files declaring more channels are refused before decoding."""

MAX_RESAMPLE_FACTOR = 16_000
"""Largest reduced up/down factor accepted for resampling to 16 kHz.

scipy's polyphase filter has 20 * max(up, down) + 1 taps, so its memory and time grow with
the reduced ratio, not the rate: 1,000,003 Hz (ratio 16000/1000003) took 905 MB and 3.3 s.
Every common rate reduces far below this (44100 -> 160/441, 48000 -> 1/3, 22050 -> 320/441).
"""

DEFAULT_MAX_DURATION_S = 300.0
"""Longest file (declared frames / rate) decoded by default; longer ones are refused unread."""

MAX_DECODED_BYTES = 128 * 1024 * 1024
"""Largest decoded float32 array (frames x channels x 4 bytes) under a duration limit:
300 s of 48 kHz stereo is 110 MiB; 300 s of 384 kHz x 32 channels (14 GiB) is refused."""


class AudioError(ValueError):
    """An audio file or buffer that cannot be used, with the file and the problem named."""

    def __init__(self, source: str | Path, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class AudioLimitError(AudioError):
    """A file refused from its header, before decoding: rate, channels or length out of bounds."""


def check_decode_limits(
    source: str | Path,
    sample_rate: int,
    channels: int,
    frames: int,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> None:
    """Raise AudioLimitError when a header declares audio too costly to decode and resample."""
    if not MIN_SAMPLE_RATE_HZ <= sample_rate <= MAX_SAMPLE_RATE_HZ:
        raise AudioLimitError(
            source,
            f"sample rate {sample_rate} Hz is out of range: expected "
            f"{MIN_SAMPLE_RATE_HZ}-{MAX_SAMPLE_RATE_HZ} Hz",
        )
    up, down = resample_ratio(sample_rate)
    if max(up, down) > MAX_RESAMPLE_FACTOR:
        raise AudioLimitError(
            source,
            f"sample rate {sample_rate} Hz resamples to {SAMPLE_RATE} Hz only by {up}/{down}, "
            f"a filter of {20 * max(up, down) + 1} taps; expected a rate whose ratio reduces to "
            f"at most {MAX_RESAMPLE_FACTOR} (44100, 48000, 22050, 96000 ... all do)",
        )
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioLimitError(source, f"{channels} channels declared: expected 1-{MAX_CHANNELS}")
    if max_duration_s is not None and frames > max_duration_s * sample_rate:
        raise AudioLimitError(
            source,
            f"{frames} frames at {sample_rate} Hz is {frames / sample_rate:.1f} s of audio: "
            f"expected at most {max_duration_s:g} s (the decode limit)",
        )
    decoded_bytes = frames * channels * 4
    if max_duration_s is not None and decoded_bytes > MAX_DECODED_BYTES:
        raise AudioLimitError(
            source,
            f"{frames} frames x {channels} channels decode to {decoded_bytes / 2**20:.0f} MiB: "
            f"expected at most {MAX_DECODED_BYTES / 2**20:.0f} MiB",
        )


@dataclass(frozen=True)
class AudioInfo:
    """What a file held before the front end touched it."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


# --------------------------------------------------------------------------- decoding


def _describe_bytes(head: bytes, size: int) -> str:
    """`head`: the first bytes of a file of `size` bytes."""
    if not size:
        return "the file is empty (0 bytes)"
    printable = "".join(chr(b) if 32 <= b < 127 else "." for b in head[:12])
    return f"{size} bytes starting with {printable!r}"


def _check_riff_complete(path: Path, handle: BinaryIO, size: int) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is shorter than its header says.

    libsndfile quietly reads what is there from a truncated WAV; a truncated file in a
    dataset is a broken file, so say so instead of scoring half of it. Reads only the chunk
    headers (seeking past the bodies), never the whole file.
    """
    handle.seek(0)
    head = handle.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RF64") or head[8:12] != b"WAVE":
        return
    if head[:4] == b"RF64":
        return  # sizes live in the ds64 chunk; libsndfile checks those itself
    offset = 12
    while offset + 8 <= size:
        handle.seek(offset)
        chunk_head = handle.read(8)
        chunk_id = chunk_head[:4]
        (chunk_bytes,) = struct.unpack("<I", chunk_head[4:8])
        body_start = offset + 8
        if chunk_id == b"data":
            available = size - body_start
            if chunk_bytes != 0xFFFFFFFF and available < chunk_bytes:
                raise AudioError(
                    path,
                    f"truncated WAV: header promises {chunk_bytes} bytes of audio, "
                    f"only {available} are present",
                )
            return
        offset = body_start + chunk_bytes + (chunk_bytes & 1)
    raise AudioError(path, "WAV file has no data chunk (truncated or not audio)")


def _soundfile() -> soundfile:
    import soundfile  # libsndfile through cffi: only when a file is decoded

    return soundfile


def read_info(path: str | Path) -> AudioInfo:
    """Sample rate, channels, frames and codec of a file, without decoding it."""
    path = Path(path)
    sf = _soundfile()
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as error:
        raise AudioError(path, f"not a readable audio file ({error})") from error
    return AudioInfo(
        path=str(path),
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        format=str(info.format),
        subtype=str(info.subtype),
    )


def decode(
    path: str | Path, max_duration_s: float | None = DEFAULT_MAX_DURATION_S
) -> tuple[np.ndarray, int]:
    """Decode any file libsndfile reads (WAV of any sample format, FLAC, OGG, MP3...).

    The container is recognised from the bytes, not the file name, so a ".wav" that
    holds FLAC loads. Returns float32 samples shaped (frames, channels) and the rate.
    The header is checked first (`check_decode_limits`): a file declaring an absurd rate,
    channel count or more than `max_duration_s` (None: no limit) is refused unread.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(12)
            if size:
                _check_riff_complete(path, handle, size)
    except FileNotFoundError as error:
        raise AudioError(path, "file not found") from error
    except IsADirectoryError as error:
        raise AudioError(path, "expected an audio file, got a directory") from error
    except OSError as error:
        raise AudioError(path, f"cannot read the file ({error.strerror})") from error
    if not size:
        raise AudioError(path, "the file is empty (0 bytes); expected audio")
    sf = _soundfile()
    try:
        # By path, not from a BytesIO: soundfile's virtual-I/O callbacks need write+execute
        # memory (cffi), which MemoryDenyWriteExecute in the systemd unit refuses.
        with sf.SoundFile(str(path)) as handle:
            sample_rate = int(handle.samplerate)
            check_decode_limits(
                path, sample_rate, int(handle.channels), int(handle.frames), max_duration_s
            )
            # What sf.read does after opening: every declared frame, no more.
            samples = handle.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioError(
            path,
            f"not a readable audio file: expected WAV, FLAC, OGG or MP3, got "
            f"{_describe_bytes(head, size)} ({error})",
        ) from error
    return _validated(samples, sample_rate, path), sample_rate


def _validated(samples: np.ndarray, sample_rate: int, source: str | Path) -> np.ndarray:
    if sample_rate <= 0:
        raise AudioError(source, f"expected a positive sample rate, got {sample_rate} Hz")
    if samples.size == 0 or samples.shape[0] == 0:
        raise AudioError(
            source, f"no audio samples: 0 frames at {sample_rate} Hz (expected at least one)"
        )
    finite = np.isfinite(samples)
    if not finite.all():
        bad = int(samples.size - np.count_nonzero(finite))
        nan = int(np.count_nonzero(np.isnan(samples)))
        raise AudioError(
            source,
            f"{bad} of {samples.size} samples are not finite ({nan} NaN, {bad - nan} infinite); "
            "expected real-valued audio",
        )
    return samples


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average the channels of a (frames, channels) array into (frames,)."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise ValueError(
            f"expected (frames,) or (frames, channels) audio, got shape {samples.shape}"
        )
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


# --------------------------------------------------------------------------- resampling


def resample_ratio(from_rate: int, to_rate: int = SAMPLE_RATE) -> tuple[int, int]:
    """(up, down) for resample_poly, reduced by their gcd."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} -> {to_rate} Hz")
    g = math.gcd(int(from_rate), int(to_rate))
    return int(to_rate) // g, int(from_rate) // g


def resample(samples: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono audio as scipy.signal.resample_poly(x, up, down) does (Kaiser window,
    beta 5; float32 results equal to within 1 ulp, most samples bit for bit), through the
    same streaming filter a live source uses."""
    up, down = resample_ratio(from_rate, to_rate)
    if up == down == 1:
        return np.asarray(samples, dtype=np.float32)
    resampler = StreamingResampler(from_rate, to_rate)
    signal = np.asarray(samples, dtype=np.float64).reshape(-1)
    return np.concatenate([resampler.process(signal), resampler.flush()])


class StreamingResampler:
    """Chunk-by-chunk resampling that gives what `resample()` gives on the whole signal.

    `resample_poly` is one FIR filter applied with `upfirdn` to the zero-padded
    signal. This class applies the very same filter to a buffer that keeps just the
    history it needs, and emits each output sample once all its inputs have arrived,
    so a live microphone sees the numbers a file would. `flush()` pads with zeros
    like `resample_poly` does at the end.
    """

    def __init__(self, from_rate: int, to_rate: int = SAMPLE_RATE) -> None:
        self.from_rate = int(from_rate)
        self.to_rate = int(to_rate)
        self.up, self.down = resample_ratio(from_rate, to_rate)
        self._identity = self.up == self.down == 1
        self._identity_outputs = 0
        if self._identity:
            return  # 16 kHz in: no filter, and no kernel is loaded
        from device.polyphase import Upfirdn, lowpass_taps

        # The filter scipy.signal.resample_poly builds (scipy >= 1.4, window=("kaiser", 5.0)).
        half_len = 10 * max(self.up, self.down)
        taps = lowpass_taps(self.up, self.down)
        n_pre_pad = self.down - half_len % self.down
        self._taps = np.concatenate([np.zeros(n_pre_pad), taps])
        self._upfirdn = Upfirdn(self._taps, self.up, self.down)
        self._n_pre_remove = (half_len + n_pre_pad) // self.down
        self._buffer = np.zeros(0, dtype=np.float64)
        self._buffer_start = 0  # absolute input index of _buffer[0]; always a multiple of down
        self._inputs_seen = 0
        self._outputs_done = 0  # output samples emitted so far

    def _first_input_needed(self, output_index: int) -> int:
        """Lowest input sample that output `output_index` depends on."""
        i_full = output_index + self._n_pre_remove
        lowest_upsampled = i_full * self.down - (len(self._taps) - 1)
        return max(0, -(-lowest_upsampled // self.up))

    def _last_input_needed(self, output_index: int) -> int:
        i_full = output_index + self._n_pre_remove
        return (i_full * self.down) // self.up

    def _emit(self, last_output: int) -> np.ndarray:
        """Outputs [_outputs_done, last_output) from the buffer."""
        if last_output <= self._outputs_done:
            return np.zeros(0, dtype=np.float32)
        full = self._upfirdn(self._buffer)
        offset = self._buffer_start * self.up // self.down  # full-signal index of full[0]
        start = self._outputs_done + self._n_pre_remove - offset
        stop = last_output + self._n_pre_remove - offset
        out = full[start:stop]
        self._outputs_done = last_output
        # Drop input no longer needed, keeping the buffer start on a multiple of `down`.
        keep_from = self._first_input_needed(self._outputs_done)
        keep_from -= keep_from % self.down
        if keep_from > self._buffer_start:
            self._buffer = self._buffer[keep_from - self._buffer_start :]
            self._buffer_start = keep_from
        return out.astype(np.float32)

    @property
    def outputs_emitted(self) -> int:
        """Output samples returned so far by `process` (and `flush`)."""
        return self._identity_outputs if self._identity else self._outputs_done

    def outputs_after(self, more_inputs: int) -> int:
        """How many outputs `process` will have emitted in all once `more_inputs` more
        samples are fed (without feeding them): lets a caller resample only when it needs
        the samples, in one call for many chunks, with the same numbers."""
        if self._identity:
            return self._identity_outputs + int(more_inputs)
        inputs = self._inputs_seen + int(more_inputs)
        if inputs == 0:
            return self._outputs_done
        bound = ((inputs - 1) * self.up + self.up - 1) // self.down - self._n_pre_remove
        return max(self._outputs_done, bound + 1)

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed mono samples at `from_rate`; returns the 16 kHz samples now complete."""
        if self._identity:
            out = np.asarray(chunk, dtype=np.float32).reshape(-1)
            self._identity_outputs += out.size
            return out
        chunk = np.asarray(chunk, dtype=np.float64).reshape(-1)
        self._buffer = np.concatenate([self._buffer, chunk])
        self._inputs_seen += chunk.size
        # The largest output whose last needed input has arrived.
        last_ready = self._outputs_done
        # Invert _last_input_needed: (m + pre) * down // up <= inputs_seen - 1.
        bound = ((self._inputs_seen - 1) * self.up + self.up - 1) // self.down - self._n_pre_remove
        last_ready = max(last_ready, bound + 1)
        return self._emit(last_ready)

    def flush(self) -> np.ndarray:
        """The remaining outputs, as resample_poly computes them at the end of a signal."""
        if self._identity:
            return np.zeros(0, dtype=np.float32)
        total = -(-self._inputs_seen * self.up // self.down)  # ceil(n * up / down)
        self._buffer = np.concatenate([self._buffer, np.zeros(len(self._taps))])
        return self._emit(total)


# --------------------------------------------------------------------------- loading


def load_audio(
    path: str | Path,
    sample_rate: int = SAMPLE_RATE,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> np.ndarray:
    """Decode a file to mono float32 at `sample_rate` (16 kHz): the model's input signal."""
    samples, file_rate = decode(path, max_duration_s)
    mono = to_mono(samples)
    return resample(mono, file_rate, sample_rate)


def pcm16_to_float(data: bytes, channels: int = 1) -> np.ndarray:
    """Raw little-endian int16 PCM (a microphone, stdin) to (frames, channels) float32."""
    if channels < 1:
        raise ValueError(f"expected at least 1 channel, got {channels}")
    frame_bytes = 2 * channels
    usable = len(data) - len(data) % frame_bytes
    pcm = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels)


# --------------------------------------------------------------------------- windows


def window_starts(num_samples: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """Start index of every window of a signal of `num_samples`.

    Windows start every `hop_samples`; when the last one stops short of the end, one
    more window is aligned to the end so the tail is scored too. A signal shorter than
    one window gives one window at 0 (zero-padded by `frame`).
    """
    if window_samples <= 0 or hop_samples <= 0:
        raise ValueError(
            f"window and hop must be positive, got window_samples={window_samples}, "
            f"hop_samples={hop_samples}"
        )
    if num_samples <= window_samples:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, num_samples - window_samples + 1, hop_samples, dtype=np.int64)
    if starts[-1] + window_samples < num_samples:
        starts = np.append(starts, num_samples - window_samples)
    return starts


def frame(signal: np.ndarray, window_samples: int, hop_samples: int) -> np.ndarray:
    """Cut a mono signal into (windows, window_samples) float32, zero-padding a short one."""
    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    if signal.size < window_samples:
        signal = np.pad(signal, (0, window_samples - signal.size))
    starts = window_starts(signal.size, window_samples, hop_samples)
    index = starts[:, None] + np.arange(window_samples)[None, :]
    return signal[index]


def window_rms_dbfs(windows: np.ndarray) -> np.ndarray:
    """RMS level of each window (last axis) in dB relative to full scale (1.0)."""
    windows = np.asarray(windows, dtype=np.float64)
    rms = np.sqrt(np.mean(np.square(windows), axis=-1))
    return (20.0 * np.log10(np.maximum(rms, 1e-10))).astype(np.float32)


def is_silent(windows: np.ndarray, floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS) -> np.ndarray:
    """True where a raw (un-normalized) window is below the energy floor."""
    return window_rms_dbfs(windows) < floor_dbfs


def normalize_windows(windows: np.ndarray) -> np.ndarray:
    """Per window: subtract the mean, scale the peak to 1.0 (see NORMALIZATION_RULE).

    Full-int8 input has a step of about 1/128: un-normalized quiet speech would
    quantize to zeros. Digital silence stays all zeros.
    """
    windows = np.asarray(windows, dtype=np.float32)
    centred = windows - windows.mean(axis=-1, keepdims=True, dtype=np.float64).astype(np.float32)
    peak = np.max(np.abs(centred), axis=-1, keepdims=True)
    return (centred / np.maximum(peak, _PEAK_EPSILON)).astype(np.float32)


@dataclass(frozen=True)
class Windows:
    """A signal cut into model windows: what every scorer consumes."""

    normalized: np.ndarray  # (windows, window_samples) float32, peak 1.0
    silent: np.ndarray  # (windows,) bool, below the energy floor before normalization
    rms_dbfs: np.ndarray  # (windows,) float32
    starts: np.ndarray  # (windows,) int64 sample index at 16 kHz
    num_samples: int  # length of the 16 kHz signal

    @property
    def duration_s(self) -> float:
        return self.num_samples / SAMPLE_RATE


def windows_from_signal(
    signal: np.ndarray,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
) -> Windows:
    """16 kHz mono signal -> normalized windows with their silence flags."""
    signal = np.asarray(signal, dtype=np.float32).reshape(-1)
    raw = frame(signal, window_samples, hop_samples)
    rms = window_rms_dbfs(raw)
    return Windows(
        normalized=normalize_windows(raw),
        silent=rms < silence_floor_dbfs,
        rms_dbfs=rms,
        starts=window_starts(max(signal.size, window_samples), window_samples, hop_samples),
        num_samples=int(signal.size),
    )


def windows_from_file(
    path: str | Path,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
) -> Windows:
    """Decode, downmix, resample and window a file, exactly as the device does."""
    return windows_from_signal(load_audio(path), window_samples, hop_samples, silence_floor_dbfs)


def windows_for_scoring(
    path: str | Path,
    window_samples: int,
    hop_samples: int,
    silence_floor_dbfs: float = DEFAULT_SILENCE_FLOOR_DBFS,
    max_duration_s: float | None = DEFAULT_MAX_DURATION_S,
) -> Windows:
    """`windows_from_file` (the same numbers) for a file to be scored: bounded decode, and a
    file shorter than one window is refused as "too short" instead of scored as padding."""
    signal = load_audio(path, SAMPLE_RATE, max_duration_s)
    if signal.size < window_samples:
        raise AudioError(
            path,
            f"too short: {signal.size} samples at {SAMPLE_RATE} Hz "
            f"({signal.size / SAMPLE_RATE:.4f} s); expected at least one window of "
            f"{window_samples} samples ({window_samples / SAMPLE_RATE:g} s)",
        )
    return windows_from_signal(signal, window_samples, hop_samples, silence_floor_dbfs)
