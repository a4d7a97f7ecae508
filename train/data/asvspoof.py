"""ASVspoof 2019 LA, 2021 LA/DF and ASVspoof 5: space-separated protocols in published layouts.

Each protocol is described by data (`ProtocolSpec`): its columns, which of them hold the
speaker, the utterance, the system id and the key, and one published line to quote in errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from train.data.common import (
    AudioIndex,
    Item,
    ProblemLog,
    ReadOptions,
    check_root,
    first_existing,
    missing_audio_error,
    protocol_lines,
)
from train.data.errors import (
    DatasetOptionError,
    EmptyDatasetError,
    MalformedLineError,
    UnknownLabelError,
)
from train.data.records import BONAFIDE_ATTACK, Label, Split

KEYS: tuple[Label, ...] = ("bonafide", "spoof")
NO_SYSTEM = ("-", "bonafide")
"""What protocols write in the system column of a bona fide line."""


@dataclass(frozen=True)
class ProtocolSpec:
    name: str
    columns: tuple[str, ...]
    speaker: int
    utterance: int
    attack: int
    key: int
    example: str

    def describe(self) -> str:
        return f"{len(self.columns)} space-separated columns ({' '.join(self.columns)})"


ASVSPOOF2019_LA = ProtocolSpec(
    name="ASVspoof 2019 LA cm protocol",
    columns=("SPEAKER_ID", "AUDIO_FILE_NAME", "-", "SYSTEM_ID", "KEY"),
    speaker=0,
    utterance=1,
    attack=3,
    key=4,
    example="LA_0079 LA_T_1004644 - A01 spoof",
)
ASVSPOOF2021_LA = ProtocolSpec(
    name="ASVspoof 2021 LA trial_metadata",
    columns=("SPEAKER", "TRIAL", "CODEC", "TRANSMISSION", "ATTACK", "KEY", "TRIM", "SUBSET"),
    speaker=0,
    utterance=1,
    attack=4,
    key=5,
    example="LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
)
ASVSPOOF2021_DF = ProtocolSpec(
    name="ASVspoof 2021 DF trial_metadata",
    columns=(
        "SPEAKER",
        "TRIAL",
        "CODEC",
        "SOURCE",
        "ATTACK",
        "KEY",
        "TRIM",
        "SUBSET",
        "VOCODER",
        "TASK",
        "TEAM",
        "GENDER_PAIR",
        "LANGUAGE",
    ),
    speaker=0,
    utterance=1,
    attack=4,
    key=5,
    example="LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -",
)
ASVSPOOF5 = ProtocolSpec(
    name="ASVspoof 5 protocol",
    columns=(
        "SPEAKER_ID",
        "FLAC_FILE_NAME",
        "SPEAKER_GENDER",
        "CODEC",
        "CODEC_Q",
        "CODEC_SEED",
        "ATTACK_TAG",
        "ATTACK_LABEL",
        "KEY",
        "TMP",
    ),
    speaker=0,
    utterance=1,
    attack=7,
    key=8,
    example="T_4850 T_0000000000 F - - - AC3 A05 spoof -",
)


def parse_protocol(
    protocol: Path,
    spec: ProtocolSpec,
    split: Split,
    audio: AudioIndex,
    log: ProblemLog,
) -> list[Item]:
    """Items of one protocol file; bad lines raise or are logged per the options."""
    items: list[Item] = []
    seen: dict[str, int] = {}
    lines = 0
    for number, line in protocol_lines(protocol):
        fields = line.split()
        if lines == 0 and len(fields) == len(spec.columns) and fields[spec.key].upper() == "KEY":
            continue  # a header row naming the columns
        lines += 1
        try:
            item = _parse_line(protocol, number, fields, spec, split, audio, seen)
        except MalformedLineError as error:
            log.malformed(error)
            continue
        if item is None:
            stem = fields[spec.utterance]
            log.missing_audio(missing_audio_error(protocol, number, stem, audio))
            continue
        seen[item.utterance_id] = number
        items.append(item)
    if not items:
        raise EmptyDatasetError(
            protocol,
            f"none of its {lines} lines could be used (see the problems skipped); "
            f"expected audio in {audio.describe()}",
        )
    return items


def _parse_line(
    protocol: Path,
    number: int,
    fields: list[str],
    spec: ProtocolSpec,
    split: Split,
    audio: AudioIndex,
    seen: dict[str, int],
) -> Item | None:
    if len(fields) != len(spec.columns):
        raise MalformedLineError(
            protocol,
            f"expected {spec.describe()}, like {spec.example!r}; "
            f"got {len(fields)} column(s): {' '.join(fields)!r}",
            number,
        )
    key = fields[spec.key]
    if key not in KEYS:
        raise UnknownLabelError(
            protocol,
            f"expected 'bonafide' or 'spoof' in column {spec.key + 1} ({spec.columns[spec.key]}), "
            f"got {key!r}",
            number,
        )
    utterance = fields[spec.utterance]
    if utterance in seen:
        raise MalformedLineError(
            protocol, f"utterance {utterance!r} already listed on line {seen[utterance]}", number
        )
    attack = fields[spec.attack]
    if key == "spoof" and attack in NO_SYSTEM:
        raise MalformedLineError(
            protocol,
            f"expected a system id (like A01) in column {spec.attack + 1} "
            f"({spec.columns[spec.attack]}) of a spoof line, got {attack!r}",
            number,
        )
    path = audio.find(utterance)
    if path is None:
        return None
    return Item(
        path=path,
        label=key,
        speaker=fields[spec.speaker],
        attack=BONAFIDE_ATTACK if key == "bonafide" else attack,
        utterance_id=utterance,
        split=split,
    )


# ------------------------------------------------------------------------ ASVspoof 2019 LA

ASVSPOOF2019_PROTOCOLS: dict[Split, str] = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}


def read_asvspoof2019(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """`LA/ASVspoof2019_LA_cm_protocols/*.txt`, audio in `LA/ASVspoof2019_LA_<split>/flac/`."""
    root = check_root(root)
    if not (root / "ASVspoof2019_LA_cm_protocols").is_dir() and (root / "LA").is_dir():
        root = root / "LA"  # the folder above LA/ is accepted too
    items: list[Item] = []
    for split in options.splits:
        protocol = first_existing(
            [root / "ASVspoof2019_LA_cm_protocols" / ASVSPOOF2019_PROTOCOLS[split]],
            f"ASVspoof 2019 LA {split} protocol",
        )
        audio = AudioIndex([root / f"ASVspoof2019_LA_{split}" / "flac"])
        items += parse_protocol(protocol, ASVSPOOF2019_LA, split, audio, log)
    return items


# ----------------------------------------------------------------------- ASVspoof 2021 LA/DF

ASVSPOOF2021_TRACKS: dict[str, ProtocolSpec] = {"LA": ASVSPOOF2021_LA, "DF": ASVSPOOF2021_DF}


def read_asvspoof2021(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """`keys/<track>/CM/trial_metadata.txt`, audio in `ASVspoof2021_<track>_eval/flac/`.

    All of 2021 is evaluation data: every record's split is "eval" (the key's own SUBSET
    column, eval/progress/hidden, is a scoring partition of that one set).
    """
    track = (options.track or "").upper()
    if track not in ASVSPOOF2021_TRACKS:
        raise DatasetOptionError(
            root,
            f"ASVspoof 2021 needs a track: expected one of {sorted(ASVSPOOF2021_TRACKS)}, "
            f"got {options.track!r}",
        )
    root = check_root(root)
    if "eval" not in options.splits:
        return []
    protocol = first_existing(
        [
            root / "keys" / track / "CM" / "trial_metadata.txt",
            root / f"{track}-keys-full" / "keys" / track / "CM" / "trial_metadata.txt",
        ],
        f"ASVspoof 2021 {track} key",
    )
    folder = f"ASVspoof2021_{track}_eval"
    # DF ships in four parts, each unpacking to <part>/ASVspoof2021_DF_eval/flac/.
    parts = sorted(root.glob(f"{folder}_part*/{folder}/flac"))
    audio = AudioIndex([root / folder / "flac", *parts])
    return parse_protocol(protocol, ASVSPOOF2021_TRACKS[track], "eval", audio, log)


# -------------------------------------------------------------------------------- ASVspoof 5

ASVSPOOF5_PROTOCOLS: dict[Split, str] = {
    "train": "ASVspoof5.train.tsv",
    "dev": "ASVspoof5.dev.track_1.tsv",
    "eval": "ASVspoof5.eval.track_1.tsv",
}
ASVSPOOF5_AUDIO: dict[Split, str] = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}


def read_asvspoof5(root: Path, options: ReadOptions, log: ProblemLog) -> list[Item]:
    """`ASVspoof5.*.tsv` (at the root or in `ASVspoof5_protocols/`), audio in `flac_T|D|E_eval/`."""
    root = check_root(root)
    items: list[Item] = []
    for split in options.splits:
        name = ASVSPOOF5_PROTOCOLS[split]
        protocol = first_existing(
            [root / name, root / "ASVspoof5_protocols" / name], f"ASVspoof 5 {split} protocol"
        )
        folders = [root / ASVSPOOF5_AUDIO[split]]
        if split == "eval":  # eval unpacks to flac_E_eval/; accept other flac_E* names too
            folders += sorted(p for p in root.glob("flac_E*") if p != folders[0])
        items += parse_protocol(protocol, ASVSPOOF5, split, AudioIndex(folders), log)
    return items
