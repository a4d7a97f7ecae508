"""`python -m device.bench --bundle DIR`: how fast this board runs a bundle (`clad-agent bench`).

The Pi owner's half of `make bench`: only the device runtime (no torch, TensorFlow or ONNX),
the device's own scoring path (`device.runtime.Scorer.score_window`), and JSON rows in the
schema of `make bench` (benchmarks/runner.py), so a Pi's figures sit next to the desktop's.

For every model format (int8, fp32) and every thread count (1..cores), each round starts a
fresh worker process (`python -m device.bench --worker`, spec on stdin) that loads the
bundle, scores one window, warms up, then times windows one at a time:

    latency_ms        per window, pooled over rounds (p1..p99, median, mean, min, max, n)
    rtf               median latency / the bundle's hop: below 1 keeps up with live audio
    cold_start_ms     the parent's spawn of the worker to its first score; split into the
                      interpreter start, the runtime import, the bundle load, the first window
    peak_rss_bytes    peak RSS (VmHWM) of the worker, which loads only that format
    cpu_ms_per_window CPU time of the worker (all threads) per window

Then one sustained run (int8, 1 thread, --sustain-s seconds) between two readings of the SoC
temperature (/sys/class/thermal/thermal_zone0/temp) and the firmware's throttling flags
(`vcgencmd get_throttled`), each reported as absent, with why, where the machine has none.

Rounds alternate the row order (round 2 runs the rows in reverse) so that a board heating up
falls on every row alike. Only the standard library, numpy and device.*: it runs on the Pi.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from device.measure import (
    bench_windows,
    bundle_summary,
    cold_start_stages,
    empty_row,
    loadavg,
    machine_summary,
    measured_fields,
    timed_windows,
    worker_identity,
)

SCHEMA_VERSION = 1
"""The version of benchmarks.runner's report schema these rows follow."""
RESULT_MARKER = "@@clad-device-bench@@ "
FORMATS = {"int8": ("tflite_int8", "TFLite int8"), "fp32": ("tflite_fp32", "TFLite fp32")}
"""Bundle format -> (make bench's format key, its label)."""
THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")
THROTTLED_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
"""`vcgencmd get_throttled` bits (Raspberry Pi firmware documentation)."""
ARM_PARTS = {"0xd03": "Cortex-A53", "0xd08": "Cortex-A72", "0xd0b": "Cortex-A76"}
WORKER_TIMEOUT_S = 300.0
DEFINITIONS = {
    "latency": "one normalized window in, logits out, timed in the worker after warm-up: "
    "device.runtime.Scorer.score_window (quantize, invoke, dequantize), the agent's path",
    "rtf": "real-time factor = median per-window latency / hop duration; below 1 keeps up",
    "cold_start": "the parent's spawn of a fresh worker process to its first score "
    "(interpreter start, importing device.runtime and the runtime, loading and verifying the "
    "bundle, the first window); median over rounds",
    "rss": "peak resident set (VmHWM) of the worker process, which loads only that format",
    "cpu_ms_per_window": "CPU time of the worker process (all threads) per window",
    "thermal": "SoC temperature and vcgencmd get_throttled before and after the sustained run",
}


class BenchError(RuntimeError):
    """The benchmark cannot start: no readable bundle, bad settings."""


