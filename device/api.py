"""The agent's local HTTP API (stdlib ThreadingHTTPServer) and the state it reports.

    GET  /         the live status page (HTML, self-contained; device.page)
    GET  /history  the page's data: the last minutes of smoothed scores, recent events, counters
    GET  /health   200 {"status": "ok"} while the source delivers; 503 "degraded" while it
                   is backing off after an error
    GET  /status   the latest window, smoothed score and decision, counters, model, source
    GET  /metrics  Prometheus text format: windows scored, latency histograms, overflows,
                   decisions by label
    POST /score    an audio file, as the raw body or a multipart/form-data upload; returns the
                   file's score JSON (as `clad-agent score --json`). Larger than
                   max_upload_bytes -> 413; not decodable -> 400 {"file", "error"}
    HEAD           any GET endpoint, headers only

Bound to 127.0.0.1 unless told otherwise; beyond loopback a bearer token is required (the
agent refuses to start without one), and a token that is set is checked on every endpoint,
before any body is read. Bounded work (docs/device.md, "Limits and failure modes"): at most
`max_connections` connections (more get 503 + Retry-After at once), a listen backlog of
LISTEN_BACKLOG, a deadline for the request line and headers (however slowly they trickle)
and a socket timeout while reading a body,
strict Content-Length (missing 411, malformed or negative 400, over the limit 413, all
before reading), at most `max_concurrent_scores` uploads read and scored at once (503 +
Retry-After beyond), and a Host allow-list when a token guards an API bound beyond loopback
(DNS rebinding). Every response is one send (TCP_NODELAY); any exception inside a request
becomes a JSON 500, never a dropped connection.
"""

from __future__ import annotations

import email.parser
import email.policy
import errno
import hmac
import io
import ipaddress
import json
import logging
import re
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from device.audio import DEFAULT_MAX_DURATION_S, AudioError, windows_for_scoring
from device.config import is_loopback
from device.outbox import Outbox, render_outbox_metrics
from device.page import PAGE_HTML
from device.runtime import DECISIONS, Scorer
from device.stream import WindowResult

log = logging.getLogger("device.api")

