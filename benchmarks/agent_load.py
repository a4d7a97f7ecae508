"""The listening agent's load on this machine, on a stream paced in real time.

    python -m benchmarks.agent_load --bundle bundles/demo [--seconds 60] [--model int8]
        [--rate 48000|16000] [--profile] [--baseline-root DIR] [--repeats N]

Runs `python -m device listen --source FILE --realtime --every-window` on a recording of
`--seconds` at `--rate` (speech-like tones, noise and pauses, made here; or --audio FILE),
so the agent reads chunks of its default size (`--chunk-ms`) at the pace of a microphone,
resamples them, scores every window and writes every event to a file, as it would on a Pi.
Reports:

- CPU use as a percentage of one core: over the whole run; in steady state (from 5 s after
  the agent's start event to the last poll before the audio ends, so neither the first
  windows' one-time costs nor the shutdown count); and from the start event to the exit
  (what "steady" meant before 2026-12-02);
- peak RSS of the agent process (VmHWM from /proc, polled while it runs: the child's
  ru_maxrss from wait4 would include this process's own peak, see _vm_hwm_mib);
- latency from a window's last sample arriving to its event (the events' latency_ms),
  p50 / p95 / max, and the model's own time per window (inference_ms);
- cold start: the spawn of `listen` on a short file read at full speed to its first window
  event (imports, bundle check, model probe and load, first window scored), median of
  `--cold-starts` runs, with the peak RSS of those runs;
- with --profile, one more run under benchmarks.agent_profile: CPU per stage of the listen
  path (source, queue, resample, ring, gate, model, decide, events) and peak RSS after
  imports, after the model load and at the end (written next to the report).

--baseline-root DIR runs the agent of another source tree (e.g. an export of the main
branch) in the same invocation, alternating with this one `--repeats` times, so before and
after are measured side by side under the same load.

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
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from device.config import SourceSettings

REPO = Path(__file__).resolve().parents[1]
RATE = 48000
CHUNK_MS = SourceSettings().chunk_ms  # the agent's own default read size
COLD_START_AUDIO_S = 2.0
# Steady state: from SETTLE_S after the start event (the first windows pay one-time costs:
# buffers, caches, the decider filling) to END_MARGIN_S before the audio ends (then come the
# stop event, the event file's close and the interpreter's teardown).
SETTLE_S = 5.0
END_MARGIN_S = 0.5


def make_audio(path: Path, seconds: float, seed: int = 0, rate: int = RATE) -> Path:
    """Alternating speech-band tones, broadband noise and pauses at `rate` Hz (int16 WAV)."""
    rng = np.random.default_rng(seed)
    parts = []
    total = 0
    while total < seconds * rate:
        n = int(rng.uniform(0.8, 3.0) * rate)
        kind = rng.integers(3)
        t = np.arange(n) / rate
        if kind == 0:
            f0 = rng.uniform(100, 300)
            part = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.1 * np.sin(2 * np.pi * 3 * f0 * t)
        elif kind == 1:
            part = 0.15 * rng.standard_normal(n)
        else:
            part = 0.0005 * rng.standard_normal(n)  # a pause: below the silence floor
        parts.append(part)
        total += n
    audio = np.concatenate(parts)[: int(seconds * rate)]
    sf.write(path, np.clip(audio, -1, 1).astype(np.float32), rate, subtype="PCM_16")
    return path


def _proc_cpu_s(pid: int) -> float | None:
    """utime + stime of a live process from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _steady_marks(
    pid: int,
    now: float,
    start: float,
    seconds: float,
    settled: tuple[float, float] | None,
    last_in_stream: tuple[float, float] | None,
) -> tuple[tuple[float, float] | None, tuple[float, float] | None]:
    """The steady state's two ends, moved by one poll: SETTLE_S after the start event (the
    first windows' one-time costs are behind), and the latest poll while the audio still
    flows (before the stop event, the event file's close and the interpreter's exit)."""
    if settled is None and now - start >= min(SETTLE_S, seconds / 4):
        cpu = _proc_cpu_s(pid)
        return ((now, cpu) if cpu is not None else None), last_in_stream
    if settled is not None and now - start <= seconds - END_MARGIN_S:
        cpu = _proc_cpu_s(pid)
        if cpu is not None:
            last_in_stream = (now, cpu)
    return settled, last_in_stream


