"""Run `clad-agent` (python -m device) under cProfile and time the listen path by stage.

    python -m benchmarks.agent_profile --out PROFILE.json -- listen --bundle DIR --source F ...

`benchmarks.agent_load --profile` starts the agent through this wrapper. Every thread the
agent starts (the source's reader included) gets its own profiler with a CPU-time clock
(time.thread_time), so waiting is not counted; at exit the profiles are merged and the
cumulative CPU time of the functions that make up each stage of the listen path is written
as JSON, with the peak RSS after imports, after the agent was built (bundle, model, source)
and at the end:

    source   read and deliver chunks (FileSource/StdinSource reader, queue put)
    queue    the main loop's wait for a chunk (queue get)
    resample StreamingResampler.process (to 16 kHz)
    ring     WindowRing.push (chunks -> windows)
    gate     window RMS (silence gate) and normalization
    model    Scorer.score_window (quantize, invoke, dequantize): the model's own share
    decide   P(spoof) and the Decider
    events   building, encoding and writing events (file, stdout, MQTT ...)

Profiling starts once the agent is built (imports and model load are not in it; the
reader thread starts after that). The profiler slows Python code by a constant factor; the
shares, not the absolute times, are what to compare. The unprofiled CPU use comes from
benchmarks.agent_load, which runs this file as a script (`python benchmarks/agent_profile.py
--out ... -- ...`) so that the `device` it profiles is the one on PYTHONPATH.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)  # run as a script: benchmarks/ is no top-level package directory

STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    # stage -> (file suffix, function name) whose cumulative times add up to the stage
    "source": (("device/sources.py", "_run"),),
    "queue": (("device/sources.py", "get"),),
    "resample": (("device/audio.py", "process"), ("device/audio.py", "flush")),
    "ring": (("device/stream.py", "push"), ("device/stream.py", "finish")),
    "gate": (("device/audio.py", "window_rms_dbfs"), ("device/audio.py", "normalize_windows")),
    "model": (("device/runtime.py", "score_window"),),
    "decide": (("device/scores.py", "p_spoof"), ("device/stream.py", "update")),
    "events": (("device/agent.py", "_handle"),),
}


def _peak_rss_mib() -> float:
    """This image's peak RSS (VmHWM): ru_maxrss would carry over the spawning parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def stage_times(stats: pstats.Stats) -> dict[str, float]:
    """CPU seconds per stage: the cumulative time of each stage's entry functions."""
    out = {stage: 0.0 for stage in STAGES}
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in stats.stats.items():
        for stage, entries in STAGES.items():
            if any(filename.endswith(suffix) and name == fn for suffix, fn in entries):
                out[stage] += cumulative
    return out


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if len(arguments) < 3 or arguments[0] != "--out" or "--" not in arguments:
        print(
            "usage: python -m benchmarks.agent_profile --out PROFILE.json -- CLAD-AGENT ARGS...",
            file=sys.stderr,
        )
        return 2
    out = Path(arguments[1])
    agent_args = arguments[arguments.index("--") + 1 :]
    started = time.monotonic()
    profiles: list[cProfile.Profile] = []

    def start_thread_profile(*_: Any) -> None:
        sys.setprofile(None)
        profile = cProfile.Profile(time.thread_time)
        profiles.append(profile)
        profile.enable()

    threading.setprofile(start_thread_profile)
    rss: dict[str, float] = {"interpreter": _peak_rss_mib()}
    main_profile = cProfile.Profile(time.thread_time)
    profiles.append(main_profile)
    import device.agent
    import device.cli

    rss["imports"] = _peak_rss_mib()
    build_agent = device.agent.build_agent
    built_s: list[float] = []

    def build_and_note(*args: Any, **kwargs: Any) -> Any:
        agent = build_agent(*args, **kwargs)
        rss["agent_built"] = _peak_rss_mib()
        built_s.append(time.monotonic() - started)
        main_profile.enable()  # the steady state: from here to the exit
        return agent

    device.agent.build_agent = build_and_note  # cmd_listen imports it from device.agent
    status = 1
    try:
        status = device.cli.main(agent_args)
    finally:
        main_profile.disable()
        rss["end"] = _peak_rss_mib()
        stats = pstats.Stats(main_profile)
        for profile in profiles[1:]:
            stats.add(profile)
        total_s = sum(tt for (_cc, _nc, tt, _ct, _callers) in stats.stats.values())
        report = {
            "profiled_cpu_s": round(total_s, 4),
            "stages_cpu_s": {k: round(v, 4) for k, v in stage_times(stats).items()},
            "peak_rss_mib": rss,
            "agent_built_s": round(built_s[0], 3) if built_s else None,
            "threads_profiled": len(profiles),
            "top_functions": [
                {
                    "function": f"{Path(filename).name}:{line}:{name}",
                    "calls": nc,
                    "self_cpu_s": round(tt, 4),
                    "cumulative_cpu_s": round(ct, 4),
                }
                for (filename, line, name), (_cc, nc, tt, ct, _callers) in sorted(
                    stats.stats.items(), key=lambda item: -item[1][2]
                )[:25]
            ],
        }
        out.write_text(json.dumps(report, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
