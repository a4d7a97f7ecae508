"""Spectral gating: it lowers stationary noise, leaves a clean signal's length and level,
is the identity at 0 dB reduction, and refuses settings out of range."""

from __future__ import annotations

import numpy as np
import pytest

from device.denoise import GateConfig, spectral_gate

RATE = 16000


def speech_like(seconds: float = 3.0) -> np.ndarray:
    """Harmonics of a 140 Hz voice in 4 syllables a second, with pauses between them."""
    t = np.arange(int(RATE * seconds)) / RATE
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 25))
    return 0.2 * voice * (np.sin(2 * np.pi * 2 * t) > 0) / np.max(np.abs(voice))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(clean**2) / np.mean((noisy - clean) ** 2)))


# The gain shrinks as the noise gets quieter: at 20 dB the speech the gate cuts weighs as
# much as the noise it removes.
@pytest.mark.parametrize(("input_snr_db", "min_gain_db"), [(5.0, 3.0), (10.0, 3.0), (20.0, 1.0)])
def test_gating_raises_the_snr_of_speech_in_white_noise(
    input_snr_db: float, min_gain_db: float
) -> None:
    clean = speech_like()
    noise = np.random.default_rng(0).standard_normal(clean.size)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2) / 10 ** (input_snr_db / 10))
    noisy = clean + noise
    assert snr_db(clean, noisy) == pytest.approx(input_snr_db, abs=0.01)
    out = spectral_gate(noisy)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert snr_db(clean, out.astype(np.float64)) > input_snr_db + min_gain_db


def test_no_reduction_is_the_identity_and_silence_stays_silent() -> None:
    clean = speech_like()
    same = spectral_gate(clean, GateConfig(reduction_db=0.0))
    assert np.max(np.abs(same - clean)) < 1e-6
    assert not np.any(spectral_gate(np.zeros(RATE)))
    short = np.ones(100) * 0.1  # shorter than a frame: returned as it is
    assert np.array_equal(spectral_gate(short), short.astype(np.float32))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hop_samples": 0}, "hop_samples must be in"),
        ({"noise_share": 0.0}, "noise_share must be in"),
        ({"reduction_db": -3.0}, "reduction_db must be >= 0"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**changes)
