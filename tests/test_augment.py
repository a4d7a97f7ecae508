"""Augmentations: each kind does what it says, only when switched on, and a seed fixes it."""

from __future__ import annotations

import numpy as np
import pytest

from train.augment import (
    AUGMENT_KINDS,
    BASIC_KINDS,
    RAWBOOST_KINDS,
    AugmentConfig,
    AugmentConfigError,
    Augmenter,
    add_noise,
    apply_gain,
    band_limit,
    codec_round_trip,
    colored_noise,
    convolutive_noise,
    impulsive_noise,
    parse_kinds,
    reverberate,
    room_impulse_response,
)

RATE = 16000


def voice(seconds: float = 1.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20))
    return (amplitude * x / np.max(np.abs(x))).astype(np.float32)


def band_energy(x: np.ndarray, low_hz: float, high_hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / RATE)
    return float(spectrum[(freqs >= low_hz) & (freqs < high_hz)].sum())


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 30.0])
def test_noise_lands_at_the_asked_snr(snr_db: float) -> None:
    clean = voice()
    noisy = add_noise(clean, snr_db, np.random.default_rng(1))
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.05)


def test_codec_round_trip_is_lossy_but_keeps_length_and_shape() -> None:
    clean = voice()
    for codec in (0, 1):  # MP3, Ogg Vorbis
        decoded = codec_round_trip(clean, codec, 0.9)
        assert decoded.shape == clean.shape and decoded.dtype == np.float32
        assert not np.array_equal(decoded, clean)
        # Still the same sound: most of the energy below 3 kHz survives.
        assert band_energy(decoded, 0, 3000) == pytest.approx(band_energy(clean, 0, 3000), rel=0.3)


def test_gain_clips_loud_takes_and_quantizes_quiet_ones() -> None:
    loud = apply_gain(voice(), 12.0)
    assert np.max(np.abs(loud)) <= 1.0
    assert np.mean(np.abs(loud) >= 32767 / 32768) > 0.01  # clipped samples
    quiet = apply_gain(voice(), -30.0)
    assert np.allclose(quiet * 32768, np.round(quiet * 32768))  # on the 16-bit grid


def test_band_limit_removes_what_is_outside_the_band() -> None:
    rng = np.random.default_rng(0)
    white = rng.standard_normal(RATE).astype(np.float32)
    low = band_limit(white, 3400.0, None)
    assert band_energy(low, 5000, 8000) < 0.01 * band_energy(white, 5000, 8000)
    high = band_limit(white, None, 300.0)
    assert band_energy(high, 0, 100) < 0.05 * band_energy(white, 0, 100)


def test_each_kind_fires_only_when_switched_on() -> None:
    clean = voice()
    assert np.array_equal(
        Augmenter(AugmentConfig(kinds=()))(clean, np.random.default_rng(0)), clean
    )
    for kind in AUGMENT_KINDS:
        out = Augmenter(AugmentConfig(kinds=(kind,), probability=1.0))(
            clean, np.random.default_rng(0)
        )
        assert not np.array_equal(out, clean), kind
        never = Augmenter(AugmentConfig(kinds=(kind,), probability=0.0))(
            clean, np.random.default_rng(0)
        )
        assert np.array_equal(never, clean), kind


def test_a_seed_fixes_the_result_and_switching_a_kind_off_keeps_the_others() -> None:
    clean = voice()
    everything = Augmenter(AugmentConfig(kinds=AUGMENT_KINDS, probability=1.0))
    a = everything(clean, np.random.default_rng(5))
    assert np.array_equal(a, everything(clean, np.random.default_rng(5)))
    assert not np.array_equal(a, everything(clean, np.random.default_rng(6)))
    # Noise alone, then noise + gain from the same seed: the same noise, then that gain.
    only_noise = Augmenter(AugmentConfig(kinds=("noise",), probability=1.0))
    noise_and_gain = Augmenter(AugmentConfig(kinds=("noise", "gain"), probability=1.0))
    draw = noise_and_gain.draw(np.random.default_rng(9))
    noisy = only_noise(clean, np.random.default_rng(9))
    assert np.array_equal(
        noise_and_gain(clean, np.random.default_rng(9)), apply_gain(noisy, draw.gain_db)
    )


@pytest.mark.parametrize(
    ("text", "kinds"),
    [("none", ()), ("", ()), ("all", AUGMENT_KINDS), ("noise, codec", ("noise", "codec"))],
)
def test_parse_kinds(text: str, kinds: tuple[str, ...]) -> None:
    assert parse_kinds(text) == kinds


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kinds": ("echo",)}, "unknown augmentation kinds"),
        ({"probability": 1.5}, "probability must be in"),
        ({"snr_db_min": 40.0}, "snr_db_min=40.0 is above snr_db_max"),
        ({"lowpass_hz_max": 9000.0}, "low-pass cutoffs must lie in"),
        ({"codec_compression_max": 1.5}, "codec compression levels"),
    ],
)
def test_bad_settings_are_refused(changes: dict, message: str) -> None:
    with pytest.raises(AugmentConfigError, match=message):
        AugmentConfig(**changes)
    with pytest.raises(AugmentConfigError, match="unknown augmentation kinds"):
        parse_kinds("noise,echo")


