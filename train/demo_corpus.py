"""The built-in demo corpus: offline bona fide and vocoded speech in the ASVspoof 2019 LA layout.

    python -m train.demo_corpus --out data/demo [--seed N] [--train N --dev N --eval N]
                                [--size default|tiny] [--jobs N] [--force] [--no-check]
    python -m train.demo_corpus --check-cues --out data/demo [--min-cue-eer 0.2]

Builds (or, when the same settings were already built, keeps) the corpus, prints the
counts by split, label and system and the shortcut-cue check, and writes both to
<out>/stats.json. --check-cues re-checks an existing corpus and exits 1 when a single
simple feature separates the classes with an EER below --min-cue-eer.

It checks a pipeline end to end; it is not a detector's training set to deploy.
See docs/demo_corpus.md; the builder is train.synth.corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from train.synth.corpus import (
    SIZES,
    SPLITS,
    CorpusError,
    CorpusSettings,
    build,
    check_cues,
    format_cue_report,
    stats_path,
)
from train.synth.cues import DEFAULT_MIN_CUE_EER

__all__ = ["SIZES", "CorpusSettings", "build", "check_cues", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.demo_corpus",
        description="Build the offline demo corpus (ASVspoof 2019 LA layout) or check it for "
        "shortcut cues.",
    )
    parser.add_argument("--out", type=Path, default=Path("data/demo"), help="corpus root")
    parser.add_argument("--seed", type=int, default=CorpusSettings.seed)
    parser.add_argument("--size", choices=sorted(SIZES), default="default")
    for split in SPLITS:
        parser.add_argument(f"--{split}", type=int, default=None, help=f"{split} utterances")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: CPUs)")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--no-check", action="store_true", help="skip the cue check after a build")
    parser.add_argument(
        "--check-cues", action="store_true", help="only check an existing corpus for cues"
    )
    parser.add_argument(
        "--min-cue-eer",
        type=float,
        default=DEFAULT_MIN_CUE_EER,
        help="--check-cues fails when a single feature's EER is below this",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    jobs = args.jobs or os.cpu_count() or 1
    if args.check_cues:
        try:
            report = check_cues(args.out, jobs, args.min_cue_eer)
        except (CorpusError, OSError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(format_cue_report(report))
        stats_file = stats_path(args.out)
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        stats["cues"] = report.to_json()
        stats_file.write_text(json.dumps(stats, indent=2) + "\n")
        return 0 if report.passed else 1
    sizes = dict(SIZES[args.size])
    for split in SPLITS:
        if getattr(args, split) is not None:
            sizes[split] = getattr(args, split)
    try:
        settings = CorpusSettings(seed=args.seed, **sizes)
        build(settings, args.out, jobs=jobs, check=not args.no_check, force=args.force)
    except (CorpusError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