def _feed_pcm(
    process: subprocess.Popen, pcm: np.ndarray, rate: int, chunk_ms: float, events_path: Path
) -> None:
    """Write int16 frames to the agent's stdin a chunk at a time, at real-time pace, from
    its start event on (a microphone's audio before that would be lost, not queued)."""
    assert process.stdin is not None  # opened with stdin=PIPE
    frames = max(1, round(chunk_ms * rate / 1000.0))
    while process.poll() is None and not (events_path.exists() and events_path.stat().st_size):
        time.sleep(0.01)
    start = time.monotonic()
    try:
        for first in range(0, pcm.shape[0], frames):
            piece = pcm[first : first + frames]
            due = start + (first + piece.shape[0]) / rate
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            process.stdin.write(piece.tobytes())
            process.stdin.flush()
        process.stdin.close()
    except (BrokenPipeError, ValueError):  # the agent exited early: measure() reports it
        return


def _vm_hwm_mib(pid: int) -> float | None:
    """The peak RSS (VmHWM) of a live process's own image, from /proc (Linux).

    Not the child's ru_maxrss from wait4: Linux carries the spawning process's peak over a
    fork and exec into it, so a parent holding a minute of 48 kHz audio (this one) would be
    reported as the agent's peak.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        return None
    return None


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


def _agent_command(
    python: str, agent_root: Path, profile_out: Path | None, args: list[str]
) -> tuple[list[str], dict[str, str]]:
    """The command running `python -m device ARGS` from `agent_root` (its cwd), or profiled."""
    env = dict(os.environ, PYTHONPATH=str(agent_root), TF_CPP_MIN_LOG_LEVEL="2")
    if profile_out is None:
        return [python, "-m", "device", *args], env
    # This tree's profiler wrapper, run as a script: the `device` it imports is agent_root's.
    wrapper = [python, str(REPO / "benchmarks" / "agent_profile.py"), "--out", str(profile_out)]
    return [*wrapper, "--", *args], env


def measure(
    bundle: Path,
    seconds: float,
    model: str,
    threads: int,
    audio: Path | None,
    python: str,
    extra_args: tuple[str, ...] = (),
    rate: int = RATE,
    agent_root: Path = REPO,
    profile_out: Path | None = None,
    source: str = "file",
    chunk_ms: float = CHUNK_MS,
) -> dict:
    """One run; `extra_args` go to `listen` as well (e.g. --mqtt URL, see alerts_load).

    `source` "file": the agent reads the recording itself (--realtime); "stdin": this
    process writes it as raw PCM to the agent's stdin at real-time pace, as `arecord | `
    would, so the agent holds no decoded file (its memory is what a microphone costs).
    """
    with tempfile.TemporaryDirectory(prefix="agent-load-") as tmp:
        tmp_dir = Path(tmp)
        audio = audio or make_audio(tmp_dir / "stream.wav", seconds, rate=rate)
        info = sf.info(str(audio))
        capture_rate, audio_s = info.samplerate, info.duration
        events_path = tmp_dir / "events.jsonl"
        if source == "stdin":
            source_args = ["--source", "stdin", "--rate", str(capture_rate)]
        else:
            source_args = ["--source", str(audio), "--realtime"]
        command, env = _agent_command(python, agent_root, profile_out, [
            "--log-level", "warning", "listen", "--bundle", str(bundle), *source_args,
            "--chunk-ms", f"{chunk_ms:g}", "--every-window", "--quiet", "--model", model,
            "--threads", str(threads), "--events-file", str(events_path),
            "--heartbeat-s", "3600", *extra_args,
        ])  # fmt: skip
        load_before = os.getloadavg()
        started = time.monotonic()
        stderr_path = tmp_dir / "stderr.txt"
        with open(stderr_path, "wb") as stderr_file:
            process = subprocess.Popen(
                command,
                cwd=agent_root,
                env=env,
                stdin=subprocess.PIPE if source == "stdin" else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_file,
            )
        if source == "stdin":
            pcm, _ = sf.read(str(audio), dtype="int16", always_2d=True)
            feeder = threading.Thread(
                target=_feed_pcm,
                args=(process, pcm, capture_rate, chunk_ms, events_path),
                daemon=True,
            )
            feeder.start()
        steady_start: tuple[float, float] | None = None  # (monotonic, CPU s) at the start event
        settled: tuple[float, float] | None = None  # SETTLE_S later: first windows done
        last_in_stream: tuple[float, float] | None = None  # last poll while audio still flows
        show = sys.stderr.isatty()
        next_note = started + 10
        peak_mib = 0.0
        # wait4 gives this child's own rusage; RUSAGE_CHILDREN would add up every child
        # this process ever reaped (a test runner has reaped many).
        while True:
            peak_mib = max(peak_mib, _vm_hwm_mib(process.pid) or 0.0)
            reaped, status, usage = os.wait4(process.pid, os.WNOHANG)
            if reaped:
                process.returncode = os.waitstatus_to_exitcode(status)
                break
            now = time.monotonic()
            if steady_start is None and events_path.exists() and events_path.stat().st_size:
                cpu = _proc_cpu_s(process.pid)
                if cpu is not None:
                    steady_start = (now, cpu)
            elif steady_start is not None:
                settled, last_in_stream = _steady_marks(
                    process.pid, now, steady_start[0], audio_s, settled, last_in_stream
                )
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
    after_start = steady = None
    if steady_start is not None:
        after_start = round(100.0 * (cpu_total_s - steady_start[1]) / (ended - steady_start[0]), 2)
    if settled is not None and last_in_stream is not None and last_in_stream[0] > settled[0] + 1:
        steady = round(
            100.0 * (last_in_stream[1] - settled[1]) / (last_in_stream[0] - settled[0]), 2
        )
    start_event = events[0]
    return {
        "bundle": str(bundle),
        "agent_root": str(agent_root),
        "model_format": model,
        "num_threads": threads,
        "runtime": f"{start_event.get('runtime')} {start_event.get('runtime_version')}",
        "window_samples": start_event.get("window_samples"),
        "hop_samples": start_event.get("hop_samples"),
        "audio_s": stop.get("audio_s"),
        "capture_rate_hz": capture_rate,
        "chunk_ms": chunk_ms,
        "source": source,
        "wall_s": round(wall_s, 2),
        "cpu_percent_of_one_core": round(100.0 * cpu_total_s / wall_s, 2),
        "cpu_percent_of_one_core_steady": steady,
        "cpu_percent_of_one_core_after_start": after_start,
        "steady_state": f"from {SETTLE_S:g} s after the start event to the last poll before "
        "the audio ends (no first windows, no shutdown); after_start: start event to exit",
        "peak_rss_mib": round(peak_mib, 1),
        "ru_maxrss_mib": round(usage.ru_maxrss / 1024.0, 1),  # includes this process's peak
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


def cold_start(
    bundle: Path, model: str, python: str, rate: int, agent_root: Path = REPO, runs: int = 3
) -> dict:
    """Spawn of `listen` on a short file read at full speed -> its first window event."""
    with tempfile.TemporaryDirectory(prefix="agent-cold-") as tmp:
        tmp_dir = Path(tmp)
        audio = make_audio(tmp_dir / "short.wav", COLD_START_AUDIO_S, rate=rate)
        times_s, rss_mib = [], []
        for run in range(runs):
            events_path = tmp_dir / f"events{run}.jsonl"
            command, env = _agent_command(python, agent_root, None, [
                "--log-level", "warning", "listen", "--bundle", str(bundle),
                "--source", str(audio), "--every-window", "--quiet", "--model", model,
                "--events-file", str(events_path), "--heartbeat-s", "3600",
            ])  # fmt: skip
            stderr_path = tmp_dir / f"stderr{run}.txt"
            with open(stderr_path, "wb") as stderr_file:
                spawned = time.monotonic()
                process = subprocess.Popen(
                    command, cwd=agent_root, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file
                )
            peak_mib = 0.0
            while True:
                peak_mib = max(peak_mib, _vm_hwm_mib(process.pid) or 0.0)
                reaped, status, _usage = os.wait4(process.pid, os.WNOHANG)
                if reaped:
                    break
                time.sleep(0.01)
            if os.waitstatus_to_exitcode(status) != 0:
                stderr = stderr_path.read_text(errors="replace")
                raise RuntimeError(f"the agent exited {status}: {stderr[-2000:]}")
            events = [json.loads(line) for line in events_path.read_text().splitlines() if line]
            first = next(e for e in events if e["type"] in ("window", "decision"))
            # monotonic_s is CLOCK_MONOTONIC, the clock time.monotonic() reads here too.
            times_s.append(first["monotonic_s"] - spawned)
            rss_mib.append(round(peak_mib, 1))
    return {
        "cold_start_s": round(float(np.median(times_s)), 3),
        "cold_starts_s": [round(t, 3) for t in times_s],
        "peak_rss_mib": rss_mib,
        "audio_s": COLD_START_AUDIO_S,
    }


def profile(
    bundle: Path,
    seconds: float,
    model: str,
    python: str,
    rate: int,
    agent_root: Path,
    out: Path,
    source: str = "file",
    chunk_ms: float = CHUNK_MS,
) -> dict:
    """A run under benchmarks.agent_profile: CPU per stage and RSS by stage."""
    run = measure(
        bundle, seconds, model, 1, None, python, rate=rate, agent_root=agent_root,
        profile_out=out, source=source, chunk_ms=chunk_ms,
    )  # fmt: skip
    report = json.loads(out.read_text())
    report["run"] = {k: run[k] for k in ("cpu_percent_of_one_core_steady", "peak_rss_mib")}
    report["audio_s"] = run["audio_s"]
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def stage_table(profiles: dict[str, dict]) -> list[str]:
    """Rows: stage, then CPU ms per second of audio and % of the profiled total per tree."""
    names = list(profiles)
    lines = ["  stage     " + "".join(f"{n:>26s}" for n in names)]
    stages = list(next(iter(profiles.values()))["stages_cpu_s"])
    for stage in [*stages, "total profiled"]:
        cells = []
        for report in profiles.values():
            total = report["profiled_cpu_s"]
            value = total if stage == "total profiled" else report["stages_cpu_s"][stage]
            per_s = 1000.0 * value / report["audio_s"]
            cells.append(f"{per_s:9.3f} ms/s ({100.0 * value / total:5.1f} %)")
        lines.append(f"  {stage:14s}" + "".join(f"{c:>26s}" for c in cells))
    for stage in ("interpreter", "imports", "agent_built", "end"):
        cells = [f"{r['peak_rss_mib'].get(stage, '-')} MiB" for r in profiles.values()]
        lines.append(f"  RSS {stage:10s}" + "".join(f"{c:>26s}" for c in cells))
    return lines


def _summary(report: dict) -> list[str]:
    lat, inf = report["latency_ms"], report["inference_ms"]
    return [
        f"  audio {report['audio_s']} s at {report['capture_rate_hz']} Hz paced in real time "
        f"({report['source']}, {report['chunk_ms']:g} ms chunks), "
        f"{report['windows']} windows, {report['overflows']} overflows",
        f"  CPU  {report['cpu_percent_of_one_core']} % of one core over the run, "
        f"{report['cpu_percent_of_one_core_steady']} % steady state "
        f"({report['cpu_percent_of_one_core_after_start']} % from the start event to the exit)",
        f"  RSS  peak {report['peak_rss_mib']} MiB",
        f"  last sample -> event  p50 {lat['p50']} ms  p95 {lat['p95']} ms  max {lat['max']} ms",
        f"  inference per window  p50 {inf['p50']} ms  p95 {inf['p95']} ms",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path, help="model bundle directory")
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="audio paced in real time, s (default 60)"
    )
    parser.add_argument(
        "--model", choices=["int8", "fp32"], default="int8", help="model format (default int8)"
    )
    parser.add_argument("--threads", type=int, default=1, help="LiteRT threads (default 1)")
    parser.add_argument(
        "--rate",
        type=int,
        default=RATE,
        help=f"sample rate of the made-up stream in Hz: 48000 needs resampling, 16000 does not "
        f"(default {RATE})",
    )
    parser.add_argument(
        "--audio", type=Path, default=None, help="a recording to replay instead (default: made up)"
    )
    parser.add_argument(
        "--source",
        choices=["file", "stdin"],
        default="file",
        help="file: the agent reads the recording paced in real time (--realtime); stdin: "
        "this process pipes it as raw PCM at real-time pace, as arecord would (default file)",
    )
    parser.add_argument(
        "--chunk-ms",
        type=float,
        default=CHUNK_MS,
        help=f"the agent's read size in ms, as --chunk-ms of listen (default {CHUNK_MS:g})",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter running the agent (default: this one)",
    )
    parser.add_argument(
        "--cold-starts",
        type=int,
        default=3,
        help=f"cold-start runs on {COLD_START_AUDIO_S:g} s of audio read at full speed, the "
        "median reported (default 3; 0: none)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more run under cProfile: CPU per stage and RSS by stage (default: off)",
    )
    parser.add_argument(
        "--baseline-root",
        type=Path,
        default=None,
        help="another source tree whose agent runs alternately with this one, for a before/"
        "after in one invocation (default: none)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="load runs per tree, alternating with the baseline's (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/agent_load.json",
        help="JSON report; the profiles go next to it (default benchmarks/results/agent_load.json)",
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the agent runs in its own tree's directory
    args.python = os.path.abspath(args.python)  # the same (a venv's link is not resolved)
    trees = {"this tree": REPO}
    if args.baseline_root is not None:
        trees = {"baseline": args.baseline_root.resolve(), "this tree": REPO}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, root in trees.items():
            runs[name].append(
                measure(
                    args.bundle,
                    args.seconds,
                    args.model,
                    args.threads,
                    args.audio,
                    args.python,
                    rate=args.rate,
                    agent_root=root,
                    source=args.source,
                    chunk_ms=args.chunk_ms,
                )
            )
    colds: dict[str, dict] = {}
    for _ in range(args.cold_starts):  # one at a time per tree, alternating: the same load
        for name, root in trees.items():
            one = cold_start(args.bundle, args.model, args.python, args.rate, root, runs=1)
            if name not in colds:
                colds[name] = {**one, "cold_starts_s": [], "peak_rss_mib": []}
            colds[name]["cold_starts_s"] += one["cold_starts_s"]
            colds[name]["peak_rss_mib"] += one["peak_rss_mib"]
    for cold in colds.values():
        cold["cold_start_s"] = round(float(np.median(cold["cold_starts_s"])), 3)
    profiles = {}
    if args.profile:
        for name, root in trees.items():
            slug = name.replace(" ", "_")
            out = args.out.with_name(f"{args.out.stem}.profile.{slug}.json")
            args.out.parent.mkdir(parents=True, exist_ok=True)
            profiles[name] = profile(
                args.bundle, args.seconds, args.model, args.python, args.rate, root, out,
                source=args.source, chunk_ms=args.chunk_ms,
            )  # fmt: skip
    report = {
        "runs": runs,
        "cold_start": colds,
        "profiles": profiles,
        **runs["this tree"][-1],  # the keys earlier versions of this report had
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    last = runs["this tree"][-1]
    print(
        f"agent load: {last['bundle']} ({last['model_format']}, {last['runtime']}, "
        f"{last['num_threads']} thread)"
    )
    for name in trees:
        for i, run in enumerate(runs[name], start=1):
            print(f"{name} ({trees[name]}), run {i}:")
            print("\n".join(_summary(run)))
        if name in colds:
            c = colds[name]
            print(
                f"  cold start to the first window event: {c['cold_start_s']} s "
                f"(runs {c['cold_starts_s']}), peak RSS {c['peak_rss_mib']} MiB"
            )
    if profiles:
        print("CPU per stage of the listen path (cProfile, thread CPU time), RSS by stage:")
        print("\n".join(stage_table(profiles)))
    print(
        f"  load average before/after {last['machine']['load_average_before']} / "
        f"{last['machine']['load_average_after']} on {last['machine']['cpu_count']} CPUs"
    )
    print(f"  report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
