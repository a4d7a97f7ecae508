"""Errors the dataset readers raise: each names the file, the line, and what was expected."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A dataset that cannot be read as asked, with the file (and line) and the problem named."""

    def __init__(self, source: str | Path, problem: str, line: int | None = None) -> None:
        self.source = str(source)
        self.line = line
        self.problem = problem
        where = f"{self.source}:{line}" if line is not None else self.source
        super().__init__(f"{where}: {problem}")

    def to_dict(self) -> dict[str, object]:
        return {
            "type": type(self).__name__,
            "file": self.source,
            "line": self.line,
            "message": self.problem,
        }


class DatasetOptionError(DatasetError):
    """An option that does not fit the format (unknown format, missing track, bad fractions)."""


class LayoutError(DatasetError):
    """The root does not hold the published layout: a protocol file or folder is not there."""


class EmptyProtocolError(DatasetError):
    """A protocol or metadata file with no entries in it."""


class MalformedLineError(DatasetError):
    """A protocol line that does not have the published shape (columns, ids, duplicates)."""


class UnknownLabelError(MalformedLineError):
    """A protocol line whose label is neither of the published spellings."""


class MissingAudioError(DatasetError):
    """A protocol line whose audio file is not on disk."""


class EmptyDatasetError(DatasetError):
    """Nothing usable was found: no labelled audio, or every line of a protocol was skipped."""
