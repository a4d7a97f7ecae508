"""What MQTT alerts cost and whether they lose anything, on this machine.

    python -m benchmarks.alerts_load --bundle DIR [--events 10000] [--seconds 60]

1. Through a broker restart: `--events` decision events go to an MqttPublisher (the agent's
   sink) while a real mosquitto on a loopback port is stopped after 30 % of them and started
   again after 60 %; a subscriber in a child process (persistent session, QoS 1) records what
   arrives. Reports lost events, whether the order was kept, redeliveries (QoS 1 is at least
   once), the time to deliver all, and this process's CPU seconds for publishing them.
2. Agent CPU with and without MQTT: benchmarks.agent_load's real-time run (`--seconds` of
   audio, paced like a microphone) without MQTT, with MQTT publishing decisions and
   heartbeats (the default), and with every window published (the worst case).

Needs mosquitto and paho-mqtt (the alerts extra). Writes benchmarks/results/alerts_load.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
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


def agent_cpu(bundle: Path, seconds: float) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix="alerts-agent-") as tmp,
        Mosquitto(Path(tmp) / "broker") as broker,
    ):
        url = f"mqtt://127.0.0.1:{broker.port}"
        every = Path(tmp) / "every-window.toml"
        every.write_text('[mqtt]\ntypes = ["decision", "heartbeat", "window"]\n')
        runs = {
            "no_mqtt": (),
            "mqtt_decisions_heartbeats": ("--mqtt", url),
            "mqtt_every_window": ("--mqtt", url, "--config", str(every)),
        }
        out = {}
        for name, extra in runs.items():
            report = measure(bundle, seconds, "int8", 1, None, sys.executable, extra)
            out[name] = {
                key: report[key]
                for key in (
                    "cpu_percent_of_one_core",
                    "cpu_percent_of_one_core_steady",
                    "peak_rss_mib",
                    "windows",
                    "wall_s",
                )
            }
            print(f"  {name}: {out[name]}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/alerts_load.json")
    args = parser.parse_args(argv)
    report = {"through_restart": through_restart(args.events)}
    print(json.dumps(report["through_restart"], indent=2))
    report["agent_cpu"] = agent_cpu(args.bundle, args.seconds)
    print(json.dumps(report["agent_cpu"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
