"""Vocoder copy-synthesis systems: the spoofing attacks of the demo corpus.

Each system analyses a clean 16 kHz utterance and resynthesizes it from its own
parameters, with settings drawn per utterance from the system's ranges, so that no
two files of a system share exactly the same artefacts and some are subtler than
others. Every system returns a signal of the input's length; the corpus then sends
it through the same recording channel as bona fide speech.

- A01 WORLD: pyworld analysis (DIO + StoneMask F0, CheapTrick envelope, D4C
  aperiodicity) and synthesis; the envelope is sometimes coded to fewer dimensions.
- A02 Griffin-Lim: magnitude STFT -> mel filterbank (log-mel with added estimation
  noise) -> pseudo-inverse -> fast Griffin-Lim phase reconstruction.
- A03 LPC: frame-wise linear prediction with a pulse-train / noise excitation mixed
  with a share of the true prediction residual (more residual = subtler).
- A04 harmonic-plus-noise: sum of harmonics of the F0 with amplitudes read from the
  spectral envelope up to a maximum voiced frequency, shaped noise above it.
  Appears only in eval, as the unseen attack.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numpy.lib.stride_tricks import sliding_window_view
from scipy.linalg import pinv
from scipy.signal import lfilter

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pyworld 0.3.5 imports the deprecated pkg_resources
    import pyworld

Settings = dict[str, float | int | str]
Vocoder = Callable[[np.ndarray, int, np.random.Generator], tuple[np.ndarray, Settings]]

_F0_FLOOR_HZ = 60.0
_F0_CEIL_HZ = 500.0


@dataclass(frozen=True)
class SpoofSystem:
    """One attack: its protocol id, a short name, what it does, and where it appears."""

    system_id: str
    name: str
    description: str
    splits: tuple[str, ...]
    vocoder: Vocoder


# --------------------------------------------------------------------------- shared numerics


def _fit_length(signal: np.ndarray, num_samples: int) -> np.ndarray:
    if signal.size >= num_samples:
        return signal[:num_samples]
    return np.pad(signal, (0, num_samples - signal.size))


def _f0(x: np.ndarray, sample_rate: int, frame_period_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """F0 contour (Hz, 0 = unvoiced) and frame times (s): DIO refined by StoneMask."""
    f0, times = pyworld.dio(
        x,
        sample_rate,
        f0_floor=_F0_FLOOR_HZ,
        f0_ceil=_F0_CEIL_HZ,
        frame_period=frame_period_ms,
        speed=2,
    )
    return pyworld.stonemask(x, f0, times, sample_rate), times


@functools.lru_cache(maxsize=16)
def _hann(length: int) -> np.ndarray:
    return np.hanning(length + 2)[1:-1].astype(np.float32)


def _stft(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(frames, n_fft // 2 + 1) complex spectrum, frames centred on multiples of `hop`."""
    padded = np.pad(np.asarray(x, dtype=np.float32), (n_fft // 2, n_fft // 2 + hop))
    frames = sliding_window_view(padded, n_fft)[::hop]
    return scipy.fft.rfft(frames * _hann(n_fft), axis=1)


def _overlap_add(frames: np.ndarray, hop: int) -> np.ndarray:
    """Sum frames (frames, n_fft) placed every `hop` samples (n_fft a multiple of hop)."""
    num_frames, n_fft = frames.shape
    total = n_fft + hop * (num_frames - 1)
    out = np.zeros(total, dtype=frames.dtype)
    for i in range(n_fft // hop):
        # frames i, i + r, i + 2r ... (r = n_fft / hop) touch end to end: add them at once
        chunk = frames[i :: n_fft // hop].reshape(-1)
        start = i * hop
        out[start : start + chunk.size] += chunk[: total - start]
    return out


@functools.lru_cache(maxsize=64)
def _window_norm(n_fft: int, hop: int, num_frames: int) -> np.ndarray:
    squared = np.broadcast_to(_hann(n_fft) ** 2, (num_frames, n_fft))
    return np.maximum(_overlap_add(np.ascontiguousarray(squared), hop), 1e-3)


def _istft(spectrum: np.ndarray, n_fft: int, hop: int, num_samples: int) -> np.ndarray:
    """Weighted overlap-add inverse of `_stft`."""
    frames = scipy.fft.irfft(spectrum, n=n_fft, axis=1) * _hann(n_fft)
    out = _overlap_add(frames, hop) / _window_norm(n_fft, hop, frames.shape[0])
    return out[n_fft // 2 : n_fft // 2 + num_samples].astype(np.float64)


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangular mel filters (n_mels, bins) and their pseudo-inverse (bins, n_mels)."""
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, float(_hz_to_mel(sample_rate / 2)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    basis = np.maximum(0.0, np.minimum(rising, falling))
    return basis, pinv(basis)


def _levinson(autocorr: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Levinson-Durbin over many frames at once: (frames, order+1) -> A (frames, order+1), error."""
    frames = autocorr.shape[0]
    a = np.zeros((frames, order + 1))
    a[:, 0] = 1.0
    error = autocorr[:, 0].copy()
    for i in range(1, order + 1):
        acc = autocorr[:, i] + np.einsum("fj,fj->f", a[:, 1:i], autocorr[:, i - 1 : 0 : -1])
        k = -acc / np.maximum(error, 1e-12)
        previous = a[:, 1:i].copy()
        a[:, 1:i] = previous + k[:, None] * previous[:, ::-1]
        a[:, i] = k
        error = error * (1.0 - k * k)
    return a, np.maximum(error, 1e-12)


# --------------------------------------------------------------------------- A01 WORLD


def world_vocoder(
    x: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """WORLD analysis/resynthesis with per-utterance frame period and envelope coding."""
    frame_period_ms = float(rng.choice([5.0, 10.0, 15.0], p=[0.1, 0.6, 0.3]))
    coded_dims = int(rng.choice([0, 60, 40, 24], p=[0.1, 0.25, 0.3, 0.35]))
    smooth_f0 = bool(rng.random() < 0.6)
    f0, times = _f0(x, sample_rate, frame_period_ms)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate)
    fft_size = (envelope.shape[1] - 1) * 2
    # Band aperiodicity, as WORLD-based TTS models it (one band at 16 kHz), analysed
    # every 30 ms (D4C is the costliest step) and interpolated to the frame grid.
    step = max(1, round(30.0 / frame_period_ms))
    coarse = pyworld.d4c(
        x, np.ascontiguousarray(f0[::step]), np.ascontiguousarray(times[::step]), sample_rate
    )
    coded = pyworld.code_aperiodicity(coarse, sample_rate)
    coded = np.stack(
        [np.interp(times, times[::step], coded[:, band]) for band in range(coded.shape[1])],
        axis=1,
    )
    aperiodicity = pyworld.decode_aperiodicity(coded, sample_rate, fft_size)
    if coded_dims:
        coded = pyworld.code_spectral_envelope(envelope, sample_rate, coded_dims)
        envelope = pyworld.decode_spectral_envelope(coded, sample_rate, fft_size)
    if smooth_f0:
        # a predicted-looking contour: micro-prosody smoothed away within voiced runs
        voiced = f0 > 0
        smoothed = np.convolve(np.where(voiced, f0, 0.0), np.ones(5) / 5, mode="same")
        weight = np.convolve(voiced.astype(float), np.ones(5) / 5, mode="same")
        f0 = np.where(voiced, smoothed / np.maximum(weight, 1e-9), 0.0)
    y = pyworld.synthesize(f0, envelope, aperiodicity, sample_rate, frame_period_ms)
    return _fit_length(y, x.size), {
        "frame_period_ms": frame_period_ms,
        "coded_dims": coded_dims,
        "smooth_f0": int(smooth_f0),
    }


# --------------------------------------------------------------------------- A02 Griffin-Lim


def griffin_lim_vocoder(
    x: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """Mel spectrogram (with estimation noise) inverted by fast Griffin-Lim."""
    n_fft = int(rng.choice([512, 1024], p=[0.6, 0.4]))
    hop = n_fft // 4
    n_mels = int(rng.choice([64, 80, 128]))
    iterations = int(rng.integers(3, 21))
    log_noise = float(rng.uniform(0.02, 0.3))
    momentum = 0.99
    spectrum = _stft(x, n_fft, hop)
    basis, inverse = _mel_basis(sample_rate, n_fft, n_mels)
    mel = np.abs(spectrum) @ basis.T
    log_mel = np.log(np.maximum(mel, 1e-6)) + log_noise * rng.standard_normal(mel.shape)
    magnitude = np.maximum(np.exp(log_mel) @ inverse.T, 0.0)
    magnitude = magnitude.astype(np.float32)
    phase = (2.0 * np.pi * rng.random(magnitude.shape)).astype(np.float32)
    angles = np.exp(1j * phase)  # complex64
    rebuilt = np.zeros_like(angles)
    for _ in range(iterations):
        previous = rebuilt
        rebuilt = _stft(_istft(magnitude * angles, n_fft, hop, x.size), n_fft, hop)
        angles = rebuilt - (momentum / (1.0 + momentum)) * previous
        angles /= np.abs(angles) + 1e-12
    y = _istft(magnitude * angles, n_fft, hop, x.size)
    return y, {
        "n_fft": n_fft,
        "n_mels": n_mels,
        "iterations": iterations,
        "log_mel_noise": round(log_noise, 3),
    }


# --------------------------------------------------------------------------- A03 LPC


def lpc_vocoder(
    x: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """Linear prediction with pulse/noise excitation, mixed with part of the true residual."""
    order = int(rng.integers(12, 25))
    hop = int(sample_rate * 0.010)
    window_samples = int(sample_rate * float(rng.choice([0.020, 0.025, 0.030])))
    residual_share = float(rng.uniform(0.0, 0.4))
    breath = float(rng.uniform(0.02, 0.3))
    emphasis = 0.97

    pre = lfilter([1.0, -emphasis], [1.0], x)
    num_frames = int(np.ceil(x.size / hop)) + 1
    padded = np.pad(pre, (window_samples // 2, window_samples + hop))
    index = np.arange(window_samples)[None, :] + hop * np.arange(num_frames)[:, None]
    frames = padded[index] * _hann(window_samples)
    n_fft = 1 << int(np.ceil(np.log2(2 * window_samples)))
    autocorr = np.fft.irfft(np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2, n_fft, axis=1)
    autocorr = autocorr[:, : order + 1]
    autocorr[:, 0] *= 1.0 + 1e-4  # white-noise correction keeps the filters stable
    coefficients, error = _levinson(autocorr, order)
    gain = np.sqrt(error / window_samples)

    # Excitation: pulses at the F0 in voiced frames, noise elsewhere, unit power.
    f0, times = _f0(x, sample_rate, 10.0)
    f0_samples = np.interp(np.arange(x.size) / sample_rate, times, f0)
    voiced = f0_samples > 0
    phase = np.cumsum(np.where(voiced, f0_samples, 100.0) / sample_rate)
    pulses = np.zeros(x.size)
    pulse_at = np.flatnonzero(np.diff(np.floor(phase), prepend=0.0) > 0)
    pulses[pulse_at] = np.sqrt(sample_rate / np.maximum(f0_samples[pulse_at], _F0_FLOOR_HZ))
    noise = rng.standard_normal(x.size)
    synthetic = np.where(voiced, np.sqrt(1.0 - breath) * pulses + np.sqrt(breath) * noise, noise)

    # True residual: each sample inverse-filtered with the predictor of its hop.
    frame_of_sample = np.minimum(np.arange(x.size) // hop, num_frames - 1)
    lagged = sliding_window_view(np.concatenate([np.zeros(order), pre]), order + 1)[:, ::-1]
    residual = np.einsum("nj,nj->n", lagged[: x.size], coefficients[frame_of_sample])
    residual /= np.maximum(gain[frame_of_sample], 1e-9)
    y = np.zeros(x.size)
    history = np.zeros(order)  # past outputs, oldest first
    # lfilter's transposed-direct-form state from past outputs (zero past inputs):
    # zi[k] = -sum_{m > k} a[m] * y[n - (m - k)]
    lag = np.arange(1, order + 1)[None, :] - np.arange(order)[:, None]  # m - k for m = 1..order
    valid = lag >= 1
    residual_rms = np.sqrt(np.mean(residual**2)) + 1e-12
    excitation = residual_share * residual / residual_rms + (1.0 - residual_share) * synthetic
    for k in range(num_frames - 1):
        start, stop = k * hop, min((k + 1) * hop, x.size)
        if start >= x.size:
            break
        a = coefficients[k]
        past = np.where(valid, history[::-1][np.clip(lag - 1, 0, order - 1)], 0.0)
        state = -np.sum(a[None, 1:] * past, axis=1)
        segment, _ = lfilter([gain[k]], a, excitation[start:stop], zi=state)
        y[start:stop] = segment
        history = np.concatenate([history, segment])[-order:]
    y = lfilter([1.0], [1.0, -emphasis], y)
    return y, {
        "order": order,
        "window_ms": round(1000 * window_samples / sample_rate, 1),
        "residual_share": round(residual_share, 3),
        "breath": round(breath, 3),
    }


# --------------------------------------------------------------------------- A04 HNM


def harmonic_noise_vocoder(
    x: np.ndarray, sample_rate: int, rng: np.random.Generator
) -> tuple[np.ndarray, Settings]:
    """Harmonics of F0 below a maximum voiced frequency, envelope-shaped noise above."""
    frame_period_ms = 5.0
    max_voiced_hz = float(rng.uniform(1500.0, 4500.0))
    phase_mode = str(rng.choice(["random", "zero"]))
    noise_gain = float(rng.uniform(0.5, 1.5))
    f0, times = _f0(x, sample_rate, frame_period_ms)
    envelope = pyworld.cheaptrick(x, f0, times, sample_rate)  # (frames, bins) power
    fft_size = (envelope.shape[1] - 1) * 2
    sample_times = np.arange(x.size) / sample_rate
    frame_s = frame_period_ms / 1000.0

    harmonic = np.zeros(x.size)
    voiced_frames = f0 > 0
    if voiced_frames.any():
        # phase runs through unvoiced gaps on a filled-in F0 so harmonics restart smoothly
        filled_frames = np.interp(times, times[voiced_frames], f0[voiced_frames])
        filled = np.interp(sample_times, times, filled_frames)
        base_phase = 2.0 * np.pi * np.cumsum(filled) / sample_rate
        num_harmonics = int(max_voiced_hz // max(f0[voiced_frames].min(), _F0_FLOOR_HZ))
        order = np.arange(1, num_harmonics + 1)
        frequency = filled_frames[:, None] * order[None, :]  # (frames, harmonics)
        bins = np.minimum(
            np.round(frequency * fft_size / sample_rate).astype(int), envelope.shape[1] - 1
        )
        rows = np.arange(envelope.shape[0])[:, None]
        amplitude = np.sqrt(envelope[rows, bins] * 2.0 * filled_frames[:, None] / sample_rate)
        amplitude *= voiced_frames[:, None] & (frequency < max_voiced_hz)
        if phase_mode == "random":
            offsets = rng.uniform(0.0, 2.0 * np.pi, num_harmonics)
        else:
            offsets = np.zeros(num_harmonics)
        for index in range(num_harmonics):
            active = np.flatnonzero(amplitude[:, index])
            if active.size == 0:
                continue
            # samples between the frames around the first and last active frame
            start = int(max(0, active[0] - 1) * frame_s * sample_rate)
            stop = int(min(x.size, (active[-1] + 1) * frame_s * sample_rate + 1))
            if stop <= start:
                continue
            span = slice(start, stop)
            level = np.interp(sample_times[span], times, amplitude[:, index])
            harmonic[span] += level * np.cos((index + 1) * base_phase[span] + offsets[index])

    # Noise: white noise shaped by the envelope, above the maximum voiced frequency when voiced.
    n_fft, hop = 512, 128
    noise_spectrum = _stft(rng.standard_normal(x.size), n_fft, hop)
    stft_times = np.arange(noise_spectrum.shape[0]) * hop / sample_rate
    env_index = np.minimum(
        np.round(stft_times / (frame_period_ms / 1000.0)).astype(int), envelope.shape[0] - 1
    )
    env_bins = np.round(np.linspace(0, envelope.shape[1] - 1, n_fft // 2 + 1)).astype(int)
    # harmonics carry a power density of envelope / fs; unit white noise has 2 / fs
    shape = np.sqrt(envelope[env_index][:, env_bins] / 2.0)
    frame_voiced = f0[env_index] > 0
    bins_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mask = np.where(frame_voiced[:, None], (bins_hz[None, :] >= max_voiced_hz) * 1.0, 1.0)
    noise = _istft(noise_spectrum * shape * mask, n_fft, hop, x.size) * noise_gain
    return harmonic + noise, {
        "max_voiced_hz": round(max_voiced_hz, 1),
        "phase": phase_mode,
        "noise_gain": round(noise_gain, 3),
    }


def warm_caches(sample_rate: int) -> None:
    """Mel bases, windows and FFT plans computed once, before worker processes fork."""
    for n_fft in (512, 1024):
        for n_mels in (64, 80, 128):
            _mel_basis(sample_rate, n_fft, n_mels)
    t = np.arange(sample_rate) / sample_rate
    probe = 0.3 * np.sin(2 * np.pi * 150 * t) * np.sin(2 * np.pi * 2 * t) ** 2
    probe = probe + 0.01 * np.random.default_rng(0).standard_normal(t.size)
    for system in SYSTEMS:
        system.vocoder(probe, sample_rate, np.random.default_rng(0))


SYSTEMS: tuple[SpoofSystem, ...] = (
    SpoofSystem(
        "A01",
        "WORLD",
        "WORLD vocoder copy-synthesis (pyworld: DIO+StoneMask F0, CheapTrick envelope, "
        "D4C aperiodicity coded to bands); frame period 5, 10 or 15 ms; envelope kept whole or "
        "coded to 60/40/24 dimensions; F0 contour smoothed in 60% of the files.",
        ("train", "dev", "eval"),
        world_vocoder,
    ),
    SpoofSystem(
        "A02",
        "Griffin-Lim",
        "Mel spectrogram (64/80/128 bands, FFT 512 or 1024) with Gaussian estimation noise "
        "on the log-mel (sd 0.02-0.3), pseudo-inverse to a linear magnitude, 3-20 "
        "iterations of fast Griffin-Lim from random phase.",
        ("train", "dev", "eval"),
        griffin_lim_vocoder,
    ),
    SpoofSystem(
        "A03",
        "LPC",
        "Linear-prediction source-filter resynthesis: order 12-24, 20-30 ms frames, "
        "pulse train at the F0 plus breath noise (noise when unvoiced), mixed with 0-40% "
        "of the true prediction residual.",
        ("train", "dev", "eval"),
        lpc_vocoder,
    ),
    SpoofSystem(
        "A04",
        "harmonic-plus-noise",
        "Harmonic-plus-noise model: harmonics of the F0 up to a maximum voiced frequency "
        "of 1.5-4.5 kHz with amplitudes from the CheapTrick envelope (random or zero "
        "phases), envelope-shaped noise above it and in unvoiced frames. Unseen attack: "
        "eval only.",
        ("eval",),
        harmonic_noise_vocoder,
    ),
)
"""Every spoofing system of the demo corpus, in protocol-id order."""

SYSTEMS_BY_ID = {system.system_id: system for system in SYSTEMS}
