"""The HTTP API over real sockets: every endpoint, bad uploads, tokens, and a live agent."""

from __future__ import annotations

import errno
import http.client
import json
import logging
import resource
import select
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from device.api import AgentState, ApiServer
from device.config import ConfigError, require_token_if_exposed
from device.runtime import Scorer
from tests.device_fixtures import (
    REPO,
    device_env,
    http_request,
    noise,
    scenario,
    start_listen,
    streamed_state,
    write_alsa_file_mic,
    write_wav,
)
from tests.hostile_audio import wav_claiming

TOKEN = "t0ken-for-tests"


@pytest.fixture(scope="module")
def scorer(fixture_bundle: Path) -> Scorer:
    return Scorer(fixture_bundle, "int8")


@pytest.fixture
def state(scorer: Scorer) -> AgentState:
    """State after a real stream: the scenario through the pipeline, recorded as the agent does."""
    return streamed_state(scorer)


def _server(scorer: Scorer, state: AgentState, **kwargs) -> ApiServer:
    server = ApiServer("127.0.0.1", 0, scorer, state, **kwargs)
    server.start()
    return server


@pytest.fixture
def api(scorer: Scorer, state: AgentState):
    server = _server(scorer, state, max_upload_bytes=200_000)
    yield server
    server.stop()


def request(server, method: str, path: str, body: bytes | None = None, headers=None):
    address = server if isinstance(server, tuple) else server.address
    return http_request(address, method, path, body, headers)


