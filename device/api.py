"""The agent's local HTTP API (stdlib ThreadingHTTPServer) and the state it reports.

    GET  /health   200 {"status": "ok"} while the source delivers; 503 "degraded" while it
                   is backing off after an error
    GET  /status   the latest window, smoothed score and decision, counters, model, source
    GET  /metrics  Prometheus text format: windows scored, latency histograms, overflows,
                   decisions by label
    POST /score    an audio file, as the raw body or a multipart/form-data upload; returns the
                   file's score JSON (as `clad-agent score --json`). Larger than
                   max_upload_bytes -> 413; not decodable -> 400 {"file", "error"}

Bound to 127.0.0.1 unless told otherwise; beyond loopback a bearer token is required (the
agent refuses to start without one), and a token that is set is checked on every endpoint.
"""

from __future__ import annotations

import email.parser
import email.policy
import hmac
import json
import logging
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from device.audio import AudioError
from device.runtime import DECISIONS, Scorer
from device.stream import WindowResult

log = logging.getLogger("device.api")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A Prometheus histogram (cumulative buckets, sum, count) in seconds."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def render(self, name: str) -> list[str]:
        lines = [
            f'{name}_bucket{{le="{bound:g}"}} {count}'
            for bound, count in zip(self.buckets, self.counts, strict=True)
        ]
        lines.append(f'{name}_bucket{{le="+Inf"}} {self.total}')
        lines.append(f"{name}_sum {self.sum:.9f}")
        lines.append(f"{name}_count {self.total}")
        return lines


