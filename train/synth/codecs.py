"""Codec round trips for the demo corpus's recording channel: encode, then decode again.

Each codec runs in-process through a real codec library: PyAV (FFmpeg's libavcodec:
LAME MP3, libopus, the native AAC and G.722 coders, G.711 mu-law, AMR-NB from
opencore) or libsndfile (Ogg Vorbis, through soundfile). The signal is resampled to the
codec's rate with the shared front end's `resample`, coded, decoded and resampled back,
and its length kept: the encoder's delay shows up as a few milliseconds of lead-in,
the same for both classes.

    roundtrip(signal, 16000, CODECS["mp3-32k"]) -> float64 signal at 16 kHz

GSM 06.10 has no encoder in either library; AMR-NB is the narrowband phone codec here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from device.audio import resample


class CodecError(RuntimeError):
    """A codec could not be opened or produced no audio; the message names the codec."""


@dataclass(frozen=True)
class Codec:
    """One coding condition: a library codec at a sample rate and bit rate."""

    name: str
    encoder: str  # libavcodec encoder name, or "sndfile-vorbis"
    decoder: str
    sample_rate: int
    bit_rate: int | None = None
    sample_format: str = "s16"

    def describe(self) -> str:
        rate = f" {self.bit_rate // 1000} kbit/s" if self.bit_rate else ""
        return f"{self.name} ({self.encoder}{rate} at {self.sample_rate / 1000:g} kHz)"


CODECS: dict[str, Codec] = {
    codec.name: codec
    for codec in (
        Codec("g722", "g722", "g722", 16000, 64000),
        Codec("vorbis-22k", "sndfile-vorbis", "sndfile-vorbis", 22050),
        Codec("vorbis-16k", "sndfile-vorbis", "sndfile-vorbis", 16000),
        Codec("mp3-32k", "libmp3lame", "mp3float", 16000, 32000, "fltp"),
        Codec("mp3-64k", "libmp3lame", "mp3float", 16000, 64000, "fltp"),
        Codec("opus-16k", "libopus", "libopus", 16000, 16000),
        Codec("opus-32k", "libopus", "libopus", 16000, 32000),
        Codec("aac-32k", "aac", "aac", 16000, 32000, "fltp"),
        Codec("mulaw-8k", "pcm_mulaw", "pcm_mulaw", 8000),
        Codec("amr-nb-12k", "libopencore_amrnb", "amrnb", 8000, 12200),
    )
}


def _to_int16(signal: np.ndarray) -> np.ndarray:
    return np.clip(np.round(signal * 32767.0), -32768, 32767).astype(np.int16)


def _sndfile_vorbis(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(signal, -1.0, 1.0), sample_rate, format="OGG", subtype="VORBIS")
    buffer.seek(0)
    decoded, _rate = sf.read(buffer, dtype="float64")
    return decoded


def _libav(signal: np.ndarray, codec: Codec) -> np.ndarray:
    import av

    try:
        encoder = av.CodecContext.create(codec.encoder, "w")
        encoder.sample_rate = codec.sample_rate
        encoder.layout = "mono"
        encoder.format = codec.sample_format
        if codec.bit_rate:
            encoder.bit_rate = codec.bit_rate
        encoder.time_base = Fraction(1, codec.sample_rate)
        encoder.open()
    except (av.FFmpegError, ValueError) as error:
        raise CodecError(f"cannot open the {codec.describe()} encoder: {error}") from error
    frame_samples = encoder.frame_size or 1024
    pcm = _to_int16(signal)
    packets = []
    for start in range(0, pcm.size, frame_samples):
        block = pcm[start : start + frame_samples]
        if block.size < frame_samples and encoder.frame_size:
            block = np.pad(block, (0, frame_samples - block.size))
        if codec.sample_format == "fltp":
            array = (block.astype(np.float32) / 32768.0)[None, :]
        else:
            array = block[None, :]
        frame = av.AudioFrame.from_ndarray(array, format=codec.sample_format, layout="mono")
        frame.sample_rate = codec.sample_rate
        frame.pts = start
        packets.extend(encoder.encode(frame))
    packets.extend(encoder.encode(None))
    decoder = av.CodecContext.create(codec.decoder, "r")
    decoder.sample_rate = codec.sample_rate
    decoder.layout = "mono"
    if encoder.extradata:
        decoder.extradata = encoder.extradata
    pieces: list[np.ndarray] = []
    decoded_rate = codec.sample_rate
    for packet in [*packets, None]:
        for frame in decoder.decode(packet):
            decoded_rate = frame.sample_rate
            values = frame.to_ndarray()[0]
            if values.dtype.kind == "i":
                values = values.astype(np.float64) / 32768.0
            pieces.append(values.astype(np.float64))
    if not pieces:
        raise CodecError(f"{codec.describe()} decoded no audio from {len(packets)} packets")
    decoded = np.concatenate(pieces)
    if decoded_rate != codec.sample_rate:  # libopus decodes at 48 kHz
        decoded = resample(decoded, decoded_rate, codec.sample_rate).astype(np.float64)
    return decoded


def roundtrip(signal: np.ndarray, sample_rate: int, codec: Codec) -> np.ndarray:
    """`signal` (float, about [-1, 1]) coded and decoded by `codec`; same rate and length."""
    coded_input = signal
    if sample_rate != codec.sample_rate:
        coded_input = resample(signal, sample_rate, codec.sample_rate).astype(np.float64)
    if codec.encoder == "sndfile-vorbis":
        decoded = _sndfile_vorbis(coded_input, codec.sample_rate)
    else:
        decoded = _libav(coded_input, codec)
    if sample_rate != codec.sample_rate:
        decoded = resample(decoded, codec.sample_rate, sample_rate).astype(np.float64)
    if decoded.size >= signal.size:
        return decoded[: signal.size]
    return np.pad(decoded, (0, signal.size - decoded.size))
