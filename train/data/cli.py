"""`python -m train.data --format F --root PATH [--json]`: counts by split, label and attack.

Exit status: 0 when read, 1 with the reader's message (file, line, expected vs got) when not,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from train.data.common import DEFAULT_SPLIT_FRACTIONS
from train.data.dataset import Dataset
from train.data.errors import DatasetError, MalformedLineError, MissingAudioError
from train.data.formats import FORMATS, load_dataset
from train.data.records import LABELS, SPLITS


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected three numbers like 0.7,0.15,0.15, got {text!r}"
        ) from error


def build_parser() -> argparse.ArgumentParser:
    layouts = "\n".join(f"  {f.name:<13} {f.layout}" for f in FORMATS.values())
    parser = argparse.ArgumentParser(
        prog="python -m train.data",
        description="Read an anti-spoofing dataset in its published layout and count it.",
        epilog=f"layouts under --root:\n{layouts}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--format", required=True, choices=list(FORMATS))
    parser.add_argument("--root", required=True, help="the dataset folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--skip-missing",
        action="store_true",
        help="skip and count protocol lines whose audio is missing (default: stop)",
    )
    parser.add_argument(
        "--skip-malformed",
        action="store_true",
        help="skip and count malformed lines and unknown labels (default: stop)",
    )
    parser.add_argument("--track", choices=["LA", "DF"], help="asvspoof2021: which track")
    parser.add_argument(
        "--splits",
        default=",".join(SPLITS),
        help="comma-separated splits to read (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeded split, layouts without one (default: 0)"
    )
    parser.add_argument(
        "--split-fractions",
        type=_fractions,
        default=DEFAULT_SPLIT_FRACTIONS,
        help="train,dev,eval shares of the seeded split (default: 0.7,0.15,0.15)",
    )
    parser.add_argument(
        "--split-by",
        choices=["auto", "speaker", "file"],
        default="auto",
        help="group of the seeded split (default: speaker when known, else file)",
    )
    parser.add_argument(
        "--check-audio",
        action="store_true",
        help="open every file's header; count unreadable files, sample rates and codecs",
    )
    return parser


def render_table(dataset: Dataset) -> str:
    """The summary as aligned text: splits by label, attacks by split, then the problems."""
    summary = dataset.summary()
    splits = summary["splits"]
    title = FORMATS[dataset.format].title
    lines = [f"{title}: {dataset.root}", ""]
    header = ["split", "records", *LABELS, "speakers"]
    rows = [
        [name, s["records"], *(s["labels"][label] for label in LABELS), s["speakers"]]
        for name, s in splits.items()
    ]
    rows.append(
        [
            "total",
            summary["records"],
            *(summary["labels"][label] for label in LABELS),
            summary["speakers"],
        ]
    )
    lines += _table(header, rows)
    attacks = list(summary["attacks"])
    lines += [
        "",
        *_table(
            ["attack", *SPLITS],
            [[a, *(splits[s]["attacks"].get(a, 0) for s in SPLITS)] for a in attacks],
        ),
    ]
    options = summary["options"]
    if "seeded_split" in options:
        lines += [
            "",
            f"seeded split of {options['seeded_split']} records by {options['split_by']} "
            f"(seed {options['seed']}, fractions {options['split_fractions']})",
        ]
    problems = summary["problems"]
    lines += ["", f"problems: {problems['total']}"]
    for kind, count in problems["by_kind"].items():
        if count:
            lines.append(f"  {kind}: {count}")
    lines += [f"  {p}" for p in dataset.problems[: len(problems["examples"])]]
    if problems["total"] > len(problems["examples"]):
        lines.append(f"  ... and {problems['total'] - len(problems['examples'])} more")
    if dataset.audio is not None:
        audio = dataset.audio
        lines += [
            "",
            f"audio: {audio['readable']}/{audio['checked']} readable, "
            f"{audio['total_duration_s']:.1f} s in all",
            f"  sample rates (Hz): {audio['sample_rates_hz']}",
            f"  channels: {audio['channels']}",
            f"  codecs: {audio['codecs']}",
        ]
    return "\n".join(lines)


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    cells = [header, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    ]


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        dataset = load_dataset(
            args.format,
            args.root,
            skip_missing=args.skip_missing,
            skip_malformed=args.skip_malformed,
            track=args.track,
            splits=[s.strip() for s in args.splits.split(",") if s.strip()],
            seed=args.seed,
            split_fractions=args.split_fractions,
            split_by=args.split_by,
            check_audio=args.check_audio,
        )
    except DatasetError as error:
        if args.json:
            print(json.dumps({"error": error.to_dict()}, indent=2))
        print(f"error: {error}", file=sys.stderr)
        if isinstance(error, MissingAudioError):
            print("(--skip-missing skips such lines and counts them)", file=sys.stderr)
        elif isinstance(error, MalformedLineError):
            print("(--skip-malformed skips such lines and counts them)", file=sys.stderr)
        sys.exit(1)
    if args.json:
        print(json.dumps(dataset.summary(), indent=2))
    else:
        print(render_table(dataset))