HISTORY_POINTS = 2400
"""Windows kept for the status page's plot: 20 minutes at the usual 0.5 s hop."""
HISTORY_SPAN_S = 300.0
"""The plot shows the last 5 minutes."""
RECENT_EVENTS = 20

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
        self.last_scored_monotonic: float | None = None
        # /health is "unhealthy" after this long without a scored window (None: never).
        self.stall_after_s: float | None = None
        self.event_write_errors = 0
        self.event_file_error = ""  # the last event-file write error, "" while writes succeed
        self.outboxes: list[Outbox] = []  # MQTT, webhooks: queue depth and drops in /metrics
        # The status page's data: the last windows (bounded ring) and the last events.
        self.history: deque[tuple[float, float | None, float, float]] = deque(maxlen=HISTORY_POINTS)
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)

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
            self.last_scored_monotonic = time.monotonic()
            self.history.append(
                (self.last_scored_monotonic, result.smoothed, result.p_spoof, result.rms_dbfs)
            )

    def note_event(self, event: dict[str, Any]) -> None:
        """Keep a short copy of a non-window event for the status page."""
        keep = ("time", "type", "decision", "previous", "smoothed", "source_state", "reason")
        with self._lock:
            self.recent_events.append({k: event[k] for k in keep if k in event})

    def page_history(self, threshold: float | None) -> dict[str, Any]:
        """GET /history: what the status page draws (the last HISTORY_SPAN_S seconds)."""
        source = self.source_snapshot()
        now = time.monotonic()
        with self._lock:
            points = [
                [round(t, 3), smoothed, p_spoof]
                for t, smoothed, p_spoof, _ in self.history
                if now - t <= HISTORY_SPAN_S
            ]
            latest = self.latest
            return {
                "now_s": round(now, 3),
                "span_s": HISTORY_SPAN_S,
                "decision": self.decision,
                "smoothed": self.smoothed,
                "threshold": threshold,
                "rms_dbfs": None if latest is None else round(latest.rms_dbfs, 2),
                "points": points,
                "events": list(self.recent_events),
                "counters": {
                    "windows scored": self.windows_scored,
                    "silent windows": self.silent_windows,
                    "overflows": source.get("overflows", 0),
                    "source errors": source.get("errors", 0),
                    "source": source.get("state", "-"),
                    "spoof alarms": self.decision_changes.get("spoof", 0),
                    "event write errors": self.event_write_errors,
                    **{
                        f"{box.name} queued / dropped": f"{box.spool.depth} / {box.spool.dropped}"
                        for box in self.outboxes
                    },
                    "uptime s": round(now - self.started_monotonic),
                },
            }

    def event_write_failed(self, problem: str) -> None:
        with self._lock:
            self.event_write_errors += 1
            self.event_file_error = problem

    def event_write_recovered(self) -> None:
        with self._lock:
            self.event_file_error = ""

    def health(self) -> tuple[str, dict[str, Any]]:
        """("ok" | "degraded" | "unhealthy", the /health payload with the reasons)."""
        source_state = self.source_snapshot().get("state", "")
        now = time.monotonic()
        problems: list[str] = []
        unhealthy = False
        with self._lock:
            if not self.running:
                problems.append("the agent is stopping")
                unhealthy = True
            if source_state == "backoff":
                problems.append("the source is backing off after an error")
            if self.event_file_error:
                problems.append(f"events are not reaching the event file: {self.event_file_error}")
            for box in self.outboxes:  # MQTT, webhooks: degraded while they cannot deliver
                if box.last_error:
                    problems.append(
                        f"{box.name}: {box.last_error}; {box.spool.depth} event(s) queued"
                    )
            since = self.last_scored_monotonic or self.started_monotonic
            idle_s = now - since
            if self.stall_after_s is not None and self.running and idle_s > self.stall_after_s:
                problems.append(
                    f"no window scored for {idle_s:.1f} s (expected one within "
                    f"{self.stall_after_s:g} s of audio)"
                )
                unhealthy = True
            status = "unhealthy" if unhealthy else ("degraded" if problems else "ok")
            payload = {
                "status": status,
                "source_state": source_state,
                "problems": problems,
                "seconds_since_last_window": None
                if self.last_scored_monotonic is None
                else round(now - self.last_scored_monotonic, 3),
                "event_write_errors": self.event_write_errors,
                "uptime_s": round(now - self.started_monotonic, 3),
            }
        return status, payload

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
                "alerts": {
                    box.name: {**box.metrics(), "last_error": box.last_error}
                    for box in self.outboxes
                },
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
                "# HELP clad_event_write_errors_total Events that could not be written to the file.",
                "# TYPE clad_event_write_errors_total counter",
                f"clad_event_write_errors_total {self.event_write_errors}",
                "# HELP clad_event_file_ok 1 while the last event-file write succeeded.",
                "# TYPE clad_event_file_ok gauge",
                f"clad_event_file_ok {int(not self.event_file_error)}",
                "# HELP clad_up 1 while the agent runs.",
                "# TYPE clad_up gauge",
                f"clad_up {int(self.running)}",
                *render_outbox_metrics(self.outboxes),
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


LISTEN_BACKLOG = 128
"""listen() backlog: the stdlib default of 5 dropped connections under 32 clients."""

_DIGITS = re.compile(r"[0-9]{1,18}")
_TOKEN_IN_QUERY = re.compile(r"(access_token=)[^&\s]*")


def _host_name(host_header: str) -> str:
    """The name part of a Host header ('[::1]:8787' -> '::1', 'pi.local:80' -> 'pi.local')."""
    text = host_header.strip().lower()
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


