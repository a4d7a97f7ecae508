"""Dataset readers on small trees written in each published layout, with real audio files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from train.data import (
    FORMATS,
    DatasetOptionError,
    EmptyDatasetError,
    EmptyProtocolError,
    LayoutError,
    MalformedLineError,
    MissingAudioError,
    UnknownLabelError,
    load_dataset,
)
from train.data.cli import main
from train.data.folders import filename_tokens

REPO = Path(__file__).resolve().parents[1]


def write_audio(
    path: Path, sample_rate: int = 16000, channels: int = 1, seconds: float = 0.05
) -> Path:
    """A short noise burst; the format follows the extension (FLAC, WAV, OGG or MP3)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    samples = (0.1 * rng.standard_normal((int(seconds * sample_rate), channels))).astype(np.float32)
    subtype = {".ogg": "VORBIS", ".mp3": "MPEG_LAYER_III"}.get(path.suffix.lower())
    sf.write(path, samples, sample_rate, subtype=subtype, format=path.suffix.lstrip(".").upper())
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


# --------------------------------------------------------------------- published layouts

# (speaker, utterance, key, attack) rows per split, shaped like the real protocols.
ASV19 = {
    "train": [
        ("LA_0079", "LA_T_1138215", "bonafide", "-"),
        ("LA_0079", "LA_T_1004644", "spoof", "A01"),
        ("LA_0080", "LA_T_1056709", "spoof", "A02"),
        ("LA_0080", "LA_T_1271820", "bonafide", "-"),
        ("LA_0081", "LA_T_1333944", "spoof", "A01"),
    ],
    "dev": [
        ("LA_0069", "LA_D_1047731", "bonafide", "-"),
        ("LA_0069", "LA_D_1105538", "spoof", "A03"),
        ("LA_0070", "LA_D_1129564", "spoof", "A04"),
    ],
    "eval": [
        ("LA_0039", "LA_E_2834763", "spoof", "A11"),
        ("LA_0014", "LA_E_8877452", "spoof", "A14"),
        ("LA_0030", "LA_E_5849185", "bonafide", "-"),
        ("LA_0033", "LA_E_4581379", "bonafide", "-"),
    ],
}
ASV19_PROTOCOL = {
    "train": "ASVspoof2019.LA.cm.train.trn.txt",
    "dev": "ASVspoof2019.LA.cm.dev.trl.txt",
    "eval": "ASVspoof2019.LA.cm.eval.trl.txt",
}


def asv19_line(speaker: str, utterance: str, key: str, attack: str) -> str:
    return f"{speaker} {utterance} - {attack} {key}"


def build_asvspoof2019(root: Path) -> Path:
    """root/LA with the cm protocols and flac folders, as in the LA.zip release."""
    la = root / "LA"
    for split, rows in ASV19.items():
        protocol = la / "ASVspoof2019_LA_cm_protocols" / ASV19_PROTOCOL[split]
        write_lines(protocol, [asv19_line(*row) for row in rows])
        for _, utterance, _, _ in rows:
            write_audio(la / f"ASVspoof2019_LA_{split}" / "flac" / f"{utterance}.flac")
    return la


ASV21_LA = [
    "LA_0009 LA_E_9332881 alaw ita_tx A07 spoof notrim eval",
    "LA_0020 LA_E_7294490 g722 loc_tx bonafide bonafide notrim eval",
    "LA_0012 LA_E_1000006 gsm pstn A19 spoof notrim progress",
    "LA_0013 LA_E_1000007 none - A13 spoof trim hidden",
]
ASV21_DF = [
    "LA_0023 DF_E_2000011 nocodec asvspoof A14 spoof notrim progress traditional_vocoder - - - -",
    "TEF2 DF_E_2000013 low_m4a vcc2020 Task1-team20 spoof notrim eval neural_vocoder_nonautoregressive Task1 team20 FF E",
    "TGF1 DF_E_2000024 mp3m4a vcc2020 Task2-team12 spoof notrim eval traditional_vocoder Task2 team12 FF G",
    "LA_0043 DF_E_2000026 mp3m4a asvspoof bonafide bonafide notrim eval bonafide - - - -",
    "VCC2TM2 DF_E_2000031 nocodec vcc2018 - bonafide notrim eval bonafide - - - -",
]


