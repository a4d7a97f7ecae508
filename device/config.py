"""Agent settings: frozen dataclasses, read from a TOML file and overridden by flags.

    [model]     bundle, model_format (int8|fp32), num_threads, threshold, silence_floor_dbfs
    [source]    kind (mic|stdin|file), path, device, sample_rate, channels, chunk_ms,
                queue_chunks, realtime, backoff_initial_s, backoff_max_s, max_seconds
    [decision]  smoothing_windows, margin, silence_windows
    [events]    stdout, json, every_window, file, max_bytes, backups, fsync, heartbeat_s
    [api]       listen (HOST:PORT, empty = off), token_file, max_upload_bytes, max_audio_s,
                max_connections, max_concurrent_scores, header_timeout_s, body_timeout_s,
                allowed_hosts

See deploy/clad-agent.toml for a commented example. The API token is never a setting
value that gets echoed: it comes from `api.token_file` or the CLAD_AGENT_TOKEN variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

TOKEN_ENV = "CLAD_AGENT_TOKEN"


class ConfigError(ValueError):
    """Settings that cannot be used, with the file/flag and the problem named."""


@dataclass(frozen=True)
class ModelSettings:
    bundle: str = ""
    model_format: str = "int8"
    num_threads: int = 1
    threshold: float | None = None  # None: the manifest's threshold.value
    silence_floor_dbfs: float | None = None  # None: the manifest's audio.silence_floor_dbfs


@dataclass(frozen=True)
class SourceSettings:
    kind: str = "mic"  # mic | stdin | file
    path: str = ""  # the file, for kind = "file"
    device: str = ""  # mic: index or name substring; empty = the default input
    sample_rate: int = (
        0  # mic: 0 = first of 48000, 44100, 16000 the device supports; stdin: required
    )
    channels: int = 1
    chunk_ms: float = 64.0
    queue_chunks: int = 64
    realtime: bool = False  # file: replay at real-time pace
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    max_seconds: float | None = None  # stop after this much audio
    stall_s: float = 10.0  # /health unhealthy (and no watchdog ping) after this long without
    # a scored window while the source runs; 0 = never


@dataclass(frozen=True)
class DecisionConfig:
    smoothing_windows: int = 3
    margin: float = 0.05
    silence_windows: int = 2


@dataclass(frozen=True)
class EventSettings:
    stdout: bool = True
    json: bool = False
    every_window: bool = False
    file: str = ""  # empty: no event file
    max_bytes: int = 10_000_000
    backups: int = 5
    fsync: bool = True
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


@dataclass(frozen=True)
class Settings:
    model: ModelSettings = field(default_factory=ModelSettings)
    source: SourceSettings = field(default_factory=SourceSettings)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    events: EventSettings = field(default_factory=EventSettings)
    api: ApiSettings = field(default_factory=ApiSettings)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTION_CLASSES = {
    "model": ModelSettings,
    "source": SourceSettings,
    "decision": DecisionConfig,
    "events": EventSettings,
    "api": ApiSettings,
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


def _section(cls: type, values: dict[str, Any], where: str, base: Any = None) -> Any:
    known = {f.name: str(f.type) for f in fields(cls)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r}; expected one of {sorted(known)}")
        changes[key] = _coerce(f"{where}.{key}", known[key], value)
    return dataclasses.replace(base if base is not None else cls(), **changes)


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
    if m.threshold is not None and not 0.0 <= m.threshold <= 1.0:
        raise ConfigError(f"model.threshold: expected a P(spoof) in [0, 1], got {m.threshold}")
    if s.kind not in ("mic", "stdin", "file"):
        raise ConfigError(f"source.kind: expected mic, stdin or file, got {s.kind!r}")
    if s.kind == "file" and not s.path:
        raise ConfigError("source.path: the file source needs a path")
    if s.sample_rate < 0 or s.channels < 1 or s.chunk_ms <= 0 or s.queue_chunks < 1:
        raise ConfigError(
            "source: expected sample_rate >= 0, channels >= 1, chunk_ms > 0, queue_chunks >= 1; "
            f"got {s.sample_rate}, {s.channels}, {s.chunk_ms}, {s.queue_chunks}"
        )
    if s.backoff_initial_s <= 0 or s.backoff_max_s < s.backoff_initial_s:
        raise ConfigError(
            "source: expected 0 < backoff_initial_s <= backoff_max_s, got "
            f"{s.backoff_initial_s} and {s.backoff_max_s}"
        )
    if s.max_seconds is not None and s.max_seconds <= 0:
        raise ConfigError(f"source.max_seconds: expected > 0, got {s.max_seconds}")
    if d.smoothing_windows < 1 or d.silence_windows < 1:
        raise ConfigError(
            "decision: smoothing_windows and silence_windows must be >= 1, got "
            f"{d.smoothing_windows} and {d.silence_windows}"
        )
    if not 0.0 <= d.margin < 0.5:
        raise ConfigError(f"decision.margin: expected a value in [0, 0.5), got {d.margin}")
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
    return settings


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
