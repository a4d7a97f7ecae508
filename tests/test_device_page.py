"""The live status page in a real headless Chromium: it renders the agent's data, plots the
smoothed score, takes a screenshot, and obeys the token rule."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from device.api import AgentState, ApiServer
from device.page import PAGE_HTML
from device.runtime import Scorer
from tests.device_fixtures import http_request, streamed_state

TOKEN = "t0ken-for-page-tests"


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("chromium is not installed (scripts/install-system-deps.sh installs it)")


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
