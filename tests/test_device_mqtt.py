"""MQTT against a real mosquitto on loopback: discovery, availability, a broker restart
mid-stream with nothing lost or reordered, the bounded spool, TLS with a password from the
settings file (and the errors when either is wrong), and the agent end to end."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (the alerts extra) is not installed")

from device.api import AgentState
from device.config import (
    ApiSettings,
    ConfigError,
    MqttSettings,
    Settings,
    WebhookSettings,
    load_settings,
)
from device.mqtt import (
    MqttPublisher,
    discovery_messages,
    home_assistant_entity_ids,
    parse_mqtt_url,
)
from device.outbox import Outbox, Queued, Spool
from tests.brokers import Message, Mosquitto, Subscriber, make_ca
from tests.device_fixtures import (
    REPO,
    device_env,
    json_lines,
    listen_on_file,
    scenario,
    write_wav,
)

NODE = "testpi"
BASE = f"clad/{NODE}"


def decision_event(n: int) -> dict:
    decision = ("bonafide", "spoof")[n % 2]
    return {
        "schema": 1,
        "type": "decision",
        "time": "2026-01-31T12:00:00.000000Z",
        "source": "file:test.wav",
        "window": n,
        "p_spoof": 0.9 if decision == "spoof" else 0.1,
        "smoothed": 0.8 if decision == "spoof" else 0.2,
        "decision": decision,
        "n": n,
    }


def settings_for(broker: Mosquitto, tmp_path: Path, **changes) -> MqttSettings:
    values = {
        "url": f"mqtt://127.0.0.1:{broker.port}",
        "node_id": NODE,
        "spool": str(tmp_path / "mqtt-spool.sqlite3"),
        "backoff_initial_s": 1.0,
        "backoff_max_s": 1.0,
    }
    values.update(changes)
    return MqttSettings(**values)


def state_events(subscriber: Subscriber) -> list[dict]:
    return [json.loads(m.payload) for m in subscriber.on(f"{BASE}/state")]


def test_discovery_availability_and_state(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, ["clad/#", "homeassistant/#"])
        publisher = MqttPublisher(settings_for(broker, tmp_path), {"model_name": "fixture"})
        try:
            for n in range(5):
                publisher.write(decision_event(n))
            publisher.write({"type": "window", "n": 99})  # not a published type
            assert sub.wait_for(lambda _: len(state_events(sub)) == 5, timeout_s=20)
        finally:
            publisher.close()
        assert sub.wait_for(
            lambda _: [m.payload for m in sub.on(f"{BASE}/availability")][-1:] == [b"offline"],
            timeout_s=10,
        )
        sub.close()

    events = state_events(sub)
    assert [e["n"] for e in events] == [0, 1, 2, 3, 4]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert [m.payload for m in sub.on(f"{BASE}/availability")] == [b"online", b"offline"]

    spoof = json.loads(sub.on(f"homeassistant/binary_sensor/{NODE}/spoof/config")[0].payload)
    assert spoof["state_topic"] == f"{BASE}/state"
    assert spoof["availability_topic"] == f"{BASE}/availability"
    assert spoof["payload_available"] == "online" and spoof["payload_not_available"] == "offline"
    assert spoof["unique_id"] == f"clad_{NODE}_spoof"
    assert "value_json.decision == 'spoof'" in spoof["value_template"]
    assert spoof["device"]["identifiers"] == [f"clad_agent_{NODE}"]
    assert spoof["device"]["model"] == "fixture"

    p_spoof = json.loads(sub.on(f"homeassistant/sensor/{NODE}/p_spoof/config")[0].payload)
    assert p_spoof["value_template"] == "{{ value_json.smoothed }}"
    assert p_spoof["state_class"] == "measurement"
    assert p_spoof["device"] == spoof["device"]

    online = json.loads(sub.on(f"homeassistant/binary_sensor/{NODE}/online/config")[0].payload)
    assert online["state_topic"] == f"{BASE}/availability"
    assert online["device_class"] == "connectivity"
    assert (online["payload_on"], online["payload_off"]) == ("online", "offline")


def test_discovery_and_state_are_retained_for_a_late_subscriber(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        publisher = MqttPublisher(settings_for(broker, tmp_path))
        try:
            publisher.write(decision_event(1))
            assert publisher.outbox.drain(20)
            late = Subscriber(broker.port, ["clad/#", "homeassistant/#"], client_id="late")
            assert late.wait_for(lambda msgs: len(msgs) >= 5, timeout_s=10)
            late.close()
        finally:
            publisher.close()
    retained = {m.topic: m for m in late.messages if m.retain}
    assert json.loads(retained[f"{BASE}/state"].payload)["decision"] == "spoof"
    assert retained[f"{BASE}/availability"].payload == b"online"
    assert {
        f"homeassistant/binary_sensor/{NODE}/spoof/config",
        f"homeassistant/sensor/{NODE}/p_spoof/config",
        f"homeassistant/binary_sensor/{NODE}/online/config",
    } <= set(retained)


def test_a_broker_restart_mid_stream_loses_nothing_and_keeps_order(tmp_path: Path) -> None:
    total, stop_at, restart_at = 3000, 1000, 1600
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, [f"{BASE}/state"])
        publisher = MqttPublisher(settings_for(broker, tmp_path))
        state = AgentState({})
        state.outboxes.append(publisher.outbox)
        try:
            for n in range(total):
                if n == stop_at:
                    broker.stop()
                if n == restart_at:
                    queued_while_away = publisher.outbox.spool.depth
                    broker.start()
                publisher.write(decision_event(n))
            assert publisher.outbox.drain(60), "the spool did not empty within 60 s"
            assert sub.wait_for(
                lambda _: {e["n"] for e in state_events(sub)} >= set(range(total)), 60
            )
            metrics = state.metrics()
        finally:
            publisher.close()
            sub.close()

    assert queued_while_away >= restart_at - stop_at - 100  # those waited in the spool
    received = [e["n"] for e in state_events(sub)]
    first_seen = list(dict.fromkeys(received))  # QoS 1 is at least once: drop redeliveries
    assert first_seen == list(range(total))  # none lost, order kept
    assert len(received) - total <= 200  # redeliveries only of what was in flight
    assert 'clad_outbox_queue_depth{sink="mqtt"} 0' in metrics
    assert 'clad_outbox_dropped_total{sink="mqtt"} 0' in metrics
    assert f'clad_outbox_delivered_total{{sink="mqtt"}} {total}' in metrics


def test_events_spooled_on_disk_go_out_after_an_agent_restart(tmp_path: Path) -> None:
    """The broker is down while the agent stops: the next agent delivers what the last kept."""
    broker = Mosquitto(tmp_path / "broker")
    settings = settings_for(broker, tmp_path)
    first = MqttPublisher(settings)
    for n in range(10):
        first.write(decision_event(n))
    first.close()  # no broker: the events stay in the spool file
    assert Spool(settings.spool, 100).depth == 10
    with broker:
        sub = Subscriber(broker.port, [f"{BASE}/state"])
        second = MqttPublisher(settings)
        try:
            second.write(decision_event(10))
            assert sub.wait_for(lambda _: len(state_events(sub)) >= 11, timeout_s=20)
        finally:
            second.close()
            sub.close()
    assert [e["n"] for e in state_events(sub)] == list(range(11))


def test_last_will_marks_a_killed_agent_offline(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, [f"{BASE}/availability"])
        code = (
            "import sys, time\n"
            "from device.config import MqttSettings\n"
            "from device.mqtt import MqttPublisher\n"
            f"p = MqttPublisher(MqttSettings(url='mqtt://127.0.0.1:{broker.port}', "
            f"node_id='{NODE}'))\n"
            "for _ in range(200):\n"
            "    if p.connected: break\n"
            "    time.sleep(0.05)\n"
            "print('connected' if p.connected else 'not connected', flush=True)\n"
            "time.sleep(60)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=device_env(), stdout=subprocess.PIPE
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == b"connected\n"
            assert sub.wait_for(lambda m: [x.payload for x in m][-1:] == [b"online"], 10)
            child.send_signal(signal.SIGKILL)  # no goodbye: the broker sends the will
            child.wait(10)
            assert sub.wait_for(lambda m: [x.payload for x in m][-1:] == [b"offline"], 10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            sub.close()


def test_the_spool_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = Spool(path, max_events=5)
    seqs = [spool.put({"type": "decision", "n": n}) for n in range(8)]
    assert seqs == sorted(seqs)
    assert (spool.depth, spool.dropped) == (5, 3)
    assert [q.event["n"] for q in spool.peek(10)] == [3, 4, 5, 6, 7]
    spool.ack(spool.peek(2)[-1].seq)
    spool.close()
    reopened = Spool(path, max_events=5)  # the queue and the counter survive a restart
    assert (reopened.depth, reopened.dropped) == (3, 3)
    assert [q.event["n"] for q in reopened.peek(10)] == [5, 6, 7]
    assert reopened.put({"n": 8}) > seqs[-1]  # numbering goes on, never reused
    reopened.close()


def test_a_kick_ends_the_outbox_back_off_at_once(tmp_path: Path) -> None:
    """A reconnect kicks the outbox: queued events go then, not after its back-off (60 s)."""
    way_out = {"open": False}
    delivered: list[int] = []

    def deliver(batch: list[Queued]) -> None:
        if not way_out["open"]:
            raise ConnectionError("expected a broker listening on 127.0.0.1:1, got refused")
        delivered.extend(item.event["n"] for item in batch)

    outbox = Outbox(
        "mqtt",
        Spool(tmp_path / "spool.sqlite3", 100),
        deliver,
        ("decision",),
        backoff_initial_s=60.0,
        backoff_max_s=60.0,
    )
    try:
        for n in range(3):
            outbox.write({"type": "decision", "n": n})
        deadline = time.monotonic() + 10
        while outbox.failures == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert outbox.failures == 1 and "got refused" in outbox.last_error  # now in its 60 s wait
        way_out["open"] = True
        outbox.kick()
        assert outbox.drain(10), "still waiting out the back-off after a kick"
    finally:
        outbox.close()
    assert delivered == [0, 1, 2] and outbox.failures == 1


def test_mqtt_settings_are_checked_and_the_password_never_echoed(tmp_path: Path) -> None:
    assert parse_mqtt_url("mqtt://broker.lan") == ("broker.lan", 1883, False)
    assert parse_mqtt_url("mqtts://broker.lan:8884") == ("broker.lan", 8884, True)
    for bad in ("http://x:1", "mqtt://", "mqtt://u:p@host:1883"):
        with pytest.raises(ConfigError, match=r"mqtt\.url"):
            parse_mqtt_url(bad)
    config = tmp_path / "agent.toml"
    config.write_text(
        '[mqtt]\nurl = "mqtt://127.0.0.1:1883"\nusername = "pi"\npassword = "hunter2"\n'
        'types = ["decision"]\n'
    )
    settings = load_settings(config)
    assert settings.mqtt.password == "hunter2" and settings.mqtt.types == ("decision",)
    assert settings.to_dict()["mqtt"]["password"] == "<set>"
    assert "hunter2" not in json.dumps(settings.to_dict())
    for text, problem in (
        ('[mqtt]\ntypes = ["decisions"]\n', "mqtt.types"),
        ('[mqtt]\ntopic = "clad/#"\n', "mqtt.topic"),
        ('[mqtt]\nurl = "tcp://x:1"\n', "mqtt.url"),
        ('[mqtt]\npassword = "x"\n', "without mqtt.username"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            load_settings(config)
    assert Settings().to_dict()["mqtt"]["password"] == ""


def wait_for_error(publisher: MqttPublisher, timeout_s: float = 30.0) -> str:
    """The publisher's connect error, once the outbox counted a failed delivery with it."""
    deadline = time.monotonic() + timeout_s
    while not publisher.outbox.last_error and time.monotonic() < deadline:
        time.sleep(0.1)
    assert publisher.outbox.last_error == f"ConnectionError: {publisher.connect_error}"
    return publisher.connect_error


