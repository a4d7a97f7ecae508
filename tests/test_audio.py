"""The shared audio front end (device/audio.py), with real files written by the tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device import audio
from device.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioLimitError,
    StreamingResampler,
    check_decode_limits,
    decode,
    frame,
    is_silent,
    load_audio,
    normalize_windows,
    resample,
    window_starts,
    windows_for_scoring,
    windows_from_file,
    windows_from_signal,
)
from tests.hostile_audio import wav_claiming

TONE_HZ = 1000.0


def tone(rate: int, seconds: float = 1.0, freq_hz: float = TONE_HZ, amplitude: float = 0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def spectrum_db(signal: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    windowed = signal * np.hanning(signal.size)
    magnitude = np.abs(np.fft.rfft(windowed))
    freqs = np.fft.rfftfreq(signal.size, 1.0 / rate)
    return freqs, 20 * np.log10(magnitude / magnitude.max() + 1e-12)


@pytest.mark.parametrize("rate", [8000, 22050, 24000, 44100, 48000, 96000])
def test_tone_resamples_to_16k_with_peak_at_1khz(tmp_path: Path, rate: int) -> None:
    path = tmp_path / f"tone_{rate}.wav"
    sf.write(path, tone(rate), rate, subtype="PCM_16")
    signal = load_audio(path)
    assert signal.dtype == np.float32
    assert signal.size == int(np.ceil(rate * 1.0 * SAMPLE_RATE / rate))
    body = signal[1000:-1000]  # away from the filter's edge transients
    freqs, level_db = spectrum_db(body, SAMPLE_RATE)
    assert abs(freqs[np.argmax(level_db)] - TONE_HZ) < 5.0
    # Everything more than 100 Hz from the tone (aliases, images) is at least 60 dB down.
    far = np.abs(freqs - TONE_HZ) > 100.0
    assert level_db[far].max() < -60.0
    # Amplitude is preserved through the polyphase filter.
    assert np.isclose(np.sqrt(2) * body.std(), 0.5, rtol=0.02)


def test_tone_above_new_nyquist_is_removed(tmp_path: Path) -> None:
    rate = 48000
    path = tmp_path / "high.wav"
    sf.write(path, tone(rate, freq_hz=11000.0), rate, subtype="FLOAT")
    signal = load_audio(path)[1000:-1000]
    # An 11 kHz tone would alias to 5 kHz at 16 kHz; the anti-alias filter removes it.
    assert np.sqrt(np.mean(signal**2)) < 0.5 / np.sqrt(2) * 10 ** (-50 / 20)


@pytest.mark.parametrize("channels", [2, 6])
def test_multichannel_downmixes_to_mean(tmp_path: Path, channels: int) -> None:
    base = tone(SAMPLE_RATE)
    gains = np.linspace(0.2, 1.0, channels, dtype=np.float32)
    data = base[:, None] * gains[None, :]
    path = tmp_path / f"multi_{channels}.wav"
    sf.write(path, data, SAMPLE_RATE, subtype="FLOAT")
    mono = load_audio(path)
    np.testing.assert_allclose(mono, base * gains.mean(), atol=1e-6)


def test_stereo_with_opposite_channels_cancels(tmp_path: Path) -> None:
    base = tone(SAMPLE_RATE)
    path = tmp_path / "opposite.wav"
    sf.write(path, np.stack([base, -base], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert np.abs(load_audio(path)).max() < 1e-7


FORMATS = [
    # (file name, soundfile format, subtype, tolerance as max abs error vs the float signal)
    ("int16.wav", "WAV", "PCM_16", 1.0 / 32768),
    ("int24.wav", "WAV", "PCM_24", 1.0 / 2**23),
    ("int32.wav", "WAV", "PCM_32", 1.0 / 2**31 * 2),
    ("float.wav", "WAV", "FLOAT", 1e-7),
    ("flac.flac", "FLAC", "PCM_16", 1.0 / 32768),
    ("flac24.flac", "FLAC", "PCM_24", 1.0 / 2**23),
    ("ogg.ogg", "OGG", "VORBIS", 0.05),
    ("mp3.mp3", "MP3", "MPEG_LAYER_III", 0.05),
    ("flac_inside.wav", "FLAC", "PCM_16", 1.0 / 32768),  # a .wav that actually holds FLAC
]


@pytest.mark.parametrize(("name", "fmt", "subtype", "tolerance"), FORMATS)
def test_formats_decode_to_the_same_signal(
    tmp_path: Path, name: str, fmt: str, subtype: str, tolerance: float
) -> None:
    rate = 16000
    reference = tone(rate, seconds=1.0, freq_hz=440.0, amplitude=0.4)
    path = tmp_path / name
    sf.write(path, reference, rate, format=fmt, subtype=subtype)
    samples, file_rate = decode(path)
    assert file_rate == rate
    assert samples.dtype == np.float32 and samples.shape[1] == 1
    decoded = samples[:, 0]
    if fmt in ("MP3", "OGG"):
        # Lossy codecs: libsndfile removes the encoder delay, so the signals line up;
        # compare away from the edges where the codec's frames ramp in and out.
        assert decoded.size == reference.size
        body = slice(2000, -2000)
        assert np.max(np.abs(decoded[body] - reference[body])) < tolerance
    else:
        assert decoded.size == reference.size
        assert np.max(np.abs(decoded - reference)) <= tolerance


def test_flac_inside_wav_is_really_flac(tmp_path: Path) -> None:
    path = tmp_path / "disguised.wav"
    sf.write(path, tone(16000), 16000, format="FLAC")
    assert path.read_bytes()[:4] == b"fLaC"
    assert audio.read_info(path).format == "FLAC"
    assert load_audio(path).size == 16000


# --------------------------------------------------------------------------- bad input


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: the file is empty \(0 bytes\)"):
        load_audio(path)


def test_header_only_wav_has_no_samples(tmp_path: Path) -> None:
    path = tmp_path / "zero_frames.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"zero_frames\.wav: no audio samples: 0 frames"):
        load_audio(path)


def test_truncated_wav_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "truncated.wav"
    sf.write(path, tone(16000), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AudioError, match=r"truncated\.wav: truncated WAV: header promises 32000"):
        load_audio(path)


def test_truncated_flac_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "truncated.flac"
    rng = np.random.default_rng(0)
    sf.write(path, rng.uniform(-0.5, 0.5, 48000).astype(np.float32), 16000, format="FLAC")
    data = path.read_bytes()
    path.write_bytes(data[:60])  # the STREAMINFO header survives, the frames do not
    with pytest.raises(AudioError, match=r"truncated\.flac"):
        load_audio(path)


def test_non_audio_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not audio\n")
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file: expected WAV"):
        load_audio(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nowhere\.flac: file not found"):
        load_audio(tmp_path / "nowhere.flac")


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "NaN"), (np.inf, "infinite")])
def test_non_finite_samples_are_refused(tmp_path: Path, bad: float, word: str) -> None:
    data = tone(16000)
    data[100:110] = bad
    path = tmp_path / f"bad_{word}.wav"
    sf.write(path, data, 16000, subtype="FLOAT")
    expected = "10 NaN, 0 infinite" if word == "NaN" else "0 NaN, 10 infinite"
    with pytest.raises(AudioError, match=rf"10 of 16000 samples are not finite \({expected}\)"):
        load_audio(path)


# --------------------------------------------------------------------------- windows


def test_window_starts_cover_the_tail() -> None:
    assert window_starts(16000, 16000, 8000).tolist() == [0]
    assert window_starts(10000, 16000, 8000).tolist() == [0]
    assert window_starts(32000, 16000, 8000).tolist() == [0, 8000, 16000]
    # 35000 samples: regular windows end at 32000, so one more is aligned to the end.
    assert window_starts(35000, 16000, 8000).tolist() == [0, 8000, 16000, 19000]


def test_frame_pads_a_short_signal() -> None:
    windows = frame(np.ones(100, dtype=np.float32), 400, 200)
    assert windows.shape == (1, 400)
    assert windows[0, :100].sum() == 100 and windows[0, 100:].sum() == 0


def test_normalize_sets_peak_one_and_removes_dc() -> None:
    rng = np.random.default_rng(1)
    windows = (0.01 * rng.standard_normal((3, 1000)) + 0.2).astype(np.float32)
    out = normalize_windows(windows)
    np.testing.assert_allclose(np.abs(out).max(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-3)
    # Quiet and loud copies of the same window normalize to the same thing.
    np.testing.assert_allclose(normalize_windows(windows * 0.001), out, atol=1e-5)
    assert not np.any(normalize_windows(np.zeros((1, 50), dtype=np.float32)))


def test_silence_floor_separates_silence_from_quiet_speech() -> None:
    rng = np.random.default_rng(2)
    quiet = 10 ** (-40 / 20) * rng.standard_normal((1, 16000))  # -40 dBFS: signal
    hiss = 10 ** (-65 / 20) * rng.standard_normal((1, 16000))  # -65 dBFS: silence
    digital = np.zeros((1, 16000))
    assert is_silent(np.concatenate([quiet, hiss, digital])).tolist() == [False, True, True]


def test_windows_from_file_matches_signal_path(tmp_path: Path) -> None:
    rate = 44100
    rng = np.random.default_rng(3)
    data = (0.3 * rng.standard_normal(int(rate * 2.3))).astype(np.float32)
    data[: rate // 2] = 0.0  # half a second of leading digital silence
    path = tmp_path / "mix.flac"
    sf.write(path, data, rate, format="FLAC", subtype="PCM_24")
    windows = windows_from_file(path, 8000, 4000)
    signal = resample(decode(path)[0][:, 0], rate)
    reference = windows_from_signal(signal, 8000, 4000)
    np.testing.assert_array_equal(windows.normalized, reference.normalized)
    assert windows.silent[0] and not windows.silent[-1]
    assert windows.starts.tolist() == window_starts(signal.size, 8000, 4000).tolist()
    assert np.isclose(windows.duration_s, 2.3, atol=1e-3)


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_streaming_resampler_equals_whole_file_resample(rate: int) -> None:
    rng = np.random.default_rng(rate)
    signal = rng.uniform(-1, 1, int(rate * 1.7)).astype(np.float32)
    reference = resample(signal, rate)
    streamer = StreamingResampler(rate)
    pieces, position = [], 0
    while position < signal.size:
        size = int(rng.integers(1, 3000))
        pieces.append(streamer.process(signal[position : position + size]))
        position += size
    pieces.append(streamer.flush())
    streamed = np.concatenate(pieces)
    assert streamed.size == reference.size
    np.testing.assert_array_equal(streamed, reference)


def _python_stdout(code: str) -> str:
    """What `python -c code` prints, stripped, in a fresh process (its imports start empty)."""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 24000, 32000, 44100, 48000, 96000, 12345])
def test_resample_is_scipy_resample_poly(rate: int) -> None:
    """The numpy-designed filter through scipy's kernel gives resample_poly's float32 samples:
    taps within 1e-15 of firwin's, every sample within 1 ulp (all equal at these rates)."""
    from scipy.signal import firwin, resample_poly

    from device.polyphase import lowpass_taps

    up, down = audio.resample_ratio(rate)
    ours_taps = lowpass_taps(up, down)
    scipy_taps = firwin(20 * max(up, down) + 1, 1 / max(up, down), window=("kaiser", 5.0)) * up
    assert np.abs(ours_taps - scipy_taps).max() < 1e-15
    signal = np.random.default_rng(rate).uniform(-1, 1, int(rate * 1.3)).astype(np.float32)
    ours = resample(signal, rate)
    reference = resample_poly(signal.astype(np.float64), up, down).astype(np.float32)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    np.testing.assert_array_max_ulp(ours, reference, maxulp=1)


