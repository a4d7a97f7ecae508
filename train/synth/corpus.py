"""Builder of the built-in demo corpus (the CLI is train.demo_corpus; see docs/demo_corpus.md).

Bona fide: espeak-ng speech (many languages, voice variants, rates, pitches, texts)
through a simulated recording channel. Spoof: the same utterances through vocoder
copy-synthesis systems (train.synth.vocoders), then the same channel. A04 appears
only in eval (the unseen attack). Deterministic from the seed: same settings give
byte-identical protocols and audio, whatever the number of worker processes.

Written in the ASVspoof 2019 LA layout so the real-data reader reads it. It checks a
pipeline end to end; it is not a detector's training set to deploy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import shutil
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from device.audio import SAMPLE_RATE, resample
from train.synth.channel import apply_channel
from train.synth.cues import (
    DEFAULT_MIN_CUE_EER,
    FEATURES,
    CueRow,
    cue_table,
    equal_error_rate,
    file_features,
    format_cue_table,
    logistic_regression_probe,
)
from train.synth.espeak import ESPEAK_SAMPLE_RATE, Espeak, VoiceSettings
from train.synth.speakers import Speaker, draw_speakers
from train.synth.text import sentence
from train.synth.vocoders import SYSTEMS, SYSTEMS_BY_ID

GENERATOR_VERSION = 2
"""Bumped whenever the generator's output changes for the same settings."""

SPLITS = ("train", "dev", "eval")
PROTOCOL_DIR = "ASVspoof2019_LA_cm_protocols"
PROTOCOL_FILES = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}
SPLIT_LETTER = {"train": "T", "dev": "D", "eval": "E"}
BONAFIDE_SYSTEM = "-"


class CorpusError(RuntimeError):
    """The corpus could not be built or checked; the message names the file and the problem."""


def check_duration_range(min_duration_s: float, max_duration_s: float) -> None:
    """Utterance lengths both builders accept: 0.5 s <= min < max. Raises ValueError."""
    if not 0.5 <= min_duration_s < max_duration_s:
        raise ValueError(
            f"expected 0.5 <= min_duration_s < max_duration_s, got "
            f"{min_duration_s} and {max_duration_s}"
        )


@dataclass(frozen=True)
class CorpusSettings:
    """Everything the corpus is a function of. Saved in stats.json next to the corpus."""

    seed: int = 2019
    train: int = 3000
    dev: int = 1000
    eval: int = 2000
    bonafide_share: float = 0.5
    min_duration_s: float = 1.0
    max_duration_s: float = 4.0
    speakers_train: int = 120
    speakers_dev: int = 40
    speakers_eval: int = 80
    # utterances synthesized per fresh worker process; part of the output (see espeak.py)
    sources_per_task: int = 24
    sample_rate: int = SAMPLE_RATE

    def __post_init__(self) -> None:
        for split in SPLITS:
            if getattr(self, split) < 3:
                raise ValueError(
                    f"expected at least 3 {split} utterances, got {getattr(self, split)}"
                )
        if not 0.0 < self.bonafide_share < 1.0:
            raise ValueError(f"expected 0 < bonafide_share < 1, got {self.bonafide_share}")
        for split in SPLITS:
            spoofs = self.size(split) - self.bonafide_count(split)
            systems = len(split_systems(split))
            if spoofs < systems:
                raise ValueError(
                    f"{split}: {self.size(split)} utterances with bonafide_share "
                    f"{self.bonafide_share} leave {spoofs} spoofs; expected at least "
                    f"{systems}, one per attack system of the split"
                )
        if self.sources_per_task < 1:
            raise ValueError(f"expected sources_per_task >= 1, got {self.sources_per_task}")
        check_duration_range(self.min_duration_s, self.max_duration_s)

    def size(self, split: str) -> int:
        return int(getattr(self, split))

    def speakers(self, split: str) -> int:
        bonafide = self.bonafide_count(split)
        return max(1, min(int(getattr(self, f"speakers_{split}")), bonafide))

    def bonafide_count(self, split: str) -> int:
        return max(1, round(self.size(split) * self.bonafide_share))


SIZES = {
    "default": {"train": 3000, "dev": 1000, "eval": 2000},
    "tiny": {"train": 40, "dev": 20, "eval": 30},
}


