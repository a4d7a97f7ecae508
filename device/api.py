"""The agent's local HTTP API (stdlib ThreadingHTTPServer) over its state (device.state).

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
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from device.audio import DEFAULT_MAX_DURATION_S, AudioError, windows_for_scoring
from device.config import is_loopback
from device.page import PAGE_HTML
from device.runtime import Scorer
from device.state import (  # noqa: F401 (AgentState and Histogram were defined here)
    HISTORY_POINTS,
    HISTORY_SPAN_S,
    LATENCY_BUCKETS_S,
    RECENT_EVENTS,
    AgentState,
    Histogram,
)

log = logging.getLogger("device.api")


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
