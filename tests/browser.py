"""A real headless Chromium driven over the DevTools protocol, stdlib only, for tests.

    with Chromium(tmp_dir) as browser:
        page = browser.open("http://127.0.0.1:8787/")     # a long-lived tab
        page.evaluate("document.title")                   # -> the JS value
        page.wait_for("document.body.dataset.state === 'live'", timeout_s=20)
        page.screenshot(tmp_dir / "page.png")

Chromium is started with --remote-debugging-pipe: it reads protocol messages on its fd 3 and
writes them on its fd 4, each a JSON object ended by a NUL byte. No port is opened and no
websocket client is needed. One tab is attached in flat mode (its sessionId on every command).
Every wait is bounded in time; a protocol error raises BrowserError with Chromium's message.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

# The Navigation Timing API's figures for the page in a tab (ms from navigation start), and
# the status page's own mark of its first data drawn (data-loaded-ms on its <body>).
NAVIGATION_TIMING_JS = """(() => {
  const n = performance.getEntriesByType("navigation")[0];
  return {response_end_ms: n.responseEnd, dom_content_loaded_ms: n.domContentLoadedEventEnd,
    load_event_end_ms: n.loadEventEnd, transfer_bytes: n.transferSize,
    first_data_drawn_ms: Number(document.body.dataset.loadedMs)};
})()"""


class BrowserError(RuntimeError):
    """Chromium answered a command with an error, died, or did not answer in time."""


def chromium_or_skip() -> str:
    """The chromium binary; a skip outside CI when it is missing, a failure under CI=true."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    message = "chromium is not installed (scripts/install-system-deps.sh installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Chromium:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, work_dir: Path, window: tuple[int, int] = (1000, 800)) -> None:
        self.binary = chromium_or_skip()
        self.dir = work_dir.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.window = window
        self.process: subprocess.Popen | None = None
        self._next_id = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._answers: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._closed = False

    def start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # the child's fd 3 and 4 must be exactly these pipes: dup them there after fork
        child_in, child_out = to_child_r, from_child_w

        def fds_3_and_4() -> None:
            high_in, high_out = os.dup(child_in), os.dup(child_out)  # away from 3 and 4
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        command = [
            self.binary,
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
            *("--disable-component-update", "--disable-sync", "--no-first-run"),
            "--disable-extensions",
            "--remote-debugging-pipe",
            f"--user-data-dir={self.dir / 'profile'}",
            f"--window-size={self.window[0]},{self.window[1]}",
            "about:blank",
        ]
        self.stderr_path = self.dir / "chromium.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=self.dir,
                close_fds=False,  # the pipes are non-inheritable; only fd 3 and 4 get through
                preexec_fn=fds_3_and_4,
            )
        os.close(to_child_r)
        os.close(from_child_w)
        self._out = to_child_w
        self._in = from_child_r
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._in, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cond:
                    self._closed = True
                    self._cond.notify_all()
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    else:
                        self.events.append(message)
                    self._cond.notify_all()

    def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        session: str | None = None,
        timeout_s: float = 30.0,
    ) -> dict[str, Any]:
        """One protocol command; its result, or BrowserError with Chromium's error."""
        with self._lock:
            self._next_id += 1
            message_id = self._next_id
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._out, data) :]
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while message_id not in self._answers:
                remaining_s = deadline - time.monotonic()
                if self._closed:
                    raise BrowserError(f"{method}: chromium closed its pipe ({self._stderr()})")
                if remaining_s <= 0:
                    raise BrowserError(f"{method}: expected an answer in {timeout_s} s, got none")
                self._cond.wait(min(remaining_s, 0.5))
            answer = self._answers.pop(message_id)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')} ({answer['error']})")
        return answer.get("result", {})

    def _stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-1500:]

    def open(self, url: str, timeout_s: float = 30.0) -> Tab:
        """A new tab attached in flat mode, navigated to `url` and loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        tab = Tab(self, session)
        tab.send("Page.enable")
        tab.send("Runtime.enable")
        tab.navigate(url, timeout_s)
        return tab

    def close(self) -> None:
        if self.process is None:
            return
        try:
            if self.process.poll() is None:
                # it may close the pipe before it answers
                with contextlib.suppress(BrowserError, OSError):
                    self.send("Browser.close", timeout_s=5.0)
                try:
                    self.process.wait(10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            os.close(self._out)
            self._reader.join(5)
            os.close(self._in)
            self.process = None

    def __enter__(self) -> Chromium:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class Tab:
    """One page target, by its flat-mode session id."""

    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def send(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict:
        return self.browser.send(method, params, session=self.session, **kw)

    def navigate(self, url: str, timeout_s: float = 30.0) -> None:
        answer = self.send("Page.navigate", {"url": url})
        if answer.get("errorText"):
            raise BrowserError(f"Page.navigate {url}: {answer['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout_s)

    def evaluate(self, expression: str) -> Any:
        """The value of a JS expression in the page (promises awaited), as JSON."""
        answer = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"evaluate {expression!r}: {text}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float, poll_s: float = 0.1) -> Any:
        """Poll a JS expression until it is truthy; its value, or BrowserError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() >= deadline:
                raise BrowserError(f"expected {expression!r} within {timeout_s} s; got {value!r}")
            time.sleep(poll_s)

    def close(self) -> None:
        target = self.send("Target.getTargetInfo")["targetInfo"]["targetId"]
        self.browser.send("Target.closeTarget", {"targetId": target})

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))
        return path
