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

Why a connection fails is said once, when it changes, in the log and as the outbox's
last_error (in /status and /health): a refused login names the user sent and the broker's
answer, a TLS failure the CA file trusted and what the broker's certificate failed on.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from device.config import ConfigError, MqttSettings
from device.outbox import Outbox, Queued, Spool

log = logging.getLogger("device.mqtt")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CONNECT_WAIT_S = 5.0  # a batch waits this long for a connection, then counts as a failure


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


def ha_slug(text: str) -> str:
    """Home Assistant's slugify for ASCII names: lower case, each run of other characters
    one "_", none at either end ("clad-agent pi Smoothed P(spoof)" -> "clad_agent_pi_smoothed_p_spoof")."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def home_assistant_entity_ids(discovery: list[tuple[str, str]]) -> list[str]:
    """The entity ids Home Assistant gives the discovered entities when it first sees them:
    DOMAIN.slug("DEVICE NAME ENTITY NAME") (MQTT entities have has_entity_name since HA
    2023.8). HA adds "_2" on a clash with an existing id, and a user may rename them."""
    ids = []
    for topic, payload in discovery:
        config = json.loads(payload)
        domain = topic.split("/")[-4]
        ids.append(f"{domain}.{ha_slug(config['device']['name'] + ' ' + config['name'])}")
    return ids


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
        self.host, self.port, self.tls = host, port, bool(tls or settings.tls_ca_file)
        self.connect_error = ""  # why the last attempt failed; "" once connected

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
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=settings.tls_ca_file or None,
                    certfile=settings.tls_cert_file or None,
                    keyfile=settings.tls_key_file or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
                raise ConfigError(
                    "mqtt.tls_ca_file / tls_cert_file / tls_key_file: expected readable PEM "
                    f"files, got {settings.tls_ca_file!r}, {settings.tls_cert_file!r}, "
                    f"{settings.tls_key_file!r}: {error}"
                ) from error
            if settings.tls_insecure:
                client.tls_insecure_set(True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
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
        if self._discovery:
            log.info(
                "MQTT: Home Assistant discovery under %s/; entities: %s",
                settings.discovery_prefix,
                ", ".join(home_assistant_entity_ids(self._discovery)),
            )

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    # ------------------------------------------------------------- paho callbacks (its thread)

    def _on_connect(
        self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            self._failed(self._refusal(reason))
            return
        self._connected.set()
        self.connects += 1
        if self.connect_error:
            log.info("MQTT: connected to %s (after: %s)", self.settings.url, self.connect_error)
        else:
            log.info("MQTT: connected to %s", self.settings.url)
        self.connect_error = ""
        for topic, payload in self._discovery:
            client.publish(topic, payload, qos=1, retain=True)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        self.outbox.kick()  # queued events go now, not after the outbox's back-off

    def _on_connect_fail(self, _client: Any, _userdata: Any) -> None:
        # paho calls this inside its `except OSError:` around the connect, and passes no
        # error: the one being handled is the reason
        error = sys.exc_info()[1]
        self._failed(self._connect_problem(error) if error else "the connection failed")

    def _failed(self, problem: str) -> None:
        if problem != self.connect_error:
            log.warning("MQTT: %s; retrying with back-off", problem)
        self.connect_error = problem

    def _refusal(self, reason: Any) -> str:
        """A CONNACK refusal, named with what was sent and what the broker answered."""
        code = getattr(reason, "value", None)
        if code in (134, 135) or code in (4, 5):  # bad user name or password / not authorized
            if self.settings.username:
                return (
                    f"{self.settings.url} refused the login: expected it to accept user "
                    f"{self.settings.username!r} with the password in the settings file "
                    f"([mqtt] username, password), got CONNACK {str(reason)!r}"
                )
            return (
                f"{self.settings.url} refused an anonymous client: expected a broker that "
                f"allows anonymous clients, got CONNACK {str(reason)!r}; set [mqtt] username "
                "and password in the settings file"
            )
        return f"{self.settings.url} refused the connection: got CONNACK {str(reason)!r}"

    def _connect_problem(self, error: BaseException) -> str:
        where = f"{self.host}:{self.port}"
        if isinstance(error, ssl.SSLCertVerificationError):
            trusted = (
                f"a CA in {self.settings.tls_ca_file}"
                if self.settings.tls_ca_file
                else "a CA in the system's store (no [mqtt] tls_ca_file)"
            )
            return (
                f"TLS to {where}: expected a broker certificate for {self.host} signed by "
                f"{trusted}, got one that fails verification ({error.verify_message})"
            )
        if isinstance(error, ssl.SSLError):
            return (
                f"TLS to {where} failed: expected a TLS listener there (mqtts:// or "
                f"tls_ca_file set), got {error.reason or error}"
            )
        if isinstance(error, ConnectionRefusedError):
            return f"expected a broker listening on {where}, got connection refused"
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the broker's host name {self.host!r} ({error})"
        if isinstance(error, TimeoutError):
            return f"expected a broker answering on {where}, got no answer in time"
        return f"cannot connect to {where}: {type(error).__name__}: {error}"

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
        deadline = time.monotonic() + CONNECT_WAIT_S
        while not self._connected.wait(0.5):  # paho reconnects with its own back-off
            if self._closing:
                raise ConnectionError(f"not connected to {self.settings.url}; closing")
            if time.monotonic() >= deadline:  # counted and retried by the outbox; nothing sent
                raise ConnectionError(
                    self.connect_error or f"not connected to {self.settings.url} yet"
                )
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
