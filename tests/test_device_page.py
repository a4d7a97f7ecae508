"""The live status page in a real headless Chromium: it renders the agent's data, plots the
smoothed score, takes a screenshot, obeys the token rule, and stays correct across a restart
of the agent while one browser session keeps the page open."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from device.api import AgentState, ApiServer
from device.page import PAGE_HTML
from device.runtime import Scorer
from tests.browser import NAVIGATION_TIMING_JS, Chromium, Tab, chromium_or_skip
from tests.device_fixtures import (
    REPO,
    device_env,
    http_request,
    noise,
    streamed_state,
    tone,
    write_wav,
)

TOKEN = "t0ken-for-page-tests"


def chromium(url: str, tmp_path: Path, *mode: str) -> tuple[subprocess.CompletedProcess, float]:
    command = [
        chromium_or_skip(),
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
        *("--disable-component-update", "--disable-sync", "--no-first-run"),
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1000,800",
        "--virtual-time-budget=3000",
        *mode,
        url,
    ]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, timeout=120, cwd=tmp_path)
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def scorer(fixture_bundle: Path) -> Scorer:
    return Scorer(fixture_bundle, "int8")


@pytest.fixture
def state(scorer: Scorer) -> AgentState:
    """A real stream's windows and decision events, recorded as the agent does."""
    return streamed_state(scorer, latency_ms=1.0, note_decisions=True)


def get(address: tuple[str, int], path: str, headers: dict | None = None):
    return http_request(address, "GET", path, None, headers)


def test_the_page_is_self_contained() -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", PAGE_HTML)
    assert "http://" not in PAGE_HTML and "https://" not in PAGE_HTML


def test_the_page_renders_the_plot_in_chromium(
    scorer: Scorer, state: AgentState, tmp_path: Path
) -> None:
    server = ApiServer("127.0.0.1", 0, scorer, state)
    server.start()
    try:
        status, headers, body = get(server.address, "/")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        status, _, body = get(server.address, "/history")
        history = json.loads(body)
        url = "http://{}:{}/".format(*server.address)
        dom, dom_wall_s = chromium(url, tmp_path, "--dump-dom")
        shot, _ = chromium(url, tmp_path, f"--screenshot={tmp_path / 'page.png'}")
    finally:
        server.stop()

    plotted = sum(1 for p in history["points"] if p[1] is not None)
    assert status == 200 and len(history["points"]) == 27 and plotted >= 20
    assert history["decision"] == "bonafide" and len(history["events"]) == 4

    html = dom.stdout.decode()
    assert dom.returncode == 0, dom.stderr.decode()[-2000:]
    assert f'data-points="{plotted}"' in html
    line = re.search(r'id="line"[^>]*points="([^"]*)"', html)
    assert line is not None and len(line.group(1).split()) == plotted
    assert re.search(r'id="decision" class="bonafide">bonafide<', html)
    assert "windows scored" in html and ">27<" in html
    assert '<div id="err"></div>' in html  # no fetch failed
    loaded_ms = float(re.search(r'data-loaded-ms="([0-9.]+)"', html).group(1))
    assert loaded_ms > 0

    png = tmp_path / "page.png"
    assert shot.returncode == 0, shot.stderr.decode()[-2000:]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    print(f"page: first data drawn at {loaded_ms} ms; chromium --dump-dom run {dom_wall_s:.2f} s")


def test_the_page_and_its_data_need_the_token_when_one_is_set(
    scorer: Scorer, state: AgentState, tmp_path: Path
) -> None:
    server = ApiServer("127.0.0.1", 0, scorer, state, token=TOKEN)
    server.start()
    try:
        assert get(server.address, "/")[0] == 401
        assert get(server.address, "/history")[0] == 401
        assert get(server.address, "/?access_token=wrong")[0] == 401
        assert get(server.address, f"/?access_token={TOKEN}")[0] == 200
        assert get(server.address, "/history", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
        base = "http://{}:{}/".format(*server.address)
        denied, _ = chromium(base, tmp_path, "--dump-dom")
        allowed, _ = chromium(f"{base}?access_token={TOKEN}", tmp_path, "--dump-dom")
    finally:
        server.stop()
    assert "wrong bearer token" not in denied.stdout.decode()
    assert "missing bearer token" in denied.stdout.decode()  # the 401 JSON, not the page
    html = allowed.stdout.decode()
    assert 'data-points="0"' not in html and re.search(r'data-points="[1-9]', html)


# --------------------------------------------------------------------------- agent restart


def start_agent(bundle: Path, audio: Path, port: int, log: Path) -> tuple[subprocess.Popen, int]:
    """`clad-agent listen --api` replaying `audio` in real time; (process, its API port)."""
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "device", "listen", "--bundle", str(bundle)),
                *("--source", str(audio), "--realtime", "--json", "--heartbeat-s", "1"),
                *("--api", f"127.0.0.1:{port}"),
            ],
            cwd=REPO,
            env=device_env(),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise AssertionError(f"the agent exited {process.returncode}: {log.read_text()[-2000:]}")
    start = json.loads(line)
    assert start["type"] == "start" and start["api"].startswith("http://127.0.0.1:")
    # keep reading its stdout so the agent never blocks on a full pipe
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, int(start["api"].rsplit(":", 1)[1])


