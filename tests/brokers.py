"""A real mosquitto broker on a free loopback port, and a real paho subscriber, for tests.

    with Mosquitto(tmp_dir) as broker: ... broker.stop(); broker.start() ...
    sub = Subscriber(broker.port, ["clad/#"]); sub.wait_for(lambda msgs: ..., timeout_s=20)

The broker keeps sessions on disk (persistence), so a subscriber with a persistent session
(clean_session=False, QoS 1) gets every message across a broker restart. Every wait is
bounded in time. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


def mosquitto_or_skip() -> str:
    """The mosquitto binary, or a skip (a failure under CI=true: tests/conftest.py)."""
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None
    )
    if path:
        return path
    pytest.skip("mosquitto is not installed (scripts/install-system-deps.sh installs it)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    def __init__(self, work_dir: Path, port: int | None = None) -> None:
        self.binary = mosquitto_or_skip()
        self.dir = work_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {self.dir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 0\n"  # 0: no limit on a sleeping subscriber's queue
            "max_inflight_messages 0\n"
            f"log_dest file {self.log}\n"
            # as root, mosquitto would switch to its own user, who cannot write in this
            # directory: no session store, so a restart would forget the subscriber
            f"user {getpass.getuser()}\n"
        )
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited {self.process.returncode}: "
                    f"{self.process.stderr.read().decode() if self.process.stderr else ''}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on 127.0.0.1:{self.port} in {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM: mosquitto saves its sessions to disk and exits."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()


@dataclass
class Message:
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """A paho client with a persistent session, collecting every message it gets."""

    def __init__(self, port: int, topics: list[str], client_id: str = "test-subscriber") -> None:
        import paho.mqtt.client as paho

        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self.subscribed = threading.Event()
        self.client = paho.Client(
            paho.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False
        )
        self.client.reconnect_delay_set(1, 1)

        def on_connect(client, _userdata, _flags, reason, _props) -> None:
            if not reason.is_failure:
                client.subscribe([(topic, 1) for topic in topics])

        def on_subscribe(*_args) -> None:
            self.subscribed.set()

        def on_message(_client, _userdata, message) -> None:
            with self._cond:
                self.messages.append(Message(message.topic, message.payload, message.retain))
                self._cond.notify_all()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise RuntimeError("the test subscriber did not get its SUBACK in 10 s")

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait_for(self, done: Callable[[list[Message]], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not done(self.messages):
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    return False
                self._cond.wait(min(remaining_s, 0.5))
            return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
