"""The listening agent's load on this machine, on a stream paced in real time.

    python -m benchmarks.agent_load --bundle bundles/demo [--seconds 60] [--model int8]

Runs `python -m device listen --source FILE --realtime --every-window` on a 48 kHz
recording of `--seconds` (speech-like tones, noise and pauses, made here; or --audio FILE),
so the agent reads 64 ms chunks at the pace of a microphone, resamples them, scores every
window and writes every event to a file, as it would on a Pi. Reports:

- CPU use as a percentage of one core: over the whole run, and steady state (from the
  agent's start event, after imports and model load, to its exit);
- peak RSS of the agent process (ru_maxrss from wait4);
- latency from a window's last sample arriving to its event (the events' latency_ms),
  p50 / p95 / max, and the model's own time per window (inference_ms).

Writes a JSON report (default benchmarks/results/agent_load.json) next to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
RATE = 48000


def make_audio(path: Path, seconds: float, seed: int = 0) -> Path:
    """Alternating speech-band tones, broadband noise and pauses at 48 kHz (int16 WAV)."""
    rng = np.random.default_rng(seed)
    parts = []
    total = 0
    while total < seconds * RATE:
        n = int(rng.uniform(0.8, 3.0) * RATE)
        kind = rng.integers(3)
        t = np.arange(n) / RATE
        if kind == 0:
            f0 = rng.uniform(100, 300)
            part = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 3 * f0 * t)
        elif kind == 1:
            part = 0.15 * rng.standard_normal(n)
        else:
            part = 0.0005 * rng.standard_normal(n)  # a pause: below the silence floor
        parts.append(part)
        total += n
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    sf.write(path, np.clip(audio, -1, 1).astype(np.float32), RATE, subtype="PCM_16")
    return path


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "max": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "p50": round(float(np.percentile(array, 50)), 3),
        "p95": round(float(np.percentile(array, 95)), 3),
        "max": round(float(array.max()), 3),
        "n": int(array.size),
    }


def measure(
    bundle: Path,
    seconds: float,
    model: str,
    threads: int,
    audio: Path | None,
    python: str,
    extra_args: tuple[str, ...] = (),
) -> dict:
    """One run; `extra_args` go to `listen` as well (e.g. --mqtt URL, see alerts_load)."""
    with tempfile.TemporaryDirectory(prefix="agent-load-") as tmp:
        tmp_dir = Path(tmp)
        audio = audio or make_audio(tmp_dir / "stream.wav", seconds)
        events_path = tmp_dir / "events.jsonl"
        command = [
            python, "-m", "device", "--log-level", "warning", "listen",
            "--bundle", str(bundle), "--source", str(audio),
            "--realtime", "--chunk-ms", "64", "--every-window", "--quiet", "--model", model,
            "--threads", str(threads), "--events-file", str(events_path),
            "--heartbeat-s", "3600", *extra_args,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        load_before = os.getloadavg()
        started = time.monotonic()
        stderr_path = tmp_dir / "stderr.txt"
        with open(stderr_path, "wb") as stderr_file:
            process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file
            )
        steady_start: tuple[float, float] | None = None
        show = sys.stderr.isatty()
        next_note = started + 10
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would add up every child
        # this process ever reaped (a test runner has reaped many).
        while True:
            reaped, status, usage = os.wait4(process.pid, os.WNOHANG)
            if reaped:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            now = time.monotonic()
            if steady_start is None and events_path.exists() and events_path.stat().st_size:
                cpu = _proc_cpu_s(process.pid)
                if cpu is not None:
                    steady_start = (now, cpu)
            if show and now >= next_note:
                print(f"  ... {now - started:.0f} s of ~{seconds:.0f} s", file=sys.stderr)
                next_note += 10
            time.sleep(0.05)
        ended = time.monotonic()
        stderr = stderr_path.read_text(errors="replace")
        if process.returncode != 0:
            raise RuntimeError(f"the agent exited {process.returncode}: {stderr[-2000:]}")
        events = [json.loads(line) for line in events_path.read_text().splitlines() if line]
    cpu_total_s = usage.ru_utime + usage.ru_stime
    wall_s = ended - started
    windows = [e for e in events if e["type"] in ("window", "decision")]
    stop = events[-1]
    steady = None
    if steady_start is not None:
        steady_wall = ended - steady_start[0]
        steady = round(100.0 * (cpu_total_s - steady_start[1]) / steady_wall, 2)
    start_event = events[0]
    return {
        "bundle": str(bundle),
        "model_format": model,
        "num_threads": threads,
        "runtime": f"{start_event.get('runtime')} {start_event.get('runtime_version')}",
        "window_samples": start_event.get("window_samples"),
        "hop_samples": start_event.get("hop_samples"),
        "audio_s": stop.get("audio_s"),
        "capture_rate_hz": RATE,
        "chunk_ms": 64,
        "wall_s": round(wall_s, 2),
        "cpu_percent_of_one_core": round(100.0 * cpu_total_s / wall_s, 2),
        "cpu_percent_of_one_core_steady": steady,
        "peak_rss_mib": round(usage.ru_maxrss / 1024.0, 1),
        "windows": len(windows),
        "overflows": stop.get("overflows"),
        "latency_ms": _percentiles([e["latency_ms"] for e in windows]),
        "inference_ms": _percentiles([e["inference_ms"] for e in windows]),
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--audio", type=Path, default=None, help="a recording to replay instead")
    parser.add_argument("--python", default=sys.executable, help="interpreter running the agent")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/agent_load.json")
    args = parser.parse_args(argv)
    report = measure(args.bundle, args.seconds, args.model, args.threads, args.audio, args.python)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    lat, inf = report["latency_ms"], report["inference_ms"]
    print(
        f"agent load: {report['bundle']} ({report['model_format']}, {report['runtime']}, "
        f"{report['num_threads']} thread)"
    )
    print(
        f"  audio {report['audio_s']} s paced in real time, {report['windows']} windows, "
        f"{report['overflows']} overflows"
    )
    print(
        f"  CPU  {report['cpu_percent_of_one_core']} % of one core over the run, "
        f"{report['cpu_percent_of_one_core_steady']} % steady state"
    )
    print(f"  RSS  peak {report['peak_rss_mib']} MiB")
    print(f"  last sample -> event  p50 {lat['p50']} ms  p95 {lat['p95']} ms  max {lat['max']} ms")
    print(f"  inference per window  p50 {inf['p50']} ms  p95 {inf['p95']} ms")
    print(
        f"  load average before/after {report['machine']['load_average_before']} / "
        f"{report['machine']['load_average_after']} on {report['machine']['cpu_count']} CPUs"
    )
    print(f"  report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