def test_tls_and_a_password_from_the_settings_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """mqtts:// with a CA and credentials from the settings file against a TLS-only broker
    that refuses anonymous clients; a wrong password and an untrusted CA each fail with an
    error naming what was expected and what arrived, and nothing queued meanwhile is lost."""
    ca = make_ca(tmp_path / "pki", "clad test CA")
    stranger = make_ca(tmp_path / "pki", "some other CA")  # signed nothing the broker holds
    server = ca.issue_server(tmp_path / "pki", "127.0.0.1")
    user, secret = "pi", "correct horse battery"
    config = tmp_path / "clad-agent.toml"

    def publisher(broker: Mosquitto, ca_file: Path, password: str) -> MqttPublisher:
        config.write_text(
            "[mqtt]\n"
            f'url = "mqtts://127.0.0.1:{broker.port}"\n'
            f'node_id = "{NODE}"\n'
            f'username = "{user}"\n'
            f'password = "{password}"\n'
            f'tls_ca_file = "{ca_file}"\n'
            f'spool = "{tmp_path / "spool.sqlite3"}"\n'
            "backoff_initial_s = 1.0\nbackoff_max_s = 1.0\n"
        )
        return MqttPublisher(load_settings(config).mqtt)

    with Mosquitto(tmp_path / "broker", tls=server, passwords={user: secret}) as broker:
        sub = Subscriber(
            broker.port,
            [f"{BASE}/state"],
            tls_ca_file=ca.cert,
            username=user,
            password=secret,
        )
        where = f"127.0.0.1:{broker.port}"
        state = AgentState({})
        try:
            with caplog.at_level(logging.WARNING, logger="device.mqtt"):
                wrong_password = publisher(broker, ca.cert, "Tr0ub4dor&3")
                state.outboxes.append(wrong_password.outbox)
                for n in range(5):
                    wrong_password.write(decision_event(n))
                refused = wait_for_error(wrong_password)
                health, payload = state.health()
                status = state.status()
                depth_refused = wrong_password.outbox.spool.depth
                wrong_password.close()  # the agent stops: the events stay in the spool file
                state.outboxes.clear()

                untrusted_ca = publisher(broker, stranger.cert, secret)
                for n in range(5, 10):
                    untrusted_ca.write(decision_event(n))
                untrusted = wait_for_error(untrusted_ca)
                depth_untrusted = untrusted_ca.outbox.spool.depth
                untrusted_ca.close()
            logged = caplog.text

            right = publisher(broker, ca.cert, secret)  # the settings file fixed
            try:
                for n in range(10, 15):
                    right.write(decision_event(n))
                assert sub.wait_for(lambda _: len(state_events(sub)) >= 15, timeout_s=30)
                assert right.outbox.drain(10) and right.outbox.last_error == ""
            finally:
                right.close()
        finally:
            sub.close()

    assert refused == (
        f"mqtts://{where} refused the login: expected it to accept user 'pi' with the "
        "password in the settings file ([mqtt] username, password), got CONNACK 'Not authorized'"
    )
    assert "Tr0ub4dor" not in refused and "Tr0ub4dor" not in logged  # never echoed
    assert refused in logged
    problem = f"mqtt: ConnectionError: {refused}; 5 event(s) queued"
    assert health == "degraded" and problem in payload["problems"]
    assert status["alerts"]["mqtt"]["last_error"] == f"ConnectionError: {refused}"
    assert status["alerts"]["mqtt"]["queue_depth"] == 5 and status["alerts"]["mqtt"]["failures"]
    assert untrusted == (
        f"TLS to {where}: expected a broker certificate for 127.0.0.1 signed by a CA in "
        f"{stranger.cert}, got one that fails verification "
        "(unable to get local issuer certificate)"
    )
    assert untrusted in logged
    assert (depth_refused, depth_untrusted) == (5, 10)  # all kept while the settings were wrong
    assert [e["n"] for e in state_events(sub)] == list(range(15))  # none lost, in order


