"""Agent events: one JSON object per line, to stdout and to an append-only file with rotation.

The schema (version EVENT_SCHEMA_VERSION, documented in docs/device.md):

    {"schema": 1, "type": "start|source|window|decision|heartbeat|stop",
     "time": "2026-01-31T12:00:00.123456Z", "monotonic_s": 1234.567,
     "source": "mic:USB", "window": 17, "start_s": 8.5,
     "p_spoof": 0.91, "silent": false, "rms_dbfs": -23.4,
     "smoothed": 0.87, "decision": "spoof", "previous": "bonafide",
     "threshold": 0.5, "inference_ms": 1.1, "latency_ms": 2.3,
     "overflows": 0, "windows_scored": 18, ...}

"decision" events are written whenever the decision changes, "source" events when the
source starts capturing, fails, reopens or ends, "heartbeat" events every
`heartbeat_s` without another event, and "window" events for every other window when
every-window output is on. The event file is written one whole line per os.write() on
an O_APPEND descriptor, so once write() returns the line is the kernel's: a killed or
crashed agent (SIGTERM, SIGKILL, an exception) loses none. fsync, which only a power cut or
a kernel crash needs, is done at once for every event but "window" ones; "window" events
(a firehose of 2 a second with every-window output) are fsynced at most `fsync_interval_s`
after they were written (0: each at once, as every event), and on close. A process crash
mid-write leaves at most a trailing partial line:
`read_events` skips it, and the next EventFile opened on the file cuts it off before
appending. A write that fails (a full disk: ENOSPC) is cut back off the file at once, so a
full disk leaves no partial line either; the write raises EventFileError, and the next one
tries again (re-opening the file if a rotation could not), so the file recovers by itself
when space returns. The file rotates by size (events.jsonl -> events.jsonl.1 -> ...).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("device.events")

EVENT_SCHEMA_VERSION = 1
EVENT_TYPES = ("start", "source", "window", "decision", "heartbeat", "stop")


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def encode_event(event: dict[str, Any]) -> str:
    """One line of JSON (no newline inside), keys in insertion order."""
    try:  # the common case: every number finite, no copy of the event
        return json.dumps(event, separators=(", ", ": "), allow_nan=False)
    except ValueError:  # a NaN or an infinity somewhere: null instead, as _clean does
        return json.dumps(_clean(event), separators=(", ", ": "), allow_nan=False)


class EventFileError(OSError):
    """The event file cannot be opened or written."""


class SpoolError(OSError):
    """An outbox's spool file (device.outbox) cannot be opened or written."""