# --------------------------------------------------------------------------- the machine


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_summary(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """Model, architecture, cores and (on a Pi) the board, from /proc/cpuinfo."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    part = fields.get("cpu part", "").lower()
    model = fields.get("model name") or ARM_PARTS.get(part, part) or platform.processor()
    return {
        "model": model,
        "board": fields.get("model", ""),  # Raspberry Pi OS: "Raspberry Pi 4 Model B Rev 1.4"
        "arch": platform.machine(),
        "cores": usable_cores(),
        "flags": sorted(
            set((fields.get("flags") or fields.get("features") or "").split())
            & {"avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "i8mm"}
        ),
    }


def read_thermal(zone: Path = THERMAL_ZONE) -> dict[str, Any]:
    """SoC temperature and throttling flags now; a field is None with its reason when absent."""
    out: dict[str, Any] = {"time": datetime.now().astimezone().isoformat(timespec="seconds")}
    try:
        out["temp_c"] = int(zone.read_text().strip()) / 1000.0
        out["temp_source"] = str(zone)
    except (OSError, ValueError) as error:
        out["temp_c"] = None
        out["temp_source"] = f"absent: {zone}: {error}"
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd is None:
        out.update(throttled=None, throttled_flags=[], throttled_source="absent: no vcgencmd")
        return out
    try:
        answer = subprocess.run(
            [vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        value = int(answer.partition("=")[2], 16)  # "throttled=0x50000"
    except (OSError, subprocess.SubprocessError, ValueError) as error:
        out.update(throttled=None, throttled_flags=[], throttled_source=f"absent: {error}")
        return out
    out.update(
        throttled=hex(value),
        throttled_flags=[name for bit, name in THROTTLED_BITS.items() if value >> bit & 1],
        throttled_source=f"{vcgencmd} get_throttled",
    )
    return out


# --------------------------------------------------------------------------- the worker


def measure(spec: dict[str, Any], main_ns: int) -> dict[str, Any]:
    """One row in this process: load, first score, warm up, time windows (or sustain)."""
    from device.runtime import Scorer, find_interpreter

    runtime = find_interpreter()
    imported_ns = time.monotonic_ns()
    load_start_s = time.perf_counter()
    scorer = Scorer(Path(spec["bundle"]), spec["format"], num_threads=int(spec["threads"]))
    load_ms = (time.perf_counter() - load_start_s) * 1000.0
    loaded_ns = time.monotonic_ns()
    windows = bench_windows(scorer.window_samples, int(spec["check_windows"]))
    first = scorer.score_window(windows[0])[0]  # (logits, inference_ms)
    first_score_ns = time.monotonic_ns()
    logits = [first] + [scorer.score_window(w)[0] for w in windows[1:]]

    timed = timed_windows(lambda window: scorer.score_window(window), windows, spec)
    return {
        "status": "ok",
        "reason": "",
        "runtime_module": runtime.module,
        "runtime_version": runtime.version,
        "load_ms": load_ms,
        "stages_monotonic_ns": {
            "main": main_ns,
            "imported": imported_ns,
            "loaded": loaded_ns,
            "first_score": first_score_ns,
        },
        "latencies_ms": timed["latencies_ms"],
        "cpu_ms_per_window": timed["cpu_ms_per_window"],
        "logits": np.stack(logits).astype(float).tolist(),
    }


def worker_main() -> int:
    main_ns = time.monotonic_ns()
    spec = json.loads(sys.stdin.read())
    try:
        result = measure(spec, main_ns)
    except Exception as error:  # a failing row is a row: report it to the parent
        result = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    result.update(worker_identity())
    sys.stdout.write("\n" + RESULT_MARKER + json.dumps(result) + "\n")
    return 0


# --------------------------------------------------------------------------- the parent


@dataclass(frozen=True)
class Settings:
    bundle: Path
    formats: tuple[str, ...] = ("int8", "fp32")
    threads: tuple[int, ...] = ()  # () -> 1..usable cores
    pythons: tuple[str, ...] = ()  # other interpreters to run the rows in, after this one
    rounds: int = 2
    seconds_per_row: float = 3.0  # measured time per row, over all its rounds
    warmup_s: float = 0.3
    min_runs_per_round: int = 20
    sustain_s: float = 30.0  # 0: no sustained run and no thermal readings
    check_windows: int = 4

    def __post_init__(self) -> None:
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise BenchError(f"--formats: expected some of {sorted(FORMATS)}, got {unknown}")
        if any(t < 1 for t in self.threads):
            raise BenchError(f"--threads: expected counts of at least 1, got {list(self.threads)}")
        if self.rounds < 1:
            raise BenchError(f"--rounds: expected at least 1, got {self.rounds}")
        if self.seconds_per_row <= 0 or self.sustain_s < 0:
            raise BenchError(
                f"expected --seconds-per-row > 0 and --sustain-s >= 0, got "
                f"{self.seconds_per_row} and {self.sustain_s}"
            )


def call_worker(python: str, spec: dict[str, Any], threads: int) -> tuple[dict[str, Any], int]:
    """Run one worker; its answer and the CLOCK_MONOTONIC time it was spawned at."""
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    spawn_ns = time.monotonic_ns()
    try:
        done = subprocess.run(
            [python, "-m", "device.bench", "--worker"],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            env=env,
            timeout=WORKER_TIMEOUT_S + float(spec["measure_s"]),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return {"status": "failed", "reason": f"{python} -m device.bench --worker: {error}"}, 0
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER) :]), spawn_ns
    tail = done.stderr.strip().splitlines()[-3:]
    return {
        "status": "failed",
        "reason": f"the worker exited {done.returncode} without an answer: {' | '.join(tail)}",
    }, spawn_ns


def _environment(python: str) -> str:
    """make bench's environment key: "current", or the venv directory's name."""
    if os.path.abspath(python) == os.path.abspath(sys.executable):  # venvs link one python
        return "current"
    return Path(python).parent.parent.name


def parity_accuracy(bundle: Any, model_format: str, label: str) -> dict[str, float | None]:
    """EER and agreement of the bundle's parity row of this format on this runtime version."""
    try:
        report = json.loads(bundle.path("parity.json").read_text())
    except (OSError, ValueError, KeyError):
        return {}
    for row in report.get("rows", []):
        same = row.get("format") == model_format and row.get("runtime") == label
        if same and row.get("status", "ok") == "ok":
            return {"eer": row.get("eer"), "agreement": row.get("agreement")}
    return {}


def summarize(
    bundle: Any,
    model_format: str,
    python: str,
    threads: int,
    results: list[tuple[dict[str, Any], int]],
) -> dict[str, Any]:
    """One row in the schema of device.measure.empty_row (benchmarks writes the same)."""
    from device.runtimes import runtime_for_module

    manifest = bundle.manifest
    key, label = FORMATS[model_format]
    ok = [(r, spawn) for r, spawn in results if r.get("status") == "ok"]
    failed = [r for r, _ in results if r.get("status") != "ok"]
    module = ok[0][0]["runtime_module"] if ok else ""
    runtime = runtime_for_module(module)
    runtime_key = runtime.key if runtime else (module or "unknown")
    version = ok[0][0]["runtime_version"] if ok else None
    model_file = manifest.model_file(model_format)
    rss = [r["peak_rss_bytes"] for r, _ in results if r.get("peak_rss_bytes")]
    environment = _environment(python)
    row = empty_row(
        key=f"{key}/{runtime_key}/{environment}/{threads}",
        format=key,
        format_label=label,
        precision=model_format,
        runtime=runtime_key,
        environment=environment,
        python=python,
        threads=threads,
        status="failed" if failed else "ok",
        reason="; ".join(sorted({str(r.get("reason", "")) for r in failed})),
        model_file=str(bundle.path(model_file)),
        size_bytes=manifest.files[model_file].bytes,
        runtime_version=version,
        peak_rss_bytes=max(rss) if rss else None,
    )
    if failed or not ok:
        return row
    if runtime is not None:
        row.update(parity_accuracy(bundle, model_format, f"{runtime.distribution} {version}"))
    stages = [cold_start_stages(r["stages_monotonic_ns"], spawn) for r, spawn in ok]
    row.update(
        measured_fields(
            [r for r, _ in ok],
            [(r["stages_monotonic_ns"]["first_score"] - spawn) / 1e6 for r, spawn in ok],
            [s for s in stages if s is not None],
            manifest.audio.hop_s,
            manifest.macs_per_window,
        )
    )
    return row


def _spec(settings: Settings, model_format: str, threads: int, measure_s: float) -> dict:
    return {
        "bundle": str(settings.bundle.resolve()),
        "format": model_format,
        "threads": threads,
        "warmup_s": settings.warmup_s,
        "measure_s": measure_s,
        "min_runs": settings.min_runs_per_round,
        "max_runs": 1_000_000,
        "check_windows": settings.check_windows,
    }


def run_bench(settings: Settings, progress: Any = None) -> dict[str, Any]:
    """Every row, then the sustained run between two thermal readings: the report."""
    from device.bundle import BundleError, load_bundle

    say = progress or (lambda _message: None)
    try:
        bundle = load_bundle(settings.bundle)
    except BundleError as error:
        raise BenchError(str(error)) from error
    for model_format in settings.formats:
        try:
            bundle.manifest.model_file(model_format)
        except BundleError as error:
            raise BenchError(str(error)) from error
    started = datetime.now().astimezone()
    load_before = loadavg()
    cores = usable_cores()
    threads = tuple(sorted(set(settings.threads or range(1, cores + 1))))
    pythons = tuple(dict.fromkeys((sys.executable, *settings.pythons)))  # this one first
    plan = [(p, f, t) for p in pythons for f in settings.formats for t in threads]
    measure_s = settings.seconds_per_row / settings.rounds
    results: dict[tuple[str, str, int], list[tuple[dict[str, Any], int]]] = {k: [] for k in plan}
    for round_index in range(settings.rounds):
        for python, model_format, count in plan if round_index % 2 == 0 else plan[::-1]:
            say(f"round {round_index + 1}/{settings.rounds}: {model_format}, {count} thread(s)")
            spec = _spec(settings, model_format, count, measure_s)
            results[(python, model_format, count)].append(call_worker(python, spec, count))
    rows = [summarize(bundle, f, p, t, results[(p, f, t)]) for p, f, t in plan]
    thermal = _sustained_run(settings, pythons[0], say)
    finished = datetime.now().astimezone()
    return {
        "schema_version": SCHEMA_VERSION,
        "source": "device.bench (clad-agent bench)",
        "created": started.isoformat(timespec="seconds"),
        "duration_s": round((finished - started).total_seconds(), 1),
        "host": socket.gethostname(),
        "machine": machine_summary(cpu_summary(), load_before),
        "bundle": bundle_summary(bundle),
        "settings": {
            "rounds": settings.rounds,
            "seconds_per_row": settings.seconds_per_row,
            "warmup_s": settings.warmup_s,
            "threads": list(threads),
            "formats": list(settings.formats),
            "pythons": list(pythons),
            "sustain_s": settings.sustain_s,
        },
        "definitions": DEFINITIONS,
        "thermal": thermal,
        "rows": rows,
    }


def _sustained_run(settings: Settings, python: str, say: Any) -> dict[str, Any]:
    """One long 1-thread run between two thermal readings (none when sustain_s is 0)."""
    thermal: dict[str, Any] = {"sustained": None}
    if settings.sustain_s <= 0:
        return thermal
    sustain_format = "int8" if "int8" in settings.formats else settings.formats[0]
    say(f"sustained run: {sustain_format}, 1 thread, {settings.sustain_s:g} s")
    thermal["before"] = read_thermal()
    result, _ = call_worker(python, _spec(settings, sustain_format, 1, settings.sustain_s), 1)
    thermal["after"] = read_thermal()
    latencies = result.get("latencies_ms") or []
    tenth = max(1, len(latencies) // 10)
    thermal["sustained"] = {
        "format": sustain_format,
        "threads": 1,
        "seconds": settings.sustain_s,
        "status": result.get("status"),
        "reason": result.get("reason", ""),
        "windows": len(latencies),
        "median_ms_first_tenth": float(np.median(latencies[:tenth])) if latencies else None,
        "median_ms_last_tenth": float(np.median(latencies[-tenth:])) if latencies else None,
    }
    return thermal


# --------------------------------------------------------------------------- the table


def render(report: dict[str, Any]) -> str:
    """A readable table of the rows, the thermal readings, and the reasons of failed rows."""
    header = ("format", "runtime", "env", "thr", "median ms", "p90 ms", "p99 ms", "cpu ms")
    header += ("RTF", "cold start", "peak RSS", "status")
    lines: list[tuple[str, ...]] = [header]
    notes = []
    for row in report["rows"]:
        latency = row.get("latency_ms") or {}

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.3f}"

        runtime = f"{row['runtime']} {row.get('runtime_version') or ''}".strip()
        status = row["status"]
        if status != "ok":
            notes.append(row["reason"])
            status = f"{status} [{len(notes)}]"
        lines.append(
            (
                row["format_label"],
                runtime,
                row["environment"],
                str(row["threads"]),
                ms(latency.get("median")),
                ms(latency.get("p90")),
                ms(latency.get("p99")),
                ms(row.get("cpu_ms_per_window")),
                "-" if row.get("rtf") is None else f"{row['rtf']:.4f}",
                "-" if row.get("cold_start_ms") is None else f"{row['cold_start_ms'] / 1000:.2f} s",
                "-"
                if not row.get("peak_rss_bytes")
                else f"{row['peak_rss_bytes'] / 2**20:.0f} MiB",
                status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]
    out += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    machine, bundle = report["machine"], report["bundle"]
    cpu = machine["cpu"]
    where = f"{cpu['model']}{' (' + cpu['board'] + ')' if cpu['board'] else ''}"
    out.insert(0, f"{where}, {cpu['cores']} cores, {cpu['arch']}; bundle {bundle['path']}, "
               f"hop {bundle['hop_ms']:g} ms")  # fmt: skip
    thermal = report["thermal"]
    if thermal.get("sustained"):
        s = thermal["sustained"]
        out.append(
            f"sustained {s['format']}, {s['threads']} thread, {s['seconds']:g} s: {s['windows']} "
            f"windows, median {s['median_ms_first_tenth']:.3f} ms in the first tenth, "
            f"{s['median_ms_last_tenth']:.3f} ms in the last"
            if s["status"] == "ok"
            else f"sustained run {s['status']}: {s['reason']}"
        )
        for when in ("before", "after"):
            t = thermal[when]
            temp = t["temp_source"] if t["temp_c"] is None else f"{t['temp_c']:.1f} C"
            throttled = t["throttled_source"] if t["throttled"] is None else t["throttled"]
            flags = f" ({', '.join(t['throttled_flags'])})" if t["throttled_flags"] else ""
            out.append(f"{when}: SoC temperature {temp}; throttled {throttled}{flags}")
    return "\n".join(out)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m device.bench",
        description="Latency, RTF, cold start, peak RSS and (on a Pi) temperature and "
        "throttling of a bundle on this machine, as JSON rows in the schema of `make bench`.",
    )
    parser.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    parser.add_argument("--formats", nargs="+", default=["int8", "fp32"], choices=list(FORMATS))
    parser.add_argument("--threads", nargs="+", type=int, default=[], help="default: 1..cores")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per row")
    parser.add_argument("--seconds-per-row", type=float, default=3.0)
    parser.add_argument(
        "--sustain-s", type=float, default=30.0, help="sustained int8 run between thermal readings"
    )
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        help="run the rows in this interpreter as well (repeat; default: this one only)",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: none)")
    parser.add_argument("--json", action="store_true", help="print the JSON instead of the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments == ["--worker"]:  # one row, spec on stdin (started by call_worker)
        return worker_main()
    args = build_parser().parse_args(arguments)
    try:
        settings = Settings(
            bundle=args.bundle,
            formats=tuple(args.formats),
            threads=tuple(args.threads),
            pythons=tuple(args.python),
            rounds=args.rounds,
            seconds_per_row=args.seconds_per_row,
            sustain_s=args.sustain_s,
        )
        report = run_bench(settings, lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text if args.json else render(report))
    if args.out is not None:
        print(f"report: {args.out}", file=sys.stderr)
    return 0 if all(row["status"] == "ok" for row in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