class AgentState:
    """What the agent knows now, shared between the stream loop and the API (thread-safe)."""

    def __init__(self, info: dict[str, Any], source_stats: Callable[[], Any] | None = None) -> None:
        self.info = dict(info)
        self.started_monotonic = time.monotonic()
        self.source_stats = source_stats
        self._lock = threading.Lock()
        self.latest: WindowResult | None = None
        self.latest_latency_ms: float | None = None
        self.decision = "silence"
        self.smoothed: float | None = None
        self.windows_scored = 0
        self.silent_windows = 0
        self.windows_by_decision = dict.fromkeys(DECISIONS, 0)
        self.decision_changes = dict.fromkeys(DECISIONS, 0)
        self.latency = Histogram()
        self.inference = Histogram()
        self.api_scores = 0
        self.api_errors = 0
        self.running = True

    def record(self, result: WindowResult, latency_ms: float) -> None:
        with self._lock:
            self.latest = result
            self.latest_latency_ms = latency_ms
            self.decision = result.decision
            self.smoothed = result.smoothed
            self.windows_scored += 1
            self.silent_windows += int(result.silent)
            self.windows_by_decision[result.decision] += 1
            if result.changed:
                self.decision_changes[result.decision] += 1
            self.latency.observe(latency_ms / 1000.0)
            self.inference.observe(result.inference_ms / 1000.0)

    def source_snapshot(self) -> dict[str, Any]:
        stats = self.source_stats() if self.source_stats else None
        if stats is None:
            return {}
        return {
            "state": stats.state,
            "device": stats.device,
            "sample_rate": stats.sample_rate,
            "channels": stats.channels,
            "overflows": stats.overflows,
            "errors": stats.errors,
            "reopens": stats.reopens,
            "last_error": stats.last_error,
        }

    def status(self) -> dict[str, Any]:
        source = self.source_snapshot()
        with self._lock:
            latest = self.latest
            return {
                "decision": self.decision,
                "smoothed": self.smoothed,
                "latest_window": None
                if latest is None
                else {
                    "window": latest.index,
                    "start_s": latest.start_s,
                    "p_spoof": latest.p_spoof,
                    "silent": latest.silent,
                    "rms_dbfs": latest.rms_dbfs,
                    "inference_ms": latest.inference_ms,
                    "latency_ms": self.latest_latency_ms,
                },
                "windows_scored": self.windows_scored,
                "silent_windows": self.silent_windows,
                "windows_by_decision": dict(self.windows_by_decision),
                "decision_changes": dict(self.decision_changes),
                "uptime_s": round(time.monotonic() - self.started_monotonic, 3),
                "running": self.running,
                "source": source,
                **self.info,
            }

    def metrics(self) -> str:
        source = self.source_snapshot()
        with self._lock:
            out = [
                "# HELP clad_windows_scored_total Windows scored by the model.",
                "# TYPE clad_windows_scored_total counter",
                f"clad_windows_scored_total {self.windows_scored}",
                "# HELP clad_silent_windows_total Scored windows below the silence floor.",
                "# TYPE clad_silent_windows_total counter",
                f"clad_silent_windows_total {self.silent_windows}",
                "# HELP clad_windows_total Windows by the decision in force after them.",
                "# TYPE clad_windows_total counter",
                *(
                    f'clad_windows_total{{decision="{d}"}} {n}'
                    for d, n in self.windows_by_decision.items()
                ),
                "# HELP clad_decision_changes_total Decision changes, by the new decision.",
                "# TYPE clad_decision_changes_total counter",
                *(
                    f'clad_decision_changes_total{{decision="{d}"}} {n}'
                    for d, n in self.decision_changes.items()
                ),
                "# HELP clad_decision Current decision (1 for the one in force).",
                "# TYPE clad_decision gauge",
                *(f'clad_decision{{decision="{d}"}} {int(d == self.decision)}' for d in DECISIONS),
                "# HELP clad_window_latency_seconds From a window's last sample to its event.",
                "# TYPE clad_window_latency_seconds histogram",
                *self.latency.render("clad_window_latency_seconds"),
                "# HELP clad_inference_seconds Model time per window.",
                "# TYPE clad_inference_seconds histogram",
                *self.inference.render("clad_inference_seconds"),
                "# HELP clad_overflows_total Audio chunks lost (queue full or driver overflow).",
                "# TYPE clad_overflows_total counter",
                f"clad_overflows_total {source.get('overflows', 0)}",
                "# HELP clad_source_errors_total Source errors (each followed by a reopen).",
                "# TYPE clad_source_errors_total counter",
                f"clad_source_errors_total {source.get('errors', 0)}",
                "# HELP clad_api_scores_total Files scored through POST /score.",
                "# TYPE clad_api_scores_total counter",
                f"clad_api_scores_total {self.api_scores}",
                "# HELP clad_api_score_errors_total POST /score uploads rejected.",
                "# TYPE clad_api_score_errors_total counter",
                f"clad_api_score_errors_total {self.api_errors}",
                "# HELP clad_up 1 while the agent runs.",
                "# TYPE clad_up gauge",
                f"clad_up {int(self.running)}",
            ]
        return "\n".join(out) + "\n"

    def count_api(self, ok: bool) -> None:
        with self._lock:
            if ok:
                self.api_scores += 1
            else:
                self.api_errors += 1


class UploadError(ValueError):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        self.status = status
        super().__init__(message)


def extract_upload(content_type: str, body: bytes, default_name: str) -> tuple[str, bytes]:
    """(file name, file bytes) from a raw body or the first file part of multipart/form-data."""
    if not content_type.lower().startswith("multipart/form-data"):
        return default_name, body
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        raise UploadError(
            HTTPStatus.BAD_REQUEST,
            "expected a multipart/form-data body with a file part, got none (bad boundary?)",
        )
    parts = list(message.iter_parts())
    chosen = next((p for p in parts if p.get_filename()), None)
    if chosen is None:
        chosen = next(
            (p for p in parts if p.get_param("name", header="content-disposition") == "file"), None
        )
    if chosen is None:
        raise UploadError(
            HTTPStatus.BAD_REQUEST,
            f"expected a file part (a filename, or a field named 'file') in the multipart body, "
            f"got {len(parts)} part(s) without one",
        )
    payload = chosen.get_payload(decode=True) or b""
    return chosen.get_filename() or default_name, payload