class EventFile:
    """Append-only JSON lines with size-based rotation; every line one write.

    `max_bytes` 0 never rotates; `backups` rotated files are kept (path.1 is the newest).
    `fsync`: sync to storage at all; "window" events are synced within `fsync_interval_s`
    (`sync_due()` or the next write does it; 0: at once), every other event at once.
    """

    def __init__(
        self,
        path: str | Path,
        max_bytes: int = 10_000_000,
        backups: int = 5,
        fsync: bool = True,
        fsync_interval_s: float = 0.0,
    ) -> None:
        if max_bytes < 0 or backups < 0:
            raise ValueError(f"max_bytes and backups must be >= 0, got {max_bytes}, {backups}")
        if not fsync_interval_s >= 0:
            raise ValueError(f"fsync_interval_s must be >= 0 seconds, got {fsync_interval_s}")
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self.fsync = fsync
        self.fsync_interval_s = float(fsync_interval_s)
        self._unsynced_since: float | None = None  # monotonic time of the oldest unsynced line
        self.fsyncs = 0
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise EventFileError(
                f"{self.path.parent}: cannot create the event directory ({error.strerror})"
            ) from error
        self._open()
        self._drop_partial_line()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as error:
            raise EventFileError(
                f"{self.path}: cannot open the event file for appending ({error.strerror})"
            ) from error
        self._size = os.fstat(self._fd).st_size

    def _drop_partial_line(self) -> None:
        """After a crash mid-write, cut the incomplete last line so every line stays whole."""
        if self._size == 0:
            return
        with open(self.path, "rb") as handle:
            tail_start = max(0, self._size - 65536)
            handle.seek(tail_start)
            tail = handle.read()
        if tail.endswith(b"\n"):
            return
        newline = tail.rfind(b"\n")
        if newline < 0 and tail_start > 0:
            return  # a line longer than 64 KiB: not ours to judge; leave it to read_events
        keep = tail_start + newline + 1
        assert self._fd is not None
        os.ftruncate(self._fd, keep)
        if self.fsync:
            os.fsync(self._fd)
        log.warning(
            "%s: removed an incomplete last line of %d bytes (a crash mid-write)",
            self.path,
            self._size - keep,
        )
        self._size = keep

    def _write_bytes(self, fd: int, data: bytes, sync: bool) -> None:
        """Append one whole line, or nothing: a failed write is truncated back off the file.

        `sync`: fsync now (this line and any earlier unsynced ones)."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if sync:
                self._fsync(fd)
        except OSError:
            try:
                os.ftruncate(fd, self._size)
            except OSError as error:
                log.error(
                    "%s: cannot cut a failed write back to %d bytes (%s)",
                    self.path,
                    self._size,
                    error.strerror,
                )
            raise
        self._size += len(data)
        if not sync and self.fsync and self._unsynced_since is None:
            self._unsynced_since = time.monotonic()

    def _fsync(self, fd: int) -> None:
        """fsync: every line written so far is on storage."""
        os.fsync(fd)
        self.fsyncs += 1
        self._unsynced_since = None

    def _unsynced_age_s(self) -> float | None:
        """How long ago the oldest unsynced line was written (None: none; only set with fsync)."""
        since = self._unsynced_since
        return None if since is None else time.monotonic() - since

    def _overdue(self) -> bool:
        """An unsynced line was written `fsync_interval_s` or more ago."""
        age_s = self._unsynced_age_s()
        return age_s is not None and age_s >= self.fsync_interval_s

    def sync_due_in_s(self) -> float | None:
        """Seconds until `sync_due` has lines to sync (0 when overdue); None: none unsynced."""
        age_s = self._unsynced_age_s()
        return None if age_s is None else max(0.0, self.fsync_interval_s - age_s)

    def _sync_now(self, event_type: Any) -> bool:
        if not self.fsync:
            return False
        return event_type != "window" or self.fsync_interval_s == 0 or self._overdue()

    def sync_due(self) -> None:
        """fsync lines written more than `fsync_interval_s` ago and not synced yet."""
        if not self._overdue():
            return
        with self._lock:
            if self._fd is None or self._unsynced_since is None:
                return
            try:
                self._fsync(self._fd)
            except OSError as error:
                raise EventFileError(
                    f"{self.path}: cannot sync events to storage ({error.strerror})"
                ) from error

    def _rotate(self) -> None:
        assert self._fd is not None
        if self.fsync and self._unsynced_since is not None:
            self._fsync(self._fd)  # the rotated file keeps every line it was given
        os.close(self._fd)
        self._fd = None
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._open()

    def write(self, event: dict[str, Any]) -> None:
        line = (encode_event(event) + "\n").encode("utf-8")
        with self._lock:
            if self._closed:
                raise EventFileError(f"{self.path}: the event file is closed")
            try:
                if self._fd is None:
                    self._open()  # a rotation or an earlier open failed: try again
                if self.max_bytes and self._size > 0 and self._size + len(line) > self.max_bytes:
                    self._rotate()
                assert self._fd is not None  # set by _open(), which raises otherwise
                self._write_bytes(self._fd, line, self._sync_now(event.get("type")))
            except EventFileError:
                raise
            except OSError as error:
                raise EventFileError(
                    f"{self.path}: cannot write an event ({error.strerror})"
                ) from error

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                try:
                    if self.fsync:
                        self._fsync(self._fd)
                finally:
                    os.close(self._fd)
                    self._fd = None


def read_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """The events of one file in order; a trailing partial line (a crash mid-write) is skipped."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    complete = lines[:-1]  # whatever follows the last newline is incomplete
    if lines[-1]:
        log.warning("%s: skipped a trailing partial line of %d bytes", path, len(lines[-1]))
    for number, line in enumerate(complete, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not JSON ({error})") from error


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def human_line(event: dict[str, Any]) -> str:
    """A short line for a terminal or the journal."""
    kind = event.get("type")
    if kind == "start":
        return (
            f"listening: {event.get('source')}  model {event.get('model')} "
            f"({event.get('model_format')}, {event.get('runtime')})  threshold "
            f"{_fmt(event.get('threshold'))}"
        )
    if kind == "source":
        text = (
            f"source {event.get('source_state')}: {event.get('device')} "
            f"{event.get('sample_rate')} Hz x{event.get('channels')}"
        )
        if event.get("last_error"):
            text += f"  (errors {event.get('errors')}: {event.get('last_error')})"
        return text
    if kind == "stop":
        return (
            f"stopped ({event.get('reason')}): {event.get('windows_scored')} windows, "
            f"{event.get('overflows')} overflows"
        )
    return (
        f"{kind:9s} t={_fmt(event.get('start_s'), 2):>8s}s  {event.get('decision', '-'):8s}  "
        f"p_spoof={_fmt(event.get('p_spoof'))}  smoothed={_fmt(event.get('smoothed'))}  "
        f"latency={_fmt(event.get('latency_ms'), 1)}ms  overflows={event.get('overflows', 0)}"
    )


class StdoutSink:
    """Events to a text stream: JSON lines, or human lines for decisions and heartbeats."""

    def __init__(self, json_lines: bool, every_window: bool, stream: TextIO | None = None) -> None:
        self.json_lines = json_lines
        self.every_window = every_window
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def write(self, event: dict[str, Any]) -> None:
        if event.get("type") == "window" and not self.every_window:
            return
        text = encode_event(event) if self.json_lines else human_line(event)
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self.stream.flush()


class FileSink:
    """Events to an EventFile; "window" events only when every-window output is on."""

    def __init__(self, event_file: EventFile, every_window: bool) -> None:
        self.file = event_file
        self.every_window = every_window

    def write(self, event: dict[str, Any]) -> None:
        if event.get("type") == "window" and not self.every_window:
            return
        self.file.write(event)

    def sync_due(self) -> None:
        self.file.sync_due()

    def close(self) -> None:
        self.file.close()