def test_unreadable_tls_files_are_a_settings_error(tmp_path: Path) -> None:
    settings = MqttSettings(
        url="mqtts://127.0.0.1:8883", tls_ca_file=str(tmp_path / "missing-ca.pem")
    )
    with pytest.raises(ConfigError, match=r"mqtt\.tls_ca_file .*expected readable PEM files"):
        MqttPublisher(settings)


def test_example_settings_and_docs_match_what_the_code_publishes() -> None:
    """deploy/clad-agent.toml shows every [api] (the page), [mqtt] and [webhook] setting with
    its default (but the spool paths it sets for the Pi); docs/device.md names every setting,
    the discovery topics, and the Home Assistant entity ids derived from the discovery
    configs, in its tables, dashboard card and automation."""
    example = tomllib.loads((REPO / "deploy" / "clad-agent.toml").read_text())
    docs = (REPO / "docs" / "device.md").read_text()
    for section, kind in (
        ("api", ApiSettings),
        ("mqtt", MqttSettings),
        ("webhook", WebhookSettings),
    ):
        names = {f.name for f in dataclasses.fields(kind)}
        assert set(example[section]) == names, section
        for name in names:
            assert re.search(rf"`{section}\.{name}`|`{section}\.[a-z_]+` / [^|]*`{name}`", docs), (
                f"{section}.{name} is not in docs/device.md's settings table"
            )
    pi = {"spool", "spool_dir", "listen"}  # set for the Pi's paths and port
    for section, default in (
        ("api", ApiSettings()),
        ("mqtt", MqttSettings()),
        ("webhook", WebhookSettings()),
    ):
        loaded = getattr(load_settings(REPO / "deploy" / "clad-agent.toml"), section)
        for f in dataclasses.fields(default):
            if f.name not in pi:
                assert getattr(loaded, f.name) == getattr(default, f.name), (section, f.name)

    node = "raspberrypi"
    discovery = discovery_messages(MqttSettings(node_id=node), node, f"clad/{node}", {})
    for topic, _ in discovery:
        assert f"`{topic.replace(node, 'NODE')}`" in docs
    ids = home_assistant_entity_ids(discovery)
    assert ids == [
        "binary_sensor.clad_agent_raspberrypi_spoof_detected",
        "sensor.clad_agent_raspberrypi_smoothed_p_spoof",
        "binary_sensor.clad_agent_raspberrypi_agent_online",
    ]
    documented = re.findall(r"\b(?:binary_sensor|sensor)\.clad_agent_[a-z0-9_]+", docs)
    assert set(documented) == set(ids)
    card = docs[docs.index("type: vertical-stack") :]
    automation = card[card.index("alias: Deepfake voice detected") :]
    assert all(i in card[: card.index("```")] for i in ids)
    assert f"entity_id: {ids[0]}" in automation and 'to: "on"' in automation


