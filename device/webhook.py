"""Events POSTed as JSON to webhook URLs, signed, retried with back-off, queued on disk.

    WebhookSender(settings) -> an event sink (write/close), with .outboxes (one per URL)

Each event (by default only "decision" events) is one POST to each URL: the body is the
event's JSON object (the events' schema, plus "seq", which increases by one per event and
URL across agent restarts, so a receiver can drop a redelivery), with

    Content-Type: application/json
    X-Clad-Event: decision
    X-Clad-Delivery: <seq>
    X-Clad-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes, keyed by [webhook] secret>

A 2xx answer delivers it. A connection error, a timeout, a 3xx (redirects are not followed:
a POST would become a GET), 408, 429 or a 5xx is retried after a back-off doubling from
backoff_initial_s to backoff_max_s, for as long as it takes: events behind it wait, in order,
in the URL's bounded spool (device.outbox). Any other 4xx is the receiver refusing that event
for good: it is logged, counted (`rejected`) and skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device.config import WebhookSettings
from device.outbox import Outbox, Queued, Spool

log = logging.getLogger("device.webhook")

RETRIED_STATUSES = frozenset({408, 429})


def sign(secret: str, body: bytes) -> str:
    """The X-Clad-Signature value: 'sha256=' and the hex HMAC-SHA256 of body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(secret, body), signature)


class WebhookError(ConnectionError):
    """An attempt that should be retried (network fault, timeout, 3xx, 408, 429, 5xx)."""


class Webhook:
    """One URL: POST each event, raising WebhookError for what should be retried."""

    def __init__(self, url: str, secret: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.https = parts.scheme == "https"
        self.host = parts.hostname or ""
        self.port = parts.port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.secret = secret
        self.timeout_s = timeout_s
        self.rejected = 0
        self.attempts = 0

    def post(self, event: dict[str, Any]) -> None:
        body = json.dumps(event, allow_nan=False).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "clad-agent",
            "X-Clad-Event": str(event.get("type", "")),
            "X-Clad-Delivery": str(event.get("seq", "")),
            "X-Clad-Signature": sign(self.secret, body),
        }
        connection_class = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        connection = connection_class(self.host, self.port, timeout=self.timeout_s)
        self.attempts += 1
        try:
            connection.request("POST", self.path, body=body, headers=headers)
            response = connection.getresponse()
            detail = response.read(200).decode("utf-8", "replace").strip()
        except (OSError, http.client.HTTPException) as error:
            raise WebhookError(f"POST {self.url}: {type(error).__name__}: {error}") from error
        finally:
            connection.close()
        status = response.status
        if 200 <= status < 300:
            return
        if status < 400 or status >= 500 or status in RETRIED_STATUSES:
            raise WebhookError(f"POST {self.url}: expected a 2xx answer, got {status} {detail!r}")
        self.rejected += 1
        log.error(
            "webhook %s refused event seq %s with %d %r; skipped (a 4xx is not retried)",
            self.url,
            event.get("seq"),
            status,
            detail,
        )

    def deliver(self, batch: list[Queued]) -> None:
        for item in batch:  # batch size 1: each event acknowledged on its own
            self.post(item.event)


def spool_path(spool_dir: str, url: str) -> str:
    if not spool_dir:
        return ""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return str(Path(spool_dir) / f"webhook-{digest}.sqlite3")


class WebhookSender:
    """An event sink posting to every configured URL, each through its own outbox."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.hooks = [Webhook(url, settings.secret, settings.timeout_s) for url in settings.urls]
        self.outboxes = [
            Outbox(
                f"webhook-{number}",
                Spool(spool_path(settings.spool_dir, hook.url), settings.max_queue),
                hook.deliver,
                tuple(settings.types),
                batch=1,
                backoff_initial_s=settings.backoff_initial_s,
                backoff_max_s=settings.backoff_max_s,
                rejected=lambda hook=hook: hook.rejected,
            )
            for number, hook in enumerate(self.hooks, start=1)
        ]
        for outbox, hook in zip(self.outboxes, self.hooks, strict=True):
            log.info("webhook: %s -> %s", outbox.name, hook.url)

    def write(self, event: dict[str, Any]) -> None:
        for outbox in self.outboxes:
            outbox.write(event)

    def close(self) -> None:
        for outbox in self.outboxes:
            outbox.close()