def test_resampling_loads_only_scipys_kernel() -> None:
    """A 48 kHz stream resamples without `import scipy.signal` (76 MiB, about a second)."""
    code = (
        "import sys, numpy as np\n"
        "from device.audio import StreamingResampler\n"
        "from device.polyphase import kernel_source\n"
        "out = StreamingResampler(48000).process(np.ones(24000))\n"
        "print(out.size, 'scipy.signal' in sys.modules, kernel_source())\n"
    )
    size, imported, source = _python_stdout(code).split(" ", 2)
    assert imported == "False", "scipy.signal was imported to resample"
    assert source.startswith("scipy.signal._upfirdn_apply (scipy's compiled upfirdn")
    assert int(size) > 7900


def test_resampling_falls_back_to_scipy_signal_when_the_kernel_moved() -> None:
    """A scipy release that moved the private kernel is simulated by hiding its file (no
    extension suffix matches; no such scipy can be installed here): the public upfirdn runs
    instead, with the same samples, and kernel_source() says why."""
    code = (
        "import importlib.machinery, sys, numpy as np\n"
        "importlib.machinery.EXTENSION_SUFFIXES[:] = []\n"
        "from device.audio import resample\n"
        "from device.polyphase import kernel_source\n"
        "x = np.random.default_rng(3).uniform(-1, 1, 44100).astype(np.float32)\n"
        "ours = resample(x, 44100)\n"
        "from scipy.signal import resample_poly\n"
        "ref = resample_poly(x.astype(np.float64), 160, 441).astype(np.float32)\n"
        "print(int((ours != ref).sum()), kernel_source())\n"
    )
    differing, source = _python_stdout(code).split(" ", 1)
    assert differing == "0"
    assert source.startswith("scipy.signal.upfirdn (the private kernel did not load: ImportError")


