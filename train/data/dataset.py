"""What a reader returns: records plus the problems it met, and their counts."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

from train.data.records import LABELS, SPLITS, Record, Split

ProblemKind = Literal[
    "missing_audio",  # a protocol line whose audio is not on disk (skipped with skip_missing)
    "malformed_line",  # wrong column count, spoof without a system id, duplicate id (skip_malformed)
    "unknown_label",  # a label that is not one of the published spellings (skip_malformed)
    "unlabelled_file",  # folders/filenames: audio whose path or name carries no label, or both
    "unreadable_audio",  # check_audio: a file the audio front end cannot open
]
PROBLEM_KINDS: tuple[ProblemKind, ...] = (
    "missing_audio",
    "malformed_line",
    "unknown_label",
    "unlabelled_file",
    "unreadable_audio",
)

MAX_PROBLEM_EXAMPLES = 20
"""How many problems the summary lists one by one; all of them are counted."""


@dataclass(frozen=True)
class Problem:
    """Something a reader skipped instead of failing, with where it was and why."""

    kind: ProblemKind
    source: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{self.kind}: {where}: {self.message}"


@dataclass
class Dataset:
    """The records of one dataset, the problems met reading it, and how it was read."""

    format: str
    root: str
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)
    options: dict[str, object] = field(default_factory=dict)
    audio: dict[str, object] | None = None
    """Filled by check_audio: sample rates, channels, codecs and total duration seen."""

    def __len__(self) -> int:
        return len(self.records)

    def split(self, name: Split) -> list[Record]:
        """The records of one split, in reading order."""
        if name not in SPLITS:
            raise ValueError(f"expected a split in {SPLITS}, got {name!r}")
        return [record for record in self.records if record.split == name]

    def summary(self) -> dict[str, object]:
        """Counts by split, label and attack, and the problems: one JSON-ready object."""
        by_split: dict[str, object] = {}
        for split_name in SPLITS:
            records = [record for record in self.records if record.split == split_name]
            by_split[split_name] = _counts(records)
        problem_counts = Counter(problem.kind for problem in self.problems)
        summary: dict[str, object] = {
            "format": self.format,
            "root": self.root,
            "options": dict(self.options),
            **_counts(self.records),
            "splits": by_split,
            "problems": {
                "total": len(self.problems),
                "by_kind": {kind: problem_counts[kind] for kind in PROBLEM_KINDS},
                "examples": [asdict(problem) for problem in self.problems[:MAX_PROBLEM_EXAMPLES]],
            },
        }
        if self.audio is not None:
            summary["audio"] = self.audio
        return summary


def _counts(records: list[Record]) -> dict[str, object]:
    labels = Counter(record.label for record in records)
    attacks = Counter(record.attack for record in records)
    speakers = {record.speaker for record in records if record.speaker}
    return {
        "records": len(records),
        "labels": {label: labels[label] for label in LABELS},
        "attacks": dict(sorted(attacks.items())),
        "speakers": len(speakers),
    }
