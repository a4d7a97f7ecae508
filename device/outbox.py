"""Events on their way off the Pi: a bounded on-disk queue and the thread that drains it.

    Spool(path, max_events)   a FIFO of JSON events in an sqlite3 file (stdlib), every event
                              numbered (`seq`, increasing across restarts of the agent)
    Outbox(name, spool, deliver, ...)
                              an event sink: write() appends to the spool and returns at once;
                              a thread hands the oldest events to `deliver` and removes them
                              from the spool only once `deliver` returned without raising

Used by the MQTT publisher (device.mqtt) and the webhooks (device.webhook): the broker or the
receiver being away never blocks detection. Events raised meanwhile wait on disk and go out
in order when it returns; only when the spool holds `max_events` is the oldest dropped, and
counted (`dropped`, in /metrics as clad_outbox_dropped_total). An empty path keeps the spool
in memory (bounded the same way, but lost when the agent restarts).

The spool runs in WAL mode with synchronous=NORMAL: an event survives the agent's crash once
write() returned; a power cut may lose the last commits (a fsync per event would cost an SD
card milliseconds for each).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device.events import SpoolError, encode_event

log = logging.getLogger("device.outbox")

MAX_QUEUE_EVENTS = 10_000_000


@dataclass(frozen=True)
class Queued:
    seq: int
    event: dict[str, Any]


class Spool:
    """A bounded FIFO of events in sqlite3; thread-safe."""

    def __init__(self, path: str | Path, max_events: int) -> None:
        if not 1 <= max_events <= MAX_QUEUE_EVENTS:
            raise ValueError(f"max_events: expected 1-{MAX_QUEUE_EVENTS}, got {max_events}")
        self.path = str(path) if str(path) else ":memory:"
        self.max_events = int(max_events)
        self._lock = threading.Lock()
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS queue "
                "(seq INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL)"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER)"
            )
            self._db.execute("INSERT OR IGNORE INTO counters VALUES ('dropped', 0)")
            (self._depth,) = self._db.execute("SELECT COUNT(*) FROM queue").fetchone()
            (self._dropped,) = self._db.execute(
                "SELECT value FROM counters WHERE name = 'dropped'"
            ).fetchone()
        except (sqlite3.Error, OSError) as error:
            raise SpoolError(
                f"{self.path}: cannot open the spool (expected a writable sqlite3 file): {error}"
            ) from error

    @property
    def depth(self) -> int:
        return self._depth

    @property
    def dropped(self) -> int:
        return self._dropped

    def put(self, event: dict[str, Any]) -> int:
        """Append an event; returns its seq. Drops the oldest when the bound is reached."""
        body = encode_event(event)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                seq = self._db.execute("INSERT INTO queue (body) VALUES (?)", (body,)).lastrowid
                over = self._depth + 1 - self.max_events
                if over > 0:
                    self._db.execute(
                        "DELETE FROM queue WHERE seq IN "
                        "(SELECT seq FROM queue ORDER BY seq LIMIT ?)",
                        (over,),
                    )
                    self._db.execute(
                        "UPDATE counters SET value = value + ? WHERE name = 'dropped'", (over,)
                    )
                self._db.execute("COMMIT")
            except sqlite3.Error as error:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise SpoolError(f"{self.path}: cannot queue an event ({error})") from error
            if over > 0:
                self._dropped += over
                self._depth += 1 - over
            else:
                self._depth += 1
        assert seq is not None  # an INSERT always sets lastrowid
        return int(seq)

    def peek(self, limit: int) -> list[Queued]:
        """The oldest `limit` events, oldest first, each with its seq in event["seq"]."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, body FROM queue ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        out = []
        for seq, body in rows:
            event = json.loads(body)
            event["seq"] = seq
            out.append(Queued(seq, event))
        return out

    def ack(self, through_seq: int) -> None:
        """Remove every event up to and including `through_seq` (delivered)."""
        with self._lock:
            cursor = self._db.execute("DELETE FROM queue WHERE seq <= ?", (through_seq,))
            self._depth -= cursor.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Outbox:
    """An event sink that queues events in a Spool and delivers them from a thread.

    `deliver(batch)` sends events in order and returns once all are delivered, or raises
    (any Exception: a network fault, a refusal); then the same batch is tried again after a
    back-off that doubles from `backoff_initial_s` to `backoff_max_s`. `types` picks the
    event types this sink takes.
    """

    def __init__(
        self,
        name: str,
        spool: Spool,
        deliver: Callable[[list[Queued]], None],
        types: tuple[str, ...],
        *,
        batch: int = 100,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        close_timeout_s: float = 3.0,
        rejected: Callable[[], int] | None = None,
    ) -> None:
        self.name = name
        self.spool = spool
        self.deliver = deliver
        self.types = frozenset(types)
        self.batch = batch
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.close_timeout_s = close_timeout_s
        self._rejected = rejected  # events the receiver refused for good (and were skipped)
        self.delivered = 0
        self.failures = 0
        self.last_error = ""
        self._wake = threading.Condition()
        self._stop = threading.Event()
        self._kick = threading.Event()  # "try now": ends a back-off wait early
        self._thread = threading.Thread(target=self._run, name=f"outbox-{name}", daemon=True)
        self._thread.start()

    def write(self, event: dict[str, Any]) -> None:
        if event.get("type") not in self.types:
            return
        self.spool.put(event)
        with self._wake:
            self._wake.notify()

    def _run(self) -> None:
        delay_s = self.backoff_initial_s
        while not self._stop.is_set():
            batch = self.spool.peek(self.batch)
            if not batch:
                with self._wake:
                    if self.spool.depth == 0 and not self._stop.is_set():
                        self._wake.wait(1.0)
                continue
            try:
                self.deliver(batch)
            except Exception as error:  # any delivery fault: keep the events, retry later
                self.failures += 1
                self.last_error = f"{type(error).__name__}: {error}"
                if self.failures == 1 or self.failures % 100 == 0:
                    log.warning(
                        "%s: delivery failed (%s); %d event(s) queued, retrying in %.1f s",
                        self.name,
                        self.last_error,
                        self.spool.depth,
                        delay_s,
                    )
                if self._kick.wait(delay_s):  # the way out is back: no need to wait longer
                    self._kick.clear()
                    delay_s = self.backoff_initial_s
                else:
                    delay_s = min(delay_s * 2, self.backoff_max_s)
                continue
            delay_s = self.backoff_initial_s
            self.last_error = ""
            self.spool.ack(batch[-1].seq)
            self.delivered += len(batch)

    def kick(self) -> None:
        """Retry now if waiting out a back-off (e.g. the broker is connected again)."""
        self._kick.set()

    def drain(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for the spool to empty; True when it did."""
        deadline = time.monotonic() + timeout_s
        while self.spool.depth and time.monotonic() < deadline:
            with self._wake:
                self._wake.notify()
            time.sleep(0.02)
        return self.spool.depth == 0

    def close(self) -> None:
        """Give queued events `close_timeout_s` to go out; the rest stay in the spool file."""
        self.drain(self.close_timeout_s)
        self._stop.set()
        self._kick.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(self.close_timeout_s + 5.0)
        if self.spool.depth:
            log.warning(
                "%s: %d event(s) not delivered; kept in %s for the next start",
                self.name,
                self.spool.depth,
                self.spool.path,
            )
        self.spool.close()

    def metrics(self) -> dict[str, float]:
        return {
            "queue_depth": self.spool.depth,
            "dropped": self.spool.dropped,
            "delivered": self.delivered,
            "failures": self.failures,
            "rejected": self._rejected() if self._rejected else 0,
        }


def render_outbox_metrics(outboxes: list[Outbox]) -> list[str]:
    """Prometheus lines for every outbox, labelled by its name."""
    if not outboxes:
        return []
    specs = (
        ("queue_depth", "gauge", "clad_outbox_queue_depth", "Events waiting in the spool."),
        ("dropped", "counter", "clad_outbox_dropped_total", "Oldest events dropped (spool full)."),
        ("delivered", "counter", "clad_outbox_delivered_total", "Events handed over (or refused)."),
        ("failures", "counter", "clad_outbox_failures_total", "Failed delivery attempts."),
        ("rejected", "counter", "clad_outbox_rejected_total", "Events refused for good (4xx)."),
    )
    values = [(box.name, box.metrics()) for box in outboxes]
    lines: list[str] = []
    for key, kind, metric, help_text in specs:
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} {kind}"]
        lines += [f'{metric}{{sink="{name}"}} {m[key]:g}' for name, m in values]
    return lines
