"""Plan the rows, run each in a fresh worker process, interleaved over rounds, and aggregate.

Every (format, runtime, environment, threads) row runs `rounds` times, each time in a new
process (`benchmarks.worker`) that only loads and runs that format. Round r runs the rows
in the table's order, round r+1 in reverse, so slow drift of a shared machine (another
job starting, the clock changing) falls on every row alike instead of on the last ones.
The latencies of all rounds are pooled; each round's median is kept, and their spread
says how stable the median is.

Cold start is measured by the parent: from just before it spawns the worker to the
moment the worker has its first score (both on CLOCK_MONOTONIC), so it includes the
interpreter start, the imports, loading the model and the first inference.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.formats import (
    ENVIRONMENTS,
    FORMATS,
    RUNTIMES,
    Environment,
    Format,
    Runtime,
    venv_python,
)
from benchmarks.machine import Peak, derive_peaks, read_cpu_info
from benchmarks.parity import Accuracy, accuracy_by_row, accuracy_for
from benchmarks.pi_estimate import estimate_report
from benchmarks.worker import RESULT_MARKER
from device import measure
from device.bundle import Bundle, BundleError, load_bundle, sha256_of
from device.scores import p_spoof

REPO = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1
LATENCY_DEFINITION = (
    "one normalized window in, logits out, timed in the worker process after warm-up: "
    "input cast or int8 quantization, the runtime's invoke, output read and dequantization "
    "(TFLite rows run device.runtime.Scorer.score_window, the device's own path)"
)
RTF_DEFINITION = (
    "real-time factor = median per-window latency / hop duration: the share of one core-time "
    "budget a stream uses when it scores one window every hop; below 1 keeps up with live audio"
)
COLD_START_DEFINITION = (
    "process start to first score: from the parent's spawn of a fresh Python process to the "
    "worker's first logits (interpreter start, imports, model load, first inference; the JSON "
    "splits it into those stages); median over rounds, with the OS file cache warm after the "
    "first. TFLite rows load through device.runtime, so theirs includes importing the device's "
    "audio front end, as the agent on a Pi does"
)
RSS_DEFINITION = "peak resident set (VmHWM) of the worker process, which loads only that format"
EFFICIENCY_DEFINITION = (
    "MACs per window / median latency, as a share of this machine's peak for the row's "
    "precision at the same thread count"
)


class BenchmarkError(RuntimeError):
    """The benchmark cannot start (no bundle, bad settings); failing rows are not errors."""


@dataclass(frozen=True)
class BenchSettings:
    bundle: Path
    out_dir: Path = REPO / "benchmarks" / "results"
    rounds: int = 2
    seconds_per_row: float = 4.0  # measured time per row, over all its rounds together
    warmup_s: float = 0.3
    warmup_min_runs: int = 5
    min_runs_per_round: int = 20
    max_runs_per_round: int = 20_000
    threads: tuple[int, ...] = ()  # () -> 1 and every usable core
    only: tuple[str, ...] = ()  # keep rows whose format, runtime or environment key is listed
    worker_timeout_s: float = 180.0
    measure_peak: bool = True
    plots: bool = True
    check_windows: int = 8
    strict: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise BenchmarkError(f"rounds must be at least 1, got {self.rounds}")
        if self.seconds_per_row <= 0:
            raise BenchmarkError(f"seconds_per_row must be positive, got {self.seconds_per_row}")
        if any(t < 1 for t in self.threads):
            raise BenchmarkError(f"thread counts must be at least 1, got {list(self.threads)}")
        known = set(FORMATS) | set(RUNTIMES) | {e.key for e in ENVIRONMENTS}
        unknown = sorted(set(self.only) - known)
        if unknown:
            raise BenchmarkError(f"--only {unknown}: expected keys from {sorted(known)}")

    def selects(self, fmt: Format, runtime: Runtime, environment: Environment) -> bool:
        """--only: within a kind (formats, runtimes, environments) any listed key matches;
        across kinds all must, so `--only current tflite_int8` is int8 in this interpreter."""
        for kind_keys, value in (
            (set(FORMATS), fmt.key),
            (set(RUNTIMES), runtime.key),
            ({e.key for e in ENVIRONMENTS}, environment.key),
        ):
            wanted = set(self.only) & kind_keys
            if wanted and value not in wanted:
                return False
        return True

    def thread_counts(self, cores: int) -> tuple[int, ...]:
        return tuple(sorted(set(self.threads or (1, cores))))


@dataclass
class Row:
    """One line of the table, planned, then filled in by its workers."""

    format: Format
    runtime: Runtime
    environment: Environment
    threads: int
    python: str
    model_file: str = ""  # path of the file measured (the checkpoint for PyTorch)
    size_bytes: int | None = None
    status: str = "pending"  # "ok" | "failed" | "skipped"
    reason: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    cold_starts_ms: list[float] = field(default_factory=list)
    cold_start_stages: list[dict[str, float]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.format.key}/{self.runtime.key}/{self.environment.key}/{self.threads}"

    def fail(self, reason: str) -> None:
        if self.status != "failed":
            self.status, self.reason = "failed", reason


# --------------------------------------------------------------------------- planning


def pytorch_weights(bundle: Bundle) -> tuple[Path | None, str, str]:
    """The checkpoint the bundle was converted from: (path, "", "") or (None, status, reason).

    A bundle carries no PyTorch weights (a Pi does not need them). The converter records the
    checkpoint it read in the manifest, `data.trained_on.checkpoint` = {"file", "sha256"}, so
    on the machine that converted the bundle the PyTorch row rebuilds CLAD from that
    checkpoint's own config and weights. A checkpoint that changed since (a new training run
    in the same directory) is not the model the other rows run: that row fails, saying so.
    """
    manifest_path = bundle.root / "manifest.json"
    trained_on = bundle.manifest.data.get("trained_on")
    record = trained_on.get("checkpoint") if isinstance(trained_on, dict) else None
    if not isinstance(record, dict) or not isinstance(record.get("file"), str):
        return (
            None,
            "skipped",
            (
                f"{manifest_path} records no checkpoint (data.trained_on.checkpoint.file): PyTorch "
                "needs the run the bundle was converted from"
            ),
        )
    recorded = Path(record["file"])
    path = next((p for p in (recorded, REPO / recorded) if p.is_file()), None)
    if path is None:
        return (
            None,
            "skipped",
            (f"the checkpoint the bundle was converted from, {recorded}, is not on this machine"),
        )
    expected = record.get("sha256")
    if isinstance(expected, str) and expected:
        digest = sha256_of(path)
        if digest != expected:
            return (
                None,
                "failed",
                (
                    f"{path} changed since the bundle was converted (sha256 {digest[:12]}..., the "
                    f"manifest records {expected[:12]}...): retrained? run `make convert` again"
                ),
            )
    return path.resolve(), "", ""


def _runtime_installed(runtime: Runtime) -> bool:
    try:
        return importlib.util.find_spec(runtime.module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _same_interpreter(python: Path) -> bool:
    try:
        return Path(sys.prefix).resolve() == python.parent.parent.resolve()
    except OSError:
        return False


def plan_rows(bundle: Bundle, settings: BenchSettings, cores: int) -> list[Row]:
    rows: list[Row] = []
    weights = pytorch_weights(bundle)
    verified: dict[str, str] = {}  # file name -> "" when its sha256 matches, else the problem
    for environment in ENVIRONMENTS:
        python = venv_python(REPO, environment)
        env_reason = ""
        if python is not None:
            if _same_interpreter(python):
                continue  # the benchmark itself runs in this venv: its rows are the current ones
            if not python.is_file():
                env_reason = (
                    f"no {environment.venv_dir}/ in {REPO}; build it with {environment.build_hint}"
                )
        runtimes = list(environment.runtimes)
        if python is None:
            runtimes += [
                r for r in environment.optional_runtimes if _runtime_installed(RUNTIMES[r])
            ]
        for runtime_key in runtimes:
            runtime = RUNTIMES[runtime_key]
            for format_key in runtime.formats:
                fmt = FORMATS[format_key]
                if not settings.selects(fmt, runtime, environment):
                    continue
                for threads in settings.thread_counts(cores):
                    row = Row(fmt, runtime, environment, threads, str(python or sys.executable))
                    rows.append(row)
                    if env_reason:
                        row.status, row.reason = "skipped", env_reason
                        continue
                    _attach_model(row, bundle, weights, verified)
    return rows


def _attach_model(
    row: Row,
    bundle: Bundle,
    weights: tuple[Path | None, str, str],
    verified: dict[str, str],
) -> None:
    fmt = row.format
    if fmt.bundle_format is None:
        checkpoint, status, reason = weights
        if checkpoint is None:
            row.status, row.reason = status, reason
            return
        row.model_file, row.size_bytes = str(checkpoint), checkpoint.stat().st_size
        config = bundle.manifest.extra.get("model", {}).get("config")
        row.spec = {"checkpoint": str(checkpoint), "model_config": config}
        return
    try:
        name = bundle.manifest.model_file(fmt.bundle_format)
    except BundleError as error:
        row.status, row.reason = "skipped", str(error)
        return
    path = bundle.path(name)
    row.model_file = str(path)
    if name not in verified:
        verified[name] = _verify_file(bundle, name)
    if verified[name]:
        row.fail(verified[name])
        return
    row.size_bytes = path.stat().st_size
    row.spec = {"model_path": str(path)}


def _verify_file(bundle: Bundle, name: str) -> str:
    """The empty string when the file is as the manifest lists it, else what differs."""
    entry = bundle.manifest.files[name]
    path = bundle.path(name)
    if not path.is_file():
        return f"{path}: listed in the manifest, but missing"
    size = path.stat().st_size
    if size != entry.bytes:
        return f"{path}: {size} bytes, the manifest lists {entry.bytes} (changed after conversion)"
    digest = sha256_of(path)
    if digest != entry.sha256:
        return (
            f"{path}: sha256 {digest[:12]}..., the manifest lists {entry.sha256[:12]}... "
            "(changed after conversion)"
        )
    return ""


# --------------------------------------------------------------------------- inputs


# --------------------------------------------------------------------------- workers


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def call_worker(
    python: str, spec: dict[str, Any], threads: int, timeout_s: float
) -> tuple[dict[str, Any], int, int]:
    """Run one worker; return (its result, spawn monotonic ns, end monotonic ns). Never raises
    for a worker that crashes, hangs or answers garbage: that is a failed result."""
    spawn_ns = time.monotonic_ns()
    try:
        proc = subprocess.run(
            [python, "-m", "benchmarks.worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            cwd=REPO,
            env=worker_env(threads),
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return (
            {"status": "failed", "reason": f"the worker did not finish in {timeout_s:.0f} s"},
            spawn_ns,
            time.monotonic_ns(),
        )
    except OSError as error:
        return (
            {"status": "failed", "reason": f"cannot start {python}: {error}"},
            spawn_ns,
            time.monotonic_ns(),
        )
    end_ns = time.monotonic_ns()
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            try:
                return json.loads(line[len(RESULT_MARKER) :]), spawn_ns, end_ns
            except json.JSONDecodeError as error:
                return (
                    {"status": "failed", "reason": f"unreadable worker answer ({error})"},
                    spawn_ns,
                    end_ns,
                )
    if proc.returncode < 0:
        import signal

        try:
            how = f"was killed by {signal.Signals(-proc.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-proc.returncode}"
    else:
        how = f"exited with status {proc.returncode}"
    tail = " | ".join(line.strip() for line in proc.stderr.strip().splitlines()[-3:])
    return (
        {"status": "failed", "reason": f"the worker {how} without an answer; stderr: {tail}"},
        spawn_ns,
        end_ns,
    )


def _row_spec(row: Row, settings: BenchSettings, windows_path: Path, bundle: Bundle) -> dict:
    return {
        "mode": "measure",
        "format": row.format.key,
        "runtime": row.runtime.key,
        "bundle": str(bundle.root),
        "threads": row.threads,
        "windows_path": str(windows_path),
        "check_windows": settings.check_windows,
        "warmup_s": settings.warmup_s,
        "warmup_min_runs": settings.warmup_min_runs,
        "measure_s": settings.seconds_per_row / settings.rounds,
        "min_runs": settings.min_runs_per_round,
        "max_runs": settings.max_runs_per_round,
        **row.spec,
    }


def measure_fp32_peaks(
    thread_counts: Iterable[int], timeout_s: float
) -> tuple[dict[int, float | None], dict[int, str]]:
    """numpy fp32 GEMM rate at each thread count, in a fresh process with that many BLAS
    threads (OPENBLAS/OMP/MKL_NUM_THREADS)."""
    rates: dict[int, float | None] = {}
    problems: dict[int, str] = {}
    for threads in thread_counts:
        result, _, _ = call_worker(
            sys.executable,
            {"mode": "gemm", "sizes": [256, 512], "seconds_per_size": 0.5},
            threads,
            timeout_s,
        )
        if result.get("status") == "ok":
            rates[threads] = float(result["macs_per_s"])
        else:
            rates[threads] = None
            problems[threads] = str(result.get("reason", "unknown"))
    return rates, problems


def best_rates(*measurements: dict[int, float | None]) -> dict[int, float | None]:
    """Per thread count, the highest rate measured (None when none was)."""
    out: dict[int, float | None] = {}
    for measured in measurements:
        for threads, rate in measured.items():
            known = [r for r in (out.get(threads), rate) if r is not None]
            out[threads] = max(known) if known else None
    return out


# --------------------------------------------------------------------------- aggregation


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def summarize_row(
    row: Row,
    hop_s: float,
    macs_per_window: int,
    peaks: dict[tuple[str, int], Peak],
    accuracy: Accuracy,
) -> dict[str, Any]:
    acc = accuracy_for(accuracy, row.format.key, row.environment.key, row.runtime.distribution)
    versions = {r.get("runtime_version") for r in row.results if r.get("runtime_version")}
    rss = [r["peak_rss_bytes"] for r in row.results if r.get("peak_rss_bytes")]
    out = measure.empty_row(
        key=row.key,
        format=row.format.key,
        format_label=row.format.label,
        precision=row.format.precision,
        runtime=row.runtime.key,
        environment=row.environment.key,
        python=row.python,
        threads=row.threads,
        status=row.status,
        reason=row.reason,
        model_file=row.model_file,
        size_bytes=row.size_bytes,
        eer=acc.get("eer"),
        agreement=acc.get("agreement"),
        runtime_version=", ".join(sorted(versions)) if versions else None,
        peak_rss_bytes=max(rss) if rss else None,
    )
    if row.status != "ok":
        return out
    out.update(
        measure.measured_fields(
            row.results, row.cold_starts_ms, row.cold_start_stages, hop_s, macs_per_window
        )
    )
    peak = peaks.get((row.format.precision, row.threads))
    out["efficiency"] = _ratio(out["macs_per_s"], peak.macs_per_s if peak else None)
    return out


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup_vs_pytorch = PyTorch's median / the row's median, at the same thread count."""
    reference = {
        r["threads"]: r["latency_ms"]["median"]
        for r in rows
        if r["format"] == "pytorch" and r["status"] == "ok"
    }
    for r in rows:
        if r["status"] == "ok":
            r["speedup_vs_pytorch"] = _ratio(reference.get(r["threads"]), r["latency_ms"]["median"])


