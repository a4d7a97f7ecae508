"""The CPU floor of the listening agent's structure, with no audio work at all.

    python -m benchmarks.handoff_floor [--seconds 20] [--chunk-ms 64] [--rate 48000]

A reader thread waits for each chunk's time as a paced source does and hands a chunk of
`--chunk-ms` at `--rate` (mono float32) through a bounded queue.Queue to the main thread,
which takes it with a timeout as `device.agent` does; nothing is resampled, scored or
written. The process's CPU time over the run, as % of one core, is what the agent pays for
its thread hand-off per chunk before any of its own work (docs/device.md, "Load on this
machine"). Writes JSON next to the line it prints (default
benchmarks/results/handoff_floor.json).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def measure(seconds: float, chunk_ms: float, rate: int) -> dict:
    chunks: queue.Queue[np.ndarray] = queue.Queue(maxsize=64)
    stop = threading.Event()
    frames = max(1, round(chunk_ms * rate / 1000.0))
    template = np.zeros((frames, 1), dtype=np.float32)

    def reader() -> None:
        start = time.monotonic()
        count = 0
        while not stop.is_set():
            count += 1
            due = start + count * frames / rate
            while (wait := due - time.monotonic()) > 0:
                if stop.wait(wait):
                    return
            chunks.put(template.copy(), timeout=0.1)

    thread = threading.Thread(target=reader, daemon=True)
    load_before = os.getloadavg()
    cpu_start, wall_start = time.process_time(), time.monotonic()
    thread.start()
    taken = 0
    while time.monotonic() - wall_start < seconds:
        try:
            chunks.get(timeout=0.25)
            taken += 1
        except queue.Empty:
            continue
    stop.set()
    thread.join()
    cpu_s, wall_s = time.process_time() - cpu_start, time.monotonic() - wall_start
    return {
        "chunk_ms": chunk_ms,
        "rate_hz": rate,
        "chunks": taken,
        "wall_s": round(wall_s, 3),
        "cpu_s": round(cpu_s, 4),
        "cpu_percent_of_one_core": round(100.0 * cpu_s / wall_s, 3),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="run length, s (default 20)")
    parser.add_argument(
        "--chunk-ms", type=float, default=64.0, help="chunk length in ms (default 64)"
    )
    parser.add_argument("--rate", type=int, default=48000, help="sample rate, Hz (default 48000)")
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/handoff_floor.json",
        help="JSON report (default benchmarks/results/handoff_floor.json)",
    )
    args = parser.parse_args(argv)
    report = measure(args.seconds, args.chunk_ms, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"hand-off floor: {report['cpu_percent_of_one_core']} % of one core for "
        f"{report['chunks']} chunks of {args.chunk_ms:g} ms in {report['wall_s']} s "
        f"(load average {report['load_average_before']} -> {report['load_average_after']})"
    )
    print(f"  report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
