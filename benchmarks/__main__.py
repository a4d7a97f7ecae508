"""`python -m benchmarks --bundle bundles/demo`: latency, RTF, size, memory and accuracy of
every format and runtime of a bundle, side by side in one run.

Writes benchmarks/results/<host>-<date>.json and the PNG plots next to it, and prints the
markdown table. Runs with only the device extra installed (a Pi): the PyTorch and ONNX rows
are then skipped with the reason, and there are no plots without matplotlib.

Exit status: 0 when at least one row ran (failed rows are rows of the table, not errors;
with --strict any failed row exits 1), 1 when none ran, 2 when the benchmark cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from benchmarks.report import render, write_json, write_plots
from benchmarks.runner import (
    REPO,
    BenchmarkError,
    BenchSettings,
    Progress,
    results_stem,
    run_benchmark,
)


def _threads(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected thread counts like '1,4', got {text!r}"
        ) from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive thread counts, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark every format and runtime of a model bundle in one run.",
    )
    parser.add_argument("--bundle", type=Path, default=REPO / "bundles" / "demo")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results", help="results directory"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="fresh processes per row; round 2 runs the rows in reverse order (default 2)",
    )
    parser.add_argument(
        "--seconds-per-row",
        type=float,
        default=4.0,
        help="measured time per row over all rounds (default 4.0)",
    )
    parser.add_argument("--warmup-s", type=float, default=0.3)
    parser.add_argument(
        "--threads", type=_threads, default=(), help="thread counts (default: 1 and all cores)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=(),
        metavar="KEY",
        help="only these rows: formats (pytorch onnx tflite_fp32 tflite_int8), runtimes (torch "
        "onnxruntime litert tflite-runtime), environments (current .venv-device .venv-tflite); "
        "any key of a kind matches, every kind listed must match",
    )
    parser.add_argument("--no-peak", action="store_true", help="skip the fp32 GEMM peak")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--worker-timeout-s", type=float, default=180.0)
    parser.add_argument("--strict", action="store_true", help="exit 1 when any row failed")
    parser.add_argument(
        "--from-json", type=Path, help="print the table of a saved results file and exit"
    )
    return parser.parse_args(argv)


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress | None]:
    """A rich progress line on a terminal; nothing when stderr is not one (logs stay clean)."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        yield None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("benchmark", total=None)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json:
        try:
            report = json.loads(args.from_json.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            print(
                f"error: {args.from_json}: expected a benchmark results file ({error})",
                file=sys.stderr,
            )
            return 2
        print(render(report))
        return 0
    try:
        settings = BenchSettings(
            bundle=args.bundle,
            out_dir=args.out,
            rounds=args.rounds,
            seconds_per_row=args.seconds_per_row,
            warmup_s=args.warmup_s,
            threads=args.threads,
            only=tuple(args.only),
            worker_timeout_s=args.worker_timeout_s,
            measure_peak=not args.no_peak,
            plots=not args.no_plots,
            strict=args.strict,
        )
        with progress_bar() as progress:
            report = run_benchmark(settings, progress)
    except BenchmarkError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    stem = settings.out_dir / results_stem(report)
    report["notes"] = []
    if settings.plots:
        written, notes = write_plots(report, stem)
        report["plots"] = [str(p) for p in written]
        report["notes"] += notes
    json_path = write_json(report, Path(f"{stem}.json"))
    print(render(report))
    print(f"\nResults: {json_path}" + "".join(f"\nPlot: {p}" for p in report.get("plots", [])))
    statuses = [row["status"] for row in report["rows"]]
    if "ok" not in statuses:
        return 1
    if settings.strict and "failed" in statuses:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