# --------------------------------------------------------------------------- RawBoost kinds


def speech_like(seconds: float = 1.0) -> np.ndarray:
    """voice() with a syllable envelope, so rooms have gaps to fill."""
    x = voice(seconds).astype(np.float64)
    t = np.arange(x.size) / RATE
    return (x * np.clip(np.sin(2 * np.pi * 3 * t), 0, None)).astype(np.float32)


@pytest.mark.parametrize(
    "transform",
    [
        lambda x, rng: convolutive_noise(x, rng),
        lambda x, rng: impulsive_noise(x, 0.1, rng),
        lambda x, rng: colored_noise(x, 20.0, rng),
        lambda x, rng: reverberate(x, 0.6, rng),
    ],
    ids=["convolutive", "impulsive", "colored", "reverb"],
)
def test_rawboost_kinds_change_the_signal_keep_length_and_follow_the_seed(transform) -> None:
    clean = speech_like()
    a = transform(clean, np.random.default_rng(3))
    assert a.shape == clean.shape and a.dtype == np.float32
    assert np.all(np.isfinite(a))
    assert not np.allclose(a, clean, atol=1e-4)
    assert np.array_equal(a, transform(clean, np.random.default_rng(3)))
    assert not np.array_equal(a, transform(clean, np.random.default_rng(4)))
    # Levels sane: nothing explodes or vanishes (within 12 dB of the input's RMS).
    ratio_db = 20 * np.log10(
        np.sqrt(np.mean(a.astype(np.float64) ** 2))
        / np.sqrt(np.mean(clean.astype(np.float64) ** 2))
    )
    assert -12.0 < ratio_db < 12.0


def test_convolutive_and_reverb_keep_the_peak() -> None:
    clean = speech_like()
    for out in (
        convolutive_noise(clean, np.random.default_rng(1)),
        reverberate(clean, 1.0, np.random.default_rng(1)),
    ):
        assert np.max(np.abs(out)) == pytest.approx(np.max(np.abs(clean)), rel=1e-5)


def test_convolutive_reshapes_the_spectrum() -> None:
    white = np.random.default_rng(0).standard_normal(RATE).astype(np.float32) * 0.1
    out = convolutive_noise(white, np.random.default_rng(2))
    bands = [(lo, lo + 1000) for lo in range(0, 8000, 1000)]
    gain_db = [
        10 * np.log10(band_energy(out, lo, hi) / band_energy(white, lo, hi)) for lo, hi in bands
    ]
    assert max(gain_db) - min(gain_db) > 3.0  # some band raised or cut against another


@pytest.mark.parametrize("snr_db", [10.0, 25.0, 40.0])
def test_colored_noise_lands_at_the_asked_snr_and_is_not_white(snr_db: float) -> None:
    clean = voice()
    noisy = colored_noise(clean, snr_db, np.random.default_rng(7))
    noise = noisy.astype(np.float64) - clean
    measured = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.05)
    per_band = [band_energy(noise, lo, lo + 1000) for lo in range(0, 8000, 1000)]
    assert max(per_band) > 2 * min(per_band)


def test_impulsive_noise_touches_at_most_the_share_and_scales_with_the_sample() -> None:
    clean = voice()
    out = impulsive_noise(clean, 0.1, np.random.default_rng(5))
    changed = out != clean
    assert 0 < np.mean(changed) <= 0.1
    # Signal-dependent: a click is at most 5x the sample it sits on, and silence stays silent.
    delta = np.abs(out.astype(np.float64) - clean)
    assert np.all(delta <= 5.0 * np.abs(clean) + 1e-7)
    silent = impulsive_noise(np.zeros(RATE, dtype=np.float32), 0.1, np.random.default_rng(5))
    assert not np.any(silent)


def test_reverb_fills_the_gaps_between_syllables() -> None:
    clean = speech_like()
    wet = reverberate(clean, 0.8, np.random.default_rng(0))
    gaps = clean == 0
    assert np.mean(np.abs(wet[gaps])) > 10 * (np.mean(np.abs(clean[gaps])) + 1e-6)
    rir = room_impulse_response(0.8, np.random.default_rng(0))
    assert rir[0] == 1.0  # the direct path
    tail = rir[int(0.04 * RATE) :]
    early, late = tail[: len(tail) // 4], tail[-len(tail) // 4 :]
    assert np.sum(late**2) < 0.01 * np.sum(early**2)  # decays (about -45 dB over 3/4 RT60)


def test_rawboost_kinds_leave_the_basic_draws_unchanged() -> None:
    basic = Augmenter(AugmentConfig(kinds=BASIC_KINDS)).draw(np.random.default_rng(11))
    full = Augmenter(AugmentConfig(kinds=AUGMENT_KINDS)).draw(np.random.default_rng(11))
    assert basic.seeds is None and full.seeds is not None
    for name in ("snr_db", "noise_seed", "codec", "compression", "gain_db", "lowpass_hz"):
        assert getattr(basic, name) == getattr(full, name), name
    assert {k: full.fire[k] for k in BASIC_KINDS} == basic.fire
    assert parse_kinds("basic") == BASIC_KINDS
    assert set(parse_kinds("all")) == set(BASIC_KINDS) | set(RAWBOOST_KINDS)
