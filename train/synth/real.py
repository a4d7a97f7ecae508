"""Real human speech from Debian packages: the bona fide class of the demo corpus.

Sources (see docs/demo_corpus.md for versions, minutes and licences):

- `asterisk-core-sounds-{en,es,fr,it,ru}-g722`: studio voice prompts, G.722 at 16 kHz.
  Allison speaks both the US English and the Mexican Spanish set: one speaker, two
  languages.
- `fillets-ng-data-{cs,nl}`: acted game dialogue, Ogg Vorbis at 22.05 kHz. The file name
  says who speaks: `<level>-m-*` the small fish, `<level>-v-*` the big fish, other
  characters (a dozen smaller roles, possibly played by the same actors) are grouped
  as one "minor" speaker per language.

Every recording is decoded with PyAV, resampled to 16 kHz by the shared front end,
and cut into utterances at pauses. Speakers are assigned to splits by `SPEAKER_SPLITS`
so that no eval speaker is heard in training.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from device.audio import SAMPLE_RATE, resample


@dataclass(frozen=True)
class RealSpeaker:
    """A real voice: its id, language, the package and files it speaks in, its split."""

    speaker_id: str
    person: str  # the same person may speak in two languages
    language: str  # espeak-ng voice name of the language
    package: str
    pattern: str  # glob below the package root
    character: str | None  # fillets: file-name character code, "*" = every other one
    split: str
    source_codec: str  # name in train.synth.codecs.CODECS: how the package coded it


_ASTERISK = "usr/share/asterisk/sounds"
_FILLETS = "usr/share/games/fillets-ng/sound"

SPEAKERS: tuple[RealSpeaker, ...] = (
    # train: five voices, five languages
    RealSpeaker(
        "ast-en-allison",
        "allison",
        "en-us",
        "asterisk-core-sounds-en-g722",
        f"{_ASTERISK}/en_US_f_Allison/**/*.g722",
        None,
        "train",
        "g722",
    ),
    RealSpeaker(
        "ast-es-allison",
        "allison",
        "es-419",
        "asterisk-core-sounds-es-g722",
        f"{_ASTERISK}/es_MX_f_Allison/**/*.g722",
        None,
        "train",
        "g722",
    ),
    RealSpeaker(
        "ast-fr-june",
        "june",
        "fr",
        "asterisk-core-sounds-fr-g722",
        f"{_ASTERISK}/fr_CA_f_June/**/*.g722",
        None,
        "train",
        "g722",
    ),
    RealSpeaker(
        "fil-cs-v",
        "fillets-cs-v",
        "cs",
        "fillets-ng-data-cs",
        f"{_FILLETS}/*/cs/*.ogg",
        "v",
        "train",
        "vorbis-22k",
    ),
    RealSpeaker(
        "fil-cs-minor",
        "fillets-cs-minor",
        "cs",
        "fillets-ng-data-cs",
        f"{_FILLETS}/*/cs/*.ogg",
        "*",
        "train",
        "vorbis-22k",
    ),
    RealSpeaker(
        "fil-nl-m",
        "fillets-nl-m",
        "nl",
        "fillets-ng-data-nl",
        f"{_FILLETS}/*/nl/*.ogg",
        "m",
        "train",
        "vorbis-22k",
    ),
    # dev
    RealSpeaker(
        "fil-cs-m",
        "fillets-cs-m",
        "cs",
        "fillets-ng-data-cs",
        f"{_FILLETS}/*/cs/*.ogg",
        "m",
        "dev",
        "vorbis-22k",
    ),
    RealSpeaker(
        "fil-nl-minor",
        "fillets-nl-minor",
        "nl",
        "fillets-ng-data-nl",
        f"{_FILLETS}/*/nl/*.ogg",
        "*",
        "dev",
        "vorbis-22k",
    ),
    # eval: voices and two languages never heard in training
    RealSpeaker(
        "ast-it-carlo",
        "carlo",
        "it",
        "asterisk-core-sounds-it-g722",
        f"{_ASTERISK}/it_IT_m_Carlo/**/*.g722",
        None,
        "eval",
        "g722",
    ),
    RealSpeaker(
        "ast-ru-ivr",
        "ivrvoice-ru",
        "ru",
        "asterisk-core-sounds-ru-g722",
        f"{_ASTERISK}/ru_RU_f_IvrvoiceRU/**/*.g722",
        None,
        "eval",
        "g722",
    ),
    RealSpeaker(
        "fil-nl-v",
        "fillets-nl-v",
        "nl",
        "fillets-ng-data-nl",
        f"{_FILLETS}/*/nl/*.ogg",
        "v",
        "eval",
        "vorbis-22k",
    ),
)

SPEAKERS_BY_ID = {speaker.speaker_id: speaker for speaker in SPEAKERS}
BONAFIDE_PACKAGES = tuple(sorted({speaker.package for speaker in SPEAKERS}))
_MAIN_CHARACTERS = ("m", "v")


def fillets_character(path: Path) -> str:
    """The speaking character of a Fish Fillets file: 'm', 'v', or the other role's code."""
    parts = path.stem.split("-")
    return parts[1] if len(parts) >= 3 else "?"


