"""Decision changes and heartbeats to an MQTT broker, with Home Assistant discovery.

    MqttPublisher(settings, model_info) -> an event sink (write/close), with .outbox

Topics (TOPIC is [mqtt] topic with {node} replaced by the node id):

    TOPIC/state          every decision and heartbeat event as JSON (the events' schema, plus
                         "seq"), QoS 1, retained: the last one is the agent's current state
    TOPIC/availability   "online" (retained) once connected; "offline" (retained) when the
                         agent stops, and as the last will when it vanishes
    <discovery_prefix>/binary_sensor/<node>/spoof/config      Home Assistant discovery:
    <discovery_prefix>/sensor/<node>/p_spoof/config           retained, sent on each connect
    <discovery_prefix>/binary_sensor/<node>/online/config

Events go through a bounded on-disk spool (device.outbox): while the broker is away they
wait there, and go out in order once it is back. paho-mqtt reconnects by itself with a
back-off from backoff_initial_s doubling to backoff_max_s. paho is imported only when MQTT is
configured: the base device install does not need it (the `alerts` extra).
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from typing import Any
from urllib.parse import urlsplit

from device.config import ConfigError, MqttSettings
from device.outbox import Outbox, Queued, Spool

log = logging.getLogger("device.mqtt")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """'mqtt://HOST[:PORT]' or 'mqtts://HOST[:PORT]' -> (host, port, tls)."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise ConfigError(
            f"mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "mqtt.url: expected no credentials in the URL (they would show in logs and ps); "
            "set [mqtt] username and password in the settings file"
        )
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
    except ValueError as error:
        raise ConfigError(f"mqtt.url: bad port in {url!r} ({error})") from error
    return parts.hostname, port, parts.scheme == "mqtts"


def node_id_for(settings: MqttSettings) -> str:
    """The node id: [mqtt] node_id, else the host name; only [A-Za-z0-9_-] (HA's rule)."""
    raw = settings.node_id or socket.gethostname()
    return re.sub(r"[^A-Za-z0-9_-]", "_", raw) or "clad"


def discovery_messages(
    settings: MqttSettings, node: str, base: str, model: dict[str, Any]
) -> list[tuple[str, str]]:
    """(topic, JSON payload) of the Home Assistant discovery configs, all retained."""
    state, availability = f"{base}/state", f"{base}/availability"
    device = {
        "identifiers": [f"clad_agent_{node}"],
        "name": f"clad-agent {node}",
        "manufacturer": "clad-edge",
        "model": str(model.get("model_name") or "CLAD audio deepfake detector"),
    }
    common = {
        "availability_topic": availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "qos": 1,
    }
    prefix = settings.discovery_prefix
    configs = [
        (
            f"{prefix}/binary_sensor/{node}/spoof/config",
            {
                "name": "Spoof detected",
                "unique_id": f"clad_{node}_spoof",
                "state_topic": state,
                "value_template": "{{ 'ON' if value_json.decision == 'spoof' else 'OFF' }}",
                "icon": "mdi:account-voice-off",
                **common,
            },
        ),
        (
            f"{prefix}/sensor/{node}/p_spoof/config",
            {
                "name": "Smoothed P(spoof)",
                "unique_id": f"clad_{node}_p_spoof",
                "state_topic": state,
                "value_template": "{{ value_json.smoothed }}",
                "state_class": "measurement",
                "suggested_display_precision": 2,
                "icon": "mdi:waveform",
                **common,
            },
        ),
        (
            f"{prefix}/binary_sensor/{node}/online/config",
            {
                "name": "Agent online",
                "unique_id": f"clad_{node}_online",
                "state_topic": availability,
                "payload_on": "online",
                "payload_off": "offline",
                "device_class": "connectivity",
                "entity_category": "diagnostic",
                "device": device,
                "qos": 1,
            },
        ),
    ]
    return [(topic, json.dumps(payload)) for topic, payload in configs]