def build_asvspoof2021(root: Path, track: str) -> Path:
    lines = ASV21_LA if track == "LA" else ASV21_DF
    write_lines(root / "keys" / track / "CM" / "trial_metadata.txt", lines)
    for number, line in enumerate(lines):
        utterance = line.split()[1]
        if track == "DF":  # DF ships in parts: <part>/ASVspoof2021_DF_eval/flac/
            folder = (
                root / f"ASVspoof2021_DF_eval_part0{number % 2}" / "ASVspoof2021_DF_eval" / "flac"
            )
        else:
            folder = root / "ASVspoof2021_LA_eval" / "flac"
        write_audio(folder / f"{utterance}.flac")
    return root


ASV5 = {
    "train": [
        "T_4850 T_0000000000 F - - - AC3 A05 spoof -",
        "T_3734 T_0000000011 F - - - - bonafide bonafide -",
        "T_1234 T_0000000012 M - - - AC1 A01 spoof -",
    ],
    "dev": [
        "D_4461 D_0000000169 F - - - AC1 A14 spoof -",
        "D_0461 D_0000000190 M - - - - bonafide bonafide -",
    ],
    "eval": [
        "E_4608 E_0000000024 M C11 4 E_0004890277 AC1 A24 spoof -",
        "E_2040 E_0000000034 M - 0 - AC1 A31 spoof -",
        "E_0017 E_0000000077 F - 0 - - bonafide bonafide -",
    ],
}
ASV5_PROTOCOL = {
    "train": "ASVspoof5.train.tsv",
    "dev": "ASVspoof5.dev.track_1.tsv",
    "eval": "ASVspoof5.eval.track_1.tsv",
}
ASV5_AUDIO = {"train": "flac_T", "dev": "flac_D", "eval": "flac_E_eval"}


def build_asvspoof5(root: Path) -> Path:
    """Protocols as ASVspoof5_protocols.tar.gz unpacks them, audio as flac_*.tar unpack."""
    for split, lines in ASV5.items():
        write_lines(root / "ASVspoof5_protocols" / ASV5_PROTOCOL[split], lines)
        for line in lines:
            write_audio(root / ASV5_AUDIO[split] / f"{line.split()[1]}.flac")
    return root


def itw_rows(speakers: int = 12, per_speaker: int = 4) -> list[tuple[str, str, str]]:
    rows = []
    for s in range(speakers):
        for k in range(per_speaker):
            label = "bona-fide" if k % 2 == 0 else "spoof"
            rows.append((f"{len(rows)}.wav", f"Speaker {s:02d}", label))
    return rows


def build_inthewild(root: Path, rows: list[tuple[str, str, str]] | None = None) -> Path:
    """release_in_the_wild/: meta.csv and N.wav beside it; mixed rates and channels."""
    folder = root / "release_in_the_wild"
    rows = itw_rows() if rows is None else rows
    write_lines(folder / "meta.csv", ["file,speaker,label", *(",".join(r) for r in rows)])
    for number, (name, _, _) in enumerate(rows):
        write_audio(
            folder / name, sample_rate=(16000, 22050, 44100)[number % 3], channels=1 + number % 2
        )
    return folder


# ------------------------------------------------------------------- reading the layouts


