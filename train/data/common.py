"""Pieces every reader shares: options, protocol lines, the audio-file index, skip-or-raise."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from train.data.dataset import Problem
from train.data.errors import (
    EmptyProtocolError,
    LayoutError,
    MalformedLineError,
    MissingAudioError,
    UnknownLabelError,
)
from train.data.records import SPLITS, Label, Split

AUDIO_EXTENSIONS: tuple[str, ...] = (".flac", ".wav", ".ogg", ".mp3")
"""Audio files the readers list, matched case-insensitively; earlier wins when a stem repeats."""

UNKNOWN_ATTACK = "unknown"
"""Attack id for spoofed audio whose generating system the dataset does not name."""

DEFAULT_SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
"""train / dev / eval shares of the seeded split for layouts that publish none."""

SplitBy = Literal["auto", "speaker", "file"]


@dataclass(frozen=True)
class ReadOptions:
    """How to read: what to skip, which track and splits, and the seeded split's settings."""

    skip_missing: bool = False
    skip_malformed: bool = False
    track: str | None = None
    splits: tuple[Split, ...] = SPLITS
    seed: int = 0
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    split_by: SplitBy = "auto"


@dataclass(frozen=True)
class Item:
    """A record before its split is known (layouts without published splits)."""

    path: str
    label: Label
    speaker: str
    attack: str
    utterance_id: str
    split: Split | None = None


class ProblemLog:
    """Raise on a bad line, or record it and go on when the options say to skip that kind."""

    def __init__(self, options: ReadOptions) -> None:
        self.options = options
        self.problems: list[Problem] = []

    def missing_audio(self, error: MissingAudioError) -> None:
        if not self.options.skip_missing:
            raise error
        self.problems.append(Problem("missing_audio", error.source, error.problem, error.line))

    def malformed(self, error: MalformedLineError) -> None:
        if not self.options.skip_malformed:
            raise error
        kind = "unknown_label" if isinstance(error, UnknownLabelError) else "malformed_line"
        self.problems.append(Problem(kind, error.source, error.problem, error.line))

    def unlabelled(self, path: Path, message: str) -> None:
        self.problems.append(Problem("unlabelled_file", str(path), message))


def is_audio_name(name: str) -> bool:
    return name.lower().endswith(AUDIO_EXTENSIONS) and not name.startswith(".")


class AudioIndex:
    """The audio files of one or more folders by stem, listed once (fast on 10^5+ files)."""

    def __init__(self, folders: list[Path]) -> None:
        self.folders = folders
        self._by_stem: dict[str, tuple[int, str, str]] = {}  # stem -> (rank, name, path)
        for folder in folders:
            try:
                entries = list(os.scandir(folder))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for entry in entries:
                name = entry.name
                if not is_audio_name(name) or not entry.is_file():
                    continue
                stem, extension = os.path.splitext(name)
                candidate = (AUDIO_EXTENSIONS.index(extension.lower()), name, entry.path)
                known = self._by_stem.get(stem)
                if known is None or candidate < known:
                    self._by_stem[stem] = candidate

    def find(self, stem: str) -> str | None:
        """The path of the audio file with this stem (.flac first, then .wav, .ogg, .mp3)."""
        found = self._by_stem.get(stem)
        return found[2] if found is not None else None

    def describe(self) -> str:
        parts = [str(f) if f.is_dir() else f"{f} (no such folder)" for f in self.folders]
        return " or ".join(parts)


def missing_audio_error(
    protocol: Path, line_number: int, stem: str, index: AudioIndex
) -> MissingAudioError:
    extensions = ",".join(ext.lstrip(".") for ext in AUDIO_EXTENSIONS)
    return MissingAudioError(
        protocol,
        f"audio for {stem!r} is missing: expected {stem}.{{{extensions}}} in {index.describe()}",
        line_number,
    )


def first_existing(candidates: list[Path], what: str) -> Path:
    """The first candidate path that exists, or a LayoutError listing every place looked."""
    for candidate in candidates:
        if candidate.exists():
            return candidate
    looked = "\n  ".join(str(c) for c in candidates)
    raise LayoutError(candidates[0], f"{what} not found; looked for:\n  {looked}")


def protocol_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines of a text protocol with their 1-based numbers.

    A file that is missing, not UTF-8 text, or has no entries raises at once.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as error:
        raise LayoutError(path, "protocol file not found") from error
    except IsADirectoryError as error:
        raise LayoutError(path, "expected a protocol file, got a directory") from error
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise MalformedLineError(
            path, f"expected UTF-8 text, got byte 0x{data[error.start]:02x}", line
        ) from error
    found = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line:
            found = True
            yield number, line
    if not found:
        raise EmptyProtocolError(
            path,
            f"the protocol is empty ({len(data)} bytes, no entries); expected one line per utterance",
        )


def check_root(root: Path) -> Path:
    if not root.exists():
        raise LayoutError(root, "dataset root not found")
    if not root.is_dir():
        raise LayoutError(root, "expected the dataset root folder, got a file")
    return root