class MqttPublisher:
    """An event sink publishing to MQTT through a spool; thread-safe."""

    def __init__(self, settings: MqttSettings, model: dict[str, Any] | None = None) -> None:
        try:
            import paho.mqtt.client as paho
        except ImportError as error:
            raise ConfigError(
                "mqtt.url is set but paho-mqtt is not installed; install the alerts extra "
                "(pip install 'clad-edge[alerts]' or pip install paho-mqtt==2.1.0)"
            ) from error
        self.settings = settings
        host, port, tls = parse_mqtt_url(settings.url)
        self.node = node_id_for(settings)
        self.base = settings.topic.replace("{node}", self.node).rstrip("/")
        self.state_topic = f"{self.base}/state"
        self.availability_topic = f"{self.base}/availability"
        self._discovery = (
            discovery_messages(settings, self.node, self.base, model or {})
            if settings.discovery
            else []
        )
        self._acked: set[int] = set()
        self._acked_cond = threading.Condition()
        self._connected = threading.Event()
        self.connects = 0
        self._closing = False

        client = paho.Client(
            paho.CallbackAPIVersion.VERSION2,
            client_id=f"clad-agent-{self.node}",
            clean_session=True,
        )
        client.max_inflight_messages_set(max(20, settings.batch))
        client.reconnect_delay_set(
            max(1, round(settings.backoff_initial_s)), max(1, round(settings.backoff_max_s))
        )
        client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        if settings.username:
            client.username_pw_set(settings.username, settings.password or None)
        if tls or settings.tls_ca_file:
            client.tls_set(
                ca_certs=settings.tls_ca_file or None,
                certfile=settings.tls_cert_file or None,
                keyfile=settings.tls_key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            if settings.tls_insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self.outbox = Outbox(
            "mqtt",
            Spool(settings.spool, settings.max_queue),
            self._deliver,
            tuple(settings.types),
            batch=settings.batch,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
        )
        client.connect_async(host, port, keepalive=settings.keepalive_s)
        client.loop_start()
        log.info("MQTT: publishing to %s as %s (topic %s)", settings.url, self.node, self.base)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------- paho callbacks (its thread)

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("MQTT: the broker refused the connection (%s)", reason)
            return
        self._connected.set()
        self.connects += 1
        log.info("MQTT: connected to %s", self.settings.url)
        for topic, payload in self._discovery:
            client.publish(topic, payload, qos=1, retain=True)
        client.publish(self.availability_topic, "online", qos=1, retain=True)

    def _on_disconnect(
        self, _client: Any, _userdata: Any, _flags: Any, reason: Any, _p: Any
    ) -> None:
        was = self.connected
        self._connected.clear()
        if was and not self._closing:
            log.warning("MQTT: disconnected (%s); reconnecting with back-off", reason)

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, _reason: Any, _p: Any) -> None:
        with self._acked_cond:
            self._acked.add(mid)
            self._acked_cond.notify_all()

    # ------------------------------------------------------------- delivery (the outbox thread)

    def _deliver(self, batch: list[Queued]) -> None:
        """Publish a batch with QoS 1 and return once the broker acknowledged all of it.

        Messages paho holds when the connection drops are sent again by paho itself on
        reconnect (in order), so a batch is never published twice by us; we wait.
        """
        while not self._connected.wait(0.5):  # paho reconnects with its own back-off
            if self._closing:
                raise ConnectionError(f"not connected to {self.settings.url}; closing")
        with self._acked_cond:
            self._acked.clear()  # late acks of discovery/availability messages
        mids = []
        for item in batch:
            payload = json.dumps(item.event, allow_nan=False)
            info = self.client.publish(
                self.state_topic, payload, qos=1, retain=self.settings.retain_state
            )
            mids.append(info.mid)
        pending = set(mids)
        with self._acked_cond:
            while pending:
                pending -= self._acked
                if not pending:
                    break
                if self._closing and not self.connected:
                    raise ConnectionError("closing while the broker is away")
                self._acked_cond.wait(0.5)
            self._acked.difference_update(mids)

    # ------------------------------------------------------------- sink

    def write(self, event: dict[str, Any]) -> None:
        self.outbox.write(event)

    def close(self) -> None:
        self._closing = True
        self.outbox.close()
        if self.connected:
            info = self.client.publish(self.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(2.0)
            except (RuntimeError, ValueError) as error:
                log.warning("MQTT: could not publish 'offline' (%s)", error)
        self.client.disconnect()
        self.client.loop_stop()
