"""The listening agent: a source, the stream pipeline, event sinks and the API, run together.

    build_agent(settings) -> Agent;  Agent.run() -> exit status;  Agent.request_stop(reason)

`run()` takes chunks from the source, scores every window they complete, records the
result for /status and /metrics, and writes events (decision changes, heartbeats, and
every window where asked). A stop request (SIGTERM/SIGINT, installed by the cli) is
honoured after the current chunk's windows are scored: the events are flushed, the stream
closed, and run() returns 0. The end of a finite source (a file, stdin) scores the tail
windows a file of the same audio has and also returns 0; a reader thread that died of an
error returns 1, so systemd's Restart=on-failure restarts the agent.

Faults keep detection alive: an event that cannot be written to the event file (a full
disk) is logged, counted in /metrics and turns /health "degraded" while detection goes on
to stdout and the API; the file recovers by itself when writes succeed again. Under systemd
(Type=notify) the agent sends READY=1 once listening and WATCHDOG=1 from its main loop while
that loop runs and windows keep coming, so a hung or stalled agent is restarted.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from device.audio import SAMPLE_RATE
from device.bundle import BundleError
from device.config import Settings, parse_listen, require_token_if_exposed, resolve_token
from device.events import (
    EVENT_SCHEMA_VERSION,
    EventFile,
    EventFileError,
    FileSink,
    SpoolError,
    StdoutSink,
    utc_now_iso,
)
from device.runtime import Scorer
from device.sources import END, FileSource, MicSource, Source, SourceError, StdinSource
from device.state import AgentState
from device.stream import StreamPipeline, WindowResult

if TYPE_CHECKING:
    from device.api import ApiServer

log = logging.getLogger("device.agent")


EXIT_SOURCE_FAILED = 1
"""run()'s status when the source's reader died of an error (systemd restarts on it)."""


class Sink(Protocol):
    def write(self, event: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


class SdNotify:
    """systemd's notify protocol over $NOTIFY_SOCKET (a datagram socket), stdlib only.

    Does nothing when not started by systemd with Type=notify. `watchdog_s` is WatchdogSec
    ($WATCHDOG_USEC) when systemd asks this process for keep-alives, else None.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        for_us = not pid or (pid.isdigit() and int(pid) == os.getpid())
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 and for_us else None
        self._warned = False

    def send(self, message: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as error:
            if not self._warned:
                log.warning("sd_notify to %s failed (%s)", self.address, error)
                self._warned = True
            return False
        return True


_PROBE = """
import importlib, sys
import numpy as np
Interpreter = importlib.import_module(sys.argv[1]).Interpreter
try:
    interpreter = Interpreter(model_path=sys.argv[2])
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for fill in ("zeros", "noise"):  # silence, then values across the input type's range
        for detail in interpreter.get_input_details():
            x = np.zeros(detail["shape"], dtype=detail["dtype"])
            if fill == "noise" and np.issubdtype(x.dtype, np.integer):
                info = np.iinfo(x.dtype)
                x[...] = rng.integers(info.min, int(info.max) + 1, x.shape)
            elif fill == "noise":
                x[...] = rng.uniform(-1.0, 1.0, x.shape)
            interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
except (ValueError, RuntimeError) as error:
    print(" ".join(str(error).split()))  # stdout: the runtime's own logs go to stderr
    sys.exit(int(sys.argv[3]))
"""
PROBE_REFUSED = 3  # the probe's exit status when the interpreter refused the model with an error

PROBE_TIMEOUT_S = 120.0
MAX_PROBE_REASON_CHARS = 400  # of the interpreter's message, quoted in the error
LOOP_WAIT_S = 0.5  # the longest the loop waits for a chunk: a stop is noticed within it
SYNC_RETRY_S = 0.25  # an overdue fsync is tried again at most this often


def probe_model(
    bundle: str | Path,
    model_format: str,
    timeout_s: float = PROBE_TIMEOUT_S,
    public_key: str | Path | None = None,
) -> None:
    """Load the bundle's model and run it in a child process first: on silence, then on
    noise across the input type's range.

    A damaged or tampered model (its manifest hash recomputed) can crash the interpreter
    outright: 21 of 30 byte-flipped fixture models died of SIGSEGV or SIGBUS. In a child the
    crash becomes a BundleError naming the signal instead of killing the agent (or a whole
    `score` batch). The child imports only numpy and the interpreter module this process
    chose (about 0.2 s, not the 1.4 s of device.runtime with scipy). An error the
    interpreter raises in the child refuses the model too, with the interpreter's words. A
    child that fails otherwise says nothing here: loading in process then reports that error.
    """
    from device.bundle import load_bundle
    from device.runtime import find_interpreter

    if public_key:  # a signed bundle is required: check before anything is loaded
        from device.signing import verify_bundle

        verify_bundle(Path(bundle), Path(public_key))
    model_path = load_bundle(bundle).model_path(model_format)
    runtime = find_interpreter()
    try:
        child = subprocess.run(
            [sys.executable, "-c", _PROBE, runtime.module, str(model_path), str(PROBE_REFUSED)],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise BundleError(
            f"{model_path}: the model did not load and run within {timeout_s:g} s in a probe "
            "process"
        ) from error
    except OSError as error:
        if error.errno not in (errno.ENOEXEC, errno.EACCES):
            raise
        # This interpreter cannot start a copy of itself: seen under qemu user-mode
        # emulation without binfmt_misc (`make test-arm`: "Exec format error"). A Pi runs
        # natively; here the model is loaded in process as before the probe existed.
        log.debug("model probe could not start (%s); loading the model in process", error)
        return
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        raise BundleError(
            f"{model_path}: the model crashed the interpreter ({name}) when run in a probe "
            "process: the model file is damaged or was altered; copy the bundle again from "
            "its source"
        )
    if child.returncode == PROBE_REFUSED:
        # Not loaded again in process: a damaged model that errs in one run can crash the
        # next one (a byte-flipped fixture model raised "Registration failed." in 9 of 20
        # probes and died of SIGSEGV in the other 11).
        reason = child.stdout.decode("utf-8", "replace").strip()[:MAX_PROBE_REASON_CHARS]
        raise BundleError(
            f"{model_path}: {runtime.module} cannot load and run the model ({reason}): the "
            "model file is damaged, was altered, or needs a newer runtime"
        )
    if child.returncode != 0:
        tail = child.stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
        log.debug("model probe exited %d: %s", child.returncode, tail)


def build_source(settings: Settings) -> Source:
    s = settings.source
    if s.kind == "file":
        return FileSource(
            s.path,
            realtime=s.realtime,
            chunk_ms=s.chunk_ms,
            queue_chunks=s.queue_chunks,
            max_seconds=s.max_seconds,
        )
    if s.kind == "stdin":
        if not s.sample_rate:
            raise SourceError("stdin: raw PCM has no header; give its sample rate with --rate")
        return StdinSource(
            s.sample_rate,
            s.channels,
            chunk_ms=s.chunk_ms,
            queue_chunks=s.queue_chunks,
            max_seconds=s.max_seconds,
        )
    return MicSource(
        device=s.device or None,
        sample_rate=s.sample_rate or None,
        channels=s.channels,
        chunk_ms=s.chunk_ms,
        queue_chunks=s.queue_chunks,
        backoff_initial_s=s.backoff_initial_s,
        backoff_max_s=s.backoff_max_s,
        max_seconds=s.max_seconds,
    )


class Agent:
    def __init__(
        self,
        settings: Settings,
        scorer: Scorer,
        source: Source,
        sinks: list[Sink],
        api: ApiServer | None,
        state: AgentState,
    ) -> None:
        self.settings = settings
        self.scorer = scorer
        self.source = source
        self.sinks = sinks
        self.api = api
        self.state = state
        self.pipeline = StreamPipeline(scorer, settings.decision.with_threshold(scorer.threshold))
        self.pipeline.prepare(source.expected_rate)  # a resampler's imports before listening
        self.heartbeat_s = settings.events.heartbeat_s
        self._stop = threading.Event()
        self._stop_reason = ""
        self._last_event_s = time.monotonic()
        self.notify = SdNotify()
        self._last_watchdog_s = 0.0
        stall_s = settings.source.stall_s
        # Expected audio: a window needs window + hop samples at most after the last one.
        floor_s = (scorer.window_samples + scorer.hop_samples) / SAMPLE_RATE
        state.stall_after_s = max(stall_s, floor_s) if stall_s > 0 else None

    @property
    def _wait_s(self) -> float:
        """How long the loop may wait for a chunk before its periodic duties are due (a
        heartbeat, a watchdog ping, an fsync, noticing a stop or a source's new state): up to
        LOOP_WAIT_S, so that a 256 ms chunk is one wake-up, not a time-out and a wake-up."""
        wait_s = min(LOOP_WAIT_S, self.heartbeat_s)
        if self.notify.watchdog_s is not None:
            wait_s = min(wait_s, self.notify.watchdog_s / 4)
        for sink in self.sinks:
            due_in_s = sink.file.sync_due_in_s() if isinstance(sink, FileSink) else None
            if due_in_s is not None:
                # Not below SYNC_RETRY_S: on a failing disk the sync stays due, and the loop
                # retries (and logs) at the pace it always did, not as fast as it can.
                wait_s = min(wait_s, max(due_in_s, SYNC_RETRY_S))
        return max(0.01, wait_s)

    def request_stop(self, reason: str) -> None:
        """Ask run() to finish the current chunk and return (safe from a signal handler)."""
        if not self._stop_reason:
            self._stop_reason = reason
        self._stop.set()

    # ----------------------------------------------------------------- events

    def _emit(self, event: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.write(event)
            except SpoolError as error:  # an outbox's spool: log it, detection goes on
                self.state.event_write_failed(str(error))
                log.error("%s; detection goes on", error)
                continue
            except EventFileError as error:  # a full disk must not end detection
                first = not self.state.event_file_error
                self.state.event_write_failed(str(error))
                if first or self.state.event_write_errors % 100 == 0:
                    log.error(
                        "%s; detection goes on (stdout, API); %d event(s) not written so far",
                        error,
                        self.state.event_write_errors,
                    )
                continue
            if isinstance(sink, FileSink) and self.state.event_file_error:
                log.warning(
                    "event file writable again after %d lost event(s)",
                    self.state.event_write_errors,
                )
                self.state.event_write_recovered()
        if event["type"] != "window":
            self._last_event_s = time.monotonic()
            self.state.note_event(event)

    def _maybe_watchdog(self) -> None:
        """WATCHDOG=1 at half the interval, unless the source runs but no window comes."""
        if self.notify.watchdog_s is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog_s < self.notify.watchdog_s / 2:
            return
        status, _ = self.state.health()
        stalled = status == "unhealthy" and self.source.stats.state == "running"
        if not stalled:
            self.notify.send("WATCHDOG=1")
            self._last_watchdog_s = now

    def _base(self, kind: str) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA_VERSION,
            "type": kind,
            "time": utc_now_iso(),
            "monotonic_s": round(time.monotonic(), 6),
            "source": self.source.name,
        }

    def _window_event(self, kind: str, result: WindowResult | None) -> dict[str, Any]:
        event = self._base(kind)
        if kind == "heartbeat":
            latency_ms = self.state.latest_latency_ms  # that window's own event latency
        else:
            latency_ms = None if result is None else (time.monotonic() - result.arrival_s) * 1e3
        if result is not None:
            event.update(
                window=result.index,
                start_s=round(result.start_s, 6),
                p_spoof=result.p_spoof,
                silent=result.silent,
                rms_dbfs=round(result.rms_dbfs, 2),
                smoothed=result.smoothed,
                decision=result.decision,
                previous=result.previous,
            )
        else:
            event.update(decision=self.pipeline.decider.decision, smoothed=None)
        event.update(
            threshold=self.scorer.threshold,
            inference_ms=None if result is None else round(result.inference_ms, 3),
            latency_ms=None if latency_ms is None else round(latency_ms, 3),
            overflows=self.source.stats.overflows,
            windows_scored=self.pipeline.windows_scored,
        )
        if kind == "heartbeat":
            event.pop("previous", None)
            event["source_state"] = self.source.stats.state
        return event

    def _handle(self, results: list[WindowResult]) -> None:
        for result in results:
            event = self._window_event("decision" if result.changed else "window", result)
            self.state.record(result, event["latency_ms"])
            self._emit(event)

    def _source_events(self) -> None:
        """A "source" event each time the source starts capturing, fails, reopens or ends."""
        for stats in self.source.pop_transitions():
            event = self._base("source")
            event.update(
                source_state=stats.state,
                device=stats.device,
                sample_rate=stats.sample_rate,
                channels=stats.channels,
                errors=stats.errors,
                reopens=stats.reopens,
                last_error=stats.last_error,
                overflows=stats.overflows,
            )
            self._emit(event)

    def _maybe_sync(self) -> None:
        """fsync the event file's "window" lines older than events.fsync_interval_s."""
        for sink in self.sinks:
            if isinstance(sink, FileSink):
                try:
                    sink.sync_due()
                except EventFileError as error:
                    self.state.event_write_failed(str(error))
                    log.error("%s; detection goes on (stdout, API)", error)

    def _maybe_heartbeat(self) -> None:
        if time.monotonic() - self._last_event_s >= self.heartbeat_s:
            self._emit(self._window_event("heartbeat", self.state.latest))

    # ----------------------------------------------------------------- run

    def run(self) -> int:
        start = self._base("start")
        start.update(
            pid=os.getpid(),
            **self.scorer.describe(),
            **{k: v for k, v in self.source.describe().items() if k != "source"},
            settings=self.settings.to_dict(),
        )
        if self.api is not None:
            start["api"] = "http://{}:{}".format(*self.api.address)
        self._emit(start)
        reason = "end of stream"
        status = 0
        started = time.monotonic()
        self.source.start()
        self.state.started_monotonic = time.monotonic()
        self.notify.send(f"READY=1\nSTATUS=listening to {self.source.name}")
        try:
            while True:
                if self._stop.is_set():
                    reason = self._stop_reason or "stop requested"
                    break
                item = self.source.get(timeout_s=self._wait_s)
                self._source_events()
                if item is END:
                    self._handle(self.pipeline.finish())
                    if self.source.failure:
                        reason = f"source failed: {self.source.failure}"
                        status = EXIT_SOURCE_FAILED
                    break
                if item is not None:
                    self._handle(self.pipeline.feed(item))
                self._maybe_heartbeat()
                self._maybe_sync()
                self._maybe_watchdog()
        finally:
            self.notify.send("STOPPING=1")
            self.source.stop()
            self.state.running = False
            stop = self._base("stop")
            stop.update(
                reason=reason,
                windows_scored=self.pipeline.windows_scored,
                silent_windows=self.pipeline.silent_windows,
                overflows=self.source.stats.overflows,
                source_errors=self.source.stats.errors,
                audio_s=round(self.pipeline.samples_seen / SAMPLE_RATE, 3),
                wall_s=round(time.monotonic() - started, 3),
                decision=self.pipeline.decider.decision,
            )
            try:
                self._emit(stop)
            finally:
                for sink in self.sinks:
                    try:
                        sink.close()
                    except OSError as error:  # e.g. the final fsync on a failing disk
                        log.error("closing an event sink failed: %s", error)
                if self.api is not None:
                    self.api.stop()
        if status:
            log.error("%s; exiting with status %d", reason, status)
        return status


def build_agent(settings: Settings, stdout: Any = None) -> Agent:
    """Everything `listen` needs, from settings; raises BundleError/SourceError/ConfigError/..."""
    m = settings.model
    probe_model(m.bundle, m.model_format, public_key=m.public_key or None)
    scorer = Scorer(
        m.bundle,
        model_format=m.model_format,
        num_threads=m.num_threads,
        threshold=m.threshold,
        silence_floor_dbfs=m.silence_floor_dbfs,
    )
    api_token = None
    if settings.api.listen:
        api_token = resolve_token(settings.api)
        require_token_if_exposed(settings.api.listen, api_token)
    source = build_source(settings)
    sinks: list[Sink] = []
    e = settings.events
    if e.stdout:
        sinks.append(
            StdoutSink(json_lines=e.json, every_window=e.every_window or e.json, stream=stdout)
        )
    if e.file:
        sinks.append(
            FileSink(
                EventFile(e.file, e.max_bytes, e.backups, e.fsync, e.fsync_interval_s),
                every_window=e.every_window,
            )
        )
    state = AgentState(
        {"model": scorer.describe(), "source_name": source.name},
        source_stats=lambda: source.stats,
    )
    if settings.mqtt.url:
        from device.mqtt import MqttPublisher  # paho-mqtt: only when MQTT is configured

        publisher = MqttPublisher(settings.mqtt, scorer.describe())
        sinks.append(publisher)
        state.outboxes.append(publisher.outbox)
    if settings.webhook.urls:
        from device.webhook import WebhookSender

        webhooks = WebhookSender(settings.webhook)
        sinks.append(webhooks)
        state.outboxes.extend(webhooks.outboxes)
    api = None
    if settings.api.listen:
        from device.api import ApiServer  # http.server, email: only when the API is on

        host, port = parse_listen(settings.api.listen)
        a = settings.api
        api = ApiServer(
            host,
            port,
            scorer,
            state,
            api_token,
            a.max_upload_bytes,
            max_connections=a.max_connections,
            max_concurrent_scores=a.max_concurrent_scores,
            header_timeout_s=a.header_timeout_s,
            body_timeout_s=a.body_timeout_s,
            allowed_hosts=a.allowed_hosts,
            max_audio_s=a.max_audio_s,
        )
        api.start()
    return Agent(settings, scorer, source, sinks, api, state)
