"""How fast the agent's status page loads in a real headless Chromium, on loopback.

    python -m benchmarks.page_load --bundle DIR [--loads 10] [--seconds 40]

Starts `python -m device listen --api 127.0.0.1:0` on a stream paced in real time
(benchmarks.agent_load's test audio), opens the page `--loads` times, each in a new tab of
one Chromium driven over the DevTools pipe (tests.browser; the first load is a cold
browser), and reads the Navigation Timing API: response end, DOMContentLoaded, load event
end, and the page's own first data drawn (its first GET /history answered and plotted), in
ms from navigation start. Reports each load, the median and the max. Needs chromium.

Writes a JSON report (default benchmarks/results/page_load.json) next to the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from benchmarks.agent_load import REPO, make_audio
from tests.browser import NAVIGATION_TIMING_JS, Chromium

FIGURES = ("response_end_ms", "dom_content_loaded_ms", "load_event_end_ms", "first_data_drawn_ms")


def measure(bundle: Path, loads: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="page-load-") as tmp:
        tmp_dir = Path(tmp)
        audio = make_audio(tmp_dir / "stream.wav", seconds)
        env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
        with open(tmp_dir / "agent.stderr", "wb") as stderr:
            agent = subprocess.Popen(
                [
                    *(sys.executable, "-m", "device", "--log-level", "warning", "listen"),
                    *("--bundle", str(bundle), "--source", str(audio), "--realtime"),
                    *("--json", "--api", "127.0.0.1:0"),
                ],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        try:
            assert agent.stdout is not None  # PIPE above
            line = agent.stdout.readline()
            if not line:
                agent.wait(10)
                problem = (tmp_dir / "agent.stderr").read_text()[-2000:]
                raise RuntimeError(f"the agent exited {agent.returncode}: {problem}")
            url = json.loads(line)["api"] + "/"
            threading.Thread(target=agent.stdout.read, daemon=True).start()
            rows = []
            with Chromium(tmp_dir / "chromium") as browser:
                for index in range(loads):
                    tab = browser.open(url)
                    row = tab.wait_for(
                        f"document.body.dataset.loadedMs && {NAVIGATION_TIMING_JS}", 20
                    )
                    row = {k: round(v, 1) for k, v in row.items()}
                    rows.append(row)
                    print(f"  load {index + 1}/{loads}: {json.dumps(row)}", file=sys.stderr)
                    tab.close()
        finally:
            agent.terminate()
            agent.wait(15)
    return {
        "url": "http://127.0.0.1:PORT/",
        "loads": rows,
        "median": {k: round(statistics.median(r[k] for r in rows), 1) for k in FIGURES},
        "max": {k: max(r[k] for r in rows) for k in FIGURES},
        "cold_first_load": rows[0],
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, required=True, help="model bundle directory (manifest.json)"
    )
    parser.add_argument(
        "--loads", type=int, default=10, help="page loads, each in a new tab (default 10)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=40.0,
        help="audio the agent replays in real time, in seconds; enough for the loads (default 40)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/page_load.json",
        help="JSON report (default benchmarks/results/page_load.json)",
    )
    args = parser.parse_args(argv)
    if args.loads < 1 or args.seconds < 5:
        parser.error(f"expected --loads >= 1 and --seconds >= 5, got {args.loads}, {args.seconds}")
    report = measure(args.bundle, args.loads, args.seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"status page load on loopback, {args.loads} loads in headless Chromium (ms):")
    print(f"  {'':24} {'cold (1st)':>10} {'median':>8} {'max':>8}")
    for key in FIGURES:
        cold, med, top = report["cold_first_load"][key], report["median"][key], report["max"][key]
        print(f"  {key:24} {cold:>10} {med:>8} {top:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