def assert_published_as_printed(sub: Subscriber, out: subprocess.CompletedProcess) -> dict:
    """A finished `clad-agent listen --json` run: the broker got its decision events (at
    least 3), in the order stdout printed them, and the retained availability ended
    "offline" (the last will or the clean stop). Closes `sub`; returns the start event."""
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    decisions = [e for e in json_lines(out.stdout) if e["type"] == "decision"]
    assert sub.wait_for(
        lambda _: (
            len(sub.on(f"{BASE}/state")) >= len(decisions)
            and sub.on(f"{BASE}/availability")[-1:]
            == [Message(f"{BASE}/availability", b"offline", False)]
        ),
        timeout_s=20,
    )
    sub.close()
    published = [e for e in state_events(sub) if e["type"] == "decision"]
    assert len(decisions) >= 3
    assert [(e["window"], e["decision"]) for e in published] == [
        (e["window"], e["decision"]) for e in decisions
    ]
    return next(e for e in json_lines(out.stdout) if e["type"] == "start")


def test_the_agent_publishes_its_decisions(fixture_bundle: Path, tmp_path: Path) -> None:
    """`clad-agent listen --mqtt`: the broker gets the same decision events as stdout."""
    audio = write_wav(tmp_path / "scenario.wav", scenario(16000), 16000)
    with Mosquitto(tmp_path / "broker") as broker:
        sub = Subscriber(broker.port, ["clad/#"])
        config = tmp_path / "agent.toml"
        config.write_text(f'[mqtt]\nnode_id = "{NODE}"\nspool = "{tmp_path / "spool.sqlite3"}"\n')
        out = listen_on_file(
            fixture_bundle, audio, config, "--mqtt", f"mqtt://127.0.0.1:{broker.port}"
        )
        start = assert_published_as_printed(sub, out)
    assert start["settings"]["mqtt"]["url"] == f"mqtt://127.0.0.1:{broker.port}"


