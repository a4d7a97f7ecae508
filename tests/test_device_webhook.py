"""Webhooks against a real HTTP receiver on loopback: the signature, retries of a receiver
that fails first, a 4xx skipped, a receiver that is down and comes back, and the agent."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from device.api import AgentState
from device.config import ConfigError, WebhookSettings, load_settings
from device.webhook import WebhookSender, sign, verify
from tests.brokers import free_port
from tests.device_fixtures import json_lines, listen_on_file, scenario, write_wav

SECRET = "s3cret-for-tests"


class Receiver:
    """A ThreadingHTTPServer that records POSTs and answers `statuses` in turn (then 200)."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.answers: list[int] = []
        self.statuses = list(statuses or [])
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.cond:
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                    receiver.requests.append((dict(self.headers), body))
                    receiver.answers.append(status)
                    receiver.cond.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self) -> list[dict]:
        with self.cond:
            return [
                json.loads(body)
                for (_, body), status in zip(self.requests, self.answers, strict=True)
                if status == 200
            ]

    def wait_delivered(self, count: int, timeout_s: float = 20.0) -> bool:
        with self.cond:
            return self.cond.wait_for(
                lambda: sum(1 for s in self.answers if s == 200) >= count, timeout_s
            )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(**kwargs) -> Iterator[Receiver]:
    server = Receiver(**kwargs)
    try:
        yield server
    finally:
        server.close()


def settings(*urls: str, **changes) -> WebhookSettings:
    values = {"urls": urls, "secret": SECRET, "backoff_initial_s": 0.05, "backoff_max_s": 0.2}
    values.update(changes)
    return WebhookSettings(**values)


def event(n: int, kind: str = "decision") -> dict:
    return {"schema": 1, "type": kind, "decision": ("bonafide", "spoof")[n % 2], "n": n}


def test_events_are_posted_in_order_and_signed() -> None:
    with receiver() as hook:
        sender = WebhookSender(settings(hook.url))
        try:
            for n in range(5):
                sender.write(event(n))
            sender.write(event(99, "heartbeat"))  # not a posted type by default
            assert hook.wait_delivered(5)
        finally:
            sender.close()
    assert [e["n"] for e in hook.delivered()] == [0, 1, 2, 3, 4]
    for headers, body in hook.requests:
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Clad-Event"] == "decision"
        assert headers["X-Clad-Delivery"] == str(json.loads(body)["seq"])
        assert verify(SECRET, body, headers["X-Clad-Signature"])
        assert not verify("another secret", body, headers["X-Clad-Signature"])
        assert not verify(SECRET, body + b" ", headers["X-Clad-Signature"])
    headers, body = hook.requests[0]
    assert headers["X-Clad-Signature"] == sign(SECRET, body)
    assert headers["X-Clad-Signature"].startswith("sha256=") and len(sign(SECRET, b"")) == 71


def test_a_receiver_failing_the_first_times_gets_everything_in_order() -> None:
    with receiver(statuses=[503, 500, 429]) as hook:
        sender = WebhookSender(settings(hook.url))
        state = AgentState({})
        state.outboxes.extend(sender.outboxes)
        try:
            for n in range(4):
                sender.write(event(n))
            assert hook.wait_delivered(4)
            assert sender.outboxes[0].drain(10)
            metrics = state.metrics()
        finally:
            sender.close()
    assert hook.answers == [503, 500, 429, 200, 200, 200, 200]
    assert [json.loads(body)["n"] for _, body in hook.requests] == [0, 0, 0, 0, 1, 2, 3]
    assert [e["n"] for e in hook.delivered()] == [0, 1, 2, 3]
    assert 'clad_outbox_failures_total{sink="webhook-1"} 3' in metrics
    assert 'clad_outbox_delivered_total{sink="webhook-1"} 4' in metrics
    assert 'clad_outbox_queue_depth{sink="webhook-1"} 0' in metrics


def test_a_4xx_refusal_is_skipped_and_counted_not_retried() -> None:
    with receiver(statuses=[400]) as hook:
        sender = WebhookSender(settings(hook.url))
        try:
            sender.write(event(0))
            sender.write(event(1))
            assert hook.wait_delivered(1)
            assert sender.outboxes[0].drain(10)
        finally:
            sender.close()
    assert hook.answers == [400, 200]
    assert [e["n"] for e in hook.delivered()] == [1]
    assert sender.outboxes[0].metrics()["rejected"] == 1


def test_a_receiver_that_is_down_gets_the_queued_events_when_it_returns(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    sender = WebhookSender(settings(url, spool_dir=str(tmp_path)))
    try:
        for n in range(6):
            sender.write(event(n))
        outbox = sender.outboxes[0]
        deadline = time.monotonic() + 10
        while outbox.failures < 2 and time.monotonic() < deadline:  # tried, failed, retried
            time.sleep(0.02)
        assert outbox.failures >= 2 and "ConnectionRefusedError" in outbox.last_error
        assert outbox.spool.depth == 6  # nobody listens: all still queued
        with receiver(port=port) as hook:
            assert hook.wait_delivered(6)
            assert outbox.drain(10)
    finally:
        sender.close()
    assert [e["n"] for e in hook.delivered()] == list(range(6))
    assert len(list(tmp_path.glob("webhook-*.sqlite3"))) == 1


def test_two_urls_each_get_every_event_and_one_down_does_not_hold_the_other() -> None:
    down_url = f"http://127.0.0.1:{free_port()}/hook"
    with receiver() as hook:
        sender = WebhookSender(settings(down_url, hook.url))
        try:
            for n in range(3):
                sender.write(event(n))
            assert hook.wait_delivered(3)
            assert sender.outboxes[0].spool.depth == 3  # the other URL's queue still holds them
        finally:
            sender.close()
    assert [e["n"] for e in hook.delivered()] == [0, 1, 2]


def test_webhook_settings_are_checked_and_the_secret_never_echoed(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[webhook]\nurls = ["https://hooks.example/clad"]\nsecret = "hunter2"\n')
    loaded = load_settings(config)
    assert loaded.webhook.urls == ("https://hooks.example/clad",)
    assert loaded.to_dict()["webhook"]["secret"] == "<set>"
    for text, problem in (
        ('[webhook]\nurls = ["ftp://x/"]\nsecret = "s"\n', "webhook.urls"),
        ('[webhook]\nurls = ["http://x/"]\n', "without webhook.secret"),
        ("[webhook]\ntimeout_s = 0\n", "webhook.timeout_s"),
        ('[webhook]\ntypes = ["decisions"]\n', "webhook.types"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            load_settings(config)


def test_the_agent_posts_its_decisions(fixture_bundle: Path, tmp_path: Path) -> None:
    audio = write_wav(tmp_path / "scenario.wav", scenario(16000), 16000)
    with receiver() as hook:
        config = tmp_path / "agent.toml"
        config.write_text(f'[webhook]\nurls = ["{hook.url}"]\nsecret = "{SECRET}"\n')
        out = listen_on_file(fixture_bundle, audio, config)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
    decisions = [e for e in json_lines(out.stdout) if e["type"] == "decision"]
    assert len(decisions) >= 3
    posted = hook.delivered()
    assert [(e["window"], e["decision"]) for e in posted] == [
        (e["window"], e["decision"]) for e in decisions
    ]
    assert all(verify(SECRET, body, h["X-Clad-Signature"]) for h, body in hook.requests)
    start = next(e for e in json_lines(out.stdout) if e["type"] == "start")
    assert start["settings"]["webhook"]["secret"] == "<set>"
    assert SECRET not in out.stdout.decode()
