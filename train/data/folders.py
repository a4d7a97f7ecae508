"""Unpublished layouts: labels from folder names (`folders`) or from file names (`filenames`).

Both walk the root (sorted, hidden entries skipped), list every audio file, and take a split
from a split-named folder in the path when there is one; the rest get the seeded split.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from train.data.common import (
    AUDIO_EXTENSIONS,
    UNKNOWN_ATTACK,
    Item,
    ProblemLog,
    ReadOptions,
    check_root,
    is_audio_name,
)
from train.data.errors import EmptyDatasetError
from train.data.records import BONAFIDE_ATTACK, Label, Split

LABEL_NAMES: dict[Label, frozenset[str]] = {
    "bonafide": frozenset({"bonafide", "real", "genuine"}),
    "spoof": frozenset({"spoof", "spoofed", "fake", "synthetic"}),
}
"""Folder names (whole name) and file-name tokens that give a label, after `_normalize`."""

SPLIT_NAMES: dict[str, Split] = {
    "train": "train",
    "training": "train",
    "dev": "dev",
    "val": "dev",
    "valid": "dev",
    "validation": "dev",
    "development": "dev",
    "eval": "eval",
    "evaluation": "eval",
    "test": "eval",
}
"""Folder names that fix a file's split, matched case-insensitively at any depth."""

_BONA_FIDE = re.compile(r"bona[\s_-]?fide", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")


def _normalize(name: str) -> str:
    return _BONA_FIDE.sub("bonafide", name).lower()


def _label_of(name: str) -> Label | None:
    for label, names in LABEL_NAMES.items():
        if name in names:
            return label
    return None


def filename_tokens(stem: str) -> list[str]:
    """Lower-case word and number tokens of a file name: 'RealVoice_bona-fide01' ->
    ['real', 'voice', 'bonafide', '01']."""
    return [token.lower() for token in _TOKEN.findall(_BONA_FIDE.sub("bonafide", stem))]


def _audio_files(root: Path) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """(file, its folder names below the root), in sorted, platform-independent order."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        relative = Path(folder).relative_to(root).parts
        for name in sorted(files):
            if is_audio_name(name):
                yield Path(folder) / name, relative


def _split_of(parts: tuple[str, ...]) -> tuple[Split | None, str | None]:
    """The split a split-named folder gives, or an error message when two disagree."""
    splits = {SPLIT_NAMES[p.lower()] for p in parts if p.lower() in SPLIT_NAMES}
    if len(splits) > 1:
        return None, f"its path names more than one split ({', '.join(sorted(splits))})"
    return (splits.pop() if splits else None), None


def _utterance_id(root: Path, path: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _finish(root: Path, items: list[Item], log: ProblemLog, expected: str) -> list[Item]:
    if not items:
        unlabelled = sum(1 for p in log.problems if p.kind == "unlabelled_file")
        raise EmptyDatasetError(
            root,
            f"no labelled audio found: expected {expected}, with audio files "
            f"({', '.join(AUDIO_EXTENSIONS)}); {unlabelled} audio file(s) had no label",
        )
    return items


def read_folders(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """Label from a `bonafide|real|genuine` or `spoof|fake|synthetic` folder at any depth.

    For spoof audio the first folder below the label folder (not a split name) is taken as
    the attack id (`fake/tacotron/x.wav` -> "tacotron"); otherwise "unknown". Speakers are
    not known in this layout, so the seeded split goes file by file.
    """
    root = check_root(root)
    items: list[Item] = []
    for path, parts in _audio_files(root):
        names = [_normalize(p) for p in parts]
        labels = {label for name in names if (label := _label_of(name)) is not None}
        if len(labels) != 1:
            problem = (
                "its path has both a bona fide and a spoof folder"
                if labels
                else "no bonafide|real|genuine or spoof|fake|synthetic folder in its path"
            )
            log.unlabelled(path, problem)
            continue
        split, split_problem = _split_of(parts)
        if split_problem is not None:
            log.unlabelled(path, split_problem)
            continue
        label = labels.pop()
        attack = BONAFIDE_ATTACK
        if label == "spoof":
            below = [
                p for p in parts[_last_label_index(names) + 1 :] if p.lower() not in SPLIT_NAMES
            ]
            attack = below[0] if below else UNKNOWN_ATTACK
        items.append(Item(str(path), label, "", attack, _utterance_id(root, path), split))
    return _finish(root, items, log, "bonafide|real|genuine/ and spoof|fake|synthetic/ folders")


def _last_label_index(names: list[str]) -> int:
    return max(i for i, name in enumerate(names) if _label_of(name) is not None)


def read_filenames(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """Label from a token of the file name: real/bonafide/genuine vs fake/spoof/synthetic."""
    root = check_root(root)
    items: list[Item] = []
    for path, parts in _audio_files(root):
        tokens = filename_tokens(path.stem)
        labels = {label for token in tokens if (label := _label_of(token)) is not None}
        if len(labels) != 1:
            problem = (
                "its name has both a bona fide and a spoof token"
                if labels
                else "no real/bonafide/genuine or fake/spoof/synthetic token in its name"
            )
            log.unlabelled(path, problem)
            continue
        split, split_problem = _split_of(parts)
        if split_problem is not None:
            log.unlabelled(path, split_problem)
            continue
        label = labels.pop()
        attack = BONAFIDE_ATTACK if label == "bonafide" else UNKNOWN_ATTACK
        items.append(Item(str(path), label, "", attack, _utterance_id(root, path), split))
    return _finish(root, items, log, "real/bonafide/genuine or fake/spoof/synthetic in file names")
