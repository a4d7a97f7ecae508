"""Training augmentations for the known real-world weaknesses of spoofing detectors.

Each kind is switched on or off on its own (``AugmentConfig.kinds``) and fires with its own
probability. They act on the raw 16 kHz crop, before ``normalize_windows``, and draw every
random number from the generator they are given, so a seed fixes them.

- ``noise``: white or pink noise at a random SNR (dB, relative to the crop's RMS).
- ``codec``: a lossy round trip through MP3 or Ogg Vorbis at a random compression level.
- ``gain``: a random gain in dB, then clipping to [-1, 1] and 16-bit quantization. Per-window
  peak normalization cancels a plain gain, so what this teaches is what gain does to real
  recordings: clipped loud takes and coarse quantization in quiet ones.
- ``bandlimit``: a random low-pass (telephone to wideband) and/or high-pass (rumble filter),
  4th-order Butterworth.

RawBoost-style kinds (after Tak et al., "RawBoost: a raw data boosting and augmentation method
applied to automatic speaker verification anti-spoofing", ICASSP 2022; written from the
paper's description of its three algorithms) and rooms:

- ``convolutive``: the signal and its square and cube, each through its own random
  multi-band FIR filter (a few notches or peaks at random centre frequencies, bandwidths and
  lengths), summed with decreasing weights: a non-linear, frequency-shaping channel.
- ``impulsive``: up to 10% of the samples, picked at random, get noise proportional to the
  sample itself (signal-dependent clicks and crackle).
- ``colored``: white noise through a random multi-band FIR filter, added at a random SNR
  (stationary noise whose colour is not white or pink).
- ``reverb``: a synthetic room: a direct path, a few early reflections and an exponentially
  decaying noise tail with a random RT60, random direct-to-reverberant ratio and high
  frequencies damped faster than low ones (rooms unlike the stress grid's, which uses fixed
  RT60s and no early reflections or damping).

``all`` switches on every kind; ``basic`` only the first four (the recipe before the
RawBoost kinds were added).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, firwin2, sosfilt

from device.audio import SAMPLE_RATE

BASIC_KINDS = ("noise", "codec", "gain", "bandlimit")
RAWBOOST_KINDS = ("convolutive", "impulsive", "colored", "reverb")
AUGMENT_KINDS = BASIC_KINDS + RAWBOOST_KINDS
_CODECS = (("MP3", "MPEG_LAYER_III"), ("OGG", "VORBIS"))


class AugmentConfigError(ValueError):
    """An augmentation setting out of range, naming the field and the value."""


@dataclass(frozen=True)
class AugmentConfig:
    # Off by default: on the demo corpus, 5 epochs with noise,gain,bandlimit at 0.3 gave a
    # higher eval EER than none (docs/training.md); switch them on for real-world data.
    kinds: tuple[str, ...] = ()
    probability: float = 0.3  # per kind, per training crop
    snr_db_min: float = 5.0
    snr_db_max: float = 35.0
    gain_db_min: float = -30.0
    gain_db_max: float = 12.0
    lowpass_hz_min: float = 3400.0
    lowpass_hz_max: float = 7500.0
    highpass_hz_min: float = 40.0
    highpass_hz_max: float = 300.0
    codec_compression_min: float = 0.3
    codec_compression_max: float = 0.9
    colored_snr_db_min: float = 10.0
    colored_snr_db_max: float = 40.0
    impulsive_share_max: float = 0.1  # of the samples
    reverb_rt60_s_min: float = 0.15
    reverb_rt60_s_max: float = 1.2

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(AUGMENT_KINDS))
        if unknown:
            raise AugmentConfigError(
                f"unknown augmentation kinds {unknown}; expected any of {list(AUGMENT_KINDS)}"
            )
        if not 0.0 <= self.probability <= 1.0:
            raise AugmentConfigError(f"probability must be in [0, 1], got {self.probability}")
        pairs = (
            ("snr_db_min", "snr_db_max"),
            ("gain_db_min", "gain_db_max"),
            ("lowpass_hz_min", "lowpass_hz_max"),
            ("highpass_hz_min", "highpass_hz_max"),
            ("codec_compression_min", "codec_compression_max"),
            ("colored_snr_db_min", "colored_snr_db_max"),
            ("reverb_rt60_s_min", "reverb_rt60_s_max"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise AugmentConfigError(
                    f"{low}={getattr(self, low)} is above {high}={getattr(self, high)}"
                )
        nyquist = SAMPLE_RATE / 2
        if not (self.lowpass_hz_min > 0 and self.lowpass_hz_max < nyquist):
            raise AugmentConfigError(
                f"low-pass cutoffs must lie in (0, {nyquist}) Hz, got "
                f"{self.lowpass_hz_min}..{self.lowpass_hz_max}"
            )
        if not (self.highpass_hz_min > 0 and self.highpass_hz_max < self.lowpass_hz_min):
            raise AugmentConfigError(
                f"high-pass cutoffs must lie in (0, lowpass_hz_min) Hz, got "
                f"{self.highpass_hz_min}..{self.highpass_hz_max}"
            )
        if not 0.0 <= self.codec_compression_min <= self.codec_compression_max <= 1.0:
            raise AugmentConfigError(
                "codec compression levels must lie in [0, 1], got "
                f"{self.codec_compression_min}..{self.codec_compression_max}"
            )
        if not 0.0 < self.impulsive_share_max <= 1.0:
            raise AugmentConfigError(
                f"impulsive_share_max must be in (0, 1], got {self.impulsive_share_max}"
            )
        if not self.reverb_rt60_s_min > 0.0:
            raise AugmentConfigError(
                f"reverb_rt60_s_min must be above 0 s, got {self.reverb_rt60_s_min}"
            )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["kinds"] = list(self.kinds)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "kinds" in values:
            values["kinds"] = tuple(values["kinds"])
        return cls(**values)


def parse_kinds(text: str) -> tuple[str, ...]:
    """'noise,codec' -> ('noise', 'codec'); 'none' or '' -> (); 'all' -> every kind;
    'basic' -> noise, codec, gain, bandlimit."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return AUGMENT_KINDS
    if text == "basic":
        return BASIC_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(AUGMENT_KINDS))
    if unknown:
        raise AugmentConfigError(
            f"unknown augmentation kinds {unknown}; expected a comma-separated subset of "
            f"{list(AUGMENT_KINDS)}, 'all', 'basic' or 'none'"
        )
    return kinds