def add_agreement_check(rows: list[dict[str, Any]]) -> None:
    """Max |P(spoof) difference| on the benchmark windows against the first fp32 reference row.

    Not an accuracy figure (those come from parity.json): a check that every row ran the
    same model on the same inputs.
    """
    ok = [r for r in rows if r["status"] == "ok" and r["logits"]]
    reference = next((r for r in ok if r["format"] == "pytorch"), None) or next(
        (r for r in ok if r["precision"] == "fp32"), None
    )
    if reference is None:
        return

    ref = p_spoof(reference["logits"])
    for r in ok:
        mine = p_spoof(r["logits"])
        if mine.shape == ref.shape:
            r["p_spoof_max_diff_vs_reference"] = float(np.abs(mine - ref).max())
            r["reference_row"] = reference["key"]


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """int8 against fp32 TFLite and against PyTorch, per runtime, environment and threads."""
    out = []
    by_key = {(r["format"], r["runtime"], r["environment"], r["threads"]): r for r in rows}
    for r in rows:
        if r["format"] != "tflite_int8" or r["status"] != "ok":
            continue
        fp32 = by_key.get(("tflite_fp32", r["runtime"], r["environment"], r["threads"]))
        item = {
            "runtime": r["runtime"],
            "runtime_version": r["runtime_version"],
            "environment": r["environment"],
            "threads": r["threads"],
            "int8_median_ms": r["latency_ms"]["median"],
            "int8_vs_pytorch": r["speedup_vs_pytorch"],
            "int8_vs_tflite_fp32": None,
        }
        if fp32 and fp32["status"] == "ok":
            item["int8_vs_tflite_fp32"] = fp32["latency_ms"]["median"] / r["latency_ms"]["median"]
            item["int8_vs_tflite_fp32_by_cpu"] = _ratio(
                fp32.get("cpu_ms_per_window"), r.get("cpu_ms_per_window")
            )
        pytorch = by_key.get(("pytorch", "torch", "current", r["threads"]))
        if pytorch and pytorch["status"] == "ok":
            item["int8_vs_pytorch_by_cpu"] = _ratio(
                pytorch.get("cpu_ms_per_window"), r.get("cpu_ms_per_window")
            )
        out.append(item)
    return out


