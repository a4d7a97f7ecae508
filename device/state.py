"""What the listening agent knows now: counters, the latest window, histograms, history.

Shared between the stream loop (device.agent) and the HTTP API (device.api), which reads it
for /status, /health, /metrics and the status page. Kept apart from the API so an agent
without one imports no HTTP server, and without MQTT or webhooks no sqlite3 outbox.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from device.runtime import DECISIONS

if TYPE_CHECKING:
    from device.outbox import Outbox
    from device.stream import WindowResult

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
        from device.outbox import render_outbox_metrics  # sqlite3: only when /metrics is asked

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