def speaker_files(speaker: RealSpeaker, package_root: Path) -> list[Path]:
    """The speaker's recordings in an unpacked package, sorted."""
    files = sorted(package_root.glob(speaker.pattern))
    if speaker.character is None:
        return files
    if speaker.character == "*":
        return [f for f in files if fillets_character(f) not in _MAIN_CHARACTERS]
    return [f for f in files if fillets_character(f) == speaker.character]


class DecodeError(RuntimeError):
    """A source recording could not be decoded; the message names the file."""


def decode(path: Path) -> np.ndarray:
    """A recording as float64 mono at 16 kHz (PyAV decodes G.722 and Vorbis alike)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            pieces = []
            rate = stream.rate
            for frame in container.decode(stream):
                rate = frame.sample_rate
                values = frame.to_ndarray()
                if values.dtype.kind == "i":
                    values = values.astype(np.float64) / 32768.0
                if values.ndim == 2 and values.shape[0] > 1 and not frame.format.is_planar:
                    values = values.reshape(-1, values.shape[0])
                pieces.append(np.asarray(values, dtype=np.float64).reshape(values.shape[0], -1))
    except (av.FFmpegError, IndexError) as error:
        raise DecodeError(f"{path}: cannot decode: {error}") from error
    if not pieces:
        raise DecodeError(f"{path}: no audio frames")
    signal = np.concatenate(pieces, axis=1).mean(axis=0)
    if rate != SAMPLE_RATE:
        signal = resample(signal, rate, SAMPLE_RATE).astype(np.float64)
    return signal


_FRAME_SAMPLES = 160  # 10 ms


def speech_regions(
    signal: np.ndarray, below_peak_db: float = 35.0, min_pause_s: float = 0.25
) -> list[tuple[int, int]]:
    """(start, end) samples of the stretches of speech, split at pauses of `min_pause_s`."""
    frames = signal[: signal.size - signal.size % _FRAME_SAMPLES].reshape(-1, _FRAME_SAMPLES)
    if frames.shape[0] == 0:
        return []
    level_db = 10.0 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = level_db > level_db.max() - below_peak_db
    regions: list[tuple[int, int]] = []
    gap_frames = round(min_pause_s * SAMPLE_RATE / _FRAME_SAMPLES)
    start = None
    quiet = 0
    for index, is_loud in enumerate(loud):
        if is_loud:
            if start is None:
                start = index
            quiet = 0
        elif start is not None:
            quiet += 1
            if quiet >= gap_frames:
                regions.append((start, index - quiet + 1))
                start, quiet = None, 0
    if start is not None:
        regions.append((start, len(loud) - quiet))
    return [(a * _FRAME_SAMPLES, b * _FRAME_SAMPLES) for a, b in regions]


def utterances(
    signal: np.ndarray, min_duration_s: float, max_duration_s: float
) -> list[tuple[int, int]]:
    """Speech regions joined into utterances of [min, max] seconds (longer ones cut)."""
    min_samples = round(min_duration_s * SAMPLE_RATE)
    max_samples = round(max_duration_s * SAMPLE_RATE)
    out: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    for start, end in speech_regions(signal):
        if current is not None and end - current[0] <= max_samples:
            current = (current[0], end)
            continue
        if current is not None:
            out.append(current)
        current = (start, end)
    if current is not None:
        out.append(current)
    pieces: list[tuple[int, int]] = []
    for start, end in out:
        while end - start > max_samples:
            pieces.append((start, start + max_samples))
            start += max_samples
        pieces.append((start, end))
    return [(a, b) for a, b in pieces if b - a >= min_samples]
