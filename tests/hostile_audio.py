"""Audio files a hostile or broken client sends: headers that lie about rate, channels, length."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def wav_claiming(path: Path, sample_rate_hz: int, frames: int = 45_000, channels: int = 1) -> Path:
    """A 16-bit PCM WAV of noise whose header claims `sample_rate_hz` (any value, even absurd)."""
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(frames * channels) * 3000).astype("<i2").tobytes()
    byte_rate = (sample_rate_hz * 2 * channels) & 0xFFFFFFFF
    fmt = struct.pack("<IHHIIHH", 16, 1, channels, sample_rate_hz, byte_rate, 2 * channels, 16)
    body = b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path