def stop_agent(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


PAGE_VIEW = """(() => {
  const b = document.body, d = document.getElementById("decision");
  return {state: b.dataset.state, draws: Number(b.dataset.draws), decision: d.textContent,
    decision_class: d.className, smoothed: document.getElementById("smoothed").textContent,
    points: Number(document.getElementById("plot").dataset.points),
    plot_stale: document.getElementById("plot").classList.contains("stale"),
    stale: document.getElementById("stale").textContent,
    err: document.getElementById("err").textContent,
    windows: [...document.querySelectorAll("#counters tr")].map((r) => [r.cells[0].textContent,
      r.cells[1].textContent]).find((c) => c[0] === "windows scored"),
    navigations: performance.getEntriesByType("navigation").length,
    marker: window.restartTestMarker || null};
})()"""


def status_of(port: int) -> dict:
    status, _, body = get(("127.0.0.1", port), "/status")
    assert status == 200
    return json.loads(body)


def wait_for_decision(tab: Tab, port: int, decision: str, timeout_s: float = 30.0) -> dict:
    """The page, live, showing `decision`, which is also what /status says right after."""
    tab.wait_for(
        "document.body.dataset.state === 'live' && "
        f"document.getElementById('decision').textContent === '{decision}' && "
        "Number(document.getElementById('plot').dataset.points) >= 3",
        timeout_s,
    )
    view = tab.evaluate(PAGE_VIEW)
    assert status_of(port)["decision"] == view["decision"] == decision
    return view


def test_the_page_stays_correct_across_an_agent_restart(
    fixture_bundle: Path, tmp_path: Path
) -> None:
    """One browser session keeps the page open while the agent stops and starts again."""
    rate = 16000
    bona = write_wav(
        tmp_path / "bona.wav", tone(220.0, 60.0, rate, 0.4) + noise(60.0, rate, 0.01), rate
    )
    spoof = write_wav(tmp_path / "spoof.wav", noise(60.0, rate, 0.25, seed=1), rate)
    first, port = start_agent(fixture_bundle, bona, 0, tmp_path / "agent-1.log")
    second = None
    try:
        with Chromium(tmp_path / "chromium") as browser:
            tab = browser.open(f"http://127.0.0.1:{port}/")
            timing = tab.wait_for(
                f"document.body.dataset.loadedMs && {NAVIGATION_TIMING_JS}", timeout_s=20
            )
            tab.evaluate("window.restartTestMarker = 'same document'")

            before = wait_for_decision(tab, port, "bonafide")
            assert before["decision_class"] == "bonafide" and not before["plot_stale"]
            assert before["err"] == "" and before["stale"] == ""
            assert float(before["smoothed"]) < 0.5
            tab.screenshot(tmp_path / "1-live.png")

            assert stop_agent(first) == 0
            with pytest.raises(OSError):
                get(("127.0.0.1", port), "/status")
            tab.wait_for("document.body.dataset.state === 'unreachable'", timeout_s=15)
            away = tab.evaluate(PAGE_VIEW)
            assert away["decision"] == "unreachable" and away["decision_class"] == "unreachable"
            assert away["smoothed"] == "-" and away["plot_stale"]
            assert away["stale"].startswith("(not live: last data ")
            assert away["err"].startswith("agent unreachable (")
            tab.screenshot(tmp_path / "2-unreachable.png")
            time.sleep(3)  # a few failed refreshes: the page goes on saying so
            assert tab.evaluate(PAGE_VIEW)["state"] == "unreachable"

            second, again = start_agent(fixture_bundle, spoof, port, tmp_path / "agent-2.log")
            assert again == port
            after = wait_for_decision(tab, port, "spoof")
            scored_by_second = status_of(port)["windows_scored"]
            tab.screenshot(tmp_path / "3-recovered.png")
    finally:
        for process in (first, second):
            if process is not None:
                stop_agent(process)

    # recovered by itself: the same document (no reload), new data from the new agent
    assert after["marker"] == "same document" and after["navigations"] == 1
    assert after["draws"] > before["draws"] and after["decision_class"] == "spoof"
    assert not after["plot_stale"] and after["err"] == "" and after["stale"] == ""
    assert float(after["smoothed"]) > 0.5
    assert 3 <= after["points"] <= scored_by_second  # only the new agent's windows
    assert int(after["windows"][1]) <= scored_by_second
    for name in ("1-live.png", "2-unreachable.png", "3-recovered.png"):
        png = (tmp_path / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    print(f"page load on loopback (Navigation Timing, ms): {json.dumps(timing)}")
