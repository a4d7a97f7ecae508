"""The format table and the one entry point, `load_dataset`."""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from train.data.asvspoof import read_asvspoof5, read_asvspoof2019, read_asvspoof2021
from train.data.common import (
    DEFAULT_SPLIT_FRACTIONS,
    Item,
    ProblemLog,
    ReadOptions,
    SplitBy,
)
from train.data.dataset import Dataset, Problem
from train.data.errors import DatasetOptionError, EmptyDatasetError
from train.data.folders import read_filenames, read_folders
from train.data.inthewild import read_inthewild
from train.data.records import SPLITS, Split
from train.data.splits import assign_splits

Reader = Callable[[Path, ReadOptions, ProblemLog], list[Item]]


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    title: str
    reader: Reader
    layout: str
    """The published layout under --root, one line, for --help and the docs."""
    published_splits: tuple[Split, ...]
    """Splits the layout itself defines; empty when the seeded split assigns them."""
    tracks: tuple[str, ...] = ()


FORMATS: dict[str, DatasetFormat] = {
    spec.name: spec
    for spec in (
        DatasetFormat(
            "asvspoof2019",
            "ASVspoof 2019 LA",
            read_asvspoof2019,
            "ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.{train.trn,dev.trl,eval.trl}.txt, "
            "ASVspoof2019_LA_{train,dev,eval}/flac/",
            SPLITS,
        ),
        DatasetFormat(
            "asvspoof2021",
            "ASVspoof 2021 LA/DF (eval keys)",
            read_asvspoof2021,
            "keys/{LA,DF}/CM/trial_metadata.txt, ASVspoof2021_{LA,DF}_eval/flac/",
            ("eval",),
            tracks=("LA", "DF"),
        ),
        DatasetFormat(
            "asvspoof5",
            "ASVspoof 5 (track 1)",
            read_asvspoof5,
            "[ASVspoof5_protocols/]ASVspoof5.{train,dev.track_1,eval.track_1}.tsv, "
            "flac_T/, flac_D/, flac_E_eval/",
            SPLITS,
        ),
        DatasetFormat(
            "inthewild",
            "In-the-Wild",
            read_inthewild,
            "meta.csv (file,speaker,label with bona-fide|spoof) and the audio files beside it",
            (),
        ),
        DatasetFormat(
            "folders",
            "Folders named by label",
            read_folders,
            "bonafide|real|genuine/ and spoof|fake|synthetic/ at any depth, "
            "optional train|dev|eval/ above or below",
            (),
        ),
        DatasetFormat(
            "filenames",
            "Labels in file names",
            read_filenames,
            "audio files anywhere below the root whose names contain real|bonafide|genuine "
            "or fake|spoof|synthetic",
            (),
        ),
    )
}


def _check_fractions(fractions: tuple[float, ...], root: Path) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != 3
        or any(not math.isfinite(v) or v < 0 for v in values)
        or values[0] <= 0
        or abs(sum(values) - 1.0) > 1e-6
    ):
        raise DatasetOptionError(
            root,
            "expected three split fractions train,dev,eval >= 0 with train > 0 summing to 1, "
            f"got {fractions!r}",
        )
    return values  # type: ignore[return-value]