def test_the_agent_publishes_over_tls_with_a_password_from_its_settings_file(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """`clad-agent listen --config FILE` with mqtts://, a CA file and credentials in FILE."""
    ca = make_ca(tmp_path / "pki", "clad test CA")
    server = ca.issue_server(tmp_path / "pki", "127.0.0.1")
    user, secret = "clad", "a password nobody guesses"
    audio = write_wav(tmp_path / "scenario.wav", scenario(16000), 16000)
    with Mosquitto(tmp_path / "broker", tls=server, passwords={user: secret}) as broker:
        sub = Subscriber(
            broker.port, ["clad/#"], tls_ca_file=ca.cert, username=user, password=secret
        )
        config = tmp_path / "clad-agent.toml"
        config.write_text(
            "[mqtt]\n"
            f'url = "mqtts://127.0.0.1:{broker.port}"\n'
            f'node_id = "{NODE}"\nusername = "{user}"\npassword = "{secret}"\n'
            f'tls_ca_file = "{ca.cert}"\nspool = "{tmp_path / "spool.sqlite3"}"\n'
        )
        config.chmod(0o600)
        out = listen_on_file(fixture_bundle, audio, config)
        start = assert_published_as_printed(sub, out)
    assert start["settings"]["mqtt"]["url"] == f"mqtts://127.0.0.1:{broker.port}"
    assert start["settings"]["mqtt"]["password"] == "<set>"
    assert secret not in out.stdout.decode() and secret not in out.stderr.decode()