@dataclass(frozen=True)
class PlannedFile:
    """One protocol line and the recipe of its audio."""

    utterance_id: str
    split: str
    speaker_id: str
    system_id: str  # "-" for bona fide
    source_index: int  # which bona fide utterance of the split it is made from
    file_index: int  # position within the split, seeds its channel and vocoder

    @property
    def label(self) -> str:
        return "bonafide" if self.system_id == BONAFIDE_SYSTEM else "spoof"

    def protocol_line(self) -> str:
        return f"{self.speaker_id} {self.utterance_id} - {self.system_id} {self.label}"


@dataclass(frozen=True)
class Task:
    """Work for one fresh worker process: some sources of a split and every file made from them."""

    seed: int
    split: str
    audio_dir: str
    sources: tuple[tuple[int, Speaker], ...]
    files: tuple[PlannedFile, ...]
    min_duration_s: float
    max_duration_s: float
    sample_rate: int


def _split_index(split: str) -> int:
    return SPLITS.index(split)


def split_systems(split: str) -> list[str]:
    return [s.system_id for s in SYSTEMS if split in s.splits]


def audio_dir(root: Path, split: str) -> Path:
    return root / "LA" / f"ASVspoof2019_LA_{split}" / "flac"


def protocol_path(root: Path, split: str) -> Path:
    return root / "LA" / PROTOCOL_DIR / PROTOCOL_FILES[split]


def plan(settings: CorpusSettings) -> tuple[dict[str, list[PlannedFile]], dict[str, list[Speaker]]]:
    """Every file of the corpus (ids, speakers, systems, sources), cheap and deterministic.

    Returns the planned files of each split and, per split, the speaker of each bona fide
    source utterance (index = source_index).
    """
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 0]))
    speakers = draw_speakers({split: settings.speakers(split) for split in SPLITS}, rng)
    source_speakers: dict[str, list[Speaker]] = {}
    total = sum(settings.size(split) for split in SPLITS)
    numbers = rng.choice(9_000_000, size=total, replace=False) + 1_000_000
    files: dict[str, list[PlannedFile]] = {}
    taken = 0
    for split in SPLITS:
        size = settings.size(split)
        bonafide = settings.bonafide_count(split)
        systems = split_systems(split)
        spoof_systems = [systems[i % len(systems)] for i in range(size - bonafide)]
        rng.shuffle(spoof_systems)
        source_order = rng.permutation(bonafide)
        split_speakers = speakers[split]
        speaker_of_source = [split_speakers[i % len(split_speakers)] for i in range(bonafide)]
        rng.shuffle(speaker_of_source)
        ids = numbers[taken : taken + size]
        taken += size
        planned = []
        for i in range(size):
            if i < bonafide:
                source, system = i, BONAFIDE_SYSTEM
            else:
                j = i - bonafide
                source, system = int(source_order[j % bonafide]), spoof_systems[j]
            planned.append(
                PlannedFile(
                    utterance_id=f"LA_{SPLIT_LETTER[split]}_{ids[i]:07d}",
                    split=split,
                    speaker_id=speaker_of_source[source].speaker_id,
                    system_id=system,
                    source_index=source,
                    file_index=i,
                )
            )
        files[split] = planned
        source_speakers[split] = speaker_of_source
    return files, source_speakers


def tasks(settings: CorpusSettings, root: Path) -> list[Task]:
    """Fixed groups of sources (independent of the number of workers: espeak is stateful)."""
    files, speakers_of_sources = plan(settings)
    out: list[Task] = []
    for split in SPLITS:
        by_source: dict[int, list[PlannedFile]] = {}
        for planned in files[split]:
            by_source.setdefault(planned.source_index, []).append(planned)
        sources = speakers_of_sources[split]
        for start in range(0, len(sources), settings.sources_per_task):
            indices = range(start, min(start + settings.sources_per_task, len(sources)))
            out.append(
                Task(
                    seed=settings.seed,
                    split=split,
                    audio_dir=str(audio_dir(root, split)),
                    sources=tuple((i, sources[i]) for i in indices),
                    files=tuple(f for i in indices for f in by_source.get(i, [])),
                    min_duration_s=settings.min_duration_s,
                    max_duration_s=settings.max_duration_s,
                    sample_rate=settings.sample_rate,
                )
            )
    # Longest first keeps both workers busy to the end.
    out.sort(key=lambda task: -len(task.files))
    return out


# --------------------------------------------------------------------------- one task