def test_health_status_metrics(api: ApiServer) -> None:
    status, _, body = request(api, "GET", "/health")
    assert status == 200 and json.loads(body)["status"] == "ok"

    status, headers, body = request(api, "GET", "/status")
    payload = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert payload["windows_scored"] == 27 and payload["silent_windows"] == 3
    assert payload["decision"] == "bonafide"  # the scenario ends on a low tone
    assert payload["latest_window"]["window"] == 26
    assert 0.0 <= payload["latest_window"]["p_spoof"] <= 1.0
    assert payload["decision_changes"] == {"bonafide": 2, "spoof": 1, "silence": 1}
    assert payload["model"]["model_format"] == "int8"

    status, headers, body = request(api, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = set(text.splitlines())
    assert "clad_windows_scored_total 27" in lines
    assert 'clad_decision_changes_total{decision="spoof"} 1' in lines
    assert 'clad_decision{decision="bonafide"} 1' in lines
    assert 'clad_window_latency_seconds_bucket{le="+Inf"} 27' in lines
    assert "clad_window_latency_seconds_count 27" in lines
    assert "clad_inference_seconds_count 27" in lines
    assert "clad_overflows_total 0" in lines
    assert "# TYPE clad_window_latency_seconds histogram" in lines
    # Cumulative buckets never decrease.
    buckets = [
        int(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("clad_inference_seconds_bucket")
    ]
    assert buckets == sorted(buckets)


def test_score_raw_body(api: ApiServer, scorer: Scorer, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", scenario(22050), 22050)
    status, _, body = request(api, "POST", "/score?name=a.wav&windows=1", path.read_bytes())
    result = json.loads(body)
    assert status == 200
    expected = scorer.score_file(path, window_scores=True)
    assert result == dict(expected, file="a.wav")


def _multipart(filename: str, data: bytes, field: str = "file") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_score_multipart_upload(api: ApiServer, scorer: Scorer, tmp_path: Path) -> None:
    path = tmp_path / "clip.flac"
    sf.write(path, noise(1.0, 16000, 0.3), 16000, format="FLAC")
    body, content_type = _multipart("clip.flac", path.read_bytes())
    status, _, data = request(api, "POST", "/score", body, {"Content-Type": content_type})
    result = json.loads(data)
    assert status == 200 and result["file"] == "clip.flac"
    assert result["decision"] == "spoof"
    assert result["score"] == scorer.score_file(path)["score"]


def test_too_large_upload_is_413(api: ApiServer) -> None:
    status, headers, body = request(api, "POST", "/score", b"\0" * 200_001)
    assert status == 413 and headers.get("Connection") == "close"
    assert "larger than the limit of 200000 bytes" in json.loads(body)["error"]


def test_corrupt_upload_is_400(api: ApiServer, tmp_path: Path) -> None:
    good = write_wav(tmp_path / "g.wav", scenario(16000), 16000).read_bytes()
    truncated = good[: len(good) // 2]
    status, _, body = request(api, "POST", "/score?name=cut.wav", truncated)
    payload = json.loads(body)
    assert status == 400 and payload["file"] == "cut.wav"
    assert "truncated WAV" in payload["error"]

    status, _, body = request(api, "POST", "/score", b"this is not audio at all")
    assert status == 400 and "expected WAV, FLAC, OGG or MP3" in json.loads(body)["error"]

    body, content_type = _multipart("x.wav", b"", field="note2")
    body = body.replace(b'; filename="x.wav"', b"")
    status, _, data = request(api, "POST", "/score", body, {"Content-Type": content_type})
    assert status == 400 and "expected a file part" in json.loads(data)["error"]

    status, _, data = request(api, "POST", "/score", b"", {"Content-Type": "audio/wav"})
    assert status == 400 and "empty" in json.loads(data)["error"]
    metrics = request(api, "GET", "/metrics")[2].decode()
    assert "clad_api_score_errors_total 4" in metrics.splitlines()


def test_ipv6_loopback(scorer: Scorer, state: AgentState) -> None:
    try:
        server = ApiServer("::1", 0, scorer, state)
    except OSError as error:
        # Only a kernel without IPv6 (no address family) or without ::1 (no loopback address)
        # is a reason to skip; any other error (a bind bug, a wrong family) fails the test.
        if error.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        pytest.skip(f"no IPv6 loopback here ({error})")
    server.start()
    try:
        assert request(("::1", server.address[1]), "GET", "/health")[0] == 200
    finally:
        server.stop()


def test_unknown_endpoint_is_404_and_a_wrong_method_405(api: ApiServer) -> None:
    status, _, body = request(api, "GET", "/nope")
    assert status == 404 and "GET /health" in json.loads(body)["error"]
    status, headers, body = request(api, "POST", "/health", b"")
    assert status == 405 and headers["Allow"] == "GET, HEAD"
    assert request(api, "DELETE", "/score")[0] == 405


def test_token_is_checked_on_every_endpoint(scorer: Scorer, state: AgentState, tmp_path) -> None:
    server = _server(scorer, state, token=TOKEN)
    try:
        for method, path in (
            ("GET", "/health"),
            ("GET", "/status"),
            ("GET", "/metrics"),
            ("POST", "/score"),
        ):
            status, headers, body = request(server, method, path, b"")
            assert status == 401 and "missing" in json.loads(body)["error"]
            assert headers["WWW-Authenticate"].startswith("Bearer")
            wrong = {"Authorization": "Bearer not-it"}
            status, _, body = request(server, method, path, b"", wrong)
            assert status == 401 and "wrong" in json.loads(body)["error"]
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert request(server, "GET", "/status", None, good)[0] == 200
        wav = write_wav(tmp_path / "a.wav", scenario(16000), 16000).read_bytes()
        assert request(server, "POST", "/score", wav, good)[0] == 200
    finally:
        server.stop()


def test_a_token_is_required_beyond_loopback() -> None:
    for listen in ("0.0.0.0:8787", "192.168.1.20:8787", "[::]:8787", "pi.local:8787"):
        with pytest.raises(ConfigError, match="a bearer token is required"):
            require_token_if_exposed(listen, None)
        require_token_if_exposed(listen, TOKEN)
    for listen in ("127.0.0.1:8787", "localhost:8787", "[::1]:8787", "127.0.0.2:1"):
        require_token_if_exposed(listen, None)


def test_listen_refuses_to_expose_the_api_without_a_token(fixture_bundle, tmp_path) -> None:
    audio = write_wav(tmp_path / "a.wav", scenario(16000), 16000)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "device",
            "listen",
            "--bundle",
            str(fixture_bundle),
            "--source",
            str(audio),
            "--api",
            "0.0.0.0:0",
        ],
        cwd=REPO,
        env=device_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "a bearer token is required" in out.stderr


def test_health_is_503_while_the_microphone_is_missing(scorer: Scorer, tmp_path, monkeypatch):
    pytest.importorskip("pyaudio")
    from device.sources import MicSource

    monkeypatch.setenv("ALSA_CONFIG_PATH", str(write_alsa_file_mic(tmp_path / "a.conf", None)))
    source = MicSource(device="usb", backoff_initial_s=0.05, backoff_max_s=0.1)
    state = AgentState({}, source_stats=lambda: source.stats)
    server = _server(scorer, state)
    source.start()
    try:
        deadline = time.monotonic() + 10
        while source.stats.state != "backoff" and time.monotonic() < deadline:
            time.sleep(0.02)
        status, _, body = request(server, "GET", "/health")
        payload = json.loads(body)
        assert status == 503 and payload == dict(payload, status="degraded", source_state="backoff")
        status_payload = json.loads(request(server, "GET", "/status")[2])
        assert "no input device whose name contains 'usb'" in status_payload["source"]["last_error"]
    finally:
        source.stop()
        server.stop()


def test_live_agent_serves_status_while_listening(fixture_bundle, tmp_path) -> None:
    """`listen --api` end to end: the start event names the port; /status follows the stream."""
    audio = write_wav(tmp_path / "a.wav", np.tile(scenario(16000), 3), 16000)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)  # a token others can read is refused
    process = start_listen(
        fixture_bundle,
        *("--source", str(audio), "--realtime", "--json"),
        *("--api", "127.0.0.1:0", "--api-token-file", str(token_file)),
    )
    try:
        start = json.loads(process.stdout.readline())
        assert start["type"] == "start" and start["api"].startswith("http://127.0.0.1:")
        port = int(start["api"].rsplit(":", 1)[1])
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert request(("127.0.0.1", port), "GET", "/status")[0] == 401
        deadline = time.monotonic() + 20
        scored = 0
        while scored < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
            status, _, body = request(("127.0.0.1", port), "GET", "/status", None, good)
            assert status == 200
            scored = json.loads(body)["windows_scored"]
        assert scored >= 3
        status, _, body = request(("127.0.0.1", port), "GET", "/health", None, good)
        assert status == 200 and json.loads(body)["source_state"] == "running"
        # POST /score while the stream is scored: the upload's scores are those of the same
        # bundle in-process, and the stream goes on.
        upload = write_wav(tmp_path / "upload.wav", scenario(22050), 22050)
        status, _, body = request(
            ("127.0.0.1", port), "POST", "/score?name=upload.wav", upload.read_bytes(), good
        )
        assert status == 200, body
        expected = Scorer(fixture_bundle, "int8").score_file(upload)
        assert json.loads(body) == dict(expected, file="upload.wav")
        status, _, body = request(("127.0.0.1", port), "GET", "/status", None, good)
        assert status == 200 and json.loads(body)["windows_scored"] >= scored
        process.terminate()
        process.wait(timeout=15)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------- hostile clients


def raw_exchange(server: ApiServer, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(server.address, timeout=timeout_s) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def poll(get, done, timeout_s: float = 30.0):
    """`get()` every 20 ms until `done(result)`; the last result. The timeout only stops a
    hang: how soon the server gets there is not asserted (a loaded machine is slow)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = get()
        if done(result) or time.monotonic() > deadline:
            return result
        time.sleep(0.02)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


@pytest.mark.parametrize(
    ("length_header", "status", "message"),
    [
        ("Content-Length: -1\r\n", 400, "one non-negative integer, got ['-1']"),
        ("Content-Length: +5\r\n", 400, "one non-negative integer"),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400, "got ['5', '6']"),
        ("", 411, "expected a Content-Length header"),
        ("Transfer-Encoding: chunked\r\n", 411, "chunked uploads are not accepted"),
        ("Content-Length: 999999999\r\n", 413, "larger than the limit of 200000 bytes"),
    ],
)
def test_content_length_is_strict_and_checked_before_reading(
    api: ApiServer, length_header: str, status: int, message: str
) -> None:
    # No body follows: every answer must come from the headers alone, then the server closes.
    head = f"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\n{length_header}\r\n".encode()
    response = raw_exchange(api, head)
    assert status_of(response) == status
    assert message in json_body(response)["error"]
    assert b"Connection: close" in response
    assert request(api, "GET", "/health")[0] == 200  # and the server goes on


def test_the_token_is_checked_before_the_body_and_401s_are_logged(
    scorer: Scorer, state: AgentState, caplog
) -> None:
    server = _server(scorer, state, token=TOKEN)
    try:
        with caplog.at_level(logging.WARNING, logger="device.api"):
            head = b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 150000\r\n\r\n"
            response = raw_exchange(server, head)  # the 150 kB body never comes
        assert status_of(response) == 401
        assert any("401 missing bearer token for POST /score" in r.message for r in caplog.records)
    finally:
        server.stop()


def test_head_gives_the_get_headers_without_a_body(api: ApiServer) -> None:
    connection = http.client.HTTPConnection(*api.address, timeout=10)
    try:
        connection.request("HEAD", "/status")
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b""
        assert int(response.getheader("Content-Length")) > 100
        connection.request("GET", "/health")  # the same keep-alive connection still works
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def test_a_get_body_is_not_parsed_as_a_second_request(api: ApiServer) -> None:
    smuggled = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(smuggled)}\r\n\r\n"
    response = raw_exchange(api, head.encode() + smuggled)
    assert response.count(b"HTTP/1.1 ") == 1 and status_of(response) == 200


def test_slowloris_headers_time_out_and_free_the_slot(scorer: Scorer, state: AgentState) -> None:
    server = _server(scorer, state, max_connections=1, header_timeout_s=0.3)
    try:
        with socket.create_connection(server.address, timeout=10) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # never ends
            assert slow.recv(65536) == b""  # the server hung up on the silent client
        # the slot is freed once the handler thread has finished
        response = poll(
            lambda: raw_exchange(server, b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"),
            lambda response: status_of(response) == 200,
        )
        assert status_of(response) == 200
    finally:
        server.stop()


def test_headers_trickled_byte_by_byte_still_hit_the_deadline(
    scorer: Scorer, state: AgentState
) -> None:
    """A per-read timeout alone never fires for a client that sends a byte every 0.05 s."""
    server = _server(scorer, state, header_timeout_s=0.3)
    try:
        with socket.create_connection(server.address, timeout=10) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nX-Slow: ")
            hung_up = False
            for _ in range(200):  # 10 s of trickling at most; the deadline is 0.3 s
                try:
                    slow.sendall(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    hung_up = True
                    break
                time.sleep(0.05)
            assert hung_up
    finally:
        server.stop()


def test_connections_over_the_cap_get_503_with_retry_after(
    scorer: Scorer, state: AgentState
) -> None:
    server = _server(scorer, state, max_connections=2)
    idle = [socket.create_connection(server.address, timeout=10) for _ in range(2)]
    try:
        response = raw_exchange(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert status_of(response) == 503 and b"Retry-After: 1" in response
        assert "too many connections (the limit is 2)" in json_body(response)["error"]
        for conn in idle:
            conn.close()
        response = poll(
            lambda: raw_exchange(server, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n"),
            lambda response: status_of(response) == 200,
        )
        assert b"clad_api_refused_connections_total " in response
        assert b"clad_api_refused_connections_total 0\n" not in response
    finally:
        for conn in idle:
            conn.close()
        server.stop()


def test_concurrent_scoring_is_capped_with_503(scorer: Scorer, state: AgentState) -> None:
    server = _server(scorer, state, max_concurrent_scores=1)
    head = b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nRIFF"
    slow = socket.create_connection(server.address, timeout=10)
    slow.sendall(head)

    def probe() -> tuple:
        """One small upload; but when a probe held the slot as the slow upload arrived, the
        slow one was the upload refused (503): start it again."""
        nonlocal slow
        if select.select([slow], [], [], 0)[0]:
            assert status_of(slow.recv(65536)) == 503
            slow.close()
            slow = socket.create_connection(server.address, timeout=10)
            slow.sendall(head)
            return (None, {}, b"")
        return request(server, "POST", "/score", b"x" * 10)

    try:
        # until the slow upload holds the only scoring slot
        status, headers, body = poll(probe, lambda reply: reply[0] == 503)
        assert status == 503 and headers["Retry-After"] == "1"
        assert "1 upload(s) already being scored" in json.loads(body)["error"]
        slow.sendall(b"\0" * 996)
        reply = b""
        while b"\r\n\r\n" not in reply:
            reply += slow.recv(65536)
        assert status_of(reply) == 400  # the slow upload is answered (not audio), slot freed
        assert request(server, "POST", "/score", b"x" * 10)[0] == 400
    finally:
        slow.close()
        server.stop()


def test_host_allow_list_beyond_loopback_with_a_token(scorer: Scorer, state: AgentState) -> None:
    server = ApiServer("0.0.0.0", 0, scorer, state, token=TOKEN, allowed_hosts=("pi.example",))
    server.start()
    port = server.address[1]
    good = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for host, expected in (
            ("evil.example", 421),
            (f"rebind.attacker.test:{port}", 421),
            (f"127.0.0.1:{port}", 200),
            (f"pi.example:{port}", 200),
            ("localhost", 200),
        ):
            status, _, body = request(
                ("127.0.0.1", port), "GET", "/status", None, dict(good, Host=host)
            )
            assert status == expected, (host, body)
        assert (
            "is not this agent"
            in json.loads(
                request(("127.0.0.1", port), "GET", "/health", None, {"Host": "evil.example"})[2]
            )["error"]
        )
    finally:
        server.stop()


def test_a_4mhz_wav_upload_is_refused_from_its_header(api: ApiServer, tmp_path: Path) -> None:
    """Before: 3.2 GB peak RSS and ~15 s for this 90 kB file. Now refused before decoding."""
    data = wav_claiming(tmp_path / "claim.wav", 4_000_037).read_bytes()
    peak_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    status, _, body = request(api, "POST", "/score?name=claim.wav", data)
    peak_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before_kib) / 1024
    assert status == 400
    assert "sample rate 4000037 Hz is out of range" in json.loads(body)["error"]
    assert peak_growth_mib < 200


def test_an_exception_inside_a_request_is_a_json_500(scorer: Scorer) -> None:
    """A source whose stats fail: made to fail on purpose (no real source fails on demand)."""

    def broken_stats():
        raise RuntimeError("stats exploded")

    server = _server(scorer, AgentState({}, source_stats=broken_stats))
    try:
        status, headers, body = request(server, "GET", "/status")
        assert status == 500 and headers["Connection"] == "close"
        assert json.loads(body)["error"] == "internal error: RuntimeError: stats exploded"
    finally:
        server.stop()
