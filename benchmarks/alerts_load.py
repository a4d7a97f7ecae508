"""What MQTT alerts cost and whether they lose anything, on this machine.

    python -m benchmarks.alerts_load --bundle DIR [--events 10000] [--seconds 60] [--rounds 1]

1. Through a broker restart: `--events` decision events go to an MqttPublisher (the agent's
   sink) while a real mosquitto on a loopback port is stopped after 30 % of them and started
   again after 60 %; a subscriber in a child process (persistent session, QoS 1) records what
   arrives. Reports lost events, whether the order was kept, redeliveries (QoS 1 is at least
   once), the time to deliver all, and this process's CPU seconds for publishing them.
2. Agent CPU with and without MQTT: benchmarks.agent_load's real-time run (`--seconds` of
   audio, paced like a microphone) without MQTT, with MQTT publishing decisions and
   heartbeats (the default), and with every window published (the worst case). The three
   agents run side by side, at the same time, so a machine shared with other work loads all
   three alike; `--rounds` repeats that and reports each round and the median.

Needs mosquitto and paho-mqtt (the alerts extra). Writes benchmarks/results/alerts_load.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.agent_load import REPO, measure
from device.config import MqttSettings
from device.mqtt import MqttPublisher
from tests.brokers import Mosquitto

SUBSCRIBER = """
import json, sys, time
import paho.mqtt.client as paho
port, topic, total, out = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen, got = [], set()
def on_connect(client, userdata, flags, reason, props):
    client.subscribe(topic, qos=1)
def on_subscribe(*args):
    print("subscribed", flush=True)
def on_message(client, userdata, message):
    n = json.loads(message.payload)["n"]
    seen.append(n)
    got.add(n)
client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-sub", clean_session=False)
client.reconnect_delay_set(1, 1)
client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
client.connect("127.0.0.1", port)
client.loop_start()
deadline = time.monotonic() + 300
while len(got) < total and time.monotonic() < deadline:
    time.sleep(0.05)
client.disconnect()
client.loop_stop()
open(out, "w").write(json.dumps(seen))
"""


def through_restart(total: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="alerts-load-") as tmp:
        tmp_dir = Path(tmp)
        received_path = tmp_dir / "received.json"
        with Mosquitto(tmp_dir / "broker") as broker:
            settings = MqttSettings(
                url=f"mqtt://127.0.0.1:{broker.port}",
                node_id="bench",
                spool=str(tmp_dir / "spool.sqlite3"),
                backoff_initial_s=1.0,
                backoff_max_s=1.0,
                max_queue=max(total, 1),
            )
            child = subprocess.Popen(
                [
                    *(sys.executable, "-c", SUBSCRIBER, str(broker.port)),
                    *("clad/bench/state", str(total), str(received_path)),
                ],
                stdout=subprocess.PIPE,
            )
            if child.stdout is None or child.stdout.readline() != b"subscribed\n":
                raise RuntimeError("the subscriber did not subscribe")  # "subscribed"
            cpu_start_s, wall_start_s = time.process_time(), time.monotonic()
            publisher = MqttPublisher(settings)
            queued_max = 0
            for n in range(total):
                if n == int(total * 0.3):
                    broker.stop()
                if n == int(total * 0.6):
                    queued_max = publisher.outbox.spool.depth
                    broker.start()
                publisher.write(
                    {"schema": 1, "type": "decision", "decision": "spoof", "smoothed": 0.9, "n": n}
                )
            drained = publisher.outbox.drain(300)
            wall_s = time.monotonic() - wall_start_s
            cpu_s = time.process_time() - cpu_start_s
            dropped = publisher.outbox.spool.dropped
            publisher.close()
            child.wait(330)
        received = json.loads(received_path.read_text())
    first_seen = list(dict.fromkeys(received))
    return {
        "events": total,
        "broker_stopped_at": int(total * 0.3),
        "broker_started_at": int(total * 0.6),
        "queued_while_away": queued_max,
        "spool_drained": drained,
        "lost": total - len(set(received) & set(range(total))),
        "order_kept": first_seen == list(range(total)),
        "redeliveries": len(received) - len(first_seen),
        "dropped_by_spool_bound": dropped,
        "deliver_wall_s": round(wall_s, 2),
        "publisher_cpu_s": round(cpu_s, 2),
        "publisher_cpu_us_per_event": round(1e6 * cpu_s / total, 1),
    }


KEYS = (
    "cpu_percent_of_one_core",
    "cpu_percent_of_one_core_steady",
    "peak_rss_mib",
    "windows",
    "overflows",
    "wall_s",
)


def agent_cpu(bundle: Path, seconds: float, rounds: int) -> dict:
    """Each round: the three agents at once, against one broker; their CPU side by side."""
    with (
        tempfile.TemporaryDirectory(prefix="alerts-agent-") as tmp,
        Mosquitto(Path(tmp) / "broker") as broker,
    ):
        url = f"mqtt://127.0.0.1:{broker.port}"
        runs: dict[str, tuple[str, ...]] = {"no_mqtt": ()}
        for name, types in (
            ("mqtt_decisions_heartbeats", '["decision", "heartbeat"]'),
            ("mqtt_every_window", '["decision", "heartbeat", "window"]'),
        ):
            config = Path(tmp) / f"{name}.toml"
            config.write_text(f'[mqtt]\nnode_id = "{name}"\ntypes = {types}\n')
            runs[name] = ("--mqtt", url, "--config", str(config))
        per_round: list[dict[str, dict]] = []
        for round_index in range(rounds):
            reports: dict[str, dict] = {}
            errors: list[str] = []

            def one(name: str, extra: tuple[str, ...], reports=reports, errors=errors) -> None:
                try:
                    reports[name] = measure(bundle, seconds, "int8", 1, None, sys.executable, extra)
                except (RuntimeError, OSError) as error:
                    errors.append(f"{name}: {error}")

            threads = [threading.Thread(target=one, args=item) for item in runs.items()]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise RuntimeError("; ".join(errors))
            row = {name: {key: reports[name][key] for key in KEYS} for name in runs}
            row["load_average_before"] = reports["no_mqtt"]["machine"]["load_average_before"]
            per_round.append(row)
            print(f"  round {round_index + 1}/{rounds}: {json.dumps(row)}", file=sys.stderr)
    median = {
        name: {
            key: round(statistics.median(r[name][key] for r in per_round), 2)
            for key in ("cpu_percent_of_one_core", "cpu_percent_of_one_core_steady")
            if all(r[name][key] is not None for r in per_round)
        }
        for name in runs
    }
    return {"seconds": seconds, "rounds": per_round, "median": median}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, required=True, help="model bundle directory (manifest.json)"
    )
    parser.add_argument(
        "--events",
        type=int,
        default=10_000,
        help="decision events published through the broker restart (default 10000)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="audio per agent CPU run, in seconds, paced in real time (default 60)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="agent CPU rounds, each running the three agents side by side (default 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "benchmarks/results/alerts_load.json",
        help="JSON report (default benchmarks/results/alerts_load.json)",
    )
    args = parser.parse_args(argv)
    if args.events < 10 or args.seconds <= 0 or args.rounds < 1:
        parser.error(
            f"expected --events >= 10, --seconds > 0 and --rounds >= 1, got "
            f"{args.events}, {args.seconds} and {args.rounds}"
        )
    report = {"through_restart": through_restart(args.events)}
    print(json.dumps(report["through_restart"], indent=2))
    report["agent_cpu"] = agent_cpu(args.bundle, args.seconds, args.rounds)
    print(json.dumps(report["agent_cpu"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
