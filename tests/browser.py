"""Headless Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no
websocket client, no open port. One page; evaluate JavaScript in it, wait for conditions, screenshot."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

REPLY_TIMEOUT_S = 60


class ScriptError(RuntimeError):
    """A JavaScript expression threw in the page."""


def find_chromium() -> str | None:
    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


class Chromium:
    """A headless browser with one page. Messages are JSON terminated by NUL: we write to its fd 3 and
    read from its fd 4."""

    def __init__(self, binary: str, profile: Path, size: tuple[int, int] = (1280, 2000)) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # above 9 so that bash's 3<& / 4>& redirections cannot clobber them
        child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w))
        os.close(to_browser_r)
        os.close(from_browser_w)
        flags = ["--headless", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "--remote-debugging-pipe"]
        if os.geteuid() == 0:
            flags.append("--no-sandbox")
        redirect = f'exec "$0" "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
        self.proc = subprocess.Popen(["bash", "-c", redirect, binary, *flags, "about:blank"],
                                     pass_fds=(child_r, child_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(child_r)
        os.close(child_w)
        self._buffer = b""
        self._next = 0
        targets = self.send("Target.getTargets")["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]

    def send(self, method: str, params: dict | None = None, *, page: bool = False) -> dict[str, Any]:
        """Send one command (to the page's session when `page`) and return its result."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                if not select.select([self._from_browser], [], [], REPLY_TIMEOUT_S)[0]:
                    raise RuntimeError(f"Chromium did not answer {method} within {REPLY_TIMEOUT_S} s")
                chunk = os.read(self._from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"Chromium exited (code {self.proc.poll()}) during {method}")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(line)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", {"url": url}, page=True)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable results)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, page=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ScriptError(f"{expression}: {details.get('exception', {}).get('description') or details.get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float, interval: float = 0.25,
                 give_up: Callable[[], str | None] = lambda: None) -> Any:
        """Poll until `expression` is truthy (a throwing expression counts as false, e.g. while the page
        loads); return its value. AssertionError on timeout, or as soon as `give_up()` returns a reason."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except ScriptError:
                value = None
            if value:
                return value
            reason = give_up()
            if reason:
                raise AssertionError(f"gave up waiting for {expression}: {reason}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {expression}")
            time.sleep(interval)

    def screenshot(self, path: Path, width: int = 1280) -> Path:
        """A PNG of the whole page: the viewport is resized to the document's height first."""
        height = int(self.evaluate("document.documentElement.scrollHeight"))
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, page=True)
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, page=True)["data"]))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