def load_dataset(
    format: str,
    root: str | Path,
    *,
    skip_missing: bool = False,
    skip_malformed: bool = False,
    track: str | None = None,
    splits: Iterable[str] | None = None,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_by: SplitBy = "auto",
    check_audio: bool = False,
) -> Dataset:
    """Read a dataset in one of the `FORMATS` layouts into records and problems.

    skip_missing: protocol lines whose audio is missing are skipped and counted instead of
    raising MissingAudioError. skip_malformed: malformed lines (UnknownLabelError included)
    likewise. An empty protocol, or one of which no line is usable, raises either way.
    track: "LA" or "DF", for asvspoof2021 only. splits: read only these (default all).
    seed, split_fractions, split_by: the seeded split, for layouts that publish none.
    check_audio: open every file's header (device.audio.read_info); unreadable files are
    dropped and counted, and sample rates, channels, codecs and duration are summarized.
    """
    root = Path(root).expanduser().absolute()
    spec = FORMATS.get(format)
    if spec is None:
        raise DatasetOptionError(
            root, f"unknown dataset format {format!r}: expected one of {', '.join(FORMATS)}"
        )
    if track is not None and not spec.tracks:
        raise DatasetOptionError(root, f"--track applies to asvspoof2021 only, not {format}")
    wanted = tuple(splits) if splits is not None else SPLITS
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown or not wanted:
        raise DatasetOptionError(root, f"expected splits from {SPLITS}, got {list(wanted)}")
    if spec.published_splits and not set(wanted) & set(spec.published_splits):
        raise DatasetOptionError(
            root,
            f"{format} has only the {'/'.join(spec.published_splits)} split(s), asked for {list(wanted)}",
        )
    if split_by not in ("auto", "speaker", "file"):
        raise DatasetOptionError(root, f"expected split_by auto, speaker or file, got {split_by!r}")
    options = ReadOptions(
        skip_missing=skip_missing,
        skip_malformed=skip_malformed,
        track=track,
        splits=tuple(s for s in SPLITS if s in wanted),  # type: ignore[misc]
        seed=int(seed),
        split_fractions=_check_fractions(split_fractions, root),
        split_by=split_by,
    )
    log = ProblemLog(options)
    items = spec.reader(root, options, log)
    records, rule = assign_splits(items, options)
    records = [record for record in records if record.split in options.splits]
    if not records:
        raise EmptyDatasetError(
            root, f"no records in the split(s) asked for: {list(options.splits)}"
        )
    recorded: dict[str, object] = {
        "skip_missing": skip_missing,
        "skip_malformed": skip_malformed,
        "splits": list(options.splits),
        **rule,
    }
    if spec.tracks:
        recorded["track"] = (track or "").upper()
    dataset = Dataset(format, str(root), records, log.problems, recorded)
    if check_audio:
        _check_audio(dataset)
    return dataset


class ReaderSettings(Protocol):
    """The reader settings of a training run (train.config.TrainConfig has them)."""

    format: str
    root: str
    skip_missing: bool
    skip_malformed: bool
    track: str | None
    seed: int


def read_dataset(config: ReaderSettings) -> Dataset:
    """A run's dataset, read with the run's reader settings (training and convert share it)."""
    return load_dataset(
        config.format,
        config.root,
        skip_missing=config.skip_missing,
        skip_malformed=config.skip_malformed,
        track=config.track,
        seed=config.seed,
    )


def _check_audio(dataset: Dataset) -> None:
    """Open each file's header with the shared front end; drop and count unreadable ones."""
    from rich.console import Console
    from rich.progress import track

    from device.audio import AudioError, read_info

    console = Console(stderr=True)
    rates: Counter[int] = Counter()
    channels: Counter[int] = Counter()
    codecs: Counter[str] = Counter()
    duration_s = 0.0
    checked = len(dataset.records)
    readable = []
    for record in track(
        dataset.records,
        description="checking audio",
        console=console,
        disable=not (console.is_terminal and sys.stderr.isatty()),
    ):
        try:
            info = read_info(record.path)
            if info.frames <= 0 or info.sample_rate <= 0:
                raise AudioError(record.path, f"no audio in it ({info.frames} frames)")
        except AudioError as error:
            dataset.problems.append(Problem("unreadable_audio", record.path, error.problem))
            continue
        readable.append(record)
        rates[info.sample_rate] += 1
        channels[info.channels] += 1
        codecs[f"{info.format}/{info.subtype}"] += 1
        duration_s += info.duration_s
    dataset.records = readable
    dataset.audio = {
        "checked": checked,
        "readable": len(readable),
        "sample_rates_hz": {str(k): v for k, v in sorted(rates.items())},
        "channels": {str(k): v for k, v in sorted(channels.items())},
        "codecs": dict(sorted(codecs.items())),
        "total_duration_s": round(duration_s, 3),
    }