# --------------------------------------------------------------------------- the kinds


def add_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Add white or pink noise so that signal RMS / noise RMS = snr_db."""
    noise = rng.standard_normal(signal.size)
    if rng.random() < 0.5:  # pink: 1/sqrt(f) amplitude
        spectrum = np.fft.rfft(noise)
        freqs = np.arange(spectrum.size, dtype=np.float64)
        freqs[0] = 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(freqs), n=signal.size)
    signal_rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64))))
    noise_rms = float(np.sqrt(np.mean(np.square(noise))))
    if signal_rms <= 0.0 or noise_rms <= 0.0:
        return signal
    scale = signal_rms / (noise_rms * 10.0 ** (snr_db / 20.0))
    return (signal + scale * noise).astype(np.float32)


def codec_round_trip(signal: np.ndarray, codec: int, compression_level: float) -> np.ndarray:
    """Encode to MP3 (codec 0) or Ogg Vorbis (codec 1) in memory and decode again."""
    container, subtype = _CODECS[codec]
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    scale = 0.9 / peak if peak > 0.9 else 1.0  # the encoders clip at full scale
    buffer = io.BytesIO()
    sf.write(
        buffer,
        signal * scale,
        SAMPLE_RATE,
        format=container,
        subtype=subtype,
        compression_level=compression_level,
    )
    buffer.seek(0)
    decoded, _ = sf.read(buffer, dtype="float32")
    decoded = decoded.reshape(-1) / scale
    if decoded.size >= signal.size:
        return decoded[: signal.size].astype(np.float32)
    return np.pad(decoded, (0, signal.size - decoded.size)).astype(np.float32)


def apply_gain(signal: np.ndarray, gain_db: float) -> np.ndarray:
    """Gain, clip to full scale, quantize to 16 bits."""
    scaled = np.clip(signal * 10.0 ** (gain_db / 20.0), -1.0, 32767.0 / 32768.0)
    return (np.round(scaled * 32768.0) / 32768.0).astype(np.float32)


def band_limit(
    signal: np.ndarray, lowpass_hz: float | None, highpass_hz: float | None
) -> np.ndarray:
    out = np.asarray(signal, dtype=np.float64)
    if lowpass_hz is not None:
        out = sosfilt(butter(4, lowpass_hz, "lowpass", fs=SAMPLE_RATE, output="sos"), out)
    if highpass_hz is not None:
        out = sosfilt(butter(4, highpass_hz, "highpass", fs=SAMPLE_RATE, output="sos"), out)
    return out.astype(np.float32)


def _random_multiband_fir(rng: np.random.Generator) -> np.ndarray:
    """An FIR filter with 1-5 random bands, each a notch or a peak (gain 0.1-2x) at a random
    centre frequency (20 Hz-7.5 kHz) and bandwidth (100-1000 Hz); 21-401 taps."""
    nyquist = SAMPLE_RATE / 2
    grid_hz = np.linspace(0.0, nyquist, 257)
    response = np.ones_like(grid_hz)
    for _ in range(int(rng.integers(1, 6))):
        centre_hz = rng.uniform(20.0, 7500.0)
        width_hz = rng.uniform(100.0, 1000.0)
        gain = rng.uniform(0.1, 2.0)
        inside = np.abs(grid_hz - centre_hz) <= width_hz / 2
        response[inside] *= gain
    taps = 2 * int(rng.integers(10, 201)) + 1  # odd: a type I linear-phase filter
    return firwin2(taps, grid_hz, response, fs=SAMPLE_RATE)


def _filter_same_length(signal: np.ndarray, fir: np.ndarray) -> np.ndarray:
    delay = (fir.size - 1) // 2  # linear phase: undo the group delay
    return fftconvolve(signal, fir)[delay : delay + signal.size]


def _peak_to(out: np.ndarray, reference: np.ndarray) -> np.ndarray:
    peak, target = float(np.max(np.abs(out))), float(np.max(np.abs(reference)))
    return out * (target / peak) if peak > 0.0 else out


def convolutive_noise(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RawBoost 1 (linear and non-linear convolutive noise): x, x^2 and x^3 (up to a random
    order of 1-3), each through its own random multi-band FIR filter, weighted 1, 1/2, 1/3,
    summed and scaled back to the input's peak. Same length as the input."""
    x = np.asarray(signal, dtype=np.float64)
    out = np.zeros_like(x)
    for order in range(1, int(rng.integers(1, 4)) + 1):
        out += _filter_same_length(x**order, _random_multiband_fir(rng)) / order
    return _peak_to(out, x).astype(np.float32)


