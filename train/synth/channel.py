"""The recording channel every demo-corpus file goes through, bona fide and spoof alike.

    speech -> room (synthetic RIR) -> + background noise at a random SNR
           -> microphone colouring (high-pass, peaking EQ) -> band limit (low-pass)
           -> level (random RMS, peak kept below full scale) -> small DC offset

All settings are drawn per file from one distribution, whatever the class, so that
the channel carries no information about the label.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft
from scipy.signal import butter, fftconvolve, sosfilt

from train.synth.vocoders import Settings


@functools.lru_cache(maxsize=1024)
def _butter(
    order: int, cutoff_hz: float | tuple[float, float], kind: str, sample_rate: int
) -> np.ndarray:
    """Butterworth second-order sections, cached (cut-offs are drawn on a grid)."""
    return butter(order, cutoff_hz, kind, fs=sample_rate, output="sos")


def _grid_hz(value_hz: float, step_hz: float) -> float:
    return float(round(value_hz / step_hz) * step_hz)


HIGHPASS_HZ = (50.0, 250.0, 10.0)  # range and grid step of the microphone high-pass
LOWPASS_HZ = (5000.0, 7800.0, 50.0)  # range and grid step of the band limit
LOWPASS_ORDERS = range(4, 11)


def warm_filter_cache(sample_rate: int) -> None:
    """Design every filter the channel can draw (about 0.5 s), so forked workers share them."""
    low, high, step = HIGHPASS_HZ
    for cutoff in np.arange(low, high + step / 2, step):
        _butter(2, float(cutoff), "highpass", sample_rate)
    low, high, step = LOWPASS_HZ
    for cutoff in np.arange(low, high + step / 2, step):
        for order in LOWPASS_ORDERS:
            _butter(order, float(cutoff), "lowpass", sample_rate)
    _butter(2, 2000.0, "lowpass", sample_rate)
    _butter(2, (300.0, 3400.0), "bandpass", sample_rate)


def room_impulse_response(
    sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """Direct path plus exponentially decaying noise, high frequencies decaying faster."""
    rt60_s = float(rng.uniform(0.1, 0.4))
    drr_db = float(rng.uniform(3.0, 15.0))
    predelay_samples = int(rng.integers(int(0.002 * sample_rate), int(0.012 * sample_rate)))
    length = int(min(rt60_s, 0.5) * sample_rate)
    t = np.arange(length) / sample_rate
    low = rng.standard_normal(length) * np.exp(-6.908 * t / rt60_s)
    high = rng.standard_normal(length) * np.exp(-6.908 * t / (0.5 * rt60_s))
    split = _butter(2, 2000.0, "lowpass", sample_rate)
    tail = sosfilt(split, low) + (high - sosfilt(split, high))
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    rir = np.zeros(predelay_samples + length)
    rir[0] = 1.0
    rir[predelay_samples:] += tail
    return rir, {"rt60_s": round(rt60_s, 3), "drr_db": round(drr_db, 2)}


def _peaking(frequency_hz: float, gain_db: float, q: float, sample_rate: int) -> np.ndarray:
    """RBJ audio-EQ-cookbook peaking biquad as one second-order section."""
    amplitude = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * np.pi * frequency_hz / sample_rate
    alpha = np.sin(w0) / (2.0 * q)
    b = np.array([1.0 + alpha * amplitude, -2.0 * np.cos(w0), 1.0 - alpha * amplitude])
    a = np.array([1.0 + alpha / amplitude, -2.0 * np.cos(w0), 1.0 - alpha / amplitude])
    return np.concatenate([b / a[0], a / a[0]])[None, :]


def _noise(kind: str, num_samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(num_samples)
    if kind == "white":
        return white
    if kind in ("pink", "brown"):
        fft_size = scipy.fft.next_fast_len(num_samples, real=True)
        spectrum = scipy.fft.rfft(white, fft_size)
        freqs = np.maximum(np.fft.rfftfreq(fft_size, 1.0 / sample_rate), 20.0)
        power = 1.0 if kind == "pink" else 2.0
        return scipy.fft.irfft(spectrum / freqs ** (power / 2.0), fft_size)[:num_samples]
    if kind == "babble":
        # several speech-band noises, each amplitude-modulated at a syllable rate
        total = np.zeros(num_samples)
        t = np.arange(num_samples) / sample_rate
        band = _butter(2, (300.0, 3400.0), "bandpass", sample_rate)
        for _ in range(int(rng.integers(3, 7))):
            rate_hz = rng.uniform(2.0, 6.0)
            envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rate_hz * t + rng.uniform(0, 2 * np.pi))
            total += sosfilt(band, rng.standard_normal(num_samples)) * envelope**2
        return total
    if kind == "hum":
        t = np.arange(num_samples) / sample_rate
        mains_hz = float(rng.choice([50.0, 60.0]))
        hum = sum(
            np.sin(2 * np.pi * mains_hz * h * t + rng.uniform(0, 2 * np.pi)) / h
            for h in range(1, 8)
        )
        return hum + 0.3 * white
    raise ValueError(f"unknown noise kind {kind!r}; expected white, pink, brown, babble or hum")


NOISE_KINDS = ("white", "pink", "brown", "babble", "hum")


def apply_channel(
    speech: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """One draw of the recording channel applied to `speech` (float64, any level)."""
    settings: Settings = {}
    num_samples = speech.size
    signal = speech
    if rng.random() < 0.5:
        rir, rir_settings = room_impulse_response(sample_rate, rng)
        signal = fftconvolve(signal, rir)[:num_samples]
        settings.update(rir_settings)
    else:
        settings["rt60_s"] = 0.0

    # Background noise at a random SNR, relative to the speech power where it is active.
    kind = str(rng.choice(NOISE_KINDS))
    snr_db = float(rng.uniform(20.0, 50.0))
    active = np.abs(signal) > 0.05 * np.max(np.abs(signal)) if signal.any() else slice(None)
    speech_power = float(np.mean(signal[active] ** 2)) if np.any(active) else 1.0
    noise = _noise(kind, num_samples, sample_rate, rng)
    noise *= np.sqrt(speech_power / 10.0 ** (snr_db / 10.0) / max(np.mean(noise**2), 1e-20))
    signal = signal + noise
    settings.update({"noise": kind, "snr_db": round(snr_db, 2)})

    # Microphone: high-pass, one to three peaking resonances, band limit.
    highpass_hz = _grid_hz(rng.uniform(HIGHPASS_HZ[0], HIGHPASS_HZ[1]), HIGHPASS_HZ[2])
    sections = [_butter(2, highpass_hz, "highpass", sample_rate)]
    for _ in range(int(rng.integers(1, 4))):
        frequency_hz = float(np.exp(rng.uniform(np.log(200.0), np.log(6000.0))))
        sections.append(
            _peaking(
                frequency_hz,
                float(rng.uniform(-6.0, 6.0)),
                float(rng.uniform(0.5, 2.5)),
                sample_rate,
            )
        )
    lowpass_hz = _grid_hz(rng.uniform(LOWPASS_HZ[0], LOWPASS_HZ[1]), LOWPASS_HZ[2])
    lowpass_order = int(rng.integers(LOWPASS_ORDERS.start, LOWPASS_ORDERS.stop))
    sections.append(_butter(lowpass_order, lowpass_hz, "lowpass", sample_rate))
    signal = sosfilt(np.concatenate(sections), signal)
    settings.update(
        {
            "highpass_hz": round(highpass_hz, 1),
            "lowpass_hz": round(lowpass_hz, 1),
            "lowpass_order": lowpass_order,
        }
    )

    # Level: a random RMS, peak kept below full scale, a small DC offset.
    rms_dbfs = float(rng.uniform(-36.0, -16.0))
    rms = np.sqrt(np.mean(signal**2))
    signal = signal * (10.0 ** (rms_dbfs / 20.0) / max(rms, 1e-12))
    peak = np.max(np.abs(signal))
    if peak > 0.95:
        signal *= 0.95 / peak
    dc = float(rng.uniform(-0.002, 0.002))
    settings.update({"rms_dbfs": round(rms_dbfs, 2), "dc": round(dc, 5)})
    return signal + dc, settings