def test_asvspoof2019_counts_labels_splits_and_attacks(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    dataset = load_dataset("asvspoof2019", la)
    assert [len(dataset.split(s)) for s in ("train", "dev", "eval")] == [5, 3, 4]
    train = {r.utterance_id: r for r in dataset.split("train")}
    assert train["LA_T_1138215"].label == "bonafide"
    assert train["LA_T_1138215"].attack == "bonafide"
    assert train["LA_T_1004644"].label == "spoof"
    assert train["LA_T_1004644"].attack == "A01"
    assert train["LA_T_1004644"].speaker == "LA_0079"
    assert Path(train["LA_T_1004644"].path) == la / "ASVspoof2019_LA_train/flac/LA_T_1004644.flac"
    summary = dataset.summary()
    assert summary["labels"] == {"bonafide": 5, "spoof": 7}
    assert summary["splits"]["eval"]["attacks"] == {"A11": 1, "A14": 1, "bonafide": 2}
    assert summary["attacks"]["A01"] == 2
    assert summary["problems"]["total"] == 0
    # The folder above LA/ is accepted, and splits can be read alone.
    assert len(load_dataset("asvspoof2019", tmp_path, splits=["dev"])) == 3


def test_asvspoof2019_finds_audio_written_as_wav(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    flac = la / "ASVspoof2019_LA_dev/flac/LA_D_1047731.flac"
    flac.unlink()
    wav = write_audio(flac.with_suffix(".WAV"), sample_rate=48000, channels=2)
    dataset = load_dataset("asvspoof2019", la, splits=["dev"])
    assert {r.utterance_id: r.path for r in dataset.records}["LA_D_1047731"] == str(wav)


@pytest.mark.parametrize(
    ("track", "expected"),
    [
        ("LA", {"bonafide": 1, "spoof": 3, "attacks": {"A07", "A13", "A19", "bonafide"}}),
        (
            "DF",
            {
                "bonafide": 2,
                "spoof": 3,
                "attacks": {"A14", "Task1-team20", "Task2-team12", "bonafide"},
            },
        ),
    ],
)
def test_asvspoof2021_keys(tmp_path: Path, track: str, expected: dict) -> None:
    build_asvspoof2021(tmp_path, track)
    dataset = load_dataset("asvspoof2021", tmp_path, track=track)
    labels = Counter(r.label for r in dataset.records)
    assert labels == {"bonafide": expected["bonafide"], "spoof": expected["spoof"]}
    assert {r.attack for r in dataset.records} == expected["attacks"]
    assert {r.split for r in dataset.records} == {"eval"}
    assert dataset.summary()["options"]["track"] == track


def test_asvspoof2021_needs_a_track(tmp_path: Path) -> None:
    build_asvspoof2021(tmp_path, "LA")
    with pytest.raises(DatasetOptionError, match=r"expected one of \['DF', 'LA'\], got None"):
        load_dataset("asvspoof2021", tmp_path)
    with pytest.raises(LayoutError, match=r"keys/DF/CM/trial_metadata.txt"):
        load_dataset("asvspoof2021", tmp_path, track="DF")
    with pytest.raises(DatasetOptionError, match="asvspoof2021 only"):
        load_dataset("asvspoof2019", tmp_path, track="LA")


def test_asvspoof5_ten_columns(tmp_path: Path) -> None:
    build_asvspoof5(tmp_path)
    dataset = load_dataset("asvspoof5", tmp_path)
    assert [len(dataset.split(s)) for s in ("train", "dev", "eval")] == [3, 2, 3]
    by_id = {r.utterance_id: r for r in dataset.records}
    assert by_id["T_0000000000"].attack == "A05"
    assert by_id["T_0000000011"].label == "bonafide"
    assert by_id["T_0000000011"].attack == "bonafide"
    assert by_id["E_0000000024"].speaker == "E_4608"
    assert Path(by_id["E_0000000024"].path).parent.name == "flac_E_eval"


def test_inthewild_speaker_disjoint_seeded_split(tmp_path: Path) -> None:
    build_inthewild(tmp_path)
    dataset = load_dataset("inthewild", tmp_path)
    assert len(dataset) == 48
    assert Counter(r.label for r in dataset.records) == {"bonafide": 24, "spoof": 24}
    assert {r.attack for r in dataset.records} == {"bonafide", "unknown"}
    speakers = {s: {r.speaker for r in dataset.split(s)} for s in ("train", "dev", "eval")}
    assert all(speakers.values()), speakers
    assert not speakers["train"] & speakers["dev"]
    assert not speakers["train"] & speakers["eval"]
    assert not speakers["dev"] & speakers["eval"]
    assert dataset.options["split_by"] == "speaker"
    # 12 speakers x 4 files, fractions 0.7/0.15/0.15 of 48: 34/7/7 by middles -> 8/2/2 speakers.
    assert [len(speakers[s]) for s in ("train", "dev", "eval")] == [8, 2, 2]

    again = load_dataset("inthewild", tmp_path / "release_in_the_wild")
    assert [r.split for r in again.records] == [r.split for r in dataset.records]
    other_seed = load_dataset("inthewild", tmp_path, seed=1)
    assert [r.split for r in other_seed.records] != [r.split for r in dataset.records]
    by_file = load_dataset(
        "inthewild", tmp_path, split_by="file", split_fractions=(0.5, 0.25, 0.25)
    )
    assert Counter(r.split for r in by_file.records) == {"train": 24, "dev": 12, "eval": 12}
    only_train = load_dataset("inthewild", tmp_path, splits=["train"])
    assert {r.split for r in only_train.records} == {"train"}


def test_folders_with_split_folders_above_and_below(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    write_audio(root / "train" / "bonafide" / "a.wav")
    write_audio(root / "train" / "bonafide" / "spk1" / "b.FLAC", sample_rate=44100)
    write_audio(root / "train" / "fake" / "tacotron" / "c.wav")
    write_audio(root / "real" / "dev" / "d.ogg", sample_rate=22050)
    write_audio(root / "synthetic" / "eval" / "vits" / "e.mp3", sample_rate=24000)
    write_audio(root / "Spoof" / "validation" / "f.wav")
    write_audio(root / "notes" / "g.wav")  # no label folder: counted, not read
    write_audio(root / "real" / "fake" / "h.wav")  # both labels: counted, not read
    write_audio(root / ".cache" / "real" / "i.wav")  # hidden folder: ignored
    (root / "real" / "README.txt").write_text("not audio")
    dataset = load_dataset("folders", root)
    by_id = {r.utterance_id: r for r in dataset.records}
    assert sorted(by_id) == [
        "Spoof/validation/f",
        "real/dev/d",
        "synthetic/eval/vits/e",
        "train/bonafide/a",
        "train/bonafide/spk1/b",
        "train/fake/tacotron/c",
    ]
    assert [by_id[k].split for k in sorted(by_id)] == [
        "dev",
        "dev",
        "eval",
        "train",
        "train",
        "train",
    ]
    assert by_id["train/fake/tacotron/c"].attack == "tacotron"
    assert by_id["synthetic/eval/vits/e"].attack == "vits"
    assert by_id["Spoof/validation/f"].attack == "unknown"
    assert by_id["train/bonafide/spk1/b"].label == "bonafide"
    unlabelled = {Path(p.source).name for p in dataset.problems if p.kind == "unlabelled_file"}
    assert unlabelled == {"g.wav", "h.wav"}
    assert dataset.options["published_or_folder_splits"] == 6


def test_folders_without_split_folders_get_a_stratified_seeded_split(tmp_path: Path) -> None:
    for k in range(20):
        write_audio(tmp_path / "bonafide" / f"b{k:02d}.wav")
        write_audio(tmp_path / "spoof" / f"s{k:02d}.flac")
    dataset = load_dataset("folders", tmp_path)
    counts = Counter((r.split, r.label) for r in dataset.records)
    # Each label cut on its own: 20 files -> 14/3/3.
    for label in ("bonafide", "spoof"):
        assert [counts[(s, label)] for s in ("train", "dev", "eval")] == [14, 3, 3]
    assert dataset.options["split_by"] == "file"
    with pytest.raises(DatasetOptionError, match="summing to 1"):
        load_dataset("folders", tmp_path, split_fractions=(0.7, 0.2, 0.2))


def test_filenames_tokens_give_the_label(tmp_path: Path) -> None:
    assert filename_tokens("RealVoice_bona-fide01") == ["real", "voice", "bonafide", "01"]
    write_audio(tmp_path / "clips" / "real_001.wav")
    write_audio(tmp_path / "clips" / "speaker3-genuine.flac")
    write_audio(tmp_path / "clips" / "BonaFide7.wav")
    write_audio(tmp_path / "clips" / "fake_001.wav")
    write_audio(tmp_path / "clips" / "SYNTHETIC-x.mp3")
    write_audio(tmp_path / "clips" / "test" / "clip_spoof.ogg")
    write_audio(tmp_path / "clips" / "realfake.wav")  # one token that is neither
    write_audio(tmp_path / "clips" / "real_vs_fake.wav")  # both
    dataset = load_dataset("filenames", tmp_path)
    labels = {Path(r.path).name: r.label for r in dataset.records}
    assert labels == {
        "real_001.wav": "bonafide",
        "speaker3-genuine.flac": "bonafide",
        "BonaFide7.wav": "bonafide",
        "fake_001.wav": "spoof",
        "SYNTHETIC-x.mp3": "spoof",
        "clip_spoof.ogg": "spoof",
    }
    assert {r.split for r in dataset.records if Path(r.path).name == "clip_spoof.ogg"} == {"eval"}
    assert sorted(Path(p.source).name for p in dataset.problems) == [
        "real_vs_fake.wav",
        "realfake.wav",
    ]


# --------------------------------------------------------------------------- error paths


@dataclass(frozen=True)
class ProtocolCase:
    """A protocol layout, and how to write a good, an unknown-label and a short line in it."""

    format: str
    options: dict
    build: object
    protocol: str
    audio: str
    extension: str
    header_lines: int
    good: str
    unknown_label: str
    short: str


def _cases() -> list[ProtocolCase]:
    return [
        ProtocolCase(
            "asvspoof2019",
            {"splits": ["train"]},
            build_asvspoof2019,
            "LA/ASVspoof2019_LA_cm_protocols/ASVspoof2019.LA.cm.train.trn.txt",
            "LA/ASVspoof2019_LA_train/flac",
            ".flac",
            0,
            "LA_0090 {u} - A06 spoof",
            "LA_0090 {u} - - genuine",
            "LA_0090 {u} A06 spoof",
        ),
        ProtocolCase(
            "asvspoof2021",
            {"track": "LA"},
            lambda root: build_asvspoof2021(root, "LA"),
            "keys/LA/CM/trial_metadata.txt",
            "ASVspoof2021_LA_eval/flac",
            ".flac",
            0,
            "LA_0009 {u} ulaw loc_tx A16 spoof notrim eval",
            "LA_0009 {u} ulaw loc_tx A16 Spoof notrim eval",
            "LA_0009 {u} ulaw loc_tx A16 spoof notrim",
        ),
        ProtocolCase(
            "asvspoof2021",
            {"track": "DF"},
            lambda root: build_asvspoof2021(root, "DF"),
            "keys/DF/CM/trial_metadata.txt",
            "ASVspoof2021_DF_eval_part00/ASVspoof2021_DF_eval/flac",
            ".flac",
            0,
            "LA_0023 {u} nocodec asvspoof A09 spoof notrim eval traditional_vocoder - - - -",
            "LA_0023 {u} nocodec asvspoof A09 deepfake notrim eval traditional_vocoder - - - -",
            "LA_0023 {u} nocodec asvspoof A09 spoof notrim eval",
        ),
        ProtocolCase(
            "asvspoof5",
            {"splits": ["train"]},
            build_asvspoof5,
            "ASVspoof5_protocols/ASVspoof5.train.tsv",
            "flac_T",
            ".flac",
            0,
            "T_0001 {u} M - - - AC2 A06 spoof -",
            "T_0001 {u} M - - - AC2 A06 1 -",
            "T_0001 {u} M - - - AC2 A06 spoof",
        ),
        ProtocolCase(
            "inthewild",
            {},
            build_inthewild,
            "release_in_the_wild/meta.csv",
            "release_in_the_wild",
            ".wav",
            1,
            "{u}.wav,Speaker 00,spoof",
            "{u}.wav,Speaker 00,fake",
            "{u}.wav,spoof",
        ),
    ]


CASES = _cases()
CASE_IDS = [f"{c.format}-{c.options.get('track', '')}".rstrip("-") for c in CASES]


def _append(root: Path, case: ProtocolCase, line: str) -> tuple[Path, int]:
    """Append one line to the protocol; return it and its 1-based line number."""
    protocol = root / case.protocol
    text = protocol.read_text()
    protocol.write_text(text + line + "\n")
    return protocol, text.count("\n") + 1


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_missing_audio_stops_or_is_skipped_and_counted(tmp_path: Path, case: ProtocolCase) -> None:
    case.build(tmp_path)
    records_before = len(load_dataset(case.format, tmp_path, **case.options))
    protocol, line = _append(tmp_path, case, case.good.format(u="X_0000001"))
    with pytest.raises(MissingAudioError) as raised:
        load_dataset(case.format, tmp_path, **case.options)
    assert raised.value.source == str(protocol)
    assert raised.value.line == line
    assert "X_0000001" in str(raised.value) and f":{line}:" in str(raised.value)
    assert "missing" in raised.value.problem

    skipped = load_dataset(case.format, tmp_path, skip_missing=True, **case.options)
    assert len(skipped) == records_before
    assert [(p.kind, p.line) for p in skipped.problems] == [("missing_audio", line)]
    assert skipped.summary()["problems"]["by_kind"]["missing_audio"] == 1

    write_audio(tmp_path / case.audio / f"X_0000001{case.extension}")
    assert len(load_dataset(case.format, tmp_path, **case.options)) == records_before + 1


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_unknown_label_names_file_line_and_spellings(tmp_path: Path, case: ProtocolCase) -> None:
    case.build(tmp_path)
    write_audio(tmp_path / case.audio / f"X_0000002{case.extension}")
    protocol, line = _append(tmp_path, case, case.unknown_label.format(u="X_0000002"))
    with pytest.raises(UnknownLabelError) as raised:
        load_dataset(case.format, tmp_path, **case.options)
    assert (raised.value.source, raised.value.line) == (str(protocol), line)
    assert "expected" in raised.value.problem and "spoof" in raised.value.problem
    assert "got" in raised.value.problem
    skipped = load_dataset(case.format, tmp_path, skip_malformed=True, **case.options)
    assert [(p.kind, p.line) for p in skipped.problems] == [("unknown_label", line)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_malformed_line_names_the_expected_columns(tmp_path: Path, case: ProtocolCase) -> None:
    case.build(tmp_path)
    write_audio(tmp_path / case.audio / f"X_0000003{case.extension}")
    protocol, line = _append(tmp_path, case, case.short.format(u="X_0000003"))
    with pytest.raises(MalformedLineError) as raised:
        load_dataset(case.format, tmp_path, **case.options)
    assert not isinstance(raised.value, UnknownLabelError)
    assert (raised.value.source, raised.value.line) == (str(protocol), line)
    assert "expected" in raised.value.problem and "got" in raised.value.problem
    # skip_missing does not cover malformed lines; skip_malformed does.
    with pytest.raises(MalformedLineError):
        load_dataset(case.format, tmp_path, skip_missing=True, **case.options)
    skipped = load_dataset(case.format, tmp_path, skip_malformed=True, **case.options)
    assert [(p.kind, p.line) for p in skipped.problems] == [("malformed_line", line)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_empty_protocol(tmp_path: Path, case: ProtocolCase) -> None:
    case.build(tmp_path)
    protocol = tmp_path / case.protocol
    protocol.write_text("file,speaker,label\n" if case.header_lines else "\n  \n")
    with pytest.raises(EmptyProtocolError) as raised:
        load_dataset(case.format, tmp_path, skip_missing=True, skip_malformed=True, **case.options)
    assert raised.value.source == str(protocol)
    assert "expected one" in raised.value.problem
    protocol.write_text("")
    with pytest.raises(EmptyProtocolError):
        load_dataset(case.format, tmp_path, **case.options)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_a_protocol_with_no_usable_line_fails_even_when_skipping(
    tmp_path: Path, case: ProtocolCase
) -> None:
    case.build(tmp_path)
    for path in tmp_path.rglob(f"*{case.extension}"):
        path.unlink()
    with pytest.raises(EmptyDatasetError, match="could be used"):
        load_dataset(case.format, tmp_path, skip_missing=True, **case.options)


def test_duplicate_spoof_without_system_and_binary_protocol(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    protocol = la / "ASVspoof2019_LA_cm_protocols" / ASV19_PROTOCOL["dev"]
    lines = protocol.read_text().splitlines()
    protocol.write_text("\n".join([*lines, lines[0]]) + "\n")
    with pytest.raises(
        MalformedLineError, match=r":4: utterance 'LA_D_1047731' already listed on line 1"
    ):
        load_dataset("asvspoof2019", la, splits=["dev"])
    protocol.write_text("\n".join([*lines, "LA_0070 LA_D_9999999 - - spoof"]) + "\n")
    with pytest.raises(MalformedLineError, match=r"expected a system id .* got '-'"):
        load_dataset("asvspoof2019", la, splits=["dev"])
    protocol.write_bytes(b"LA_0069 LA_D_1047731 - - bonafide\n\x89PNG\x00\xff\n")
    with pytest.raises(MalformedLineError, match=r":2: expected UTF-8 text, got byte 0x89"):
        load_dataset("asvspoof2019", la, splits=["dev"])


def test_layout_errors_name_what_was_looked_for(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    (la / "ASVspoof2019_LA_cm_protocols" / ASV19_PROTOCOL["eval"]).unlink()
    with pytest.raises(LayoutError, match=re.escape("ASVspoof2019.LA.cm.eval.trl.txt")):
        load_dataset("asvspoof2019", la)
    assert len(load_dataset("asvspoof2019", la, splits=["train", "dev"])) == 8
    with pytest.raises(LayoutError, match="dataset root not found"):
        load_dataset("asvspoof5", tmp_path / "nowhere")
    with pytest.raises(LayoutError, match=r"ASVspoof5.train.tsv"):
        load_dataset("asvspoof5", tmp_path)
    with pytest.raises(DatasetOptionError, match="unknown dataset format 'asvspoof2017'"):
        load_dataset("asvspoof2017", tmp_path)
    with pytest.raises(EmptyDatasetError, match="no labelled audio found"):
        load_dataset("folders", la)  # audio, but no label folders
    meta = build_inthewild(tmp_path / "itw") / "meta.csv"
    meta.write_text("path,label\n0.wav,spoof\n")
    with pytest.raises(
        MalformedLineError, match=r"meta.csv:1: expected the header 'file,speaker,label'"
    ):
        load_dataset("inthewild", tmp_path / "itw")


def test_check_audio_counts_unreadable_files_and_rates(tmp_path: Path) -> None:
    folder = build_inthewild(tmp_path, itw_rows(speakers=3, per_speaker=2))
    (folder / "2.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    dataset = load_dataset("inthewild", tmp_path, check_audio=True)
    assert len(dataset) == 5
    assert [(p.kind, Path(p.source).name) for p in dataset.problems] == [
        ("unreadable_audio", "2.wav")
    ]
    assert dataset.audio is not None
    assert dataset.audio["checked"] == 6 and dataset.audio["readable"] == 5
    assert dataset.audio["sample_rates_hz"] == {"16000": 2, "22050": 2, "44100": 1}
    assert dataset.audio["channels"] == {"1": 2, "2": 3}


# ---------------------------------------------------------------------------------- CLI


def test_cli_json_reads_a_layout(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.data",
            "--format",
            "asvspoof2019",
            "--root",
            str(la),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["records"] == 12
    assert {s: summary["splits"][s]["records"] for s in ("train", "dev", "eval")} == {
        "train": 5,
        "dev": 3,
        "eval": 4,
    }
    assert summary["labels"] == {"bonafide": 5, "spoof": 7}
    assert summary["splits"]["train"]["attacks"] == {"A01": 2, "A02": 1, "bonafide": 2}
    assert summary["problems"]["total"] == 0


def test_cli_error_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    la = build_asvspoof2019(tmp_path)
    (la / "ASVspoof2019_LA_train/flac/LA_T_1004644.flac").unlink()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.data",
            "--format",
            "asvspoof2019",
            "--root",
            str(la),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 1
    assert "ASVspoof2019.LA.cm.train.trn.txt:2: audio for 'LA_T_1004644' is missing" in done.stderr
    assert json.loads(done.stdout)["error"]["type"] == "MissingAudioError"


def test_cli_skip_missing_and_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    la = build_asvspoof2019(tmp_path)
    (la / "ASVspoof2019_LA_train/flac/LA_T_1004644.flac").unlink()
    main(["--format", "asvspoof2019", "--root", str(la), "--skip-missing"])
    table = capsys.readouterr().out
    assert re.search(r"^train\s+4\s+2\s+2\s+3$", table, re.MULTILINE), table
    assert "missing_audio: 1" in table
    assert "ASVspoof2019.LA.cm.train.trn.txt:2" in table
    with pytest.raises(SystemExit) as exited:
        main(["--format", "asvspoof2021", "--root", str(la)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "ASVspoof 2021 needs a track" in err


def test_every_format_is_documented() -> None:
    docs = (REPO / "docs" / "datasets.md").read_text()
    for name in FORMATS:
        assert f"`{name}`" in docs