def _is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer with a real backlog, a connection cap and an accept() that backs off
    when the process is out of file descriptors instead of spinning on a readable socket."""

    daemon_threads = True
    request_queue_size = LISTEN_BACKLOG

    def __init__(
        self, address: tuple[str, int], handler: type, family: int, max_connections: int
    ) -> None:
        self.address_family = family
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused_connections = 0
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as error:
            if error.errno in (errno.EMFILE, errno.ENFILE):
                log.warning("API: cannot accept a connection (%s); pausing 0.1 s", error.strerror)
                time.sleep(0.1)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused_connections += 1
            _refuse_connection(request, self.max_connections)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _response_bytes(
    status: int, body: bytes, content_type: str, extra: dict[str, str], head_only: bool
) -> bytes:
    phrase = HTTPStatus(status).phrase
    lines = [
        f"HTTP/1.1 {status} {phrase}",
        "Server: clad-agent",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + body


def _refuse_connection(request: socket.socket, max_connections: int) -> None:
    """503 on a connection over the cap, in the accept thread: one bounded send, then close."""
    body = (
        json.dumps({"error": f"too many connections (the limit is {max_connections}); retry"})
        + "\n"
    ).encode()
    data = _response_bytes(
        HTTPStatus.SERVICE_UNAVAILABLE,
        body,
        "application/json",
        {"Retry-After": "1", "Connection": "close"},
        head_only=False,
    )
    try:
        request.settimeout(0.1)
        request.sendall(data)
        request.shutdown(socket.SHUT_WR)
        request.recv(65536)  # take what the client already sent, so close() sends FIN, not RST
    except OSError:
        pass  # the client went away or sent nothing in time: nothing more to do for it
    finally:
        request.close()


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
        *,
        max_connections: int = 32,
        max_concurrent_scores: int = 2,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        allowed_hosts: tuple[str, ...] = (),
        max_audio_s: float = DEFAULT_MAX_DURATION_S,
    ) -> None:
        self.scorer = scorer
        self.state = state
        self.token = token
        self.max_upload_bytes = int(max_upload_bytes)
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.max_audio_s = float(max_audio_s)
        self.max_concurrent_scores = int(max_concurrent_scores)
        self.scoring = threading.BoundedSemaphore(self.max_concurrent_scores)
        # DNS rebinding: a page on evil.example resolving to this Pi must not reach the API.
        # Only when a token guards an API bound beyond loopback; IP literals can't be rebound.
        self.check_host = bool(token) and not is_loopback(host)
        self.allowed_hosts = {h.lower() for h in allowed_hosts} | {
            "localhost",
            socket.gethostname().lower(),
            f"{socket.gethostname().lower()}.local",
        }
        handler = type("Handler", (_Handler,), {"api": self, "timeout": self.header_timeout_s})
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.httpd = _Server((host, port), handler, family, int(max_connections))
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def host_allowed(self, host_header: str | None) -> bool:
        if not self.check_host:
            return True
        if not host_header:
            return False
        name = _host_name(host_header)
        return _is_ip_literal(name) or name in self.allowed_hosts

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


class _DeadlineReader(io.RawIOBase):
    """The request's socket as a raw stream whose reads share one deadline.

    A per-read socket timeout bounds silence only: a client sending one header byte every
    few seconds would hold its connection forever. While `deadline` is set (monotonic
    seconds), each read waits at most until it; None leaves the socket's own timeout.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is not None:
            remaining_s = self.deadline - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("the request headers did not arrive in time")
            self._sock.settimeout(remaining_s)
        return self._sock.recv_into(buffer)