class _ThreadingHTTPServer6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ApiServer:
    """The HTTP API in a background thread. `address` is (host, port) once started."""

    def __init__(
        self,
        host: str,
        port: int,
        scorer: Scorer,
        state: AgentState,
        token: str | None = None,
        max_upload_bytes: int = 20_000_000,
    ) -> None:
        self.scorer = scorer
        self.state = state
        self.token = token
        self.max_upload_bytes = int(max_upload_bytes)
        handler = type("Handler", (_Handler,), {"api": self})
        server_class = _ThreadingHTTPServer6 if ":" in host else ThreadingHTTPServer
        self.httpd = server_class((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="api",
            daemon=True,
        )
        self._thread.start()
        log.info("API listening on http://%s:%d", *self.address)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(2.0)


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "clad-agent"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ----------------------------------------------------------------- responses

    def _send(self, status: int, body: bytes, content_type: str, close: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="clad-agent"')
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any, close: bool = False) -> None:
        body = (json.dumps(payload, allow_nan=False, default=str) + "\n").encode()
        self._send(status, body, "application/json", close)

    def _authorized(self) -> bool:
        token = self.api.token
        if not token:
            return True
        header = self.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "missing bearer token"}, close=True)
            return False
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            self._json(HTTPStatus.UNAUTHORIZED, {"error": "wrong bearer token"}, close=True)
            return False
        return True

    # ----------------------------------------------------------------- routes

    def do_GET(self) -> None:
        if not self._authorized():
            return
        path = urlsplit(self.path).path
        state = self.api.state
        if path == "/health":
            source_state = state.source_snapshot().get("state", "")
            ok = state.running and source_state != "backoff"
            self._json(
                HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE,
                {
                    "status": "ok" if ok else "degraded",
                    "source_state": source_state,
                    "uptime_s": round(time.monotonic() - state.started_monotonic, 3),
                },
            )
        elif path == "/status":
            self._json(HTTPStatus.OK, state.status())
        elif path == "/metrics":
            self._send(
                HTTPStatus.OK, state.metrics().encode(), "text/plain; version=0.0.4; charset=utf-8"
            )
        else:
            self._json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no such endpoint: GET {path}; expected /health, /status, /metrics"},
            )

    def do_POST(self) -> None:
        if not self._authorized():
            return
        url = urlsplit(self.path)
        if url.path != "/score":
            self._json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no such endpoint: POST {url.path}; expected /score"},
                close=True,
            )
            return
        query = parse_qs(url.query)
        limit = self.api.max_upload_bytes
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self._json(
                HTTPStatus.LENGTH_REQUIRED,
                {"error": "expected a Content-Length header with the upload size"},
                close=True,
            )
            return
        try:
            length = int(length_text)
        except ValueError:
            self._json(
                HTTPStatus.BAD_REQUEST,
                {"error": f"Content-Length should be an integer, got {length_text!r}"},
                close=True,
            )
            return
        if length > limit:
            self.api.state.count_api(False)
            self._json(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {
                    "error": f"upload of {length} bytes is larger than the limit of "
                    f"{limit} bytes (api.max_upload_bytes)"
                },
                close=True,
            )
            return
        body = self.rfile.read(length)
        default_name = query.get("name", ["upload"])[0]
        try:
            name, data = extract_upload(self.headers.get("Content-Type", ""), body, default_name)
        except UploadError as error:
            self.api.state.count_api(False)
            self._json(error.status, {"file": default_name, "error": str(error)})
            return
        window_scores = query.get("windows", ["0"])[0] in ("1", "true", "yes")
        with tempfile.TemporaryDirectory(prefix="clad-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            try:
                result = self.api.scorer.score_file(path, window_scores=window_scores)
            except AudioError as error:
                self.api.state.count_api(False)
                self._json(HTTPStatus.BAD_REQUEST, {"file": name, "error": error.problem})
                return
        result["file"] = name
        self.api.state.count_api(True)
        self._json(HTTPStatus.OK, result)
