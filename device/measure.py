"""What every latency benchmark shares: inputs, the timed loop, statistics and the row schema.

`clad-agent bench` (device/bench.py, on the Pi) and `make bench` (benchmarks/, on a desktop)
measure the same way and write rows of one schema. The code lives here because the device
cannot import benchmarks/; benchmarks imports it.
"""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

LATENCY_QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)
COLD_START_STAGES = ("main", "imported", "loaded", "first_score")
"""The CLOCK_MONOTONIC stamps a worker takes: interpreter up, runtime imported, model loaded,
first window scored."""


def bench_windows(window_samples: int, count: int, seed: int = 0) -> np.ndarray:
    """Normalized windows of speech-band tones in noise: the same inputs for every row."""
    from device.audio import SAMPLE_RATE, normalize_windows

    rng = np.random.default_rng(seed)
    t = np.arange(window_samples) / SAMPLE_RATE
    windows = []
    for i in range(count):
        f0 = 110.0 + 40.0 * i
        voiced = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3))
        envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (3.0 + i) * t)
        windows.append(envelope * voiced + 0.05 * (1 + i % 3) * rng.standard_normal(t.size))
    return normalize_windows(np.asarray(windows, dtype=np.float32))


def peak_rss_bytes() -> int:
    """Peak resident set of this process's own image (VmHWM), in bytes.

    Not ru_maxrss where /proc has VmHWM: on Linux, exec carries the spawning process's peak
    into the new image's ru_maxrss (subprocess forks or vforks the parent first), so a light
    worker spawned by a heavy benchmark reports the benchmark's memory."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass  # no /proc (macOS): ru_maxrss below
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(usage if sys.platform == "darwin" else usage * 1024)  # Linux reports KiB


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the system has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """What every worker answer says about the process that measured."""
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "numpy_version": np.__version__,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def timed_windows(
    predict: Callable[[np.ndarray], Any], windows: np.ndarray, spec: dict[str, Any]
) -> dict[str, Any]:
    """Warm up for spec["warmup_s"] (and at least spec["warmup_min_runs"] calls, default 5),
    then time one window per call until spec["measure_s"] has passed and at least
    spec["min_runs"] (at most spec["max_runs"]) calls were made; garbage collection is off
    while timing.

    Returns latencies_ms, warmup_runs and cpu_ms_per_window (CPU time of the whole process,
    all its threads, per window: the work apart from waiting for a core).
    """
    warmup_s, measure_s = float(spec["warmup_s"]), float(spec["measure_s"])
    warmup_min_runs = int(spec.get("warmup_min_runs", 5))
    min_runs, max_runs = int(spec["min_runs"]), int(spec["max_runs"])
    count = len(windows)
    warmup_end_s = time.perf_counter() + warmup_s
    i = 0
    while time.perf_counter() < warmup_end_s or i < warmup_min_runs:
        predict(windows[i % count])
        i += 1
    warmup_runs = i
    latencies_ns: list[int] = []
    measure_end_s = time.perf_counter() + measure_s
    clock = time.perf_counter_ns
    gc.collect()
    gc.disable()
    cpu_start_s = time.process_time()
    try:
        i = 0
        while len(latencies_ns) < max_runs and (
            len(latencies_ns) < min_runs or time.perf_counter() < measure_end_s
        ):
            window = windows[i % count]
            start_ns = clock()
            predict(window)
            latencies_ns.append(clock() - start_ns)
            i += 1
    finally:
        cpu_s = time.process_time() - cpu_start_s
        gc.enable()
    return {
        "latencies_ms": [ns / 1e6 for ns in latencies_ns],
        "warmup_runs": warmup_runs,
        "cpu_ms_per_window": cpu_s * 1000.0 / max(1, len(latencies_ns)),
    }


def latency_stats(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Percentiles, median, mean, min, max (ms) and n of pooled latencies."""
    values = np.asarray(latencies_ms, dtype=np.float64)
    stats = {f"p{q}": float(np.percentile(values, q)) for q in LATENCY_QUANTILES}
    stats.update(
        median=stats["p50"],
        mean=float(values.mean()),
        min=float(values.min()),
        max=float(values.max()),
        n=int(values.size),
    )
    return stats


