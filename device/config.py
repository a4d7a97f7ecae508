"""Agent settings: frozen dataclasses, read from a TOML file and overridden by flags.

    [model]     bundle, model_format (int8|fp32), num_threads, threshold, silence_floor_dbfs
    [source]    kind (mic|stdin|file), path, device, sample_rate, channels, chunk_ms,
                queue_chunks, realtime, backoff_initial_s, backoff_max_s, max_seconds
    [decision]  smoothing_windows, min_windows_above, margin, silence_windows
                (DecisionSettings, also used by device.stream: one type, one place for the
                defaults and their validation)
    [device_calibration]  written by `clad-agent calibrate` (the room's threshold); used
                when neither --threshold nor [model] threshold is given
    [events]    stdout, json, every_window, file, max_bytes, backups, fsync, fsync_interval_s,
                heartbeat_s
    [api]       listen (HOST:PORT, empty = off), token_file, max_upload_bytes, max_audio_s,
                max_connections, max_concurrent_scores, header_timeout_s, body_timeout_s,
                allowed_hosts
    [mqtt]      url (mqtt://HOST:PORT, empty = off), topic, node_id, discovery,
                discovery_prefix, types, retain_state, keepalive_s, username, password,
                tls_ca_file, tls_cert_file, tls_key_file, tls_insecure, backoff_initial_s,
                backoff_max_s, spool, max_queue, batch
    [webhook]   urls (empty = off), secret, types, timeout_s, backoff_initial_s, backoff_max_s,
                spool_dir, max_queue

See deploy/clad-agent.toml for a commented example. The API token is never a setting
value that gets echoed: it comes from `api.token_file` or the CLAD_AGENT_TOKEN variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import stat
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

TOKEN_ENV = "CLAD_AGENT_TOKEN"

MAX_SMOOTHING_WINDOWS = 100
"""Beyond this an alarm needs minutes of unbroken sound (N non-silent windows in a row)."""
MAX_SILENCE_WINDOWS = 1000
MAX_CHUNK_MS = 5000.0
"""One device read; a larger one needs a buffer the reader cannot hold (1e9 crashed it)."""
MAX_QUEUE_CHUNKS = 10_000
MAX_FSYNC_INTERVAL_S = 60.0
"""At most this much of the every-window event stream waits for a sync (a power cut's loss)."""
MAX_CHANNELS = 32
MIN_RATE_HZ, MAX_RATE_HZ = 4_000, 384_000  # as device.audio refuses files outside it


class ConfigError(ValueError):
    """Settings that cannot be used, with the file/flag and the problem named."""


@dataclass(frozen=True)
class ModelSettings:
    bundle: str = ""
    model_format: str = "int8"
    num_threads: int = 1
    threshold: float | None = None  # None: device calibration, operating point, or manifest's
    silence_floor_dbfs: float | None = None  # None: the manifest's audio.silence_floor_dbfs
    operating_point: str = ""  # a name in the manifest's operating_points (e.g. fa_1_per_hour)
    public_key: str = ""  # Ed25519 public key file: refuse bundles not signed by its owner


@dataclass(frozen=True)
class DeviceCalibrationSettings:
    """The per-device threshold `clad-agent calibrate` chose on the room's genuine audio."""

    threshold: float | None = None
    target_fa_per_hour: float = 0.0
    false_alarms_per_hour: float = 0.0  # at `threshold`, on the audio it listened to
    audio_s: float = 0.0
    smoothing_windows: int = 0  # the decision settings it was measured with
    min_windows_above: int = 0
    margin: float = 0.0
    silence_windows: int = 0
    model_sha256: str = ""  # the bundle model it was measured with; another model ignores it
    calibrated_at: str = ""  # UTC, ISO 8601


@dataclass(frozen=True)
class SourceSettings:
    kind: str = "mic"  # mic | stdin | file
    path: str = ""  # the file, for kind = "file"
    device: str = ""  # mic: index or name substring; empty = the default input
    sample_rate: int = (
        0  # mic: 0 = first of 48000, 44100, 16000 the device supports; stdin: required
    )
    channels: int = 1
    # 256 ms: each read wakes the reader and the main loop, and on an idle core a wake-up
    # costs about 0.14 ms of CPU here, about a quarter of a window's model time; 64 ms
    # chunks cost 0.83 % of a core in steady state, 256 ms 0.5 % (docs/device.md). A window
    # then waits on average half a chunk longer for the read that completes it.
    chunk_ms: float = 256.0
    queue_chunks: int = 64
    realtime: bool = False  # file: replay at real-time pace
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_seconds: float | None = None  # stop after this much audio
    stall_s: float = 10.0  # /health unhealthy (and no watchdog ping) after this long without
    # a scored window while the source runs; 0 = never


@dataclass(frozen=True)
class DecisionSettings:
    """How a stream's window scores become a decision (device.stream.Decider).

    smoothed = mean P(spoof) of the last `smoothing_windows` non-silent windows (a mean of
    probabilities, not of logits, so one extreme window moves it by at most 1/N).
    Enter "spoof" when smoothed >= threshold + margin over a full history (N non-silent
    windows since the last silence, so one odd window at an onset cannot raise it) and, when
    `min_windows_above` K > 0, at least K of those N windows are themselves at or above
    threshold + margin (K of N votes: one extreme window cannot carry the mean alone; 0 =
    the mean alone decides); leave it when smoothed < threshold - margin. Otherwise a sound
    is "bonafide".
    `silence_windows` consecutive silent windows -> "silence", and the history starts
    afresh with the next sound. `threshold` None: the model's ([model] threshold or the
    manifest's); it is not a [decision] key. Values that make an alarm impossible (or
    impossible to leave) are refused with ConfigError (a ValueError).
    """

    threshold: float | None = None
    smoothing_windows: int = 3
    min_windows_above: int = 0
    margin: float = 0.05
    silence_windows: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.smoothing_windows <= MAX_SMOOTHING_WINDOWS:
            raise ConfigError(
                f"decision.smoothing_windows: expected 1-{MAX_SMOOTHING_WINDOWS}, got "
                f"{self.smoothing_windows}"
            )
        if not 0 <= self.min_windows_above <= self.smoothing_windows:
            raise ConfigError(
                f"decision.min_windows_above: expected 0-{self.smoothing_windows} (at most "
                f"smoothing_windows; 0 = off), got {self.min_windows_above}"
            )
        if not 1 <= self.silence_windows <= MAX_SILENCE_WINDOWS:
            raise ConfigError(
                f"decision.silence_windows: expected 1-{MAX_SILENCE_WINDOWS}, got "
                f"{self.silence_windows}"
            )
        if not 0.0 <= self.margin < 0.5:
            raise ConfigError(f"decision.margin: expected a value in [0, 0.5), got {self.margin}")
        if self.threshold is not None:
            check_threshold(self.threshold)
            if self.threshold + self.margin > 1.0 or self.threshold - self.margin <= 0.0:
                raise ConfigError(
                    f"threshold {self.threshold} with margin {self.margin}: expected "
                    "0 < threshold - margin and threshold + margin <= 1 (otherwise a spoof "
                    "alarm can never be raised, or never end)"
                )

    def with_threshold(self, threshold: float) -> DecisionSettings:
        return dataclasses.replace(self, threshold=threshold)


def check_threshold(threshold: float, where: str = "threshold") -> None:
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise ConfigError(
            f"{where}: expected a P(spoof) strictly between 0 and 1, got {threshold} "
            "(at 1 or above no window can raise an alarm; at 0 or below every window does)"
        )


@dataclass(frozen=True)
class EventSettings:
    stdout: bool = True
    json: bool = False
    every_window: bool = False
    file: str = ""  # empty: no event file
    max_bytes: int = 10_000_000
    backups: int = 5
    fsync: bool = True
    fsync_interval_s: float = 1.0  # "window" events synced within this; others at once; 0: all
    heartbeat_s: float = 30.0


@dataclass(frozen=True)
class ApiSettings:
    listen: str = ""  # HOST:PORT; empty: no API
    token_file: str = ""
    max_upload_bytes: int = 20_000_000
    max_audio_s: float = 300.0  # POST /score: longer audio (declared in the header) is refused
    max_connections: int = 32  # more at once get 503 + Retry-After
    max_concurrent_scores: int = 2  # uploads read and scored at once; more get 503
    header_timeout_s: float = 10.0  # socket silence allowed while reading request headers
    body_timeout_s: float = 30.0  # socket silence allowed while reading an upload
    allowed_hosts: tuple[str, ...] = ()  # Host names accepted beyond loopback (with a token)


MQTT_EVENT_TYPES = ("decision", "heartbeat", "start", "source", "stop", "window")


@dataclass(frozen=True)
class MqttSettings:
    """[mqtt]: publish events to a broker (device.mqtt); empty url = off."""

    url: str = ""  # mqtt://HOST:PORT or mqtts://HOST:PORT (TLS)
    topic: str = "clad/{node}"  # base topic; {node} = node_id
    node_id: str = ""  # empty: the host name
    discovery: bool = True  # Home Assistant MQTT discovery configs (retained)
    discovery_prefix: str = "homeassistant"
    types: tuple[str, ...] = ("decision", "heartbeat")  # event types published
    retain_state: bool = True  # the last state message stays on the broker
    keepalive_s: int = 30
    username: str = ""
    password: str = ""  # never echoed: redacted in the start event and logs
    tls_ca_file: str = ""  # a CA bundle; set with mqtts:// (empty: the system's CAs)
    tls_cert_file: str = ""  # client certificate (mutual TLS)
    tls_key_file: str = ""
    tls_insecure: bool = False  # skip the broker's host-name check (testing only)
    backoff_initial_s: float = 1.0  # reconnect: wait, doubling ...
    backoff_max_s: float = 60.0  # ... up to this
    spool: str = ""  # sqlite3 file of events not yet delivered; empty: in memory
    max_queue: int = 100_000  # spool bound (events); the oldest is dropped beyond it
    batch: int = 100  # events in flight at once


@dataclass(frozen=True)
class WebhookSettings:
    """[webhook]: POST events as JSON to each URL (device.webhook); no urls = off."""

    urls: tuple[str, ...] = ()  # http:// or https:// URLs; each has its own queue
    secret: str = ""  # HMAC-SHA256 key for X-Clad-Signature; never echoed
    types: tuple[str, ...] = ("decision",)  # event types posted
    timeout_s: float = 5.0  # connect + response, per attempt
    backoff_initial_s: float = 1.0  # after a failed attempt: wait, doubling ...
    backoff_max_s: float = 60.0  # ... up to this, retrying until delivered
    spool_dir: str = ""  # one sqlite3 spool per URL here; empty: in memory
    max_queue: int = 10_000  # per URL; the oldest is dropped beyond it


SECRET_KEYS = frozenset({"password", "secret"})


def redacted(settings: dict[str, Any]) -> dict[str, Any]:
    """A settings dict with secret values (password, secret) replaced by "<set>"."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out[key] = redacted(value)
        elif key in SECRET_KEYS and value:
            out[key] = "<set>"
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    events: EventSettings = field(default_factory=EventSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    webhook: WebhookSettings = field(default_factory=WebhookSettings)
    device_calibration: DeviceCalibrationSettings = field(default_factory=DeviceCalibrationSettings)

    def to_dict(self) -> dict[str, Any]:
        """All settings, secrets redacted (this goes into the start event)."""
        return redacted(dataclasses.asdict(self))


_SECTION_CLASSES = {
    "model": ModelSettings,
    "source": SourceSettings,
    "decision": DecisionSettings,
    "events": EventSettings,
    "api": ApiSettings,
    "mqtt": MqttSettings,
    "webhook": WebhookSettings,
    "device_calibration": DeviceCalibrationSettings,
}
_KINDS = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "float | None": (int, float),
    "tuple[str, ...]": (list, tuple),
}


def _coerce(where: str, type_name: str, value: Any) -> Any:
    allowed = _KINDS[type_name]
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"{where}: expected {type_name}, got {value!r}")
    if not isinstance(value, allowed):
        raise ConfigError(f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
    if type_name in ("float", "float | None"):
        return float(value)
    if type_name == "tuple[str, ...]":
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        return tuple(value)
    return value


_NOT_SETTINGS = {DecisionSettings: {"threshold"}}  # set at run time from [model] threshold


def _section(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    excluded = _NOT_SETTINGS.get(cls, set())
    known = {f.name: str(f.type) for f in fields(cls) if f.name not in excluded}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}; expected one of {sorted(known)}")
        changes[key] = _coerce(f"{where}.{key}", known[key], value)
    try:
        return dataclasses.replace(base if base is not None else cls(), **changes)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from error


def load_settings(path: str | Path | None = None, base: Settings | None = None) -> Settings:
    """Settings from a TOML file (missing keys keep their defaults)."""
    settings = base or Settings()
    if path is None:
        return validate(settings)
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: settings file not found") from error
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from error
    for name, values in data.items():
        if name not in _SECTION_CLASSES:
            raise ConfigError(
                f"{path}: unknown section [{name}]; expected one of {sorted(_SECTION_CLASSES)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{name}] should be a table, got {values!r}")
        section = _section(
            _SECTION_CLASSES[name], values, f"{path} [{name}]", getattr(settings, name)
        )
        settings = dataclasses.replace(settings, **{name: section})
    return validate(settings)


def override(settings: Settings, changes: dict[str, dict[str, Any]]) -> Settings:
    """Apply flag values ({section: {key: value}}); None values are ignored (flag not given)."""
    for name, values in changes.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            section = _section(
                _SECTION_CLASSES[name], values, f"flags [{name}]", getattr(settings, name)
            )
            settings = dataclasses.replace(settings, **{name: section})
    return validate(settings)


def validate(settings: Settings) -> Settings:
    m, s, d, e, a = (
        settings.model,
        settings.source,
        settings.decision,
        settings.events,
        settings.api,
    )
    if m.model_format not in ("int8", "fp32"):
        raise ConfigError(f"model.model_format: expected int8 or fp32, got {m.model_format!r}")
    if m.num_threads < 1:
        raise ConfigError(f"model.num_threads: expected >= 1, got {m.num_threads}")
    if m.threshold is not None:
        check_threshold(m.threshold, "model.threshold")
        d.with_threshold(m.threshold)  # with the margin: can an alarm be raised and end?
    c = settings.device_calibration
    if c.threshold is not None:
        check_threshold(c.threshold, "device_calibration.threshold")
    if m.silence_floor_dbfs is not None and not -200.0 < m.silence_floor_dbfs < 0.0:
        raise ConfigError(
            f"model.silence_floor_dbfs: expected -200 < floor < 0 dBFS, got "
            f"{m.silence_floor_dbfs} (no window is louder than 0 dBFS: every one would be "
            "silence, and no alarm possible)"
        )
    if s.kind not in ("mic", "stdin", "file"):
        raise ConfigError(f"source.kind: expected mic, stdin or file, got {s.kind!r}")
    if s.kind == "file" and not s.path:
        raise ConfigError("source.path: the file source needs a path")
    if s.sample_rate != 0 and not MIN_RATE_HZ <= s.sample_rate <= MAX_RATE_HZ:
        raise ConfigError(
            f"source.sample_rate: expected 0 (automatic) or {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz, "
            f"got {s.sample_rate}"
        )
    if not 1 <= s.channels <= MAX_CHANNELS:
        raise ConfigError(f"source.channels: expected 1-{MAX_CHANNELS}, got {s.channels}")
    if not 1.0 <= s.chunk_ms <= MAX_CHUNK_MS:
        raise ConfigError(f"source.chunk_ms: expected 1-{MAX_CHUNK_MS:g} ms, got {s.chunk_ms}")
    if not 1 <= s.queue_chunks <= MAX_QUEUE_CHUNKS:
        raise ConfigError(
            f"source.queue_chunks: expected 1-{MAX_QUEUE_CHUNKS}, got {s.queue_chunks}"
        )
    if s.backoff_initial_s <= 0 or s.backoff_max_s < s.backoff_initial_s:
        raise ConfigError(
            "source: expected 0 < backoff_initial_s <= backoff_max_s, got "
            f"{s.backoff_initial_s} and {s.backoff_max_s}"
        )
    if s.max_seconds is not None and s.max_seconds <= 0:
        raise ConfigError(f"source.max_seconds: expected > 0, got {s.max_seconds}")
    if s.stall_s < 0:
        raise ConfigError(f"source.stall_s: expected >= 0 seconds (0 = off), got {s.stall_s}")
    if not (math.isfinite(e.fsync_interval_s) and 0 <= e.fsync_interval_s <= MAX_FSYNC_INTERVAL_S):
        raise ConfigError(
            f"events.fsync_interval_s: expected 0-{MAX_FSYNC_INTERVAL_S:g} seconds (0: every "
            f"event synced at once), got {e.fsync_interval_s}"
        )
    if e.max_bytes < 0 or e.backups < 0 or e.heartbeat_s <= 0:
        raise ConfigError(
            "events: expected max_bytes >= 0, backups >= 0, heartbeat_s > 0; got "
            f"{e.max_bytes}, {e.backups}, {e.heartbeat_s}"
        )
    if a.max_upload_bytes < 1:
        raise ConfigError(f"api.max_upload_bytes: expected >= 1, got {a.max_upload_bytes}")
    if a.max_connections < 1 or a.max_concurrent_scores < 1:
        raise ConfigError(
            "api: expected max_connections >= 1 and max_concurrent_scores >= 1, got "
            f"{a.max_connections} and {a.max_concurrent_scores}"
        )
    if not (a.max_audio_s > 0 and a.header_timeout_s > 0 and a.body_timeout_s > 0):
        raise ConfigError(
            "api: expected max_audio_s, header_timeout_s and body_timeout_s > 0 seconds, got "
            f"{a.max_audio_s}, {a.header_timeout_s} and {a.body_timeout_s}"
        )
    if a.listen:
        parse_listen(a.listen)
    validate_mqtt(settings.mqtt)
    validate_webhook(settings.webhook)
    return settings


def validate_webhook(w: WebhookSettings) -> None:
    for url in w.urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"webhook.urls: expected http:// or https:// URLs, got {url!r}")
    unknown = sorted(set(w.types) - set(MQTT_EVENT_TYPES))
    if unknown:
        raise ConfigError(
            f"webhook.types: expected some of {list(MQTT_EVENT_TYPES)}, got {unknown}"
        )
    if not 0 < w.timeout_s <= 300:
        raise ConfigError(f"webhook.timeout_s: expected 0 < timeout_s <= 300 s, got {w.timeout_s}")
    if w.backoff_initial_s <= 0 or w.backoff_max_s < w.backoff_initial_s:
        raise ConfigError(
            "webhook: expected 0 < backoff_initial_s <= backoff_max_s, got "
            f"{w.backoff_initial_s} and {w.backoff_max_s}"
        )
    if not 1 <= w.max_queue <= 10_000_000:
        raise ConfigError(f"webhook.max_queue: expected 1-10000000, got {w.max_queue}")
    if w.urls and not w.secret:
        raise ConfigError(
            "webhook.urls is set without webhook.secret: expected a secret, so receivers can "
            "check X-Clad-Signature (e.g. secret = the output of `openssl rand -hex 32`)"
        )


def validate_mqtt(q: MqttSettings) -> None:
    if q.url and not q.url.startswith(("mqtt://", "mqtts://")):
        raise ConfigError(
            f"mqtt.url: expected mqtt://HOST:PORT or mqtts://HOST:PORT, got {q.url!r}"
        )
    unknown = sorted(set(q.types) - set(MQTT_EVENT_TYPES))
    if unknown:
        raise ConfigError(f"mqtt.types: expected some of {list(MQTT_EVENT_TYPES)}, got {unknown}")
    if not q.topic.strip("/") or any(c in q.topic for c in "#+"):
        raise ConfigError(f"mqtt.topic: expected a topic without # or +, got {q.topic!r}")
    if q.backoff_initial_s <= 0 or q.backoff_max_s < q.backoff_initial_s:
        raise ConfigError(
            "mqtt: expected 0 < backoff_initial_s <= backoff_max_s, got "
            f"{q.backoff_initial_s} and {q.backoff_max_s}"
        )
    if not 1 <= q.max_queue <= 10_000_000 or not 1 <= q.batch <= 1000:
        raise ConfigError(
            f"mqtt: expected max_queue 1-10000000 and batch 1-1000, got {q.max_queue} and {q.batch}"
        )
    if not 5 <= q.keepalive_s <= 3600:
        raise ConfigError(f"mqtt.keepalive_s: expected 5-3600 s, got {q.keepalive_s}")
    if q.password and not q.username:
        raise ConfigError("mqtt.password is set without mqtt.username; expected both or neither")


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:8787', '[::1]:8787', 'localhost:8787' -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"api.listen: expected HOST:PORT (e.g. 127.0.0.1:8787), got {text!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ConfigError(f"api.listen: port must be in 0..65535, got {port}")
    return host.strip("[]"), port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def resolve_token(api: ApiSettings, environ: dict[str, str] | None = None) -> str | None:
    """The API bearer token from api.token_file or $CLAD_AGENT_TOKEN; None when neither is set."""
    environ = os.environ if environ is None else environ
    if api.token_file:
        path = Path(api.token_file)
        try:
            check_token_file_mode(path, os.stat(path))
            token = path.read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"api.token_file: cannot read {path} ({error.strerror})") from error
        if not token:
            raise ConfigError(f"api.token_file: {path} is empty; expected a token")
        return token
    token = environ.get(TOKEN_ENV, "").strip()
    return token or None


def require_token_if_exposed(listen: str, token: str | None) -> None:
    host, _ = parse_listen(listen)
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"api.listen is {listen!r}, beyond loopback: a bearer token is required; set "
            f"api.token_file (or {TOKEN_ENV}), or bind to 127.0.0.1"
        )


def check_token_file_mode(path: Path, info: os.stat_result) -> None:
    """Refuse a token file others can read, or anyone but its owner can write.

    Group read is allowed only for a group this process is in (the deployment's
    root:clad 0640); any other group-readable file is refused as well.
    """
    mode = stat.S_IMODE(info.st_mode)
    own_groups = {os.getgid(), *os.getgroups()}
    group_ok = not mode & stat.S_IRGRP or info.st_gid in own_groups
    if mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IWGRP) or not group_ok:
        raise ConfigError(
            f"api.token_file: {path} has mode {mode:04o}: expected it readable by its owner "
            f"(and at most the agent's group), writable by no one else; fix it with "
            f"`chmod 0600 {path}` (or `chmod 0640` with the agent's group)"
        )