def test_front_end_imports_no_desktop_packages() -> None:
    code = (
        "import sys, device.audio, device.bundle\n"
        "bad = [m for m in ('torch', 'tensorflow', 'onnx', 'onnxruntime', 'train', 'convert')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    assert _python_stdout(code) == ""


# --------------------------------------------------------------------------- bounded decode


@pytest.mark.parametrize("rate_hz", [4_000_037, 1_000_003, 2**31 - 1, 3_999])
def test_an_absurd_sample_rate_is_refused_before_decoding(tmp_path: Path, rate_hz: int) -> None:
    path = wav_claiming(tmp_path / "claim.wav", rate_hz)
    with pytest.raises(AudioLimitError) as caught:
        decode(path)
    assert f"sample rate {rate_hz} Hz is out of range: expected 4000-384000 Hz" in str(caught.value)


def test_a_rate_that_needs_a_huge_resampling_filter_is_refused(tmp_path: Path) -> None:
    path = wav_claiming(tmp_path / "odd.wav", 44_101)  # gcd with 16000 is 1: 16000/44101
    with pytest.raises(AudioLimitError, match=r"only by 16000/44101.*at most 16000"):
        load_audio(path)
    assert load_audio(wav_claiming(tmp_path / "cd.wav", 44_100)).size > 0  # 160/441 is fine


def test_too_many_channels_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "many.wav"
    sf.write(path, np.zeros((1600, 33), dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioLimitError, match="33 channels declared: expected 1-32"):
        decode(path)


def test_a_long_file_is_refused_unread_and_the_limit_is_a_setting(tmp_path: Path) -> None:
    # A small FLAC of silence that declares 400 s: the default limit (300 s) refuses it.
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(400 * 8000, dtype=np.float32), 8000, format="FLAC")
    assert path.stat().st_size < 200_000
    with pytest.raises(AudioLimitError, match=r"400\.0 s of audio: expected at most 300 s"):
        decode(path)
    samples, rate = decode(path, max_duration_s=None)
    assert samples.shape == (400 * 8000, 1) and rate == 8000
    with pytest.raises(AudioLimitError, match="expected at most 100 s"):
        decode(path, max_duration_s=100)


def test_bounded_decode_gives_the_samples_soundfile_gives(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    rng = np.random.default_rng(3)
    sf.write(path, rng.uniform(-0.5, 0.5, (44100, 2)), 44100, format="FLAC")
    samples, rate = decode(path)
    expected, expected_rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == expected_rate
    np.testing.assert_array_equal(samples, expected)


def test_a_file_shorter_than_one_window_is_too_short_not_silence(tmp_path: Path) -> None:
    path = tmp_path / "ten.wav"
    sf.write(path, np.zeros(10, dtype=np.float32), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match=r"too short: 10 samples .* at least one window of 4000"):
        windows_for_scoring(path, 4000, 2000)
    long_enough = tmp_path / "ok.wav"
    sf.write(long_enough, np.random.default_rng(1).uniform(-0.3, 0.3, 30000), 48000)
    got = windows_for_scoring(long_enough, 4000, 2000)
    want = windows_from_file(long_enough, 4000, 2000)
    np.testing.assert_array_equal(got.normalized, want.normalized)
    np.testing.assert_array_equal(got.silent, want.silent)


def test_many_channels_at_a_high_rate_are_refused_by_decoded_size() -> None:
    # The header rule alone (a real file this size would take half a GB of test disk):
    # 20 s of 384 kHz x 32 channels is within the duration limit but 938 MiB decoded.
    with pytest.raises(AudioLimitError, match=r"decode to 938 MiB: expected at most 128 MiB"):
        check_decode_limits("wide.wav", 384_000, 32, 20 * 384_000)
    check_decode_limits("cd.wav", 48_000, 2, 300 * 48_000)  # 300 s of 48 kHz stereo is fine