def cold_start_stages(stages_ns: dict[str, Any], spawn_ns: int) -> dict[str, float] | None:
    """A worker's stamps as stage durations (ms) from its spawn; None when a stamp is missing."""
    if not all(isinstance(stages_ns.get(k), int) for k in COLD_START_STAGES):
        return None
    return {
        "interpreter_ms": (stages_ns["main"] - spawn_ns) / 1e6,
        "runtime_import_ms": (stages_ns["imported"] - stages_ns["main"]) / 1e6,
        "model_load_ms": (stages_ns["loaded"] - stages_ns["imported"]) / 1e6,
        "first_inference_ms": (stages_ns["first_score"] - stages_ns["loaded"]) / 1e6,
    }


def empty_row(**fields: Any) -> dict[str, Any]:
    """A benchmark row with every measured field unset; `fields` fills the row's identity
    (key, format, runtime, environment, threads, status, ...)."""
    row: dict[str, Any] = {
        "key": None,
        "format": None,
        "format_label": None,
        "precision": None,
        "runtime": None,
        "environment": None,
        "python": None,
        "threads": None,
        "status": None,
        "reason": "",
        "model_file": None,
        "size_bytes": None,
        "eer": None,
        "agreement": None,
        "runtime_version": None,
        "latency_ms": None,
        "round_medians_ms": [],
        "round_spread": None,
        "rtf": None,
        "cold_start_ms": None,
        "cold_starts_ms": [],
        "cold_start_stages_ms": {},
        "load_ms": None,
        "cpu_ms_per_window": None,
        "peak_rss_bytes": None,
        "macs_per_s": None,
        "efficiency": None,
        "speedup_vs_pytorch": None,
        "logits": None,
    }
    unknown = set(fields) - set(row)
    if unknown:
        raise ValueError(f"benchmark row: expected fields of {sorted(row)}, got {sorted(unknown)}")
    row.update(fields)
    return row


def measured_fields(
    results: Sequence[dict[str, Any]],
    cold_starts_ms: list[float],
    stages_ms: Sequence[dict[str, float]],
    hop_s: float,
    macs_per_window: int | None,
) -> dict[str, Any]:
    """The measured fields of a row from its workers' ok answers (one per round)."""
    pooled = [ms for r in results for ms in r["latencies_ms"]]
    stats = latency_stats(pooled)
    medians = [float(np.median(r["latencies_ms"])) for r in results if r.get("latencies_ms")]
    median_ms = stats["median"]
    cpu = [r["cpu_ms_per_window"] for r in results if "cpu_ms_per_window" in r]
    return {
        "latency_ms": stats,
        "round_medians_ms": medians,
        "round_spread": (max(medians) - min(medians)) / median_ms if len(medians) > 1 else 0.0,
        "rtf": median_ms / 1000.0 / hop_s,
        "cold_start_ms": statistics.median(cold_starts_ms) if cold_starts_ms else None,
        "cold_starts_ms": cold_starts_ms,
        "cold_start_stages_ms": {
            stage: statistics.median(s[stage] for s in stages_ms)
            for stage in (stages_ms[0] if stages_ms else {})
        },
        "load_ms": statistics.median(r["load_ms"] for r in results),
        "cpu_ms_per_window": statistics.median(cpu) if cpu else None,
        "macs_per_s": macs_per_window / (median_ms / 1000.0) if macs_per_window else None,
        "logits": results[0].get("logits"),
    }


def bundle_summary(bundle: Any) -> dict[str, Any]:
    """The report's "bundle" section: what was measured, down to each file's sha256."""
    manifest = bundle.manifest
    return {
        "path": str(bundle.root),
        "model": manifest.model_name,
        "parameters": manifest.parameters,
        "macs_per_window": manifest.macs_per_window,
        "window_samples": manifest.audio.window_samples,
        "hop_samples": manifest.audio.hop_samples,
        "sample_rate": manifest.audio.sample_rate,
        "hop_ms": manifest.audio.hop_s * 1000.0,
        "files": {name: entry.sha256 for name, entry in manifest.files.items()},
    }


def machine_summary(cpu: dict[str, Any], loadavg_before: list[float] | None) -> dict[str, Any]:
    """The report's "machine" section, taken when the rows are done."""
    return {
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_before": loadavg_before,
        "loadavg_after": loadavg(),
    }
