"""In-the-Wild: `meta.csv` (header `file,speaker,label`, label `bona-fide|spoof`), audio beside it."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from train.data.common import (
    UNKNOWN_ATTACK,
    Item,
    ProblemLog,
    ReadOptions,
    check_root,
    first_existing,
    protocol_lines,
)
from train.data.errors import (
    EmptyDatasetError,
    EmptyProtocolError,
    MalformedLineError,
    MissingAudioError,
    UnknownLabelError,
)
from train.data.records import BONAFIDE_ATTACK, Label

HEADER = ("file", "speaker", "label")
LABELS: dict[str, Label] = {"bona-fide": "bonafide", "bonafide": "bonafide", "spoof": "spoof"}
EXAMPLE = "0.wav,Alec Guinness,spoof"


def read_inthewild(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """Records of `meta.csv`; In-the-Wild publishes no split, so `split` is left to the seed."""
    root = check_root(root)
    meta = first_existing(
        [root / "meta.csv", root / "release_in_the_wild" / "meta.csv"], "In-the-Wild meta.csv"
    )
    folder = meta.parent
    names = {entry.name for entry in os.scandir(folder) if entry.is_file()}
    lines = protocol_lines(meta)
    header_line, header_text = next(lines)
    header = [cell.strip().lower() for cell in next(csv.reader([header_text]))]
    if any(name not in header for name in HEADER):
        raise MalformedLineError(
            meta, f"expected the header {','.join(HEADER)!r}, got {header_text!r}", header_line
        )
    column = {name: header.index(name) for name in HEADER}
    items: list[Item] = []
    seen: dict[str, int] = {}
    rows = 0
    for number, text in lines:
        rows += 1
        cells = [cell.strip() for cell in next(csv.reader([text]))]
        try:
            item = _parse_row(meta, number, cells, header, column, seen)
        except MalformedLineError as error:
            log.malformed(error)
            continue
        name = cells[column["file"]]
        seen[name] = number
        path = folder / name
        if name not in names and not ("/" in name and path.is_file()):
            log.missing_audio(
                MissingAudioError(meta, f"audio file {name!r} is missing: expected {path}", number)
            )
            continue
        items.append(Item(str(path), item.label, item.speaker, item.attack, item.utterance_id))
    if rows == 0:
        raise EmptyProtocolError(meta, "only a header, no entries; expected one row per file")
    if not items:
        raise EmptyDatasetError(
            meta, f"none of its {rows} rows could be used (see the problems skipped)"
        )
    return items


def _parse_row(
    meta: Path,
    number: int,
    cells: list[str],
    header: list[str],
    column: dict[str, int],
    seen: dict[str, int],
) -> Item:
    if len(cells) != len(header):
        raise MalformedLineError(
            meta,
            f"expected {len(header)} comma-separated fields ({','.join(header)}), like "
            f"{EXAMPLE!r}; got {len(cells)}: {','.join(cells)!r}",
            number,
        )
    raw_label = cells[column["label"]]
    label = LABELS.get(raw_label.lower())
    if label is None:
        raise UnknownLabelError(
            meta, f"expected label 'bona-fide' or 'spoof', got {raw_label!r}", number
        )
    name = cells[column["file"]]
    if not name:
        raise MalformedLineError(meta, "expected a file name in the 'file' field, got ''", number)
    if name in seen:
        raise MalformedLineError(meta, f"file {name!r} already listed on line {seen[name]}", number)
    return Item(
        path=name,
        label=label,
        speaker=cells[column["speaker"]],
        attack=BONAFIDE_ATTACK if label == "bonafide" else UNKNOWN_ATTACK,
        utterance_id=os.path.splitext(name)[0],
    )