def impulsive_noise(signal: np.ndarray, share_max: float, rng: np.random.Generator) -> np.ndarray:
    """RawBoost 2 (impulsive signal-dependent noise): a random share (up to share_max) of the
    samples, picked at random, each gets x * g * u with u uniform in [-1, 1] and g a random
    gain of 0.5-5 (a click of up to 5 times the sample itself)."""
    x = np.asarray(signal, dtype=np.float64)
    out = x.copy()
    if x.size == 0:
        return out.astype(np.float32)
    count = max(1, int(rng.uniform(0.0, share_max) * x.size))
    picked = rng.choice(x.size, size=count, replace=False)
    gain = rng.uniform(0.5, 5.0)
    out[picked] += x[picked] * gain * rng.uniform(-1.0, 1.0, size=count)
    return out.astype(np.float32)


def colored_noise(signal: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """RawBoost 3 (stationary signal-independent additive noise): white noise through a
    random multi-band FIR filter, added so that signal RMS / noise RMS = snr_db."""
    x = np.asarray(signal, dtype=np.float64)
    noise = _filter_same_length(rng.standard_normal(x.size), _random_multiband_fir(rng))
    signal_rms = float(np.sqrt(np.mean(x**2))) if x.size else 0.0
    noise_rms = float(np.sqrt(np.mean(noise**2))) if x.size else 0.0
    if signal_rms <= 0.0 or noise_rms <= 0.0:
        return np.asarray(signal, dtype=np.float32)
    scale = signal_rms / (noise_rms * 10.0 ** (snr_db / 20.0))
    return (x + scale * noise).astype(np.float32)


def room_impulse_response(rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A synthetic room: direct path, 2-6 early reflections (3-30 ms, gains 0.2-0.7), then an
    exponentially decaying noise tail (-60 dB at rt60_s), low-passed ever more strongly
    along the tail (high frequencies die first), at a direct-to-reverberant ratio of 0-12 dB."""
    length = max(2, int(rt60_s * SAMPLE_RATE))
    t_s = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * np.exp(-6.908 * t_s / rt60_s)
    # Damping: the tail mixed from a plain and a low-passed copy, the low-passed share growing.
    cutoff_hz = rng.uniform(1500.0, 6000.0)
    damped = sosfilt(butter(2, cutoff_hz, "lowpass", fs=SAMPLE_RATE, output="sos"), tail)
    share = np.linspace(0.0, 1.0, length)
    tail = (1.0 - share) * tail + share * damped
    rir = np.zeros(length + int(0.03 * SAMPLE_RATE))
    rir[0] = 1.0
    for _ in range(int(rng.integers(2, 7))):
        at = int(rng.uniform(0.003, 0.03) * SAMPLE_RATE)
        rir[at] += rng.uniform(0.2, 0.7) * rng.choice([-1.0, 1.0])
    start = int(rng.uniform(0.005, 0.03) * SAMPLE_RATE)
    drr_db = rng.uniform(0.0, 12.0)
    tail *= np.sqrt(10.0 ** (-drr_db / 10.0) / np.sum(tail**2))
    rir[start : start + length] += tail
    return rir


def reverberate(signal: np.ndarray, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """The signal in a synthetic room (``room_impulse_response``), same length, same peak."""
    x = np.asarray(signal, dtype=np.float64)
    wet = fftconvolve(x, room_impulse_response(rt60_s, rng))[: x.size]
    return _peak_to(wet, x).astype(np.float32)


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices for one crop, drawn whether or not each kind is switched on, so
    switching one kind off leaves the choices of the others unchanged."""

    fire: dict[str, bool]
    snr_db: float
    noise_seed: int
    codec: int
    compression: float
    gain_db: float
    lowpass_hz: float | None
    highpass_hz: float | None
    # The RawBoost kinds and rooms, drawn only when one of them is switched on, so that the
    # basic recipe draws exactly what it drew before they existed. Their parameters come
    # from their own seeds.
    colored_snr_db: float = 0.0
    rt60_s: float = 0.0
    seeds: dict[str, int] | None = None


class Augmenter:
    """Applies the configured kinds, in a fixed order, each with its probability: room,
    band-limit, convolutive channel, noise, coloured noise, impulsive noise, codec, gain
    (the order a recording chain would apply them)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        c = self.config
        fire = {kind: bool(rng.random() < c.probability) for kind in BASIC_KINDS}
        snr_db = float(rng.uniform(c.snr_db_min, c.snr_db_max))
        noise_seed = int(rng.integers(2**63 - 1))
        codec = int(rng.integers(len(_CODECS)))
        compression = float(rng.uniform(c.codec_compression_min, c.codec_compression_max))
        gain_db = float(rng.uniform(c.gain_db_min, c.gain_db_max))
        band_choice = int(rng.integers(3))  # 0 low-pass, 1 high-pass, 2 both
        lowpass_hz = float(rng.uniform(c.lowpass_hz_min, c.lowpass_hz_max))
        highpass_hz = float(rng.uniform(c.highpass_hz_min, c.highpass_hz_max))
        colored_snr_db, rt60_s, seeds = 0.0, 0.0, None
        if set(c.kinds) & set(RAWBOOST_KINDS):
            fire |= {kind: bool(rng.random() < c.probability) for kind in RAWBOOST_KINDS}
            seeds = {kind: int(rng.integers(2**63 - 1)) for kind in RAWBOOST_KINDS}
            colored_snr_db = float(rng.uniform(c.colored_snr_db_min, c.colored_snr_db_max))
            rt60_s = float(rng.uniform(c.reverb_rt60_s_min, c.reverb_rt60_s_max))
        return AugmentDraw(
            fire=fire,
            snr_db=snr_db,
            noise_seed=noise_seed,
            codec=codec,
            compression=compression,
            gain_db=gain_db,
            lowpass_hz=lowpass_hz if band_choice in (0, 2) else None,
            highpass_hz=highpass_hz if band_choice in (1, 2) else None,
            colored_snr_db=colored_snr_db,
            rt60_s=rt60_s,
            seeds=seeds,
        )

    def apply(self, signal: np.ndarray, draw: AugmentDraw) -> np.ndarray:
        kinds = self.config.kinds
        out = np.asarray(signal, dtype=np.float32)

        def on(kind: str) -> bool:
            return kind in kinds and draw.fire.get(kind, False)

        def rng_of(kind: str) -> np.random.Generator:
            return np.random.default_rng((draw.seeds or {}).get(kind, 0))

        if on("reverb"):
            out = reverberate(out, draw.rt60_s, rng_of("reverb"))
        if "bandlimit" in kinds and draw.fire["bandlimit"]:
            out = band_limit(out, draw.lowpass_hz, draw.highpass_hz)
        if on("convolutive"):
            out = convolutive_noise(out, rng_of("convolutive"))
        if "noise" in kinds and draw.fire["noise"]:
            out = add_noise(out, draw.snr_db, np.random.default_rng(draw.noise_seed))
        if on("colored"):
            out = colored_noise(out, draw.colored_snr_db, rng_of("colored"))
        if on("impulsive"):
            out = impulsive_noise(out, self.config.impulsive_share_max, rng_of("impulsive"))
        if "codec" in kinds and draw.fire["codec"]:
            out = codec_round_trip(out, draw.codec, draw.compression)
        if "gain" in kinds and draw.fire["gain"]:
            out = apply_gain(out, draw.gain_db)
        return out

    def __call__(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(signal, self.draw(rng))