class _Reply(Exception):
    """A response decided inside a route (an error with its status), sent by the dispatcher."""

    def __init__(
        self,
        status: int,
        payload: dict[str, Any],
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(payload.get("error", ""))
        self.status = status
        self.payload = payload
        self.close = close
        self.headers = headers or {}


def _health(handler: _Handler) -> None:
    status, payload = handler.api.state.health()
    handler.reply_json(HTTPStatus.OK if status == "ok" else HTTPStatus.SERVICE_UNAVAILABLE, payload)


def _status(handler: _Handler) -> None:
    handler.reply_json(HTTPStatus.OK, handler.api.state.status())


def _metrics(handler: _Handler) -> None:
    extra = [
        "# HELP clad_api_refused_connections_total Connections refused over the cap (503).",
        "# TYPE clad_api_refused_connections_total counter",
        f"clad_api_refused_connections_total {handler.api.httpd.refused_connections}",
    ]
    text = handler.api.state.metrics() + "\n".join(extra) + "\n"
    handler.reply(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4; charset=utf-8")


def _score(handler: _Handler) -> None:
    api = handler.api
    url = urlsplit(handler.path)
    query = parse_qs(url.query)
    length = handler.upload_length()
    if not api.scoring.acquire(blocking=False):
        raise _Reply(
            HTTPStatus.SERVICE_UNAVAILABLE,
            {"error": f"busy: {api.max_concurrent_scores} upload(s) already being scored; retry"},
            close=True,
            headers={"Retry-After": "1"},
        )
    try:
        handler.connection.settimeout(api.body_timeout_s)
        body = handler.rfile.read(length)
        if len(body) != length:
            raise _Reply(
                HTTPStatus.BAD_REQUEST,
                {"error": f"expected {length} bytes of body, got {len(body)} before EOF"},
                close=True,
            )
        handler.connection.settimeout(api.header_timeout_s)
        default_name = query.get("name", ["upload"])[0]
        try:
            name, data = extract_upload(handler.headers.get("Content-Type", ""), body, default_name)
        except UploadError as error:
            api.state.count_api(False)
            raise _Reply(error.status, {"file": default_name, "error": str(error)}) from error
        del body
        window_scores = query.get("windows", ["0"])[0] in ("1", "true", "yes")
        with tempfile.TemporaryDirectory(prefix="clad-upload-") as tmp:
            path = Path(tmp) / "upload"
            path.write_bytes(data)
            del data
            scorer = api.scorer
            try:
                windows = windows_for_scoring(
                    path,
                    scorer.window_samples,
                    scorer.hop_samples,
                    scorer.silence_floor_dbfs,
                    api.max_audio_s,
                )
            except AudioError as error:
                api.state.count_api(False)
                raise _Reply(
                    HTTPStatus.BAD_REQUEST, {"file": name, "error": error.problem}
                ) from error
            result = scorer.score_prepared(windows, name, window_scores)
    finally:
        api.scoring.release()
    result["file"] = name
    api.state.count_api(True)
    handler.reply_json(HTTPStatus.OK, result)


def _page(handler: _Handler) -> None:
    handler.reply(
        HTTPStatus.OK,
        PAGE_HTML.encode(),
        "text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
        },
    )


def _history(handler: _Handler) -> None:
    api = handler.api
    handler.reply_json(HTTPStatus.OK, api.state.page_history(api.scorer.threshold))


ROUTES: dict[str, dict[str, Callable[[_Handler], None]]] = {
    "/": {"GET": _page},
    "/history": {"GET": _history},
    "/health": {"GET": _health},
    "/status": {"GET": _status},
    "/metrics": {"GET": _metrics},
    "/score": {"POST": _score},
}
"""path -> method -> route. HEAD is served by the GET route without the body."""


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    server_version = "clad-agent"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        text = _TOKEN_IN_QUERY.sub(r"\1<redacted>", format % args)
        log.debug("%s %s", self.address_string(), text)

    def setup(self) -> None:
        super().setup()  # applies self.timeout (the header timeout) to the socket
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile.close()  # the stdlib's reader; this one shares the socket, not closes it
        self._reader = _DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        # Request line and headers: header_timeout_s in all, however slowly they trickle.
        self._reader.deadline = time.monotonic() + self.api.header_timeout_s
        super().handle_one_request()

    # ----------------------------------------------------------------- responses

    def reply(
        self,
        status: int,
        body: bytes,
        content_type: str,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The whole response (status line, headers, body) in one send."""
        extra = dict(headers or {})
        if status == HTTPStatus.UNAUTHORIZED:
            extra["WWW-Authenticate"] = 'Bearer realm="clad-agent"'
        if close:
            extra["Connection"] = "close"
            self.close_connection = True
        self.wfile.write(_response_bytes(status, body, content_type, extra, self.command == "HEAD"))
        self.log_request(status, len(body))

    def reply_json(
        self,
        status: int,
        payload: Any,
        close: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = (json.dumps(payload, allow_nan=False, default=str) + "\n").encode()
        self.reply(status, body, "application/json", close, headers)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (bad request line, 414, 431...) as JSON, connection closed."""
        text = message or HTTPStatus(code).phrase
        self.reply_json(code, {"error": f"{text}" + (f": {explain}" if explain else "")}, True)

    # ----------------------------------------------------------------- checks

    def _check_auth(self) -> None:
        token = self.api.token
        if not token:
            return
        header = self.headers.get("Authorization", "")
        if not header and self.command in ("GET", "HEAD"):
            # A browser opening the status page cannot send a header: ?access_token= (RFC 6750)
            given_in_query = parse_qs(urlsplit(self.path).query).get("access_token", [""])[0]
            if given_in_query:
                header = f"Bearer {given_in_query}"
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            problem = "missing bearer token"
        elif not hmac.compare_digest(given.strip().encode(), token.encode()):
            problem = "wrong bearer token"
        else:
            return
        log.warning(
            "API: 401 %s for %s %s from %s",
            problem,
            self.command,
            urlsplit(self.path).path,
            self.client_address[0],
        )
        raise _Reply(HTTPStatus.UNAUTHORIZED, {"error": problem}, close=True)

    def upload_length(self) -> int:
        """The strict Content-Length of an upload, checked against the limit before reading."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise _Reply(
                HTTPStatus.LENGTH_REQUIRED,
                {
                    "error": "expected a Content-Length header, got Transfer-Encoding "
                    f"{self.headers['Transfer-Encoding']!r} (chunked uploads are not accepted)"
                },
                close=True,
            )
        values = self.headers.get_all("Content-Length") or []
        if not values:
            raise _Reply(
                HTTPStatus.LENGTH_REQUIRED,
                {"error": "expected a Content-Length header with the upload size"},
                close=True,
            )
        if len(set(values)) != 1 or not _DIGITS.fullmatch(values[0].strip()):
            raise _Reply(
                HTTPStatus.BAD_REQUEST,
                {"error": f"Content-Length should be one non-negative integer, got {values!r}"},
                close=True,
            )
        length = int(values[0])
        limit = self.api.max_upload_bytes
        if length > limit:
            self.api.state.count_api(False)
            raise _Reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {
                    "error": f"upload of {length} bytes is larger than the limit of "
                    f"{limit} bytes (api.max_upload_bytes)"
                },
                close=True,
            )
        return length

    # ----------------------------------------------------------------- dispatch

    def _dispatch(self) -> None:
        self._reader.deadline = None  # headers are in; a body read has its own timeout
        try:
            if not self.api.host_allowed(self.headers.get("Host")):
                raise _Reply(
                    HTTPStatus.MISDIRECTED_REQUEST,
                    {
                        "error": f"Host {self.headers.get('Host')!r} is not this agent; expected an "
                        "IP address, localhost, this machine's name or one of api.allowed_hosts"
                    },
                    close=True,
                )
            self._check_auth()
            path = urlsplit(self.path).path
            methods = ROUTES.get(path)
            if methods is None:
                raise _Reply(
                    HTTPStatus.NOT_FOUND,
                    {
                        "error": f"no such endpoint: {self.command} {path}; expected one of "
                        f"{', '.join(f'{m} {p}' for p, ms in ROUTES.items() for m in ms)}"
                    },
                    close=self.command != "GET",
                )
            route = methods.get("GET" if self.command == "HEAD" else self.command)
            if route is None:
                allowed = sorted(set(methods) | ({"HEAD"} if "GET" in methods else set()))
                raise _Reply(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    {"error": f"{self.command} {path}: expected {' or '.join(allowed)}"},
                    close=True,
                    headers={"Allow": ", ".join(allowed)},
                )
            if self.command != "POST" and (
                self.headers.get("Content-Length", "0").strip() not in ("", "0")
                or self.headers.get("Transfer-Encoding") is not None
            ):
                self.close_connection = True  # an unread body must not be parsed as a request
            route(self)
        except _Reply as reply:
            self.reply_json(reply.status, reply.payload, reply.close, reply.headers)
        except TimeoutError:
            self.reply_json(
                HTTPStatus.REQUEST_TIMEOUT,
                {
                    "error": f"the body did not arrive within {self.api.body_timeout_s:g} s "
                    "of socket silence (api.body_timeout_s)"
                },
                close=True,
            )
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as error:  # any fault in a request: a JSON 500, never a dropped socket
            log.exception("API: %s %s failed", self.command, self.path)
            self.reply_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"error": f"internal error: {type(error).__name__}: {error}"},
                close=True,
            )

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _dispatch
