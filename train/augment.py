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
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import butter, sosfilt

from device.audio import SAMPLE_RATE

AUGMENT_KINDS = ("noise", "codec", "gain", "bandlimit")
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
    """'noise,codec' -> ('noise', 'codec'); 'none' or '' -> ()."""
    text = text.strip()
    if text in ("", "none"):
        return ()
    if text == "all":
        return AUGMENT_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(set(kinds) - set(AUGMENT_KINDS))
    if unknown:
        raise AugmentConfigError(
            f"unknown augmentation kinds {unknown}; expected a comma-separated subset of "
            f"{list(AUGMENT_KINDS)}, 'all' or 'none'"
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


class Augmenter:
    """Applies the configured kinds, in a fixed order, each with its probability:
    band-limit, noise, codec, gain (the order a recording chain would apply them)."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def draw(self, rng: np.random.Generator) -> AugmentDraw:
        c = self.config
        fire = {kind: bool(rng.random() < c.probability) for kind in AUGMENT_KINDS}
        snr_db = float(rng.uniform(c.snr_db_min, c.snr_db_max))
        noise_seed = int(rng.integers(2**63 - 1))
        codec = int(rng.integers(len(_CODECS)))
        compression = float(rng.uniform(c.codec_compression_min, c.codec_compression_max))
        gain_db = float(rng.uniform(c.gain_db_min, c.gain_db_max))
        band_choice = int(rng.integers(3))  # 0 low-pass, 1 high-pass, 2 both
        lowpass_hz = float(rng.uniform(c.lowpass_hz_min, c.lowpass_hz_max))
        highpass_hz = float(rng.uniform(c.highpass_hz_min, c.highpass_hz_max))
        return AugmentDraw(
            fire=fire,
            snr_db=snr_db,
            noise_seed=noise_seed,
            codec=codec,
            compression=compression,
            gain_db=gain_db,
            lowpass_hz=lowpass_hz if band_choice in (0, 2) else None,
            highpass_hz=highpass_hz if band_choice in (1, 2) else None,
        )

    def apply(self, signal: np.ndarray, draw: AugmentDraw) -> np.ndarray:
        kinds = self.config.kinds
        out = np.asarray(signal, dtype=np.float32)
        if "bandlimit" in kinds and draw.fire["bandlimit"]:
            out = band_limit(out, draw.lowpass_hz, draw.highpass_hz)
        if "noise" in kinds and draw.fire["noise"]:
            out = add_noise(out, draw.snr_db, np.random.default_rng(draw.noise_seed))
        if "codec" in kinds and draw.fire["codec"]:
            out = codec_round_trip(out, draw.codec, draw.compression)
        if "gain" in kinds and draw.fire["gain"]:
            out = apply_gain(out, draw.gain_db)
        return out

    def __call__(self, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(signal, self.draw(rng))