def _fade(signal: np.ndarray, fade_samples: int) -> np.ndarray:
    fade_samples = min(fade_samples, signal.size // 2)
    if fade_samples < 1:
        return signal
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade_samples))
    signal = signal.copy()
    signal[:fade_samples] *= ramp
    signal[-fade_samples:] *= ramp[::-1]
    return signal


def _trim(signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Drop espeak's leading and trailing silence (keeping 10 ms around the speech)."""
    loud = np.flatnonzero(np.abs(signal) > 0.01 * np.max(np.abs(signal)))
    if loud.size == 0:
        return signal
    margin = int(0.010 * sample_rate)
    return signal[max(0, loud[0] - margin) : loud[-1] + margin]


@dataclass(frozen=True)
class Source:
    """A clean utterance and where it sits in its file: lead + speech + trail samples."""

    speech: np.ndarray
    lead_samples: int
    trail_samples: int
    text: str
    voice: str


def make_source(
    espeak: Espeak,
    speaker: Speaker,
    rng: np.random.Generator,
    min_duration_s: float,
    max_duration_s: float,
    sample_rate: int,
) -> Source:
    """Synthesize one bona fide utterance of a random length in [min, max] seconds."""
    duration_s = float(rng.uniform(min_duration_s, max_duration_s))
    lead_s = float(rng.uniform(0.02, min(0.35, 0.15 * duration_s)))
    trail_s = float(rng.uniform(0.02, min(0.35, 0.15 * duration_s)))
    total_samples = round(duration_s * sample_rate)
    lead_samples = round(lead_s * sample_rate)
    trail_min = round(trail_s * sample_rate)
    speech_samples = total_samples - lead_samples - trail_min
    rate_wpm = int(np.clip(speaker.rate_wpm * rng.uniform(0.88, 1.12), 100, 260))
    settings = VoiceSettings(
        voice=speaker.voice,
        rate_wpm=rate_wpm,
        pitch=int(np.clip(speaker.pitch + rng.integers(-6, 7), 0, 100)),
        pitch_range=int(np.clip(speaker.pitch_range + rng.integers(-10, 11), 0, 100)),
    )
    words = max(2, math.ceil(speech_samples / sample_rate * rate_wpm / 60.0 * 1.2) + 1)
    text = sentence(speaker.language, words, rng)
    raw = espeak.synthesize(text, settings, noise_seed=int(rng.integers(0, 2**31)))
    if raw.size == 0:
        raise CorpusError(f"espeak-ng produced no audio for {text!r} with voice {speaker.voice}")
    speech = _trim(raw.astype(np.float64) / 32768.0, ESPEAK_SAMPLE_RATE)
    speech = resample(speech, ESPEAK_SAMPLE_RATE, sample_rate).astype(np.float64)
    speech = _fade(speech[:speech_samples], int(0.02 * sample_rate))
    speech *= 0.5 / max(np.max(np.abs(speech)), 1e-9)
    trail_samples = total_samples - lead_samples - speech.size
    return Source(speech, lead_samples, trail_samples, text, speaker.voice)


def render_file(
    planned: PlannedFile, source: Source, seed: int, sample_rate: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The audio of one protocol line: (vocoder) -> silences -> channel. float64."""
    rng = np.random.default_rng(
        np.random.SeedSequence([seed, 2, _split_index(planned.split), planned.file_index])
    )
    info: dict[str, Any] = {}
    speech = source.speech
    if planned.system_id != BONAFIDE_SYSTEM:
        speech, vocoder_settings = SYSTEMS_BY_ID[planned.system_id].vocoder(
            speech, sample_rate, rng
        )
        if not np.all(np.isfinite(speech)):
            raise CorpusError(
                f"{planned.system_id} produced non-finite samples for {planned.utterance_id}"
            )
        speech = speech * (0.5 / max(np.max(np.abs(speech)), 1e-9))
        info["vocoder"] = vocoder_settings
    padded = np.concatenate([np.zeros(source.lead_samples), speech, np.zeros(source.trail_samples)])
    audio, channel_settings = apply_channel(padded, sample_rate, rng)
    info["channel"] = channel_settings
    return audio, info


def run_task(task: Task) -> list[dict[str, Any]]:
    """Build every file of a task. Runs in a fresh process (espeak's state starts clean)."""
    espeak = Espeak()
    by_source: dict[int, list[PlannedFile]] = {}
    for planned in task.files:
        by_source.setdefault(planned.source_index, []).append(planned)
    out_dir = Path(task.audio_dir)
    results = []
    for source_index, speaker in task.sources:
        started = time.process_time()
        rng = np.random.default_rng(
            np.random.SeedSequence([task.seed, 1, _split_index(task.split), source_index])
        )
        source = make_source(
            espeak, speaker, rng, task.min_duration_s, task.max_duration_s, task.sample_rate
        )
        made_from_source = by_source.get(source_index, [])
        source_cpu_s = (time.process_time() - started) / max(1, len(made_from_source))
        for planned in made_from_source:
            started = time.process_time()
            audio, info = render_file(planned, source, task.seed, task.sample_rate)
            path = out_dir / f"{planned.utterance_id}.flac"
            sf.write(
                path, audio.astype(np.float32), task.sample_rate, subtype="PCM_16", format="FLAC"
            )
            results.append(
                {
                    "utterance_id": planned.utterance_id,
                    "split": planned.split,
                    "system_id": planned.system_id,
                    "duration_s": audio.size / task.sample_rate,
                    "voice": source.voice,
                    "cpu_s": source_cpu_s + time.process_time() - started,
                    **info,
                }
            )
    return results


# --------------------------------------------------------------------------- running


def _pool(jobs: int, fresh_process_per_task: bool) -> ProcessPoolExecutor:
    if not fresh_process_per_task:
        return ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("fork"))
    # forkserver: workers fork from a clean server process that never ran espeak, so
    # each task starts from the library's initial state, however many ran before.
    # The server imports train.synth.warm, which fills the filter/mel/FFT caches once.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["train.synth.corpus", "train.synth.warm"])
    return ProcessPoolExecutor(max_workers=jobs, mp_context=context, max_tasks_per_child=1)


class _Progress:
    """A rich progress bar on stderr, silent when stderr is not a terminal."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True)
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not console.is_terminal,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(description, total=total)

    def update(self, count: int) -> None:
        self._progress.update(self._task, advance=count)

    def close(self) -> None:
        self._progress.stop()


def run_parallel(
    function: Any,
    items: list[Any],
    jobs: int,
    fresh_process: bool,
    weights: list[int],
    description: str,
) -> list[Any]:
    """function(item) for every item in worker processes; results in the order of `items`."""
    progress = _Progress(sum(weights), description)
    results: list[Any] = [None] * len(items)
    try:
        with _pool(jobs, fresh_process) as pool:
            futures: dict[Future[Any], int] = {
                pool.submit(function, item): index for index, item in enumerate(items)
            }
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                progress.update(weights[index])
    finally:
        progress.close()
    return results


def _features_of_chunk(paths: list[str]) -> list[list[float]]:
    out = []
    for path in paths:
        values = file_features(path)
        out.append([values[name] for name in FEATURES])
    return out


def read_protocols(root: Path) -> list[tuple[str, str, str, str]]:
    """(split, utterance_id, system_id, label) of every protocol line, checked."""
    rows = []
    for split in SPLITS:
        path = protocol_path(root, split)
        if not path.is_file():
            raise CorpusError(f"{path}: protocol file missing; build the corpus first")
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            fields = line.split()
            if len(fields) != 5 or fields[4] not in ("bonafide", "spoof"):
                raise CorpusError(
                    f"{path}:{number}: expected 'SPEAKER UTT_ID - SYSTEM label', got {line!r}"
                )
            rows.append((split, fields[1], fields[3], fields[4]))
    return rows


@dataclass(frozen=True)
class CueReport:
    """What --check-cues found."""

    rows: list[CueRow]
    probe_eer: dict[str, float]  # logistic regression on all features, train -> eval
    min_cue_eer: float
    files: int

    @property
    def worst(self) -> CueRow:
        return min(self.rows, key=lambda row: row.worst_eer)

    @property
    def passed(self) -> bool:
        return self.worst.worst_eer >= self.min_cue_eer

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "min_cue_eer": self.min_cue_eer,
            "passed": self.passed,
            "worst_feature": self.worst.feature,
            "worst_eer": round(self.worst.worst_eer, 4),
            "single_feature_eer": {
                row.feature: {
                    "all": round(row.overall_eer, 4),
                    **{system: round(v, 4) for system, v in row.per_system_eer.items()},
                    "spoof_side": row.direction,
                    "bonafide_mean": round(row.bonafide_mean, 6),
                    "spoof_mean": round(row.spoof_mean, 6),
                }
                for row in self.rows
            },
            "all_features_logistic_regression_eval_eer": {
                k: round(v, 4) for k, v in self.probe_eer.items()
            },
        }


def check_cues(root: Path, jobs: int, min_cue_eer: float = DEFAULT_MIN_CUE_EER) -> CueReport:
    """Per-file cue features of the whole corpus and the EER of each as a detector."""
    rows = read_protocols(root)
    paths = []
    for split, utterance_id, _system, _label in rows:
        path = audio_dir(root, split) / f"{utterance_id}.flac"
        if not path.is_file():
            raise CorpusError(f"{path}: listed in the {split} protocol but missing")
        paths.append(str(path))
    chunk = 100
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    results = run_parallel(
        _features_of_chunk, chunks, jobs, False, [len(c) for c in chunks], "cues"
    )
    features = np.array([values for result in results for values in result], dtype=np.float64)
    labels = [label for *_rest, label in rows]
    systems = [system for _split, _utt, system, _label in rows]
    table = cue_table(features, labels, systems)

    splits = np.array([split for split, *_ in rows])
    is_spoof = np.array([label == "spoof" for label in labels])
    train, test = splits == "train", splits == "eval"
    scores = logistic_regression_probe(features[train], is_spoof[train], features[test])
    test_systems = np.array(systems)[test]
    test_bona = ~is_spoof[test]
    probe = {"all": equal_error_rate(scores[test_bona], scores[~test_bona])}
    for system in sorted(set(test_systems[~test_bona])):
        probe[system] = equal_error_rate(scores[test_bona], scores[test_systems == system])
    return CueReport(rows=table, probe_eer=probe, min_cue_eer=min_cue_eer, files=len(paths))


# --------------------------------------------------------------------------- build


def _counts(rows: list[tuple[str, str, str, str]]) -> dict[str, Any]:
    by_split: dict[str, Any] = {}
    for split in SPLITS:
        mine = [(system, label) for s, _u, system, label in rows if s == split]
        labels = Counter(label for _system, label in mine)
        systems = Counter(system for system, label in mine if label == "spoof")
        by_split[split] = {
            "total": len(mine),
            "bonafide": labels.get("bonafide", 0),
            "spoof": labels.get("spoof", 0),
            "systems": dict(sorted(systems.items())),
        }
    return by_split


def format_counts(counts: dict[str, Any]) -> str:
    systems = [s.system_id for s in SYSTEMS]
    header = f"{'split':<6} {'total':>6} {'bonafide':>9} {'spoof':>6} " + " ".join(
        f"{s:>5}" for s in systems
    )
    lines = [header, "-" * len(header)]
    for split in SPLITS:
        c = counts[split]
        lines.append(
            f"{split:<6} {c['total']:>6} {c['bonafide']:>9} {c['spoof']:>6} "
            + " ".join(f"{c['systems'].get(s, 0):>5}" for s in systems)
        )
    return "\n".join(lines)


def format_cue_report(report: CueReport) -> str:
    probe = ", ".join(f"{k} {100 * v:.1f}%" for k, v in report.probe_eer.items())
    verdict = (
        f"no single feature below {100 * report.min_cue_eer:.0f}% EER"
        if report.passed
        else f"CUE LEAK: {report.worst.feature} reaches {100 * report.worst.worst_eer:.1f}% EER"
    )
    return (
        f"single-feature detectors, EER bona fide vs spoof ({report.files} files):\n"
        + format_cue_table(report.rows, report.min_cue_eer)
        + f"\nall features together (logistic regression, train -> eval): {probe}"
        + f"\n{verdict}; lowest: {report.worst.feature} {100 * report.worst.worst_eer:.1f}%"
    )


def stats_path(root: Path) -> Path:
    return root / "stats.json"


def _settings_json(settings: CorpusSettings) -> dict[str, Any]:
    return {"generator_version": GENERATOR_VERSION, **dataclasses.asdict(settings)}


def is_up_to_date(settings: CorpusSettings, root: Path) -> bool:
    """A corpus built from these settings is already at `root`, every file in place."""
    return built_from(_settings_json(settings), root)


def built_from(settings_json: dict[str, Any], root: Path) -> bool:
    """`root` holds a complete corpus whose stats.json records exactly `settings_json`, and
    every file its protocols name (either builder's corpus: both write this layout)."""
    stats_file = stats_path(root)
    if not stats_file.is_file():
        return False
    try:
        stats = json.loads(stats_file.read_text())
        rows = read_protocols(root)
    except (json.JSONDecodeError, CorpusError):
        return False
    if stats.get("settings") != settings_json or not stats.get("complete"):
        return False
    return all((audio_dir(root, split) / f"{utt}.flac").is_file() for split, utt, _s, _l in rows)


def _remove_previous(root: Path) -> None:
    la = root / "LA"
    for path in [la / PROTOCOL_DIR, *(la / f"ASVspoof2019_LA_{split}" for split in SPLITS)]:
        if path.exists():
            shutil.rmtree(path)
    if stats_path(root).exists():
        stats_path(root).unlink()


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    durations = np.array([r["duration_s"] for r in results])
    voices = {r["voice"] for r in results}
    languages = {v.split("+")[0] for v in voices}
    return {
        "duration_s": {
            "min": round(float(durations.min()), 3),
            "mean": round(float(durations.mean()), 3),
            "max": round(float(durations.max()), 3),
            "total_hours": round(float(durations.sum()) / 3600.0, 3),
        },
        "voices": len(voices),
        "languages": len(languages),
    }


def build(
    settings: CorpusSettings,
    root: Path,
    jobs: int | None = None,
    check: bool = True,
    force: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Build the corpus at `root` (skipped when already built from the same settings)."""
    root = Path(root)
    jobs = max(1, jobs or os.cpu_count() or 1)
    if not force and is_up_to_date(settings, root):
        stats = json.loads(stats_path(root).read_text())
        log(f"{root}: demo corpus already built from these settings (use --force to rebuild)")
        log(format_counts(stats["counts"]))
        return stats
    _remove_previous(root)
    for split in SPLITS:
        audio_dir(root, split).mkdir(parents=True, exist_ok=True)
    protocol_path(root, "train").parent.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    planned_files, _speakers = plan(settings)
    work = tasks(settings, root)
    results = run_parallel(
        run_task, work, jobs, True, [len(task.files) for task in work], "demo corpus"
    )
    flat = sorted((r for result in results for r in result), key=lambda r: r["utterance_id"])
    for split in SPLITS:
        ordered = sorted(planned_files[split], key=lambda f: f.utterance_id)
        lines = [f.protocol_line() for f in ordered]
        protocol_path(root, split).write_text("\n".join(lines) + "\n")
    build_s = time.perf_counter() - started

    rows = read_protocols(root)
    counts = _counts(rows)
    stats: dict[str, Any] = {
        "corpus": "clad-edge demo corpus (ASVspoof 2019 LA layout)",
        "purpose": "pipeline check only; not a detector's training data to deploy",
        "settings": _settings_json(settings),
        "complete": True,
        "counts": counts,
        "summary": {split: _summary([r for r in flat if r["split"] == split]) for split in SPLITS},
        "systems": {
            s.system_id: {"name": s.name, "description": s.description, "splits": list(s.splits)}
            for s in SYSTEMS
        },
        "build": {
            "wall_s": round(build_s, 1),
            "jobs": jobs,
            "worker_cpu_s": round(sum(r["cpu_s"] for r in flat), 1),
            "worker_cpu_ms_per_file": {
                system: round(
                    1000 * float(np.mean([r["cpu_s"] for r in flat if r["system_id"] == system])), 1
                )
                for system in sorted({r["system_id"] for r in flat})
            },
        },
    }
    log(format_counts(counts))
    log(
        f"built {len(flat)} files in {build_s:.1f} s with {jobs} worker processes "
        f"({stats['build']['worker_cpu_s']:.1f} s of worker CPU) -> {root / 'LA'}"
    )
    if check:
        check_started = time.perf_counter()
        report = check_cues(root, jobs)
        stats["cues"] = report.to_json()
        stats["build"]["cue_check_wall_s"] = round(time.perf_counter() - check_started, 1)
        log(format_cue_report(report))
    stats["build"]["total_wall_s"] = round(time.perf_counter() - started, 1)
    stats_path(root).write_text(json.dumps(stats, indent=2) + "\n")
    log(f"{len(flat)} files and {stats_path(root)} in {stats['build']['total_wall_s']:.1f} s")
    return stats
