"""The built-in demo corpus, in the ASVspoof 2019 LA layout.

    python -m train.demo_corpus --out data/demo [--size default|large|small|tiny] [--seed N]
                                [--corpus real|espeak] [--cache DIR] [--jobs N] [--force]
    python -m train.demo_corpus --check-cues --out data/demo [--min-cue-eer 0.2]

`--corpus real` (the default): real people from Debian's speech packages against neural and
classic fakes of them (train.synth.real_corpus). `--corpus espeak`: the fast synthetic
fixture (espeak-ng bona fide against DSP vocoders, train.synth.corpus), used by tests;
it checks a pipeline, it means nothing on real audio.

Builds (or, when the same settings were already built, keeps) the corpus, prints the counts
by split and system, the per-language balance and the shortcut-cue check, and writes them to
<out>/stats.json. --check-cues re-checks an existing corpus and exits 1 when a single simple
feature separates the classes with an EER below --min-cue-eer. See docs/demo_corpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from train.synth import corpus as espeak_corpus
from train.synth import real_corpus
from train.synth.codecs import CodecError
from train.synth.corpus import SPLITS, CorpusError, check_cues, format_cue_report, stats_path
from train.synth.cues import DEFAULT_MIN_CUE_EER
from train.synth.neural import GeneratorError
from train.synth.packages import FetchError, default_cache

SIZES = real_corpus.SIZES
CorpusSettings = espeak_corpus.CorpusSettings
build = espeak_corpus.build

__all__ = ["SIZES", "CorpusSettings", "build", "check_cues", "main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m train.demo_corpus",
        description="Build the offline demo corpus (ASVspoof 2019 LA layout) or check it for "
        "shortcut cues.",
    )
    parser.add_argument(
        "--out", type=Path, default=Path("data/demo"), help="corpus root (default: data/demo)"
    )
    parser.add_argument(
        "--corpus",
        choices=("real", "espeak"),
        default="real",
        help="real: real speech vs neural and classic fakes (default); espeak: the fast "
        "synthetic test fixture",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="generator seed (default: 2026 real, 2019 espeak)"
    )
    parser.add_argument(
        "--size",
        default="default",
        help="corpus size: real: "
        + ", ".join(
            f"{k} ({v['train']}/{v['dev']}/{v['eval']} bona fide per split, as many spoofs)"
            for k, v in real_corpus.SIZES.items()
        )
        + "; espeak: default or tiny (default: default)",
    )
    for split in SPLITS:
        parser.add_argument(
            f"--{split}",
            type=int,
            default=None,
            help=f"{split} size, overriding --size (real: bona fide utterances; espeak: files)",
        )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help=f"where Debian packages and models are kept (default: {default_cache().parent})",
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="worker processes (default: number of CPUs)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--no-check", action="store_true", help="skip the cue check after a build")
    parser.add_argument(
        "--check-cues", action="store_true", help="only check an existing corpus for cues"
    )
    parser.add_argument(
        "--min-cue-eer",
        type=float,
        default=DEFAULT_MIN_CUE_EER,
        help="a single feature with an EER below this fails the check (fraction, default: "
        f"{DEFAULT_MIN_CUE_EER})",
    )
    return parser


def _check_only(args: argparse.Namespace, jobs: int) -> int:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    jobs = args.jobs or os.cpu_count() or 1
    if args.check_cues:
        return _check_only(args, jobs)
    sizes_table = real_corpus.SIZES if args.corpus == "real" else espeak_corpus.SIZES
    if args.size not in sizes_table:
        print(
            f"error: --size for the {args.corpus} corpus must be one of "
            f"{', '.join(sizes_table)}, got {args.size!r}",
            file=sys.stderr,
        )
        return 2
    sizes = dict(sizes_table[args.size])
    for split in SPLITS:
        if getattr(args, split) is not None:
            sizes[split] = getattr(args, split)
    if args.seed is not None:
        sizes["seed"] = args.seed
    try:
        if args.corpus == "real":
            settings = real_corpus.RealCorpusSettings(**sizes)
            cache = args.cache / "debian" if args.cache else None
            real_corpus.build(
                settings,
                args.out,
                jobs=jobs,
                check=not args.no_check,
                force=args.force,
                cache=cache,
            )
        else:
            espeak_settings = espeak_corpus.CorpusSettings(**sizes)
            espeak_corpus.build(
                espeak_settings, args.out, jobs=jobs, check=not args.no_check, force=args.force
            )
    except (CorpusError, FetchError, GeneratorError, CodecError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