def read_accuracy(bundle: Bundle) -> tuple[Accuracy, str]:
    """EER and agreement per format key from the bundle's parity.json, and a note on its source."""
    path = bundle.root / "parity.json"
    if not path.is_file():
        return {}, f"{path} not found: no accuracy columns"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return {}, f"{path}: not valid JSON ({error}); no accuracy columns"
    return accuracy_by_row(data), f"accuracy (EER, agreement with PyTorch) from {path}"


# --------------------------------------------------------------------------- the run


Progress = Callable[[str, int, int], None]
"""progress(description, done, total)."""


def run_benchmark(settings: BenchSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every row; return the report (the JSON document). Raises BenchmarkError only
    when the benchmark cannot start at all (no readable bundle)."""
    try:
        bundle = load_bundle(settings.bundle, verify_files=False)
    except BundleError as error:
        raise BenchmarkError(str(error)) from error
    started = datetime.now().astimezone()
    load_before = measure.loadavg()
    cpu = read_cpu_info()
    rows = plan_rows(bundle, settings, cpu.cores)
    measured, peak_problems = _run_rows(bundle, settings, rows, cpu.cores, progress)
    peaks = derive_peaks(cpu, measured)
    accuracy, accuracy_note = read_accuracy(bundle)
    manifest = bundle.manifest
    summaries = [
        summarize_row(r, manifest.audio.hop_s, manifest.macs_per_window, peaks, accuracy)
        for r in rows
    ]
    add_ratios(summaries)
    add_agreement_check(summaries)
    finished = datetime.now().astimezone()
    return {
        "schema_version": SCHEMA_VERSION,
        "created": started.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "host": socket.gethostname(),
        "machine": measure.machine_summary(cpu.to_dict(), load_before),
        "bundle": measure.bundle_summary(bundle),
        "settings": {
            "rounds": settings.rounds,
            "seconds_per_row": settings.seconds_per_row,
            "warmup_s": settings.warmup_s,
            "threads": list(settings.thread_counts(cpu.cores)),
            "only": list(settings.only),
        },
        "definitions": DEFINITIONS,
        "peaks": [
            {**_peak_dict(p), "problem": peak_problems.get(p.threads, "")} for p in peaks.values()
        ],
        "accuracy_source": accuracy_note,
        "pi_estimate": estimate_report(manifest.macs_per_window, manifest.audio.hop_s),
        "rows": summaries,
        "comparisons": comparisons(summaries),
    }


def _run_rows(
    bundle: Bundle,
    settings: BenchSettings,
    rows: list[Row],
    cores: int,
    progress: Progress | None,
) -> tuple[dict[int, float | None], dict[int, str]]:
    """Run every runnable row's workers, round by round (every other round in reverse order),
    between two measurements of the fp32 compute peak; the rows fill in. Returns the peak
    rates per thread count and the problems of those that could not be measured."""
    thread_counts = settings.thread_counts(cores)
    runnable = [r for r in rows if r.status == "pending"]
    total = len(runnable) * settings.rounds + (
        2 * len(thread_counts) if settings.measure_peak else 0
    )
    done = 0
    notify = progress or (lambda *_: None)
    measured: dict[int, float | None] = dict.fromkeys(thread_counts)
    peak_problems: dict[int, str] = {}
    with tempfile.TemporaryDirectory(prefix="clad-bench-") as tmp:
        windows_path = Path(tmp) / "windows.npy"
        windows = measure.bench_windows(
            bundle.manifest.audio.window_samples, max(1, settings.check_windows)
        )
        np.save(windows_path, windows)
        for row in runnable:
            row.spec = _row_spec(row, settings, windows_path, bundle)
        if settings.measure_peak:
            # Before and after the rows (the best of both): one moment of load on a shared
            # machine does not lower the peak every row is compared with.
            notify("compute peak: numpy fp32 matmul", done, total)
            measured, peak_problems = measure_fp32_peaks(thread_counts, settings.worker_timeout_s)
            done += len(thread_counts)
        for round_index in range(settings.rounds):
            order = runnable if round_index % 2 == 0 else list(reversed(runnable))
            for row in order:
                notify(f"round {round_index + 1}/{settings.rounds}: {_label(row)}", done, total)
                if row.status == "pending" or row.status == "ok":
                    result, spawn_ns, _ = call_worker(
                        row.python, row.spec, row.threads, settings.worker_timeout_s
                    )
                    result["round"] = round_index + 1
                    row.results.append(result)
                    _absorb(row, result, spawn_ns, round_index)
                done += 1
        if settings.measure_peak:
            notify("compute peak: numpy fp32 matmul", done, total)
            again, again_problems = measure_fp32_peaks(thread_counts, settings.worker_timeout_s)
            measured = best_rates(measured, again)
            peak_problems = {t: p for t, p in again_problems.items() if measured.get(t) is None}
            done += len(thread_counts)
        notify("done", total, total)
    return measured, peak_problems


DEFINITIONS = {
    "latency": LATENCY_DEFINITION,
    "rtf": RTF_DEFINITION,
    "cold_start": COLD_START_DEFINITION,
    "rss": RSS_DEFINITION,
    "efficiency": EFFICIENCY_DEFINITION,
    "speedup_vs_pytorch": "PyTorch eager median latency / the row's median latency, "
    "same thread count",
    "round_spread": "(max - min) of the per-round medians / the pooled median",
    "cpu_ms_per_window": "CPU time of the worker process (all threads) per window, "
    "median over rounds: the work itself; a latency far above it means waiting for a core",
}


def _label(row: Row) -> str:
    where = "" if row.environment.key == "current" else f" [{row.environment.key}]"
    return f"{row.format.label} / {row.runtime.key}{where} / {row.threads} thread(s)"


def _absorb(row: Row, result: dict[str, Any], spawn_ns: int, round_index: int) -> None:
    status = result.get("status")
    if status == "ok":
        first = result.get("first_score_monotonic_ns")
        if isinstance(first, int):
            row.cold_starts_ms.append((first - spawn_ns) / 1e6)
        stages = measure.cold_start_stages(result.get("stages_monotonic_ns") or {}, spawn_ns)
        if stages is not None:
            row.cold_start_stages.append(stages)
        if row.status == "pending":
            row.status = "ok"
    elif status == "skipped":
        row.status, row.reason = "skipped", str(result.get("reason", ""))
    else:
        reason = str(result.get("reason", "no reason given"))
        row.fail(reason if round_index == 0 else f"round {round_index + 1}: {reason}")


def _peak_dict(peak: Peak) -> dict[str, Any]:
    return {
        "precision": peak.precision,
        "threads": peak.threads,
        "macs_per_s": peak.macs_per_s,
        "flags_macs_per_s": peak.flags_macs_per_s,
        "derivation": peak.derivation,
    }


def results_stem(report: dict[str, Any]) -> str:
    created = datetime.fromisoformat(report["created"])
    host = "".join(c if c.isalnum() or c in "-_." else "-" for c in report["host"]) or "host"
    return f"{host}-{created.strftime('%Y-%m-%d-%H%M%S')}"
